"""ZoomR over several workers: SGLang's data parallel (``--dp-size 2``: two schedulers behind one server) and SGLang's
router (``sglang_router``) in front of two ZoomR servers. Each worker has its own manager and host store: requests
spread over both, their stats come back through the front, and each worker gets every slot and host block back on
its own (nothing is shared between them by mistake).

sglang-router 0.3.2 rebuilds ``sampling_params`` from its own schema and drops ``custom_params``: behind it, ZoomR's
per-request settings do not reach the workers, so the routed workers here get the engine settings as server flags
(``--zoomr-*``), as a user behind the router must, and a test pins the router's behaviour down."""

from __future__ import annotations

import concurrent.futures as cf
import subprocess
import sys
import time

import pytest
import requests
import torch

from tests.conftest import ZOOMR_ARGS, ZOOMR_ENV, _serve
from tests.server_process import ServerProcess, free_port
from tests.test_zoomr_serving import ENGINE, QUESTION, generate

pytestmark = pytest.mark.server
NEW = 160


def _needs_two_devices() -> None:
    if torch.cuda.is_available() and torch.cuda.device_count() < 2:
        pytest.skip("two workers need two GPUs on a CUDA host")


def managers(server) -> list[dict]:
    return [s["zoomr"]["manager"] for s in server.get("/server_info").json()["internal_states"]]


def idle(server, timeout: float = 60) -> list[dict]:
    """Every worker's manager once none runs a request, after flushing the radix trees."""
    server.flush_cache()
    deadline = time.monotonic() + timeout
    while True:
        states = managers(server)
        if all(s["running_requests"] == 0 for s in states) or time.monotonic() > deadline:
            return states
        time.sleep(0.2)


def check_each_returned(start: list[dict], end: list[dict]) -> None:
    assert len(start) == len(end)
    for a, b in zip(start, end):
        assert b["running_requests"] == 0, b
        assert b["allocator_available"] == a["allocator_available"], (a, b)
        assert b["host_store"]["used_tokens"] == 0 and b["host_store"]["blocks"] == 0, b


# ENGINE as server flags, for the routed workers
ENGINE_FLAGS = ["--zoomr-min-thought-tokens", "24", "--zoomr-max-thought-tokens", "64", "--zoomr-max-summary-tokens",
                "8", "--zoomr-zoom-interval", "4", "--zoomr-thinking-end", ""]


def run_requests(url_server, n: int, params: dict | None = ENGINE) -> list[dict]:
    with cf.ThreadPoolExecutor(n) as ex:
        return list(ex.map(lambda i: generate(url_server, f"Case {i}: " + QUESTION, params or {}, NEW), range(n)))


def check_outputs(outs: list[dict]) -> None:
    for out in outs:
        stats = out["meta_info"].get("zoomr")
        assert out["meta_info"]["completion_tokens"] == NEW and stats, out["meta_info"]
        assert stats["thoughts"] >= 2 and stats["offloaded_tokens"] > 0


@pytest.fixture
def zoomr_dp2():
    """For one test only: SGLang's data-parallel controller polls without sleeping, a core's worth of CPU on a host
    without GPUs, which would slow every later test while it lives."""
    _needs_two_devices()
    yield from _serve(ZOOMR_ARGS + ["--dp-size", "2"], ZOOMR_ENV)


def test_dp2_spreads_requests_over_both_schedulers_and_each_returns_everything(zoomr_dp2):
    start = idle(zoomr_dp2)
    assert len(start) == 2  # one ZoomR manager per data-parallel scheduler
    before = [s["totals"]["requests"] for s in start]
    check_outputs(run_requests(zoomr_dp2, 8))
    end = idle(zoomr_dp2)
    assert all(e["totals"]["requests"] > b for e, b in zip(end, before)), end  # both schedulers served some
    check_each_returned(start, end)


@pytest.fixture(scope="module")
def routed_pair():
    """Two ZoomR servers and SGLang's router in front of them (round robin)."""
    pytest.importorskip("sglang_router")
    _needs_two_devices()
    workers = [next(_serve(ZOOMR_ARGS + ENGINE_FLAGS, ZOOMR_ENV)) for _ in range(2)]
    port = free_port()
    router = subprocess.Popen(
        [sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port", str(port),
         "--policy", "round_robin", "--worker-urls", *[w.url for w in workers]],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    front = ServerProcess.attach(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 120
        while True:  # its /health answers before it has activated the workers: wait for a generation instead
            try:
                probe = {"text": "hi", "sampling_params": {"max_new_tokens": 1}}
                if requests.post(front.url + "/generate", json=probe, timeout=30).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if router.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the router did not come up (exit {router.poll()})")
            time.sleep(0.5)
        yield front, workers
    finally:
        router.terminate()
        router.wait(timeout=30)
        for w in workers:
            assert not w.stop()


def test_router_in_front_of_two_zoomr_servers_returns_stats_and_keeps_workers_apart(routed_pair):
    front, workers = routed_pair
    start = [idle(w)[0] for w in workers]
    check_outputs(run_requests(front, 6, params=None))
    end = [idle(w)[0] for w in workers]
    served = [e["totals"]["requests"] - s["totals"]["requests"] for s, e in zip(start, end)]
    assert all(n > 0 for n in served) and sum(served) == 6, served
    check_each_returned(start, end)


def test_router_drops_per_request_zoomr_settings(routed_pair):
    """What the README warns about: a setting the worker would refuse (400) passes the router and is not applied."""
    front, workers = routed_pair
    bad = {"text": QUESTION, "sampling_params": {"max_new_tokens": 4, "custom_params": {"zoomr_what": 1}}}
    assert workers[0].post("/generate", bad).status_code == 400
    assert front.post("/generate", bad).status_code == 200
