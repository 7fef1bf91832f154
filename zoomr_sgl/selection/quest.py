"""``quest``: query-aware page selection from per-page key bounds (Quest); nothing is offloaded.

Contract: positions are cut into pages of ``quest_page_size`` from position 0. A page's bound, per scoring layer and
query head (GQA as in ``scoring``), is ``sum_d max(q_d * kmin_d, q_d * kmax_d) / sqrt(D)`` with ``kmin``/``kmax`` the
per-channel min/max of its keys; the page score is the max over heads, then the mean over layers. A step attends the
last page (it holds the newest token and is still filling) and the ``quest_top_pages`` best other pages (ties to the
lower page).
- The core's reference (``select``/``positions``) picks every step from the step's own query.
- The server (``decide``) serves it on its table's pages (``Policy.pages``: a ``ThoughtTable`` with ``page_size``):
  a page closed since the last step leaves the resident set at the next zoom (parked: it keeps its device slots), and
  every decode step the pages are scored by their bounds (``pages_to_score``, through ``StepInputs.score_pages``; the
  bounds are kept by ``zoomr_sgl.page_bounds``) and the best ones written back into the row: ``recall`` = picked
  parked pages, ``evict`` = every unpicked page in the buffer (done whole: the step attends only this step's pick). As every server decision, the pick reaches the step after the one whose
  query chose it. At most ``min(quest_top_pages, zoom_budget // quest_page_size)`` pages are picked. Pages the radix
  tree gave as host-backed holes (a prefix another policy offloaded) are not candidates.
"""

import math

import torch

from zoomr_sgl.selection.base import DetailAction, Policy
from zoomr_sgl.thought_table import Location, ZoomDecision

SERVED_PAGES = (Location.PARKED, Location.ZOOM)  # a page's homes on the server: out of the row, or picked


def page_key_bounds(keys: torch.Tensor, page_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """keys ``[L, n, Hkv, D]`` -> per-page channel min and max ``[L, P, Hkv, D]`` (the last page may be partial)."""
    L, n, Hkv, D = keys.shape
    pages = -(-n // page_size)
    pad = pages * page_size - n
    k = keys.float()
    lo = torch.nn.functional.pad(k, (0, 0, 0, 0, 0, pad), value=float("inf")).view(L, pages, page_size, Hkv, D)
    hi = torch.nn.functional.pad(k, (0, 0, 0, 0, 0, pad), value=float("-inf")).view(L, pages, page_size, Hkv, D)
    return lo.amin(dim=2), hi.amax(dim=2)


def bound_scores(query: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor) -> torch.Tensor:
    """Batched: query ``[K, L, Hq, D]``, each row's page bounds ``[K, L, Hkv, D]`` -> float32 ``[K]``."""
    D = query.shape[-1]
    group = query.shape[2] // kmin.shape[2]
    lo, hi = (b.float().repeat_interleave(group, dim=2) for b in (kmin, kmax))
    q = query.float()
    bound = torch.maximum(q * lo, q * hi).sum(-1) / math.sqrt(D)  # [K, L, Hq]
    return bound.amax(dim=-1).mean(dim=-1)


def page_scores(query: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor) -> torch.Tensor:
    """query ``[L, Hq, D]``, bounds ``[L, P, Hkv, D]`` -> float32 ``[P]`` upper-bound page scores."""
    P = kmin.shape[1]
    return bound_scores(query[None].expand(P, *query.shape), kmin.transpose(0, 1), kmax.transpose(0, 1))


def best_pages(scores: torch.Tensor, top: int) -> torch.Tensor:
    """Indices of the ``top`` best scores, ties to the lower index."""
    return torch.sort(-scores.cpu(), stable=True).indices[:top]


class QuestPolicy(Policy):
    name = "quest"
    detail_action = DetailAction.KEEP
    zooms = True
    pages = True

    def positions(self, table, inputs, recall, evict) -> torch.Tensor:
        n, ps, top = table.length, table.config.quest_page_size, table.config.quest_top_pages
        pages = -(-n // ps)
        if pages - 1 <= top:  # every page fits: no need to score
            return torch.arange(n, dtype=torch.int64)
        if inputs.query is None or inputs.keys_at is None:
            raise ValueError("quest needs the step's query and keys")
        kmin, kmax = page_key_bounds(inputs.keys_at(torch.arange(n, dtype=torch.int64)), ps)
        best = best_pages(page_scores(inputs.query, kmin[:, :-1], kmax[:, :-1]), top)
        chosen = torch.cat([best, torch.tensor([pages - 1])]).sort().values
        positions = (chosen[:, None] * ps + torch.arange(ps)).flatten()
        return positions[positions < n]  # the last page may be partial

    def pages_to_score(self, table) -> tuple[int, ...]:
        return tuple(s.thought.index for s in table.states() if s.location in SERVED_PAGES)

    def decide(self, table, inputs) -> ZoomDecision:
        pages = self.pages_to_score(table)
        if not pages:
            return ZoomDecision((), (), ())
        if inputs.score_pages is None:
            raise ValueError("quest needs the step's page scores (StepInputs.score_pages)")
        cfg = table.config
        top = min(cfg.quest_top_pages, cfg.zoom_budget // cfg.quest_page_size)
        picked = sorted(pages[j] for j in best_pages(inputs.score_pages(pages), top).tolist())
        chosen = set(picked)
        recall = tuple(i for i in picked if table.location(i) is Location.PARKED)
        evict = tuple(i for i in pages if table.location(i) is Location.ZOOM and i not in chosen)
        return ZoomDecision(tuple(picked), recall, evict)
