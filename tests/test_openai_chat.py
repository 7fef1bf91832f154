"""The OpenAI chat path with ZoomR: ``/v1/chat/completions`` through the ``openai`` client, SGLang's reasoning parser
splitting the thinking from the answer, ZoomR's settings in ``extra_body``, streaming or not; and engine mode closing
thoughts only while the model thinks (``zoomr_thinking_end``, default ``</think>``): the answer gets no summaries."""

from __future__ import annotations

import pytest

from tests.conftest import ZOOMR_ARGS, ZOOMR_ENV, _serve_or_attach
from tests.test_zoomr_serving import ENGINE, QUESTION, zoomr_manager_state

pytestmark = pytest.mark.server

# The default end marker (</think>); thoughts short enough that the embedded model's brief thinking closes some.
THINKING = {**{k: v for k, v in ENGINE.items() if k != "zoomr_thinking_end"}, "zoomr_min_thought_tokens": 8,
            "zoomr_max_thought_tokens": 12, "zoomr_max_summary_tokens": 4}
# The assistant turn opens with <think>: the model continues its thinking there (SGLang's continue_final_message).
MESSAGES = [{"role": "user", "content": "Tom has 12 apples and buys 7 more. How many apples now?"},
            {"role": "assistant", "content": "<think>\n"}]


@pytest.fixture(scope="module")
def reasoning_server():
    yield from _serve_or_attach("ZOOMR_TEST_REASONING_URL", ZOOMR_ARGS + ["--reasoning-parser", "qwen3"], ZOOMR_ENV)


def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="none", timeout=300)


def chat(server, stream: bool, **extra):
    body = {"custom_params": THINKING, "ignore_eos": True, "continue_final_message": True, **extra}
    return client(server).chat.completions.create(model="default", messages=MESSAGES, max_tokens=400, temperature=0,
                                                  stream=stream, extra_body=body)


def test_chat_with_a_reasoning_parser_and_zoomr_settings_in_extra_body(reasoning_server):
    before = zoomr_manager_state(reasoning_server)["totals"]
    r = chat(reasoning_server, stream=False)
    message, usage = r.choices[0].message, r.usage
    assert usage.completion_tokens == 400 and r.choices[0].finish_reason == "length"
    reasoning = getattr(message, "reasoning_content", None) or ""
    assert "<summary>" in reasoning and "</summary>" in reasoning, reasoning[:500]  # engine-mode thoughts
    assert message.content, "the model ended its thinking: the answer is the content"
    after = zoomr_manager_state(reasoning_server)["totals"]
    assert after["forced_markers"] > before["forced_markers"] and after["offloaded_tokens"] > before["offloaded_tokens"]

    parts = {"reasoning": [], "content": []}
    for chunk in chat(reasoning_server, stream=True):
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is not None:
            parts["reasoning"].append(getattr(delta, "reasoning_content", None) or "")
            parts["content"].append(delta.content or "")
    streamed = {k: "".join(v) for k, v in parts.items()}
    assert "<summary>" in streamed["reasoning"] and streamed["content"], streamed
    assert zoomr_manager_state(reasoning_server)["totals"]["offloaded_tokens"] > after["offloaded_tokens"]


def test_a_bad_zoomr_setting_in_extra_body_is_a_400(reasoning_server):
    from openai import BadRequestError

    with pytest.raises(BadRequestError, match="zoomr_zoom_budget"):
        chat(reasoning_server, stream=False, custom_params={"zoomr_zoom_budget": -1})


def test_no_thought_is_closed_once_the_thinking_has_ended(reasoning_server):
    """``summary_only`` (no zoom: the greedy text does not depend on the server's zoom cadence). Every marker the
    engine forced lies before ``</think>`` (give or take the one in flight when it came); the answer holds none."""
    out = reasoning_server.generate(QUESTION, max_new_tokens=500, ignore_eos=True,
                                    custom_params={**THINKING, "zoomr_policy": "summary_only"})
    text, stats = out["text"], out["meta_info"]["zoomr"]
    assert "</think>" in text, text[:800]
    thinking, answer = text.split("</think>", 1)
    markers_before = thinking.count("<summary>") + thinking.count("</summary>")
    assert 0 < stats["forced_markers"] <= markers_before + 1, (stats, markers_before)
    assert "<summary>" not in answer, answer[:800]
    ended = reasoning_server.generate(QUESTION, max_new_tokens=500, ignore_eos=True,
                                      custom_params={**THINKING, "zoomr_policy": "summary_only",
                                                     "zoomr_thinking_end": ""})
    assert ended["meta_info"]["zoomr"]["thoughts"] > stats["thoughts"]  # without the end marker: thoughts to the end
