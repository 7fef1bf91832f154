"""Where a request's thoughts start: the ``ThoughtTable`` the manager gives a request when it admits it.

Contract: ``new_table(cfg, policy, open_ids, close_ids, prompt_ids, sentences)`` returns a table that has seen no
token yet; the manager feeds it the prompt and output from position 0 on.
- A paged policy (``quest``) cuts fixed pages of ``quest_page_size`` from position 0, with no markers.
- A policy with ``prompt_sentences`` (``sentencekv``) gets the prompt's sentences as preset thoughts first
  (``zoomr_sgl.prompt_sentences``); marker thoughts are looked for after the last of them.
- Program and trained mode (the text carries the markers) segment from there.
- Engine mode segments the output, from ``len(prompt)``. A prompt that already holds closed thoughts (an earlier turn
  or request of an engine-mode conversation) is segmented from the start up to there as well
  (``restart_at=len(prompt)``), so those thoughts are the request's too: borrowed from the radix tree when their
  detail is a host-backed hole run, as in program mode. With no closing marker (a beacon) a prompt holds no thought.
"""
from __future__ import annotations

from typing import Sequence

from zoomr_sgl.config import ZoomRConfig
from zoomr_sgl.prompt_sentences import PromptSentences
from zoomr_sgl.thought_table import ThoughtTable


def new_table(cfg: ZoomRConfig, policy, open_ids: tuple[int, ...], close_ids: tuple[int, ...],
              prompt_ids: Sequence[int], sentences: PromptSentences) -> ThoughtTable:
    if policy.pages:
        return ThoughtTable(cfg, open_ids, close_ids, 0, page_size=cfg.quest_page_size)
    prompt_len = len(prompt_ids)
    preset = sentences.presets(cfg, prompt_ids, open_ids) if policy.prompt_sentences else []
    first = preset[-1][1] if preset else 0
    if cfg.summary_mode != "engine":
        return ThoughtTable(cfg, open_ids, close_ids, first, preset=preset)
    if prompt_len > first and (close_ids or open_ids)[0] in prompt_ids:
        return ThoughtTable(cfg, open_ids, close_ids, first, restart_at=prompt_len, preset=preset)
    return ThoughtTable(cfg, open_ids, close_ids, prompt_len, preset=preset)
