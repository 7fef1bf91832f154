"""Where ZoomR's own host time goes in a scheduler process: wall seconds inside each of its SGLang hooks.

Contract: ``HostClock()`` starts at zero. ``clock.call(name, fn, *args, **kwargs)`` runs ``fn`` and adds its wall time
(``time.perf_counter``) to ``name``'s seconds and one to its calls, and returns what ``fn`` returned (callers time
ZoomR's own work only, never SGLang's); ``clock.step()`` counts a decode step (the manager's ``after_decode``).
``with clock.part(name):`` times a piece of a hook's work (``"after_decode/zoom_recall"``: the hook, a slash, the
piece) into ``parts``, which say where a hook's time goes and are never added to it again.
``report()`` returns a ``HostTimes``: per hook ``(calls, seconds)``, per part the same, the decode steps, and
``ms_per_step``, every hook's seconds (not the parts') over the decode steps in milliseconds (None before the first
step).
Counters only grow, so a client reads two reports and divides their differences (``benchmarks/capacity_point``).
One writer: the scheduler thread, from ``zoomr_sgl.hooks``. The cost is two ``perf_counter`` calls per hook call.
With the overlap scheduler the result-processing hooks run while the GPU computes the next forward, so their time
is hidden as long as the host's step stays shorter than the GPU's; the figure is host work, not step time.
"""

from __future__ import annotations

from contextlib import contextmanager
from time import perf_counter
from typing import Any, Callable, Iterator, NamedTuple


class HostTimes(NamedTuple):
    hooks: dict[str, tuple[int, float]]  # name -> (calls, seconds)
    decode_steps: int
    ms_per_step: float | None
    parts: dict[str, tuple[int, float]] = {}  # "hook/piece" -> (calls, seconds), inside the hooks' own time


class HostClock:
    def __init__(self):
        self._calls: dict[str, int] = {}
        self._seconds: dict[str, float] = {}
        self._steps = 0
        self._parts: dict[str, list] = {}

    def call(self, name: str, fn: Callable[..., Any], *args, **kwargs) -> Any:
        t0 = perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self._seconds[name] = self._seconds.get(name, 0.0) + perf_counter() - t0
            self._calls[name] = self._calls.get(name, 0) + 1

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        t0 = perf_counter()
        try:
            yield
        finally:
            calls_seconds = self._parts.setdefault(name, [0, 0.0])
            calls_seconds[0] += 1
            calls_seconds[1] += perf_counter() - t0

    def step(self) -> None:
        self._steps += 1

    def report(self) -> HostTimes:
        total = sum(self._seconds.values())
        return HostTimes({name: (self._calls[name], self._seconds[name]) for name in sorted(self._seconds)},
                         self._steps, 1000.0 * total / self._steps if self._steps else None,
                         {name: (calls, seconds) for name, (calls, seconds) in sorted(self._parts.items())})
