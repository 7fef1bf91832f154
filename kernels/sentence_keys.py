"""Sentence keys for the SentenceKV policy: per sentence, the mean of its keys per KV head, read straight from the
KV pool at prefill. A Triton kernel and its torch reference.

Contract:
- ``k_cache``: one layer's key buffer ``[pool_slots, Hkv, D]`` (SGLang's ``MHATokenToKVPool.k_buffer[layer]``),
  any float dtype, last dim contiguous. ``slots`` int ``[P]``: the request's pool slot per prompt position (a row
  of ``req_to_token``), each a valid slot of ``k_cache`` where a sentence reads it. ``starts``, ``ends`` int
  ``[S]``: sentence ``s`` covers positions ``[starts[s], ends[s])`` of ``slots``, non-empty and inside ``slots``
  (ranges may overlap and come in any order).
- ``sentence_mean_keys(k_cache, slots, starts, ends)`` -> float32 ``[S, Hkv, D]`` on ``k_cache``'s device:
  ``out[s, h] = mean over p in [starts[s], ends[s]) of k_cache[slots[p], h]``, summed in float32 whatever the
  input dtype. Deterministic: no atomics. The range check reads three flags back from the device (one sync, once
  per prefill); ``ValueError`` on bad shapes, dtypes or ranges.
- ``sentence_mean_keys_reference(...)``: the same in torch (one ``index_add_`` over every covered position).
  Like the other kernels here, the Triton one has no fallback of its own: a caller off CUDA uses the reference.

Kernel: one program per (sentence, kv head), looping over the sentence's tokens in blocks of ``BLOCK_N`` rows of
``D`` elements (one gather of pool rows per block), summing the block's rows in float32; a sentence of thousands of
tokens is one program's loop, many sentences x heads fill the SMs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_N = 64  # tokens per inner step


@triton.jit
def _sentence_mean_kernel(k_ptr, sk_slot, sk_head, slots, starts, ends, out, num_heads,
                          D: tl.constexpr, D_P: tl.constexpr, BLOCK_N: tl.constexpr):
    s = tl.program_id(0)
    h = tl.program_id(1)
    start = tl.load(starts + s).to(tl.int64)
    n = tl.load(ends + s).to(tl.int64) - start
    d = tl.arange(0, D_P)
    d_ok = d < D
    acc = tl.zeros((BLOCK_N, D_P), dtype=tl.float32)
    for n0 in range(0, n, BLOCK_N):
        tok = n0 + tl.arange(0, BLOCK_N)
        tok_ok = tok < n
        slot = tl.load(slots + start + tok, mask=tok_ok, other=0).to(tl.int64)
        k = tl.load(k_ptr + slot[:, None] * sk_slot + h * sk_head + d[None, :],
                    mask=tok_ok[:, None] & d_ok[None, :], other=0.0)
        acc += k.to(tl.float32)
    mean = tl.sum(acc, axis=0) / n.to(tl.float32)
    tl.store(out + (s.to(tl.int64) * num_heads + h) * D + d, mean, mask=d_ok)


def _check(k_cache: torch.Tensor, slots: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor) -> None:
    if k_cache.dim() != 3 or not k_cache.is_floating_point():
        raise ValueError(f"k_cache must be a float [pool_slots, kv_heads, head_dim] tensor, got "
                         f"{k_cache.dtype} {tuple(k_cache.shape)}")
    for name, t in (("slots", slots), ("starts", starts), ("ends", ends)):
        if t.dim() != 1 or t.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name} must be a 1-D int32/int64 tensor, got {t.dtype} {tuple(t.shape)}")
    if starts.shape != ends.shape:
        raise ValueError(f"starts {tuple(starts.shape)} and ends {tuple(ends.shape)} differ in length")
    if starts.numel() == 0:
        return
    empty, negative, past = torch.stack([
        (ends <= starts).any(), (starts < 0).any(), (ends > slots.shape[0]).any()]).tolist()  # one device read
    if empty:
        raise ValueError("every sentence needs ends > starts (an empty or negative range was given)")
    if negative or past:
        raise ValueError(f"sentence ranges must lie inside the {slots.shape[0]} positions of slots")


def sentence_mean_keys(k_cache: torch.Tensor, slots: torch.Tensor, starts: torch.Tensor,
                       ends: torch.Tensor) -> torch.Tensor:
    """Per-sentence mean keys, float32 ``[S, Hkv, D]`` (see the module contract)."""
    _check(k_cache, slots, starts, ends)
    if k_cache.stride(2) != 1:
        raise ValueError("k_cache rows must have a contiguous head_dim")
    S, (_, H, D) = starts.shape[0], k_cache.shape
    out = torch.empty((S, H, D), dtype=torch.float32, device=k_cache.device)
    if S == 0 or H == 0 or D == 0:
        return out
    dev = k_cache.device
    _sentence_mean_kernel[(S, H)](
        k_cache, k_cache.stride(0), k_cache.stride(1), slots.to(dev), starts.to(dev), ends.to(dev), out, H,
        D=D, D_P=triton.next_power_of_2(D), BLOCK_N=BLOCK_N,
    )
    return out


def sentence_mean_keys_reference(k_cache: torch.Tensor, slots: torch.Tensor, starts: torch.Tensor,
                                 ends: torch.Tensor) -> torch.Tensor:
    """The contract in torch: every covered position's key, summed per sentence by ``index_add_``, over the length."""
    _check(k_cache, slots, starts, ends)
    dev = k_cache.device
    starts, ends = starts.to(dev, torch.int64), ends.to(dev, torch.int64)
    lengths = ends - starts
    sentence = torch.repeat_interleave(torch.arange(len(lengths), device=dev), lengths)  # [total]
    first = torch.cumsum(lengths, 0) - lengths  # where each sentence begins in the flattened order
    pos = torch.arange(sentence.numel(), device=dev) - first[sentence] + starts[sentence]
    keys = k_cache[slots.to(dev, torch.int64)[pos]].float()  # [total, Hkv, D]
    sums = torch.zeros((len(lengths), *k_cache.shape[1:]), dtype=torch.float32, device=dev)
    return sums.index_add_(0, sentence, keys) / lengths.to(torch.float32)[:, None, None]
