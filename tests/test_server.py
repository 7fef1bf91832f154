"""The real SGLang server on the embedded model, started through launch.py, with and without the ZoomR plugin."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.server

PROMPTS = [
    "Question: a farmer has 12 sheep and buys 7 more. How many sheep now?\nLet me think step by step.",
    "Tom reads 15 pages a day for 4 days. How many pages?",
    "<summary>The sum is 19.</summary> So the answer is",
]


def test_generate_returns_tokens(zoomr_server):
    out = zoomr_server.generate(PROMPTS[0], max_new_tokens=16, ignore_eos=True)
    assert out["meta_info"]["completion_tokens"] == 16
    assert isinstance(out["text"], str) and out["text"]


def test_chat_completions(zoomr_server):
    r = zoomr_server.post(
        "/v1/chat/completions",
        {"model": "default", "messages": [{"role": "user", "content": PROMPTS[1]}], "max_tokens": 12,
         "temperature": 0},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["completion_tokens"] > 0
    assert isinstance(body["choices"][0]["message"]["content"], str)


def test_plugin_active_inside_scheduler(zoomr_server):
    info = zoomr_server.get("/server_info").json()
    states = [s.get("zoomr") for s in info["internal_states"]]
    assert states and all(s and s["active"] for s in states)
    scheduler_pid = states[0]["pid"]
    assert scheduler_pid != zoomr_server.proc.pid  # reported from the scheduler process, not the launcher
    assert scheduler_pid in {p.pid for p in zoomr_server.group_processes()}
    assert states[0]["config"]["zoom_budget"] == 512 and states[0]["config"]["zoom_topk"] == 3
    config = zoomr_server.get("/zoomr/config").json()
    assert config["config"] == states[0]["config"]
    log = zoomr_server.log_text()
    assert "ZoomR plugin active" in log and "worker process" in log and "main process" in log


def test_sigusr2_prints_the_schedulers_stacks_and_serving_goes_on(zoomr_server):
    """The plugin's debugging aid for a step that seems stuck: SIGUSR2 writes every thread's stack to the log."""
    import os
    import signal
    import time

    pid = zoomr_server.get("/server_info").json()["internal_states"][0]["zoomr"]["pid"]
    before = len(zoomr_server.log_text())
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + 20
    while "Current thread" not in zoomr_server.log_text()[before:] and time.monotonic() < deadline:
        time.sleep(0.2)
    dumped = zoomr_server.log_text()[before:]
    assert "Current thread" in dumped and "scheduler.py" in dumped, dumped[-2000:]
    assert zoomr_server.generate(PROMPTS[1], max_new_tokens=4, ignore_eos=True)["meta_info"]["completion_tokens"] == 4


def test_prefix_cache_still_works_with_plugin(zoomr_server):
    prompt = PROMPTS[0] * 3
    first = zoomr_server.generate(prompt, max_new_tokens=4)
    second = zoomr_server.generate(prompt, max_new_tokens=4)
    assert second["meta_info"]["cached_tokens"] >= first["meta_info"]["prompt_tokens"] - 2
    assert second["text"] == first["text"]


def test_markers_are_single_tokens_in_the_served_tokenizer(zoomr_server):
    out = zoomr_server.post("/tokenize", {"prompt": "<summary></summary>", "add_special_tokens": False})
    assert out.status_code == 200, out.text
    assert len(out.json()["tokens"]) == 2


def test_stock_server_is_untouched(stock_server):
    assert stock_server.get("/zoomr/config").status_code == 404
    info = stock_server.get("/server_info").json()
    assert all("zoomr" not in s for s in info["internal_states"])
    assert "ZoomR plugin active" not in stock_server.log_text()
    assert stock_server.generate(PROMPTS[1], max_new_tokens=8, ignore_eos=True)["meta_info"]["completion_tokens"] == 8


def test_greedy_output_same_with_and_without_plugin(zoomr_server, stock_server):
    for prompt in PROMPTS:
        a = zoomr_server.generate(prompt, max_new_tokens=24, ignore_eos=True)
        b = stock_server.generate(prompt, max_new_tokens=24, ignore_eos=True)
        assert a["text"] == b["text"]
