#!/usr/bin/env python3
"""SentenceKV's yardstick: long prompts, short outputs. Device KV per request and the decode step, ``sentencekv``
against full KV on the same ZoomR server and against stock SGLang with its default flags, in one run.

Rows: ``stock`` (``launch.py`` without ZoomR), ``full`` and ``sentencekv`` (policies sent per request to one
``launch.py --enable-zoomr`` server, same pool). Per prompt length of ``--prompt-lengths`` every row gets the same
``--batch`` prompts: records text (``reasoner.tasks``' long-prompt family, one sentence per record), tokenized by the
server and cut to exactly that many tokens; greedy ``ignore_eos`` streamed ``/generate`` calls of ``--output``
tokens, all sent at once and run to completion (``benchmarks/capacity_point.py``). Recorded per point: the time
between tokens (p50 is the decode step at that batch, the prefills being the slow tail), output tok/s, device KV per
request averaged over its decode steps (ZoomR rows: ``meta_info.zoomr.mean_device_kv_tokens``; stock: full KV) and
at its peak (for ``sentencekv`` the prompt is whole on the device until its first zoom), zoom recalls, the
scheduler's figures. ``sentencekv`` runs with ``--sentence-budget`` tokens of sentences recalled at once (zoom
buffer: that plus 256), ``--sink``/``--recent`` prompt tokens always attended, a zoom every ``--zoom-interval`` steps.
Writes ``long_prompts.{json,md,png}`` under ``--out``: ratios to ``full`` and ``stock`` at the same length, GPU,
versions, date, every argument and each server's non-default SGLang settings. Servers: attached (``--url-stock``,
``--url-zoomr``) or started here one at a time (``benchmarks/capacity.py``'s launcher). Bad input: one line
``long_prompts: error: ...``, status 2.

    python -m benchmarks.long_prompts [--prompt-lengths 4K,16K,32K] [--batch 16] [--url-zoomr URL] [-- SGLANG FLAGS]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import capacity, capacity_report  # noqa: E402
from benchmarks.capacity_point import PointPlan, measure_point  # noqa: E402
from reasoner.tasks import _records  # noqa: E402

ROWS = (("stock", "stock", None), ("full", "zoomr", "full"), ("sentencekv", "zoomr", "sentencekv"))
MARKER_SHARE = 256  # zoom buffer left to output thoughts beside the sentences (none here: no markers are forced)
COLORS = {"stock": "gray", "full": "tab:orange", "sentencekv": "tab:green"}


def custom_params(policy: str | None, args) -> dict | None:
    if policy is None:
        return None
    return {"zoomr_policy": policy, "zoomr_summary_mode": "trained", "zoomr_sink_tokens": args.sink,
            "zoomr_recent_tokens": args.recent, "zoomr_sentence_budget": args.sentence_budget,
            "zoomr_zoom_budget": args.sentence_budget + MARKER_SHARE, "zoomr_zoom_interval": args.zoom_interval,
            "zoomr_zoom_topk": 1}


def prompts(url: str, length: int, batch: int, seed: int) -> list[list[int]]:
    """``batch`` records prompts of exactly ``length`` tokens of the server's tokenizer."""
    out = []
    for i in range(batch):
        rng = random.Random(f"{seed}/{length}/{i}")
        text = _records(rng, f"long-prompts:{i}", prompt_chars=length * 6).prompt  # over-long, then cut
        ids = requests.post(url + "/tokenize", json={"prompt": text, "add_special_tokens": False},
                            timeout=120).json()["tokens"]
        if len(ids) < length:
            raise RuntimeError(f"a records prompt of {len(text)} characters gave only {len(ids)} tokens")
        out.append(ids[:length])
    return out


def run(args, extra: list[str]) -> dict:
    meta = {**capacity.host_facts(), "prompt_lengths": args.prompt_lengths, "batch": args.batch,
            "output": args.output, "seed": args.seed, "sglang_flags": extra, "servers": {},
            "sentencekv_settings": custom_params("sentencekv", args),
            "cli": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    points = []
    bar = capacity_report.progress(len(ROWS) * len(args.prompt_lengths))
    try:
        for name in ("stock", "zoomr"):
            t0 = time.perf_counter()
            server = capacity.open_server(name, args, extra)
            try:
                meta["servers"][name] = capacity.describe_server(server, time.perf_counter() - t0
                                                                 if server.process else None)
                for length in args.prompt_lengths:
                    ids = prompts(server.url, length, args.batch, args.seed)
                    for row, _, policy in (r for r in ROWS if r[1] == name):
                        bar.set_description(f"{row} {length}")
                        plan = PointPlan(row, name, args.output, ids, custom_params(policy, args), None,
                                         pool_tokens=meta["servers"][name]["max_total_num_tokens"])
                        point = asyncio.run(measure_point(server.url, plan))._asdict()
                        points.append({**point, "prompt_tokens": length})
                        bar.update()
            finally:
                capacity.close_server(server, args.out)
    except (KeyboardInterrupt, RuntimeError, TimeoutError, OSError) as e:
        meta["incomplete"] = f"{type(e).__name__}: {e}"[:2000]
        print(f"long_prompts: stopped: {meta['incomplete']}", file=sys.stderr)
    finally:
        bar.close()
    return {"meta": meta, "points": points}


# ---------------------------------------------------------------------------------------------------- the report
def add_ratios(result: dict) -> None:
    by = {(p["row"], p["prompt_tokens"]): p for p in result["points"]}
    for p in result["points"]:
        for base in ("full", "stock"):
            b = by.get((base, p["prompt_tokens"]))
            p[f"faster_than_{base}"] = b["tbt_p50_ms"] / p["tbt_p50_ms"] if b and p["tbt_p50_ms"] else None
            p[f"kv_less_than_{base}"] = b["step_kv_mean"] / p["step_kv_mean"] if b and p["step_kv_mean"] else None


def markdown(result: dict) -> str:
    m = result["meta"]
    n = lambda x, d=0: "-" if x is None else f"{x:,.{d}f}"  # noqa: E731
    models = sorted({Path(str(s.get("model_path"))).name for s in m["servers"].values()})
    lines = [f"# Long prompts: SentenceKV against full KV and stock SGLang ({m.get('gpu')}, {m.get('date')})", "",
             f"Model {', '.join(models)}; " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
             + f". {m['batch']} concurrent greedy "
             f"`ignore_eos` requests of {m['output']} output tokens per point, records prompts cut to the length; "
             f"sentencekv settings `{json.dumps(m['sentencekv_settings'])}`. KV pool: "
             + ", ".join(f"{k} {n(s.get('max_total_num_tokens'))}" for k, s in m["servers"].items()) + " tokens.",
             ""]
    if m.get("incomplete"):
        lines += [f"**Incomplete:** {m['incomplete']}", ""]
    for length in m["prompt_lengths"]:
        pts = [p for p in result["points"] if p["prompt_tokens"] == length]
        if not pts:
            continue
        lines += [f"## prompt {length:,} tokens", "",
                  "| row | decode step ms (TBT p50) | x faster than full | x faster than stock | TBT p99 ms | output "
                  "tok/s | device KV / request (mean over steps) | x less than full | peak device KV | measured |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for p in sorted(pts, key=lambda p: [r[0] for r in ROWS].index(p["row"])):
            lines.append(f"| {p['row']} | {n(p['tbt_p50_ms'], 2)} | {n(p['faster_than_full'], 2)} | "
                         f"{n(p['faster_than_stock'], 2)} | {n(p['tbt_p99_ms'], 1)} | {n(p['output_tok_per_s'])} | "
                         f"{n(p['step_kv_mean'])} | {n(p['kv_less_than_full'], 2)} | {n(p['peak_kv_max'])} | "
                         f"{p['mode']}, {p['measured_s']:.1f} s |")
        lines.append("")
    lines += ["Decode step: the median time between a request's streamed tokens (split evenly over the tokens a chunk "
              "brought), over every request of the point; the prefills of the batch fall in the tail (p99). Device "
              "KV per request: averaged over the request's decode steps (stock and full: prompt plus half the "
              "output); peak: sentencekv holds the whole prompt until its first zoom, at its first decode step."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    plt = capacity_report.pyplot("long_prompts")
    if plt is None:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for row, _, _ in ROWS:
        pts = sorted((p for p in result["points"] if p["row"] == row), key=lambda p: p["prompt_tokens"])
        xs = [p["prompt_tokens"] for p in pts]
        a.plot(xs, [p["tbt_p50_ms"] for p in pts], "o-", color=COLORS[row], label=row)
        b.plot(xs, [p["step_kv_mean"] for p in pts], "o-", color=COLORS[row], label=row)
    for ax, title in ((a, "decode step (ms, TBT p50)"), (b, "device KV per request (tokens, mean over steps)")):
        ax.set_xlabel("prompt tokens")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    a.legend(fontsize=8)
    m = result["meta"]
    fig.suptitle(f"{m.get('gpu')}: batch {m['batch']}, {m['output']} output tokens", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(out: Path, result: dict) -> str:
    out.mkdir(parents=True, exist_ok=True)
    add_ratios(result)
    (out / "long_prompts.json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    (out / "long_prompts.md").write_text(text)
    plot(result, out / "long_prompts.png")
    return text


# ---------------------------------------------------------------------------------------------------- the CLI
class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2
        print(f"long_prompts: error: {message}", file=sys.stderr)
        sys.exit(2)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = _Parser(prog="long_prompts", description=__doc__.splitlines()[0])
    add = ap.add_argument
    add("--prompt-lengths", default="4K,16K,32K", help="prompt lengths in tokens, comma-separated (K = 1024)")
    add("--batch", type=int, default=16)
    add("--output", type=int, default=256, help="output tokens per request")
    add("--sentence-budget", type=int, default=2048)
    add("--sink", type=int, default=64)
    add("--recent", type=int, default=256)
    add("--zoom-interval", type=int, default=16)
    add("--url-stock", help="a running stock server (default: start one here)")
    add("--url-zoomr", help="a running launch.py --enable-zoomr server (default: start one here)")
    add("--model-path")
    add("--load-format")
    add("--max-total-tokens", type=int, help="KV pool tokens of each server started here (default: its own)")
    add("--mem-fraction-static", type=float)
    add("--zoomr-server-flags", default="", help="launch.py flags for the ZoomR server only, e.g. its host store size "
        "(the demoted sentences of every request of a point must fit it)")
    add("--seed", type=int, default=20261206)
    add("--server-timeout", type=float, default=900.0)
    add("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    try:
        args.prompt_lengths = [capacity.parse_length(x) for x in args.prompt_lengths.split(",") if x.strip()]
    except ValueError as e:
        ap.error(f"a prompt length is not a number: {e}")
    if not args.prompt_lengths or min(args.prompt_lengths) <= args.sink + args.recent:
        ap.error("every prompt length must exceed --sink + --recent")
    for name in ("batch", "output", "sentence_budget", "zoom_interval"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be positive")
    if args.sink < 0 or args.recent < 0:
        ap.error("--sink and --recent must be zero or more")
    # what capacity.open_server reads: without --max-total-tokens each server sizes its own pool (its "whole GPU")
    args.whole_gpu = args.max_total_tokens is None
    args.url_stock_flags = args.url_zoomr_no_overlap = None
    return args, extra


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(list(sys.argv[1:] if argv is None else argv))
    result = run(args, extra)
    print(write(args.out, result))
    return 1 if result["meta"].get("incomplete") else 0


if __name__ == "__main__":
    sys.exit(main())
