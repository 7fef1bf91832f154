"""``sentencekv``: SentenceKV over the prompt, ZoomR over the output. The prompt's closed sentences are the table's
preset thoughts (no summary; ``ThoughtTable.is_preset``), their detail offloaded, and each zoom step recalls the
sentences whose mean keys the query scores highest; marker thoughts (the output's, or earlier turns') zoom as under
``zoomr``. The server's side (sentences, their index, leaving the device): ``zoomr_sgl.prompt_sentences``.

Contract (on a zoom step):
- Sentence candidates are the preset thoughts with a non-empty detail in ``HOST``, ``PARKED``, ``RECALLING`` or
  ``ZOOM``; a ``DEVICE`` sentence (the sink and recent windows) is attended anyway and is never a candidate. Their scores come from ``StepInputs.score_sentences`` (thought indices -> float32 scores, e.g.
  ``SentenceIndex.scores`` of this step's query at those rows); without it a zoom step with sentence candidates
  raises.
- Sentences are picked best first with no count limit within ``share = min(sentence_budget, zoom_budget - the
  marker thoughts' recalls in flight)`` tokens, by ``zoomr``'s rule (``zoom_within``): recalls in flight stay picked,
  ``recall`` = the picked ones on the host or parked, and the unpicked buffered ones are evicted, least recently selected
  first, just enough to fit (all of them with ``zoom_retain`` false). On a table with nothing buffered the pick is
  ``SentenceIndex.pick(scores, share)``.
- Marker thoughts then zoom as under ``zoomr`` (top ``zoom_topk``) within what the sentences leave of
  ``zoom_budget`` after this step, so the one zoom buffer never holds more than ``zoom_budget`` tokens.
- ``sentences_to_score(table)`` names the sentence candidates ``zoom`` will score (through ``score_sentences``, in
  that order), beside ``to_score`` for the marker thoughts' summaries, so a server can score every due request at
  once.
- ``may_leave(table, index, prompt_len)``: a sentence outside the attention sink (it starts at or after
  ``sink_tokens``) and the recent window (it ends at or before ``prompt_len - recent_tokens``); the others stay on the
  device, attended. ``leaves(start, end, prompt_len, sink_tokens, recent_tokens)`` is that rule on a span, shared with
  the trainer's view of a served prompt (``reasoner.sentence_view``).
"""

from zoomr_sgl.selection.base import UNITS
from zoomr_sgl.selection.zoomr import ZoomRPolicy, summary_scores, zoom_within, zoomable
from zoomr_sgl.thought_table import ZOOMABLE_HOMES, Location


def leaves(start: int, end: int, prompt_len: int, sink_tokens: int, recent_tokens: int) -> bool:
    """Whether the prompt sentence ``[start, end)`` may leave the device: outside the sink and the recent window."""
    return start >= sink_tokens and end <= prompt_len - recent_tokens


class SentenceKVPolicy(ZoomRPolicy):
    name = "sentencekv"
    prompt_sentences = True

    def host_units(self, config):  # thoughts and its prompt sentences
        return UNITS

    def may_leave(self, table, index, prompt_len):
        t, cfg = table.thought(index), table.config
        return leaves(t.detail_start, t.detail_end, prompt_len, cfg.sink_tokens, cfg.recent_tokens)

    @staticmethod
    def _sentences(table):
        return zoomable(table, preset=True)

    def sentences_to_score(self, table) -> tuple[int, ...]:
        return tuple(s.thought.index for s in self._sentences(table) if s.location is not Location.RECALLING)

    def zoom(self, table, inputs):
        cfg = table.config
        sents, marks = self._sentences(table), self._candidates(table)
        marks_in_flight = sum(s.thought.detail_len for s in marks if s.location is Location.RECALLING)
        share = min(cfg.sentence_budget, cfg.zoom_budget - marks_in_flight)
        s_sel, s_rec, s_ev = [], [], []
        if sents:
            if inputs.score_sentences is None and self.sentences_to_score(table):
                raise ValueError("sentencekv needs the step's sentence scores (StepInputs.score_sentences)")
            s_sel, s_rec, s_ev = zoom_within(table, sents, len(sents), share, lambda free: inputs.score_sentences(
                tuple(s.thought.index for s in free)))
        kept = ({s.thought.index for s in sents if s.location not in ZOOMABLE_HOMES} - set(s_ev)) | set(s_rec)
        left = cfg.zoom_budget - sum(table.thought(i).detail_len for i in kept)
        m_sel, m_rec, m_ev = [], [], []
        if marks:
            if inputs.score_summaries is None and (inputs.query is None or inputs.keys_at is None):
                raise ValueError("sentencekv needs the step's query and keys (or a summary scorer) on a zoom step")
            m_sel, m_rec, m_ev = zoom_within(table, marks, cfg.zoom_topk, left,
                                             lambda free: summary_scores(table, inputs, free))
        return s_sel + m_sel, s_rec + m_rec, s_ev + m_ev
