"""A CPU stand-in for the ``sgl_kernel`` package, for SGLang 0.5.17's CPU engine on hosts without Intel AMX.

PyPI has no CPU build of ``sgl_kernel``, yet with ``SGLANG_USE_CPU_ENGINE=1`` SGLang imports a few CPU ops from it
with no fallback. Contract (see ../shared/design/PLATFORM.md):

- ``assign_req_to_token_pool_cpu`` and ``copy_all_layer_kv_cache_cpu`` are implemented with SGLang's semantics;
- seven speculative-decoding names exist so that imports succeed, and raise ``NotImplementedError`` when called;
- every other name is absent, so SGLang's ``try: from sgl_kernel import ...`` probes keep their fallbacks.

This directory is put on the import path by ``setup.sh`` (a ``.pth`` file) on CPU hosts only; a GPU host has the
real package.
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch

__version__ = "0.0.0+zoomr.cpu"


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """For each request r with range [s, e), write the next e - s entries of ``out_cache_loc`` into
    ``req_to_token[req_pool_indices[r], s:e]``, consuming ``out_cache_loc`` in request order."""
    if not (len(req_pool_indices) == len(start_offset) == len(end_offset)):
        raise ValueError("assign_req_to_token_pool_cpu: index and offset tensors differ in length")
    rows = req_pool_indices.tolist()
    starts = start_offset.tolist()
    ends = end_offset.tolist()
    pt = 0
    for row, s, e in zip(rows, starts, ends):
        n = e - s
        if n < 0 or e > pool_len:
            raise ValueError(f"assign_req_to_token_pool_cpu: bad range [{s}, {e}) for a row of {pool_len}")
        if pt + n > out_cache_loc.numel():
            raise ValueError("assign_req_to_token_pool_cpu: out_cache_loc is shorter than the ranges")
        req_to_token[row, s:e] = out_cache_loc[pt : pt + n].to(req_to_token.dtype)
        pt += n


def copy_all_layer_kv_cache_cpu(
    data_ptrs: torch.Tensor, strides: torch.Tensor, tgt_loc: torch.Tensor, src_loc: torch.Tensor
) -> None:
    """In each buffer ``i`` (base address ``data_ptrs[i]``, ``strides[i]`` bytes per row), copy row ``src_loc[j]``
    to row ``tgt_loc[j]`` for every j. All sources are read before any target is written, as in SGLang's kernel."""
    if tgt_loc.numel() != src_loc.numel():
        raise ValueError("copy_all_layer_kv_cache_cpu: tgt_loc and src_loc differ in length")
    if tgt_loc.numel() == 0:
        return
    tgt = tgt_loc.to(torch.int64).numpy()
    src = src_loc.to(torch.int64).numpy()
    rows = int(max(tgt.max(), src.max())) + 1
    for base, stride in zip(data_ptrs.tolist(), strides.tolist()):
        buf = (ctypes.c_uint8 * (rows * int(stride))).from_address(int(base))
        view = np.ctypeslib.as_array(buf).reshape(rows, int(stride))
        view[tgt] = view[src].copy()


def _speculative_only(name: str):
    def unavailable(*args, **kwargs):
        raise NotImplementedError(
            f"sgl_kernel.{name} is a speculative-decoding op; the zoomr-sgl CPU stand-in does not implement it "
            "(speculative decoding is not supported on CPU hosts)"
        )

    unavailable.__name__ = name
    return unavailable


SPECULATIVE_ONLY = (
    "assign_extend_cache_locs_cpu",
    "assign_draft_cache_locs_contiguous_cpu",
    "build_tree_kernel_efficient_cpu",
    "verify_tree_greedy_cpu",
    "fill_accept_out_cache_loc_cpu",
    "fill_bonus_tokens_cpu",
    "rotate_input_ids_cpu",
)
for _name in SPECULATIVE_ONLY:
    globals()[_name] = _speculative_only(_name)
del _name
