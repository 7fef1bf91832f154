#!/usr/bin/env python3
"""Long engine-mode generations served by ``launch.py --enable-zoomr``: full KV against ZoomR, in one run.

Starts one server (``--model-path``, default the embedded model; extra SGLang flags after ``--``), or uses
``--url``, and for each policy sends ``--batch`` concurrent requests of ``--prompt-tokens`` random prompt ids and
``--tokens`` output tokens (``ignore_eos``), all with the same engine-mode ZoomR settings. The policy is a per-request
override (``custom_params.zoomr_policy``), so both passes run on the same server, model, graphs and pool; ``full``
attends every token (the plan is stock FlashInfer's, no holes) and is the baseline. Per request the server reports
its peak device KV tokens (``meta_info.zoomr``); per pass this records wall time and output tokens per second.
Prints a table, writes ``serve_long.{json,md,png}`` under ``--out``.

    python benchmarks/serve_long.py --model-path DIR --load-format dummy --batch 8 --tokens 4096 [-- SGLANG FLAGS]
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
POLICIES = ("full", "zoomr")


def engine_params(policy: str, args) -> dict:
    return {"zoomr_policy": policy, "zoomr_summary_mode": "engine", "zoomr_min_thought_tokens": args.min_thought,
            "zoomr_max_thought_tokens": args.max_thought, "zoomr_max_summary_tokens": args.summary_tokens,
            "zoomr_zoom_budget": args.zoom_budget, "zoomr_zoom_topk": 2, "zoomr_zoom_interval": 16,
            "zoomr_thinking_end": ""}  # random weights: the whole generation is reasoning


def one_request(url: str, ids: list[int], policy: str, args) -> dict:
    payload = {"input_ids": ids, "sampling_params": {"max_new_tokens": args.tokens, "temperature": 0,
                                                     "ignore_eos": True, "custom_params": engine_params(policy, args)}}
    t0 = time.perf_counter()
    r = requests.post(url + "/generate", json=payload, timeout=3600)
    if r.status_code != 200:
        raise RuntimeError(f"{policy}: HTTP {r.status_code}: {r.text[:300]}")
    meta = r.json()["meta_info"]
    z = meta["zoomr"]
    return {"latency_s": time.perf_counter() - t0, "output_tokens": meta["completion_tokens"],
            **{k: z[k] for k in ("peak_device_kv_tokens", "device_kv_tokens", "full_kv_tokens", "thoughts",
                                 "offloaded_tokens", "zoom_recalls", "forced_markers")}}


def run_pass(url: str, policy: str, prompts: list[list[int]], args) -> dict:
    t0 = time.perf_counter()
    pool = ThreadPoolExecutor(len(prompts))
    try:
        reqs = list(pool.map(lambda ids: one_request(url, ids, policy, args), prompts))
    finally:  # interrupted: do not wait for the requests here; stopping the server ends them
        pool.shutdown(wait=False, cancel_futures=True)
    wall = time.perf_counter() - t0
    out = sum(r["output_tokens"] for r in reqs)
    mean = lambda key: sum(r[key] for r in reqs) / len(reqs)  # noqa: E731
    return {"policy": policy, "requests": len(reqs), "wall_s": wall, "output_tok_per_s": out / wall,
            "peak_device_kv_tokens": max(r["peak_device_kv_tokens"] for r in reqs),
            "full_kv_tokens": max(r["full_kv_tokens"] for r in reqs), "mean_thoughts": mean("thoughts"),
            "mean_zoom_recalls": mean("zoom_recalls"), "mean_offloaded_tokens": mean("offloaded_tokens"),
            "per_request": reqs}


def write(out: Path, result: dict) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_long.json").write_text(json.dumps(result, indent=1))
    m, rows = result["meta"], result["passes"]
    base = next(r for r in rows if r["policy"] == "full")
    lines = [f"# Long engine-mode generations ({m['model']}, {m['gpu']}, {m['date']})", "",
             f"sglang {m['sglang']}"
             + "".join(f", {k} {v}" for k, v in m.get("versions", {}).items())
             + f"; {m['batch']} concurrent requests x ({m['prompt_tokens']} prompt + {m['tokens']} "
             f"output tokens); ZoomR settings: {json.dumps(m['zoomr'])}.", "",
             "| policy | output tok/s | x full | peak device KV / request | full KV / request | KV reduction | "
             "thoughts | offloaded / request | recalls |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {r['output_tok_per_s']:.0f} | {r['output_tok_per_s'] / base['output_tok_per_s']:.2f} | "
            f"{r['peak_device_kv_tokens']} | {r['full_kv_tokens']} | "
            f"{base['peak_device_kv_tokens'] / max(r['peak_device_kv_tokens'], 1):.2f}x | {r['mean_thoughts']:.0f} | "
            f"{r['mean_offloaded_tokens']:.0f} | {r['mean_zoom_recalls']:.0f} |")
    table = "\n".join(lines) + "\n"
    (out / "serve_long.md").write_text(table)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.8))
        names = [r["policy"] for r in rows]
        colors = [{"full": "gray", "zoomr": "tab:blue"}.get(n, "tab:orange") for n in names]  # baseline gray
        a.bar(names, [r["peak_device_kv_tokens"] for r in rows], color=colors)
        a.set_title("peak device KV tokens per request")
        b.bar(names, [r["output_tok_per_s"] for r in rows], color=colors)
        b.set_title("output tokens / s (all requests)")
        fig.suptitle(f"{m['model']} on {m['gpu']}: {m['batch']} x {m['tokens']} tokens, engine mode")
        fig.tight_layout()
        fig.savefig(out / "serve_long.png", dpi=120)
    except ImportError:
        print("no matplotlib here: no PNG", file=sys.stderr)
    return table


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running launch.py --enable-zoomr server (default: start one here)")
    ap.add_argument("--model-path", help="model folder (default: the embedded model)")
    ap.add_argument("--load-format", help="e.g. dummy: random weights at the real shapes")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--min-thought", type=int, default=128)
    ap.add_argument("--max-thought", type=int, default=512)
    ap.add_argument("--summary-tokens", type=int, default=32)
    ap.add_argument("--zoom-budget", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=4000, help="prompt ids are drawn below this")
    ap.add_argument("--policies", default=",".join(POLICIES), help="passes, in order (full is the baseline)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--from-json", type=Path, help="redraw the table and PNG of an earlier run's serve_long.json")
    args = ap.parse_args(argv)
    if args.from_json:
        try:
            result = json.loads(args.from_json.read_text())
        except (OSError, ValueError) as e:
            print(f"serve_long: cannot read {args.from_json}: {e}", file=sys.stderr)
            return 2
        print(write(args.out, result))
        return 0
    policies = [p for p in args.policies.split(",") if p]
    if "full" not in policies or not set(policies) <= {"full", "zoomr", "summary_only"}:
        print("serve_long: --policies must list full and any of zoomr, summary_only", file=sys.stderr)
        return 2
    for name in ("batch", "prompt_tokens", "tokens", "min_thought", "max_thought", "summary_tokens", "zoom_budget"):
        if getattr(args, name) <= 0:
            print(f"serve_long: --{name.replace('_', '-')} must be positive", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))  # e.g. timeout(1): stop the server, keep its log
    server = None
    if args.url is None:
        sys.path.insert(0, str(REPO))
        from tests.server_process import ServerProcess

        server_args = ["--enable-zoomr"] + extra
        if args.model_path:
            server_args += ["--model-path", args.model_path]
        if args.load_format:
            server_args += ["--load-format", args.load_format]
        t0 = time.perf_counter()
        server = ServerProcess.start(server_args, timeout=900)
        ready_s = time.perf_counter() - t0
        url = server.url
        print(f"server ready in {ready_s:.0f} s", file=sys.stderr, flush=True)
    else:
        url, ready_s = args.url.rstrip("/"), None
    try:
        info = requests.get(url + "/server_info", timeout=30).json()
        rng = random.Random(time.time_ns())  # fresh prompts every run; both policies get the same ones
        prompts = [[rng.randrange(10, args.vocab) for _ in range(args.prompt_tokens)] for _ in range(args.batch)]
        passes = []
        for policy in policies:
            print(f"{policy}: {args.batch} x {args.tokens} tokens", file=sys.stderr, flush=True)
            passes.append(run_pass(url, policy, prompts, args))
            print(f"  {passes[-1]['output_tok_per_s']:.0f} tok/s, peak device KV {passes[-1]['peak_device_kv_tokens']}",
                  file=sys.stderr, flush=True)
    finally:
        if server is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "serve_long_server.log").write_text(server.log_text())  # the server's side of the run
            server.stop()
    try:
        import torch

        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    except ImportError:
        gpu = "?"
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("torch", "triton", "flashinfer-python"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    meta = {"model": Path(info["model_path"]).name, "gpu": gpu, "sglang": info.get("version"),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "batch": args.batch,
            "prompt_tokens": args.prompt_tokens, "tokens": args.tokens, "server_ready_s": ready_s,
            "server_flags": extra, "versions": versions, "max_total_num_tokens": info.get("max_total_num_tokens"),
            "zoomr": {k: v for k, v in engine_params("zoomr", args).items() if k != "zoomr_policy"}}
    print(write(args.out, {"meta": meta, "passes": passes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
