"""The accuracy benchmark's report: per policy and budget, accuracy against device KV, as JSON, markdown and a PNG.

Contract: ``summarise(point)`` turns one measured point (``benchmarks.accuracy.run_point``) into a row: problems,
accuracy overall / on the problems that need an earlier thought's detail / on the others, mean peak and mean device
KV per problem, mean full KV, ``kv_reduction`` (mean full KV over mean peak device KV), recalls per problem, errors,
and ``refused`` (the server's 400 when it refused the policy). ``write(out, meta, points)`` writes
``accuracy.json`` (meta, rows, every problem's outcome), ``accuracy.md`` and ``accuracy.png`` (accuracy against mean
peak device KV, one series per policy, each point labelled with its budget; skipped with a note without matplotlib)
and returns the markdown table. A point's ``misses`` (the wrong completions' text) go to ``accuracy_misses.jsonl``
instead, one line per wrong problem with its policy and budget, so the JSON stays small.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def summarise(point: dict) -> dict:
    probs = point["problems"]
    ok = [p for p in probs if not p["error"]]
    detail = [p for p in ok if p.get("needs_detail")]
    other = [p for p in ok if not p.get("needs_detail")]
    peak, full = _mean(p["peak_kv"] for p in ok), _mean(p["full_kv"] for p in ok)
    acc = lambda ps: (sum(p["correct"] for p in ps) / len(ps)) if ps else None  # noqa: E731
    return {"policy": point["policy"], "budget": point["budget"], "problems": len(probs), "answered": len(ok),
            "accuracy": acc(ok), "needs_detail_accuracy": acc(detail), "needs_detail_problems": len(detail),
            "other_accuracy": acc(other), "peak_device_kv": peak, "mean_device_kv": _mean(p["mean_kv"] for p in ok),
            "full_kv": full, "kv_reduction": (full / peak) if peak and full else None,
            "recalls_per_problem": _mean(p["recalls"] for p in ok), "errors": len(probs) - len(ok),
            "refused": point.get("refused")}


def _fmt(x, pct=False, digits=0):
    if x is None:
        return "-"
    return f"{100 * x:.1f}%" if pct else f"{x:,.{digits}f}"


def markdown(meta: dict, rows: list[dict]) -> str:
    head = (f"# Accuracy against device KV ({meta['model']}, {meta.get('gpu') or meta['device']}, {meta['date']})\n\n"
            f"{meta['problems']} problems from `{meta['problems_file']}`, greedy pass@1, sglang {meta['sglang']}; "
            f"{meta.get('servers', 1)} server(s), {meta.get('concurrency_per_server', '?')} requests in flight each; "
            f"{meta['seconds']:.0f} s. `benchmarks/accuracy.py {' '.join(meta['argv'])}`\n\n"
            + ("**Partial**: the run was cut short; a point with fewer problems than the others holds those that had "
               "finished.\n\n" if meta.get("partial") else ""))
    lines = ["| policy | budget | problems | accuracy | needs earlier detail | others | peak device KV / problem | mean device KV "
             "| full KV | x less than full | recalls / problem | errors |", "|" + "---|" * 12]
    for r in rows:
        if r["refused"]:
            lines.append(f"| {r['policy']} | {r['budget'] or '-'} | {r['problems']} | refused: {r['refused'][:90]} |"
                         + " |" * 8)
            continue
        lines.append(
            f"| {r['policy']} | {r['budget'] or '-'} | {r['problems']} | {_fmt(r['accuracy'], True)} | "
            f"{_fmt(r['needs_detail_accuracy'], True)} ({r['needs_detail_problems']}) | {_fmt(r['other_accuracy'], True)} | "
            f"{_fmt(r['peak_device_kv'])} | {_fmt(r['mean_device_kv'])} | {_fmt(r['full_kv'])} | "
            f"{_fmt(r['kv_reduction'], digits=2)} | {_fmt(r['recalls_per_problem'], digits=1)} | {r['errors']} |")
    note = ("\n\nPeak device KV: the most KV slots the request held on the device at once (`meta_info.zoomr`); mean "
            "device KV: over its decode steps; full KV: prompt + output. \"Needs earlier detail\": problems whose "
            "answer is a value written only inside an earlier thought's detail.\n")
    return head + "\n".join(lines) + note


def _plot(path: Path, meta: dict, rows: list[dict]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("accuracy: no matplotlib here: no PNG", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for policy in dict.fromkeys(r["policy"] for r in rows):
        pts = sorted((r["peak_device_kv"], r["accuracy"], r["budget"]) for r in rows
                     if r["policy"] == policy and not r["refused"] and r["accuracy"] is not None)
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], "o-", label=policy)
        for x, y, b in pts:
            if b:
                ax.annotate(str(b), (x, 100 * y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("peak device KV per problem (tokens)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.set_title(f"{meta['model']}: accuracy against device KV ({meta['problems']} problems)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(out: Path, meta: dict, points: list[dict], stem: str = "accuracy") -> str:
    out.mkdir(parents=True, exist_ok=True)
    rows = [summarise(p) for p in points]
    misses = [{"policy": p["policy"], "budget": p["budget"], **m} for p in points for m in p.get("misses", ())]
    points = [{k: v for k, v in p.items() if k != "misses"} for p in points]
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows, "points": points}, indent=1) + "\n")
    (out / f"{stem}_misses.jsonl").write_text("".join(json.dumps(m) + "\n" for m in misses))
    md = markdown(meta, rows)
    (out / f"{stem}.md").write_text(md)
    _plot(out / f"{stem}.png", meta, rows)
    return md
