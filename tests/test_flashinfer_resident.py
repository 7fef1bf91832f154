"""The FlashInfer resident-set backend: importable everywhere, registered only where flashinfer is, and on a GPU
its decode plan (eager and CUDA-graph wrappers) attends exactly the resident slots of holed rows."""

from __future__ import annotations

import importlib.util
from functools import partial
from types import SimpleNamespace

import pytest
import torch

from zoomr_sgl import resident_attention as ra
from zoomr_sgl.manager import ForwardHoles
from zoomr_sgl.reference_attention import reference_decode_attention

HAS_FLASHINFER = importlib.util.find_spec("flashinfer") is not None and ra.FlashInferAttnBackend is not None
needs_flashinfer = pytest.mark.skipif(not HAS_FLASHINFER, reason="flashinfer is not installed (CUDA hosts only)")


def test_registered_only_with_flashinfer():
    assert ("flashinfer" in ra.RESIDENT_BACKENDS) == HAS_FLASHINFER
    assert ra.RESIDENT_BACKENDS["torch_native"] is ra.ZoomRTorchNativeAttnBackend


@pytest.mark.gpu
@needs_flashinfer
def test_class_hierarchy():
    from sglang.srt.layers.attention.flashinfer_backend import FlashInferAttnBackend, FlashInferIndicesUpdaterDecode

    assert issubclass(ra.ZoomRFlashInferAttnBackend, FlashInferAttnBackend)
    assert issubclass(ra.ZoomRFlashInferIndicesUpdaterDecode, FlashInferIndicesUpdaterDecode)
    assert ra.RESIDENT_BACKENDS["flashinfer"] is ra.ZoomRFlashInferAttnBackend
    assert "call_begin_forward" in vars(ra.ZoomRFlashInferIndicesUpdaterDecode)


class _Holes:
    """A hole source as the manager is to the backend: the host hole counts of the forward being planned, or None
    (a plan outside the scheduler's forwards, which reads the resident lengths back)."""

    def __init__(self):
        self.holes = None

    def forward_holes(self):
        return self.holes


def _updater(req_to_token, max_bs, hq, hkv, d):
    """The ZoomR decode updater without a model runner: the attributes ``call_begin_forward`` reads."""
    up = object.__new__(ra.ZoomRFlashInferIndicesUpdaterDecode)
    up.attn_backend = SimpleNamespace(hole_source=_Holes())
    up.num_qo_heads, up.num_kv_heads, up.head_dim = hq, hkv, d
    up.data_type = up.q_data_type = torch.bfloat16
    up.req_to_token = req_to_token
    up.kv_indptr = [torch.zeros(max_bs + 1, dtype=torch.int32, device="cuda")]
    up.kv_last_page_len = torch.ones(max_bs, dtype=torch.int32, device="cuda")
    up._swa_kv_pool = None
    return up


@pytest.mark.gpu
@needs_flashinfer
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_decode_over_holes_matches_reference():
    from flashinfer import BatchDecodeWithPagedKVCacheWrapper, fast_decode_plan

    gen = torch.Generator().manual_seed(0)
    hq, hkv, d, pool, width, bs = 32, 8, 128, 40000, 6000, 4
    k = torch.randn(pool, hkv, d, generator=gen).to("cuda", torch.bfloat16)
    v = torch.randn(pool, hkv, d, generator=gen).to("cuda", torch.bfloat16)
    rtt = torch.zeros(bs + 2, width, dtype=torch.int32, device="cuda")
    workspace = torch.empty(128 << 20, dtype=torch.uint8, device="cuda")

    def holed_batch():
        lens = torch.randint(100, width, (bs,), generator=gen)
        slots = torch.randperm(pool - 1, generator=gen)[: int(lens.sum())] + 1
        start, resident = 0, []
        for i, n in enumerate(lens.tolist()):
            row = slots[start : start + n].clone()
            start += n
            row[:-1][torch.rand(n - 1, generator=gen) < 0.85] = 0  # holes; the decoded token stays
            rtt[i + 1].zero_()
            rtt[i + 1, :n] = row.to("cuda", torch.int32)
            resident.append(row[row != 0].long())
        rows = torch.arange(1, bs + 1, device="cuda")
        return rows, lens.to("cuda", torch.int32), lens.to(torch.int32), resident

    # eager wrapper, then a CUDA-graph wrapper re-planned with fast_decode_plan after capture (as SGLang does)
    up = _updater(rtt, bs, hq, hkv, d)
    eager = BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD", use_tensor_cores=True)
    graph_indices = torch.zeros(bs * width, dtype=torch.int32, device="cuda")
    graphed = BatchDecodeWithPagedKVCacheWrapper(
        workspace, "NHD", use_cuda_graph=True, use_tensor_cores=True, paged_kv_indptr_buffer=up.kv_indptr[0],
        paged_kv_indices_buffer=graph_indices, paged_kv_last_page_len_buffer=up.kv_last_page_len[:bs],
    )
    q = torch.empty(bs, hq, d, dtype=torch.bfloat16, device="cuda")
    for step in range(3):
        rows, lens, lens_cpu, resident = holed_batch()
        q.copy_(torch.randn(bs, hq, d, generator=gen).to("cuda", torch.bfloat16))
        ref = reference_decode_attention(q.cpu(), k.cpu(), v.cpu(), resident)
        # steps 0 and 2 plan from the host hole counts (the scheduler's forwards), step 1 reads the lengths back
        per_row = lens_cpu - torch.tensor([len(r) for r in resident], dtype=torch.int32)
        up.attn_backend.hole_source.holes = None if step == 1 else ForwardHoles(per_row, int(per_row.sum()))
        for wrapper in (eager, graphed):
            up.call_begin_forward(wrapper, rows, lens, int(lens_cpu.sum()), up.kv_indptr[0], None, None, lens_cpu)
            assert torch.equal(up.resident_lens_cpu, torch.tensor([len(r) for r in resident], dtype=torch.int32))
            if wrapper is graphed and step == 0:
                wrapper.begin_forward = partial(fast_decode_plan, wrapper)
                out_buf = wrapper.forward(q, (k, v))  # warm up outside capture
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out_buf = wrapper.forward(q, (k, v))
            if wrapper is graphed:
                graph.replay()
                out = out_buf.clone()
            else:
                out = wrapper.forward(q, (k, v))
            rel = ((out.float().cpu() - ref).norm() / ref.norm()).item()
            assert rel < 1e-2, f"step {step} {'graph' if wrapper is graphed else 'eager'}: relative error {rel:.2e}"
