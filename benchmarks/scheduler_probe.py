"""What SGLang's scheduler says about itself while a benchmark point runs, read from its Prometheus metrics.

Contract:
- ``read_sample(session, url)`` GETs ``/metrics`` of a server started with ``--enable-metrics`` and returns one
  ``SchedulerSample``; it raises ``MetricsUnavailable`` when the endpoint fails or lacks ``sglang:num_running_reqs``.
- ``SchedulerProbe(session, url, interval)`` samples in the background between ``start()`` and ``await stop()``;
  ``figures(t0, t1, before, after)`` summarises the samples taken in ``[t0, t1]`` (plain means: the samples are
  evenly spaced in time) and the retractions between two samples read at the point's start and end.
- ``read_host_clock(session, url)``: a ZoomR server's ``HostClock`` report (``/server_info``, the first scheduler's
  ``zoomr.manager.host_clock``), None for a server without one; ``host_ms_per_step(before, after)``: ZoomR's host
  milliseconds per decode step between two reports, per hook and in ``total`` (None without decode steps), and per
  piece of a hook (``"after_decode/zoom_recall"``: inside its hook's figure, not added to ``total``).
- ``wait_idle(session, url, timeout)`` returns once two reads in a row show no running and no queued request;
  it raises ``TimeoutError`` otherwise.

SGLang 0.5.17 refreshes these gauges every ``--decode-log-interval`` decode steps (default 40) and once when the
scheduler goes idle, so a sample can be up to that many steps old. The retraction counter
``sglang:num_retracted_requests_total`` moves at the retraction itself and is absent until the first one (read as
0). All names were checked against a 0.5.17 server's ``/metrics``.
"""

from __future__ import annotations

import asyncio
import time
from typing import NamedTuple

import aiohttp

RUNNING = "sglang:num_running_reqs"
QUEUED = "sglang:num_queue_reqs"
TOKEN_USAGE = "sglang:token_usage"  # used / pool size, 0..1 (the max over pools on hybrid models)
USED_TOKENS = "sglang:num_used_tokens"
GEN_THROUGHPUT = "sglang:gen_throughput"  # tokens/s over the last decode-log interval
RETRACTED = "sglang:num_retracted_requests_total"
NAMES = (RUNNING, QUEUED, TOKEN_USAGE, USED_TOKENS, GEN_THROUGHPUT, RETRACTED)


class MetricsUnavailable(RuntimeError):
    """The server has no usable ``/metrics`` (started without ``--enable-metrics``?)."""


class SchedulerSample(NamedTuple):
    t: float  # time.perf_counter() when the answer arrived
    running: float
    queued: float
    token_usage: float
    used_tokens: float
    gen_throughput: float
    retracted_total: float


class SchedulerFigures(NamedTuple):
    source: str  # where the figures come from, e.g. "/metrics"
    samples: int
    running_mean: float
    running_max: float
    token_usage_mean: float
    token_usage_max: float
    used_tokens_mean: float
    used_tokens_max: float
    gen_throughput_mean: float
    retractions: int


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {name: value summed over label sets}, for the names in ``NAMES``."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        brace = line.find("{")
        name = line[:brace] if brace >= 0 else line.split(" ", 1)[0]
        if name not in NAMES:
            continue
        value = line[line.rfind("}") + 1:] if brace >= 0 else line.split(" ", 1)[1]
        found[name] = found.get(name, 0.0) + float(value.split()[0])
    return found


async def read_sample(session: aiohttp.ClientSession, url: str) -> SchedulerSample:
    try:
        async with session.get(url + "/metrics", timeout=aiohttp.ClientTimeout(total=30)) as r:
            text = await r.text() if r.status == 200 else ""
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        raise MetricsUnavailable(f"{url}/metrics: {e}") from None
    m = parse_metrics(text)
    if RUNNING not in m:
        raise MetricsUnavailable(f"{url}/metrics has no {RUNNING}: start the server with --enable-metrics")
    return SchedulerSample(time.perf_counter(), m[RUNNING], m.get(QUEUED, 0.0), m.get(TOKEN_USAGE, 0.0),
                           m.get(USED_TOKENS, 0.0), m.get(GEN_THROUGHPUT, 0.0), m.get(RETRACTED, 0.0))


async def read_host_clock(session: aiohttp.ClientSession, url: str) -> dict | None:
    try:
        async with session.get(url + "/server_info", timeout=aiohttp.ClientTimeout(total=30)) as r:
            info = await r.json() if r.status == 200 else {}
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return None
    states = info.get("internal_states") or [{}]
    return ((states[0].get("zoomr") or {}).get("manager") or {}).get("host_clock")


def host_ms_per_step(before: dict | None, after: dict | None) -> dict | None:
    if not before or not after:
        return None
    steps = after["decode_steps"] - before["decode_steps"]
    if steps <= 0:
        return None
    seconds = {name: sec - before["hooks"].get(name, (0, 0.0))[1] for name, (_, sec) in after["hooks"].items()}
    ms = {name: round(1000.0 * sec / steps, 4) for name, sec in seconds.items() if sec > 0}
    was = before.get("parts") or {}
    parts = {name: round(1000.0 * (sec - was.get(name, (0, 0.0))[1]) / steps, 4)
             for name, (_, sec) in (after.get("parts") or {}).items()}  # "hook/piece": inside a hook's time
    return {**ms, "total": round(sum(ms.values()), 4), "decode_steps": steps,
            **{name: v for name, v in parts.items() if v > 0}}


class SchedulerProbe:
    def __init__(self, session: aiohttp.ClientSession, url: str, interval: float = 0.5):
        self.session, self.url, self.interval = session, url, interval
        self.samples: list[SchedulerSample] = []
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            self.samples.append(await read_sample(self.session, self.url))
            await asyncio.sleep(self.interval)

    def running_max(self) -> float:
        return max((s.running for s in self.samples), default=0.0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def figures(self, t0: float, t1: float, before: SchedulerSample, after: SchedulerSample) -> SchedulerFigures:
        window = [s for s in self.samples if t0 <= s.t <= t1] or [after]  # a point shorter than one poll
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        return SchedulerFigures(
            "/metrics", len(window), mean([s.running for s in window]), max(s.running for s in window),
            mean([s.token_usage for s in window]), max(s.token_usage for s in window),
            mean([s.used_tokens for s in window]), max(s.used_tokens for s in window),
            mean([s.gen_throughput for s in window]), int(round(after.retracted_total - before.retracted_total)))


async def wait_idle(session: aiohttp.ClientSession, url: str, timeout: float = 120.0) -> None:
    deadline, quiet = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        s = await read_sample(session, url)
        quiet = quiet + 1 if s.running == 0 and s.queued == 0 else 0
        if quiet >= 2:
            return
        await asyncio.sleep(0.25)
    raise TimeoutError(f"{url} still busy after {timeout:.0f} s")
