"""The CPU stand-in for sgl_kernel against the semantics SGLang expects (../shared/design/PLATFORM.md)."""

import pytest
import torch

sgl_kernel = pytest.importorskip("sgl_kernel")
if not getattr(sgl_kernel, "__version__", "").endswith("+zoomr.cpu"):
    pytest.skip("the real sgl_kernel is installed here, not the CPU stand-in", allow_module_level=True)


def reference_assign(req_pool_indices, req_to_token, start, end, out_cache_loc):
    out = req_to_token.clone()
    pt = 0
    for r, s, e in zip(req_pool_indices.tolist(), start.tolist(), end.tolist()):
        for j in range(s, e):
            out[r, j] = out_cache_loc[pt]
            pt += 1
    return out


@pytest.mark.parametrize("seed", range(5))
def test_assign_req_to_token_pool_matches_reference(seed):
    g = torch.Generator().manual_seed(seed)
    rows, width = 8, 64
    req_to_token = torch.randint(0, 1000, (rows, width), generator=g, dtype=torch.int32)
    batch = int(torch.randint(1, rows + 1, (1,), generator=g))
    req_pool_indices = torch.randperm(rows, generator=g)[:batch]
    start = torch.randint(0, width // 2, (batch,), generator=g)
    end = start + torch.randint(0, width // 2, (batch,), generator=g)
    out_cache_loc = torch.randint(0, 10_000, (int((end - start).sum()),), generator=g)
    expected = reference_assign(req_pool_indices, req_to_token, start, end, out_cache_loc)
    sgl_kernel.assign_req_to_token_pool_cpu(req_pool_indices, req_to_token, start, end, out_cache_loc, width)
    assert torch.equal(req_to_token, expected)


def test_assign_rejects_out_of_range():
    req_to_token = torch.zeros(2, 4, dtype=torch.int32)
    with pytest.raises(ValueError):
        sgl_kernel.assign_req_to_token_pool_cpu(
            torch.tensor([0]), req_to_token, torch.tensor([2]), torch.tensor([6]), torch.arange(4), 4
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_copy_all_layer_kv_cache_copies_rows_in_every_buffer(dtype):
    g = torch.Generator().manual_seed(0)
    buffers = [torch.randn(32, 2, 8, generator=g).to(dtype) for _ in range(3)]
    before = [b.clone() for b in buffers]
    src = torch.tensor([3, 7, 11, 5])
    tgt = torch.tensor([20, 21, 5, 30])  # 5 is both a target and a source: sources are read first
    data_ptrs = torch.tensor([b.data_ptr() for b in buffers], dtype=torch.uint64)
    strides = torch.tensor([b[0].numel() * b.element_size() for b in buffers], dtype=torch.int64)
    sgl_kernel.copy_all_layer_kv_cache_cpu(data_ptrs, strides, tgt, src)
    for b, old in zip(buffers, before):
        expected = old.clone()
        expected[tgt] = old[src]
        assert torch.equal(b, expected)


def test_speculative_names_exist_and_raise_clearly():
    for name in sgl_kernel.SPECULATIVE_ONLY:
        fn = getattr(sgl_kernel, name)
        with pytest.raises(NotImplementedError, match="speculative"):
            fn()


def test_other_names_stay_absent_so_sglang_probes_fall_back():
    for name in ("merge_state_v2", "apply_token_bitmask_inplace_cuda", "silu_and_mul", "fast_topk_v2"):
        with pytest.raises(ImportError):
            exec(f"from sgl_kernel import {name}")
