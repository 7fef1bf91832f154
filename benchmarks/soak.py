#!/usr/bin/env python3
"""Soak: many mixed requests against ``launch.py --enable-zoomr`` with a small KV pool and a small host store, then
proof that nothing leaked and the server is healthy.

The mix (seeded; ``--requests`` of them, ``--concurrency`` at a time): long engine-mode generations that close, offload
and recall thoughts (small thoughts, zoom every 4 steps), short ones, ZoomR off or policy ``full``/``summary_only``
per request, streams the client cuts after a few chunks, requests aborted through ``/abort_request`` while they run,
and clients that time out. The pool (``--max-total-tokens``) is small and the host store (``--zoomr-host-store-tokens``)
small enough that its fallback (``--host-fallback``) runs. ZoomR's bounded requests never need a retraction, so the
server started here also retracts one running request every ``--retract-every`` forward steps (SGLang's own
``SGLANG_TEST_RETRACT``): retracted ZoomR requests come back through a full re-prefill and must still finish exactly.

Checked afterwards, each a line of the report and a non-zero exit when it fails: every request that was neither
aborted nor cut off completed with exactly its ``max_new_tokens`` (``ignore_eos``) and no 5xx came back; the
scheduler is idle; after ``/flush_cache`` the allocator has every slot back and the host store holds no block (the
scheduler's own ``/server_info``); ``/health_generate`` answers. Figures: outcomes, retractions (scheduler metric),
host-store drops or refusals, offloads and recalls (ZoomR totals), wall time. Writes ``soak.{json,md,png}`` under
``--out`` (PNG: outcomes, and running requests and pool use over time from ``/metrics``).

    python -m benchmarks.soak [--requests 1000] [--concurrency 24] [--url URL | (starts a server)] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp

try:
    from benchmarks.scheduler_probe import RETRACTED, SchedulerProbe, parse_metrics, wait_idle
except ImportError:  # run as a script
    from scheduler_probe import RETRACTED, SchedulerProbe, parse_metrics, wait_idle

REPO = Path(__file__).resolve().parents[1]
ENGINE = {"zoomr_summary_mode": "engine", "zoomr_min_thought_tokens": 24, "zoomr_max_thought_tokens": 64,
          "zoomr_max_summary_tokens": 8, "zoomr_zoom_interval": 4, "zoomr_zoom_budget": 128, "zoomr_zoom_topk": 2,
          "zoomr_thinking_end": ""}  # thoughts to the end: the embedded model writes </think> at random
PROMPTS = ["Question: Tom has 12 apples and buys 7 more. How many apples now?\n<think>\n",
           "Anna reads 15 pages a day for 4 days.\n<think>\n", "Count: 1 2 3", "Let me think step by step."]
KINDS = ("long", "short", "plain", "full", "summary_only", "cut_stream", "abort", "timeout")
WEIGHTS = (28, 18, 8, 12, 6, 10, 10, 8)


def plan_request(i: int, rng: random.Random) -> dict:
    kind = rng.choices(KINDS, WEIGHTS)[0]
    params = dict(ENGINE)
    n = rng.randint(120, 360) if kind in ("long", "cut_stream", "abort", "timeout") else rng.randint(1, 24)
    if kind == "plain":
        params = {"zoomr_enable": False}
    elif kind in ("full", "summary_only"):  # full: stock accounting, so SGLang over-admits and must retract
        params["zoomr_policy"] = kind
        n = rng.randint(150, 400)
    text = f"Case {i}: " + rng.choice(PROMPTS)
    return {"i": i, "kind": kind, "rid": f"soak-{i}-{rng.random():.9f}", "max_new_tokens": n,
            "body": {"text": text, "sampling_params": {"max_new_tokens": n, "temperature": rng.choice([0, 0.7]),
                                                        "ignore_eos": True, "custom_params": params}},
            "delay": rng.uniform(0.05, 1.5), "chunks": rng.randint(2, 12)}


async def one(session: aiohttp.ClientSession, url: str, req: dict) -> dict:
    body = {**req["body"], "rid": req["rid"]}
    kind, t0 = req["kind"], time.perf_counter()
    out = {"i": req["i"], "kind": kind, "expected": req["max_new_tokens"], "status": None, "tokens": None}
    try:
        if kind == "cut_stream":
            async with session.post(url + "/generate", json={**body, "stream": True}) as r:
                out["status"] = r.status
                seen = 0
                async for line in r.content:
                    if line.startswith(b"data:") and not line.startswith(b"data: [DONE]"):
                        seen += 1
                        if seen >= req["chunks"]:
                            break  # the client goes away mid-stream
            out["outcome"] = "cut"
        elif kind == "abort":
            async def generate():
                async with session.post(url + "/generate", json=body) as r:
                    return r.status, await r.json(content_type=None)

            task = asyncio.create_task(generate())
            await asyncio.sleep(req["delay"])
            async with session.post(url + "/abort_request", json={"rid": req["rid"]}) as a:
                await a.read()
            out["status"], data = await task
            tokens = data.get("meta_info", {}).get("completion_tokens") if isinstance(data, dict) else None
            out["tokens"] = tokens
            out["outcome"] = "aborted" if tokens != req["max_new_tokens"] else "finished_before_abort"
        elif kind == "timeout":
            try:
                async with session.post(url + "/generate", json=body,
                                        timeout=aiohttp.ClientTimeout(total=req["delay"])) as r:
                    out["status"] = r.status
                    data = await r.json(content_type=None)
                    out["tokens"] = data["meta_info"]["completion_tokens"]
                    out["outcome"] = "completed"
            except asyncio.TimeoutError:
                out["outcome"] = "client_timeout"
        else:
            async with session.post(url + "/generate", json=body) as r:
                out["status"] = r.status
                data = await r.json(content_type=None)
            out["tokens"] = data["meta_info"]["completion_tokens"] if r.status == 200 else None
            out["outcome"] = "completed" if r.status == 200 else "error"
    except aiohttp.ClientError as e:
        out["outcome"], out["error"] = "client_error", f"{type(e).__name__}: {e}"[:200]
    out["latency_s"] = time.perf_counter() - t0
    return out


async def server_state(session: aiohttp.ClientSession, url: str) -> dict:
    async with session.get(url + "/server_info") as r:
        info = await r.json()
    return info["internal_states"][0]["zoomr"]["manager"]


async def soak(url: str, args) -> dict:
    rng = random.Random(args.seed)
    plans = [plan_request(i, rng) for i in range(args.requests)]
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        async with session.post(url + "/flush_cache?timeout=60") as r:
            assert r.status == 200, await r.text()
        await wait_idle(session, url)
        start = await server_state(session, url)
        async with session.get(url + "/metrics") as r:
            before = parse_metrics(await r.text())
        probe = SchedulerProbe(session, url, 0.5)
        probe.start()
        gate = asyncio.Semaphore(args.concurrency)
        done = 0
        t0 = time.perf_counter()

        async def guarded(req):
            nonlocal done
            async with gate:
                result = await one(session, url, req)
            done += 1
            if done % max(1, args.requests // 20) == 0:
                print(f"soak: {done}/{args.requests} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
            return result

        results = await asyncio.gather(*(guarded(p) for p in plans))
        wall = time.perf_counter() - t0
        await probe.stop()
        await wait_idle(session, url, timeout=300)
        async with session.get(url + "/metrics") as r:
            after = parse_metrics(await r.text())
        idle = await server_state(session, url)
        async with session.post(url + "/flush_cache?timeout=60") as r:
            flushed = r.status == 200
        await wait_idle(session, url)
        end = await server_state(session, url)
        async with session.get(url + "/health_generate") as r:
            healthy = r.status == 200
    samples = [{"t": s.t - t0, "running": s.running, "token_usage": s.token_usage} for s in probe.samples]
    return {"results": results, "wall_s": wall, "start": start, "idle": idle, "end": end, "flushed": flushed,
            "healthy": healthy, "retractions": after.get(RETRACTED, 0.0) - before.get(RETRACTED, 0.0),
            "samples": samples}


def checks(run: dict) -> dict[str, bool]:
    res = run["results"]
    must_finish = [r for r in res if r["kind"] in ("long", "short", "plain", "full", "summary_only")]
    return {
        "every request that ran to its end has its exact token count":
            all(r["outcome"] == "completed" and r["tokens"] == r["expected"] for r in must_finish),
        "no 5xx": all(r["status"] is None or r["status"] < 500 for r in res),
        "no client error": not any(r["outcome"] == "client_error" for r in res),
        "scheduler idle afterwards": run["idle"]["running_requests"] == 0,
        "every slot back after /flush_cache": run["flushed"]
            and run["end"]["allocator_available"] == run["start"]["allocator_available"],
        "host store empty after /flush_cache": run["end"]["host_store"]["used_tokens"] == 0
            and run["end"]["host_store"]["blocks"] == 0,
        "/health_generate answers": run["healthy"],
    }


def report(run: dict, meta: dict) -> str:
    res = run["results"]
    outcomes = Counter(f"{r['kind']}: {r['outcome']}" for r in res)
    totals = run["end"]["totals"]
    host = run["end"]["host_store"]
    lines = [f"# Soak: {meta['requests']} mixed requests, {meta['concurrency']} at a time ({meta['model']}, "
             f"{meta['device']}, {meta['date']})", "",
             f"KV pool {meta['pool_tokens']:,} tokens, host store {host['capacity_tokens']:,} tokens "
             f"(fallback {meta['host_fallback']}), a forced retraction every {meta['retract_every']} forward steps, "
             f"seed {meta['seed']}; wall {run['wall_s']:.0f} s.", "",
             "| check | result |", "|---|---|"]
    lines += [f"| {name} | {'pass' if ok else 'FAIL'} |" for name, ok in checks(run).items()]
    lines += ["", "| figure | value |", "|---|---|",
              f"| retractions (scheduler) | {run['retractions']:.0f} |",
              f"| offloaded tokens / recalls / evictions | {totals.get('offloaded_tokens', 0):,} / "
              f"{totals.get('recalls', 0):,} / {totals.get('evictions', 0):,} |",
              f"| recalls trimmed for room | {totals.get('recalls_trimmed', 0):,} |",
              f"| host store: dropped tokens / refused allocations | {host['dropped_tokens']:,} / {host['refused']:,} |",
              "", "| request kind: outcome | count |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(outcomes.items())]
    return "\n".join(lines) + "\n"


def write(out: Path, run: dict, meta: dict) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps({"meta": meta, "checks": checks(run), **run}, indent=1))
    text = report(run, meta)
    (out / "soak.md").write_text(text)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("soak: no matplotlib here: no PNG", file=sys.stderr)
        return text
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    outcomes = Counter(r["outcome"] for r in run["results"])
    a.barh(list(outcomes), list(outcomes.values()), color="tab:blue")
    a.set_title("request outcomes")
    t = [s["t"] for s in run["samples"]]
    b.plot(t, [s["running"] for s in run["samples"]], label="running requests")
    b2 = b.twinx()
    b2.plot(t, [100 * s["token_usage"] for s in run["samples"]], color="tab:orange", label="pool use %")
    b.set_xlabel("s")
    b.set_title("scheduler: running requests (blue), KV pool use % (orange)")
    fig.tight_layout()
    fig.savefig(out / "soak.png", dpi=110)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="soak", description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running launch.py --enable-zoomr server with --enable-metrics")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=24)
    ap.add_argument("--pool-tokens", type=int, default=2048, help="--max-total-tokens of the server started here")
    ap.add_argument("--host-store-tokens", type=int, default=1024)
    ap.add_argument("--host-fallback", default="drop_oldest", choices=("drop_oldest", "keep_on_device"))
    ap.add_argument("--retract-every", type=int, default=40,
                    help="the server started here also retracts a running request every this many forward steps "
                         "(SGLang's SGLANG_TEST_RETRACT); 0: only when the pool runs out")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    if args.requests <= 0 or args.concurrency <= 0 or args.pool_tokens <= 0 or args.host_store_tokens <= 0:
        print("soak: error: --requests, --concurrency, --pool-tokens and --host-store-tokens must be positive",
              file=sys.stderr)
        return 2
    server = None
    if args.url is None:
        sys.path.insert(0, str(REPO))
        from tests.server_process import ServerProcess

        env = {"SGLANG_TEST_RETRACT": "1", "SGLANG_TEST_RETRACT_INTERVAL": str(args.retract_every)} \
            if args.retract_every > 0 else None
        server = ServerProcess.start(["--enable-zoomr", "--enable-metrics", "--max-total-tokens", str(args.pool_tokens),
                                      "--zoomr-host-store-tokens", str(args.host_store_tokens),
                                      "--zoomr-host-full-fallback", args.host_fallback], env=env)
        url = server.url
    else:
        url = args.url.rstrip("/")
    try:
        run = asyncio.run(soak(url, args))
        import requests

        info = requests.get(url + "/server_info", timeout=60).json()
    finally:
        if server is not None:
            server.stop()
    meta = {"requests": args.requests, "concurrency": args.concurrency, "seed": args.seed,
            "retract_every": args.retract_every if server is not None else None,
            "pool_tokens": info.get("max_total_num_tokens"), "host_fallback": args.host_fallback,
            "model": Path(str(info.get("model_path"))).name, "device": info.get("device"),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    print(write(args.out, run, meta))
    return 0 if all(checks(run).values()) else 1


if __name__ == "__main__":
    sys.exit(main())
