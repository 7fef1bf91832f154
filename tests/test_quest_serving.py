"""Quest served (CPU, the real server on the embedded model): the sequence is cut into pages from position 0, each
page leaves the resident set as it closes (its slots kept), and every decode step the best pages by key bounds are
written back. With room for every page the output equals full attention; with room for a few, pages are picked and
dropped step by step and nothing is left behind; a page that cannot fit the zoom buffer is a 400."""

from __future__ import annotations

import pytest

from tests.test_sentencekv_serving import PROMPT
from tests.test_zoomr_serving import check_all_returned, empty_tree_state, generate

pytestmark = pytest.mark.server

QUEST = {"zoomr_policy": "quest", "zoomr_quest_page_size": 16, "zoomr_quest_top_pages": 4, "zoomr_zoom_budget": 64}
EVERY_PAGE = {**QUEST, "zoomr_quest_top_pages": 10_000, "zoomr_zoom_budget": 100_000}


def test_room_for_every_page_gives_the_full_attention_output(zoomr_server):
    s = zoomr_server
    outs = {}
    for name, params in (("quest", EVERY_PAGE), ("full", {"zoomr_policy": "full"})):
        s.flush_cache()
        outs[name] = generate(s, PROMPT, params, 64)
    assert outs["quest"]["output_ids"] == outs["full"]["output_ids"]
    z, n = outs["quest"]["meta_info"]["zoomr"], outs["quest"]["meta_info"]["prompt_tokens"] + 64
    assert z["thoughts"] == (n - 1) // 16, z  # a page closes when the token after it comes
    assert z["zoom_recalls"] >= z["thoughts"] and z["zoom_evictions"] == 0, z


def test_a_few_pages_are_picked_each_step_and_nothing_is_left_behind(any_zoomr_server):
    s = any_zoomr_server
    start = empty_tree_state(s)
    out = generate(s, PROMPT, QUEST, 96)
    z, prompt = out["meta_info"]["zoomr"], out["meta_info"]["prompt_tokens"]
    assert out["meta_info"]["completion_tokens"] == 96
    assert z["thoughts"] >= prompt // 16, z
    assert z["zoom_recalls"] > 4 and z["zoom_evictions"] > 0, z  # the pick changes as the query does
    assert z["device_kv_tokens"] == z["full_kv_tokens"] and z["offloaded_tokens"] == 0, z  # quest saves reads only
    check_all_returned(s, start)


def test_a_page_larger_than_the_zoom_buffer_is_refused(zoomr_server):
    r = zoomr_server.post("/generate", {"text": "hi", "sampling_params": {
        "max_new_tokens": 4, "custom_params": {**QUEST, "zoomr_quest_page_size": 128}}})
    assert r.status_code == 400 and "quest_page_size" in r.text, r.text
