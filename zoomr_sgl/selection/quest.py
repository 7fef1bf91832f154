"""``quest``: query-aware page selection from per-page key bounds (Quest); nothing is offloaded.

Contract: positions are cut into pages of ``quest_page_size`` from position 0. A page's bound, per scoring layer and
query head (GQA as in ``scoring``), is ``sum_d max(q_d * kmin_d, q_d * kmax_d) / sqrt(D)`` with ``kmin``/``kmax`` the
per-channel min/max of its keys; the page score is the max over heads, then the mean over layers. A step attends the
last page (it holds the newest token and is still filling) and the ``quest_top_pages`` best other pages (ties to the
lower page). Selection happens every step, not only on zoom steps.
"""

import math

import torch

from zoomr_sgl.selection.base import DetailAction, Policy


def page_key_bounds(keys: torch.Tensor, page_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """keys ``[L, n, Hkv, D]`` -> per-page channel min and max ``[L, P, Hkv, D]`` (the last page may be partial)."""
    L, n, Hkv, D = keys.shape
    pages = -(-n // page_size)
    pad = pages * page_size - n
    k = keys.float()
    lo = torch.nn.functional.pad(k, (0, 0, 0, 0, 0, pad), value=float("inf")).view(L, pages, page_size, Hkv, D)
    hi = torch.nn.functional.pad(k, (0, 0, 0, 0, 0, pad), value=float("-inf")).view(L, pages, page_size, Hkv, D)
    return lo.amin(dim=2), hi.amax(dim=2)


def page_scores(query: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor) -> torch.Tensor:
    """query ``[L, Hq, D]``, bounds ``[L, P, Hkv, D]`` -> float32 ``[P]`` upper-bound page scores."""
    L, Hq, D = query.shape
    group = Hq // kmin.shape[2]
    q = query.float()[:, None]  # [L, 1, Hq, D]
    lo, hi = (b.repeat_interleave(group, dim=2) for b in (kmin, kmax))  # [L, P, Hq, D]
    bound = torch.maximum(q * lo, q * hi).sum(-1) / math.sqrt(D)  # [L, P, Hq]
    return bound.amax(dim=-1).mean(dim=0)


class QuestPolicy(Policy):
    name = "quest"
    detail_action = DetailAction.KEEP

    def positions(self, table, inputs, recall, evict) -> torch.Tensor:
        n, ps, top = table.length, table.config.quest_page_size, table.config.quest_top_pages
        pages = -(-n // ps)
        if pages - 1 <= top:  # every page fits: no need to score
            return torch.arange(n, dtype=torch.int64)
        if inputs.query is None or inputs.keys_at is None:
            raise ValueError("quest needs the step's query and keys")
        kmin, kmax = page_key_bounds(inputs.keys_at(torch.arange(n, dtype=torch.int64)), ps)
        scores = page_scores(inputs.query, kmin[:, :-1], kmax[:, :-1])
        best = torch.sort(-scores.cpu(), stable=True).indices[:top]  # stable: ties to the lower page
        chosen = torch.cat([best, torch.tensor([pages - 1])]).sort().values
        positions = (chosen[:, None] * ps + torch.arange(ps)).flatten()
        return positions[positions < n]  # the last page may be partial
