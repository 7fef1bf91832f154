"""A decode step's ZoomR work is O(1) Python per running request and reads nothing from the device, except the zoom
step's one read of its scores. Counted inside the scheduler by the step probe (``ZOOMR_SGL_STEP_PROBE=1``, set on the
suite's ZoomR server), never timed: every call that reads a tensor's value into Python (on CUDA, a synchronisation)
and every token fed to a thought table, per decode step."""

from __future__ import annotations

import concurrent.futures as cf

import pytest

from tests.test_zoomr_serving import ENGINE, QUESTION, generate, wait_idle, zoomr_manager_state

pytestmark = pytest.mark.server


def probe(server) -> dict:
    state = zoomr_manager_state(server).get("step_probe")
    if state is None:
        pytest.skip("this server runs without the step probe (ZOOMR_SGL_STEP_PROBE=1 in its environment)")
    return state


def test_decode_steps_read_nothing_and_feed_one_token_per_request(any_zoomr_server):
    s = any_zoomr_server
    wait_idle(s)
    before = probe(s)
    requests = 8
    with cf.ThreadPoolExecutor(requests) as ex:  # zoom every 4 steps, a thought every 24-64 tokens
        outs = list(ex.map(lambda i: generate(s, f"Case {i}: " + QUESTION, ENGINE, 160), range(requests)))
    assert all(o["meta_info"]["zoomr"]["zoom_recalls"] > 0 for o in outs[:2]), [o["meta_info"]["zoomr"] for o in outs]
    after = probe(s)
    delta = {k: after[k] - before[k] for k in ("plain_steps", "zoom_steps", "boundary_steps", "requests_advanced",
                                              "tokens_fed")}
    assert delta["plain_steps"] > 0 and delta["zoom_steps"] > 0 and delta["boundary_steps"] > 0, delta
    # every step of the server so far: nothing read on plain and boundary steps, the scores once on zoom steps; a
    # sentencekv request's first zoom (once per request) also reads once per scoring layer building its index
    reads = after["max_reads"]
    assert {k: reads[k] for k in ("plain", "boundary", "zoom")} == {"plain": 0, "boundary": 0, "zoom": 1}, after
    assert reads["index"] <= 1 + len(zoomr_manager_state(s)["scoring_layers"]), after
    # one new token per request per step: no request's stream is walked again
    assert delta["tokens_fed"] == delta["requests_advanced"] >= requests * 100, delta
