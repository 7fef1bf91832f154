"""The ZoomR radix tree: unit level on real SGLang pools (ReqToTokenPool, TokenToKVPoolAllocator) and a real
HostDetailStore, then live in the server (program-mode reuse of an engine-mode request's thoughts; flush returns
every slot and host block)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tests.test_zoomr_serving import ENGINE, QUESTION, check_all_returned, empty_tree_state, wait_idle
from zoomr_sgl.host_store import HostDetailStore

SIZE = 64  # device slots


@pytest.fixture
def world():
    from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
    from sglang.srt.mem_cache.cache_init_params import CacheInitParams
    from sglang.srt.mem_cache.memory_pool import ReqToTokenPool

    from zoomr_sgl.hooks import free_without_holes
    from zoomr_sgl.radix_tree import ZoomRRadixCache

    r2t = ReqToTokenPool(size=4, max_context_len=64, device="cpu", enable_memory_saver=False)
    alloc = TokenToKVPoolAllocator(size=SIZE, dtype=torch.float32, device="cpu", kvcache=None, need_sort=False)
    stock_free = type(alloc).free
    alloc.free = lambda idx: free_without_holes(stock_free, alloc, idx)  # what hooks.py installs in the server
    tree = ZoomRRadixCache(CacheInitParams(disable=False, req_to_token_pool=r2t, token_to_kv_pool_allocator=alloc,
                                           page_size=1))
    host = HostDetailStore(num_layers=2, capacity_tokens=64, kv_heads=1, head_dim=4, dtype=torch.float32)
    tree.attach_host_store(host)
    return SimpleNamespace(r2t=r2t, alloc=alloc, tree=tree, host=host)


def key(ids):
    from sglang.srt.mem_cache.radix_cache import RadixKey

    return RadixKey(token_ids=list(ids), extra_key=None)  # the type cache_finished_req builds from a Req


def check_accounting(w, held=0, host_held=0):
    """SGLang's idle invariant in device slots (``held``: slots running requests own outside the tree); the host
    store holds exactly the tree's blocks (plus ``host_held`` rows of running requests)."""
    t = w.tree
    assert w.alloc.available_size() + t.evictable_size() + t.protected_size() + held == SIZE
    assert w.host.stats().used_tokens == t.host_tokens() + host_held
    free = w.alloc.free_pages
    assert torch.unique(free).numel() == free.numel() and not bool((free == 0).any())


def run_request(w, ids, holes=(), protected=0, prefix_node=None, drop=()):
    """A request over ``ids``: its row gets fresh slots past the tree's prefix, then the detail runs in ``holes``
    are offloaded (copied to a host block, slots freed, row zeroed) and those in ``drop`` dropped (no block)."""
    from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams

    req = SimpleNamespace(origin_input_ids=list(ids), output_ids=[], extra_key=None, priority=0,
                          zoomr_host_spans=None, req_pool_idx=None)
    w.r2t.alloc([req])
    m = w.tree.match_prefix(MatchPrefixParams(key=key(ids)))
    protected = len(m.device_indices)
    row = w.r2t.req_to_token[req.req_pool_idx]
    row[:protected] = m.device_indices.to(torch.int32)
    row[protected:len(ids)] = w.alloc.alloc(len(ids) - protected).to(torch.int32)
    req.cache_protected_len, req.last_node = protected, m.last_device_node
    w.tree.inc_lock_ref(req.last_node)
    spans = []
    for lo, hi in holes:
        slots = row[lo:hi].to(torch.int64).clone()
        block = w.host.allocate(hi - lo, owner=("r", lo))
        spans.append((lo, hi, block))
        row[lo:hi] = 0
        w.alloc.free(slots)
    for lo, hi in drop:
        slots = row[lo:hi].to(torch.int64).clone()
        row[lo:hi] = 0
        w.alloc.free(slots)
    req.zoomr_host_spans = spans
    return req, m


def finish(w, req, is_insert=True):
    w.tree.cache_finished_req(req, is_insert, kv_len_to_handle=len(req.origin_input_ids))
    w.r2t.free(req)


IDS = list(range(100, 120))


def test_finished_request_becomes_device_and_host_nodes(world):
    w = world
    req, _ = run_request(w, IDS, holes=[(6, 10), (13, 16)])
    check_accounting(w, held=13, host_held=7)
    finish(w, req)
    check_accounting(w)
    assert w.tree.evictable_size() == 20 - 7 and w.tree.protected_size() == 0
    assert w.host.stats().used_tokens == 7 and w.tree.host_tokens() == 7
    # A later request over the same text gets holes where the details were, backed by the tree's blocks.
    req2, m = run_request(w, IDS + [7, 8])
    assert m.device_indices[6:10].eq(0).all() and m.device_indices[13:16].eq(0).all()
    assert int((m.device_indices != 0).sum()) == 13 and len(m.device_indices) == 20
    spans = w.tree.host_spans(req2.last_node)
    assert [(s.start, s.end, s.offset, s.block.num_tokens) for s in spans] == [(6, 10, 0, 4), (13, 16, 0, 3)]
    assert w.tree.protected_size() == 13
    check_accounting(w, held=2)
    # Pressure: the locked chain (holes and their blocks included) survives a full eviction.
    w.tree.evict(_evict(SIZE))
    check_accounting(w, held=2)
    assert w.host.stats().used_tokens == 7 and all(w.host.is_live(s.block) for s in spans)
    finish(w, req2)
    check_accounting(w)
    w.tree.evict(_evict(SIZE))
    check_accounting(w)
    assert w.alloc.available_size() == SIZE and w.host.stats().used_tokens == 0 and w.host.stats().blocks == 0


def _evict(n):
    from sglang.srt.mem_cache.base_prefix_cache import EvictParams

    return EvictParams(num_tokens=n)


def test_split_inside_a_host_node_shares_the_block(world):
    w = world
    req, _ = run_request(w, IDS, holes=[(6, 10)])
    finish(w, req)
    # Diverge at position 8, inside the host run [6, 10): the node splits, both halves point into one block.
    req2, m = run_request(w, IDS[:8] + [1, 2, 3])
    assert m.device_indices[6:8].eq(0).all() and len(m.device_indices) == 8
    spans = w.tree.host_spans(req2.last_node)
    assert [(s.start, s.end, s.offset) for s in spans] == [(6, 8, 0)]
    finish(w, req2)
    check_accounting(w)
    req3, m = run_request(w, IDS)
    spans = w.tree.host_spans(req3.last_node)
    assert [(s.start, s.end, s.offset, s.block.num_tokens) for s in spans] == [(6, 10, 0, 4)]  # pieces merged
    finish(w, req3)
    # Evicting one half keeps the block for the other; the last piece frees it.
    w.tree.evict(_evict(SIZE))
    check_accounting(w)
    assert w.host.stats().used_tokens == 0 and w.alloc.available_size() == SIZE


def test_duplicates_unbacked_holes_and_retract_free_everything(world):
    w = world
    # Two requests over the same text run side by side and both offload [6, 10): the second finds it cached.
    a, _ = run_request(w, IDS, holes=[(6, 10)])
    b, _ = run_request(w, IDS, holes=[(6, 10)])
    finish(w, a)
    finish(w, b)
    check_accounting(w)
    assert w.tree.host_tokens() == 4 and w.tree.evictable_size() == 16
    # A longer continuation adds its own host node past the matched prefix.
    c, _ = run_request(w, IDS + [1, 2, 3, 4, 5, 6, 7], holes=[(22, 25)])
    finish(w, c)
    check_accounting(w)
    assert w.tree.host_tokens() == 4 + 3
    # A dropped detail (a hole with no block) past the prefix: the insert stops there, the rest is freed.
    d, _ = run_request(w, [5] * 4 + list(range(200, 216)), holes=[(12, 14)], drop=[(6, 9)])
    finish(w, d)
    check_accounting(w)
    e, m = run_request(w, [5] * 4 + list(range(200, 216)))
    assert len(m.device_indices) == 6
    finish(w, e, is_insert=False)  # retract/abort: nothing inserted, everything freed
    check_accounting(w)
    f, _ = run_request(w, [9] * 12, holes=[(3, 6)])
    finish(w, f, is_insert=False)
    check_accounting(w)
    assert w.tree.host_tokens() == 7
    w.tree.reset()  # /flush_cache
    w.alloc.clear()
    assert w.host.stats().used_tokens == 0 and w.host.stats().blocks == 0


def test_demote_moves_a_locked_device_span_to_a_host_node(world):
    from zoomr_sgl.radix_tree import Demotion

    w = world
    k = [torch.randn(SIZE + 1, 1, 4) for _ in range(2)]  # the device KV buffers (2 layers, slot 0 unused)
    v = [torch.randn(SIZE + 1, 1, 4) for _ in range(2)]
    a, _ = run_request(w, IDS)
    finish(w, a)  # IDS is one device node now
    b, m = run_request(w, IDS + [7, 8])  # reads it (lock_ref 1 along the chain)
    c, _ = run_request(w, IDS + [9])  # a second reader of the same prefix
    check_accounting(w, held=3)
    assert w.tree.protected_size() == 20
    # Shared: refused, nothing changes.
    assert not w.tree.can_demote(b.last_node, 6, 10)
    assert w.tree.demote(b.last_node, 6, 10, k, v)[:2] == (None, Demotion.READ_ELSEWHERE)
    check_accounting(w, held=3)
    assert w.tree.protected_size() == 20 and w.host.stats().used_tokens == 0
    finish(w, c)
    assert not w.tree.can_demote(b.last_node, 6, 30)  # past the chain
    # Only b reads it now, but the host store is full (a running request's block: not the tree's to evict).
    hog = w.host.allocate(64, owner=("rid", 0))
    assert w.tree.demote(b.last_node, 6, 10, k, v)[:2] == (None, Demotion.HOST_FULL)
    check_accounting(w, held=2, host_held=64)
    w.host.free(hog)
    # With room: [6, 10) becomes a host node backed by one block holding its KV.
    row = w.r2t.req_to_token[b.req_pool_idx]
    slots = row[6:10].to(torch.int64).clone()
    available = w.alloc.available_size()
    block, refused = w.tree.demote(b.last_node, 6, 10, k, v, owner=("t", "b", 0))[:2]
    assert refused is None and block.num_tokens == 4
    row[6:10] = 0  # what the manager does to the request's row
    (start, count), = block.runs
    for layer in range(2):
        assert torch.equal(w.host.k[layer, start:start + 4], k[layer][slots])
        assert torch.equal(w.host.v[layer, start:start + 4], v[layer][slots])
    assert w.alloc.available_size() == available + 4 and w.tree.protected_size() == 16
    check_accounting(w, held=2)
    assert [(s.start, s.end, s.offset, s.block) for s in w.tree.host_spans(b.last_node)] == [(6, 10, 0, block)]
    assert not w.tree.can_demote(b.last_node, 8, 12)  # holes now
    assert w.tree.state()["demoted_tokens"] == 4
    finish(w, b)  # the hole run is below its protected prefix: the tree's own
    check_accounting(w)
    assert w.tree.evictable_size() == 16 + 1 + 2 and w.tree.host_tokens() == 4  # c left [9], b [7, 8]
    d, m = run_request(w, IDS)  # a later reader gets the detail as holes backed by the block
    assert m.device_indices[6:10].eq(0).all() and int((m.device_indices != 0).sum()) == 16
    finish(w, d)
    w.tree.evict(_evict(SIZE))
    check_accounting(w)
    assert w.alloc.available_size() == SIZE and w.host.stats().used_tokens == 0


def test_demote_spans_moves_many_spans_at_once_and_refuses_each_on_its_own(world):
    """One call, one walk, one batch of copies: spans on the chain become host nodes with their own blocks (the
    chain cut at their edges); a span past the chain or over a host node is refused alone; the accounting holds."""
    from zoomr_sgl.radix_tree import Demotion

    w = world
    k = [torch.randn(SIZE + 1, 1, 4) for _ in range(2)]
    v = [torch.randn(SIZE + 1, 1, 4) for _ in range(2)]
    a, _ = run_request(w, IDS, holes=[(16, 18)])
    finish(w, a)  # device [0, 16), host [16, 18), device [18, 20)
    b, _ = run_request(w, IDS + [7])  # the only reader of the chain
    row = w.r2t.req_to_token[b.req_pool_idx]
    before = row[:20].to(torch.int64).clone()
    available = w.alloc.available_size()
    spans = [(2, 5), (5, 9), (12, 14), (15, 17), (18, 30)]  # the fourth holds a host position, the last is too long
    results = w.tree.demote_spans(b.last_node, spans, k, v, [("t", "b", i) for i in range(len(spans))])
    assert [r.refused for r in results] == [None, None, None, Demotion.READ_ELSEWHERE, Demotion.READ_ELSEWHERE]
    for (lo, hi), result in zip(spans[:3], results):
        assert result.block.num_tokens == hi - lo
        (start, count), = result.block.runs
        for layer in range(2):
            assert torch.equal(w.host.k[layer, start:start + count], k[layer][before[lo:hi]])
            assert torch.equal(w.host.v[layer, start:start + count], v[layer][before[lo:hi]])
        row[lo:hi] = 0  # what the manager does to the request's row
    assert w.alloc.available_size() == available + 3 + 4 + 2
    spans_now = [(s.start, s.end, s.offset) for s in w.tree.host_spans(b.last_node)]
    assert spans_now == [(2, 5, 0), (5, 9, 0), (12, 14, 0), (16, 18, 0)]
    assert w.tree.state()["demoted_tokens"] == 9
    check_accounting(w, held=1)  # b's own slot past the prefix
    finish(w, b)
    check_accounting(w)


def test_evict_host_spares_device_branches_without_host_nodes(world):
    """evict_host frees host rows only: a device-only branch stays cached (even when it is the oldest leaf); a
    device summary node below a host detail node goes only to expose that host node."""
    from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams

    w = world
    device_ids = list(range(300, 310))
    a, _ = run_request(w, device_ids)  # (a) device only, cached first: the oldest leaf
    finish(w, a)
    b, _ = run_request(w, IDS, holes=[(6, 10)])  # (b) device [0, 6), host detail [6, 10), device summary [10, 20)
    finish(w, b)
    check_accounting(w)
    assert w.tree.evictable_size() == 10 + 16 and w.tree.host_tokens() == 4
    hog = w.host.allocate(60, owner=("rid", 0))  # a running request's rows: the host store is full
    assert w.host.stats().used_tokens == 64
    assert w.tree.evict_host(8) == 0  # hopeless (4 tree rows): nothing evicted
    assert w.tree.evictable_size() == 10 + 16 and w.tree.host_tokens() == 4
    check_accounting(w, host_held=60)
    assert w.tree.evict_host(2) == 4
    check_accounting(w, host_held=60)
    assert w.tree.host_tokens() == 0 and w.host.stats().used_tokens == 60
    assert w.tree.evictable_size() == 10 + 6  # (a) whole; (b) lost its detail and the summary below it
    assert w.tree.state()["evicted_device_tokens"] == 10 and w.tree.state()["evicted_host_tokens"] == 4
    m = w.tree.match_prefix(MatchPrefixParams(key=key(device_ids)))
    assert len(m.device_indices) == 10 and bool((m.device_indices != 0).all())
    w.host.free(hog)
    w.tree.evict(_evict(SIZE))
    check_accounting(w)
    assert w.alloc.available_size() == SIZE and w.host.stats().used_tokens == 0


# ---------------------------------------------------------------------------------------------- live server
def generate(server, prompt, max_new_tokens, params):
    """``prompt``: text, or token ids (program mode passes the earlier request's ids: re-tokenizing generated text
    need not give the same ids, e.g. around forced markers, and then the prefix match stops there)."""
    body = {"input_ids": prompt} if isinstance(prompt, list) else {"text": prompt}
    r = server.post("/generate", {**body, "sampling_params": {
        "max_new_tokens": max_new_tokens, "temperature": 0, "ignore_eos": True, "custom_params": params}})
    r.raise_for_status()
    return r.json()


def tokens(server, text, special=True):
    r = server.post("/tokenize", {"prompt": text, "add_special_tokens": special})
    r.raise_for_status()
    return r.json()["tokens"]


PROGRAM = {**ENGINE, "zoomr_summary_mode": "program"}


def engine_request_on_empty_tree(s, max_new_tokens: int) -> tuple[dict, dict, list[int]]:
    """Flush, then one engine-mode request over QUESTION, which leaves its thoughts in the tree (details on the
    host). Returns the idle baseline for ``check_all_returned``, the response, and its prompt and output ids."""
    start = empty_tree_state(s)
    out = generate(s, QUESTION, max_new_tokens, ENGINE)
    return start, out, tokens(s, QUESTION) + out["output_ids"]


@pytest.fixture(scope="module")
def small_pool_server():
    """The ZoomR server (``--radix-cache-backend zoomr`` by the launcher) with a small KV pool, so the tree must
    evict while requests read its host nodes. Module scope: it is stopped before other files start theirs."""
    from tests.conftest import ZOOMR_ARGS, ZOOMR_ENV, _serve_or_attach

    yield from _serve_or_attach("ZOOMR_TEST_SMALL_POOL_URL", ZOOMR_ARGS + ["--max-total-tokens", "1536"], ZOOMR_ENV)


@pytest.mark.server
@pytest.mark.parametrize("params", [PROGRAM, ENGINE], ids=["program", "engine"])
def test_later_request_reuses_host_backed_thoughts_from_the_tree(small_pool_server, params):
    """A request whose prompt holds an earlier engine-mode request's text, in program mode (segmented from 0) or in
    engine mode (the prompt's closed thoughts segmented too, its own output from the prompt's end)."""
    from zoomr_sgl.segmenter import segment

    s = small_pool_server
    start, first, earlier = engine_request_on_empty_tree(s, 240)
    st1 = first["meta_info"]["zoomr"]
    assert st1["thoughts"] >= 3 and st1["offloaded_tokens"] > 0
    after_first = wait_idle(s)
    assert after_first["host_store"]["used_tokens"] == st1["offloaded_tokens"]  # the tree kept every detail
    prompt = earlier + tokens(s, " So the answer is", special=False)
    second = generate(s, prompt, 200, params)
    meta, st2 = second["meta_info"], second["meta_info"]["zoomr"]
    assert meta["cached_tokens"] >= len(earlier) - 1, meta  # the earlier text is not recomputed
    assert st2["reused_host_tokens"] == st1["offloaded_tokens"], st2  # its details came as host-backed holes
    assert st2["thoughts_from_tree"] == st1["thoughts"], st2  # every earlier thought is zoomable
    # ... and not loaded back: on the device is everything but the host details outside the zoom buffer.
    assert st2["device_kv_tokens"] <= st2["full_kv_tokens"] - st2["reused_host_tokens"] + st2["zoom_tokens"], st2
    assert st2["zoom_tokens"] <= params["zoomr_zoom_budget"] < st2["reused_host_tokens"]
    assert st2["zoom_recalls"] > 0, st2
    if params is ENGINE:  # the second request's own thoughts: its output segmented from the end of its prompt
        markers = tokens(s, "<summary>", special=False), tokens(s, "</summary>", special=False)
        own = [t for t in segment(prompt + second["output_ids"], *markers, start=len(prompt)) if t.closed]
        assert own and st2["thoughts"] == st1["thoughts"] + len(own), (st2, own)
    check_all_returned(s, start)


@pytest.mark.server
def test_tree_eviction_under_pressure_spares_what_requests_read(small_pool_server):
    import concurrent.futures as cf

    s = small_pool_server
    start, _, earlier = engine_request_on_empty_tree(s, 160)

    def one(i):
        if i % 2:  # filler: unrelated text that fills the tree with evictable nodes
            return generate(s, f"Filler {i}: " + QUESTION * 3, 100, ENGINE)
        return generate(s, earlier + tokens(s, f" Case {i}.", special=False), 150, PROGRAM)

    with cf.ThreadPoolExecutor(8) as ex:
        outs = list(ex.map(one, range(16)))
    readers = [o["meta_info"]["zoomr"] for i, o in enumerate(outs) if i % 2 == 0]
    assert all(r["reused_host_tokens"] > 0 for r in readers), readers
    assert sum(r["zoom_recalls"] for r in readers) > 0
    mid = wait_idle(s)  # the idle leak check ran between these requests, with evictions, and passed
    assert mid["running_requests"] == 0
    assert mid["tree"]["evicted_device_tokens"] > 0 and mid["tree"]["evicted_host_tokens"] > 0, mid["tree"]
    check_all_returned(s, start)
    assert s.generate("alive?", max_new_tokens=4)["meta_info"]["completion_tokens"] >= 1


@pytest.mark.server
def test_program_mode_demotes_a_thought_closed_in_a_later_prompt(small_pool_server):
    """Program mode: request 1 writes a thought, request 2 its summary, request 3's prompt closes it. The detail was
    tree-owned device KV; request 3 (its only reader) demotes it to a host node, borrows it, and can zoom it."""
    s = small_pool_server
    start = empty_tree_state(s)
    params = {**PROGRAM, "zoomr_zoom_interval": 2}
    ids1 = tokens(s, QUESTION) + generate(s, QUESTION, 40, params)["output_ids"]
    ids2 = ids1 + tokens(s, "<summary>", special=False)
    ids2 += generate(s, ids2, 6, params)["output_ids"]
    ids3 = ids2 + tokens(s, "</summary>", special=False) + tokens(s, "\n", special=False)
    third = generate(s, ids3, 24, params)
    meta, st3 = third["meta_info"], third["meta_info"]["zoomr"]
    assert meta["cached_tokens"] >= len(ids2) - 1, meta  # the earlier text came from the tree
    detail = len(ids1)  # program mode segments from 0: thought 0's detail is everything before "<summary>"
    assert st3["demoted_tokens"] == detail and st3["kept_shared_tokens"] == 0, st3
    assert st3["thoughts_from_tree"] == 1 and st3["offloaded_tokens"] == detail, st3
    assert st3["device_kv_tokens"] <= st3["full_kv_tokens"] - detail + st3["zoom_tokens"], st3
    assert st3["zoom_recalls"] > 0, st3  # the demoted detail is zoomable
    mid = wait_idle(s)
    assert mid["host_store"]["used_tokens"] >= detail and mid["tree"]["demoted_tokens"] >= detail, mid
    # A later request over the same text gets the detail as host-backed holes (not demoted again).
    fourth = generate(s, ids3, 4, params)["meta_info"]["zoomr"]
    assert fourth["reused_host_tokens"] == detail and fourth["thoughts_from_tree"] == 1, fourth
    assert fourth["demoted_tokens"] == 0, fourth
    check_all_returned(s, start)
