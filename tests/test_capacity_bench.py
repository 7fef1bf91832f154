"""The capacity benchmark (``benchmarks/capacity.py``) end to end on CPU, attached to real servers: every row and
point present, throughput measured, running requests read from the scheduler, ratios to stock, the markdown table,
and both servers idle afterwards. Plus its command line and its time-between-tokens arithmetic, without a server."""

from __future__ import annotations

import json

import pytest
import requests

from benchmarks import capacity
from benchmarks.capacity_point import tbt_ms
from benchmarks.scheduler_probe import QUEUED, RUNNING, parse_metrics
from benchmarks.stream_client import RequestTrace

N = 3
ENGINE = ["--min-thought", "24", "--max-thought", "48", "--summary-tokens", "8", "--zoom-budget", "64"]


def _scheduler_idle(url: str) -> bool:
    m = parse_metrics(requests.get(url + "/metrics", timeout=30).text)
    return m[RUNNING] == 0 and m.get(QUEUED, 0) == 0


@pytest.mark.server
def test_capacity_rows_points_and_idle_servers(zoomr_server, stock_server, tmp_path):
    rc = capacity.main(["--servers", "stock,zoomr", "--url-stock", stock_server.url,
                        "--url-zoomr", zoomr_server.url, "--seed", "5", "--lengths", "256,2048",
                        "--window-from", "2048",
                        "--window", "3", "--settle", "2", "--requests", str(N), "--vocab", "1000", "--poll", "0.25",
                        *ENGINE, "--out", str(tmp_path)])
    assert rc == 0
    result = json.loads((tmp_path / "capacity.json").read_text())
    meta, points = result["meta"], {(p["row"], p["length"]): p for p in result["points"]}
    assert "incomplete" not in meta
    assert set(meta["servers"]) == {"stock", "zoomr"}
    assert meta["servers"]["stock"]["max_total_num_tokens"] == meta["servers"]["zoomr"]["max_total_num_tokens"]
    assert set(points) == {(row, length) for row in ("stock", "zoomr", "full") for length in (256, 2048)}
    for (row, length), p in points.items():
        s = p["scheduler"]
        assert p["output_tok_per_s"] > 0 and p["started"] == N, (row, length, p)
        # running requests and token usage as the scheduler reported them, not inferred by the client
        assert s["source"] == "/metrics" and s["samples"] >= 1, (row, length, s)
        assert 1 <= s["running_max"] <= N and 0 < s["token_usage_max"] <= 1, (row, length, s)
        assert s["retractions"] == 0  # a 65,536-token pool holds 3 requests of 2.3K tokens
        assert 0 < p["tbt_p50_ms"] <= p["tbt_p99_ms"], (row, length, p)
        assert p["x_stock"] == pytest.approx(p["output_tok_per_s"] / points[("stock", length)]["output_tok_per_s"])
        # the default transport: OpenAI completions (token counts from continuous usage), two KV probes on /generate
        assert p["transport"] == f"openai, 2 of {N} over generate", p
        # ZoomR's own host time per decode step, from the server's clock (/server_info), on ZoomR rows only
        host = p["zoomr_host_ms"]
        if row == "stock":
            assert host is None
        else:
            assert host["decode_steps"] > 0 and host["total"] > 0 and host["after_decode"] > 0, (row, length, host)
            hooks = {k: v for k, v in host.items() if k not in ("total", "decode_steps") and "/" not in k}
            assert host["total"] == pytest.approx(sum(hooks.values()), abs=1e-3)
            pieces = {k: v for k, v in host.items() if "/" in k}  # inside their hook's figure, never above it
            assert all(k.split("/")[0] in hooks for k in pieces), (row, length, host)
            assert sum(v for k, v in pieces.items() if k.startswith("after_decode/")) <= hooks["after_decode"] + 1e-3
            if row == "zoomr" and length == 2048:  # engine-mode thoughts offload and zoom: the zoom's pieces show
                assert pieces.get("after_decode/zoom_score", 0) > 0, (row, length, host)
    for row in ("stock", "zoomr", "full"):
        done, window = points[(row, 256)], points[(row, 2048)]
        assert done["mode"] == "complete" and done["output_tokens"] == N * 256
        assert window["mode"] == "window" and not window["cut_short"]
        assert 2.5 <= window["measured_s"] <= 4.5 and 0 < window["output_tokens"] < N * 2048
    # peak device KV: stock holds prompt + output; ZoomR's comes from the server and, with 24-48-token thoughts and a
    # 64-token zoom budget, stays below what its own full policy holds for the same 256 tokens
    assert points[("stock", 256)]["peak_kv_max"] == 256 + 256
    zoomr_peak, full_peak = points[("zoomr", 256)]["peak_kv_max"], points[("full", 256)]["peak_kv_max"]
    assert zoomr_peak is not None and full_peak is not None and zoomr_peak < full_peak <= 512
    table = (tmp_path / "capacity.md").read_text()
    assert "## output 256 tokens" in table and "## output 2,048 tokens" in table
    assert "| row | output tok/s | x stock |" in table and "| full |" in table
    assert "`zoomr`: ZoomR's own host work" in table and "ms per decode step" in table
    assert (tmp_path / "capacity.png").stat().st_size > 0
    # nothing left running on either server: the window points were aborted and drained
    assert _scheduler_idle(stock_server.url) and _scheduler_idle(zoomr_server.url)
    # the JSON alone redraws the same table
    assert capacity.main(["--from-json", str(tmp_path / "capacity.json"), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "capacity.md").read_text() == table


@pytest.mark.parametrize("argv, message", [
    (["--lengths", "0"], "lengths must be positive"),
    (["--lengths", "4K,x"], "not a number"),
    (["--servers", "stock,vllm"], "--servers"),
    (["--servers", "stock", "--url-zoomr", "http://127.0.0.1:1"], "zoomr is not in --servers"),
    (["--whole-gpu", "--max-total-tokens", "1000"], "--whole-gpu"),
    (["--requests", "0"], "--requests must be positive"),
    (["--mem-fraction-static", "1.5"], "--mem-fraction-static"),
])
def test_bad_input_is_one_line_and_status_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        capacity.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("capacity: error: ") and message in err and err.count("\n") == 1


def test_server_flags(capsys):
    def argv(name: str, *more: str) -> list[str]:
        assert capacity.main(["--print-server-argv", name, *more]) == 0
        return capsys.readouterr().out.split()

    stock, flags, zoomr = argv("stock"), argv("stock_zoomr_flags"), argv("zoomr", "--zoomr-server-flags", "--x 1")
    pool = ["--max-total-tokens", str(4 * (256 + 32768))]  # stock holds about 4 requests at the longest length
    assert stock == pool + ["--enable-metrics"]
    assert flags == ["--page-size", "1"] + pool + ["--enable-metrics"]
    assert zoomr == ["--enable-zoomr", "--x", "1"] + pool + ["--enable-metrics"]
    assert argv("zoomr_no_overlap", "--zoomr-server-flags", "--x 1") == [
        "--enable-zoomr", "--disable-overlap-schedule", "--x", "1"] + pool + ["--enable-metrics"]
    assert argv("stock", "--whole-gpu", "--mem-fraction-static", "0.3", "--", "--cuda-graph-max-bs", "64") == [
        "--mem-fraction-static", "0.3", "--enable-metrics", "--cuda-graph-max-bs", "64"]


def test_time_between_tokens_splits_a_chunk_over_its_tokens():
    trace = RequestTrace(times=[0.0, 0.010, 0.040, 0.050], tokens=[1, 2, 5, 6])
    # gaps: 10 ms for 1 token, 30 ms for 3 tokens (10 ms each), 10 ms for 1 token: five 10 ms samples
    assert tbt_ms([trace], 0.0, 1.0) == (pytest.approx(10.0), pytest.approx(10.0), 5)
    late = RequestTrace(times=[0.0, 0.1], tokens=[1, 2])  # only gaps inside the window count
    assert tbt_ms([late], 0.05, 1.0) == (None, None, 0)


@pytest.mark.server
def test_long_prompts_rows_ratios_and_what_sentencekv_saves(zoomr_server, stock_server, tmp_path):
    """SentenceKV's yardstick (``benchmarks/long_prompts.py``) attached to real servers: every row measured to
    completion, ratios to full and stock, and sentencekv's device KV per request a fraction of full KV's once the
    prompt has left (its peak is the whole prompt: the prefill and the first decode step hold it)."""
    from benchmarks import long_prompts

    rc = long_prompts.main(["--url-stock", stock_server.url, "--url-zoomr", zoomr_server.url,
                            "--prompt-lengths", "800", "--batch", "2", "--output", "24", "--sentence-budget", "64",
                            "--sink", "16", "--recent", "32", "--zoom-interval", "4", "--out", str(tmp_path)])
    assert rc == 0
    result = json.loads((tmp_path / "long_prompts.json").read_text())
    points = {p["row"]: p for p in result["points"]}
    assert set(points) == {"stock", "full", "sentencekv"} and "incomplete" not in result["meta"]
    for p in points.values():
        assert p["mode"] == "complete" and p["output_tokens"] == 2 * 24 and p["prompt_tokens"] == 800, p
        assert 0 < p["tbt_p50_ms"] <= p["tbt_p99_ms"] and p["faster_than_stock"] is not None, p
    skv, full = points["sentencekv"], points["full"]
    assert skv["peak_kv_max"] >= 800 and skv["step_kv_mean"] < full["step_kv_mean"] / 2, (skv, full)
    assert skv["kv_less_than_full"] == pytest.approx(full["step_kv_mean"] / skv["step_kv_mean"])
    assert "## prompt 800 tokens" in (tmp_path / "long_prompts.md").read_text()
    assert (tmp_path / "long_prompts.png").exists()
    for server in (zoomr_server, stock_server):
        assert _scheduler_idle(server.url)


def test_long_prompts_bad_arguments_are_one_line_and_status_2(capsys):
    from benchmarks import long_prompts

    for argv in (["--prompt-lengths", "64"], ["--batch", "0"], ["--prompt-lengths", "x"]):
        with pytest.raises(SystemExit) as e:
            long_prompts.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("long_prompts: error:"), err
