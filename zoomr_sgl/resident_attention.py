"""Resident-set attention: SGLang's attention backends, attending only the KV a request holds on the device.

Contract:
- A hole in a request's ``req_to_token`` row is the slot id 0 (the allocator never hands out slot 0; row 0 of
  ``req_to_token`` is padding). A request's **resident set** is exactly the positions ``p < seq_len`` with
  ``req_to_token[row, p] != 0``. Keys are stored after RoPE at their original positions, so attention over a
  subset of slots is exact attention over that subset; no position fix-up is needed.
- ``resident_slot_table(req_to_token, req_pool_indices, seq_lens) -> ResidentTable(table, lens)``: row ``i`` of
  ``table[:, :lens[i]]`` holds request ``i``'s resident slots in position order; entries at or past ``lens[i]`` are
  unspecified. ``table`` has ``req_to_token``'s dtype, ``lens`` has ``seq_lens``' dtype. Without holes,
  ``table[i, :lens[i]] == req_to_token[row_i, :seq_lens[i]]`` and ``lens == seq_lens``.
- ``ZoomRTorchNativeAttnBackend`` (CPU, ``--attention-backend torch_native``): the stock backend with the slot table
  swapped. ``init_forward_metadata`` builds the table once per forward; the stock ``forward_decode`` /
  ``forward_extend`` then run unchanged (KV write, reshapes) and reach ``_run_sdpa_forward_decode`` /
  ``_run_sdpa_forward_extend``, which this class overrides only to hand the parent the compacted table.
  - decode: always through the compacted table. Without holes it is the same slots in the same order through the
    same ops, so the output is bit-identical to stock.
  - extend / prefill: stock unless some request's prefix ``req_to_token[row, :prefix_len]`` has a hole; then the key
    and value side is the compacted resident prefix followed by the extend tokens (never holes: freshly allocated),
    with the causal mask over that sequence, so each new token attends the resident prefix and the new tokens up to
    itself.
  - Cross-attention, encoder lengths and sliding-window layers run stock; with a hole there they raise
    ``NotImplementedError`` rather than read slot 0 (sliding-window and encoder-decoder models are not supported).
- ``query_sink`` (torch-native backend only; set by ``zoomr_sgl.hooks`` to the scheduler's ``ZoomRManager``): at
  each decode layer for which ``query_sink.wants_queries(layer_id)``, the backend hands it the post-RoPE queries ``[bs, Hq, D]`` through
  ``capture_query(layer_id, q, req_pool_indices)`` before attending; it does not change the attention.
- ``ZoomRFlashInferAttnBackend`` (CUDA, ``--attention-backend flashinfer``; defined only where ``flashinfer`` imports):
  the stock backend with its decode indices updater swapped for ``ZoomRFlashInferIndicesUpdaterDecode``, whose
  ``call_begin_forward`` builds ``kv_indptr`` / ``kv_indices`` over the resident set with the Triton kernels of
  ``kernels.resident_indices`` (once per forward; every layer's ``decode_wrapper.forward`` reads that plan) and hands
  them to the stock ``call_begin_forward`` as precomputed indices, with the resident lengths on the host as
  ``seq_lens_cpu`` so FlashInfer's host-side indptr agrees with the device one. The last position of a row is always
  kept (the token being decoded), so a CUDA-graph padding row (``req_pool_idx`` 0, ``seq_len`` 1) plans one entry,
  slot 0, as stock does.
  - CUDA graphs: planning runs outside the graph (``init_forward_metadata_out_graph``), the indices go into the
    wrapper's ``_paged_kv_indices_buf``, the indptr into SGLang's ``kv_indptr`` buffer the wrapper was built over; the
    captured kernels only read those buffers, so a resident set that changes every step replays correctly.
  - FlashInfer plans on the host, so it needs the resident lengths there. They come from ``hole_source`` (the
    scheduler's ``ZoomRManager``, set by ``zoomr_sgl.hooks``): ``forward_holes()`` gives the hole count of each row of
    the forward being launched, kept on the host by the only writer of holes, so the lengths are ``seq_lens_cpu -
    holes`` with no device read, which is what lets the overlap scheduler run ahead. A forward with no hole in any
    row plans exactly as stock (stock kernel, no ZoomR launch). Without a hole source or ``seq_lens_cpu`` (a call
    outside the scheduler's forwards) the lengths are read back from the device. ``ZOOMR_SGL_CHECK_HOLES=1`` (debug)
    reads them back anyway and raises when they differ from the host's.
  - Cost per step with holes: two small Triton launches and a cumsum.
  - Extend / prefill: ``ZoomRFlashInferIndicesUpdaterPrefill`` builds the paged part's indices with the same kernel
    (without the keep-last rule when the paged part is the prefix alone, ``use_ragged``: a prefix may end in a hole),
    their total from the host hole counts (holes are only in prefixes). Without holes it plans exactly as stock; with
    holes it hands the compacted indices to the stock plan as ``custom_kv_indices`` with the resident lengths, so the
    causal offsets (kv length minus extend length) stay right: the extend tokens are at the end of both.
  - Stock, unchanged: speculative decoding, the sliding-window wrapper, cross-attention (``kv_start_idx`` set) and
    the FP4 dequant workspace; ZoomR refuses such setups at launch.
  - Query tap: a Python call does not replay in a CUDA graph, so instead of calling ``query_sink`` the backend copies
    the queries of the configured scoring layers into persistent ``query_buffers[layer_id]`` ``[max_bs, Hq, D]``
    inside ``forward_decode`` (recorded into the graph; eager steps run the same copy). After a step, replayed or
    eager, the first ``bs`` rows hold that step's queries in batch order; the manager reads them there
    (``ZoomRManager.after_decode``).
- ``RESIDENT_BACKENDS`` maps a stock backend name to its ZoomR subclass; ``zoomr_sgl.hooks`` re-registers those
  names in SGLang's attention registry, so every name-based check in SGLang keeps working. ``"flashinfer"`` is
  listed only where ``flashinfer`` imports.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import NamedTuple, Optional

import torch
from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend

from zoomr_sgl.detail_mover import CHECKS

try:  # CUDA hosts only; CPU hosts have no flashinfer and import this module all the same
    import flashinfer  # noqa: F401
    from sglang.srt.layers.attention.flashinfer_backend import (
        FlashInferAttnBackend,
        FlashInferIndicesUpdaterDecode,
        FlashInferIndicesUpdaterPrefill,
    )
except ImportError:
    FlashInferAttnBackend = FlashInferIndicesUpdaterDecode = FlashInferIndicesUpdaterPrefill = None


def forward_holes(backend, bs: int):
    """The host hole counts of the forward being planned (``ZoomRManager.forward_holes``), or None when the backend
    has no hole source or they do not fit a batch of ``bs`` rows (a plan outside the scheduler's forwards)."""
    source = getattr(backend, "hole_source", None)
    holes = source.forward_holes() if source is not None else None
    return holes if holes is not None and len(holes.per_row) <= bs else None


def check_lens(on_device: torch.Tensor, on_host: torch.Tensor, what: str) -> None:
    """Debug (``ZOOMR_SGL_CHECK_HOLES=1``): the host's resident lengths must be the device's."""
    if not torch.equal(on_device.cpu().to(torch.int64), on_host.to(torch.int64)):
        raise RuntimeError(f"ZoomR {what}: resident lengths on the device {on_device.tolist()} differ from the host "
                           f"hole counts' {on_host.tolist()}")


class ResidentTable(NamedTuple):
    table: torch.Tensor  # [bs, max(lens)] resident slots per request, position order
    lens: torch.Tensor  # [bs] resident count per request


def resident_slot_table(
    req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor
) -> ResidentTable:
    bs = seq_lens.shape[0]
    width = int(seq_lens.max()) if bs else 0
    rows = req_to_token[req_pool_indices.long(), :width]  # a copy: later edits of req_to_token don't reach it
    resident = (torch.arange(width, device=rows.device) < seq_lens[:, None]) & (rows != 0)
    lens = resident.sum(dim=1).to(seq_lens.dtype)
    if torch.equal(lens, seq_lens):  # no holes: the rows are already the table
        return ResidentTable(rows, lens)
    table = rows.new_zeros((bs, int(lens.max()) if bs else 0))
    request, _ = resident.nonzero(as_tuple=True)
    table[request, resident.cumsum(dim=1)[resident] - 1] = rows[resident]
    return ResidentTable(table, lens)


class _Plan(NamedTuple):
    """The per-forward substitution; ``seq_lens`` is the batch's own tensor, identifying the forward it is for."""

    seq_lens: torch.Tensor
    table: torch.Tensor
    rows: torch.Tensor  # arange(bs): request i reads table row i
    lens: torch.Tensor
    prefix_lens: Optional[torch.Tensor]  # extend only: resident prefix length per request
    has_holes: bool


class ZoomRTorchNativeAttnBackend(TorchNativeAttnBackend):
    """``TorchNativeAttnBackend`` attending each request's resident set only (see the module contract)."""

    def __init__(self, model_runner):
        super().__init__(model_runner)
        self._plan: Optional[_Plan] = None
        self.query_sink = None  # the ZoomRManager, set by zoomr_sgl.hooks once the scheduler is built
        self.hole_source = None  # likewise (only the debug check reads it here)

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True):
        sink = self.query_sink
        if sink is not None and sink.wants_queries(layer.layer_id):  # post-RoPE queries of a scoring layer
            query = q.reshape(-1, layer.tp_q_head_num, layer.qk_head_dim)
            sink.capture_query(layer.layer_id, query, forward_batch.req_pool_indices)
        return super().forward_decode(q, k, v, layer, forward_batch, save_kv_cache)

    def init_forward_metadata(self, forward_batch):
        super().init_forward_metadata(forward_batch)
        self._plan = None
        mode = forward_batch.forward_mode
        if mode.is_decode():
            extend_seq_lens = None
        elif mode.is_extend() and forward_batch.extend_seq_lens is not None:
            extend_seq_lens = forward_batch.extend_seq_lens
        else:
            return
        self._plan = self._make_plan(
            self.req_to_token_pool.req_to_token, forward_batch.req_pool_indices, forward_batch.seq_lens,
            extend_seq_lens,
        )
        holes = forward_holes(self, len(forward_batch.req_pool_indices)) if CHECKS else None
        if holes is not None:
            check_lens(self._plan.lens, forward_batch.seq_lens.cpu() - holes.per_row, "torch-native plan")

    @staticmethod
    def _make_plan(req_to_token, req_pool_indices, seq_lens, extend_seq_lens) -> _Plan:
        table, lens = resident_slot_table(req_to_token, req_pool_indices, seq_lens)
        rows = torch.arange(seq_lens.shape[0], device=seq_lens.device)
        prefix_lens = None if extend_seq_lens is None else lens - extend_seq_lens.to(lens.device, lens.dtype)
        return _Plan(seq_lens, table, rows, lens, prefix_lens, not torch.equal(lens, seq_lens))

    def _plan_for(self, req_to_token, req_pool_indices, seq_lens, extend_seq_lens) -> _Plan:
        plan = self._plan
        if plan is not None and plan.seq_lens is seq_lens and req_to_token is self.req_to_token_pool.req_to_token:
            return plan
        # Called outside the forward that init_forward_metadata planned (a direct call): plan for these arguments.
        return self._make_plan(req_to_token, req_pool_indices, seq_lens, extend_seq_lens)

    @staticmethod
    def _stock_only(encoder_lens, is_cross_attn, sliding_window_size) -> bool:
        return encoder_lens is not None or is_cross_attn or (
            sliding_window_size is not None and sliding_window_size > -1
        )

    def _run_sdpa_forward_decode(
        self, query, output, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, encoder_lens=None,
        scaling=None, enable_gqa=False, causal=False, is_cross_attn=False, sliding_window_size=None,
    ):
        plan = self._plan_for(req_to_token, req_pool_indices, seq_lens, None)
        if self._stock_only(encoder_lens, is_cross_attn, sliding_window_size):
            if plan.has_holes:
                raise NotImplementedError("ZoomR: holes with cross-attention or sliding-window layers")
        else:  # always the compacted table: without holes it is the same slots, so the result is bit-identical
            req_to_token, req_pool_indices, seq_lens = plan.table, plan.rows, plan.lens
        return super()._run_sdpa_forward_decode(
            query, output, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, encoder_lens,
            scaling=scaling, enable_gqa=enable_gqa, causal=causal, is_cross_attn=is_cross_attn,
            sliding_window_size=sliding_window_size,
        )

    def _run_sdpa_forward_extend(
        self, query, output, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, extend_prefix_lens,
        extend_seq_lens, encoder_lens=None, scaling=None, enable_gqa=False, causal=False, is_cross_attn=False,
        sliding_window_size=None,
    ):
        plan = self._plan_for(req_to_token, req_pool_indices, seq_lens, extend_seq_lens)
        if plan.has_holes:
            if self._stock_only(encoder_lens, is_cross_attn, sliding_window_size):
                raise NotImplementedError("ZoomR: holes with cross-attention or sliding-window layers")
            req_to_token, req_pool_indices, seq_lens = plan.table, plan.rows, plan.lens
            extend_prefix_lens = plan.prefix_lens
        return super()._run_sdpa_forward_extend(
            query, output, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, extend_prefix_lens,
            extend_seq_lens, encoder_lens, scaling=scaling, enable_gqa=enable_gqa, causal=causal,
            is_cross_attn=is_cross_attn, sliding_window_size=sliding_window_size,
        )


if FlashInferAttnBackend is not None:

    class ZoomRFlashInferIndicesUpdaterDecode(FlashInferIndicesUpdaterDecode):
        """Plans FlashInfer decode over each request's resident set (see the module contract)."""

        def call_begin_forward(
            self, wrapper, req_pool_indices, paged_kernel_lens, paged_kernel_lens_sum, kv_indptr, kv_start_idx,
            spec_info, seq_lens_cpu, use_sliding_window_kv_pool=False, fixed_split_size=None, disable_split_kv=None,
        ):
            if spec_info is not None or kv_start_idx is not None or use_sliding_window_kv_pool:
                return super().call_begin_forward(  # stock layouts ZoomR does not plan (see the module contract)
                    wrapper, req_pool_indices, paged_kernel_lens, paged_kernel_lens_sum, kv_indptr, kv_start_idx,
                    spec_info, seq_lens_cpu, use_sliding_window_kv_pool=use_sliding_window_kv_pool,
                    fixed_split_size=fixed_split_size, disable_split_kv=disable_split_kv,
                )
            from kernels.resident_indices import resident_indices

            bs = len(req_pool_indices)
            holes = forward_holes(self.attn_backend, bs) if seq_lens_cpu is not None else None
            if holes is not None and holes.total == 0 and not CHECKS:  # no hole in this forward: stock
                return super().call_begin_forward(
                    wrapper, req_pool_indices, paged_kernel_lens, paged_kernel_lens_sum, kv_indptr, None, None,
                    seq_lens_cpu, fixed_split_size=fixed_split_size, disable_split_kv=disable_split_kv,
                )
            if wrapper.is_cuda_graph_enabled:
                kv_indices = wrapper._paged_kv_indices_buf  # the captured kernels read this buffer
            else:  # the full lengths bound the resident total, known on the host without a sync
                kv_indices = torch.empty(max(int(paged_kernel_lens_sum), 1), dtype=torch.int32, device=kv_indptr.device)
            max_len = int(seq_lens_cpu[:bs].max()) if seq_lens_cpu is not None and bs else None
            built = resident_indices(
                self.req_to_token, req_pool_indices, paged_kernel_lens, kv_indptr_out=kv_indptr,
                kv_indices_out=kv_indices, max_len=max_len,
            )
            if holes is None:
                lens_cpu = built.lens.cpu()  # outside the scheduler's forwards: read the lengths back
            else:
                per_row = torch.zeros(bs, dtype=torch.int32)
                per_row[: len(holes.per_row)] = holes.per_row  # CUDA-graph padding rows have no holes
                lens_cpu = seq_lens_cpu[:bs].to(torch.int32) - per_row
                if CHECKS:
                    check_lens(built.lens, lens_cpu, "decode plan")
            self.resident_lens_cpu = lens_cpu
            precomputed = SimpleNamespace(kv_indptr=built.kv_indptr, kv_indices=built.kv_indices)
            return super().call_begin_forward(
                wrapper, req_pool_indices, built.lens, int(lens_cpu.sum()), kv_indptr, None, precomputed, lens_cpu,
                use_sliding_window_kv_pool=False, fixed_split_size=fixed_split_size,
                disable_split_kv=disable_split_kv,
            )

    class ZoomRFlashInferIndicesUpdaterPrefill(FlashInferIndicesUpdaterPrefill):
        """Plans FlashInfer extend over each request's resident prefix when it has holes (see the module contract)."""

        def call_begin_forward(
            self, wrapper_ragged, wrapper_paged, req_pool_indices, paged_kernel_lens, paged_kernel_lens_sum, seq_lens,
            prefix_lens, kv_start_idx, kv_indptr, qo_indptr, use_ragged, spec_info, *args, **kwargs,
        ):
            plain = (spec_info is None and kv_start_idx is None and not args and paged_kernel_lens_sum > 0
                     and not kwargs.get("use_sliding_window_kv_pool") and kwargs.get("custom_kv_indices") is None
                     and self.attn_backend.dq_paged_kernel_lens is None
                     and kwargs.get("cross_attention_custom_mask") is None
                     and not (kwargs.get("multi_item_params") is not None and kwargs["multi_item_params"].is_enabled()))
            if plain:
                from kernels.resident_indices import resident_indices

                # The paged part is the prefix alone with use_ragged (its last position may be a hole), else the
                # prefix plus the extend tokens (the last one is a fresh slot).
                holes = forward_holes(self.attn_backend, len(req_pool_indices))
                if holes is None or holes.total or CHECKS:
                    built = resident_indices(self.req_to_token, req_pool_indices, paged_kernel_lens,
                                             keep_last=not use_ragged)
                    if holes is None:
                        total = int(built.lens.sum())  # outside the scheduler's forwards: read it back
                    else:  # every hole is in a prefix, which the paged part holds
                        total = paged_kernel_lens_sum - holes.total
                        if CHECKS:
                            check_lens(built.lens.sum(), torch.tensor(total), "extend plan")
                    if total != paged_kernel_lens_sum:  # holes: attend the compacted resident slots
                        paged_kernel_lens, paged_kernel_lens_sum = built.lens, total
                        kwargs["custom_kv_indices"] = built.kv_indices
            return super().call_begin_forward(
                wrapper_ragged, wrapper_paged, req_pool_indices, paged_kernel_lens, paged_kernel_lens_sum, seq_lens,
                prefix_lens, kv_start_idx, kv_indptr, qo_indptr, use_ragged, spec_info, *args, **kwargs,
            )

    class ZoomRFlashInferAttnBackend(FlashInferAttnBackend):
        """``FlashInferAttnBackend`` whose decode attends each request's resident set only (see the module contract)."""

        def __init__(self, model_runner, *args, **kwargs):
            if not args and "init_new_workspace" not in kwargs:  # what the stock registry factory passes
                kwargs["init_new_workspace"] = getattr(model_runner, "init_new_workspace", False)
            super().__init__(model_runner, *args, **kwargs)
            self.indices_updater_decode = ZoomRFlashInferIndicesUpdaterDecode(model_runner, self)
            if hasattr(self, "indices_updater_prefill"):
                self.indices_updater_prefill = ZoomRFlashInferIndicesUpdaterPrefill(model_runner, self)
            self.query_buffers: dict[int, torch.Tensor] = {}
            self.hole_source = None  # the ZoomRManager, set by zoomr_sgl.hooks once the scheduler is built
            from zoomr_sgl.config import ZoomRConfig

            config = ZoomRConfig.from_env()
            if config is not None:  # before graph capture: the tap must exist when the decode graphs are recorded
                updater = self.indices_updater_decode
                max_bs = self.kv_indptr[0].shape[0] - 1
                for layer_id in config.scoring_layer_ids(model_runner.model_config.num_hidden_layers):
                    self.query_buffers[layer_id] = torch.zeros(
                        (max_bs, updater.num_qo_heads, updater.head_dim), dtype=model_runner.dtype,
                        device=model_runner.device,
                    )

        def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True):
            buf = self.query_buffers.get(layer.layer_id)
            if buf is not None:  # a device copy: recorded into the decode CUDA graph, replayed every step
                query = q.reshape(-1, layer.tp_q_head_num, layer.head_dim)  # post-RoPE queries
                buf[: query.shape[0], : query.shape[1]].copy_(query)
            return super().forward_decode(q, k, v, layer, forward_batch, save_kv_cache)


# Stock backend name -> ZoomR subclass, re-registered under the same name by zoomr_sgl.hooks.
RESIDENT_BACKENDS = {"torch_native": ZoomRTorchNativeAttnBackend}
if FlashInferAttnBackend is not None:
    RESIDENT_BACKENDS["flashinfer"] = ZoomRFlashInferAttnBackend
