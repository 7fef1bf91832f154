"""benchmarks/accuracy.py end to end against the real server (the embedded model: its answers are noise, so this
checks the harness, not accuracy), and its one-line refusals of bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.server_process import REPO

BENCH = [sys.executable, "-m", "benchmarks.accuracy"]


def run(args, timeout=900):
    return subprocess.run(BENCH + args, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("lines, extra, needle", [
    (None, [], "No such file"),
    (["not json"], [], "not JSON"),
    (['{"answer": 1}'], [], "'problem'"),
    (['{"problem": "x", "answer": 1}'], ["--policies", "oracle"], "unknown policy"),
    (['{"problem": "x", "answer": 1}'], ["--budgets", "0"], "--budgets"),
    (['{"problem": "x", "answer": 1}'], ["--template", "no placeholder"], "{problem}"),
    (['{"problem": "x", "answer": 1}'], ["--servers", "0"], "--servers"),
    (['{"problem": "x", "answer": 1}'], ["--url", " , "], "names no server"),
    (['{"problem": "x", "answer": 1}'], ["--model-path", "/nonexistent/model"], "no such directory"),
])
def test_bad_input_is_one_line_and_status_2(tmp_path, lines, extra, needle):
    path = tmp_path / "p.jsonl"
    if lines is not None:
        path.write_text("\n".join(lines) + "\n")
    url = [] if "--url" in extra else ["--url", "http://127.0.0.1:9"]
    r = run(["--problems", str(path), *url, *extra], timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("accuracy: error:"), r.stderr
    assert needle in r.stderr


@pytest.mark.server
def test_every_policy_is_measured(zoomr_server, tmp_path):
    """The server is named twice: the problems are spread over the listed servers (here both are the one)."""
    problems = tmp_path / "smoke.jsonl"
    subprocess.run([sys.executable, "-m", "reasoner.tasks", "--split", "smoke", "--n", "3", "--family", "chain",
                    "--items", "8", "--out", str(problems)], cwd=REPO, check=True, capture_output=True)
    out = tmp_path / "out"
    r = run(["--problems", str(problems), "--url", f"{zoomr_server.url},{zoomr_server.url}/", "--policies",
             "full,zoomr,summary_only,streaming,quest,sentencekv", "--budgets", "64", "--max-new-tokens", "40",
             "--summary-mode", "engine", "--out", str(out)])
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads((out / "accuracy.json").read_text())
    rows = {row["policy"]: row for row in result["rows"]}
    assert result["meta"]["servers"] == 2 and not result["meta"]["partial"]
    assert set(rows) == {"full", "zoomr", "summary_only", "streaming", "quest", "sentencekv"}
    for name in ("full", "zoomr", "summary_only", "streaming", "quest", "sentencekv"):
        row = rows[name]
        assert row["refused"] is None and row["answered"] == 3 and row["errors"] == 0
        assert 0.0 <= row["accuracy"] <= 1.0 and row["needs_detail_problems"] + (3 - row["needs_detail_problems"]) == 3
        assert row["peak_device_kv"] <= row["full_kv"] and row["mean_device_kv"] <= row["peak_device_kv"]
    assert rows["full"]["kv_reduction"] == pytest.approx(1.0)
    assert (out / "accuracy.md").read_text().count("| streaming | 64 |") == 1 and (out / "accuracy.png").exists()



@pytest.mark.server
def test_the_reasoner_zoom_keeps_the_answer_that_summaries_lose(tmp_path):
    """The default model (models/zoomr-reasoner) served by the harness, trained mode, on held-out chain problems 0 and
    5 of 12 items, whose answers need an earlier thought's detail: full attention and ZoomR answer both, summaries
    alone lose at least one (the detail has left for good; a chain's end is often a box on one of the table's few
    cycles, so a guess is sometimes right: problem 0's answer ends 15 of its trace's lines, problem 5's 7); under
    ZoomR each trace closes its own thoughts, recalls detail and holds less device KV than its own full KV."""
    from reasoner.tasks import problem

    chosen = [problem("heldout", "chain", i, items=12) for i in (0, 5)]
    assert all(p.needs_detail for p in chosen)
    problems = tmp_path / "needs_detail.jsonl"
    problems.write_text("".join(json.dumps(p.record()) + "\n" for p in chosen))
    out = tmp_path / "out"
    r = run(["--problems", str(problems), "--policies", "full,zoomr,summary_only", "--budgets", "256",
             "--concurrency", "2", "--max-new-tokens", "1600", "--out", str(out)], timeout=1500)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads((out / "accuracy.json").read_text())
    assert result["meta"]["model"] == "zoomr-reasoner"
    assert "zoom_budget=256 zoom_topk=1 summary_mode=trained" in (out / "accuracy_server.log").read_text()
    got = {pt["policy"]: pt["problems"] for pt in result["points"]}
    assert all(o["correct"] for o in got["full"] + got["zoomr"]), got
    assert not all(o["correct"] for o in got["summary_only"]), got
    misses = [json.loads(line) for line in (out / "accuracy_misses.jsonl").read_text().splitlines()]
    wrong = {(pt["policy"], o["seed"]) for pt in result["points"] for o in pt["problems"] if not o["correct"]}
    assert {(m["policy"], m["seed"]) for m in misses} == wrong and all(m["text"] for m in misses), misses
    assert all("text" not in o for pt in result["points"] for o in pt["problems"])
    for z in got["zoomr"]:
        assert z["error"] is None and z["output_tokens"] < 1600 and z["recalls"] > 0 and z["peak_kv"] < z["full_kv"], z
