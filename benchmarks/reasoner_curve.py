#!/usr/bin/env python3
"""The reasoner's loss curves: training loss against step, one line per checkpoint manifest (``reasoner/train.py``
writes ``reasoner_manifest.json`` with ``loss_curve``), the curriculum's warm-up shaded.

    python -m benchmarks.reasoner_curve NAME=MANIFEST [NAME=MANIFEST ...] --out benchmarks/results/reasoner_loss.png

Bad input: one line ``reasoner_curve: error: ...``, status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reasoner.cli import OneLineParser  # noqa: E402


def load(spec: str) -> tuple[str, list[dict]]:
    name, sep, path = spec.partition("=")
    if not sep or not name:
        raise ValueError(f"{spec!r}: expected NAME=MANIFEST")
    curve = json.loads(Path(path).read_text()).get("loss_curve")
    if not curve:
        raise ValueError(f"{path}: no loss_curve")
    return name, curve


def main(argv=None) -> int:
    ap = OneLineParser("reasoner_curve", prog="python -m benchmarks.reasoner_curve", description=__doc__.split("\n")[0])
    ap.add_argument("manifests", nargs="+", help="NAME=path/to/reasoner_manifest.json")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        curves = [load(s) for s in args.manifests]
    except (ValueError, OSError) as e:
        ap.error(str(e))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in curves:
        ax.plot([c["step"] for c in curve], [c["loss"] for c in curve], label=name)
        warm = [c["step"] for c in curve if c.get("warm_up")]
        if warm:
            ax.axvspan(0, max(warm), alpha=0.08)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats / trace token)")
    ax.set_title("reasoner training loss (shaded: curriculum warm-up on small problems)")
    ax.legend()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
