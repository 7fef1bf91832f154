"""Beacon mode (Breadcrumbs) served (CPU, the real server on the embedded model): the engine forces one beacon after
every window of generated tokens; the beacon alone is the window's summary, so under ``zoomr`` the window leaves
the device and the beacon's keys index it for the zoom, and under ``summary_only`` it is evicted for good."""

from __future__ import annotations

import pytest

from tests.test_zoomr_serving import QUESTION, check_all_returned, empty_tree_state, generate

pytestmark = pytest.mark.server

WINDOW = 32
BEACON = {"zoomr_summary_mode": "engine", "zoomr_beacon": "<beacon>", "zoomr_min_thought_tokens": WINDOW,
          "zoomr_max_thought_tokens": WINDOW, "zoomr_zoom_interval": 4, "zoomr_zoom_budget": 64,
          "zoomr_zoom_topk": 2, "zoomr_thinking_end": ""}


def beacon_tokens(server) -> int:
    return len(server.post("/tokenize", {"prompt": "<beacon>", "add_special_tokens": False}).json()["tokens"])


def test_a_beacon_closes_every_window_and_indexes_its_offloaded_detail(any_zoomr_server):
    s = any_zoomr_server
    start = empty_tree_state(s)
    out = generate(s, QUESTION, BEACON, 400)
    z, n = out["meta_info"]["zoomr"], beacon_tokens(s)
    assert z["thoughts"] >= 400 // (WINDOW + n + 2) and z["forced_markers"] >= z["thoughts"], z
    assert z["summary_tokens"] == n * z["thoughts"], z  # the beacon is the whole summary
    assert out["text"].count("<beacon>") >= z["thoughts"]  # (a "<summary>" the model writes is plain text here)
    # every window of WINDOW tokens (one more with the overlap scheduler) went to the host
    assert z["detail_tokens"] >= WINDOW * z["thoughts"] and z["offloaded_tokens"] == z["detail_tokens"], z
    assert z["zoom_recalls"] > 0 and z["device_kv_tokens"] < z["full_kv_tokens"] / 3, z
    check_all_returned(s, start)


def test_summary_only_beacons_evict_their_windows_for_good(zoomr_server):
    s = zoomr_server
    start = empty_tree_state(s)
    z = generate(s, QUESTION, {**BEACON, "zoomr_policy": "summary_only"}, 300)["meta_info"]["zoomr"]
    assert z["dropped_tokens"] == z["detail_tokens"] > 0 and z["zoom_recalls"] == 0 and z["offloaded_tokens"] == 0
    check_all_returned(s, start)


def test_recalled_windows_attend_exactly_like_windows_that_never_left(zoomr_server):
    """Every window goes to the host and is zoomed straight back (budget covers all, zoom every step, wait for the
    copy): greedy output equals the same beacon stream under full KV."""
    s = zoomr_server
    everything = {**BEACON, "zoomr_zoom_interval": 1, "zoomr_wait_for_recall": True, "zoomr_zoom_budget": 100_000,
                  "zoomr_zoom_topk": 1000}
    outs = {}
    for policy in ("zoomr", "full"):
        s.flush_cache()
        outs[policy] = generate(s, QUESTION, {**everything, "zoomr_policy": policy}, 200)
    assert outs["zoomr"]["output_ids"] == outs["full"]["output_ids"]
    z = outs["zoomr"]["meta_info"]["zoomr"]
    assert z["offloaded_tokens"] > 0 and z["zoom_recalls"] >= z["thoughts"] - 1 >= 3, z
