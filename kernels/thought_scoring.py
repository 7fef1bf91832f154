"""Thought scoring from summary keys read straight from the KV pool: a Triton kernel and its torch reference.

Contract (the score itself is ``zoomr_sgl.scoring``'s: the mean over heads and scoring layers of the max over the
thought's summary tokens of ``q·k / sqrt(D)``, GQA head ``h`` reading kv head ``h // (Hq // Hkv)``):
- ``thought_scores_triton(queries, k_buffers, thought_req, summary_indptr, summary_slots, out=None)`` -> float32 ``[T]``.
  Ragged layout:
  - ``queries`` ``[B, L, Hq, D]``: the decode query of each of ``B`` requests at each of ``L`` scoring layers
    (post-RoPE, as the attention backend sees it);
  - ``k_buffers``: ``L`` key buffers ``[pool_slots, Hkv, D]``, one per scoring layer, in the order of ``queries``'
    second axis (SGLang's ``MHATokenToKVPool.k_buffer[layer]``); same shape, strides, dtype and device;
  - ``thought_req`` ``[T]``: which request (row of ``queries``) thought ``t`` belongs to;
  - ``summary_indptr`` ``[T + 1]``, ``summary_slots`` ``[S]``: thought ``t``'s summary keys sit in the pool slots
    ``summary_slots[summary_indptr[t]:summary_indptr[t+1]]``, at least one each.
  Products and sums in float32 whatever the input dtype (bf16 on the GPU: exact products, fp32 accumulation).
  ``out`` (float32, ``[>= T]``) is written in place when given. Deterministic: no atomics.
- ``thought_scores_reference(...)``: same arguments; gathers each request's summary keys and calls
  ``zoomr_sgl.scoring.thought_scores`` on the CPU in float32 (the reference, not a re-implementation).
- Top-k within the budget stays in torch: ``zoomr_sgl.scoring.top_within_budget`` over these scores (a greedy walk
  over a few dozen thoughts per request, on the host, where the recall decisions are made anyway).

Kernel: one program per thought, looping over scoring layers and blocks of summary tokens. A block loads
``BLOCK_N`` tokens x ``Hkv`` heads as rows ``[BLOCK_N * Hkv, D]`` and multiplies the request's whole query
``[Hq, D]`` against them in one ``tl.dot``; the pairs whose kv head is not the query head's group are masked to
``-inf`` before the max (Hkv times the needed products, all of them free on tensor cores; one wide load per block).
The scoring layers' buffers are reached from the first one's pointer by element offsets (``layer_offsets``), so
one launch covers all layers.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

ROWS = 128  # token x kv-head rows per block (one tensor-core tile wide)


@triton.jit
def _thought_score_kernel(
    q_ptr, sq_b, sq_l, sq_h,  # queries [B, L, Hq, D], last dim contiguous
    k_ptr, layer_offsets, sk_slot, sk_head,  # key buffer of the first scoring layer; element offsets of the others
    thought_req, summary_indptr, summary_slots, out,
    num_layers, scale,
    HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
    HQ_P: tl.constexpr, HKV_P: tl.constexpr, D_P: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):
    t = tl.program_id(0)
    req = tl.load(thought_req + t).to(tl.int64)
    start = tl.load(summary_indptr + t).to(tl.int64)
    n = tl.load(summary_indptr + t + 1).to(tl.int64) - start

    h = tl.arange(0, HQ_P)
    d = tl.arange(0, D_P)
    r = tl.arange(0, BLOCK_N * HKV_P)
    r_tok = r // HKV_P
    r_head = r % HKV_P
    group = HQ // HKV
    pair = (h[:, None] // group) == r_head[None, :]  # query head h reads kv head h // group
    q_mask = (h[:, None] < HQ) & (d[None, :] < D)

    total = tl.zeros((HQ_P,), dtype=tl.float32)
    for layer in range(num_layers):
        q = tl.load(q_ptr + req * sq_b + layer * sq_l + h[:, None] * sq_h + d[None, :], mask=q_mask, other=0.0)
        k_layer = k_ptr + tl.load(layer_offsets + layer)
        best = tl.full((HQ_P,), float("-inf"), dtype=tl.float32)
        for n0 in range(0, n, BLOCK_N):
            tok = n0 + r_tok
            row_ok = (tok < n) & (r_head < HKV)
            slot = tl.load(summary_slots + start + tok, mask=row_ok, other=0).to(tl.int64)
            k = tl.load(
                k_layer + slot[:, None] * sk_slot + r_head[:, None] * sk_head + d[None, :],
                mask=row_ok[:, None] & (d[None, :] < D), other=0.0,
            )
            if IEEE:
                logits = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                logits = tl.dot(q, tl.trans(k))  # bf16/fp16 operands: exact products, fp32 accumulation
            logits = tl.where(pair & row_ok[None, :], logits * scale, float("-inf"))
            best = tl.maximum(best, tl.max(logits, axis=1))
        total += tl.where(h < HQ, best, 0.0)
    tl.store(out + t, tl.sum(total, axis=0) / (num_layers * HQ))


def thought_scores_triton(
    queries: torch.Tensor, k_buffers: Sequence[torch.Tensor], thought_req: torch.Tensor,
    summary_indptr: torch.Tensor, summary_slots: torch.Tensor, out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-thought scores, float32 ``[T]`` (see the module contract)."""
    B, L, Hq, D = queries.shape
    if len(k_buffers) != L or L == 0:
        raise ValueError(f"{len(k_buffers)} key buffers for {L} scoring layers")
    first = k_buffers[0]
    for buf in k_buffers:
        if buf.shape != first.shape or buf.stride() != first.stride() or buf.dtype != first.dtype \
                or buf.device != first.device:
            raise ValueError("the scoring layers' key buffers must share shape, strides, dtype and device")
    Hkv = first.shape[1]
    if Hq % Hkv or first.shape[2] != D or first.stride(2) != 1 or queries.stride(3) != 1:
        raise ValueError(f"queries {tuple(queries.shape)} do not match keys {tuple(first.shape)} (or not contiguous)")
    T = thought_req.shape[0]
    if out is None:
        out = torch.empty(T, dtype=torch.float32, device=queries.device)
    if T == 0:
        return out
    elem = first.element_size()
    offsets = torch.tensor([(b.data_ptr() - first.data_ptr()) // elem for b in k_buffers], dtype=torch.int64)
    hkv_p = triton.next_power_of_2(Hkv)
    _thought_score_kernel[(T,)](
        queries, queries.stride(0), queries.stride(1), queries.stride(2),
        first, offsets.to(queries.device), first.stride(0), first.stride(1),
        thought_req, summary_indptr, summary_slots, out,
        L, 1.0 / math.sqrt(D),
        HQ=Hq, HKV=Hkv, D=D, HQ_P=max(16, triton.next_power_of_2(Hq)), HKV_P=hkv_p,
        D_P=max(16, triton.next_power_of_2(D)), BLOCK_N=max(1, ROWS // hkv_p),
        IEEE=queries.dtype == torch.float32,
    )
    return out


def thought_scores_reference(
    queries: torch.Tensor, k_buffers: Sequence[torch.Tensor], thought_req: torch.Tensor,
    summary_indptr: torch.Tensor, summary_slots: torch.Tensor,
) -> torch.Tensor:
    """``zoomr_sgl.scoring.thought_scores`` per request over keys gathered from the pool; float32 ``[T]`` on the CPU."""
    from zoomr_sgl.scoring import thought_scores

    queries = queries.cpu().float()
    keys = torch.stack([b.cpu() for b in k_buffers]).float()  # [L, pool_slots, Hkv, D]
    req, indptr, slots = thought_req.cpu().long(), summary_indptr.cpu().long(), summary_slots.cpu().long()
    lengths = indptr[1:] - indptr[:-1]
    scores = torch.empty(req.shape[0], dtype=torch.float32)
    for b in req.unique().tolist():
        ts = (req == b).nonzero().flatten()
        width = int(lengths[ts].max())
        padded = torch.zeros(len(ts), width, dtype=torch.int64)  # padding reads slot 0, masked by the lengths
        for j, t in enumerate(ts.tolist()):
            padded[j, : lengths[t]] = slots[indptr[t] : indptr[t + 1]]
        thought_keys = keys[:, padded].permute(1, 0, 2, 3, 4)  # [T_b, L, N, Hkv, D]
        scores[ts] = thought_scores(queries[b], thought_keys, lengths[ts])
    return scores
