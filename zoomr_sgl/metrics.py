"""Aggregate ZoomR metrics for Prometheus (``--enable-metrics``), written from the scheduler process.

Contract: ``ZoomRMetrics(tp_rank)`` creates gauges and counters named ``zoomr:*`` labelled with ``tp_rank``.
SGLang runs prometheus_client in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` is set before the scheduler is
spawned), so what this process writes shows on the HTTP server's ``/metrics``. prometheus_client is imported only
here, when metrics are on, never at plugin load. ``observe(snapshot)`` sets the gauges and advances the counters to
the given running totals (counters never go backwards).
"""

from __future__ import annotations

from typing import Mapping

GAUGES = {
    "running_requests": "Requests ZoomR manages now",
    "device_kv_tokens": "Device KV tokens held by ZoomR requests now",
    "full_kv_tokens": "KV tokens those requests would hold with full KV",
    "zoom_tokens": "Recalled detail tokens in zoom buffers now",
    "host_store_used_tokens": "Detail tokens in the host store now",
    "host_refused_tokens": "Closed thoughts' detail kept on the device now because the host store was full",
    "parked_tokens": "Of that, detail parked: in its own device slots, out of the resident set, zoomable",
    "host_promised_tokens": "Host rows admission promised to running requests charged by their bound",
}
COUNTERS = {
    "offloaded_tokens": "Detail tokens moved from the device to the host store",
    "recalled_tokens": "Detail tokens recalled into zoom buffers",
    "recalls": "Thought recalls",
    "evictions": "Thoughts evicted from zoom buffers",
    "forced_markers": "Summary markers forced by engine mode",
    "host_dropped_tokens": "Detail tokens dropped because the host store was full",
    "host_unbounded_requests": "Requests admitted with stock accounting because the host store had no room to promise",
}


class ZoomRMetrics:
    def __init__(self, tp_rank: int):
        from prometheus_client import Counter, Gauge

        self.labels = {"tp_rank": str(tp_rank)}
        self.gauges = {
            name: Gauge(f"zoomr:{name}", doc, labelnames=["tp_rank"], multiprocess_mode="mostrecent")
            for name, doc in GAUGES.items()
        }
        self.counters = {name: Counter(f"zoomr:{name}", doc, labelnames=["tp_rank"]) for name, doc in COUNTERS.items()}
        self._seen = {name: 0 for name in COUNTERS}

    def observe(self, snapshot: Mapping[str, int]) -> None:
        for name, gauge in self.gauges.items():
            gauge.labels(**self.labels).set(snapshot[name])
        for name, counter in self.counters.items():
            delta = snapshot[name] - self._seen[name]
            if delta > 0:
                counter.labels(**self.labels).inc(delta)
                self._seen[name] = snapshot[name]
