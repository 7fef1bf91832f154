"""ZoomR with SGLang's overlap scheduler (issue 12): the scheduler launches forward N+1 before it processes N's
results, so everything a forward reads must be fixed before its launch (``zoomr_sgl.manager``'s contract). The
serving tests marked with ``any_zoomr_server`` run against both servers; these are the overlap-specific ones.

Both test servers fill every freed KV slot with NaN (``ZOOMR_SGL_POISON_FREED=1``) and compare the host's hole counts
with the device at each plan (``ZOOMR_SGL_CHECK_HOLES=1``): a step that read a freed slot, or a plan that disagreed
with the rows, shows up as NaN logits counted by the server or as a dead scheduler."""

from __future__ import annotations

import concurrent.futures as cf
import math
import random
import time
from types import SimpleNamespace

import pytest
import requests
import torch

from tests.test_zoomr_serving import ENGINE, QUESTION, check_all_returned, empty_tree_state, zoomr_manager_state
from zoomr_sgl.poison import FreedSlotPoison
from zoomr_sgl.reference_attention import reference_decode_attention


@pytest.mark.server
def test_the_overlap_scheduler_runs_with_zoomr(overlap_server, zoomr_server):
    assert overlap_server.get("/server_info").json()["disable_overlap_schedule"] is False
    assert zoomr_manager_state(overlap_server)["overlap"] is True
    assert zoomr_manager_state(zoomr_server)["overlap"] is False


@pytest.mark.server
def test_mixed_long_engine_requests_never_read_a_freed_slot(any_zoomr_server):
    """Concurrent long engine-mode generations that offload, zoom every 2 steps into a small buffer (so evictions
    free slots all the time), some aborted or cut mid-way, policies mixed: afterwards no logit came out NaN, every
    request that ran to its end has its exact length and finite log-probabilities, and the pool is whole."""
    server = any_zoomr_server
    start = empty_tree_state(server)
    tight = {**ENGINE, "zoomr_zoom_interval": 2, "zoomr_zoom_budget": 64, "zoomr_zoom_topk": 3}
    rng = random.Random(12)

    def one(i: int):
        policy = ("zoomr", "zoomr", "summary_only", "full")[i % 4]
        n = rng.randint(150, 400)
        rid = f"poison-{i}-{rng.random()}"
        body = {"text": f"Case {i}: " + QUESTION, "rid": rid, "return_logprob": True,
                "sampling_params": {"max_new_tokens": n, "temperature": 0 if i % 2 else 0.8, "ignore_eos": True,
                                    "custom_params": {**tight, "zoomr_policy": policy}}}
        if i % 5 == 4:  # aborted while it runs
            with cf.ThreadPoolExecutor(1) as ex:
                fut = ex.submit(requests.post, server.url + "/generate", json=body, timeout=600)
                time.sleep(rng.uniform(0.3, 2.0))
                requests.post(server.url + "/abort_request", json={"rid": rid}, timeout=30)
                fut.result()
            return None
        out = requests.post(server.url + "/generate", json=body, timeout=600).json()
        return n, out

    with cf.ThreadPoolExecutor(12) as ex:
        done = [r for r in ex.map(one, range(24)) if r is not None]
    assert len(done) >= 15
    for n, out in done:
        meta = out["meta_info"]
        assert meta["completion_tokens"] == n, meta
        logprobs = [entry[0] for entry in meta["output_token_logprobs"]]
        assert all(lp is not None and math.isfinite(lp) for lp in logprobs), meta["id"]
    offloaded = [out["meta_info"]["zoomr"]["zoom_evictions"] for _, out in done if "zoomr" in out["meta_info"]]
    assert sum(offloaded) > 20, offloaded  # the buffer really churned
    state = check_all_returned(server, start, timeout=120)
    assert state["poison_nan_rows"] == 0, state


@pytest.mark.server
def test_markers_land_one_token_late_with_overlap_and_thoughts_stay_whole(overlap_server):
    """A marker decided while forward N is processed reaches forward N+2: each summary may be one token longer than
    ``max_summary_tokens``, never more, markers stay balanced, and every closed thought was offloaded."""
    out = overlap_server.generate(QUESTION, max_new_tokens=600, ignore_eos=True, custom_params=ENGINE)
    stats = out["meta_info"]["zoomr"]
    assert stats["thoughts"] >= 6, stats
    markers = 2  # '<summary>' and '</summary>' are one token each in the embedded tokenizer (tests/test_server.py)
    assert stats["summary_tokens"] <= stats["thoughts"] * (ENGINE["zoomr_max_summary_tokens"] + markers + 1), stats
    assert stats["detail_tokens"] >= stats["thoughts"] * ENGINE["zoomr_min_thought_tokens"], stats
    assert stats["offloaded_tokens"] == stats["detail_tokens"] - stats["dropped_tokens"], stats
    text = out["text"]
    # The bigram model writes summary markers of its own now and then; one that lands right beside a forced opening
    # marker (the forced one comes one token late with overlap) leaves "<summary><summary>" in the text, one summary
    # for the server (the thought stats above hold) but two openings in the text.
    doubled = text.count("<summary><summary>")
    assert text.count("<summary>") - doubled - text.count("</summary>") in (0, 1), text


def test_poison_turns_a_read_of_a_freed_slot_into_nan():
    """The mechanism the stress test relies on: attention over a slot freed (poisoned) is NaN, and the sampler-side
    count sees it; attention over the slots left alone is not."""
    torch.manual_seed(0)
    k = [torch.randn(16, 2, 8)]
    v = [torch.randn(16, 2, 8)]
    poison = FreedSlotPoison(SimpleNamespace(k_buffer=k, v_buffer=v))
    poison.fill(torch.tensor([3, 5]))
    q = torch.randn(2, 4, 8)
    out = reference_decode_attention(q, k[0], v[0], [torch.tensor([1, 2, 4, 6]), torch.tensor([1, 2, 3, 6])])
    assert torch.isfinite(out[0]).all() and torch.isnan(out[1]).all()
    assert torch.isfinite(k[0][[0, 1, 2, 4, 6]]).all()  # only the freed rows
    poison.count(out.flatten(1))  # one row per request, as the sampler's logits
    assert poison.nan_rows() == 1
