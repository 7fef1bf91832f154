"""Thought scoring, the torch reference the Triton kernel is compared against.

Contract:
- ``thought_score(query [L, Hq, D], summary_keys [L, n, Hkv, D])``: for every scoring layer ``l`` and query head
  ``h`` (GQA: head ``h`` reads kv head ``h // (Hq // Hkv)``), the max over the summary's ``n`` tokens of
  ``q·k / sqrt(D)``; the score is the **mean over heads and layers** of those maxima (a consensus of heads, so one
  head that happens to fire does not pull in a thought). Computed in float32. ``n`` must be at least 1.
- ``thought_scores(query, keys [T, L, N, Hkv, D], lengths [T])`` is the same for ``T`` thoughts at once, keys padded
  to ``N`` tokens (padding is ignored); it equals ``thought_score`` per thought. ``query`` may also be
  ``[T, L, Hq, D]``, one per thought: thoughts of several requests scored at once, each by its own request's query.
  ``scores_over_padded(query, keys, valid [T, N])`` is the same with the padding as a mask, without checks.
- ``pad_summary_keys(keys [L, total, Hkv, D], lengths [T])`` -> ``[T, L, N, Hkv, D]``: consecutive runs of
  ``lengths`` tokens, one per thought, zero-padded to ``N = max(lengths)``. Every tensor these functions make lives
  on the device of their inputs (keys on the GPU: the scoring runs there).
- ``top_within_budget(scores, sizes, topk, budget)``: indices into ``scores`` taken in rank order (higher score first,
  ties to the lower index), skipping any whose size no longer fits the remaining ``budget``, at most ``topk`` of them.
  Returned in rank order. Deterministic.
"""

from __future__ import annotations

import math

import torch


def _head_maxima(query: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    # query [L, Hq, D] (one for all thoughts) or [T, L, Hq, D] (one per thought); keys [T, L, N, Hkv, D];
    # valid [T, N] -> per-(thought, layer, head) max logit [T, L, Hq]
    L, Hq, D = query.shape[-3:]
    Hkv = keys.shape[-2]
    if Hq % Hkv:
        raise ValueError(f"{Hq} query heads do not group over {Hkv} kv heads")
    if keys.shape[1] != L or keys.shape[-1] != D:
        raise ValueError(f"keys {tuple(keys.shape)} do not match queries {tuple(query.shape)}")
    k = keys.float().repeat_interleave(Hq // Hkv, dim=-2)  # [T, L, N, Hq, D]: q head h reads kv head h // group
    pattern = "lhd,tlnhd->tlhn" if query.dim() == 3 else "tlhd,tlnhd->tlhn"
    logits = torch.einsum(pattern, query.float(), k) / math.sqrt(D)
    if valid is not None:
        logits = logits.masked_fill(~valid[:, None, None, :], float("-inf"))
    return logits.amax(dim=-1)


def thought_score(query: torch.Tensor, summary_keys: torch.Tensor) -> torch.Tensor:
    """One thought's score (a float32 scalar tensor)."""
    if summary_keys.shape[1] == 0:
        raise ValueError("a summary needs at least one token to be scored")
    return _head_maxima(query, summary_keys[None], None).mean(dim=(1, 2))[0]


def thought_scores(query: torch.Tensor, keys: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Scores of ``T`` thoughts whose summary keys are padded to ``N`` tokens: float32 ``[T]``."""
    if (lengths < 1).any() or (lengths > keys.shape[2]).any():
        raise ValueError(f"summary lengths must be in [1, {keys.shape[2]}]")
    valid = torch.arange(keys.shape[2], device=keys.device)[None, :] < lengths.to(keys.device, torch.int64)[:, None]
    return scores_over_padded(query, keys, valid)


def scores_over_padded(query: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``thought_scores`` with the padding given as a mask ``valid [T, N]`` (each row at least one True), checking
    nothing: it reads no tensor value on the host, so a caller on the device stays free of synchronisation."""
    return _head_maxima(query, keys, valid).mean(dim=(1, 2))


def pad_summary_keys(keys: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Split ``keys``' token axis into runs of ``lengths`` and zero-pad them (see the module contract)."""
    sizes = [int(n) for n in lengths]
    if sum(sizes) != keys.shape[1]:
        raise ValueError(f"lengths add up to {sum(sizes)}, keys hold {keys.shape[1]} tokens")
    padded = keys.new_zeros((len(sizes), keys.shape[0], max(sizes, default=0), *keys.shape[2:]))
    for t, chunk in enumerate(keys.split(sizes, dim=1)):
        padded[t, :, : chunk.shape[1]] = chunk
    return padded


def top_within_budget(scores: torch.Tensor, sizes: torch.Tensor, topk: int, budget: int) -> tuple[int, ...]:
    """Greedy top-k under a token budget, in rank order (see the module contract)."""
    order = torch.sort(-scores.float(), stable=True).indices.tolist()  # stable: equal scores keep index order
    chosen, left = [], budget
    for i in order:
        if len(chosen) == topk:
            break
        size = int(sizes[i])
        if size <= left:
            chosen.append(i)
            left -= size
    return tuple(chosen)
