#!/usr/bin/env python3
"""Time per decode step at equal batch, from SGLang's own scheduler log: the profile the capacity benchmark's ratios
are read against.

SGLang logs a ``Decode batch, #running-req: B, #token: T, ..., gen throughput (token/s): X`` line every
``--decode-log-interval`` decode steps (40 by default); over that interval the batch held B requests most of the
time, so one step took about ``1000 * B / X`` ms. Per server log and batch size this prints the median and 10th
percentile over the lines (at least ``--min-lines``), with the KV tokens the pool held, as a markdown table.

    python benchmarks/step_times.py NAME=server.log [NAME=server.log ...] [--min-lines 5]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

LINE = re.compile(r"Decode batch.*#running-req: (\d+), #token: (\d+).*gen throughput \(token/s\): ([\d.]+)")


def step_times(text: str) -> dict[int, list[tuple[float, int]]]:
    """Batch size -> [(ms per step, KV tokens held)] for every decode log line with a throughput."""
    by_batch: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for m in LINE.finditer(text):
        batch, tokens, throughput = int(m[1]), int(m[2]), float(m[3])
        if throughput > 0:
            by_batch[batch].append((1000.0 * batch / throughput, tokens))
    return by_batch


def table(logs: dict[str, str], min_lines: int) -> str:
    rows = ["| server | running requests | log lines | ms / step, median | ms / step, p10 | KV tokens held |",
            "|---|---|---|---|---|---|"]
    for name, text in logs.items():
        for batch, samples in sorted(step_times(text).items()):
            if len(samples) < min_lines:
                continue
            ms = sorted(s[0] for s in samples)
            held = [s[1] for s in samples]
            rows.append(f"| {name} | {batch} | {len(ms)} | {ms[len(ms) // 2]:.2f} | {ms[len(ms) // 10]:.2f} | "
                        f"{min(held):,}-{max(held):,} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logs", nargs="+", help="NAME=PATH of a server log")
    ap.add_argument("--min-lines", type=int, default=5)
    args = ap.parse_args(argv)
    logs = {}
    for item in args.logs:
        name, _, path = item.partition("=")
        try:
            logs[name] = Path(path).read_text(errors="replace")
        except OSError as e:
            print(f"step_times: error: cannot read {path}: {e}", file=sys.stderr)
            return 2
        if not path:
            print(f"step_times: error: {item!r} is not NAME=PATH", file=sys.stderr)
            return 2
    print(table(logs, args.min_lines), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
