#!/usr/bin/env bash
# One device call on the H100: unpack the SGLang runtime, run the GPU tests, the kernel benchmark, and start
# launch.py --enable-zoomr on the embedded model (time to ready + one /generate), everything logged under $OUT.
#
#   here (CPU host), once:  scripts/gpu_run.sh --prepare     # fills .gpu/ (runtime archive, pure-python test deps)
#   on the device:          bash scripts/gpu_run.sh [tests] [bench] [serve]   (default: all three)
#                           with carry [".gpu", ".models"]
set -uo pipefail
cd "$(dirname "$0")/.."
ARCHIVE=sglang-0.5.17-py312-cu130-site.tar.xz

if [[ "${1:-}" == "--prepare" ]]; then
  mkdir -p .gpu/pylib
  cp -n "../shared/gpu-runtime/$ARCHIVE" .gpu/
  site=.venv/lib/python3.11/site-packages  # pure-python packages (psutil's extension is abi3) the archive lacks
  for p in pytest _pytest pluggy iniconfig py.py pytest_timeout.py psutil requests urllib3 idna certifi \
           charset_normalizer; do
    cp -r "$site/$p" .gpu/pylib/
  done
  find .gpu/pylib -name __pycache__ -prune -exec rm -rf {} +
  du -sh .gpu .models
  exit 0
fi

OUT=${OUT:-/tmp/zoomr-gpu-out}
mkdir -p "$OUT"
PHASES=("$@"); [[ ${#PHASES[@]} -eq 0 ]] && PHASES=(tests bench serve)
exec > >(tee -a "$OUT/gpu_run.log") 2>&1
stamp() { echo "[$(date +%H:%M:%S)] $*"; }

stamp "unpacking the runtime"
if [[ ! -d /tmp/site/sglang ]]; then
  python3 -c "import tarfile; tarfile.open('.gpu/$ARCHIVE').extractall('/tmp/site')" || { stamp "unpack failed"; exit 1; }
fi
# zoomr-sgl itself: the repository on the path plus the entry point SGLang's plugin loader looks for
mkdir -p /tmp/site/zoomr_sgl-0.1.0.dist-info
printf 'Metadata-Version: 2.1\nName: zoomr-sgl\nVersion: 0.1.0\n' > /tmp/site/zoomr_sgl-0.1.0.dist-info/METADATA
printf '[sglang.srt.plugins]\nzoomr = zoomr_sgl.plugin:register\n' > /tmp/site/zoomr_sgl-0.1.0.dist-info/entry_points.txt
export PYTHONPATH="/tmp/site:$PWD"
# test-only packages the device may lack: link just the missing ones, so the device's own copies win
mkdir -p /tmp/pylib
for mod in pytest pluggy iniconfig pytest_timeout psutil requests urllib3 idna certifi charset_normalizer; do
  if ! python3 -c "import $mod" 2>/dev/null; then
    for src in .gpu/pylib/$mod .gpu/pylib/$mod.py; do [[ -e $src ]] && ln -sf "$PWD/$src" /tmp/pylib/; done
    [[ $mod == pytest ]] && ln -sf "$PWD/.gpu/pylib/_pytest" "$PWD/.gpu/pylib/py.py" /tmp/pylib/
  fi
done
export PYTHONPATH="$PYTHONPATH:/tmp/pylib"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.csv" 2>&1
python3 -c "import torch, triton, flashinfer, sglang; print('torch', torch.__version__, 'triton', triton.__version__,
'flashinfer', flashinfer.__version__, 'sglang', sglang.__version__, torch.cuda.get_device_name())" | tee "$OUT/versions.txt"

for phase in "${PHASES[@]}"; do
  case $phase in
    tests)
      stamp "GPU tests"
      timeout 300 python3 -m pytest -m gpu -p no:cacheprovider -o addopts="" -q -rA \
        tests/test_kernels.py tests/test_flashinfer_resident.py --junitxml="$OUT/gpu_tests.xml" \
        > "$OUT/gpu_tests.log" 2>&1
      echo "pytest rc=$?" | tee -a "$OUT/gpu_tests.log"; tail -5 "$OUT/gpu_tests.log"
      ;;
    bench)
      stamp "kernel benchmark"
      timeout 400 python3 benchmarks/bench_kernels.py --out "$OUT/results" > "$OUT/bench.log" 2>&1
      echo "bench rc=$?" | tee -a "$OUT/bench.log"; tail -15 "$OUT/bench.log"
      ;;
    serve)
      stamp "launch.py --enable-zoomr on the embedded model"
      start=$(date +%s.%N)
      python3 launch.py --enable-zoomr --port 30000 > "$OUT/server.log" 2>&1 &
      pid=$!
      ready=""
      for _ in $(seq 1 240); do
        if python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:30000/health_generate', timeout=5)" \
            2>/dev/null; then ready=$(python3 -c "print(round($(date +%s.%N) - $start, 1))"); break; fi
        kill -0 $pid 2>/dev/null || break
        sleep 1
      done
      echo "time_to_ready_s=${ready:-never}" | tee "$OUT/serve.txt"
      if [[ -n $ready ]]; then
        python3 - >> "$OUT/serve.txt" 2>&1 <<'PY'
import json, time, urllib.request as u
body = json.dumps({"text": "Let me think step by step.", "sampling_params": {"max_new_tokens": 32, "temperature": 0}})
t = time.time()
r = u.urlopen(u.Request("http://127.0.0.1:30000/generate", body.encode(), {"Content-Type": "application/json"}), timeout=120)
print("generate_s=%.2f" % (time.time() - t)); print(r.read().decode())
info = u.urlopen("http://127.0.0.1:30000/server_info", timeout=30).read().decode()
print("attention backend:", [l for l in info.split(",") if "attention_backend" in l][:3])
PY
        cat "$OUT/serve.txt"
      fi
      kill $pid 2>/dev/null; wait $pid 2>/dev/null
      tail -20 "$OUT/server.log"
      ;;
    *) stamp "unknown phase $phase"; exit 2 ;;
  esac
done
stamp "done"
