"""ZoomR with tensor parallelism (``--tp 2``): the ranks agree on every zoom (``zoomr_sgl.tp_consensus``), so their
allocators never drift, the server never hangs, and outputs match stock ``--tp 2`` where nothing leaves the device
and full KV where everything is recalled.

On CPU, SGLang runs ``--tp 2`` with one core per rank (``SGLANG_CPU_OMP_THREADS_BIND``); on CUDA the tests need two
GPUs and skip otherwise."""

from __future__ import annotations

import concurrent.futures as cf
import os

import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import ZOOMR_ARGS, ZOOMR_ENV, _serve
from tests.test_zoomr_serving import ENGINE, QUESTION, RECALL_ALL, check_all_returned, empty_tree_state, generate
from zoomr_sgl.tp_consensus import TPConsensus

TP = ["--tp-size", "2"]


def _tp_env() -> dict[str, str] | None:
    if torch.cuda.is_available():
        if torch.cuda.device_count() < 2:
            pytest.skip("--tp 2 needs two GPUs on a CUDA host")
        return None
    if (os.cpu_count() or 1) < 2:
        pytest.skip("--tp 2 on CPU needs a core per rank")
    return {"SGLANG_CPU_OMP_THREADS_BIND": "0|1"}


@pytest.fixture(scope="module")
def zoomr_tp2():
    env = _tp_env()
    yield from _serve(ZOOMR_ARGS + TP, {**ZOOMR_ENV, **(env or {})})


@pytest.fixture(scope="module")
def stock_tp2():
    yield from _serve(TP, _tp_env())


def _gather_worker(rank: int, port: int, out) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        tp = type("G", (), {"world_size": 2, "cpu_group": torch.distributed.group.WORLD})()
        fake = type("S", (), {"tp_group": tp})()
        local = torch.tensor([1.0, 2.0, 3.0]) * (rank + 1) + torch.tensor([1e-7, 0.0, 3e-7])  # ranks' own heads
        out[rank] = TPConsensus(fake).scores(local).tolist()
    finally:
        torch.distributed.destroy_process_group()


def test_consensus_is_the_mean_over_ranks_and_the_same_bits_everywhere():
    from tests.server_process import free_port

    out = mp.Manager().dict()
    mp.spawn(_gather_worker, args=(free_port(), out), nprocs=2, join=True)
    assert out[0] == out[1]  # bit for bit: every decision taken from them is the same
    expected = ((torch.tensor([1.0, 2.0, 3.0]) + torch.tensor([1e-7, 0.0, 3e-7])) +
                (torch.tensor([2.0, 4.0, 6.0]) + torch.tensor([1e-7, 0.0, 3e-7]))) / 2
    assert out[0] == expected.tolist()
    solo = type("S", (), {"tp_group": type("G", (), {"world_size": 1})()})()
    local = torch.tensor([0.5, 0.25])
    assert TPConsensus(solo).scores(local) is local and not TPConsensus(solo).lockstep


@pytest.mark.server
def test_tp2_greedy_output_equals_stock_tp2_with_nothing_offloaded(zoomr_tp2, stock_tp2):
    for text in [QUESTION, "Count: 1 2 3", "Anna reads 15 pages a day for 4 days.\n<think>\n"]:
        a = generate(zoomr_tp2, text, {"zoomr_policy": "full"}, 48)
        b = stock_tp2.generate(text, max_new_tokens=48, ignore_eos=True)
        assert a["output_ids"] == b["output_ids"], text


@pytest.mark.server
def test_tp2_offload_and_recall_equals_full(zoomr_tp2):
    zoomr_tp2.flush_cache()
    recalled = generate(zoomr_tp2, QUESTION, {**RECALL_ALL, "zoomr_policy": "zoomr"}, 160)
    zoomr_tp2.flush_cache()
    full = generate(zoomr_tp2, QUESTION, {**RECALL_ALL, "zoomr_policy": "full"}, 160)
    stats = recalled["meta_info"]["zoomr"]
    assert stats["offloaded_tokens"] > 0 and stats["zoom_recalls"] > 0
    assert recalled["output_ids"] == full["output_ids"]


@pytest.mark.server
def test_tp2_concurrent_engine_requests_with_zooms_finish_and_return_everything(zoomr_tp2):
    """Zooms with a small buffer (recalls and evictions every few steps) in several requests at once: a rank that
    chose differently would free other slots, and the next step's collectives would hang or the pools diverge."""
    start = empty_tree_state(zoomr_tp2)
    params = {**ENGINE, "zoomr_zoom_budget": 64, "zoomr_zoom_topk": 2, "zoomr_zoom_interval": 2}

    def one(i: int) -> dict:
        return generate(zoomr_tp2, f"Case {i}: " + QUESTION, params, 240)

    with cf.ThreadPoolExecutor(6) as ex:
        outs = list(ex.map(one, range(6)))
    for out in outs:
        stats = out["meta_info"]["zoomr"]
        assert out["meta_info"]["completion_tokens"] == 240
        assert stats["zoom_recalls"] > 0 and stats["zoom_evictions"] > 0
    check_all_returned(zoomr_tp2, start)
