"""Device KV per request against output length, ZoomR against full KV and summary-only, in one run.

Runs one long engine-mode generation per policy against a server started with ``launch.py --enable-zoomr``
(started here on the embedded model unless ``--url`` is given), streams it, and records at every step the device KV
tokens the request holds (measured from its ``req_to_token`` row by the server) next to what full KV would hold.
Prints a table, writes ``memory_vs_length.json``, ``.md`` and ``.png`` under ``--out``. "Full" in the table is the
KV a request of the same length holds with full attention (prompt + output), read from the same stats; the ``full``
policy row measures it.

    .venv/bin/python -m benchmarks.memory_vs_length [--url URL] [--tokens 4000] [--out benchmarks/results]
        [--policies full,zoomr,summary_only] [--min-thought 48 --max-thought 160 --summary-tokens 12
         --zoom-budget 256 --zoom-topk 2 --zoom-interval 8] [--stream-interval 1]

Long generations (32K): SGLang's ``/generate`` stream sends the whole output so far in every chunk, so give the
server it starts ``--stream-interval 64`` (one record every 64 tokens; a server of your own: its
``--stream-interval``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import requests

POLICIES = ("full", "zoomr", "summary_only")
QUESTION = "Question: a shop sells 12 boxes of 7 pens and 5 boxes of 9 pens. How many pens?\n<think>\n"


def engine_params(policy: str, args: argparse.Namespace) -> dict:
    return {"zoomr_policy": policy, "zoomr_summary_mode": "engine", "zoomr_min_thought_tokens": args.min_thought,
            "zoomr_max_thought_tokens": args.max_thought, "zoomr_max_summary_tokens": args.summary_tokens,
            "zoomr_zoom_budget": args.zoom_budget, "zoomr_zoom_topk": args.zoom_topk,
            "zoomr_zoom_interval": args.zoom_interval,
            "zoomr_thinking_end": ""}  # all reasoning: the embedded model writes </think> at random


def trace(url: str, policy: str, args: argparse.Namespace) -> list[dict]:
    payload = {"text": QUESTION, "stream": True,
               "sampling_params": {"max_new_tokens": args.tokens, "temperature": 0, "ignore_eos": True,
                                   "custom_params": engine_params(policy, args)}}
    steps = []
    with requests.post(url + "/generate", json=payload, stream=True, timeout=3600) as r:
        if r.status_code != 200:
            raise SystemExit(f"memory_vs_length: {policy}: HTTP {r.status_code}: {r.text[:200]}")
        for line in r.iter_lines():
            if line.startswith(b"data:") and line.strip() != b"data: [DONE]":
                z = json.loads(line[5:])["meta_info"].get("zoomr")
                if z:
                    steps.append({k: z[k] for k in ("full_kv_tokens", "device_kv_tokens", "thoughts", "zoom_recalls",
                                                    "offloaded_tokens", "peak_device_kv_tokens") if k in z})
                    if len(steps) % 100 == 0:
                        print(f"  {policy}: {len(steps)} steps", file=sys.stderr, flush=True)
    return steps


def summarize(traces: dict[str, list[dict]]) -> list[dict]:
    base = next(iter(traces.values()))[-1]["full_kv_tokens"]  # prompt + output: what full attention holds
    rows = []
    for policy, steps in traces.items():
        last = steps[-1]
        # the server's own peak (every step), else the largest record (every stream chunk)
        peak = max(last.get("peak_device_kv_tokens", 0), *(s["device_kv_tokens"] for s in steps))
        rows.append({"policy": policy, "output_kv_tokens": last["full_kv_tokens"], "device_kv_tokens": last["device_kv_tokens"],
                     "peak_device_kv_tokens": peak, "reduction_vs_full": round(base / max(last["device_kv_tokens"], 1), 2),
                     "peak_reduction_vs_full": round(base / max(peak, 1), 2),
                     "thoughts": last["thoughts"], "zoom_recalls": last["zoom_recalls"]})
    return rows


def write(out: Path, meta: dict, traces: dict, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    every_10th = {p: steps[::10] + steps[-1:] for p, steps in traces.items()}  # keeps the file small
    (out / "memory_vs_length.json").write_text(json.dumps({"meta": meta, "summary": rows, "traces_every_10th": every_10th}))
    head = ("| policy | KV tokens written | device KV at end | peak device KV | full / device at end | full / peak | "
            "thoughts | recalls |")
    settings = ", ".join(f"`{k}`: {v!r}" for k, v in meta["engine_settings"].items() if k != "zoomr_policy")
    lines = [f"Device KV per request ({meta['model']}, {meta['date']}, {meta['machine']})", "",
             f"One greedy `ignore_eos` generation of {meta['tokens']:,} tokens per policy; engine settings: {settings}; "
             f"stream interval {meta['stream_interval']}.", "", head, "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['policy']} | {r['output_kv_tokens']} | {r['device_kv_tokens']} | {r['peak_device_kv_tokens']} | "
              f"{r['reduction_vs_full']}x | {r['peak_reduction_vs_full']}x | {r['thoughts']} | {r['zoom_recalls']} |"
              for r in rows]
    (out / "memory_vs_length.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(7, 4))
    for policy, steps in traces.items():
        ax.plot([s["full_kv_tokens"] for s in steps], [s["device_kv_tokens"] for s in steps], label=policy)
    ax.set_xlabel("tokens in the sequence (prompt + output)")
    ax.set_ylabel("device KV tokens held by the request")
    ax.set_title(f"Device KV per request as reasoning grows ({meta['model']}, engine mode)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "memory_vs_length.png", dpi=120)
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running launch.py --enable-zoomr server (default: start one here)")
    ap.add_argument("--tokens", type=int, default=4000, help="output tokens per generation")
    ap.add_argument("--policies", default=",".join(POLICIES), help="comma-separated, among " + ", ".join(POLICIES))
    ap.add_argument("--min-thought", type=int, default=48)
    ap.add_argument("--max-thought", type=int, default=160)
    ap.add_argument("--summary-tokens", type=int, default=12)
    ap.add_argument("--zoom-budget", type=int, default=256)
    ap.add_argument("--zoom-topk", type=int, default=2)
    ap.add_argument("--zoom-interval", type=int, default=8)
    ap.add_argument("--stream-interval", type=int, default=1, help="the started server's --stream-interval")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    sizes = ("tokens", "min_thought", "max_thought", "summary_tokens", "zoom_budget", "zoom_topk", "zoom_interval",
             "stream_interval")
    bad = [f"--{n.replace('_', '-')}" for n in sizes if getattr(args, n) <= 0]
    why = None
    if bad:
        why = f"{', '.join(bad)} must be positive"
    elif args.min_thought > args.max_thought:
        why = "--min-thought must not exceed --max-thought"
    elif not policies or not set(policies) <= set(POLICIES):
        why = f"--policies takes names among {', '.join(POLICIES)}"
    if why:
        print(f"memory_vs_length: {why}", file=sys.stderr)
        return 2
    server = None
    if args.url is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.server_process import ServerProcess

        print("starting launch.py --enable-zoomr on the embedded model", file=sys.stderr)
        server = ServerProcess.start(["--enable-zoomr", "--stream-interval", str(args.stream_interval)])
        url = server.url
    else:
        url = args.url.rstrip("/")
    try:
        info = requests.get(url + "/server_info", timeout=30).json()
        traces = {}
        for policy in policies:
            print(f"{policy}: generating {args.tokens} tokens", file=sys.stderr, flush=True)
            traces[policy] = trace(url, policy, args)
    except requests.RequestException as e:
        print(f"memory_vs_length: cannot reach {url}: {e}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.stop()
    meta = {"model": Path(info["model_path"]).name, "device": info.get("device"), "date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()} {info.get('device')}", "sglang": info.get("version"),
            "engine_settings": engine_params("zoomr", args), **{n: getattr(args, n) for n in sizes},
            "stream_interval": info.get("stream_interval", args.stream_interval)}  # the server's own, over the flag's
    write(args.out, meta, traces, summarize(traces))
    return 0


if __name__ == "__main__":
    sys.exit(main())
