"""What SGLang's admission and retraction charge a ZoomR request: the device KV it can really hold, not full-KV growth.

SGLang 0.5.17 admits a request when the pool (free + evictable slots) covers what every running request may still
grow (``PrefillAdder._get_running_request_total_token_offset``: ``min(max_new - out, 4096) * new_token_ratio``) plus
the new request's prompt and growth (``min(max_new, 4096)``); when a decode step finds no slot it retracts requests.
A request whose detail leaves the device never grows that much, and for it an estimate is not needed: its peak is
bounded by its settings.

Contract:
- ``peak_tokens(cfg, prompt_len, max_new_tokens, marker_tokens, lag=1)``: the most device KV an engine-mode request of
  a policy that moves detail off the device (``zoomr``: offload, ``summary_only``: drop) can hold over its whole life:
  the prompt; every summary of its output (each at most ``max_summary_tokens`` plus the markers, each after a detail
  of at least ``min_thought_tokens``, so at most that share of the output, plus one); the open thought
  (``max_thought_tokens``) or, right after a thought closed, its detail while the copy to the host is in flight plus
  the first ``INFLIGHT_MARGIN`` tokens of the next one (a copy lands within a step or two: the open thought is then
  nearly empty); and the zoom buffer (``zoom_budget``, ``zoomr`` only); and never more than full KV (prompt plus
  ``max_new_tokens``: a short request is charged as stock would). With the overlap scheduler (``lag`` 2) a marker
  lands one token after it was decided, so each summary and the open thought may be ``lag - 1`` tokens longer. None
  (stock accounting) for policy ``full``, program and trained mode (the model writes the summaries: no bound), and
  requests that opted out. The bound assumes the host store takes every detail; when it refuses (``keep_on_device``) a
  detail stays on the device (parked) and SGLang's own retraction is the backstop.
- ``running_growth(req)``: for a running bounded request, ``peak - device_now`` (its device KV now, from the manager's
  counters; 0 once finished): what the adder must keep free for it. A request the adder took by its bound that the
  manager has not taken yet (the overlap scheduler runs it one step before its prefill result is processed) is
  charged ``peak - (prompt + output)``: its bound, not stock's estimate (SGLang stops admitting after one refusal
  until a request finishes, so a transient overcharge would cap the batch for good). Once its thinking has ended
  (engine mode's ``thinking_end``) its answer stays on the device, so it keeps at least the rest of
  ``max_new_tokens`` free too. No ``new_token_ratio``: the bound holds, so a batch of bounded requests that was
  admitted never needs a retraction.
- ``new_growth(req)``: for a waiting bounded request, ``peak - prompt_len`` (what it adds beyond its prefill).
- ``is_bounded(req)``: the request is charged by its bound (running or waiting).
- The bound holds only if the host store takes every detail, so the host tier is charged too. A bounded request of
  an offloading policy is promised ``max_new_tokens`` host rows (what its output's detail can reach; plus its prompt's
  length when the policy offloads the prompt's sentences, ``sentencekv``) when the adder
  takes it (``admitted(req)``), until it is released (``released(rid)``). ``new_growth`` answers None (stock
  accounting: SGLang's estimate and retraction, detail still offloaded while the store has room) for a request whose
  promise the store cannot make beside those already made: ``HostLedger.room()`` is the store's capacity less the
  promises and the rows running requests borrow from the tree (the rest of the tree's host-backed cache yields to
  them: ``RadixTree.evict_host``). A running request admitted without a promise stays on stock accounting, and
  ``may_offload(st, rows)`` lets it offload only into rows no promise still needs, so a promise is never broken.
  ``host_unbounded`` counts the requests charged as stock for want of host room.
The hooks in ``zoomr_sgl.hooks`` apply these to SGLang's adder (``running_offset``, ``admit_new``) and keep bounded
requests out of the retraction ratio estimate and at the back of the retraction order.
"""

from __future__ import annotations

import math
from typing import Any

from zoomr_sgl.config import ZoomRConfig
from zoomr_sgl.selection import policy_for
from zoomr_sgl.selection.base import DetailAction

INFLIGHT_MARGIN = 64  # tokens of a new thought written while the previous one's offload copy is still in flight
UNKNOWN = -1  # RequestZoom.bound before the adder first asks


def peak_tokens(cfg: ZoomRConfig | None, prompt_len: int, max_new_tokens: int, marker_tokens: int,
                lag: int = 1) -> int | None:
    if cfg is None or cfg.summary_mode != "engine":
        return None
    action = policy_for(cfg.policy).detail_action
    if action is DetailAction.KEEP:
        return None
    late = lag - 1  # tokens a marker may land after it was decided
    summary = (0 if cfg.beacon else cfg.max_summary_tokens) + marker_tokens + late  # a beacon is all its summary
    summaries = math.ceil(max_new_tokens * summary / (cfg.min_thought_tokens + summary)) + summary
    zoom = cfg.zoom_budget if action is DetailAction.OFFLOAD else 0
    open_thought = cfg.max_thought_tokens + late
    return prompt_len + min(max_new_tokens, summaries + open_thought + INFLIGHT_MARGIN + zoom)


class HostLedger:
    """Host rows promised to admitted bounded requests and rows running requests borrow from the tree (locked, so
    not reclaimable), one entry per request id; ``capacity`` is the store's."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.promised: dict[str, int] = {}
        self.borrowed: dict[str, int] = {}
        self.total = 0  # promised + borrowed

    def room(self) -> int:
        return self.capacity - self.total

    def promise(self, rid: str, rows: int) -> None:
        if rid not in self.promised:
            self.promised[rid] = rows
            self.total += rows

    def borrow(self, rid: str, rows: int) -> None:
        self.total += rows - self.borrowed.get(rid, 0)
        self.borrowed[rid] = rows

    def forget(self, rid: str) -> None:
        self.total -= self.promised.pop(rid, 0) + self.borrowed.pop(rid, 0)


class ZoomRAdmission:
    """The bounds of one scheduler's requests (see the module contract); ``manager`` is its ``ZoomRManager``."""

    def __init__(self, manager: Any):
        self.manager = manager
        self.ledger = HostLedger(manager.host.stats().capacity_tokens)
        self.host_unbounded = 0

    @staticmethod
    def _host_rows(cfg: ZoomRConfig, req) -> int:
        """Host rows a bounded request's output detail can reach (and its prompt's sentences, for a policy that
        offloads those too): 0 for a policy that drops detail."""
        policy = policy_for(cfg.policy)
        if policy.detail_action is not DetailAction.OFFLOAD:
            return 0
        prompt = len(req.origin_input_ids) if policy.prompt_sentences else 0
        return req.sampling_params.max_new_tokens + prompt

    def _promised(self, cfg: ZoomRConfig, req) -> bool:
        return req.rid in self.ledger.promised or self._host_rows(cfg, req) == 0

    def _peak(self, cfg: ZoomRConfig | None, prompt_len: int, req) -> int | None:
        if cfg is None:
            return None
        markers = self.manager.markers
        marker_tokens = sum(len(markers.marker_ids(text)) for text in cfg.marker_texts())
        return peak_tokens(cfg, prompt_len, req.sampling_params.max_new_tokens, marker_tokens, self.manager.lag)

    def settle(self, st, req) -> None:
        """Fix ``st.bound`` once, when the manager admits the request: its peak, or None (stock accounting) for a
        request that is not bounded or was admitted without a host promise."""
        st.bound = self._peak(st.config, st.prompt_len, req) if st.engine else None
        if st.bound is not None and not self._promised(st.config, req):
            st.bound = None  # admitted with stock accounting: the host store had no room for its promise
            self.host_unbounded += 1

    def running_growth(self, req) -> int | None:
        st = self.manager.requests.get(req.rid)
        if st is None:
            return self._unmanaged_growth(req)
        if not st.engine:
            return None
        if st.bound == UNKNOWN:
            self.settle(st, req)
        peak = st.bound
        if peak is None:
            return None
        if req.finished():
            return 0
        if st.thinking_done:  # the answer stays on the device: it may grow to the request's limit
            return max(0, peak - st.device_tokens(), req.sampling_params.max_new_tokens - len(req.output_ids))
        return max(0, peak - st.device_tokens())

    def _unmanaged_growth(self, req) -> int | None:
        """A running request the manager has not taken yet: with the overlap scheduler SGLang merges a prefilled
        request into the running batch one step before its prefill result (where the manager takes it) is
        processed. One the adder took by its bound (promised) is charged its bound less all it holds (nothing has
        left the device yet); charged as stock instead, its first decode step would overcharge the pool, and one
        refused admission keeps SGLang from trying again (``batch_is_full``) until a request finishes."""
        cfg = getattr(req, "zoomr_config", None)
        growth = self.new_growth(req) if cfg is not None and self._promised(cfg, req) else None
        if growth is None:
            return None
        return 0 if req.finished() else max(0, growth - len(req.output_ids))

    def new_growth(self, req) -> int | None:
        cfg = getattr(req, "zoomr_config", None)  # set when the request was queued (ZoomRManager.screen)
        if cfg is None or getattr(req, "grammar", None) is not None:  # constrained decoding runs without markers
            return None
        prompt_len = len(req.origin_input_ids)
        peak = self._peak(cfg, prompt_len, req)
        if peak is None:
            return None
        if not self._promised(cfg, req) and self._host_rows(cfg, req) > self.ledger.room():
            return None  # the host store could not take all its detail: stock accounting
        return peak - prompt_len

    def admitted(self, req) -> None:
        """The adder took ``req`` (whole or its first chunk) charged by its bound: promise its host rows."""
        cfg = getattr(req, "zoomr_config", None)
        if cfg is not None:
            self.ledger.promise(req.rid, self._host_rows(cfg, req))

    def released(self, rid: str) -> None:
        self.ledger.forget(rid)

    def may_offload(self, st, rows: int) -> bool:
        """Whether ``st`` may take ``rows`` host rows now: always with a promise; else only rows that neither a
        promise still needs (its ``max_new_tokens`` less the detail its request has closed) nor a borrower holds.
        O(running requests), at thought boundaries of unpromised requests only."""
        ledger = self.ledger
        if st.rid in ledger.promised:
            return True
        requests = self.manager.requests
        owed = sum(max(0, rows_ - (requests[rid].detail_tokens if rid in requests else 0))
                   for rid, rows_ in ledger.promised.items())
        stats = self.manager.host.stats()
        tree = self.manager.tree
        reclaimable = tree.host_tokens() - sum(ledger.borrowed.values()) if tree is not None else 0
        return stats.capacity_tokens - stats.used_tokens + max(reclaimable, 0) - owed >= rows

    def is_bounded(self, req) -> bool:
        if req.rid in self.manager.requests:
            return self.running_growth(req) is not None
        return self.new_growth(req) is not None

    @staticmethod
    def clip() -> int:
        """SGLang's cap on a request's growth estimate (``CLIP_MAX_NEW_TOKENS``, default 4096): it charges a new
        request ``min(max_new, cap)``, so a bounded request's growth above the cap is added back after admission."""
        from sglang.srt.managers import schedule_policy

        return schedule_policy.CLIP_MAX_NEW_TOKENS
