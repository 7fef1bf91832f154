"""Where ZoomR's own host time goes in a scheduler process: wall seconds inside each of its SGLang hooks.

Contract: ``HostClock()`` starts at zero. ``clock.call(name, fn, *args, **kwargs)`` runs ``fn`` and adds its wall time
(``time.perf_counter``) to ``name``'s seconds and one to its calls, and returns what ``fn`` returned (callers time
ZoomR's own work only, never SGLang's); ``clock.step()`` counts a decode step (the manager's ``after_decode``).
``report()`` returns a ``HostTimes``: per hook ``(calls, seconds)``, the decode steps, and ``ms_per_step``, every
hook's seconds over the decode steps in milliseconds (None before the first step).
Counters only grow, so a client reads two reports and divides their differences (``benchmarks/capacity_point``).
One writer: the scheduler thread, from ``zoomr_sgl.hooks``. The cost is two ``perf_counter`` calls per hook call.
With the overlap scheduler the result-processing hooks run while the GPU computes the next forward, so their time
is hidden as long as the host's step stays shorter than the GPU's; the figure is host work, not step time.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any, Callable, NamedTuple


class HostTimes(NamedTuple):
    hooks: dict[str, tuple[int, float]]  # name -> (calls, seconds)
    decode_steps: int
    ms_per_step: float | None


class HostClock:
    def __init__(self):
        self._calls: dict[str, int] = {}
        self._seconds: dict[str, float] = {}
        self._steps = 0

    def call(self, name: str, fn: Callable[..., Any], *args, **kwargs) -> Any:
        t0 = perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self._seconds[name] = self._seconds.get(name, 0.0) + perf_counter() - t0
            self._calls[name] = self._calls.get(name, 0) + 1

    def step(self) -> None:
        self._steps += 1

    def report(self) -> HostTimes:
        total = sum(self._seconds.values())
        return HostTimes({name: (self._calls[name], self._seconds[name]) for name in sorted(self._seconds)},
                         self._steps, 1000.0 * total / self._steps if self._steps else None)
