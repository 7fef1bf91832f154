"""How the capacity client streams one greedy generation and times its tokens: SGLang's native ``/generate`` or the
OpenAI-compatible ``/v1/completions``.

Contract: ``stream_one(session, url, api, ids, params, trace)`` posts one streamed generation of prompt ``ids`` with
SGLang sampling ``params`` (``max_new_tokens``, ``temperature``, ``ignore_eos``, optional ``custom_params``) and fills
``trace``: the arrival time and cumulative completion tokens of every chunk that brought tokens, the finish reason,
``meta_info.zoomr`` where the transport carries it, or an error (never raises for a failed request).
- ``"generate"``: SGLang's native endpoint with its default (non-incremental) streaming: every chunk carries the
  whole text and every output id so far, so the server's work per chunk grows with the output (at 16K outputs and
  ~3,000 chunks/s, SGLang's HTTP side falls behind the scheduler, H200 2026-12-01). Carries ``meta_info.zoomr``.
- ``"openai"``: ``/v1/completions`` with ``stream_options.continuous_usage_stats``: each chunk carries the new text
  and the completion-token count so far, the same small chunk at any length (what OpenAI clients receive). Carries
  no ``meta_info``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import aiohttp

try:
    from orjson import loads
except ImportError:
    from json import loads

APIS = ("openai", "generate")


@dataclass
class RequestTrace:
    """One streamed request as the client saw it: arrival time and cumulative completion tokens of each chunk."""

    times: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    zoomr: dict | None = None  # the latest meta_info.zoomr (``generate`` only)
    finish: str | None = None
    error: str | None = None

    @property
    def count(self) -> int:
        return self.tokens[-1] if self.tokens else 0

    def took(self, t: float, completion_tokens: int) -> None:
        if completion_tokens > self.count:
            self.times.append(t)
            self.tokens.append(completion_tokens)


def meta_info(body: bytes) -> dict:
    """``meta_info`` of one ``/generate`` chunk. SGLang's chunks end with it; parse just that (a chunk also carries
    every output id so far), else the whole chunk."""
    at = body.rfind(b'"meta_info":')
    if at >= 0 and body.endswith(b"}"):
        try:
            meta = loads(body[at + 12:-1])
            if isinstance(meta, dict) and "completion_tokens" in meta:
                return meta
        except ValueError:
            pass
    chunk = loads(body)
    if "error" in chunk:
        raise RuntimeError(chunk["error"].get("message", chunk["error"]))
    return chunk["meta_info"]


def _take_generate(body: bytes, t: float, trace: RequestTrace) -> None:
    meta = meta_info(body)
    trace.took(t, meta["completion_tokens"])
    trace.zoomr = meta.get("zoomr") or trace.zoomr
    if meta.get("finish_reason"):
        trace.finish = meta["finish_reason"]["type"]


def _take_openai(body: bytes, t: float, trace: RequestTrace) -> None:
    chunk = loads(body)
    if "error" in chunk:
        error = chunk["error"]
        raise RuntimeError(error.get("message", error) if isinstance(error, dict) else error)
    usage = chunk.get("usage")
    if usage:
        trace.took(t, usage["completion_tokens"])
    for choice in chunk.get("choices") or ():
        if choice.get("finish_reason"):
            trace.finish = choice["finish_reason"]


def request_for(api: str, ids: list[int], params: dict) -> tuple[str, dict]:
    """The path and JSON body of one streamed generation over ``api``."""
    if api == "generate":
        return "/generate", {"input_ids": ids, "stream": True, "sampling_params": params}
    if api != "openai":
        raise ValueError(f"unknown api {api!r}: one of {', '.join(APIS)}")
    body = {"prompt": ids, "max_tokens": params["max_new_tokens"], "temperature": params.get("temperature", 0),
            "ignore_eos": params.get("ignore_eos", False), "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    if params.get("custom_params"):
        body["custom_params"] = params["custom_params"]
    return "/v1/completions", body


async def stream_one(session: aiohttp.ClientSession, url: str, api: str, ids: list[int], params: dict,
                     trace: RequestTrace) -> None:
    path, body = request_for(api, ids, params)
    take = _take_generate if api == "generate" else _take_openai
    try:
        async with session.post(url + path, json=body) as r:
            if r.status != 200:
                trace.error = f"HTTP {r.status}: {(await r.text())[:300]}"
                return
            async for line in r.content:
                if not line.startswith(b"data: "):
                    continue
                t, data = time.perf_counter(), line[6:].strip()
                if data == b"[DONE]":
                    return
                take(data, t, trace)
    except (aiohttp.ClientError, RuntimeError, ValueError, KeyError, TypeError) as e:
        trace.error = f"{type(e).__name__}: {e}"
