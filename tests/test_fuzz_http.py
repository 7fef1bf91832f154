"""Fuzzed HTTP surface: hypothesis-generated request bodies (text and ids, batches, sampling params of every type,
``custom_params`` with ``zoomr_*`` keys, logprob fields, streaming) on all three endpoints of the real ZoomR server.
After each example: no 5xx (a stream's error event counts as its code) and the server answers; at the end the
scheduler is idle, and after ``/flush_cache`` the pool is whole and the host store empty. Derandomized and bounded,
so CI runs the same examples in about a minute; a longer campaign draws fresh ones:
``ZOOMR_FUZZ_EXAMPLES=3000 ZOOMR_FUZZ_SEED=1 .venv/bin/python -m pytest tests/test_fuzz_http.py``."""

from __future__ import annotations

import json
import os

import pytest
import requests
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.test_zoomr_serving import check_all_returned, empty_tree_state

pytestmark = pytest.mark.server

ANY = st.one_of(st.none(), st.booleans(), st.integers(-3, 50),
                st.floats(allow_nan=False, allow_infinity=False, width=32),  # JSON has no inf: the client would refuse
                st.text(max_size=6), st.lists(st.integers(-2, 40), max_size=3),
                st.lists(st.text(max_size=3), max_size=2), st.just([[]]), st.just({}), st.integers(2**63, 2**66))
SMALL_INT = st.one_of(st.integers(0, 24), ANY)
ZOOMR_KEYS = st.sampled_from(["zoomr_zoom_budget", "zoomr_zoom_topk", "zoomr_policy", "zoomr_scoring_layers",
                              "zoomr_summary_mode", "zoomr_min_thought_tokens", "zoomr_max_thought_tokens",
                              "zoomr_enable", "zoomr_zoom_interval", "zoomr_wait_for_recall", "zoomr_bogus",
                              "zoomr_host_store_tokens", "other_key"])
ZOOMR_VALUES = st.one_of(ANY, st.sampled_from(["zoomr", "full", "summary_only", "quest", "engine", "program", "0,1",
                                               "3", "4", "auto"]))
CUSTOM = st.one_of(st.dictionaries(ZOOMR_KEYS, ZOOMR_VALUES, max_size=4), ANY)
SAMPLING = st.fixed_dictionaries({}, optional={
    "max_new_tokens": SMALL_INT, "temperature": st.one_of(st.floats(0, 2), ANY), "top_p": ANY, "top_k": ANY,
    "min_p": ANY, "stop": ANY, "stop_token_ids": ANY, "ignore_eos": ANY, "skip_special_tokens": ANY, "n": ANY,
    "custom_params": CUSTOM, "bogus_key": ANY, "regex": st.just("[a-z]+"), "frequency_penalty": ANY,
})
TEXT = st.one_of(st.text(max_size=20), st.just("Let me think.\n<think>\n"))
IDS = st.lists(st.integers(-2, 2000), max_size=8)  # empty too: [] in a batch killed the scheduler


@st.composite
def generate_body(draw):
    body = {}
    prompt = draw(st.sampled_from(["text", "ids", "text_batch", "ids_batch", "empty_batch"]))
    if prompt == "text":
        body["text"] = draw(TEXT)
    elif prompt == "ids":
        body["input_ids"] = draw(IDS)
    elif prompt == "text_batch":
        body["text"] = draw(st.lists(TEXT, min_size=1, max_size=3))
    elif prompt == "ids_batch":
        body["input_ids"] = draw(st.lists(IDS, min_size=1, max_size=3))
    else:
        body["text"] = []
    body["sampling_params"] = draw(st.one_of(SAMPLING, st.lists(SAMPLING, max_size=3), ANY))
    for key, strategy in (("stream", st.booleans()), ("return_logprob", ANY), ("logprob_start_len", ANY),
                          ("top_logprobs_num", ANY), ("rid", st.one_of(st.text(min_size=1, max_size=8),
                                                                       st.lists(st.text(min_size=1, max_size=4)))),
                          ("extra_body", st.just({"custom_params": {"zoomr_zoom_budget": 8}}))):
        if draw(st.booleans()) and draw(st.booleans()):
            body[key] = draw(strategy)
    return "/generate", body


MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool"]),
                                 "content": st.one_of(st.text(max_size=8), st.just([{"type": "text", "text": "Hi"}]),
                                                      st.lists(st.fixed_dictionaries({"type": ANY, "text": ANY}),
                                                               max_size=2), ANY)})
OPENAI_RARE = (("seed", ANY), ("logit_bias", ANY),
               ("max_completion_tokens", ANY), ("presence_penalty", ANY), ("frequency_penalty", ANY),
               ("response_format", st.one_of(st.just({"type": "json_object"}), st.just({"type": "text"}), ANY)),
               ("stream_options", st.one_of(st.just({"include_usage": True}), ANY)), ("echo", ANY), ("user", ANY),
               ("tools", ANY), ("tool_choice", ANY), ("chat_template_kwargs", st.one_of(
                   st.just({"enable_thinking": False}), ANY)), ("separate_reasoning", ANY), ("min_tokens", ANY),
               ("stop_token_ids", ANY), ("ignore_eos", ANY), ("rid", ANY), ("continue_final_message", ANY))


@st.composite
def openai_body(draw):
    chat = draw(st.booleans())
    body = {"model": "default", "max_tokens": draw(SMALL_INT)}
    if chat:
        body["messages"] = draw(st.one_of(st.just([{"role": "user", "content": "Hi there"}]),
                                          st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "bogus"]),
                                                                          "content": ANY}), max_size=2), ANY,
                                          st.lists(MESSAGE, min_size=1, max_size=3)))
    else:
        body["prompt"] = draw(st.one_of(TEXT, IDS, ANY))
    for key, strategy in (("temperature", ANY), ("stop", ANY), ("stream", st.booleans()), ("custom_params", CUSTOM),
                          ("logprobs", ANY), ("top_logprobs", ANY), ("n", ANY), ("top_p", ANY)):
        if draw(st.booleans()):
            body[key] = draw(strategy)
    for key, strategy in OPENAI_RARE:  # fields a client sends now and then: each in about one body of eight
        if draw(st.integers(0, 7)) == 0:
            body[key] = draw(strategy)
    return ("/v1/chat/completions" if chat else "/v1/completions"), body


def worst_status(response: requests.Response) -> int:
    """The HTTP status, or for a stream the worst error code its events carry."""
    if "text/event-stream" not in response.headers.get("content-type", ""):
        return response.status_code
    worst = response.status_code
    for line in response.iter_lines():
        if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
            continue
        try:
            event = json.loads(line[5:])
        except ValueError:
            continue
        error = event.get("error") if isinstance(event, dict) else None
        if isinstance(error, dict):
            code = error.get("code")
            worst = max(worst, code if isinstance(code, int) else 500)
    return worst


@pytest.fixture(scope="module")
def baseline(zoomr_server):
    return empty_tree_state(zoomr_server)


FUZZ_SEED = os.environ.get("ZOOMR_FUZZ_SEED")


@settings(max_examples=int(os.environ.get("ZOOMR_FUZZ_EXAMPLES", "60")), deadline=None,
          derandomize=FUZZ_SEED is None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=st.one_of(generate_body(), openai_body()))
@(seed(int(FUZZ_SEED)) if FUZZ_SEED else (lambda test: test))
def test_fuzzed_requests_never_get_a_5xx_or_hurt_the_server(zoomr_server, baseline, case):
    path, body = case
    r = requests.post(zoomr_server.url + path, json=body, timeout=120, stream=bool(body.get("stream")))
    status = worst_status(r)
    assert status < 500, (path, body, status, r.text[:300] if status != 200 else "")
    assert zoomr_server.get("/health").status_code == 200, (path, body)


def test_after_the_fuzzing_the_pool_is_whole_and_the_host_store_empty(zoomr_server, baseline):
    assert zoomr_server.get("/health_generate").status_code == 200
    check_all_returned(zoomr_server, baseline)
