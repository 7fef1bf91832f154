"""The Triton kernels against their pure-torch references on fresh random inputs: resident-set index building
(exact), thought scoring (1e-3 relative; top-k sets equal where scores are separated), KV rows (exact) and
sentence mean keys (1e-5, float32 / float16 / bfloat16 keys).

On a CPU-only host the kernels run through Triton's interpreter on CPU tensors in float32. Triton decides at import
time whether its own ``@jit`` helpers (``tl.cumsum`` and friends) are interpreted, and the rest of the suite imports
triton first, so the interpreter variants run in a child pytest process that has ``TRITON_INTERPRET=1`` from its
start (``test_kernels_under_the_interpreter``); in the parent they are skipped with that reason. On a CUDA host the
kernels are compiled and run on the GPU with bf16 inputs. Outputs are poisoned before each run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kernels.resident_indices as ri
import kernels.thought_scoring as ts
from zoomr_sgl.resident_attention import resident_slot_table
from zoomr_sgl.scoring import top_within_budget

HAS_CUDA = torch.cuda.is_available()
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

DEVICES = [
    pytest.param("cpu", id="cpu-interpreter", marks=[
        pytest.mark.skipif(HAS_CUDA, reason="CUDA present: the kernels are compiled for the GPU here"),
        pytest.mark.skipif(not HAS_CUDA and not INTERPRETED,
                           reason="runs in a child process with TRITON_INTERPRET=1 (test_kernels_under_the_interpreter)"),
    ]),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]),
]


@pytest.mark.skipif(HAS_CUDA or INTERPRETED, reason="the parent process on a CPU host starts the interpreter run")
def test_kernels_under_the_interpreter():
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)), "-k", "cpu-interpreter"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    passed = re.search(r"(\d+) passed", r.stdout)
    assert passed and int(passed.group(1)) >= 10, r.stdout[-2000:]


SENTINEL = -7


# ------------------------------------------------------------------ resident indices
def random_batch(gen: torch.Generator, bs: int, width: int, hole_p: float, device: str):
    """A req_to_token pool with stale data everywhere, ``bs`` requests on distinct rows (never row 0) with holes,
    plus a CUDA-graph padding row (req_pool_idx 0, seq_len 1) and a zero-length row."""
    pool_rows = bs + 4
    rtt = torch.randint(1, 1 << 20, (pool_rows, width), generator=gen, dtype=torch.int32)
    rtt[0] = 0  # SGLang's padding row
    rows = (torch.randperm(pool_rows - 1, generator=gen)[:bs] + 1).tolist()
    lens = torch.randint(1, width + 1, (bs,), generator=gen).tolist()
    for row, n in zip(rows, lens):
        holes = torch.rand(n, generator=gen) < hole_p
        holes[n - 1] = False  # the token being decoded
        rtt[row, :n][holes] = 0
    rows += [0, rows[0]]
    lens += [1, 0]
    as_t = lambda xs, dt: torch.tensor(xs, dtype=dt, device=device)  # noqa: E731
    return rtt.to(device), as_t(rows, torch.int64), as_t(lens, torch.int32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("keep_last", [True, False], ids=["keep_last", "prefix"])
@pytest.mark.parametrize("seed,bs,width,hole_p", [(0, 3, 200, 0.5), (1, 5, 97, 0.0), (2, 2, 300, 0.97), (3, 4, 64, 1.0)])
def test_resident_indices_match_reference(device, keep_last, seed, bs, width, hole_p):
    gen = torch.Generator().manual_seed(seed)
    rtt, rows, lens = random_batch(gen, bs, width, hole_p, device)
    if not keep_last:  # an extend's prefix may end in a hole
        rtt[rows[0], lens[0] - 1] = 0
    ref = ri.resident_indices_reference(rtt.cpu(), rows.cpu(), lens.cpu(), keep_last=keep_last)
    n = rows.shape[0]
    total = int(ref.kv_indptr[-1])
    for chunk, block in ((64, 16), (128, 128)) if device == "cpu" else ((64, 16), (ri.CHUNK, ri.BLOCK)):
        indptr = torch.full((n + 3,), SENTINEL, dtype=torch.int32, device=device)
        indices = torch.full((total + 5,), SENTINEL, dtype=torch.int32, device=device)
        out = ri.resident_indices(rtt, rows, lens, kv_indptr_out=indptr, kv_indices_out=indices, chunk=chunk,
                                  block=block, max_len=width, keep_last=keep_last)
        assert out.kv_indptr.data_ptr() == indptr.data_ptr() and out.kv_indices.data_ptr() == indices.data_ptr()
        assert torch.equal(indptr[: n + 1].cpu(), ref.kv_indptr)
        assert torch.equal(indices[:total].cpu(), ref.kv_indices)  # every element written: the reference has no -7
        assert (indptr[n + 1 :] == SENTINEL).all() and (indices[total:] == SENTINEL).all()  # nothing past the end
        assert torch.equal(out.lens.cpu(), ref.lens)
        lengths = ri.resident_lengths(rtt, rows, lens, chunk=chunk, block=block, keep_last=keep_last)
        assert torch.equal(lengths.cpu(), ref.lens)
    if keep_last:
        assert int(ref.lens[-2]) == 1 and int(ref.kv_indices[ref.kv_indptr[-3]]) == 0  # padding row: slot 0
    else:
        assert int(ref.lens[-2]) == 0 and (ref.kv_indices != 0).all()  # nothing but real slots
    assert int(ref.lens[-1]) == 0


@pytest.mark.parametrize("device", DEVICES)
def test_resident_indices_defaults_and_agreement_with_cpu_table(device):
    """Allocated outputs, default grid; the same slots the CPU backend's table attends (rows end in a real token)."""
    gen = torch.Generator().manual_seed(11)
    rtt, rows, lens = random_batch(gen, 4, 150, 0.6, device)
    rows, lens = rows[:4], lens[:4]  # real requests only
    out = ri.resident_indices(rtt, rows, lens)
    table, tlens = resident_slot_table(rtt.cpu(), rows.cpu(), lens.cpu())
    assert torch.equal(out.lens.cpu(), tlens)
    for i in range(4):
        a, b = int(out.kv_indptr[i]), int(out.kv_indptr[i + 1])
        assert torch.equal(out.kv_indices[a:b].cpu(), table[i, : tlens[i]])


# ------------------------------------------------------------------ thought scoring
def random_scoring_inputs(gen, B, L, Hq, Hkv, D, max_summary, device, dtype):
    pool = 1 + 2 * B * 6 * max_summary
    queries = torch.randn(B, L, Hq, D, generator=gen).to(device, dtype)
    k_all = torch.randn(L + 1, pool, Hkv, D, generator=gen).to(device, dtype)
    k_buffers = [k_all[i] for i in torch.randperm(L + 1, generator=gen)[:L].tolist()]  # any layer order in memory
    per_req = torch.randint(1, 7, (B,), generator=gen)
    thought_req = torch.repeat_interleave(torch.arange(B), per_req)
    thought_req = thought_req[torch.randperm(len(thought_req), generator=gen)]  # thoughts of requests interleaved
    sizes = torch.randint(1, max_summary + 1, (len(thought_req),), generator=gen)
    indptr = torch.zeros(len(sizes) + 1, dtype=torch.int32)
    indptr[1:] = sizes.cumsum(0)
    slots = torch.randperm(pool - 1, generator=gen)[: int(sizes.sum())] + 1
    put = lambda x: x.to(device)  # noqa: E731
    return queries, k_buffers, put(thought_req), put(indptr), put(slots.to(torch.int32))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed,B,L,Hq,Hkv,D,max_summary", [
    (0, 2, 2, 4, 1, 16, 9),
    (1, 3, 1, 8, 2, 32, 70),  # summaries longer than one block of 64 tokens
    (2, 2, 3, 4, 4, 16, 40),
])
def test_thought_scores_match_reference(device, seed, B, L, Hq, Hkv, D, max_summary):
    gen = torch.Generator().manual_seed(seed)
    if device == "cuda":
        Hq, Hkv, D = Hq * 4, Hkv * 2 if Hkv < 4 else Hkv, 128  # GPU: heads like Qwen3-8B in scale, bf16
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    inputs = random_scoring_inputs(gen, B, L, Hq, Hkv, D, max_summary, device, dtype)
    out = torch.full((inputs[2].shape[0],), float("nan"), dtype=torch.float32, device=device)
    got = ts.thought_scores_triton(*inputs, out=out)
    ref = ts.thought_scores_reference(*inputs)
    assert got.data_ptr() == out.data_ptr() and torch.isfinite(out).all()  # every element written
    rel = ((got.cpu() - ref).abs() / ref.abs().clamp_min(1e-6)).max().item()
    assert rel < 1e-3, f"relative error {rel:.2e}"

    # top-k within a budget, per request, where the reference ranks are separated
    thought_req, sizes = inputs[2].cpu(), torch.diff(inputs[3].cpu())
    checked = 0
    for b in range(B):
        ts_b = (thought_req == b).nonzero().flatten()
        r = ref[ts_b].sort(descending=True).values
        if len(r) > 1 and (r[:-1] - r[1:]).min() < 2e-3 * r.abs().max():
            continue  # within twice the 1e-3 tolerance two scores may swap
        checked += 1
        budget = int(sizes[ts_b].sum()) // 2 + 1
        assert top_within_budget(got.cpu()[ts_b], sizes[ts_b], 3, budget) == top_within_budget(
            ref[ts_b], sizes[ts_b], 3, budget)
    assert checked, "no request had separated scores: change the seed"


@pytest.mark.parametrize("device", DEVICES)
def test_thought_scores_empty_batch(device):
    gen = torch.Generator().manual_seed(5)
    q, kb, _, _, slots = random_scoring_inputs(gen, 1, 1, 4, 1, 16, 4, device, torch.float32)
    empty = torch.zeros(0, dtype=torch.int32, device=device)
    assert ts.thought_scores_triton(q, kb, empty, torch.zeros(1, dtype=torch.int32, device=device), slots).numel() == 0


# ------------------------------------------------------------------ KV rows (host copies' device side)
@pytest.mark.parametrize("device", DEVICES)
def test_kv_rows_gather_and_scatter_match_the_reference(device):
    import kernels.kv_rows as kr

    gen = torch.Generator().manual_seed(11)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    layers, pool, heads, dim = 3, 64, 2, 48  # 96 elements a row: not a power of two
    buffers = [torch.randn(pool, heads, dim, generator=gen).to(device, dtype) for _ in range(2 * layers)]
    slots = (torch.randperm(pool - 1, generator=gen)[:13] + 1).to(device)
    out = torch.full((13, 2 * layers, heads, dim), float(SENTINEL), dtype=dtype, device=device)
    got = kr.gather_rows(buffers, slots, out=out)
    assert got.data_ptr() == out.data_ptr()
    assert torch.equal(got, kr.gather_rows_reference(buffers, slots))
    staging = torch.randn(13, 2 * layers, heads, dim, generator=gen).to(device, dtype)
    expect = [b.clone() for b in buffers]
    kr.scatter_rows_reference(expect, slots, staging)
    kr.scatter_rows(buffers, slots, staging)
    assert all(torch.equal(b, e) for b, e in zip(buffers, expect))  # written rows and untouched rows alike


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_host_store_round_trip_through_staged_copies():
    from zoomr_sgl.host_store import HostDetailStore

    layers, pool, heads, dim = 4, 256, 8, 128
    k = [torch.randn(pool, heads, dim, device="cuda").to(torch.bfloat16) for _ in range(layers)]
    v = [torch.randn(pool, heads, dim, device="cuda").to(torch.bfloat16) for _ in range(layers)]
    store = HostDetailStore(layers, 96, heads, dim, torch.bfloat16, device="cuda")
    assert store.kv.is_pinned()  # page-locked at its exact size, so the copies below are asynchronous
    filler = store.allocate(40, owner="gap")
    first = store.allocate(30, owner="a")
    store.free(filler)
    block = store.allocate(60, owner="b")  # two runs: 40 rows freed above, then 20 after the 30 taken
    assert len(block.runs) == 2
    src = torch.randperm(pool - 1, device="cuda")[:60] + 1
    store.copy_from_device(block, k, v, src).wait()
    for layer in range(layers):
        assert torch.equal(store.k[layer, 0:40], k[layer][src[:40]].cpu())
        assert torch.equal(store.v[layer, 70:90], v[layer][src[40:]].cpu())
    dst = torch.randperm(pool - 1, device="cuda")[:60] + 1
    k2 = [torch.zeros_like(b) for b in k]
    v2 = [torch.zeros_like(b) for b in v]
    store.copy_to_device(block, k2, v2, dst).wait()
    for layer in range(layers):
        assert torch.equal(k2[layer][dst], k[layer][src]) and torch.equal(v2[layer][dst], v[layer][src])
    store.free(first)


# ------------------------------------------------------------------ sentence keys (SentenceKV)
KEY_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", KEY_DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("seed,heads,dim,sentences", [(0, 2, 16, 12), (1, 8, 128, 9), (2, 3, 48, 20)])
def test_sentence_mean_keys_match_reference(device, dtype, seed, heads, dim, sentences):
    import kernels.sentence_keys as sk

    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 301, (sentences,), generator=gen)
    lengths[0] = 1  # a one-token sentence
    prompt = int(lengths.sum())
    pool = 2 * prompt + 1
    # a layer's keys with padded rows (head stride D + 8), the prompt's slots a shuffled subset of the pool
    k_cache = torch.randn(pool, heads, dim + 8, generator=gen).to(device, dtype)[..., :dim]
    slots = (torch.randperm(pool - 1, generator=gen)[:prompt] + 1).to(device, torch.int32)
    ends = lengths.cumsum(0)
    starts = ends - lengths
    order = torch.randperm(sentences, generator=gen)  # sentences in any order, plus one over the whole prompt
    starts = torch.cat([starts[order], torch.zeros(1, dtype=torch.int64)]).to(device)
    ends = torch.cat([ends[order], torch.tensor([prompt])]).to(device)
    got = sk.sentence_mean_keys(k_cache, slots, starts, ends)
    ref = sk.sentence_mean_keys_reference(k_cache, slots, starts.to(torch.int32), ends.to(torch.int32))
    assert got.dtype == torch.float32 and got.shape == (sentences + 1, heads, dim) and got.device == k_cache.device
    torch.testing.assert_close(got.cpu(), ref.cpu(), rtol=1e-5, atol=1e-6)
    one = order.tolist().index(0)  # the one-token sentence: its key exactly
    assert torch.equal(got[one].cpu(), k_cache[slots[0].long()].float().cpu())


@pytest.mark.parametrize("device", DEVICES)
def test_sentence_mean_keys_small_case_by_hand(device):
    import kernels.sentence_keys as sk

    k_cache = torch.arange(6 * 2 * 2, dtype=torch.float32).view(6, 2, 2).to(device)  # k[slot, h, d] = 4 slot + 2 h + d
    slots = torch.tensor([4, 1, 5, 2], device=device)
    starts, ends = torch.tensor([0, 1, 2], device=device), torch.tensor([1, 4, 4], device=device)
    expect = torch.tensor([
        [[16, 17], [18, 19]],  # slot 4
        [[32 / 3, 35 / 3], [38 / 3, 41 / 3]],  # slots 1, 5, 2: mean slot 8/3
        [[14, 15], [16, 17]],  # slots 5, 2: mean slot 3.5
    ])
    for fn in (sk.sentence_mean_keys, sk.sentence_mean_keys_reference):
        torch.testing.assert_close(fn(k_cache, slots, starts, ends).cpu(), expect, rtol=1e-6, atol=1e-6)
    assert sk.sentence_mean_keys(k_cache, slots, starts[:0], ends[:0]).shape == (0, 2, 2)


@pytest.mark.parametrize("fn_name", ["sentence_mean_keys", "sentence_mean_keys_reference"])
@pytest.mark.parametrize("change,message", [
    (dict(k_cache=torch.zeros(6, 4)), "k_cache must be a float"),
    (dict(k_cache=torch.zeros(6, 2, 2, dtype=torch.int32)), "k_cache must be a float"),
    (dict(slots=torch.zeros(2, 2, dtype=torch.int64)), "slots must be a 1-D"),
    (dict(starts=torch.tensor([0.0, 1.0])), "starts must be a 1-D"),
    (dict(ends=torch.tensor([1, 2, 3])), "differ in length"),
    (dict(ends=torch.tensor([1, 1])), "ends > starts"),
    (dict(starts=torch.tensor([0, 3]), ends=torch.tensor([1, 2])), "ends > starts"),
    (dict(starts=torch.tensor([-1, 1])), "inside the 4 positions"),
    (dict(ends=torch.tensor([1, 5])), "inside the 4 positions"),
], ids=["k-2d", "k-int", "slots-2d", "starts-float", "length", "empty", "negative", "before", "past"])
def test_sentence_mean_keys_reject_bad_inputs(fn_name, change, message):
    """Checked before any launch, so on every host (no interpreter needed)."""
    import kernels.sentence_keys as sk

    args = dict(k_cache=torch.zeros(6, 2, 2), slots=torch.tensor([4, 1, 5, 2]), starts=torch.tensor([0, 1]),
                ends=torch.tensor([1, 4]))
    args.update(change)
    with pytest.raises(ValueError, match=message):
        getattr(sk, fn_name)(**args)
