"""What one scheduler's ZoomR manager reports: read-only views over its parts, built when someone reads them.

Contract: each function reads a ``ZoomRManager`` and writes nothing.
- ``totals(m)``: running counters since the server started (moves, borrows, zooms, sentences, forced markers,
  requests admitted), summed from the parts that own them.
- ``snapshot(m)``: aggregates over the running requests (their ``RequestStats``, built here) plus ``totals``: what
  the Prometheus metrics show (``zoomr_sgl.metrics``), every ``METRICS_PERIOD_S`` at most.
- ``server_state(m)``: process-wide figures for ``/server_info``: the host store, admission's host ledger, the scoring
  layers, the tree, the step probe and poison checks when on, the overlap flag and the host clock per hook.
"""

from __future__ import annotations

from typing import Any

from zoomr_sgl.request_state import request_stats

METRICS_PERIOD_S = 0.5


def totals(m: Any) -> dict:
    return {**m.mover.totals, **m.borrow.totals, **m.planner.totals, **m.sentences.totals,
            "forced_markers": m.markers.forced_markers, "requests": m.admitted}


def snapshot(m: Any) -> dict:
    stats = [request_stats(st) for st in m.requests.values()]
    hs = m.host.stats()
    return {
        "running_requests": len(stats),
        "device_kv_tokens": sum(s.device_kv_tokens for s in stats),
        "full_kv_tokens": sum(s.full_kv_tokens for s in stats),
        "zoom_tokens": sum(s.zoom_tokens for s in stats),
        "host_store_used_tokens": hs.used_tokens,
        "host_dropped_tokens": hs.dropped_tokens,
        "host_refused_tokens": sum(s.host_refused_tokens for s in stats),
        "parked_tokens": sum(s.parked_tokens for s in stats),
        "host_promised_tokens": m.admission.ledger.total,
        "host_unbounded_requests": m.admission.host_unbounded,
        **totals(m),
    }


def server_state(m: Any) -> dict:
    return {
        "running_requests": len(m.requests),
        "allocator_available": int(m.allocator.available_size()),
        "host_store": m.host.stats()._asdict(),
        "host_promised_tokens": m.admission.ledger.total,  # host rows promised to running bounded requests
        "host_unbounded_requests": m.admission.host_unbounded,  # charged as stock for want of host room
        "scoring_layers": list(m.scoring_layers),
        "totals": totals(m),
        **({"tree": m.tree.state()} if m.tree is not None else {}),
        **({"step_probe": m.probe.summary()} if m.probe is not None else {}),
        **({"poison_nan_rows": m.poison.nan_rows()} if m.poison is not None else {}),
        "overlap": m.overlap,
        "host_clock": m.clock.report()._asdict(),
    }
