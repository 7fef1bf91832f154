"""Admission that sees ZoomR's bound: a pool that holds k requests' full KV runs more than 2k bounded ZoomR requests at
once, with no retraction, and the pool is whole afterwards (SGLang's idle check holds: the server stays up)."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time

import pytest

from tests.server_process import ServerProcess
from tests.test_zoomr_serving import wait_idle, zoomr_manager_state
from zoomr_sgl.admission import peak_tokens
from zoomr_sgl.config import ZoomRConfig

pytestmark = pytest.mark.server

OUTPUT, K = 1200, 4
BOUNDED = {"zoomr_summary_mode": "engine", "zoomr_min_thought_tokens": 56, "zoomr_max_thought_tokens": 64,
           "zoomr_max_summary_tokens": 8, "zoomr_zoom_budget": 128, "zoomr_zoom_topk": 2, "zoomr_zoom_interval": 8,
           "zoomr_thinking_end": ""}  # all reasoning: an answer after </think> stays on the device, unbounded
PROMPT = "Let me think about this step by step.\n"


def bounded_body(i: int) -> dict:
    return {"text": f"{i}: {PROMPT}", "sampling_params": {
        "max_new_tokens": OUTPUT, "temperature": 0, "ignore_eos": True, "custom_params": BOUNDED}}


def generate_all_watching(s, bodies: list[dict], key: str, period: float) -> tuple[list[dict], int]:
    """Send every ``/generate`` body at once (each must answer 200) and return their ``meta_info`` and the most the
    manager's state ``key`` reached while they ran, sampled every ``period`` seconds."""
    peak, done = 0, threading.Event()

    def watch():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, zoomr_manager_state(s)[key])
            time.sleep(period)

    def one(body: dict) -> dict:
        r = s.post("/generate", body)
        assert r.status_code == 200, r.text
        return r.json()["meta_info"]

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with cf.ThreadPoolExecutor(len(bodies)) as ex:
            metas = list(ex.map(one, bodies))
    finally:
        done.set()
        watcher.join()
    return metas, peak


@pytest.fixture(scope="module", params=[False, True], ids=["no_overlap", "overlap"])
def small_pool_server(request):
    # With the overlap scheduler SGLang runs a prefilled request one step before the manager takes it; charged as
    # stock there, one refused admission kept SGLang from admitting again until a request finished (7 of 9 ran).
    full_kv = OUTPUT + 40  # prompt (< 40 tokens) + output
    overlap = ["--enable-overlap-schedule"] if request.param else []
    server = ServerProcess.start(["--enable-zoomr", *overlap, "--max-total-tokens", str(K * full_kv),
                                  "--enable-metrics", "--max-running-requests", "64"])
    server.lag = 2 if request.param else 1
    yield server
    assert not server.stop()


def test_a_pool_for_k_full_requests_runs_more_than_2k_zoomr_requests_without_retraction(small_pool_server):
    s = small_pool_server
    n = 3 * K
    cfg = ZoomRConfig(**{k[len("zoomr_"):]: v for k, v in BOUNDED.items()})
    bound = peak_tokens(cfg, 40, OUTPUT, marker_tokens=2, lag=s.lag)
    pool = s.get("/server_info").json()["max_total_num_tokens"]
    assert pool // bound > 2 * K, (pool, bound)  # the bound itself lets more than 2k in
    bodies = [bounded_body(i) for i in range(n)]
    metas, peak_running = generate_all_watching(s, bodies, "running_requests", 0.2)
    assert all(m["completion_tokens"] == OUTPUT for m in metas)
    assert sum(m.get("num_retractions", 0) for m in metas) == 0, [m.get("num_retractions") for m in metas]
    assert max(m["zoomr"]["peak_device_kv_tokens"] for m in metas) <= bound
    assert peak_running > 2 * K, peak_running
    # the bound, not a transient stock charge, is what limits the batch (prompts are under 40 tokens)
    assert min(n, pool // bound) <= peak_running <= n, (peak_running, pool, bound)
    metrics = s.get("/metrics").text
    retracted = [line for line in metrics.splitlines() if line.startswith("sglang:num_retracted_requests_total")]
    assert all(float(line.rsplit(" ", 1)[1]) == 0 for line in retracted), retracted
    assert wait_idle(s)["running_requests"] == 0
    assert s.get("/health_generate").status_code == 200


def test_slots_freed_while_requests_run_admit_the_waiting_ones(small_pool_server):
    """SGLang admits nothing after one refusal until a request finishes; ZoomR frees slots while requests run. Here
    the pool holds two long prompts at their prefill and refuses the third; once the first two have sent their
    sentences to the host (their first zoom), the waiting ones are admitted while both still run (without
    ``hooks.reopen_admission`` they waited for the first two to finish: at most 2 ran at once)."""
    from tests.test_sentencekv_serving import SKV, records_prompt

    s = small_pool_server
    pool = s.get("/server_info").json()["max_total_num_tokens"]
    output, n = 160, 4
    prompts = [records_prompt(100 + i, sentences=110) for i in range(n)]
    bodies = [{"text": p, "sampling_params": {"max_new_tokens": output, "temperature": 0, "ignore_eos": True,
                                             "custom_params": SKV}} for p in prompts]
    metas, peak_running = generate_all_watching(s, bodies, "running_requests", 0.1)
    prompt_tokens = min(m["prompt_tokens"] for m in metas)
    assert 2 * (prompt_tokens + output) <= pool < 3 * prompt_tokens, (pool, prompt_tokens)  # two fit, three do not
    assert all(m["completion_tokens"] == output for m in metas)
    assert all(m["zoomr"]["demoted_tokens"] >= prompt_tokens // 2 for m in metas), [m["zoomr"] for m in metas]
    assert sum(m.get("num_retractions", 0) for m in metas) == 0
    assert peak_running >= 3, peak_running
    assert wait_idle(s)["running_requests"] == 0
    assert s.get("/health_generate").status_code == 200


HOST_ROWS = 2 * OUTPUT + OUTPUT // 2  # room to promise two requests' output detail, never three


@pytest.fixture(scope="module")
def small_host_server():
    server = ServerProcess.start(["--enable-zoomr", "--zoomr-host-store-tokens", str(HOST_ROWS), "--enable-metrics",
                                  "--max-running-requests", "64"])
    yield server
    assert not server.stop()


def test_admission_promises_host_rows_and_charges_the_rest_as_stock(small_host_server):
    """The bound holds only if the host store takes every detail: with room for two requests' output detail, at
    most two run charged by their bound at a time (their detail all offloaded, none refused), the others run with
    stock accounting, and every request completes; the promises end with their requests."""
    s = small_host_server
    assert zoomr_manager_state(s)["host_store"]["capacity_tokens"] == HOST_ROWS
    before = zoomr_manager_state(s)["host_unbounded_requests"]
    bodies = [bounded_body(i) for i in range(6)]
    metas, peak_promised = generate_all_watching(s, bodies, "host_promised_tokens", 0.2)
    assert all(m["completion_tokens"] == OUTPUT for m in metas)
    charged = [m["zoomr"]["admission"] for m in metas]
    assert charged.count("bound") >= 2 and "stock" in charged, charged
    assert 0 < peak_promised <= HOST_ROWS, peak_promised
    for m in metas:
        if m["zoomr"]["admission"] == "bound":  # a promise is kept: every closed detail went to the host
            assert m["zoomr"]["host_refused_tokens"] == 0 and m["zoomr"]["offloaded_tokens"] > OUTPUT // 2, m["zoomr"]
    after = wait_idle(s)
    assert after["host_unbounded_requests"] - before == charged.count("stock"), (after, charged)
    assert after["host_promised_tokens"] == 0, after
    assert s.get("/health_generate").status_code == 200
