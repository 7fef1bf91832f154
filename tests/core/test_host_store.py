"""HostDetailStore: byte-exact round trips into other slots, fragmented blocks, both full-store fallbacks, stale
blocks rejected, and no two live blocks sharing a row under random allocate/free."""

import random

import pytest
import torch

from zoomr_sgl.host_store import HostDetailStore, StaleBlockError

LAYERS, HKV, D = 3, 2, 4


def pool(dtype=torch.bfloat16, slots=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda: [torch.randn(slots, HKV, D, generator=g).to(dtype) for _ in range(LAYERS)]
    return make(), make()


def store(capacity=32, **kw):
    return HostDetailStore(LAYERS, capacity, HKV, D, kw.pop("dtype", torch.bfloat16), "cpu", **kw)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_round_trip_is_byte_exact_into_different_slots(dtype):
    s = store(dtype=dtype)
    k, v = pool(dtype)
    src, dst = torch.tensor([3, 17, 4, 40, 9]), torch.tensor([60, 0, 33, 21, 50])
    want_k, want_v = [b[src].clone() for b in k], [b[src].clone() for b in v]
    block = s.allocate(5, owner="r0/t0")
    handle = s.copy_from_device(block, k, v, src)
    assert handle.done()
    for b in (*k, *v):
        b[src] = 0  # the device slots are gone once offloaded
    s.copy_to_device(block, k, v, dst).wait()
    for layer in range(LAYERS):
        assert torch.equal(k[layer][dst].view(torch.uint8), want_k[layer].view(torch.uint8))
        assert torch.equal(v[layer][dst].view(torch.uint8), want_v[layer].view(torch.uint8))


def test_fragmented_block_spans_several_runs_and_still_round_trips():
    s = store(capacity=12)
    k, v = pool()
    a, b, c = s.allocate(4), s.allocate(4), s.allocate(4)
    s.free(a), s.free(c)
    frag = s.allocate(8)
    assert frag.runs == ((0, 4), (8, 4))
    src, dst = torch.arange(8) * 3, torch.arange(8) + 50
    s.copy_from_device(frag, k, v, src)
    s.copy_to_device(frag, k, v, dst)
    assert all(torch.equal(x[dst], x[src]) for x in (*k, *v))
    assert s.stats().used_tokens == 12


HAS_CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]),
])
def test_many_blocks_go_back_to_their_own_slots_in_one_copy(device):
    # a zoom recalls several details at once (prompt sentences): one batched copy, one handle, each block to its slots
    s = HostDetailStore(LAYERS, 18, HKV, D, torch.bfloat16, device)
    k, v = ([b.to(device) for b in bufs] for bufs in pool())
    a, gap, b = s.allocate(4), s.allocate(4), s.allocate(6)
    s.free(gap)
    c = s.allocate(8)  # fragmented: the freed gap and the rows after b
    assert len(c.runs) == 2
    blocks = [(a, torch.tensor([1, 2, 3, 4])), (b, torch.arange(10, 16)), (c, torch.arange(20, 28) * 2)]
    for block, src in blocks:
        s.copy_from_device(block, k, v, src.to(device)).wait()
    want = [[x[src.to(device)].clone() for x in (*k, *v)] for _, src in blocks]
    dsts = [torch.tensor([60, 0, 33, 21]), torch.arange(40, 46), torch.tensor([5, 7, 9, 11, 13, 17, 19, 23])]
    handle = s.copy_many_to_device([(block, dst.to(device)) for (block, _), dst in zip(blocks, dsts)], k, v)
    handle.wait()
    assert handle.done()
    for got_rows, dst in zip(want, dsts):
        for x, rows in zip((*k, *v), got_rows):
            assert torch.equal(x[dst.to(device)].view(torch.uint8), rows.view(torch.uint8))
    with pytest.raises(ValueError):  # every item is checked before anything is copied
        s.copy_many_to_device([(a, torch.arange(4).to(device)), (b, torch.arange(3).to(device))], k, v)


def test_keep_on_device_refuses_when_full_and_changes_nothing():
    s = store(capacity=10, fallback="keep_on_device")
    a = s.allocate(6)
    assert s.allocate(5) is None and s.allocate(11) is None
    st = s.stats()
    assert (st.used_tokens, st.blocks, st.refused, st.dropped_blocks) == (6, 1, 2, 0)
    assert s.is_live(a) and s.allocate(4) is not None


def test_drop_oldest_drops_in_age_order_notifies_owner_and_counts():
    dropped = []
    s = store(capacity=10, fallback="drop_oldest", on_drop=dropped.append)
    k, v = pool()
    a, b, c = s.allocate(3, "a"), s.allocate(3, "b"), s.allocate(3, "c")
    s.copy_from_device(a, k, v, torch.arange(3))
    d = s.allocate(5, "d")  # 1 free: drop a (4 free), then b (7 free)
    assert [x.owner for x in dropped] == ["a", "b"] and d is not None
    st = s.stats()
    assert (st.dropped_blocks, st.dropped_tokens, st.used_tokens, st.blocks) == (2, 6, 8, 2)
    with pytest.raises(StaleBlockError, match="owner 'a'"):
        s.copy_to_device(a, k, v, torch.arange(3))
    assert s.allocate(11, "huge") is None and s.stats().dropped_blocks == 2  # never drops for the impossible
    assert s.is_live(c) and s.is_live(d)


def test_stale_block_is_rejected_even_when_its_rows_are_reused():
    s = store(capacity=4)
    k, v = pool()
    old = s.allocate(4)
    s.free(old)
    new = s.allocate(4)
    assert new.runs == old.runs and new.block_id != old.block_id
    for use in (lambda: s.copy_from_device(old, k, v, torch.arange(4)),
                lambda: s.copy_to_device(old, k, v, torch.arange(4)), lambda: s.free(old)):
        with pytest.raises(StaleBlockError):
            use()


def test_bad_copies_are_rejected():
    s = store()
    k, v = pool()
    block = s.allocate(3)
    with pytest.raises(ValueError, match="slots"):
        s.copy_from_device(block, k, v, torch.arange(4))
    with pytest.raises(ValueError, match="layers"):
        s.copy_from_device(block, k[:2], v[:2], torch.arange(3))
    with pytest.raises(ValueError, match="does not match"):
        s.copy_from_device(block, [b.float() for b in k], v, torch.arange(3))
    with pytest.raises(ValueError):
        s.allocate(0)
    with pytest.raises(ValueError):
        store(fallback="spill")


@pytest.mark.parametrize("fallback", ["keep_on_device", "drop_oldest"])
def test_random_allocate_free_never_shares_a_row(fallback):
    rng = random.Random(0)
    s = store(capacity=50, fallback=fallback)
    live = []
    for _ in range(300):
        if live and rng.random() < 0.4:
            s.free(live.pop(rng.randrange(len(live))))
        else:
            block = s.allocate(rng.randint(1, 20))
            live = [b for b in live if s.is_live(b)] + ([block] if block else [])
        rows = [r for b in live for start, n in b.runs for r in range(start, start + n)]
        assert len(rows) == len(set(rows)) == s.stats().used_tokens
        assert all(0 <= r < 50 for r in rows) and sum(b.num_tokens for b in live) == len(rows)


def test_auto_capacity_is_four_pools_within_a_quarter_of_the_host():
    from zoomr_sgl.host_store import auto_capacity

    assert auto_capacity(1000, 100, 10**9) == 4000  # 400 kB wanted, 250 MB allowed
    assert auto_capacity(1000, 100, 800_000) == 2000  # a quarter of 800 kB
    assert auto_capacity(1000, 100, 300) == 1  # a quarter of 300 B is no row: never empty
