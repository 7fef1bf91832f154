"""A host store with no room (CPU, the real server): every closed thought's detail is parked, in its own device
slots and out of the resident set. The zoom then picks and attends exactly what it does when the detail sits on the
host, so greedy output equals a server whose store takes everything; retractions, aborts and finishes of requests
with parked detail leave no slot behind."""

from __future__ import annotations

import concurrent.futures as cf
import time

import pytest
import requests

from tests.conftest import ZOOMR_ARGS, ZOOMR_ENV, _serve
from tests.test_zoomr_serving import ENGINE, RECALL_QUESTIONS, check_all_returned, empty_tree_state, generate

pytestmark = pytest.mark.server

POOL = 2048  # small enough that 12 concurrent 600-token requests (stock accounting) must be retracted
# Zoom every step, so which steps zoom does not depend on what each server ran before; a budget that holds two of
# the ~40-token details, so the zoom chooses.
EVERY_STEP = {**ENGINE, "zoomr_zoom_interval": 1}


@pytest.fixture(scope="module")
def parking_server():
    yield from _serve(ZOOMR_ARGS + ["--zoomr-host-store-tokens", "1", "--max-total-tokens", str(POOL)], ZOOMR_ENV)


def test_parked_detail_is_zoomed_and_attended_exactly_like_offloaded_detail(zoomr_server, parking_server):
    for server in (zoomr_server, parking_server):
        server.flush_cache()  # a prompt extended over a cached prefix need not be bit-equal to one prefilled whole
    for question in RECALL_QUESTIONS:
        offloaded = generate(zoomr_server, question, EVERY_STEP, 200)
        parked = generate(parking_server, question, EVERY_STEP, 200)
        assert parked["output_ids"] == offloaded["output_ids"], question
        off, park = offloaded["meta_info"]["zoomr"], parked["meta_info"]["zoomr"]
        assert off["offloaded_tokens"] > 0 and off["parked_tokens"] == 0 and off["host_refused_tokens"] == 0, off
        assert park["offloaded_tokens"] == 0 and park["parked_tokens"] > 0 and park["zoom_recalls"] > 0, park
        assert park["host_refused_tokens"] == park["detail_tokens"] and park["thoughts"] >= 2, park
        assert park["zoom_recalls"] == off["zoom_recalls"] and park["zoom_evictions"] == off["zoom_evictions"]
        assert park["peak_device_kv_tokens"] == park["full_kv_tokens"]  # parking saves reads, not memory


def test_retracted_aborted_and_finished_requests_with_parked_detail_leave_nothing_behind(parking_server):
    server = parking_server
    start = empty_tree_state(server)
    assert start["host_store"]["capacity_tokens"] == 1

    def one(i: int):
        rid = f"park-{i}-{time.monotonic()}"
        body = {"text": f"Case {i}: {RECALL_QUESTIONS[i % 3]}", "rid": rid, "sampling_params": {
            "max_new_tokens": 600, "temperature": 0.7, "ignore_eos": True, "custom_params": ENGINE}}
        if i % 4 == 3:  # aborted while it runs
            with cf.ThreadPoolExecutor(1) as ex:
                fut = ex.submit(requests.post, server.url + "/generate", json=body, timeout=600)
                time.sleep(1.0 + i / 4)
                requests.post(server.url + "/abort_request", json={"rid": rid}, timeout=30)
                return fut.result().json()["meta_info"]
        r = requests.post(server.url + "/generate", json=body, timeout=600)
        assert r.status_code == 200, r.text
        return r.json()["meta_info"]

    with cf.ThreadPoolExecutor(12) as ex:
        metas = list(ex.map(one, range(12)))
    finished = [m for i, m in enumerate(metas) if i % 4 != 3]
    assert all(m["completion_tokens"] == 600 for m in finished), [m["completion_tokens"] for m in finished]
    assert sum(m.get("num_retractions", 0) for m in metas) > 0, "the pool was meant to force retractions"
    for m in finished:
        # the one host row takes a one-token detail at most (the model may write a marker itself, early)
        assert m["zoomr"]["offloaded_tokens"] <= 1 and m["zoomr"]["parked_tokens"] > 0, (m["zoomr"], m.get("num_retractions"))
    end = check_all_returned(server, start, timeout=120)
    assert end["totals"]["parked_detail_tokens"] > 100 * max(end["totals"]["offloaded_tokens"], 1), end["totals"]
    assert server.generate("alive?", max_new_tokens=4)["meta_info"]["completion_tokens"] >= 1
