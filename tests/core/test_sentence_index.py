"""SentenceKV's index (zoomr_sgl.sentence_index): mean keys per closed sentence and layer, read through the request's
pool slots; the query's consensus score over heads and layers; sentences picked best first within a token budget."""

from __future__ import annotations

import math

import pytest
import torch

from zoomr_sgl import sentence_index
from zoomr_sgl.sentences import Sentence, SentenceEnds, sentences

L, HQ, HKV, D, POOL = 3, 4, 2, 8, 200


def world(seed=0, n=60):
    g = torch.Generator().manual_seed(seed)
    k_buffers = [torch.randn(POOL, HKV, D, generator=g) for _ in range(L)]
    slots = torch.randperm(POOL, generator=g)[:n]  # the request's slots: scattered over the pool
    ends = SentenceEnds([i % 7 == 6 for i in range(100)])  # ids 6, 13, 20, ... end a sentence
    ids = torch.randint(0, 100, (n,), generator=g).tolist()
    return k_buffers, slots, sentences(ids, ends, min_len=3)


def test_keys_are_each_closed_sentences_mean_key_per_layer_and_the_open_tail_is_left_out():
    k_buffers, slots, spans = world()
    index = sentence_index.build(k_buffers, slots, spans)
    closed = [s for s in spans if s.closed]
    assert index.spans == tuple(closed) and len(closed) >= 3
    assert index.keys.shape == (len(closed), L, HKV, D) and index.keys.dtype == torch.float32
    for i, s in enumerate(closed):
        for layer, k in enumerate(k_buffers):
            expected = torch.stack([k[int(slots[p])] for p in range(s.start, s.end)]).mean(0)
            assert torch.allclose(index.keys[i, layer], expected, atol=1e-6)


def test_scores_are_the_mean_over_layers_and_heads_of_the_scaled_dot_with_the_mean_key():
    k_buffers, slots, spans = world(seed=1)
    index = sentence_index.build(k_buffers, slots, spans)
    query = torch.randn(L, HQ, D, generator=torch.Generator().manual_seed(2))
    expected = torch.tensor([
        sum(float(query[l, h] @ index.keys[s, l, h // (HQ // HKV)]) for l in range(L) for h in range(HQ))
        / (L * HQ * math.sqrt(D)) for s in range(len(index.spans))])
    assert torch.allclose(index.scores(query), expected, atol=1e-5)


def test_the_sentence_the_query_points_at_comes_first_and_the_budget_is_filled_in_rank_order():
    k_buffers, slots, spans = world(seed=3)
    index = sentence_index.build(k_buffers, slots, spans)
    target = len(index.spans) // 2
    query = index.keys[target].repeat_interleave(HQ // HKV, dim=1) * 10  # [L, HQ, D], along the target's mean key
    scores = index.scores(query)
    picked = index.pick(scores, budget=10_000)
    assert picked[0] == target and sorted(picked) == list(range(len(index.spans)))  # everything fits
    assert all(scores[a] >= scores[b] for a, b in zip(picked, picked[1:]))
    tight = index.pick(scores, budget=index.spans[target].tokens)
    assert tight[0] == target and sum(index.spans[i].tokens for i in tight) <= index.spans[target].tokens
    assert index.pick(scores, budget=0) == ()


def test_no_closed_sentence_gives_an_empty_index():
    k_buffers, slots, _ = world()
    index = sentence_index.build(k_buffers, slots, [Sentence(0, 5, False)])
    assert index.spans == () and index.keys.shape == (0, L, HKV, D)
    empty = index.scores(torch.randn(L, HQ, D))
    assert empty.shape == (0,) and index.pick(empty, 10) == ()


def test_bad_arguments_are_value_errors():
    k_buffers, slots, spans = world()
    with pytest.raises(ValueError, match="at least one scoring layer"):
        sentence_index.build([], slots, spans)
    with pytest.raises(ValueError, match="the request has 10 slots"):
        sentence_index.build(k_buffers, slots[:10], [Sentence(0, 12, True)])
    index = sentence_index.build(k_buffers, slots, spans)
    with pytest.raises(ValueError, match="budget must be >= 0"):
        index.pick(index.scores(torch.randn(L, HQ, D)), -1)
    with pytest.raises(ValueError, match="scores for"):
        index.pick(torch.zeros(len(index.spans) + 1), 10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the index's kernel path)")
def test_the_index_built_on_cuda_by_the_kernel_equals_the_reference_built_on_the_cpu():
    k_buffers, slots, spans = world(seed=4)
    cpu = sentence_index.build(k_buffers, slots, spans)
    gpu = sentence_index.build([k.cuda() for k in k_buffers], slots.cuda(), spans)
    assert gpu.spans == cpu.spans and gpu.keys.is_cuda
    torch.testing.assert_close(gpu.keys.cpu(), cpu.keys, atol=1e-5, rtol=1e-5)
    query = torch.randn(L, HQ, D, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(gpu.scores(query.cuda()).cpu(), cpu.scores(query), atol=1e-5, rtol=1e-5)
    assert gpu.pick(gpu.scores(query.cuda()).cpu(), 40) == cpu.pick(cpu.scores(query), 40)
