#!/usr/bin/env python3
"""The capacity benchmark's client ceiling: how many SGLang-shaped stream chunks per second its client takes in.

Why: at 16K outputs the capacity benchmark's clients received 61% of the tokens ZoomR's scheduler generated. This
tells apart the two suspects: if the client (``benchmarks/stream_client.stream_one``, the code the benchmark runs)
takes in far more chunks per second than the scheduler produced, the shortfall is SGLang's HTTP side.

A local aiohttp server (its own process) streams, per request, chunks shaped as SGLang 0.5.17's default streaming
``/generate`` sends them: each carries the whole text so far, every output id so far and ``meta_info`` with ZoomR's
stats; ``--streams`` requests at once, each from ``--start`` to ``--end`` cumulative ids. Reported per ``--start``:
chunks per second the client took in and the MB/s that was. Writes ``client_ceiling.{json,md,png}`` under ``--out``.

    python -m benchmarks.client_ceiling [--streams 22] [--starts 2000,8000,16000] [--chunks 400]
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reasoner.cli import OneLineParser  # noqa: E402

STATS = ("policy thoughts offloaded_tokens device_kv_tokens offloading_tokens peak_device_kv_tokens "
         "mean_device_kv_tokens full_kv_tokens detail_tokens zoom_tokens zoom_recalls zoom_evictions dropped_tokens "
         "forced_markers summary_tokens prompt_tokens reused_host_tokens thoughts_from_tree demoted_tokens "
         "kept_shared_tokens recalls_trimmed").split()


def _serve(port: int, start: int, chunks: int) -> None:
    import orjson
    from aiohttp import web

    zoomr = {k: 1234 for k in STATS}

    async def generate(request):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        ids = [i % 4000 for i in range(start)]
        text = "word " * start
        for k in range(start, start + chunks):
            ids.append(k % 4000)
            text += "word "
            body = {"text": text, "output_ids": ids, "meta_info": {
                "id": "x", "finish_reason": None, "prompt_tokens": 256, "completion_tokens": k + 1, "zoomr": zoomr}}
            await resp.write(b"data: " + orjson.dumps(body) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/generate", generate)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


async def _client(url: str, streams: int) -> tuple[int, float, list[str]]:
    import aiohttp

    from benchmarks.stream_client import RequestTrace, stream_one

    traces = [RequestTrace() for _ in range(streams)]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*[stream_one(session, url, "generate", [], {}, tr) for tr in traces])
        seconds = time.perf_counter() - t0
    return sum(len(t.tokens) for t in traces), seconds, [t.error for t in traces if t.error]


def measure(start: int, streams: int, chunks: int) -> dict:
    from tests.server_process import free_port

    port = free_port()
    server = mp.get_context("spawn").Process(target=_serve, args=(port, start, chunks), daemon=True)
    server.start()
    try:
        import requests

        deadline = time.monotonic() + 30
        while True:  # the server answers once it is up
            try:
                requests.post(f"http://127.0.0.1:{port}/generate", timeout=5, stream=True).close()
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise RuntimeError("the stream server did not start") from None
                time.sleep(0.2)
        n, seconds, errors = asyncio.run(_client(f"http://127.0.0.1:{port}", streams))
    finally:
        server.terminate()
        server.join(10)
    chunk_bytes = len(json.dumps({"text": "word " * start, "output_ids": list(range(start))}))
    return {"start_ids": start, "streams": streams, "chunks": n, "seconds": round(seconds, 3),
            "chunks_per_s": round(n / seconds), "mb_per_s": round(n * chunk_bytes / seconds / 1e6, 1),
            "errors": errors[:3]}


def write(out: Path, meta: dict, rows: list[dict]) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "client_ceiling.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [f"# The capacity client's ceiling ({meta['machine']}, {meta['date']})", "",
             f"{meta['streams']} concurrent SGLang-shaped streams (whole text and every output id so far in each "
             f"chunk), {meta['chunks']} chunks each, taken in by `benchmarks/stream_client.stream_one`; the server "
             "is a local aiohttp process on the same host.", "",
             "| cumulative ids per chunk | chunks / s taken in | MB / s |", "|---|---|---|"]
    lines += [f"| {r['start_ids']:,} | {r['chunks_per_s']:,} | {r['mb_per_s']:,} |" for r in rows]
    md = "\n".join(lines) + "\n"
    (out / "client_ceiling.md").write_text(md)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar([f"{r['start_ids'] // 1000}K" for r in rows], [r["chunks_per_s"] for r in rows])
        ax.set_xlabel("cumulative output ids per chunk")
        ax.set_ylabel("chunks / s the client takes in")
        ax.set_title(f"capacity client ceiling, {meta['streams']} streams ({meta['machine']})", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "client_ceiling.png", dpi=120)
        plt.close(fig)
    except ImportError:
        print("client_ceiling: no matplotlib here: no PNG", file=sys.stderr)
    return md


def main(argv=None) -> int:
    ap = OneLineParser("client_ceiling", prog="python -m benchmarks.client_ceiling",
                       description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=22)
    ap.add_argument("--starts", default="2000,8000,16000")
    ap.add_argument("--chunks", type=int, default=400)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    try:
        starts = [int(x) for x in args.starts.split(",") if x]
    except ValueError:
        ap.error(f"--starts must be comma-separated integers, got {args.starts!r}")
    if args.streams <= 0 or args.chunks <= 0 or not starts or min(starts) < 0:
        ap.error("--streams, --chunks and --starts must be positive")
    rows = [measure(s, args.streams, args.chunks) for s in starts]
    meta = {"machine": f"{platform.machine()}, {mp.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
            "streams": args.streams, "chunks": args.chunks, "python": platform.python_version()}
    print(write(args.out, meta, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
