#!/usr/bin/env bash
# Set up zoomr-sgl on a fresh machine: a project-local environment (.venv) with SGLang 0.5.17 and its runtime
# needs, the CPU workarounds where there is no GPU, the project in editable mode, and the embedded default model.
# Idempotent: a second run checks a stamp and finishes in seconds.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
  echo "setup.sh: Python >= 3.11 is needed ($PY is $("$PY" --version 2>&1))" >&2; exit 2; }

VENV=.venv
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
VPY="$VENV/bin/python"
stamp="$VENV/.zoomr-setup-stamp"
want=$(cat setup.sh scripts/requirements-cpu.txt scripts/constraints-cpu.txt scripts/fix_torchvision.py pyproject.toml | sha256sum | cut -d' ' -f1)

if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup.sh: installing into $VENV (a fresh install takes about 2 minutes)"
  pip_q() { "$VPY" -m pip install -q --disable-pip-version-check "$@"; }
  pip_q torch==2.13.0
  pip_q --no-deps sglang==0.5.17
  pip_q -c scripts/constraints-cpu.txt -r scripts/requirements-cpu.txt
  "$VPY" scripts/fix_torchvision.py
  pip_q -c scripts/constraints-cpu.txt --no-deps --no-build-isolation -e .
  # The CPU stand-in for sgl_kernel goes on the import path only where CUDA is absent.
  site=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  if "$VPY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    rm -f "$site/zoomr_cpu_runtime.pth"
  else
    echo "$PWD/cpu_runtime" > "$site/zoomr_cpu_runtime.pth"
  fi
  echo "$want" > "$stamp"
fi

# The bigram model (the test suite's): built offline and deterministically; skipped when already built. The default
# model launch.py serves is the trained reasoner committed in models/zoomr-reasoner (zoomr_sgl.default_model).
"$VPY" -m zoomr_sgl.embedded_model build --quiet
served=$("$VPY" -c "from zoomr_sgl.default_model import default_model_dir; print(default_model_dir())")
echo "setup.sh: ready ($VENV, default model $served)"
