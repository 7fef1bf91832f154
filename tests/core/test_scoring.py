"""Thought scoring against explicit loops, GQA head mapping, padded batch == one by one, deterministic top-k."""

import math

import torch
from hypothesis import given, settings, strategies as st

from zoomr_sgl.scoring import pad_summary_keys, thought_score, thought_scores, top_within_budget


def loop_score(q, keys):
    L, Hq, D = q.shape
    group = Hq // keys.shape[2]
    total = 0.0
    for l in range(L):
        for h in range(Hq):
            total += max(float(q[l, h] @ keys[l, n, h // group]) for n in range(keys.shape[1])) / math.sqrt(D)
    return total / (L * Hq)


def test_score_matches_explicit_loops():
    g = torch.Generator().manual_seed(1)
    q, keys = torch.randn(3, 8, 16, generator=g), torch.randn(3, 5, 2, 16, generator=g)
    assert math.isclose(float(thought_score(q, keys)), loop_score(q, keys), rel_tol=1e-5, abs_tol=1e-6)


def test_gqa_query_head_reads_kv_head_h_div_group():
    q = torch.zeros(1, 4, 2)
    q[0, 2:, 0] = 1.0  # only heads 2 and 3 (kv head 1) look at channel 0
    keys = torch.zeros(1, 1, 2, 2)
    keys[0, 0, 1, 0] = 4.0
    assert math.isclose(float(thought_score(q, keys)), 2 * 4.0 / math.sqrt(2) / 4, rel_tol=1e-6)
    keys = keys.flip(2)  # the same key under kv head 0 is read by heads 0 and 1, whose queries are zero
    assert float(thought_score(q, keys)) == 0.0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=6), st.sampled_from([(4, 4), (4, 2), (8, 1)]),
       st.integers(0, 2**16))
def test_padded_batch_equals_one_by_one(lengths, heads, seed):
    g = torch.Generator().manual_seed(seed)
    Hq, Hkv = heads
    q = torch.randn(2, Hq, 8, generator=g)
    each = [torch.randn(2, n, Hkv, 8, generator=g).to(torch.bfloat16) for n in lengths]
    padded = torch.full((len(lengths), 2, max(lengths), Hkv, 8), 1e4, dtype=torch.bfloat16)  # padding must not win
    for t, k in enumerate(each):
        padded[t, :, :k.shape[1]] = k
    batch = thought_scores(q, padded, torch.tensor(lengths))
    assert batch.dtype == torch.float32
    torch.testing.assert_close(batch, torch.stack([thought_score(q, k) for k in each]), rtol=1e-5, atol=1e-5)


def test_top_within_budget_ties_budget_and_topk():
    scores = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0])
    sizes = torch.tensor([1, 5, 2, 1, 2])
    assert top_within_budget(scores, sizes, topk=10, budget=100) == (1, 2, 4, 3, 0)  # ties to the lower index
    assert top_within_budget(scores, sizes, topk=10, budget=4) == (2, 4)  # 1 skipped: too big; then full
    assert top_within_budget(scores, sizes, topk=10, budget=5) == (1,)
    assert top_within_budget(scores, sizes, topk=10, budget=6) == (1, 3)  # 2 and 4 no longer fit, 3 does
    assert top_within_budget(scores, sizes, topk=2, budget=100) == (1, 2)
    assert top_within_budget(scores, sizes, topk=3, budget=0) == ()


def test_pad_summary_keys_splits_runs_and_pads_with_zeros():
    g = torch.Generator().manual_seed(4)
    keys = torch.randn(2, 9, 3, 8, generator=g)  # [L, total, Hkv, D]: runs of 4, 2, 3 tokens
    padded = pad_summary_keys(keys, torch.tensor([4, 2, 3]))
    assert padded.shape == (3, 2, 4, 3, 8)
    assert torch.equal(padded[0], keys[:, 0:4]) and torch.equal(padded[1, :, :2], keys[:, 4:6])
    assert torch.equal(padded[2, :, :3], keys[:, 6:9])
    assert not padded[1, :, 2:].any() and not padded[2, :, 3:].any()


def test_scoring_tensors_follow_the_keys_device():
    """On a GPU the keys and the query live on the device; every tensor scoring makes must live there too. The meta
    device stands in for it on a CPU host: a stray CPU tensor fails just as it does on CUDA (seen on the H100:
    'Expected all tensors to be on the same device' from the zoom step)."""
    keys = torch.empty(2, 9, 3, 8, device="meta")
    query = torch.empty(2, 6, 8, device="meta")
    lengths = torch.tensor([4, 2, 3])  # lengths stay on the host: the table builds them there
    scores = thought_scores(query, pad_summary_keys(keys, lengths), lengths)
    assert scores.device.type == "meta" and scores.shape == (3,)
