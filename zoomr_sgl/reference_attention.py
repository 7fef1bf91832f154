"""Reference decode attention over a resident set: what the sparse FlashInfer / torch-native path must compute.

Contract:
- ``reference_decode_attention(q [B, Hq, D], k_pool [S, Hkv, D], v_pool [S, Hkv, Dv], resident, scale)``: for each
  request ``b``, softmax attention of ``q[b]`` over the pool rows ``resident[b]`` (a 1-D int64 tensor of slots, each
  at most once, at least one), GQA with query head ``h`` reading kv head ``h // (Hq // Hkv)``. Float32 out
  ``[B, Hq, Dv]``, computed in float32 whatever the input dtype. ``scale`` defaults to ``1/sqrt(D)``.
- ``dense_decode_attention(q [Hq, D], k [n, Hkv, D], v [n, Hkv, Dv], scale)``: one request over all of its KV,
  through a different code path (``scaled_dot_product_attention``), for the exactness tests.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def reference_decode_attention(
    q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, resident: Sequence[torch.Tensor],
    scale: float | None = None,
) -> torch.Tensor:
    B, Hq, D = q.shape
    Hkv = k_pool.shape[1]
    if len(resident) != B or Hq % Hkv:
        raise ValueError(f"{len(resident)} resident sets for {B} queries, or {Hq} heads over {Hkv} kv heads")
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    out = torch.empty(B, Hq, v_pool.shape[-1], dtype=torch.float32)
    for b, slots in enumerate(resident):
        if slots.numel() == 0:
            raise ValueError(f"request {b} attends nothing")
        k = k_pool[slots].float().repeat_interleave(Hq // Hkv, dim=1)  # [n, Hq, D]
        v = v_pool[slots].float().repeat_interleave(Hq // Hkv, dim=1)
        probs = (torch.einsum("hd,nhd->hn", q[b].float(), k) * scale).softmax(dim=-1)
        out[b] = torch.einsum("hn,nhd->hd", probs, v)
    return out


def dense_decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    Hq, Hkv = q.shape[0], k.shape[1]
    group = Hq // Hkv
    qh = q.float()[:, None, :]  # [Hq, 1, D]
    kh = k.float().transpose(0, 1).repeat_interleave(group, dim=0)  # [Hq, n, D]
    vh = v.float().transpose(0, 1).repeat_interleave(group, dim=0)
    return torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, scale=scale)[:, 0]
