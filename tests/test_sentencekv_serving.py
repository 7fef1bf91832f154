"""SentenceKV served (CPU, the real server on the embedded model): a long prompt's sentences leave the device at the
request's first zoom and come back by the query; with budgets covering every sentence the output equals full
attention; a repeated prompt borrows them from the radix tree instead of recomputing them; prompts shared by running
requests park them; output thoughts zoom beside them; nothing is left behind."""

from __future__ import annotations

import concurrent.futures as cf
import random

import pytest

from tests.test_zoomr_serving import ENGINE, check_all_returned, empty_tree_state, generate

pytestmark = pytest.mark.server


def records_prompt(seed: int, sentences: int = 60) -> str:
    rng = random.Random(seed)
    words = "the cat dog ran sat on a mat by house tree river stone light dark red blue green old new big".split()
    text = [" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))).capitalize() + rng.choice(".!?")
            for _ in range(sentences)]
    return " ".join(text) + "\nQuestion: what happened?\n"


PROMPT = records_prompt(3)
SKV = {"zoomr_policy": "sentencekv", "zoomr_summary_mode": "trained", "zoomr_sink_tokens": 16,
       "zoomr_recent_tokens": 32, "zoomr_zoom_interval": 4, "zoomr_zoom_budget": 256, "zoomr_sentence_budget": 64}
EVERYTHING = {**SKV, "zoomr_sentence_budget": 100_000, "zoomr_zoom_budget": 100_000}


def test_a_long_prompt_leaves_the_device_and_is_recalled_by_the_query(any_zoomr_server):
    s = any_zoomr_server
    start = empty_tree_state(s)
    out = generate(s, PROMPT, SKV, 80)
    z, prompt = out["meta_info"]["zoomr"], out["meta_info"]["prompt_tokens"]
    assert z["thoughts"] >= 40, z  # one per closed sentence
    assert z["demoted_tokens"] >= 0.8 * prompt and z["offloaded_tokens"] == z["demoted_tokens"], z
    assert z["zoom_recalls"] > 0 and z["parked_tokens"] == 0, z
    # after the first zoom: sink, recent window, the output and at most the sentence budget of recalled sentences
    assert z["device_kv_tokens"] <= z["full_kv_tokens"] - z["demoted_tokens"] + SKV["zoomr_sentence_budget"], z
    assert z["mean_device_kv_tokens"] < prompt / 2, z
    assert z["peak_device_kv_tokens"] >= prompt  # the prefill and the first decode step hold the whole prompt
    check_all_returned(s, start)


def test_budgets_covering_every_sentence_give_the_full_attention_output(zoomr_server):
    s = zoomr_server
    outs = {}
    for name, params in (("sentencekv", EVERYTHING), ("full", {**SKV, "zoomr_policy": "full"})):
        s.flush_cache()  # an empty tree for each: the second must not match the first's host-backed sentences
        outs[name] = generate(s, PROMPT, params, 80)
    assert outs["sentencekv"]["output_ids"] == outs["full"]["output_ids"]
    z = outs["sentencekv"]["meta_info"]["zoomr"]
    assert z["zoom_recalls"] >= 40 and z["demoted_tokens"] == 0 and z["zoom_tokens"] > 0, z


def test_a_repeated_prompt_borrows_its_sentences_from_the_tree(zoomr_server):
    s = zoomr_server
    start = empty_tree_state(s)
    first = generate(s, PROMPT, SKV, 40)["meta_info"]
    second = generate(s, PROMPT, SKV, 40)["meta_info"]
    z1, z2 = first["zoomr"], second["zoomr"]
    assert z1["demoted_tokens"] > 0 and z2["reused_host_tokens"] == z1["demoted_tokens"], (z1, z2)
    # the second demotes only what the first still held in its zoom buffer when it ended (cached as device KV)
    assert z2["demoted_tokens"] <= SKV["zoomr_sentence_budget"], (z1, z2)
    assert z2["offloaded_tokens"] == z2["reused_host_tokens"] + z2["demoted_tokens"], z2
    assert z2["thoughts_from_tree"] >= z1["thoughts_from_tree"] > 0 and z2["zoom_recalls"] > 0, (z1, z2)
    assert second["cached_tokens"] >= second["prompt_tokens"] - 1  # nothing of the prompt recomputed
    check_all_returned(s, start)


def test_a_prompt_shared_by_running_requests_parks_its_sentences_and_leaves_nothing(zoomr_server):
    s = zoomr_server
    start = empty_tree_state(s)
    prompt = records_prompt(11)
    with cf.ThreadPoolExecutor(4) as ex:
        metas = list(ex.map(lambda i: generate(s, prompt, SKV, 60)["meta_info"], range(4)))
    shared = [m["zoomr"] for m in metas if m["zoomr"]["kept_shared_tokens"] > 0]
    assert shared, [m["zoomr"] for m in metas]  # the tree would not demote what another running request reads
    assert all(z["parked_tokens"] > 0 and z["zoom_recalls"] > 0 for z in shared), shared
    check_all_returned(s, start)


def test_output_thoughts_zoom_beside_the_prompt_sentences(any_zoomr_server):
    s = any_zoomr_server
    start = empty_tree_state(s)
    params = {**ENGINE, **{k: v for k, v in SKV.items() if k != "zoomr_summary_mode"}, "zoomr_zoom_budget": 256}
    out = generate(s, records_prompt(5), params, 400)
    z = out["meta_info"]["zoomr"]
    assert z["forced_markers"] > 0 and z["offloaded_tokens"] > z["demoted_tokens"] > 0, z
    assert z["thoughts"] > 40 + 3 and z["zoom_recalls"] > 0, z
    check_all_returned(s, start)


def test_requests_that_attend_the_whole_prompt_never_get_its_host_backed_sentences(zoomr_server):
    """After a sentencekv request demoted the prompt's sentences to host nodes, a request whose policy reads its whole
    prompt (full, streaming, quest, no ZoomR) or zooms only thoughts (zoomr) gets the prompt on the device, recomputed
    past the first host node: its output equals its output on an empty tree. A later sentencekv request still borrows
    them."""
    s = zoomr_server
    start = empty_tree_state(s)
    prompt = records_prompt(13)
    readers = {
        "full": {**SKV, "zoomr_policy": "full"},
        "streaming": {"zoomr_policy": "streaming", "zoomr_recent_tokens": 64, "zoomr_sink_tokens": 4},
        "quest": {"zoomr_policy": "quest", "zoomr_quest_page_size": 16, "zoomr_quest_top_pages": 4,
                  "zoomr_zoom_budget": 64},
        "zoomr": {**SKV, "zoomr_policy": "zoomr"},
        "no zoomr": {"zoomr_enable": False},
    }
    alone = {}
    for name, params in readers.items():
        s.flush_cache()
        alone[name] = generate(s, prompt, params, 24)["output_ids"]
    s.flush_cache()
    demoting = generate(s, prompt, SKV, 24)["meta_info"]["zoomr"]
    assert demoting["demoted_tokens"] > 0, demoting
    for name, params in readers.items():
        out = generate(s, prompt, params, 24)
        assert out["output_ids"] == alone[name], name  # served as on an empty tree, not around holes
        z = out["meta_info"].get("zoomr") or {}
        assert z.get("reused_host_tokens", 0) == 0, (name, z)
    again = generate(s, prompt, SKV, 24)["meta_info"]["zoomr"]
    assert again["reused_host_tokens"] > 0, again  # the host nodes are still there for the requests that read them
    check_all_returned(s, start)
