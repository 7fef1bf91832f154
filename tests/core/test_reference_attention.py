"""Reference decode attention: per-request resident subsets equal dense attention over that subset, GQA, dtypes,
scale, and the empty set refused."""

import math

import pytest
import torch

from zoomr_sgl.reference_attention import dense_decode_attention, reference_decode_attention


def explicit(q, k, v, scale):
    """Softmax attention written out per head with no batching tricks."""
    Hq, Hkv = q.shape[0], k.shape[1]
    out = torch.empty(Hq, v.shape[-1])
    for h in range(Hq):
        kh, vh = k[:, h // (Hq // Hkv)].double(), v[:, h // (Hq // Hkv)].double()
        w = torch.softmax(kh @ q[h].double() * scale, dim=0)
        out[h] = (w[:, None] * vh).sum(0).float()
    return out


@pytest.mark.parametrize("hq, hkv, dtype", [(4, 4, torch.float32), (8, 2, torch.bfloat16), (6, 1, torch.float16)])
def test_each_request_attends_only_its_resident_slots(hq, hkv, dtype):
    g = torch.Generator().manual_seed(7)
    S, D = 50, 16
    k_pool, v_pool = torch.randn(S, hkv, D, generator=g).to(dtype), torch.randn(S, hkv, D, generator=g).to(dtype)
    q = torch.randn(3, hq, D, generator=g).to(dtype)
    resident = [torch.tensor([4, 9, 1, 33]), torch.arange(S), torch.tensor([17])]
    out = reference_decode_attention(q, k_pool, v_pool, resident)
    assert out.dtype == torch.float32 and out.shape == (3, hq, D)
    for b, slots in enumerate(resident):
        want = explicit(q[b].float(), k_pool[slots].float(), v_pool[slots].float(), 1 / math.sqrt(D))
        torch.testing.assert_close(out[b], want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out[b], dense_decode_attention(q[b], k_pool[slots], v_pool[slots]),
                                   rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[2], v_pool[17].float().repeat_interleave(hq // hkv, dim=0))  # one token: its V


def test_scale_is_used_and_empty_sets_are_refused():
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(1, 2, 4, generator=g), torch.randn(5, 2, 4, generator=g), torch.randn(5, 2, 4, generator=g)
    out = reference_decode_attention(q, k, v, [torch.arange(5)], scale=0.3)
    torch.testing.assert_close(out[0], explicit(q[0], k, v, 0.3), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[0], dense_decode_attention(q[0], k, v, scale=0.3), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="attends nothing"):
        reference_decode_attention(q, k, v, [torch.arange(0)])
    with pytest.raises(ValueError):
        reference_decode_attention(q, k, v, [torch.arange(5), torch.arange(5)])
