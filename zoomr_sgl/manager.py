"""ZoomR inside one SGLang scheduler process: admits requests, advances them after each step, and releases them.
The work is done by one module per concept: ``detail_mover`` (the only writer of holes and ZoomR's only ``free``),
``request_state`` (per-request state and lazily built stats), ``tree_borrow`` (what a request borrows from the radix
tree), ``engine_markers`` (forced summary markers), ``request_table`` (where a request's thoughts start) and
``zoom_plan`` (the per-step zoom).

Contract (with or without SGLang's overlap scheduler; ``docs/overlap.md`` tells the timeline):
- SGLang calls ``before_forward(batch, forward_iter)`` right before it launches any forward and
  ``after_prefill``/``after_decode`` when it processes that forward's results: at once without the overlap
  scheduler, after it has launched the next forward with it. Everything a forward reads is fixed before it is
  launched: its resident set (``req_to_token``, written only here and by SGLang's scheduling, both before the launch
  on the stream the forward waits for), the rows' hole counts its plan uses (``forward_holes``), its forced tokens
  and its copy of the scoring queries (``ForwardSlots``, per forward parity). A decision taken while processing
  forward N therefore reaches the first forward launched after that: N+1 without overlap, N+2 with it.
- A request's resident set is the set of positions ``p < seq_len`` with ``req_to_token[row, p] != 0``; slot 0 is
  never handed out, so 0 marks a hole. The manager keeps ``req_to_token`` equal to what the request's
  ``ThoughtTable`` says is attended: it writes 0 over a detail when it leaves the device (offload, drop, eviction)
  and fresh slot ids when a recall has landed. The attention backend (``resident_attention``) reads only that.
- ``after_prefill``/``after_decode`` run after SGLang has appended the step's sampled tokens: they feed each table
  the tokens it has not seen (one per request per decode step: nothing walks the stream), offload or drop closed
  thoughts' detail as the request's policy says (``DetailAction``), decide engine-mode markers, and on decode steps
  that are multiples of a request's ``zoom_interval`` (counted by the scheduler's decode steps, so requests zoom
  together) hand the due requests to ``ZoomPlanner`` with the processed forward's queries (captured by the attention
  backend at the scoring layers through ``capture_query``, or copied from its CUDA-graph query buffers in the
  sampler, ``on_sample``). A decode step with no zoom reads nothing from the device; a zoom step reads the scores
  once (``step_probe`` counts this for the tests).
  Device KV per request comes from counters (``RequestZoom.device_tokens``), never from reading a row.
- Device slots leave the request only once no step reads them: an offloaded detail's slots go back to the allocator
  when its host copy has landed (at once on CPU; on CUDA at the latest in ``before_forward``); a recall takes fresh
  slots from the allocator only when it has enough free (else the recall waits for a later zoom), and they are
  written into ``req_to_token`` once the copy has landed (from the next step on, or at once with
  ``wait_for_recall``). A recall leaves the next decode step's slots free (``ZoomPlanner`` headroom).
- A detail the host store refuses is *parked* (``DetailMover``): holes in the row, its slots kept by the request. The
  step attends what the policy says whatever the store's room (only the memory saving waits), a zoom recalls it by
  writing its own slots back (no copy, no new slot), and it is offloaded as soon as the store has room.
- ``screen(req)`` runs before a new request takes any slot: its effective config goes on the request or it is
  aborted there (400); ``_admit`` after the prefill never aborts.
- Slots owned by the radix tree (the matched or inserted prefix, positions below ``protected_len``) are never freed
  here: a prompt thought whose detail is on the device stays there unless the tree demotes it.
- With the ZoomR radix tree a prefix may come with host-backed holes, and tree-owned device detail of a closed prompt
  thought may be demoted to the host: ``zoomr_sgl.tree_borrow`` tells what a request borrows and how.
- A paged policy (``quest``, ``Policy.pages``): a page closed since the request's last zoom is attended until its
  next one (every decode step), which parks it first, so the prompt's
  pages are read in full by the first decode step; the zoom then writes the picked pages back. Its key bounds are
  taken as it closes, before it leaves the row (``page_bounds``).
- A windowed policy (``streaming``) frees, after each step, what its window left behind (``Policy.forgotten``), at
  least ``WINDOW_CHUNK`` tokens at a time and never below ``protected_len``: the radix tree's prefix, the prompt
  with it, stays. Those holes are gone for good (``dropped_tokens``); the tree's insert stops at the first of them.
- Tensor parallel: every rank runs this manager over its own heads' KV and host store; the zoom's scores are agreed
  over the ranks and host copies land in lockstep (``zoomr_sgl.tp_consensus``), so every rank's table, row and
  allocator take the same steps.
- ``release(req, is_insert)`` runs on finish, abort and retraction (SGLang's ``release_kv_cache``, before the tree's
  ``cache_finished_req``): it frees the slots of copies in flight, clears forced tokens and publishes final stats.
  With the ZoomR tree it also evicts the zoom buffer (frees those slots, writes 0), so every offloaded detail is a
  hole backed by its block, and, when the request will be inserted, hands its own blocks to the tree as
  ``req.zoomr_host_spans = [(start, end, block)]`` (the tree adopts or frees them); otherwise it frees them.
  Borrowed blocks are the tree's and never appear there. With the stock tree a row with holes is marked not
  insertable (``req.skip_radix_cache_insert``: stock nodes cannot point at host memory). SGLang then frees the
  row as usual (holes are filtered out of frees).
- ``on_sample(ids, logits_output, forward_batch)`` (the sampler hook, inside the forward): keeps the forward's queries
  and replaces the sampled id of rows with a forced marker token (``ForwardSlots.forced``).
- ``forward_holes()``: the hole count per row of the forward being launched, in batch order, for the attention
  backend's plan (``ForwardHoles``); None before any forward.
- Stats per request (``RequestStats``) travel in ``req.customized_info['zoomr']`` and reach ``meta_info['zoomr']``;
  they are built every ``stream_stats.STATS_EVERY`` streamed tokens and for the final response, not every step."""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple

import torch

from zoomr_sgl.admission import ZoomRAdmission
from zoomr_sgl.config import ZoomRConfig, ZoomRConfigError
from zoomr_sgl.detail_mover import DetailMover
from zoomr_sgl.engine_markers import EngineMarkers
from zoomr_sgl.forward_slots import ForwardSlots
from zoomr_sgl.host_clock import HostClock
from zoomr_sgl import manager_report
from zoomr_sgl.host_store import HostDetailStore, sized_capacity
from zoomr_sgl.page_bounds import PageBounds
from zoomr_sgl.poison import FreedSlotPoison
from zoomr_sgl.prompt_sentences import PromptSentences
from zoomr_sgl.request_params import request_config
from zoomr_sgl.request_state import RequestZoom, request_stats
from zoomr_sgl.request_table import new_table
from zoomr_sgl.stream_stats import LatestStats
from zoomr_sgl.selection import policy_for
from zoomr_sgl.selection.base import DetailAction
from zoomr_sgl.step_probe import StepProbe
from zoomr_sgl.thought_table import Location
from zoomr_sgl.tp_consensus import TPConsensus
from zoomr_sgl.tree_borrow import TreeBorrow
from zoomr_sgl.zoom_plan import ZoomPlanner

logger = logging.getLogger("zoomr_sgl")
WINDOW_CHUNK = 32  # a window slides in steps of this many tokens: one free per 32 steps, not one per step


class ForwardHoles(NamedTuple):
    """Hole counts of the rows of the forward being launched, in batch order (host), and their total."""

    per_row: torch.Tensor  # int32 [bs], CPU
    total: int


class ZoomRManager:
    """Per-scheduler ZoomR state (see the module contract)."""

    def __init__(self, config: ZoomRConfig, scheduler: Any, query_buffers: dict[int, torch.Tensor] | None = None):
        self.config = config
        self.scheduler = scheduler  # read by hooks.reopen_admission only
        self.allocator = scheduler.token_to_kv_pool_allocator
        self.req_to_token = scheduler.req_to_token_pool.req_to_token
        self.kv_pool = self.allocator.get_kvcache()
        self.num_layers = self.kv_pool.layer_num
        self.scoring_layers = config.scoring_layer_ids(self.num_layers)
        k0 = self.kv_pool.k_buffer[0]
        self.device = k0.device
        self.requests: dict[str, RequestZoom] = {}
        from zoomr_sgl.radix_tree import ZoomRRadixCache

        tree = scheduler.tree_cache if isinstance(scheduler.tree_cache, ZoomRRadixCache) else None
        self.host = HostDetailStore(
            num_layers=self.num_layers, capacity_tokens=sized_capacity(
                config.host_store_tokens, 2 * self.num_layers * k0.shape[1] * k0.shape[2] * k0.element_size(),
                int(self.kv_pool.size)), kv_heads=k0.shape[1],
            head_dim=k0.shape[2], dtype=k0.dtype, device=k0.device, fallback=config.host_full_fallback,
            on_drop=lambda block: self.borrow.on_host_drop(block),
        )
        self.overlap = bool(getattr(scheduler, "enable_overlap", False))
        # forwards between the one whose results are processed and the first a decision taken then reaches
        self.lag = 2 if self.overlap else 1
        self.forward_stream = getattr(scheduler, "forward_stream", None) if self.device.type == "cuda" else None
        self.tp = TPConsensus(scheduler)
        self.mover = DetailMover(self.allocator, self.req_to_token, self.kv_pool, self.host,
                                 make_host_room=lambda n: self.borrow.make_host_room(n),
                                 recall_after=self.forward_stream if self.overlap else None, lockstep=self.tp.lockstep,
                                 may_take=lambda st, n: self.admission.may_offload(st, n))
        self.borrow = TreeBorrow(tree, self.host, self.mover, self.requests)
        self.tree = tree
        if tree is not None:
            tree.attach_host_store(self.host)
        self.markers = EngineMarkers(scheduler.tokenizer)
        self.sentences = PromptSentences(scheduler.tokenizer)
        # query_buffers: layer id -> [max_bs, Hq, D] queries written by a CUDA-graph-safe backend in every forward
        self.slots = ForwardSlots(self.req_to_token.shape[0], self.device, query_buffers)
        self.planner = ZoomPlanner(self.kv_pool, self.req_to_token, self.scoring_layers, self.mover, self.allocator,
                                   agree=self.tp.scores, verify=self.tp.verify if self.tp.checking else None)
        self.admission = ZoomRAdmission(self)
        self._captured: dict[int, torch.Tensor] = {}  # scoring layer -> the running forward's [bs, Hq, D] queries
        self.forward_iter = 0  # the forward being launched or running (SGLang's forward_ct)
        self._holes: ForwardHoles | None = None
        self.decode_steps = 0
        self.admitted = 0
        self.clock = HostClock()  # written by the hooks around each manager call (zoomr_sgl.hooks)
        self.planner.clock = self.clock  # and by the planner, for the pieces of a zoom
        self.poison = FreedSlotPoison(self.kv_pool, self.forward_stream if self.overlap else None) \
            if FreedSlotPoison.enabled() else None
        self.probe = StepProbe() if StepProbe.enabled() else None
        if self.probe is not None:
            self.planner.host_side = self.borrow.unprobed = self.probe.host_side
        self.metrics = None
        self._metrics_at = 0.0
        if getattr(scheduler.server_args, "enable_metrics", False):
            from zoomr_sgl.metrics import ZoomRMetrics

            self.metrics = ZoomRMetrics(getattr(scheduler, "tp_rank", 0))

    # ------------------------------------------------------------------ SGLang step hooks
    def after_prefill(self, batch) -> None:
        for req in batch.reqs:
            if req.finished() or req.is_retracted:
                continue
            st = self.requests.get(req.rid)
            if st is None:  # SGLang's tree may have rewritten the prefix (cache_unfinished_req): count it again
                self.mover.set_prefix_holes(req.req_pool_idx, self.borrow.prefix_holes(req))
            if getattr(req, "inflight_middle_chunks", 0) > 0 or not req.output_ids:  # a middle chunk
                continue
            if st is None:
                st = self._admit(req)
                if st is None:
                    continue
            self._advance(req, st, batch.forward_iter)

    def after_decode(self, batch) -> None:
        if self.probe is None:
            return self._after_decode(batch)
        with self.probe.measure():
            self._after_decode(batch)
        self.probe.end_step()

    def _after_decode(self, batch) -> None:
        self.decode_steps += 1
        step = self.decode_steps
        due = []
        for i, req in enumerate(batch.reqs):
            st = self.requests.get(req.rid)
            if st is None or req.finished() or req.is_retracted:
                continue
            self._advance(req, st, batch.forward_iter)
            if st.policy.zooms and (st.policy.pages or step % st.config.zoom_interval == 0) \
                    or PromptSentences.due(st):
                due.append((st, i))
        if due:
            if self.probe is not None:
                self.probe.step["zoom"] = True
            first = [st for st, _ in due if PromptSentences.due(st)]
            if first:  # their first zoom: their prompts' sentences leave the device now
                if self.probe is not None:
                    self.probe.step["index"] = True
                with self.clock.part("after_decode/sentences_leave"):
                    self.sentences.leave(first, self.req_to_token, self.planner.k_buffers, self.scoring_layers,
                                         self.host, self.mover)
            with self.clock.part("after_decode/park"):
                for st, _ in due:
                    for index in st.to_park:
                        self.mover.park(st, index)
                    st.to_park.clear()
            self.planner.run(due, self.slots.queries(batch.forward_iter), step, headroom=len(batch.reqs))
            with self.clock.part("after_decode/demote"):
                for st, _ in due:
                    if st.policy.prompt_sentences:
                        self.sentences.demote_parked(st, self.borrow)
                    st.peak_device = max(st.peak_device, st.device_tokens())
        if self.metrics is not None and time.monotonic() - self._metrics_at >= manager_report.METRICS_PERIOD_S:
            self._metrics_at = time.monotonic()
            self.metrics.observe(manager_report.snapshot(self))

    def before_forward(self, batch, forward_iter: int) -> None:
        """Right before SGLang launches ``batch`` as forward ``forward_iter``: an extend's rows get the hole counts of
        the prefixes it writes; a decode lands the copies that finished since the last step (a step never waits
        unless asked to) and hands queued marker tokens to this forward; then the rows' counts are fixed for its
        plan."""
        self.forward_iter = forward_iter
        rows = [r.req_pool_idx for r in batch.reqs]
        mode = batch.forward_mode
        if mode.is_decode():
            if self.probe is None:
                self._launch_decode(forward_iter, rows)
            else:
                with self.probe.measure():
                    self._launch_decode(forward_iter, rows)
        elif mode.is_extend():
            for req, row in zip(batch.reqs, rows):
                if req.rid not in self.requests:
                    self.mover.set_prefix_holes(row, self.borrow.prefix_holes(req))
        holes = self.mover.holes_of(rows)
        self._holes = ForwardHoles(torch.from_numpy(holes.astype("int32")), int(holes.sum()))

    def _launch_decode(self, forward_iter: int, rows: list[int]) -> None:
        self.mover.land_busy()
        self.slots.launch(forward_iter, self.markers.launch(forward_iter, set(rows)))

    def forward_holes(self) -> ForwardHoles | None:
        return self._holes

    def on_sample(self, ids: torch.Tensor, logits_output, forward_batch) -> torch.Tensor:
        """The sampler hook of the running forward (``self.forward_iter``)."""
        if self.poison is not None:
            self.poison.count(logits_output.next_token_logits)
        if not forward_batch.forward_mode.is_decode():
            return ids
        fid = self.forward_iter
        if self.requests:
            self.slots.keep_queries(fid, len(ids), self._captured)
        self._captured = {}
        forced = self.slots.forced(fid, forward_batch.req_pool_indices)
        if forced is not None:
            ids = torch.where(forced >= 0, forced.to(ids.device, ids.dtype), ids)
        return ids

    def capture_query(self, layer_id: int, q: torch.Tensor, req_pool_indices: torch.Tensor) -> None:
        """Called by the attention backend during decode: ``q`` is ``[bs, Hq, D]`` at a scoring layer."""
        if layer_id in self.scoring_layers and self.requests:
            self._captured[layer_id] = q.detach()

    def wants_queries(self, layer_id: int) -> bool:
        return layer_id in self.scoring_layers and bool(self.requests)

    def screen(self, req) -> None:
        """Before a new request takes any slot (``Scheduler._add_request_to_queue``): its effective ZoomR config goes
        on the request (``req.zoomr_config``; None: it opted out), or the request is aborted with a 400 the way SGLang
        aborts its own invalid requests there, so the abort's rewritten prompt is all it ever holds. The HTTP process
        checked the same with the model's layer count; this is the last line, for requests that did not pass there.
        Also ``req.zoomr_host_units``: the host-backed prefix its policy reads (``Policy.host_units``), which the
        radix tree's match honours (``zoomr_sgl.tree_readers``)."""
        if req.finished() or getattr(req, "to_finish", None) is not None:
            return
        try:
            req.zoomr_config = cfg = self._request_config(req)
        except ZoomRConfigError as e:
            req.set_finish_with_abort(str(e))
            return
        # what host-backed prefix the radix tree may hand it as holes (zoomr_sgl.tree_readers); none without ZoomR
        req.zoomr_host_units = policy_for(cfg.policy).host_units(cfg) if cfg is not None else frozenset()

    def release(self, req, is_insert: bool = True) -> None:
        self.admission.released(req.rid)
        st = self.requests.pop(req.rid, None)
        if st is None:
            return
        self.mover.end(st, evict_zoom=self.tree is not None)
        st.table.append(req.output_ids[st.table.length - st.prompt_len:])  # the final token, for the stats
        final = request_stats(st)._asdict()
        if st.holes and self.tree is None:
            # The stock radix tree cannot hold host-backed positions: insert nothing rather than holes.
            req.skip_radix_cache_insert = True
        insert = is_insert and not getattr(req, "skip_radix_cache_insert", False)
        self.borrow.release(st, req, insert)
        self.markers.clear(st.row)
        self.mover.forget_row(st.row)  # from here on the record reads no holes: the row is SGLang's again
        st.table.free()
        view = (req.customized_info or {}).get("zoomr")
        if not isinstance(view, LatestStats):
            view = LatestStats(lambda: final)
            req.customized_info = {"zoomr": view}
        view.finish(final)  # the same view: what it already answered stays aligned

    # ------------------------------------------------------------------ admission
    def _request_config(self, req) -> ZoomRConfig | None:
        return request_config(self.config, req.sampling_params.custom_params, self.num_layers)

    def _admit(self, req) -> RequestZoom | None:
        """After the request's first prefill chunk. Never aborts: a request is screened before it takes slots, and an
        abort here would change what its release frees (SGLang rewrites an aborted request's prompt)."""
        if hasattr(req, "zoomr_config"):
            cfg = req.zoomr_config
        else:  # not screened (a path that bypasses the queue): check now, and serve it as stock if it fails
            try:
                cfg = self._request_config(req)
            except ZoomRConfigError as e:
                logger.warning("request %s served without ZoomR: %s", req.rid, e)
                cfg = None
        if cfg is None:
            return None
        prompt_len = len(req.origin_input_ids)
        policy = policy_for(cfg.policy)
        engine = cfg.summary_mode == "engine" and getattr(req, "grammar", None) is None and not policy.pages
        open_ids, close_ids = (self.markers.marker_ids(text) for text in cfg.marker_texts())
        st = RequestZoom(
            rid=req.rid, row=req.req_pool_idx, config=cfg, policy=policy,
            table=new_table(cfg, policy, open_ids, close_ids, req.origin_input_ids, self.sentences),
            prompt_len=prompt_len,
            protected_len=len(req.prefix_indices) if req.prefix_indices is not None else 0,
            engine=engine, open_ids=open_ids, close_ids=close_ids, req=req, row_holes=self.mover.row_holes,
        )
        st.protected_len = max(st.protected_len, prompt_len)  # the prefill inserted the prompt into the tree
        if policy.pages:
            st.pages = PageBounds()
        self.borrow.admit(st, req)
        if st.reused_host_tokens:
            self.admission.ledger.borrow(req.rid, st.reused_host_tokens)  # locked tree rows: not reclaimable
        self.admission.settle(st, req)
        self.markers.clear(st.row)
        self.requests[req.rid] = st
        self.admitted += 1
        req.customized_info = {"zoomr": LatestStats(lambda: request_stats(st)._asdict())}
        return st

    # ------------------------------------------------------------------ one step of one request
    def _advance(self, req, st: RequestZoom, processed: int) -> None:
        """Feed the tokens the table has not seen (the prompt too, at the first step), then act on what closed."""
        out, fed = req.output_ids, st.table.length
        new = out[fed - st.prompt_len:] if fed >= st.prompt_len else [*req.origin_input_ids[fed:], *out]
        closed = st.table.append(new)
        if st.pages is not None and closed:  # quest: the pages' key bounds, before they leave the row
            st.pages.add(self.planner.k_buffers, self.req_to_token[st.row], closed)
        if self.probe is not None:
            self.probe.fed(len(new))
            self.probe.step["boundary"] |= bool(closed)
        for thought in closed:
            self._close_thought(st, thought)
        if st.policy.pages:  # attended until the request's next zoom, which parks them first (quest)
            st.to_park.extend(t.index for t in closed if t.detail_len and st.table.location(t.index) is Location.DEVICE)
        if st.engine:
            self.markers.see_output(st, out, min(len(new), len(out)))
            last_two = tuple(out[-2:]) if len(out) >= 2 else None
            self.markers.decide(st, last_two, processed)
        if st.policy.windowed:
            self._slide_window(st)
        device = st.device_tokens()
        st.peak_device = max(st.peak_device, device)
        st.device_sum += device
        st.device_steps += 1

    def _slide_window(self, st: RequestZoom) -> None:
        """A windowed policy (``streaming``): free what it never attends again, ``WINDOW_CHUNK`` tokens or more at a
        time, from the first position the request owns (the radix tree's prefix, the prompt with it, stays)."""
        lo, hi = st.policy.forgotten(max(st.table.length - 1, 0), st.config)  # the last token has no KV yet
        lo = max(lo, st.protected_len, st.forgotten_to)
        if hi - lo >= WINDOW_CHUNK:
            self.mover.forget(st, lo, hi)
            st.forgotten_to = hi

    def _close_thought(self, st: RequestZoom, t) -> None:
        st.summary_tokens += t.summary_len
        st.detail_tokens += t.detail_len
        if t.detail_start < st.protected_len:
            self.borrow.close_prompt_thought(st, t.index)
            return
        action = st.policy.detail_action
        if action is DetailAction.KEEP:
            return
        if t.detail_len == 0:
            (st.table.mark_offloaded if action is DetailAction.OFFLOAD else st.table.drop)(t.index)
        elif action is DetailAction.DROP:
            self.mover.drop(st, t.index)
        else:
            self.mover.retry_refused(st)
            self.mover.offload(st, t.index)
