#!/usr/bin/env python3
"""The yardstick: long generations per GPU, ZoomR against stock SGLang with its default flags, in one run.

Servers, all ``launch.py`` (which adds only the platform defaults) with the same ``--model-path``, ``--load-format``,
KV pool (``--max-total-tokens``, default 4 x (prompt + longest output): stock holds about 4 requests' full KV),
``--mem-fraction-static``, ``--enable-metrics`` and the SGLang flags after ``--``:
  stock              no other flag (overlap scheduler on): the baseline of every ratio
  stock_zoomr_flags  + ``--page-size 1`` (what ``--enable-zoomr`` turns on in SGLang; on CUDA stock's own page size)
  zoomr              ``--enable-zoomr`` (+ ``--zoomr-server-flags``; overlap scheduler on), measured twice:
                     per-request policy ``zoomr`` and ``full`` (all KV on the device; target: within 5% of stock)
  zoomr_no_overlap   ``--enable-zoomr --disable-overlap-schedule``, policy ``zoomr``: what the overlap scheduler
                     gives ZoomR, in the same run
Each is attached (``--url-*``, e.g. started side by side by ``scripts/gpu_run.sh capacity-start``) or started here,
one at a time (stopped before the next; its log kept under --out). Rows are measured one at a time. Per output
length every row gets the same ``--requests`` random prompts (ids below ``--vocab`` and the model's vocabulary):
greedy ``ignore_eos`` streamed generations over ``--api`` (``benchmarks/stream_client.py``; default ``openai``:
``/v1/completions``, whose chunks stay small at any length, with ``--kv-probes`` requests over ``/generate`` for
ZoomR's ``meta_info.zoomr``), the radix cache flushed first. A point
(``benchmarks/capacity_point.py``) runs to completion or, for lengths >= ``--window-from``, counts output tokens for
``--window`` s once the server is full, then aborts everything and waits until the scheduler is idle. Recorded per
point: output tok/s; running requests, token usage and retractions from the scheduler's ``/metrics``
(``benchmarks/scheduler_probe.py``); time between tokens p50/p99; peak device KV per request (ZoomR rows:
``meta_info.zoomr``; stock rows: prompt + output, full KV). ``benchmarks/capacity_report.py`` writes
``capacity.{json,md,png}`` (``capacity_whole_gpu.*`` with ``--whole-gpu``) under ``--out``: ratios to ``stock`` at
the same length, GPU, versions, date, every CLI argument and each server's flags and non-default SGLang settings.
Bad input: one line ``capacity: error: ...``, status 2. Stopped early (SIGTERM, a failure): the points measured so
far are written and the status is 1.

    python -m benchmarks.capacity [--lengths 4K,8K,16K,32K] [--requests 32] [--url-stock URL ...] [-- SGLANG FLAGS]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import requests

try:
    from benchmarks import capacity_report
    from benchmarks.capacity_point import PointPlan, PointResult, measure_point
    from benchmarks.stream_client import APIS
except ImportError:  # run as a script: benchmarks/ itself is on the path
    import capacity_report
    from capacity_point import PointPlan, PointResult, measure_point
    from stream_client import APIS

REPO = Path(__file__).resolve().parents[1]
SERVER_FLAGS = {"stock": [], "stock_zoomr_flags": ["--page-size", "1"], "zoomr": ["--enable-zoomr"],
                "zoomr_no_overlap": ["--enable-zoomr", "--disable-overlap-schedule"]}
URL_ARGS = {"stock": "url_stock", "stock_zoomr_flags": "url_stock_flags", "zoomr": "url_zoomr",
            "zoomr_no_overlap": "url_zoomr_no_overlap"}
ZOOMR_SERVERS = ("zoomr", "zoomr_no_overlap")


class Row(NamedTuple):
    name: str
    server: str
    policy: str | None  # ZoomR policy sent per request; None: a stock server


ROWS = (Row("stock", "stock", None), Row("stock_zoomr_flags", "stock_zoomr_flags", None),
        Row("zoomr", "zoomr", "zoomr"), Row("full", "zoomr", "full"),
        Row("zoomr_no_overlap", "zoomr_no_overlap", "zoomr"))


def engine_params(policy: str, args) -> dict:
    return {"zoomr_policy": policy, "zoomr_summary_mode": "engine", "zoomr_min_thought_tokens": args.min_thought,
            "zoomr_max_thought_tokens": args.max_thought, "zoomr_max_summary_tokens": args.summary_tokens,
            "zoomr_zoom_budget": args.zoom_budget, "zoomr_zoom_topk": args.zoom_topk,
            "zoomr_zoom_interval": args.zoom_interval,
            "zoomr_thinking_end": ""}  # random weights: the whole generation is reasoning (no answer after </think>)


def server_argv(name: str, args, extra: list[str]) -> list[str]:
    """launch.py flags for one server (the host and port come from whoever starts it)."""
    argv = list(SERVER_FLAGS[name]) + (shlex.split(args.zoomr_server_flags) if name in ZOOMR_SERVERS else [])
    for flag, value in (("--model-path", args.model_path), ("--load-format", args.load_format),
                        ("--max-total-tokens", pool_tokens(args)), ("--mem-fraction-static", args.mem_fraction_static)):
        if value is not None:
            argv += [flag, str(value)]
    return argv + ["--enable-metrics"] + extra


def pool_tokens(args) -> int | None:
    if args.whole_gpu:
        return None
    return args.max_total_tokens or 4 * (args.prompt_tokens + max(args.lengths))


# ---------------------------------------------------------------------------------------------------- servers
class Server(NamedTuple):
    name: str
    url: str
    argv: list[str] | None  # None: attached, flags unknown here (see the server's non-default args)
    process: object | None  # tests.server_process.ServerProcess when started here


def open_server(name: str, args, extra: list[str]) -> Server:
    url = getattr(args, URL_ARGS[name])
    if url:
        return Server(name, url.rstrip("/"), None, None)
    sys.path.insert(0, str(REPO))
    from tests.server_process import ServerProcess

    argv = server_argv(name, args, extra)
    print(f"starting {name}: launch.py {shlex.join(argv)}", file=sys.stderr, flush=True)
    proc = ServerProcess.start(argv, timeout=args.server_timeout)
    return Server(name, proc.url, argv, proc)


def close_server(server: Server, out: Path) -> None:
    if server.process is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / f"capacity_server_{server.name}.log").write_text(server.process.log_text())
    left = server.process.stop()
    if left:
        print(f"capacity: {server.name}: processes still running after stop: {[p.pid for p in left]}", file=sys.stderr)


def describe_server(server: Server, ready_s: float | None) -> dict:
    info = requests.get(server.url + "/server_info", timeout=60).json()
    return {"url": server.url, "argv": server.argv, "ready_s": ready_s,
            **{k: info.get(k) for k in ("max_total_num_tokens", "model_path", "load_format", "attention_backend",
                                        "page_size", "disable_overlap_schedule", "stream_interval",
                                        "decode_log_interval", "incremental_streaming_output", "version")},
            "non_default_args": non_default_args(info)}


def non_default_args(info: dict) -> dict:
    """Every SGLang server argument this server runs with that differs from SGLang's own default."""
    import dataclasses

    try:
        from sglang.srt.server_args import ServerArgs
    except Exception:  # no SGLang on this host: keep the flags, unfiltered
        return {k: v for k, v in info.items() if k != "internal_states"}
    text = lambda v: json.dumps(v, sort_keys=True, default=str)  # noqa: E731
    diff = {}
    for f in dataclasses.fields(ServerArgs):
        if f.name.startswith("_") or f.name not in info:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if text(info[f.name]) != text(default):
            diff[f.name] = info[f.name]
    return diff


def model_vocab(info_model_path: str | None) -> int | None:
    try:
        return json.loads((Path(info_model_path) / "config.json").read_text())["vocab_size"]
    except (TypeError, OSError, ValueError, KeyError):
        return None


def host_facts() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("sglang", "torch", "triton", "flashinfer-python", "aiohttp"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        gpu = "cpu"
    return {"gpu": gpu, "versions": versions,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


# ---------------------------------------------------------------------------------------------------- the run
def run(args, extra: list[str]) -> tuple[dict, int]:
    """Measure every (row, length); returns the result (partial if stopped) and the exit status."""
    lengths = [args.whole_gpu_length] if args.whole_gpu else args.lengths
    n = args.whole_gpu_requests if args.whole_gpu else args.requests
    rows = [r for r in ROWS if r.server in args.servers and (args.rows is None or r.name in args.rows)]
    meta = {**host_facts(), "whole_gpu": args.whole_gpu, "lengths": lengths, "requests": n,
            "prompt_tokens": args.prompt_tokens, "pool_tokens_asked": pool_tokens(args), "seed": args.seed,
            "zoomr_settings": {k: v for k, v in engine_params("zoomr", args).items() if k != "zoomr_policy"},
            "sglang_flags": extra, "cli": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "servers": {}}
    points: list[PointResult] = []
    status = 0
    bar = capacity_report.progress(len(rows) * len(lengths))
    server = None
    try:
        for name in args.servers:
            t0 = time.perf_counter()
            server = open_server(name, args, extra)
            meta["servers"][name] = describe_server(server, time.perf_counter() - t0 if server.process else None)
            model_path = meta["servers"][name]["model_path"]
            meta.setdefault("model", Path(str(model_path)).name)  # ids past the vocabulary kill stock's scheduler
            meta["vocab"] = min(meta.get("vocab", args.vocab), model_vocab(model_path) or args.vocab)
            for length in lengths:
                rng = random.Random(f"{args.seed}/{length}")  # the same prompts for every row of a length
                prompts = [[rng.randrange(10, meta["vocab"]) for _ in range(args.prompt_tokens)] for _ in range(n)]
                window = args.window if length >= args.window_from else None
                for row in (r for r in rows if r.server == name):
                    bar.set_description(f"{row.name} {length}")
                    plan = PointPlan(row.name, name, length, prompts, row.policy and engine_params(row.policy, args),
                                     window, args.settle, args.max_ramp, args.poll,
                                     meta["servers"][name]["max_total_num_tokens"],
                                     # whole GPU: the host store cannot promise every request's detail, so ZoomR
                                    # rows may retract too and count as full, like stock's, once the pool is
                                    bounded=row.policy in ("zoomr", "summary_only") and not args.whole_gpu,
                                    api=args.api, kv_probes=args.kv_probes)
                    points.append(asyncio.run(measure_point(server.url, plan)))
                    bar.set_postfix_str(f"{points[-1].output_tok_per_s or 0:.0f} tok/s")
                    bar.update()
            close_server(server, args.out)
            server = None
    except (KeyboardInterrupt, RuntimeError, TimeoutError, OSError) as e:
        meta["incomplete"] = f"{type(e).__name__}: {e}"[:2000]
        print(f"capacity: stopped: {meta['incomplete']}", file=sys.stderr)
        status = 1
        if server is not None:
            try:  # leave an attached server idle
                requests.post(server.url + "/abort_request", json={"abort_all": True}, timeout=30)
            except requests.RequestException:
                pass
            close_server(server, args.out)
    finally:
        bar.close()
    return {"meta": meta, "points": [p._asdict() for p in points]}, status


# ---------------------------------------------------------------------------------------------------- the CLI
class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2
        print(f"capacity: error: {message}", file=sys.stderr)
        sys.exit(2)


def parse_length(text: str) -> int:
    text = text.strip().upper()
    return int(text[:-1]) * 1024 if text.endswith("K") else int(text)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = _Parser(prog="capacity", description=__doc__.splitlines()[0])
    add = ap.add_argument
    add("--servers", default="stock,zoomr", help="servers to measure, in order, among " + ", ".join(SERVER_FLAGS))
    add("--rows", help="rows to measure among " + ", ".join(r.name for r in ROWS) + " (default: all of --servers')")
    for name, dest in URL_ARGS.items():
        add("--" + dest.replace("_", "-"), dest=dest, help=f"a running {name} server (default: start one here)")
    add("--model-path", help="model folder (default: launch.py's embedded model)")
    add("--load-format", help="e.g. dummy: random weights at the real shapes")
    add("--max-total-tokens", type=int, help="KV pool tokens (default 4 x (prompt + longest output))")
    add("--mem-fraction-static", type=float, help="each server's static memory fraction")
    add("--zoomr-server-flags", default="", help="launch.py flags for the ZoomR servers only, e.g. host store size")
    add("--lengths", default="4K,8K,16K,32K", help="output lengths, comma-separated (K = 1024)")
    add("--prompt-tokens", type=int, default=256)
    add("--requests", type=int, default=32, help="concurrent requests per point")
    add("--vocab", type=int, default=4000, help="prompt ids are drawn below this (and below the model's vocabulary)")
    add("--api", choices=APIS, default="openai", help="how requests stream: /v1/completions or /generate")
    add("--kv-probes", type=int, default=2, help="with --api openai: requests per point streamed over /generate "
        "(ZoomR's per-request meta_info.zoomr)")
    add("--window-from", default="16K", help="lengths from this one on are measured over a window")
    add("--window", type=float, default=120.0, help="seconds measured once the server is full")
    add("--settle", type=float, default=10.0, help="seconds without a new request streaming that mean 'full'")
    add("--max-ramp", type=float, default=300.0, help="most seconds to wait for the server to fill")
    add("--whole-gpu", action="store_true", help="no --max-total-tokens: each server sizes its own pool")
    add("--whole-gpu-length", default="16K")
    add("--whole-gpu-requests", type=int, default=128)
    add("--min-thought", type=int, default=256)
    add("--max-thought", type=int, default=512)
    add("--summary-tokens", type=int, default=32)
    add("--zoom-budget", type=int, default=512)
    add("--zoom-topk", type=int, default=2)
    add("--zoom-interval", type=int, default=16)
    add("--poll", type=float, default=0.5, help="seconds between /metrics reads")
    add("--seed", type=int, default=None, help="prompt seed (default: from the clock, recorded)")
    add("--server-timeout", type=float, default=900.0, help="seconds a server started here may take to be ready")
    add("--out", type=Path, default=REPO / "benchmarks" / "results")
    add("--from-json", type=Path, nargs="+", help="redraw md + png from earlier capacity JSON(s) (several: merged)")
    add("--print-server-argv", choices=sorted(SERVER_FLAGS), help="print that server's launch.py flags and exit")
    args = ap.parse_args(argv)
    try:
        args.lengths = [parse_length(x) for x in args.lengths.split(",") if x.strip()]
        args.window_from = parse_length(args.window_from)
        args.whole_gpu_length = parse_length(args.whole_gpu_length)
    except ValueError as e:
        ap.error(f"a length is not a number: {e}")
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if args.rows is not None:
        args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
        if not args.rows or not set(args.rows) <= {r.name for r in ROWS}:
            ap.error(f"--rows takes names among {', '.join(r.name for r in ROWS)}")
    unknown = [s for s in args.servers if s not in SERVER_FLAGS]
    if unknown or not args.servers or len(set(args.servers)) != len(args.servers):
        ap.error(f"--servers takes distinct names among {', '.join(SERVER_FLAGS)} (got {','.join(args.servers)})")
    for name, dest in URL_ARGS.items():
        if getattr(args, dest) and name not in args.servers:
            ap.error(f"--{dest.replace('_', '-')} given but {name} is not in --servers")
    if not args.lengths or min(args.lengths + [args.whole_gpu_length]) <= 0:
        ap.error("lengths must be positive")
    for name in ("prompt_tokens", "requests", "window", "settle", "max_ramp", "whole_gpu_requests", "min_thought",
                 "max_thought", "summary_tokens", "zoom_budget", "zoom_topk", "zoom_interval", "poll"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be positive")
    if args.min_thought > args.max_thought:
        ap.error("--min-thought must not exceed --max-thought")
    if args.kv_probes < 0:
        ap.error("--kv-probes must not be negative")
    if args.vocab <= 10:
        ap.error("--vocab must exceed 10")
    if args.max_total_tokens is not None and args.max_total_tokens <= 0:
        ap.error("--max-total-tokens must be positive")
    if args.whole_gpu and (args.max_total_tokens or "--max-total-tokens" in extra):
        ap.error("--whole-gpu sizes pools from --mem-fraction-static: no --max-total-tokens")
    if args.mem_fraction_static is not None and not 0 < args.mem_fraction_static < 1:
        ap.error("--mem-fraction-static must be in (0, 1)")
    if args.seed is None:
        args.seed = time.time_ns() % 1_000_000_007
    return args, extra


def _interrupt(*_):
    raise KeyboardInterrupt("SIGTERM")


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.print_server_argv:
        print(shlex.join(server_argv(args.print_server_argv, args, extra)))
        return 0
    if args.from_json:
        try:
            result = capacity_report.merge([json.loads(p.read_text()) for p in args.from_json])
        except (OSError, ValueError, KeyError) as e:
            print(f"capacity: error: cannot read {' '.join(map(str, args.from_json))}: {e}", file=sys.stderr)
            return 2
        print(capacity_report.write(args.out, result, write_json=len(args.from_json) > 1))
        return 0
    previous = signal.signal(signal.SIGTERM, _interrupt)  # e.g. timeout(1): keep the points measured so far
    try:
        result, status = run(args, extra)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(capacity_report.write(args.out, result))
    return status


if __name__ == "__main__":
    sys.exit(main())
