"""One point of the capacity benchmark: N concurrent streamed generations against one server, as the client and the
scheduler saw them.

Contract: ``measure_point(url, plan)`` flushes the server's radix cache, sends ``plan.prompts`` at once (greedy,
``ignore_eos``, ``stream``, ``plan.custom_params`` per request) over ``plan.api`` (``benchmarks.stream_client``), the
first ``plan.kv_probes`` of them over ``/generate`` for ZoomR's per-request ``meta_info.zoomr`` (the OpenAI
transport carries none; the same split on every row, so every server sees the same load), and returns a
``PointResult``:
- ``plan.window_s`` None: every request runs to its end; the measurement spans the first send to the last token.
- otherwise: once the server is full (``wait_full``) it counts output tokens for ``window_s`` seconds (less if a
  request finishes first: ``cut_short``; no rate under ``MIN_WINDOW_S``), then aborts everything (``/abort_request {"abort_all": true}``).
Either way the server is idle again (scheduler: nothing running or queued) when it returns or raises; a failed
request raises ``RuntimeError``. Scheduler figures come from ``scheduler_probe``; the client only times tokens.
"""

from __future__ import annotations

import asyncio
import time
from typing import NamedTuple

import aiohttp

try:
    from benchmarks.scheduler_probe import SchedulerProbe, host_ms_per_step, read_host_clock, read_sample, wait_idle
    from benchmarks.stream_client import RequestTrace, stream_one
except ImportError:  # run as a script: benchmarks/ itself is on the path
    from scheduler_probe import SchedulerProbe, host_ms_per_step, read_host_clock, read_sample, wait_idle
    from stream_client import RequestTrace, stream_one


MIN_WINDOW_S = 0.5  # a shorter measurement has no rate worth reporting


class PointPlan(NamedTuple):
    row: str
    server: str
    length: int  # max_new_tokens
    prompts: list[list[int]]
    custom_params: dict | None  # ZoomR settings (a ZoomR row), or None (a stock server)
    window_s: float | None  # None: run to completion
    settle_s: float = 10.0  # wait_full: seconds without growth that mean "full"
    max_ramp_s: float = 300.0  # wait_full: at most this long
    poll_s: float = 0.5  # between /metrics reads
    pool_tokens: int | None = None  # the server's KV pool (wait_full: may a retraction still come?)
    bounded: bool = False  # a row charged by ZoomR's bound: it never retracts, and its usage grows until the end
    api: str = "openai"  # stream_client transport of every request but the KV probes
    kv_probes: int = 2  # the first requests stream over /generate: meta_info.zoomr (ZoomR's device KV per request)


class PointResult(NamedTuple):
    row: str
    server: str
    length: int
    requests: int
    mode: str  # "complete" or "window"
    ramp_s: float  # window: from the first send until the server was full; complete: 0
    full_by: str  # window: why the server counted as full
    measured_s: float  # complete: first send to last token; window: the window actually measured
    cut_short: bool  # window: a request finished inside it, so it ended early
    started: int  # requests that had streamed a token by the end of the measurement
    output_tokens: int  # inside the measurement
    output_tok_per_s: float | None  # None: a window cut short before it lasted MIN_WINDOW_S
    tbt_p50_ms: float | None
    tbt_p99_ms: float | None
    tbt_samples: int
    peak_kv_max: int | None  # device KV tokens per request, the largest request
    peak_kv_mean: float | None
    peak_kv_source: str
    step_kv_mean: float | None  # device KV per request averaged over its decode steps, then over the requests
    scheduler: dict  # scheduler_probe.SchedulerFigures
    transport: str = "generate"  # how the requests streamed (points measured before 2026-12-06: all /generate)
    zoomr_host_ms: dict | None = None  # ZoomR's own host ms per decode step over the measurement, per hook


def tbt_ms(traces: list[RequestTrace], t0: float, t1: float) -> tuple[float | None, float | None, int]:
    """p50, p99 of the time between tokens inside [t0, t1]: a chunk's gap to the previous chunk of its request,
    split evenly over the tokens it brought. The gap before a request's first token (queueing, prefill) is no TBT."""
    gaps: list[float] = []
    for tr in traces:
        for i in range(1, len(tr.times)):
            if t0 <= tr.times[i - 1] and tr.times[i] <= t1:
                n = tr.tokens[i] - tr.tokens[i - 1]
                gaps += [(tr.times[i] - tr.times[i - 1]) * 1000 / n] * n
    if not gaps:
        return None, None, 0
    gaps.sort()
    pick = lambda q: gaps[min(len(gaps) - 1, int(q * len(gaps)))]  # noqa: E731
    return pick(0.50), pick(0.99), len(gaps)


def count_at(traces: list[RequestTrace]) -> int:
    return sum(tr.count for tr in traces)


async def wait_full(traces: list[RequestTrace], probe: SchedulerProbe, plan: PointPlan) -> tuple[float, str]:
    """Until every request streams, or for ``settle_s`` no more requests streamed, the scheduler's running count did
    not grow, and neither did its token usage (by 1% of the pool) while the streaming requests' full KV would
    overflow the pool (a retraction may still come; never for a bounded row, whose usage grows with its summaries
    until the end); at most ``max_ramp_s``. Returns (time, why)."""
    t_start = last_growth = time.perf_counter()
    best = [0, 0.0, 0.0]  # streaming requests, running requests, token usage
    full_kv = len(plan.prompts[0]) + plan.length
    while True:
        now = time.perf_counter()
        started = sum(1 for tr in traces if tr.tokens)
        if started == len(traces):
            return now, "all streaming"
        if any(tr.error or tr.finish for tr in traces):  # no steady state before the first finish
            return now, "a request ended first"
        usage = probe.samples[-1].token_usage if probe.samples else 0.0
        may_retract = not plan.bounded and (plan.pool_tokens is None or started * full_kv > plan.pool_tokens)
        if started > best[0] or probe.running_max() > best[1] or (may_retract and usage >= best[2] + 0.01):
            best, last_growth = [max(started, best[0]), max(probe.running_max(), best[1]), max(usage, best[2])], now
        if started and now - last_growth >= plan.settle_s:
            return now, f"{started} streaming, no growth for {plan.settle_s:g} s"
        if now - t_start >= plan.max_ramp_s:
            return now, f"{started} streaming at the ramp limit"
        await asyncio.sleep(0.1)


def api_of(plan: PointPlan, i: int) -> str:
    return "generate" if i < plan.kv_probes else plan.api


def transport(plan: PointPlan) -> str:
    n = len(plan.prompts)
    probes = min(n, plan.kv_probes) if plan.api != "generate" else 0
    if not probes:
        return plan.api
    return f"{plan.api}, {probes} of {n} over generate"


async def measure_point(url: str, plan: PointPlan) -> PointResult:
    params = {"max_new_tokens": plan.length, "temperature": 0, "ignore_eos": True}
    if plan.custom_params:
        params["custom_params"] = plan.custom_params
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)  # a queued request may wait minutes for a token
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout,
                                     read_bufsize=1 << 22) as session:
        async with session.post(url + "/flush_cache?timeout=60", timeout=aiohttp.ClientTimeout(total=120)) as r:
            if r.status != 200:
                raise RuntimeError(f"{url}/flush_cache: HTTP {r.status}: {await r.text()}")
        probe = SchedulerProbe(session, url, plan.poll_s)
        before = await read_sample(session, url)
        probe.start()
        traces = [RequestTrace() for _ in plan.prompts]
        zoomr = bool(plan.custom_params)  # a ZoomR row: its host clock is read where the measurement starts and ends
        clock0 = clock1 = await read_host_clock(session, url) if zoomr and plan.window_s is None else None
        t_send = time.perf_counter()
        tasks = [asyncio.create_task(stream_one(session, url, api_of(plan, i), ids, params, tr))
                 for i, (ids, tr) in enumerate(zip(plan.prompts, traces))]
        try:
            if plan.window_s is None:
                await asyncio.gather(*tasks)
                if zoomr:
                    clock1 = await read_host_clock(session, url)
                t0, ramp, full_by, tok0, cut = t_send, 0.0, "", 0, False
                t1 = max((tr.times[-1] for tr in traces if tr.times), default=t_send)
            else:
                t0, full_by = await wait_full(traces, probe, plan)
                ramp, tok0 = t0 - t_send, count_at(traces)
                if zoomr:
                    clock0 = await read_host_clock(session, url)
                while time.perf_counter() < t0 + plan.window_s and not any(tr.finish or tr.error for tr in traces):
                    await asyncio.sleep(0.05)
                t1, cut = time.perf_counter(), any(tr.finish for tr in traces)
                if zoomr:
                    clock1 = await read_host_clock(session, url)
            tok1 = count_at(traces)
        finally:  # done, failed or interrupted: nothing of this point may keep running on the server
            if not all(t.done() for t in tasks):
                async with session.post(url + "/abort_request", json={"abort_all": True}) as r:
                    await r.read()
                await asyncio.wait(tasks, timeout=60)
                for t in tasks:
                    t.cancel()
            await wait_idle(session, url)
            await probe.stop()
        errors = [tr.error for tr in traces if tr.error]
        if errors:
            raise RuntimeError(f"{plan.row} at {plan.length}: {len(errors)} request(s) failed, e.g. {errors[0]}")
        after = await read_sample(session, url)
    sched = probe.figures(t0, t1, before, after)
    p50, p99, n_gaps = tbt_ms(traces, t0, t1)
    if plan.custom_params:
        peaks = [tr.zoomr["peak_device_kv_tokens"] for tr in traces if tr.zoomr]
        steps = [tr.zoomr["mean_device_kv_tokens"] for tr in traces if tr.zoomr]
        source = "meta_info.zoomr.peak_device_kv_tokens"
    else:  # full KV: the prompt plus what was generated by each step
        peaks = [len(ids) + tr.count for ids, tr in zip(plan.prompts, traces) if tr.tokens]
        steps = [len(ids) + tr.count / 2 for ids, tr in zip(plan.prompts, traces) if tr.tokens]
        source = "prompt + output tokens (full KV)"
    tokens, seconds = tok1 - tok0, t1 - t0
    return PointResult(
        row=plan.row, server=plan.server, length=plan.length, requests=len(plan.prompts),
        mode="complete" if plan.window_s is None else "window", ramp_s=ramp, full_by=full_by, measured_s=seconds,
        cut_short=cut, started=sum(1 for tr in traces if tr.tokens), output_tokens=tokens,
        output_tok_per_s=tokens / seconds if seconds >= MIN_WINDOW_S else None, tbt_p50_ms=p50, tbt_p99_ms=p99, tbt_samples=n_gaps,
        peak_kv_max=max(peaks) if peaks else None, peak_kv_mean=sum(peaks) / len(peaks) if peaks else None,
        peak_kv_source=source, step_kv_mean=sum(steps) / len(steps) if steps else None, scheduler=sched._asdict(),
        transport=transport(plan), zoomr_host_ms=host_ms_per_step(clock0, clock1))
