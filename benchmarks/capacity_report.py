"""What ``benchmarks/capacity.py`` shows and writes: the progress bar, the markdown tables, the JSON and the PNG.

Contract: ``write(out, result)`` writes ``<stem>.json`` (unless told not to), ``<stem>.md`` and ``<stem>.png``
under ``out`` (``stem`` is ``capacity``, or ``capacity_whole_gpu`` for a whole-GPU run) and returns the markdown.
Each point gains ``x_stock``: its output tok/s over the ``stock`` row's at the same length in the same result, and
``x_stock_generated``, the same for the scheduler's generation rate (None
without a stock row there). Without matplotlib the PNG is skipped with a note on stderr. ``merge(results)`` joins
results of several runs (a later run's point replaces an earlier one for the same row and length; the meta is the
first run's, with every run's listed under ``runs``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROW_ORDER = ("stock", "stock_zoomr_flags", "zoomr", "full", "zoomr_no_overlap")
COLORS = {"stock": "gray", "stock_zoomr_flags": "black", "zoomr": "tab:blue", "full": "tab:orange",
          "zoomr_no_overlap": "tab:cyan"}


def progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="point", file=sys.stderr, dynamic_ncols=True)


def stem(result: dict) -> str:
    return "capacity_whole_gpu" if result["meta"].get("whole_gpu") else "capacity"


def add_ratios(result: dict) -> None:
    stock = {p["length"]: p for p in result["points"] if p["row"] == "stock"}
    ratio = lambda a, b: a / b if a is not None and b else None  # noqa: E731
    for p in result["points"]:
        base = stock.get(p["length"], {})
        p["x_stock"] = ratio(p["output_tok_per_s"], base.get("output_tok_per_s"))
        p["x_stock_generated"] = ratio(p["scheduler"].get("gen_throughput_mean"),
                                       base.get("scheduler", {}).get("gen_throughput_mean"))


def merge(results: list[dict]) -> dict:
    if len(results) == 1:
        return results[0]
    points: dict[tuple, dict] = {}
    for r in results:
        for p in r["points"]:
            points[(p["row"], p["length"])] = p
    meta = dict(results[0]["meta"])
    meta["runs"] = [r["meta"] for r in results]
    meta["servers"] = {name: s for r in results for name, s in r["meta"]["servers"].items()}  # each run's servers
    meta["lengths"] = sorted({p["length"] for p in points.values()})
    return {"meta": meta, "points": list(points.values())}


def _n(x, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _measured(p: dict) -> str:
    over = f"; streamed: {p.get('transport', 'generate')}"
    if p["mode"] == "complete":
        return f"complete, {p['measured_s']:.1f} s{over}"
    text = f"window {p['measured_s']:.1f} s after {p['ramp_s']:.1f} s ramp ({p['full_by']})"
    return text + (", cut short by a finish" if p["cut_short"] else "") + over


def step_ms(p: dict) -> float | None:
    """The scheduler's time per decode step over the measurement: running requests over generated tokens/s."""
    s = p["scheduler"]
    gen = s.get("gen_throughput_mean")
    return 1000.0 * s["running_mean"] / gen if gen else None


def _host_line(p: dict) -> str:
    ms = dict(p["zoomr_host_ms"])
    total, steps = ms.pop("total"), ms.pop("decode_steps")
    pieces = {name: ms.pop(name) for name in [n for n in ms if "/" in n]}  # inside their hooks' figures
    parts = ", ".join(f"{name} {v:.3f}" for name, v in sorted(ms.items(), key=lambda kv: -kv[1]))
    if pieces:
        parts += "; of which " + ", ".join(f"{name} {v:.3f}" for name, v in sorted(pieces.items(), key=lambda kv: -kv[1]))
    return (f"\n`{p['row']}`: ZoomR's own host work {total:.2f} ms per decode step over {steps:,} steps ({parts}); "
            f"the scheduler's step: {_n(step_ms(p), 2)} ms at {p['scheduler']['running_mean']:.1f} running requests.")


def markdown(result: dict) -> str:
    m = result["meta"]
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    pools = {name: s.get("max_total_num_tokens") for name, s in m["servers"].items()}
    pool_text = (f"{_n(next(iter(pools.values()), None))} tokens on every server" if len(set(pools.values())) <= 1
                 else "DIFFERENT per server: " + ", ".join(f"{k} {_n(v)}" for k, v in pools.items()))
    asked = m.get("pool_tokens_asked")
    if asked and any(v != asked for v in pools.values()):
        pool_text += f" (**asked for {asked:,}**: a server got another pool; see its memory fraction)"
    title = "whole GPU (each server sizes its own pool)" if m.get("whole_gpu") else "same KV pool"
    counts = sorted({p["requests"] for p in result["points"]}) or [m["requests"]]
    requests = (f"{counts[0]}" if len(counts) == 1 else
                " or ".join(map(str, counts)) + " (per length: the `requests` of each point in the JSON)")
    lines = [f"# Capacity, {title}: ZoomR against stock SGLang ({m.get('model')}, {m['gpu']}, {m['date']})", "",
             f"{versions}. {requests} concurrent greedy `ignore_eos` streamed generations per point, each with a "
             f"prompt of {m['prompt_tokens']} random ids (below {m.get('vocab')}, seed {m['seed']}); KV pool: "
             f"{pool_text}. ZoomR engine settings, per request: `{json.dumps(m['zoomr_settings'])}`."
             + (f" Extra SGLang flags on every server: `{' '.join(m['sglang_flags'])}`." if m["sglang_flags"] else ""),
             ""]
    if len(m.get("runs", [])) > 1:  # merged: each length's rows come from one run, so each ratio is within a run
        lines += [f"Merged from {len(m['runs'])} runs (each output length measured in one run, its ratios within "
                  "that run): " + "; ".join(
                      f"{r['date']}: {', '.join(f'{x:,}' for x in r['lengths'])} tokens, seed {r['seed']}, "
                      f"`{json.dumps(r['zoomr_settings'])}`" for r in m["runs"]) + ".", ""]
    if m.get("incomplete"):
        lines += [f"**Incomplete run**: {m['incomplete']}", ""]
    lines += ["| server | launch.py flags | pool tokens | overlap scheduler | page size | ready (s) |",
              "|---|---|---|---|---|---|"]
    for name, s in m["servers"].items():
        flags = " ".join(s["argv"]) if s.get("argv") is not None else "(attached; see non_default_args in the JSON)"
        lines.append(f"| {name} | `{flags}` | {_n(s.get('max_total_num_tokens'))} | "
                     f"{'off' if s.get('disable_overlap_schedule') else 'on'} | {s.get('page_size')} | "
                     f"{_n(s.get('ready_s'))} |")
    for length in sorted({p["length"] for p in result["points"]}):
        rows = sorted((p for p in result["points"] if p["length"] == length), key=lambda p: ROW_ORDER.index(p["row"]))
        lines += ["", f"## output {length:,} tokens", "",
                  "| row | output tok/s | x stock | generated tok/s (scheduler) | x stock | running reqs mean / max | "
                  "token usage mean / max | retractions | TBT p50 / p99 (ms) | peak device KV / request | measured |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for p in rows:
            s = p["scheduler"]
            kv = _n(p["peak_kv_max"]) + (" (full KV)" if p["peak_kv_source"].startswith("prompt") else "")
            lines.append(
                f"| {p['row']} | {_n(p['output_tok_per_s'])} | {_n(p.get('x_stock'), 2)} | "
                f"{_n(s.get('gen_throughput_mean'))} | {_n(p.get('x_stock_generated'), 2)} | "
                f"{s['running_mean']:.1f} / {s['running_max']:.0f} | "
                f"{s['token_usage_mean']:.0%} / {s['token_usage_max']:.0%} | {s['retractions']} | "
                f"{_n(p['tbt_p50_ms'], 1)} / {_n(p['tbt_p99_ms'], 1)} | {kv} | {_measured(p)} |")
        by_row = {p["row"]: p for p in rows}
        lines += [_host_line(p) for p in rows if p.get("zoomr_host_ms")]
        rate = lambda r: by_row.get(r, {}).get("output_tok_per_s")  # noqa: E731
        if rate("full") and rate("stock"):
            lines += ["", f"`full` against `stock`: {rate('full') / rate('stock'):.2f}x (target: at least 0.95)."]
        if rate("zoomr") and rate("zoomr_no_overlap"):
            lines += ["", f"`zoomr` against `zoomr_no_overlap` (what the overlap scheduler gives ZoomR): "
                          f"{rate('zoomr') / rate('zoomr_no_overlap'):.2f}x."]
    lines += ["", "Streamed: `openai` is `/v1/completions` with `stream_options.continuous_usage_stats` (each chunk: the "
              "new text and the token count so far); `generate` is SGLang's `/generate` with its default streaming "
              "(each chunk: the whole text and every output id so far, so SGLang's HTTP side does more per chunk as "
              "outputs grow); `openai, K of N over generate`: K requests of the point streamed over `/generate` for "
              "ZoomR's per-request `meta_info.zoomr` (peak device KV), the same split on every row.",
              "", "Output tok/s: output tokens the client received inside the measurement over its length (complete: "
              "first request sent to last token; window: from the moment the server was full). Generated tok/s: the "
              "mean of the scheduler's own `sglang:gen_throughput` gauge over the measurement (tokens the GPU "
              "produced; SGLang's HTTP side delivers them later when it falls behind). Running requests and "
              "token usage: means and maxima of the scheduler's own `sglang:num_running_reqs` and `sglang:token_usage` "
              "gauges read from `/metrics` during the measurement (SGLang refreshes them every "
              "`--decode-log-interval` decode steps, 40 by default); retractions: the growth of "
              "`sglang:num_retracted_requests_total` over the whole point. TBT: per request, the gap between "
              "consecutive stream chunks divided evenly over the tokens the later chunk brought (SGLang streams "
              "every token, `stream_interval` 1, but coalesces chunks a busy HTTP server has not sent yet); the wait "
              "for the first token is not counted. Peak device KV: ZoomR rows from each request's "
              "`meta_info.zoomr.peak_device_kv_tokens`; stock rows hold full KV, prompt + output tokens. Window "
              "points end with `/abort_request`; their peaks are those reached by then."]
    return "\n".join(lines) + "\n"


def pyplot(prog: str):
    """matplotlib's pyplot on the Agg backend, or None (a note on stderr) where matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"{prog}: no matplotlib here: no PNG (redraw elsewhere from the JSON)", file=sys.stderr)
        return None
    return plt


def plot(result: dict, path: Path) -> bool:
    plt = pyplot("capacity")
    if plt is None:
        return False
    m = result["meta"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for row in ROW_ORDER:
        pts = sorted((p for p in result["points"] if p["row"] == row and p["output_tok_per_s"] is not None),
                     key=lambda p: p["length"])
        if not pts:
            continue
        xs = [p["length"] for p in pts]
        for ax, ys in ((a, [p["output_tok_per_s"] for p in pts]), (b, [p["scheduler"]["running_mean"] for p in pts])):
            ax.plot(xs, ys, "-", color=COLORS[row], label=row)
            for x, y, p in zip(xs, ys, pts):  # filled: run to completion; hollow: steady-state window
                ax.plot(x, y, "o", color=COLORS[row], mfc=COLORS[row] if p["mode"] == "complete" else "white")
    lengths = sorted({p["length"] for p in result["points"]})
    for ax, title in ((a, "output tokens / s (all requests)"), (b, "running requests (scheduler, mean)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [f"{x // 1024}K" if x % 1024 == 0 else str(x) for x in lengths])
        ax.minorticks_off()
        ax.set_xlabel("output length (tokens)")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    a.legend(fontsize=8)
    counts = sorted({p["requests"] for p in result["points"]}) or [m["requests"]]
    span = "-".join(map(str, dict.fromkeys([counts[0], counts[-1]])))
    fig.suptitle(f"{m.get('model')} on {m['gpu']}: {span} concurrent requests, "
                 + ("whole GPU" if m.get("whole_gpu") else "same KV pool")
                 + "; filled: to completion, hollow: steady-state window", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write(out: Path, result: dict, write_json: bool = True) -> str:
    out.mkdir(parents=True, exist_ok=True)
    add_ratios(result)
    name = stem(result)
    if write_json:
        (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    (out / f"{name}.md").write_text(text)
    plot(result, out / f"{name}.png")
    return text
