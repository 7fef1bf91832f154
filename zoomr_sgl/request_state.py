"""One request's ZoomR state in the scheduler, and the stats a response reports.

Contract:
- ``RequestZoom`` is a plain record: the request's settings, policy and ``ThoughtTable``, where its row is, and the
  counters the step keeps as it goes (no device reads): ``holes`` is the number of positions below the table's
  length whose ``req_to_token`` entry is 0, read from ``DetailMover.row_holes`` (the only writer of holes keeps one
  count per row, for this record and for the attention backend alike); ``inflight_slots`` the
  device slots held by copies in flight; ``parked_slots`` those of ``PARKED`` details (``parked``: thought -> its
  slots, out of the row).
  ``device_tokens(st)`` is therefore exact without reading the row: positions that hold a slot, plus copies and
  parked details.
- ``RequestStats`` is what ``meta_info['zoomr']`` carries. ``request_stats(st)`` builds it from those counters and the
  table's; it is O(thoughts) and runs only when someone reads it: ``stream_stats.LatestStats`` sits in
  ``req.customized_info`` and builds the stats every few streamed tokens and for the final response.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from zoomr_sgl.config import ZoomRConfig
from zoomr_sgl.host_store import CopyHandle, HostBlock
from zoomr_sgl.selection.base import Policy
from zoomr_sgl.thought_table import ThoughtTable


class RequestStats(NamedTuple):
    """What a response's ``meta_info['zoomr']`` reports; token counts are KV tokens of this request."""

    policy: str
    thoughts: int  # closed thoughts
    offloaded_tokens: int  # detail tokens with a host copy
    device_kv_tokens: int  # device slots the request holds now (its row's non-holes + copies in flight)
    offloading_tokens: int  # of those, detail slots held until a device->host copy lands (CUDA: a step or so)
    peak_device_kv_tokens: int
    mean_device_kv_tokens: float  # device KV after each processed step, averaged over the request's steps so far
    full_kv_tokens: int  # what full KV would hold
    detail_tokens: int  # closed thoughts' detail, wherever it is
    zoom_tokens: int
    zoom_recalls: int
    zoom_evictions: int
    dropped_tokens: int  # detail dropped (summary_only) or out of a window (streaming): gone for good
    forced_markers: int
    summary_tokens: int
    prompt_tokens: int
    reused_host_tokens: int  # prefix positions the radix tree gave as host-backed holes (not recomputed, not loaded)
    thoughts_from_tree: int  # prompt thoughts that start HOST with a tree-owned block (zoomable), demoted included
    demoted_tokens: int  # tree-owned device detail this request moved to the host (also in offloaded_tokens)
    kept_shared_tokens: int  # tree-owned device detail left on the device: another running request reads it
    recalls_trimmed: int  # recalls a zoom chose but the allocator could not give room for (retried later)
    host_refused_tokens: int  # closed thoughts' detail still on the device because the host store was full
    parked_tokens: int  # of those, details out of the resident set in their own slots (zoomable, not attended)
    admission: str  # "bound": admitted charged by its bound (host rows promised); "stock": SGLang's accounting


@dataclass
class Copy:
    """A host copy in flight: the thought, the device slots it reads or fills, and its completion."""

    thought: int
    slots: torch.Tensor
    handle: CopyHandle


@dataclass
class RequestZoom:
    """One request's ZoomR state in the scheduler."""

    rid: str
    row: int
    config: ZoomRConfig
    policy: Policy
    table: ThoughtTable
    prompt_len: int
    protected_len: int  # positions below this are owned by the radix tree
    engine: bool
    open_ids: tuple[int, ...]
    close_ids: tuple[int, ...]
    req: Any = None  # the SGLang Req (demotion writes its prefix_indices; the stream is read from it)
    row_holes: Any = None  # DetailMover.row_holes (hole count per req_to_token row), shared; None: no holes
    inflight_slots: int = 0  # slots held by copies in flight
    offloading_slots: int = 0  # of those, device->host copies
    parked: dict[int, torch.Tensor] = field(default_factory=dict)  # PARKED thought -> its slots (out of the row)
    parked_slots: int = 0
    blocks: dict[int, HostBlock] = field(default_factory=dict)
    offloading: list[Copy] = field(default_factory=list)
    recalling: list[Copy] = field(default_factory=list)
    forced: deque = field(default_factory=deque)  # engine-mode marker tokens not yet handed to a forward
    forced_forward: int = -1  # the forward the last forced token was handed to (in flight until it is processed)
    thinking_done: bool = False  # engine mode: the output holds the thinking-end marker (the answer has begun)
    bound: int | None = -1  # admission's peak device KV (None: stock accounting), computed once (-1: not yet)
    forced_markers: int = 0
    peak_device: int = 0
    forgotten_to: int = 0  # a windowed policy's positions below this have left the device for good
    forgotten_tokens: int = 0
    device_sum: int = 0  # device KV summed over the steps processed (mean_device_kv_tokens = device_sum / steps)
    device_steps: int = 0
    spans: dict[int, tuple[int, int]] = field(default_factory=dict)  # thought -> host-backed run, when not its detail
    borrowed: set[int] = field(default_factory=set)  # thoughts whose block belongs to the radix tree
    tree_spans: list = field(default_factory=list)  # radix_tree.HostSpan of the matched prefix
    reused_host_tokens: int = 0
    demoted_tokens: int = 0
    kept_shared_tokens: int = 0
    recalls_trimmed: int = 0
    host_refused: list[int] = field(default_factory=list)  # thoughts a full host store refused, oldest first
    to_park: list[int] = field(default_factory=list)  # quest: pages closed since its last zoom, still attended
    pages: Any = None  # quest: the closed pages' key bounds (zoomr_sgl.page_bounds.PageBounds)
    sentences: Any = None  # sentencekv: the prompt sentences' SentenceIndex (row = preset thought), from its first zoom
    demotion_tried: set[int] = field(default_factory=set)  # parked prompt sentences the tree was asked to demote
    summary_tokens: int = 0  # closed thoughts' summary tokens (kept as thoughts close)
    detail_tokens: int = 0  # closed thoughts' detail tokens

    def span(self, index: int) -> tuple[int, int]:
        """Positions a thought's host block backs: its detail, or the hole run of a borrowed partial detail."""
        span = self.spans.get(index)
        if span is not None:
            return span
        t = self.table.thought(index)
        return t.detail_start, t.detail_end

    @property
    def holes(self) -> int:
        """Positions below the table's length whose ``req_to_token`` entry is 0 (``DetailMover`` keeps the count)."""
        return 0 if self.row_holes is None else int(self.row_holes[self.row])

    def device_tokens(self) -> int:
        """Device slots held now: the row's non-holes (the last sampled token has no KV yet) plus copies in flight and
        parked details."""
        return max(self.table.length - 1, 0) - self.holes + self.inflight_slots + self.parked_slots


def request_stats(st: RequestZoom) -> RequestStats:
    acc = st.table.accounting()
    device = st.device_tokens()
    return RequestStats(
        policy=st.config.policy, thoughts=len(st.table.thoughts), offloaded_tokens=acc.host_tokens,
        device_kv_tokens=device, offloading_tokens=st.offloading_slots, peak_device_kv_tokens=max(st.peak_device, device),
        mean_device_kv_tokens=round(st.device_sum / st.device_steps, 1) if st.device_steps else float(device),
        full_kv_tokens=max(st.table.length - 1, 0), detail_tokens=st.detail_tokens, zoom_tokens=acc.zoom_tokens,
        zoom_recalls=acc.recalls, zoom_evictions=acc.evictions,
        dropped_tokens=acc.dropped_tokens + st.forgotten_tokens,
        forced_markers=st.forced_markers, summary_tokens=st.summary_tokens, prompt_tokens=st.prompt_len,
        reused_host_tokens=st.reused_host_tokens, thoughts_from_tree=len(st.borrowed),
        demoted_tokens=st.demoted_tokens, kept_shared_tokens=st.kept_shared_tokens, recalls_trimmed=st.recalls_trimmed,
        host_refused_tokens=sum(st.table.thought(i).detail_len for i in st.host_refused),
        parked_tokens=acc.parked_tokens,
        admission="bound" if st.bound is not None and st.bound >= 0 else "stock",
    )
