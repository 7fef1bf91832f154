"""benchmarks/client_ceiling.py: every chunk the stream server sends is taken in and counted; bad flags are one line."""

import json
import subprocess
import sys

from tests.server_process import REPO


def test_every_chunk_is_counted(tmp_path):
    r = subprocess.run([sys.executable, "-m", "benchmarks.client_ceiling", "--streams", "3", "--starts", "10,500",
                        "--chunks", "25", "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((tmp_path / "client_ceiling.json").read_text())["rows"]
    assert [(row["start_ids"], row["chunks"], row["errors"]) for row in rows] == [(10, 75, []), (500, 75, [])]
    assert all(row["chunks_per_s"] > 0 for row in rows) and (tmp_path / "client_ceiling.png").exists()


def test_bad_flags_are_one_line():
    r = subprocess.run([sys.executable, "-m", "benchmarks.client_ceiling", "--starts", "x"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "client_ceiling: error:" in r.stderr
