"""ZoomR inside one SGLang scheduler process: moves each request's thought detail between device slots and the host
store, forces engine-mode summary markers, and zooms.

Contract (``--disable-overlap-schedule``: one forward in flight, results processed before the next step):
- A request's resident set is the set of positions ``p < seq_len`` with ``req_to_token[row, p] != 0``; slot 0 is
  never handed out, so 0 marks a hole. The manager keeps ``req_to_token`` equal to what the request's
  ``ThoughtTable`` says is attended: it writes 0 over a detail when it leaves the device (offload, drop, eviction)
  and fresh slot ids when a recall has landed. The attention backend (``resident_attention``) reads only that.
- ``after_prefill``/``after_decode`` run after SGLang has appended the step's sampled tokens: they feed the table,
  offload or drop closed thoughts' detail as the request's policy says (``DetailAction``), decide engine-mode
  markers, and every ``zoom_interval`` decode steps run the policy on this step's queries (captured by the
  attention backend at the scoring layers through ``capture_query``) and apply recalls and evictions.
- Device slots leave the request only once no step reads them: an offloaded detail's slots go back to the allocator
  when its host copy has landed (at once on CPU; on CUDA at the latest in ``before_forward``); a recall takes fresh
  slots from the allocator only when it has enough free (else the recall waits for a later zoom), and they are
  written into ``req_to_token`` once the copy has landed (from the next step on, or at once with
  ``wait_for_recall``).
- Slots owned by the radix tree (the matched or inserted prefix, positions below ``protected_len``) are never freed
  here: a prompt thought whose detail is on the device stays there.
- With the ZoomR radix tree (``zoomr_sgl.radix_tree``), a prefix may come with holes backed by tree-owned host
  blocks. At admission the manager reads them (``tree.host_spans(req.last_node)``); with segmentation from position
  0 (program/trained mode) a prompt thought whose detail's holes are exactly one run backed by one whole tree block
  starts ``HOST`` with that block *borrowed*: a zoom recalls it into fresh request slots written over that run
  (``st.spans``; the rest of such a detail, e.g. prompt text before the first thought, stays device and tree-owned),
  an eviction frees only those slots, and the block is never freed by the request (its lock on ``last_node`` keeps
  the node, so the block, alive). A prompt thought whose holes are anything else (several runs, a partial block, a
  dropped block) is ``DROPPED``: its holes are not attended and cannot be zoomed. In engine mode the prompt is not
  segmented, so its holes are simply not attended (counted in ``reused_host_tokens``).
- ``release(req, is_insert)`` runs on finish, abort and retraction (SGLang's ``release_kv_cache``, before the tree's
  ``cache_finished_req``): it frees the slots of copies in flight, clears forced tokens and publishes final stats.
  With the ZoomR tree it also evicts the zoom buffer (frees those slots, writes 0), so every offloaded detail is a
  hole backed by its block, and, when the request will be inserted, hands its own blocks to the tree as
  ``req.zoomr_host_spans = [(start, end, block)]`` (the tree adopts or frees them); otherwise it frees them.
  Borrowed blocks are the tree's and never appear there. With the stock tree a row with holes is marked not
  insertable (``req.skip_radix_cache_insert``: stock nodes cannot point at host memory). SGLang then frees the
  row as usual (holes are filtered out of frees).
- ``forced_ids(req_pool_indices)`` gives the token each row must emit this step (-1: none), for the sampler hook.
- Stats per request (``RequestStats``) travel in ``req.customized_info['zoomr']`` and reach ``meta_info['zoomr']``.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from zoomr_sgl.config import ZoomRConfig, ZoomRConfigError
from zoomr_sgl.request_params import check_custom_params
from zoomr_sgl.host_store import CopyHandle, HostBlock, HostDetailStore
from zoomr_sgl.radix_tree import hole_runs
from zoomr_sgl.selection import policy_for
from zoomr_sgl.selection.base import DetailAction, Policy, StepInputs
from zoomr_sgl.thought_table import Location, ThoughtTable

logger = logging.getLogger("zoomr_sgl")


class RequestStats(NamedTuple):
    """What a response's ``meta_info['zoomr']`` reports; token counts are KV tokens of this request."""

    policy: str
    thoughts: int  # closed thoughts
    offloaded_tokens: int  # detail tokens with a host copy
    device_kv_tokens: int  # device slots the request holds now (its row's non-holes + copies in flight)
    peak_device_kv_tokens: int
    full_kv_tokens: int  # what full KV would hold
    detail_tokens: int  # closed thoughts' detail, wherever it is
    zoom_tokens: int
    zoom_recalls: int
    zoom_evictions: int
    dropped_tokens: int
    forced_markers: int
    summary_tokens: int
    prompt_tokens: int
    reused_host_tokens: int  # prefix positions the radix tree gave as host-backed holes (not recomputed, not loaded)
    thoughts_from_tree: int  # prompt thoughts that start HOST with a tree-owned block (zoomable)


class LatestStats(list):
    """``req.customized_info`` holds per-token lists that SGLang slices per streamed chunk; this one answers every
    slice with the latest stats, so each chunk carries one small dict instead of one per token."""

    def __init__(self, stats: dict):
        super().__init__()
        self.stats = stats

    def __getitem__(self, item):
        return [self.stats] if isinstance(item, slice) else self.stats


@dataclass
class _Copy:
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
    step: int = 0
    blocks: dict[int, HostBlock] = field(default_factory=dict)
    offloading: list[_Copy] = field(default_factory=list)
    recalling: list[_Copy] = field(default_factory=list)
    forced: deque = field(default_factory=deque)
    forced_markers: int = 0
    peak_device: int = 0
    spans: dict[int, tuple[int, int]] = field(default_factory=dict)  # thought -> host-backed run, when not its detail
    borrowed: set[int] = field(default_factory=set)  # thoughts whose block belongs to the radix tree
    tree_spans: list = field(default_factory=list)  # radix_tree.HostSpan of the matched prefix
    reused_host_tokens: int = 0


class ZoomRManager:
    """Per-scheduler ZoomR state (see the module contract)."""

    def __init__(self, config: ZoomRConfig, scheduler: Any):
        self.config = config
        self.allocator = scheduler.token_to_kv_pool_allocator
        self.req_to_token = scheduler.req_to_token_pool.req_to_token
        self.kv_pool = self.allocator.get_kvcache()
        self.tokenizer = scheduler.tokenizer
        self.num_layers = self.kv_pool.layer_num
        self.scoring_layers = config.scoring_layer_ids(self.num_layers)
        k0 = self.kv_pool.k_buffer[0]
        self.host = HostDetailStore(
            num_layers=self.num_layers, capacity_tokens=config.host_store_tokens, kv_heads=k0.shape[1],
            head_dim=k0.shape[2], dtype=k0.dtype, device=k0.device, fallback=config.host_full_fallback,
            on_drop=self._on_host_drop,
        )
        self.device = k0.device
        from zoomr_sgl.radix_tree import ZoomRRadixCache

        self.tree = scheduler.tree_cache if isinstance(scheduler.tree_cache, ZoomRRadixCache) else None
        if self.tree is not None:
            self.tree.attach_host_store(self.host)
        self._borrowers: dict[int, set[tuple[str, int]]] = {}  # tree block id -> (rid, thought) borrowing it
        self.force_next = torch.full((self.req_to_token.shape[0],), -1, dtype=torch.int64, device=self.device)
        self.requests: dict[str, RequestZoom] = {}
        self._queries: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._marker_cache: dict[str, tuple[int, ...]] = {}
        self._delim_cache: dict[tuple[str, int, int], bool] = {}
        self.totals = dict(offloaded_tokens=0, recalled_tokens=0, recalls=0, evictions=0, forced_markers=0,
                           requests=0)
        self.metrics = None
        if getattr(scheduler.server_args, "enable_metrics", False):
            from zoomr_sgl.metrics import ZoomRMetrics

            self.metrics = ZoomRMetrics(getattr(scheduler, "tp_rank", 0))

    # ------------------------------------------------------------------ SGLang step hooks
    def after_prefill(self, batch) -> None:
        for req in batch.reqs:
            if req.finished() or req.is_retracted or getattr(req, "inflight_middle_chunks", 0) > 0:
                continue
            if not req.output_ids:  # a middle chunk of a chunked prefill
                continue
            st = self.requests.get(req.rid)
            if st is None:
                st = self._admit(req)
                if st is None:
                    continue
            self._advance(req, st, decode=False)

    def after_decode(self, batch) -> None:
        for i, req in enumerate(batch.reqs):
            st = self.requests.get(req.rid)
            if st is None or req.finished() or req.is_retracted:
                continue
            st.step += 1
            self._advance(req, st, decode=True, batch_index=i)
        self._queries.clear()
        if self.metrics is not None:
            self.metrics.observe(self.snapshot())

    def before_forward(self, batch) -> None:
        """Land copies that finished since the last step (CUDA); a step never waits unless asked to."""
        for req in batch.reqs:
            st = self.requests.get(req.rid)
            if st is not None:
                self._land(st, wait=st.config.wait_for_recall)

    def capture_query(self, layer_id: int, q: torch.Tensor, req_pool_indices: torch.Tensor) -> None:
        """Called by the attention backend during decode: ``q`` is ``[bs, Hq, D]`` at a scoring layer."""
        if layer_id in self.scoring_layers and self.requests:
            self._queries[layer_id] = (q.detach(), req_pool_indices)

    def wants_queries(self, layer_id: int) -> bool:
        return layer_id in self.scoring_layers and bool(self.requests)

    def forced_ids(self, req_pool_indices: torch.Tensor) -> torch.Tensor:
        return self.force_next[req_pool_indices.to(self.force_next.device)]

    def release(self, req, is_insert: bool = True) -> None:
        st = self.requests.pop(req.rid, None)
        if st is None:
            return
        for c in st.offloading + st.recalling:
            c.handle.wait()
            self.allocator.free(c.slots)
        for c in st.offloading:
            st.table.finish_offload(c.thought)  # the copy has landed: the block is complete
        st.offloading.clear()
        st.recalling.clear()
        st.table.append((req.origin_input_ids + req.output_ids)[st.table.length:])  # the final token, for the stats
        stats = self._stats(st)
        if self.tree is not None:
            # Every offloaded detail becomes a hole backed by its block; borrowed runs get the tree's zeros back.
            for i in list(st.blocks):
                if st.table.location(i) is Location.ZOOM:
                    lo, hi = self._span(st, i)
                    slots = self.req_to_token[st.row, lo:hi].to(torch.int64).clone()
                    self._unmap(st, lo, hi)
                    self.allocator.free(slots)
        row_has_holes = bool((self.req_to_token[st.row, : st.table.length - 1] == 0).any())
        insert = is_insert and not getattr(req, "skip_radix_cache_insert", False)
        handed = []
        for i, block in st.blocks.items():
            if i in st.borrowed:
                self._borrowers.get(block.block_id, set()).discard((st.rid, i))
                continue
            if not self.host.is_live(block):
                continue
            if self.tree is not None and insert:
                handed.append((*self._span(st, i), block))
            else:
                self.host.free(block)
        for block_id in [b for b, who in self._borrowers.items() if not who]:
            del self._borrowers[block_id]
        st.blocks.clear()
        if handed:
            req.zoomr_host_spans = handed  # the tree adopts them or frees them (radix_tree contract)
        self.force_next[st.row] = -1
        st.table.free()
        req.customized_info = {"zoomr": LatestStats(stats._asdict())}
        if row_has_holes and self.tree is None:
            # The stock radix tree cannot hold host-backed positions: insert nothing rather than holes.
            req.skip_radix_cache_insert = True

    # ------------------------------------------------------------------ state
    def snapshot(self) -> dict:
        """Aggregate figures over running requests plus running totals (what the Prometheus metrics show)."""
        stats = [self._stats(st) for st in self.requests.values()]
        return {
            "running_requests": len(stats),
            "device_kv_tokens": sum(s.device_kv_tokens for s in stats),
            "full_kv_tokens": sum(s.full_kv_tokens for s in stats),
            "zoom_tokens": sum(s.zoom_tokens for s in stats),
            "host_store_used_tokens": self.host.stats().used_tokens,
            "host_dropped_tokens": self.host.stats().dropped_tokens,
            **{k: v for k, v in self.totals.items() if k != "requests"},
        }

    def state(self) -> dict:
        """Process-wide figures for ``/server_info``."""
        hs = self.host.stats()
        return {
            "running_requests": len(self.requests),
            "allocator_available": int(self.allocator.available_size()),
            "host_store": hs._asdict(),
            "scoring_layers": list(self.scoring_layers),
            "totals": dict(self.totals),
            **({"tree": self.tree.state()} if self.tree is not None else {}),
        }

    def _admit(self, req) -> RequestZoom | None:
        params = {k: v for k, v in (req.sampling_params.custom_params or {}).items() if k != "__req__"}
        try:
            cfg = check_custom_params(self.config, params)
            if cfg is None:
                return None
            cfg.scoring_layer_ids(self.num_layers)
        except ZoomRConfigError as e:  # the HTTP process validates first; this is a last line, never a crash
            req.set_finish_with_abort(str(e))
            return None
        prompt_len = len(req.origin_input_ids)
        engine = cfg.summary_mode == "engine" and getattr(req, "grammar", None) is None
        open_ids, close_ids = self._markers(cfg.summary_open), self._markers(cfg.summary_close)
        start = prompt_len if cfg.summary_mode == "engine" else 0
        st = RequestZoom(
            rid=req.rid, row=req.req_pool_idx, config=cfg, policy=policy_for(cfg.policy),
            table=ThoughtTable(cfg, open_ids, close_ids, start), prompt_len=prompt_len,
            protected_len=len(req.prefix_indices) if req.prefix_indices is not None else 0,
            engine=engine, open_ids=open_ids, close_ids=close_ids,
        )
        st.protected_len = max(st.protected_len, prompt_len)  # the prefill inserted the prompt into the tree
        if self.tree is not None and req.last_node is not None:
            prefix = self.req_to_token[st.row, :st.protected_len]
            st.reused_host_tokens = int((prefix == 0).sum())
            if st.reused_host_tokens:
                st.tree_spans = self.tree.host_spans(req.last_node)
        self.force_next[st.row] = -1
        self.requests[req.rid] = st
        self.totals["requests"] += 1
        return st

    def _markers(self, text: str) -> tuple[int, ...]:
        ids = self._marker_cache.get(text)
        if ids is None:
            ids = tuple(self.tokenizer.encode(text, add_special_tokens=False))
            self._marker_cache[text] = ids
        return ids

    # ------------------------------------------------------------------ one step of one request
    def _advance(self, req, st: RequestZoom, decode: bool, batch_index: int | None = None) -> None:
        ids = req.origin_input_ids + req.output_ids
        closed = st.table.append(ids[st.table.length:])
        self._land(st, wait=False)
        for thought in closed:
            self._close_thought(st, thought.index)
        if st.engine:
            self._engine_step(st, ids)
        self.force_next[st.row] = st.forced.popleft() if st.forced else -1
        if decode and st.step % st.config.zoom_interval == 0:
            self._zoom(st, batch_index)
        st.peak_device = max(st.peak_device, self._device_tokens(st))
        req.customized_info = {"zoomr": LatestStats(self._stats(st)._asdict())}

    def _close_thought(self, st: RequestZoom, index: int) -> None:
        t = st.table.thoughts[index]
        action = st.policy.detail_action
        if t.detail_start < st.protected_len:
            self._close_tree_thought(st, index)
            return
        if action is DetailAction.KEEP:
            return
        if t.detail_len == 0:
            (st.table.mark_offloaded if action is DetailAction.OFFLOAD else st.table.drop)(index)
            return
        slots = self.req_to_token[st.row, t.detail_start:t.detail_end].to(torch.int64).clone()
        if action is DetailAction.DROP:
            self._unmap(st, t.detail_start, t.detail_end)
            self.allocator.free(slots)
            st.table.drop(index)
            return
        block = self.host.allocate(t.detail_len, owner=(st.rid, index))
        if block is None and self.tree is not None and self.tree.evict_host(t.detail_len):
            block = self.host.allocate(t.detail_len, owner=(st.rid, index))  # the tree gave host rows back
        if block is None:  # store full under keep_on_device: the detail stays where it is
            return
        handle = self.host.copy_from_device(block, self.kv_pool.k_buffer, self.kv_pool.v_buffer, slots)
        st.blocks[index] = block
        st.table.begin_offload(index)
        self._unmap(st, t.detail_start, t.detail_end)  # not attended from the next step on
        st.offloading.append(_Copy(index, slots, handle))
        self.totals["offloaded_tokens"] += t.detail_len
        self._land(st, wait=False)

    def _close_tree_thought(self, st: RequestZoom, index: int) -> None:
        """A thought that starts in the tree-owned prefix: device detail stays; holes backed by exactly one whole
        tree block start HOST with that block borrowed; any other holes make it DROPPED (module contract)."""
        t = st.table.thoughts[index]
        if t.detail_len == 0:
            return
        runs = hole_runs(self.req_to_token[st.row, t.detail_start:t.detail_end])
        if not runs:
            return
        span = None
        if len(runs) == 1:
            lo, hi = t.detail_start + runs[0][0], t.detail_start + runs[0][1]
            span = next((s for s in st.tree_spans if s.start == lo and s.end == hi and s.offset == 0
                         and s.block is not None and s.block.num_tokens == hi - lo
                         and self.host.is_live(s.block)), None)
        if span is None:
            st.table.drop(index)
            return
        st.table.mark_offloaded(index)
        st.blocks[index] = span.block
        st.borrowed.add(index)
        if (span.start, span.end) != (t.detail_start, t.detail_end):
            st.spans[index] = (span.start, span.end)
        self._borrowers.setdefault(span.block.block_id, set()).add((st.rid, index))

    def _span(self, st: RequestZoom, index: int) -> tuple[int, int]:
        """Positions a thought's host block backs: its detail, or the hole run of a borrowed partial detail."""
        span = st.spans.get(index)
        if span is not None:
            return span
        t = st.table.thoughts[index]
        return t.detail_start, t.detail_end

    def _land(self, st: RequestZoom, wait: bool) -> None:
        still = []
        for c in st.offloading:
            if c.handle.done():
                self.allocator.free(c.slots)
                st.table.finish_offload(c.thought)
            else:
                still.append(c)
        st.offloading = still
        still = []
        for c in st.recalling:
            if wait:
                c.handle.wait()
            if c.handle.done():
                lo, hi = self._span(st, c.thought)
                self.req_to_token[st.row, lo:hi] = c.slots.to(self.req_to_token.dtype)
                st.table.finish_recall(c.thought)
            else:
                still.append(c)
        st.recalling = still

    def _engine_step(self, st: RequestZoom, ids: list[int]) -> None:
        """Engine mode: close a thought at a boundary by forcing the opening marker; close a long summary."""
        if st.forced:
            return
        seg, cfg = st.table.segmenter, st.config
        open_summary = seg.open_summary
        if open_summary is None:
            n = seg.length - seg.detail_start
            boundary = n >= cfg.max_thought_tokens or (
                n >= cfg.min_thought_tokens and self._ends_with_delimiter(ids, cfg.thought_delimiter)
            )
            if boundary:
                st.forced.extend(st.open_ids)
                st.forced_markers += 1
                self.totals["forced_markers"] += 1
        elif seg.length - open_summary.summary_start - len(st.open_ids) >= cfg.max_summary_tokens:
            st.forced.extend(st.close_ids)
            st.forced_markers += 1
            self.totals["forced_markers"] += 1

    def _ends_with_delimiter(self, ids: list[int], delimiter: str) -> bool:
        if len(ids) < 2:
            return False
        key = (delimiter, ids[-2], ids[-1])
        hit = self._delim_cache.get(key)
        if hit is None:
            hit = delimiter in self.tokenizer.decode(list(key[1:])) and delimiter not in self.tokenizer.decode([ids[-2]])
            if len(self._delim_cache) > 1 << 16:
                self._delim_cache.clear()
            self._delim_cache[key] = hit
        return hit

    # ------------------------------------------------------------------ the zoom
    def _zoom(self, st: RequestZoom, batch_index: int | None) -> None:
        query = self._query_for(batch_index) if batch_index is not None else None
        row = st.row

        def keys_at(positions: torch.Tensor) -> torch.Tensor:
            slots = self.req_to_token[row, positions.to(self.req_to_token.device)].to(torch.int64)
            return torch.stack([self.kv_pool.k_buffer[layer][slots] for layer in self.scoring_layers]).float()

        try:
            selection = st.policy.select(st.table, StepInputs(st.step, query, keys_at))
        except ValueError:  # no query captured this step (e.g. the policy needs one and the batch had none)
            return
        if not (selection.recall or selection.evict):
            if selection.selected:
                st.table.apply(selection)
            return
        # Slots for the recalls must exist now: trim the recalls to what the allocator can give.
        width = lambda i: (lambda lo, hi: hi - lo)(*self._span(st, i))  # noqa: E731
        freed = sum(width(i) for i in selection.evict)
        room = int(self.allocator.available_size()) + freed
        recall = []
        for i in selection.recall:
            n = width(i)
            if n <= room:
                recall.append(i)
                room -= n
        dropped = set(selection.recall) - set(recall)
        selection = selection._replace(
            recall=tuple(recall), selected=tuple(i for i in selection.selected if i not in dropped)
        )
        for i in selection.evict:
            lo, hi = self._span(st, i)
            slots = self.req_to_token[row, lo:hi].to(torch.int64).clone()
            self._unmap(st, lo, hi)
            self.allocator.free(slots)
            self.totals["evictions"] += 1
        st.table.apply(selection)
        for i in selection.recall:
            n = width(i)
            slots = self.allocator.alloc(n)
            handle = self.host.copy_to_device(st.blocks[i], self.kv_pool.k_buffer, self.kv_pool.v_buffer, slots)
            st.recalling.append(_Copy(i, slots, handle))
            self.totals["recalls"] += 1
            self.totals["recalled_tokens"] += n
        self._land(st, wait=st.config.wait_for_recall)

    def _query_for(self, batch_index: int) -> torch.Tensor | None:
        if not all(layer in self._queries for layer in self.scoring_layers):
            return None
        return torch.stack([self._queries[layer][0][batch_index] for layer in self.scoring_layers]).float()

    # ------------------------------------------------------------------ helpers
    def _unmap(self, st: RequestZoom, start: int, end: int) -> None:
        self.req_to_token[st.row, start:end] = 0

    def _device_tokens(self, st: RequestZoom) -> int:
        n = st.table.length - 1  # the last sampled token has no KV yet
        held = int((self.req_to_token[st.row, :n] != 0).sum())
        return held + sum(len(c.slots) for c in st.offloading + st.recalling)

    def _stats(self, st: RequestZoom) -> RequestStats:
        acc = st.table.accounting()
        summary_tokens = sum(t.summary_len for t in st.table.thoughts)
        return RequestStats(
            policy=st.config.policy, thoughts=len(st.table.thoughts), offloaded_tokens=acc.host_tokens,
            device_kv_tokens=self._device_tokens(st), peak_device_kv_tokens=max(st.peak_device, self._device_tokens(st)),
            full_kv_tokens=max(st.table.length - 1, 0),
            detail_tokens=sum(t.detail_len for t in st.table.thoughts), zoom_tokens=acc.zoom_tokens, zoom_recalls=acc.recalls,
            zoom_evictions=acc.evictions, dropped_tokens=acc.dropped_tokens, forced_markers=st.forced_markers,
            summary_tokens=summary_tokens, prompt_tokens=st.prompt_len, reused_host_tokens=st.reused_host_tokens,
            thoughts_from_tree=len(st.borrowed),
        )

    def _on_host_drop(self, block: HostBlock) -> None:
        """``drop_oldest`` took a host block back: its thought's detail is gone for good (counted by the store).
        The store waited for the block's copies, so the slots of a copy in flight can be freed now. A tree block
        may be borrowed by several running requests: each loses that thought."""
        owners = list(self._borrowers.pop(block.block_id, ()))
        if isinstance(block.owner, tuple) and len(block.owner) == 2:
            owners.append(block.owner)
        for rid, index in owners:
            st = self.requests.get(rid)
            if st is None or st.blocks.get(index) != block:
                continue
            self._lose_thought(st, index)

    def _lose_thought(self, st: RequestZoom, index: int) -> None:
        del st.blocks[index]
        st.borrowed.discard(index)
        for copies in (st.offloading, st.recalling):
            for c in [c for c in copies if c.thought == index]:
                copies.remove(c)
                self.allocator.free(c.slots)
        if st.table.location(index) is Location.ZOOM:
            lo, hi = self._span(st, index)
            slots = self.req_to_token[st.row, lo:hi].to(torch.int64).clone()
            self._unmap(st, lo, hi)
            self.allocator.free(slots)
        st.table.drop(index)
