"""What a generate request may ask of this server: the checks that stand between a bad request and SGLang 0.5.17.

Contract: pure functions over a request's parts (``GenerateReqInput`` fields, its ``sampling_params`` dict, the parsed
JSON body) and what the server knows (vocabulary size, whether the serving process has CUDA). Each returns None for
a request it accepts, which then reaches SGLang unchanged, and raises ``ValueError`` with a one-line message naming
the field otherwise; SGLang answers that with HTTP 400 on ``/generate``, ``/v1/completions`` and
``/v1/chat/completions``. They check what SGLang 0.5.17 would crash on (a dead scheduler, or an HTTP 500) or
silently drop, not what SGLang already refuses (``SamplingParams.verify`` ranges stay SGLang's).

- ``check_request_shape(text, input_ids, sampling_params, rid)``: one prompt takes one ``sampling_params`` object
  and one ``rid`` string; a batch takes one object or one per prompt, and one ``rid`` string or one per prompt (an
  empty batch one object: SGLang answers it with an empty list, but reads a list's first item).
  ``n`` is read before anything else, so its type is checked here too (a ``null`` too: SGLang's
  ``get("n", 1)`` gives None for it, and the request dies with an HTTP 500).
- ``check_raw_body(body)``: a literal ``extra_body`` in the body (the OpenAI client's argument, which it merges into
  the body it sends; written by hand, SGLang drops it and with it the ``custom_params`` inside).
- ``check_sampling_params(params, vocab_size, cuda_available)``: known keys only (the API fields of SGLang's
  ``SamplingParams``), strict types, integers in range (32-bit, ``n`` at most 4,096, a seed 64-bit), ``stop``
  strings non-empty, ``stop_token_ids`` in the vocabulary, and no constrained decoding (``regex``,
  ``json_schema``, ``ebnf``, ``structural_tag``) without CUDA: xgrammar asks for pinned memory, which a CPU-only
  process cannot give, and the scheduler dies.
- ``check_logprob_args(return_logprob, logprob_start_len, top_logprobs_num, vocab_size)``.
- ``check_prompt_ids(input_ids, vocab_size)``: one prompt's token ids once tokenized: at least one (SGLang refuses
  an empty ``input_ids`` but not an empty prompt in a batch, nor a text that tokenizes to nothing, and its
  scheduler dies on the forward), each within the vocabulary.
- ``check_openai_body(path, body)``: an OpenAI body as parsed JSON, before SGLang's pydantic models read it (the
  ASGI middleware ``zoomr_sgl.openai_body_check``): on ``/v1/chat/completions`` a ``response_format`` is an
  object or null (a string, number or list was an HTTP 500 in the model's own validator).
- ``check_zoomr_integers(custom_params)``: an integer of 2^64 or more reaches the server as a float (SGLang parses
  JSON with orjson, which keeps 64-bit integers only); the message says so instead of "got 1.8e+19".

Types are strict where SGLang would carry a wrong one into the scheduler: ``true`` is not an integer, ``"8"`` is not
a number, and an integer field takes no float, even an integral one such as ``8.0`` (the native API documents
integers; the OpenAI endpoints' own parsing turns ``8.0`` into ``8`` before this sees it). ``null`` stays allowed
wherever SGLang reads it as the default.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Any, Mapping

# SamplingParams fields that SGLang fills in itself (normalize, __post_init__); a client never sends them.
INTERNAL_SAMPLING_FIELDS = frozenset({"stop_strs", "stop_regex_strs", "stop_str_max_len", "stop_regex_max_len",
                                      "is_normalized"})
GRAMMAR_KEYS = ("regex", "json_schema", "ebnf", "structural_tag")
INT_KEYS = ("max_new_tokens", "min_new_tokens", "n", "top_k", "stream_interval", "sampling_seed")
NUMBER_KEYS = ("temperature", "top_p", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty")
# SGLang carries these into 32-bit tensors (a top_k of 2^63 killed the scheduler); a request fans out into n copies
# (n of 2^40 was an HTTP 500); a seed seeds a 64-bit generator.
INT32_MAX = 2**31 - 1
INT_RANGES = {"n": (1, 4096), "max_new_tokens": (0, INT32_MAX), "sampling_seed": (0, 2**63 - 1)}
BOOL_KEYS = ("ignore_eos", "skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim")
EXTRA_BODY = ("extra_body is an OpenAI-client argument (the client merges it into the body it sends), not a field "
              "of this API: put custom_params in sampling_params on /generate, at the top level on /v1/*")


@lru_cache(maxsize=1)
def sampling_param_names() -> frozenset[str]:
    """The keys a client may send in ``sampling_params``: the API fields of SGLang's ``SamplingParams``."""
    import inspect

    from sglang.srt.sampling.sampling_params import SamplingParams

    return frozenset(inspect.signature(SamplingParams).parameters) - INTERNAL_SAMPLING_FIELDS


@lru_cache(maxsize=1)
def zoomr_integer_settings() -> frozenset[str]:
    """The ``ZoomRConfig`` fields that take an integer (their request keys are ``zoomr_<name>``)."""
    import dataclasses

    from zoomr_sgl.config import ZoomRConfig

    return frozenset(f.name for f in dataclasses.fields(ZoomRConfig) if f.type == "int")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _got(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) >= 2**63:
        return f"got {value!r} (integers of 2^64 or more reach the server as floats)"
    return f"got {value!r}" if not isinstance(value, (list, dict)) else f"got a {type(value).__name__}"


def _need_int(field: str, value: Any) -> None:
    if value is not None and not _is_int(value):
        raise ValueError(f"{field} must be an integer, {_got(value)}")


def _need_int_in(field: str, key: str, value: Any) -> None:
    """``value`` (None allowed) is an integer within ``INT_RANGES[key]`` (default: 32-bit)."""
    _need_int(field, value)
    low, high = INT_RANGES.get(key, (-INT32_MAX - 1, INT32_MAX))
    if value is not None and not low <= value <= high:
        raise ValueError(f"{field} must be between {low:,} and {high:,}, got {value:,}")


def check_request_shape(text: Any, input_ids: Any, sampling_params: Any, rid: Any) -> None:
    """What ``GenerateReqInput.normalize_batch_and_arguments`` assumes about the request's batch shape."""
    if isinstance(text, str):
        batch = None
    elif isinstance(text, list):
        batch = len(text)
    elif text is None and isinstance(input_ids, list) and input_ids and isinstance(input_ids[0], list):
        batch = len(input_ids)
    elif text is None and input_ids is not None:
        batch = None
    else:
        return  # input_embeds, or nothing: SGLang's own checks
    items = sampling_params if isinstance(sampling_params, list) else [sampling_params]
    if batch == 0 and isinstance(sampling_params, list):  # SGLang reads the list's first item: an HTTP 500
        raise ValueError("an empty batch takes sampling_params as one object (or none), got a list")
    if batch is None and isinstance(sampling_params, list):
        raise ValueError(f"sampling_params must be one object for a single prompt, got a list of {len(items)}")
    if batch is not None and isinstance(sampling_params, list) and len(sampling_params) != batch:
        raise ValueError(f"sampling_params must be one object or a list of {batch} (one per prompt), "
                         f"got a list of {len(sampling_params)}")
    for params in items:
        if params is not None and not isinstance(params, Mapping):
            raise ValueError(f"sampling_params must be a JSON object, {_got(params)}")
        n = (params or {}).get("n")
        if params is not None and "n" in params and n is None:  # SGLang reads get("n", 1): a null is no default
            raise ValueError("sampling_params.n must be an integer of at least 1, got None")
        _need_int_in("sampling_params.n", "n", n)
    if rid is None or isinstance(rid, str):
        return
    if batch is None:
        raise ValueError(f"rid must be one string for a single prompt, {_got(rid)}")
    if not isinstance(rid, list) or len(rid) != batch or not all(isinstance(r, str) for r in rid):
        raise ValueError(f"rid must be a string or a list of {batch} strings (one per prompt), {_got(rid)}")


def check_openai_body(path: str, body: Any) -> None:
    """An OpenAI body before SGLang's models read it (see the module contract)."""
    if not isinstance(body, Mapping) or path != "/v1/chat/completions":
        return
    fmt = body.get("response_format")
    if fmt and not isinstance(fmt, Mapping):  # SGLang's set_json_schema calls fmt.get
        raise ValueError('response_format must be an object such as {"type": "json_object"}, ' + _got(fmt))


def check_raw_body(body: Any) -> None:
    """The parsed JSON body: no literal ``extra_body``."""
    if isinstance(body, Mapping) and "extra_body" in body:
        raise ValueError(EXTRA_BODY)


def check_sampling_params(params: Any, vocab_size: int, cuda_available: bool) -> None:
    """One request's ``sampling_params`` dict (None: SGLang's defaults)."""
    if params is None:
        return
    if not isinstance(params, Mapping):
        raise ValueError(f"sampling_params must be a JSON object, {_got(params)}")
    known = sampling_param_names()
    for key in params:
        if key == "extra_body":
            raise ValueError(f"sampling_params.{EXTRA_BODY}")
        if key not in known:
            raise ValueError(f"unknown sampling_params key {key!r}")
    for key in INT_KEYS:
        _need_int_in(key, key, params.get(key))
    for key in NUMBER_KEYS:
        value = params.get(key)
        if value is not None and not _is_number(value):
            raise ValueError(f"{key} must be a number, {_got(value)}")
    for key in BOOL_KEYS:
        value = params.get(key)
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, {_got(value)}")
    stop = params.get("stop")
    if stop is not None:
        strings = [stop] if isinstance(stop, str) else stop
        if not isinstance(strings, list) or not all(isinstance(s, str) and s for s in strings):
            raise ValueError(f"stop must be a non-empty string or a list of non-empty strings, {_got(stop)}")
    stop_regex = params.get("stop_regex")
    if stop_regex is not None:
        patterns = [stop_regex] if isinstance(stop_regex, str) else stop_regex
        if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
            raise ValueError(f"stop_regex must be a non-empty string or a list of them, {_got(stop_regex)}")
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"stop_regex {pattern!r} is not a regular expression: {e}") from None
    ids = params.get("stop_token_ids")
    if ids is not None:
        if not isinstance(ids, list) or not all(_is_int(t) for t in ids):
            raise ValueError(f"stop_token_ids must be a list of integers, {_got(ids)}")
        bad = next((t for t in ids if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise ValueError(f"stop_token_ids holds {bad}, outside the model's vocabulary [0, {vocab_size})")
    bias = params.get("logit_bias")
    if bias is not None and (not isinstance(bias, Mapping) or not all(_is_number(v) for v in bias.values())):
        raise ValueError(f"logit_bias must map token ids to numbers, {_got(bias)}")
    custom = params.get("custom_params")
    if custom is not None and not isinstance(custom, Mapping):
        raise ValueError(f"custom_params must be a JSON object, {_got(custom)}")
    for key in GRAMMAR_KEYS:
        value = params.get(key)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{key} must be a string, {_got(value)}")
        if value and not cuda_available:
            raise ValueError(f"{key}: constrained decoding needs a CUDA device (xgrammar), and this server has none")


def check_prompt_ids(input_ids: Any, vocab_size: int) -> None:
    """One tokenized prompt (see the module contract); None (embeddings) is SGLang's to check."""
    if input_ids is None:
        return
    if len(input_ids) == 0:
        raise ValueError("a prompt is empty: it must hold at least one token (an empty text, or [] in input_ids)")
    bad = next((i for i in input_ids if not 0 <= i < vocab_size), None)
    if bad is not None:
        raise ValueError(f"input_ids holds token id {bad}, outside the model's vocabulary [0, {vocab_size})")


def check_logprob_args(return_logprob: Any, logprob_start_len: Any, top_logprobs_num: Any, vocab_size: int) -> None:
    """One request's logprob fields (the per-prompt values of a batch)."""
    if return_logprob is not None and not isinstance(return_logprob, bool):
        raise ValueError(f"return_logprob must be true or false, {_got(return_logprob)}")
    _need_int("logprob_start_len", logprob_start_len)
    if logprob_start_len is not None and logprob_start_len < -1:
        raise ValueError(f"logprob_start_len must be -1 (output only) or a position >= 0, got {logprob_start_len}")
    _need_int("top_logprobs_num", top_logprobs_num)
    if top_logprobs_num is not None and not 0 <= top_logprobs_num <= vocab_size:
        raise ValueError(f"top_logprobs_num must be in [0, {vocab_size}] (the vocabulary), got {top_logprobs_num}")


def check_zoomr_integers(custom_params: Any) -> None:
    """``zoomr_*`` integer settings that arrived as floats because they were 2^64 or more."""
    if not isinstance(custom_params, Mapping):
        return
    for key, value in custom_params.items():
        if (isinstance(key, str) and key[len("zoomr_"):] in zoomr_integer_settings() and isinstance(value, float)
                and (not math.isfinite(value) or (value.is_integer() and abs(value) >= 2**63))):
            raise ValueError(f"custom_params key {key!r} must be an integer below 2^64, {_got(value)}")
