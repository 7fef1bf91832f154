"""Bad requests are HTTP 400s with a one-line message naming the field, on every endpoint that carries the field,
and the server lives (``zoomr_sgl.request_validation``). SGLang 0.5.17 alone killed the scheduler on some of these
(a float ``max_new_tokens``, a string ``skip_special_tokens``, constrained decoding on CPU, logprob ranges) and
answered the others with a 500 or ignored them."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.server

CHAT = [{"role": "user", "content": "hi"}]
BIG = 2**64  # JSON parsing on the server turns it into a float

# id: (changes to the /generate body, "sp" for its sampling_params; OpenAI top-level fields or None; needle)
CASES = {
    "float_max_new_tokens": ({"sp": {"max_new_tokens": 8.5}}, {"max_tokens": 8.5}, "max_"),
    "string_max_new_tokens": ({"sp": {"max_new_tokens": "8"}}, None, "max_new_tokens"),
    "string_skip_special_tokens": ({"sp": {"skip_special_tokens": "no"}}, None, "skip_special_tokens"),
    "regex": ({"sp": {"regex": "[a-z]+"}}, {"regex": "[a-z]+"}, "regex"),
    "json_schema": ({"sp": {"json_schema": '{"type": "object"}'}}, {"response_format": {"type": "json_object"}},
                    "json_schema"),
    "negative_logprob_start_len": ({"return_logprob": True, "logprob_start_len": -5}, None, "logprob_start_len"),
    "top_logprobs_past_vocab": ({"return_logprob": True, "top_logprobs_num": 5000},
                                {"logprobs": 5000, "top_logprobs": 5000}, "logprobs"),
    "int_stop": ({"sp": {"stop": 123}}, {"stop": 123}, "stop"),
    "nested_list_stop": ({"sp": {"stop": [[]]}}, {"stop": [[]]}, "stop"),
    "string_temperature": ({"sp": {"temperature": "hot"}}, {"temperature": "hot"}, "temperature"),
    "unknown_sampling_key": ({"sp": {"max_new_tokenz": 4}}, None, "max_new_tokenz"),
    "sampling_params_list_for_one_text": ({"sampling_params": [{"max_new_tokens": 2}, {"max_new_tokens": 3}]}, None,
                                          "sampling_params"),
    "rid_list_for_one_text": ({"rid": ["a", "b"]}, None, "rid"),
    "null_n": ({"sp": {"n": None}}, None, "sampling_params.n"),  # found by the fuzz test (an HTTP 500 before)
    "n_past_2_63": ({"sp": {"n": 2**63}}, None, "sampling_params.n"),  # fuzz: an HTTP 500 before
    "top_k_past_int32": ({"sp": {"top_k": 2**63 - 1}}, {"top_k": 2**63 - 1}, "top_k"),  # killed the scheduler
    "negative_max_new_tokens": ({"sp": {"max_new_tokens": -3}}, None, "max_new_tokens"),
    # found by a fuzz campaign: an empty prompt in a batch killed the scheduler; an empty batch with a list of
    # sampling_params was an HTTP 500
    "empty_prompt_in_a_batch": ({"text": None, "input_ids": [[5, 6], []]}, None, "prompt is empty"),
    "empty_batch_with_a_params_list": ({"text": [], "sampling_params": []}, None, "sampling_params"),
    "zoomr_integer_past_2_64": ({"sp": {"custom_params": {"zoomr_zoom_budget": BIG}}},
                                {"custom_params": {"zoomr_zoom_budget": BIG}}, "2^64"),
    "extra_body_in_sampling_params": ({"sp": {"extra_body": {"custom_params": {"zoomr_zoom_topk": 2}}}}, None,
                                      "extra_body"),
    "extra_body_top_level": ({"extra_body": {"custom_params": {"zoomr_zoom_topk": 2}}},
                             {"extra_body": {"custom_params": {"zoomr_zoom_topk": 2}}}, "extra_body"),
}


def generate_body(change: dict) -> dict:
    change = dict(change)
    body = {"text": "hi", "sampling_params": {"max_new_tokens": 2, **change.pop("sp", {})}}
    return {**body, **change}


def openai_bodies(fields: dict) -> list[tuple[str, dict]]:
    completion = {k: v for k, v in fields.items() if k not in ("response_format", "top_logprobs")}
    chat = {k: v for k, v in fields.items() if k != "logprobs"}
    if "top_logprobs" in chat:
        chat["logprobs"] = True
    bodies = [("/v1/chat/completions", {"model": "default", "messages": CHAT, "max_tokens": 2, **chat})]
    if completion:
        bodies.append(("/v1/completions", {"model": "default", "prompt": "hi", "max_tokens": 2, **completion}))
    return bodies


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_request_is_a_400_naming_the_field_and_the_server_lives(zoomr_server, case):
    change, openai_fields, needle = CASES[case]
    if case in ("regex", "json_schema") and torch.cuda.is_available():
        pytest.skip("constrained decoding is refused only where the server has no CUDA device")
    s = zoomr_server
    bodies = [("/generate", generate_body(change))] + (openai_bodies(openai_fields) if openai_fields else [])
    for path, body in bodies:
        r = s.post(path, body, timeout=60)
        assert 400 <= r.status_code < 500 and needle in r.text, (path, r.status_code, r.text[:300])
        message = r.json().get("message") or r.json()["error"]["message"]
        assert "\n" not in message or path != "/generate", message  # OpenAI's own schema errors list each one
    assert s.get("/health_generate", timeout=60).status_code == 200
    assert s.generate("still fine?", max_new_tokens=3)["meta_info"]["completion_tokens"] >= 1


def test_valid_requests_near_the_edges_still_work(zoomr_server):
    s = zoomr_server
    ok = [
        ("/generate", {"text": "hi", "return_logprob": True, "logprob_start_len": -1, "top_logprobs_num": 3,
                       "sampling_params": {"max_new_tokens": 2, "stop": ["\n"], "stop_token_ids": [3],
                                           "temperature": 0, "skip_special_tokens": False, "n": 1}}),
        ("/generate", {"text": ["a", "b"], "rid": ["edge-1", "edge-2"],
                       "sampling_params": [{"max_new_tokens": 2}, {"max_new_tokens": 3, "stop": "x"}]}),
        ("/generate", {"text": "hi", "sampling_params": {"max_new_tokens": 2, "n": 2}}),
        ("/v1/completions", {"model": "default", "prompt": "hi", "max_tokens": 2, "logprobs": 2, "stop": ["\n"]}),
        ("/v1/chat/completions", {"model": "default", "messages": CHAT, "max_tokens": 2, "logprobs": True,
                                  "top_logprobs": 2, "n": 2}),
    ]
    for path, body in ok:
        r = s.post(path, body, timeout=60)
        assert r.status_code == 200, (path, r.text[:300])


@pytest.mark.parametrize("fmt", ["0", 1.5, True, ["x"]])
def test_a_response_format_that_is_not_an_object_is_a_400_before_sglang_reads_it(zoomr_server, fmt):
    # found by a fuzz campaign: SGLang's ChatCompletionRequest validator calls response_format.get (an HTTP 500); the
    # body is checked before the model reads it (zoomr_sgl.openai_body_check), and a good body still goes through
    body = {"model": "default", "messages": CHAT, "max_tokens": 2, "response_format": fmt}
    r = zoomr_server.post("/v1/chat/completions", body, timeout=60)
    assert r.status_code == 400 and "response_format" in r.json()["message"], (r.status_code, r.text[:300])
    ok = zoomr_server.post("/v1/chat/completions", {**body, "response_format": {"type": "text"}}, timeout=60)
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] is not None, ok.text[:300]
    streamed = zoomr_server.post("/v1/chat/completions", {**body, "response_format": None, "stream": True}, timeout=60)
    assert streamed.status_code == 200 and "data: [DONE]" in streamed.text
