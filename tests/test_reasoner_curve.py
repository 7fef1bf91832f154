"""benchmarks/reasoner_curve.py: a PNG from checkpoint manifests; bad input is one line and status 2."""

import json
import subprocess
import sys

from tests.server_process import REPO

CMD = [sys.executable, "-m", "benchmarks.reasoner_curve"]


def test_plots_the_committed_curve(tmp_path):
    out = tmp_path / "loss.png"
    r = subprocess.run(CMD + [f"h200={REPO / 'benchmarks/results/reasoner_full_attention_manifest.json'}",
                              "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_a_manifest_without_a_curve_is_refused(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"loss_curve": []}))
    r = subprocess.run(CMD + [f"x={bad}", "--out", str(tmp_path / "o.png")], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no loss_curve" in r.stderr
