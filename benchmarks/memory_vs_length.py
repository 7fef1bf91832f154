"""Device KV per request against output length, ZoomR against full KV and summary-only, in one run.

Runs one long engine-mode generation per policy against a server started with ``launch.py --enable-zoomr``
(started here on the embedded model unless ``--url`` is given), streams it, and records at every step the device KV
tokens the request holds (measured from its ``req_to_token`` row by the server) next to what full KV would hold.
Prints a table, writes ``memory_vs_length.json``, ``.md`` and ``.png`` under ``--out``.

    .venv/bin/python -m benchmarks.memory_vs_length [--url URL] [--tokens 4000] [--out benchmarks/results]
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


def engine_params(policy: str, zoom_budget: int) -> dict:
    return {"zoomr_policy": policy, "zoomr_summary_mode": "engine", "zoomr_min_thought_tokens": 48,
            "zoomr_max_thought_tokens": 160, "zoomr_max_summary_tokens": 12, "zoomr_zoom_budget": zoom_budget,
            "zoomr_zoom_topk": 2, "zoomr_zoom_interval": 8,
            "zoomr_thinking_end": ""}  # all reasoning: the embedded model writes </think> at random


def trace(url: str, policy: str, tokens: int, zoom_budget: int) -> list[dict]:
    payload = {"text": QUESTION, "stream": True,
               "sampling_params": {"max_new_tokens": tokens, "temperature": 0, "ignore_eos": True,
                                   "custom_params": engine_params(policy, zoom_budget)}}
    steps = []
    with requests.post(url + "/generate", json=payload, stream=True, timeout=3600) as r:
        if r.status_code != 200:
            raise SystemExit(f"memory_vs_length: {policy}: HTTP {r.status_code}: {r.text[:200]}")
        for line in r.iter_lines():
            if line.startswith(b"data:") and line.strip() != b"data: [DONE]":
                z = json.loads(line[5:])["meta_info"].get("zoomr")
                if z:
                    steps.append({k: z[k] for k in ("full_kv_tokens", "device_kv_tokens", "thoughts", "zoom_recalls",
                                                    "offloaded_tokens")})
                    if len(steps) % 500 == 0:
                        print(f"  {policy}: {len(steps)} steps", file=sys.stderr, flush=True)
    return steps


def summarize(traces: dict[str, list[dict]]) -> list[dict]:
    base = traces["full"][-1]["device_kv_tokens"]
    rows = []
    for policy, steps in traces.items():
        last = steps[-1]
        peak = max(s["device_kv_tokens"] for s in steps)
        rows.append({"policy": policy, "output_kv_tokens": last["full_kv_tokens"], "device_kv_tokens": last["device_kv_tokens"],
                     "peak_device_kv_tokens": peak, "reduction_vs_full": round(base / max(last["device_kv_tokens"], 1), 2),
                     "thoughts": last["thoughts"], "zoom_recalls": last["zoom_recalls"]})
    return rows


def write(out: Path, meta: dict, traces: dict, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    every_10th = {p: steps[::10] + steps[-1:] for p, steps in traces.items()}  # keeps the file small
    (out / "memory_vs_length.json").write_text(json.dumps({"meta": meta, "summary": rows, "traces_every_10th": every_10th}))
    head = "| policy | KV tokens written | device KV at end | peak device KV | full / device | thoughts | recalls |"
    lines = [f"Device KV per request ({meta['model']}, {meta['date']}, {meta['machine']})", "", head,
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['policy']} | {r['output_kv_tokens']} | {r['device_kv_tokens']} | {r['peak_device_kv_tokens']} | "
              f"{r['reduction_vs_full']}x | {r['thoughts']} | {r['zoom_recalls']} |" for r in rows]
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
    ap.add_argument("--zoom-budget", type=int, default=256)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    if args.tokens <= 0 or args.zoom_budget <= 0:
        print("memory_vs_length: --tokens and --zoom-budget must be positive", file=sys.stderr)
        return 2
    server = None
    if args.url is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.server_process import ServerProcess

        print("starting launch.py --enable-zoomr on the embedded model", file=sys.stderr)
        server = ServerProcess.start(["--enable-zoomr"])
        url = server.url
    else:
        url = args.url.rstrip("/")
    try:
        info = requests.get(url + "/server_info", timeout=30).json()
        traces = {}
        for policy in POLICIES:
            print(f"{policy}: generating {args.tokens} tokens", file=sys.stderr, flush=True)
            traces[policy] = trace(url, policy, args.tokens, args.zoom_budget)
    except requests.RequestException as e:
        print(f"memory_vs_length: cannot reach {url}: {e}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.stop()
    meta = {"model": Path(info["model_path"]).name, "device": info.get("device"), "date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()} {info.get('device')}", "tokens": args.tokens, "zoom_budget": args.zoom_budget,
            "sglang": info.get("version")}
    write(args.out, meta, traces, summarize(traces))
    return 0


if __name__ == "__main__":
    sys.exit(main())
