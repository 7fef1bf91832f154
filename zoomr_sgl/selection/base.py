"""The one resident-set mechanism every policy shares.

Contract:
- A policy is a stateless object; ``select(table, inputs)`` reads one request's ``ThoughtTable`` (whose ``config``
  holds that request's settings) and ``StepInputs`` and returns a ``Selection``. It changes nothing: the caller
  applies the decision (``ThoughtTable.apply``, the copies). A selection depends only on its own request's table and
  inputs, so a batch's order never changes it.
- ``Selection.positions``: the sorted, unique int64 sequence positions this step attends, with ``evict`` already
  applied and ``recall`` not yet landed (attended from the next step on), unless ``config.wait_for_recall`` is set:
  then the recalls are included and the caller must wait for them before attention.
- ``recall``/``evict``/``selected`` are thought indices, decided only on zoom steps (``step % zoom_interval == 0``);
  ``selected`` are the thoughts the zoom picked this step (the caller stamps them most recently used).
- The server asks only for the decision: ``decide(table, inputs)`` is the zoom alone (a ``ZoomDecision``, no
  positions: the server attends what ``req_to_token`` holds), called on the steps the server deems zoom steps.
  ``to_score(table)`` names the thoughts whose summaries ``decide`` will score (through
  ``inputs.score_summaries``, in that order), so the server can score every due request's thoughts in one launch
  before deciding.
- ``detail_action`` says what the caller does with a thought's detail when it closes: keep it on the device,
  offload it to the host store, or drop it.
- ``prompt_sentences``: the request's prompt sentences are preset thoughts (``zoomr_sgl.prompt_sentences``), which
  leave the device at its first zoom where ``may_leave(table, index, prompt_len)`` says so, and are scored from their
  mean keys: ``sentences_to_score(table)`` names them (through ``inputs.score_sentences``, in that order).
- ``forgotten(length, config)`` is ``[lo, hi)``: positions the policy never attends again once the sequence holds
  ``length`` tokens, whatever the thoughts (``streaming``'s window), so the server may free them for good; empty by
  default. The server frees only what the request owns (never the radix tree's prompt).
- ``pages`` (a server-side switch): the table is cut into fixed pages (``quest_page_size``) with no markers; every
  decode step is a zoom step whatever ``zoom_interval``; a closed page stays attended until the request's next zoom,
  which first parks it (out of the resident set, its slots kept); an eviction list is done whole (as with
  ``zoom_retain`` false); and ``pages_to_score(table)`` names the pages ``decide`` scores through
  ``inputs.score_pages`` (their key bounds), in that order.
- ``host_units(config)``: the kinds of host-backed prefix the radix tree may hand a request of this policy as holes
  (``THOUGHT``: a closed thought's detail, borrowed and zoomed like its own; ``SENTENCE``: a prompt sentence,
  SentenceKV's). By default none: such a request attends its whole prefix, so
  the tree's match stops before the first host node it cannot read and the rest is recomputed
  (``zoomr_sgl.tree_readers``).
- Subclasses say only what differs: ``detail_action``, ``zoom`` (which thoughts to recall and evict) and/or
  ``positions`` (which positions to attend).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, ClassVar, NamedTuple, Sequence

import torch

from zoomr_sgl.thought_table import ThoughtTable, ZoomDecision

THOUGHT = "thought"  # a host node backing a closed thought's detail
SENTENCE = "sentence"  # a host node backing a prompt sentence (SentenceKV; cut by the server-wide minimum length)
UNITS = frozenset({THOUGHT, SENTENCE})  # every kind of host node


class DetailAction(enum.Enum):
    KEEP = "keep_on_device"
    OFFLOAD = "offload_to_host"
    DROP = "drop"


@dataclass(frozen=True)
class StepInputs:
    """What a decode step offers a policy for one request.

    ``query``: the request's query at each scoring layer, ``[L, Hq, D]`` (post-RoPE, like the stored keys).
    ``keys_at``: sequence positions (int64 ``[n]``) -> keys at the scoring layers ``[L, n, Hkv, D]``; only positions
    whose KV is on the device are asked for.
    ``score_summaries``: optional; one int64 position tensor per thought (each at least one position, any
    device) -> float32 scores ``[T]`` by ``zoomr_sgl.scoring``'s definition for this step's query. On CUDA the
    manager passes the Triton kernel here (it reads the keys straight from the pool); without it a policy gathers
    through ``keys_at`` and scores with the torch reference.
    ``score_pages``: optional; page (thought) indices -> float32 scores ``[n]``, each page's key-bound score for
    this step's query (``selection.quest``), for a paged table.
    ``score_sentences``: optional; thought indices of preset (prompt-sentence) thoughts -> float32 scores ``[n]``
    for this step's query against each one's mean key (``sentence_index.SentenceIndex.scores``), for ``sentencekv``:
    their detail is off the device, so their keys cannot be gathered.
    """

    step: int
    query: torch.Tensor | None = None
    keys_at: Callable[[torch.Tensor], torch.Tensor] | None = None
    score_summaries: Callable[[Sequence[torch.Tensor]], torch.Tensor] | None = None
    score_sentences: Callable[[Sequence[int]], torch.Tensor] | None = None
    score_pages: Callable[[Sequence[int]], torch.Tensor] | None = None


class Selection(NamedTuple):
    positions: torch.Tensor
    selected: tuple[int, ...]
    recall: tuple[int, ...]
    evict: tuple[int, ...]
    detail_action: DetailAction


class Policy:
    name: ClassVar[str]
    detail_action: ClassVar[DetailAction] = DetailAction.KEEP
    zooms: ClassVar[bool] = False  # whether zoom steps can recall or evict (the server plans only for these)
    windowed: ClassVar[bool] = False  # whether ``forgotten`` can be non-empty (the server asks only these)
    prompt_sentences: ClassVar[bool] = False  # whether the prompt's sentences are thoughts (SentenceKV)
    pages: ClassVar[bool] = False  # fixed pages, parked and picked back every step (quest; see the contract)

    def host_units(self, config) -> frozenset[str]:
        """Kinds of host-backed prefix a request of this policy reads as holes (see the contract); by default none."""
        return frozenset()

    def select(self, table: ThoughtTable, inputs: StepInputs) -> Selection:
        if table.finished:
            raise ValueError("cannot select for a freed request")
        zoom_step = inputs.step % table.config.zoom_interval == 0
        selected, recall, evict = self.zoom(table, inputs) if zoom_step else ((), (), ())
        waited = recall if table.config.wait_for_recall else ()
        positions = self.positions(table, inputs, waited, evict)
        return Selection(positions, tuple(selected), tuple(recall), tuple(evict), self.detail_action)

    def decide(self, table: ThoughtTable, inputs: StepInputs) -> ZoomDecision:
        selected, recall, evict = self.zoom(table, inputs)
        return ZoomDecision(tuple(selected), tuple(recall), tuple(evict))

    def forgotten(self, length: int, config) -> tuple[int, int]:
        """Positions never attended again at this length (see the module contract); by default none."""
        return 0, 0

    def to_score(self, table: ThoughtTable) -> tuple[int, ...]:
        """Thoughts whose summaries ``zoom`` scores now, in the order it asks for them; by default none."""
        return ()

    def pages_to_score(self, table: ThoughtTable) -> tuple[int, ...]:
        """Pages whose key bounds ``decide`` scores now, in the order it asks for them; by default none."""
        return ()

    def sentences_to_score(self, table: ThoughtTable) -> tuple[int, ...]:
        """Preset thoughts whose mean keys ``zoom`` scores now, in the order it asks for them; by default none."""
        return ()

    def may_leave(self, table: ThoughtTable, index: int, prompt_len: int) -> bool:
        """Whether prompt sentence ``index`` may leave the device; by default none may."""
        return False

    def zoom(self, table: ThoughtTable, inputs: StepInputs) -> tuple[Sequence[int], Sequence[int], Sequence[int]]:
        """(selected, recall, evict) thought indices; by default no zoom."""
        return (), (), ()

    def positions(
        self, table: ThoughtTable, inputs: StepInputs, recall: Sequence[int], evict: Sequence[int]
    ) -> torch.Tensor:
        """By default everything whose detail is attended (see ``ThoughtTable.attended_positions``)."""
        return table.attended_positions(add=recall, remove=evict)

