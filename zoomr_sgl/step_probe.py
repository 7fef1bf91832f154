"""Counts what ZoomR's per-step work costs in the calls that matter, for a test to check (not a timer).

Contract: enabled by ``ZOOMR_SGL_STEP_PROBE=1`` in the scheduler's environment (off by default: zero cost). While
``ZoomRManager`` runs a decode step's work (``after_decode``, ``before_forward``, the sampler hook), ``measure(kind)``
counts every call that reads a tensor's value into Python (``item``, ``tolist``, ``cpu``, ``numpy``, ``bool``,
``int``, ``float``, ``index``): on a CUDA host each is a device-to-host synchronisation. Per decode step it records
the requests advanced, the tokens fed to their thought tables (1 each when nothing walks the stream), whether a zoom
or a thought boundary happened, and the reads. ``host_side()`` pauses the count around work that by contract reads
host data only (the policies' decisions, after the zoom's one read of the scores) and around the debug checks that
read the device on purpose (``ZOOMR_SGL_CHECK_HOLES``: a quest page across the prompt's end closes in a decode step). ``summary()`` aggregates: the most reads on a plain step (no zoom, no
boundary, no admission), on a zoom step, on a boundary step and on an index step (a ``sentencekv`` request's first
zoom, where its prompt sentences' index is built and they leave the device: once per request), and tokens fed against
requests advanced.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode

ENV_VAR = "ZOOMR_SGL_STEP_PROBE"
_READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.__bool__,
          torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__}


class _CountReads(TorchFunctionMode):
    def __init__(self, probe: "StepProbe"):
        super().__init__()
        self.probe = probe

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _READS and not self.probe.paused:
            self.probe.step["reads"] += 1
        return func(*args, **(kwargs or {}))


class StepProbe:
    def __init__(self):
        self.steps = 0
        self.step = self._fresh()
        self.max_reads = {"plain": 0, "zoom": 0, "boundary": 0, "index": 0}
        self.plain_steps = self.zoom_steps = self.boundary_steps = self.index_steps = 0
        self.requests_advanced = self.tokens_fed = 0
        self.paused = self.active = False

    @staticmethod
    def enabled() -> bool:
        return os.environ.get(ENV_VAR) == "1"

    @staticmethod
    def _fresh() -> dict:
        return {"reads": 0, "zoom": False, "boundary": False, "index": False}

    @contextmanager
    def measure(self):
        self.active = True
        try:
            with _CountReads(self):
                yield
        finally:
            self.active = False

    @contextmanager
    def host_side(self):
        """Work on host data by contract (the policies, after the step's one read of the scores): not counted."""
        self.paused = True
        try:
            yield
        finally:
            self.paused = False

    def fed(self, tokens: int) -> None:
        """A request's table was fed ``tokens`` (counted during measured decode work only)."""
        if self.active:
            self.requests_advanced += 1
            self.tokens_fed += tokens

    def end_step(self) -> None:
        """Close the decode step whose work was measured since the last call."""
        kind = next(k for k in ("index", "zoom", "boundary", "plain") if k == "plain" or self.step[k])
        self.max_reads[kind] = max(self.max_reads[kind], self.step["reads"])
        setattr(self, f"{kind}_steps", getattr(self, f"{kind}_steps") + 1)
        self.steps += 1
        self.step = self._fresh()

    def summary(self) -> dict:
        return {"decode_steps": self.steps, "plain_steps": self.plain_steps, "zoom_steps": self.zoom_steps,
                "boundary_steps": self.boundary_steps, "index_steps": self.index_steps,
                "max_reads": dict(self.max_reads),
                "requests_advanced": self.requests_advanced, "tokens_fed": self.tokens_fed}
