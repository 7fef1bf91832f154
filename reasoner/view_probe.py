"""Teacher-forced accuracy of a trained reasoner under ZoomR-like views: which earlier detail does its trace lean on?

Contract:
- ``window_mask(seg, own, keep)`` ``[1, 1, S, S]`` bool: a query reads the prompt, every summary and marker (``seg``
  -1), the detail of its own thought, and the detail of the ``keep`` thoughts before its own (``keep`` None: every
  thought, i.e. full causal attention). After ``</think>`` a query's own thought is the one the answer needs (the
  oracle zoom of ``reasoner.data.zoomr_view``); a query with no thought of its own (``own`` -1: the prompt) reads no
  detail beyond the ``keep`` window, which is empty there.
- ``probe(model, tok, problems, keeps)``: per view, the greedy next-token accuracy over the gold trace at the
  positions that carry a looked-up value: ``start`` (the box after ``start NAME``, copied from the prompt), ``hop``
  (the box a ``step`` line reaches, from the prompt's table), ``end`` (the box after ``end NAME``: the last hop) and
  ``answer`` (the tokens after ``</think>``). Returns ``{view: {category: ProbeScore}}``.
- ``zoom_hits(model, tok, problems, layers)``: whether ZoomR's scoring finds the thought the answer needs. Under the
  ``keep`` 0 view with no detail at all after ``</think>`` (what a request holds before its first recall there), the
  post-RoPE queries and keys of the scoring ``layers`` are captured; at every position after ``</think>`` up to the
  answer's value, each closed thought is scored by ``zoomr_sgl.scoring.thought_score`` (its summary tokens' keys, the
  markers included) and ranked. Returns a ``ZoomHits``: positions scored, where the needed thought ranked first or
  within the top two, and per problem whether it ranked first at the position that predicts the value.
- With ``sentences`` (a ``reasoner.sentence_view.SentenceSettings``; ``--sentences``), ``probe`` adds the view
  ``keep 0 + sentences``: the ``keep`` 0 view with the prompt as ``sentencekv`` serves it, each query reading only the
  sentences an oracle zoom handed back (``reasoner.sentence_view``); and ``sentence_hits(model, tok, problems,
  layers, settings)`` says whether SentenceKV's score would pick what the trace needs: under that view, each zoom of
  the view's schedule picks by the model's own scores at its query (``SentenceIndex.pick``'s rule: best first within
  ``budget`` tokens), and each ``start`` and ``hop`` value the trace looks up is served when the zoom its query reads
  from picked every sentence its line copies from. Returns ``SentenceHits(served)``, per category.
- Nothing here changes a model; it reads ``reasoner.data``'s segmentation, so thoughts are what the server sees.

    python -m reasoner.view_probe --model models/zoomr-reasoner --n 8 --items 24 --keep 0,1,2,4,all
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import NamedTuple

import torch

from reasoner import data, sentence_view
from reasoner.cli import OneLineParser
from reasoner.tasks import problem


class ProbeScore(NamedTuple):
    right: int
    total: int

    @property
    def accuracy(self) -> float | None:
        return self.right / self.total if self.total else None


def window_mask(seg: torch.Tensor, own: torch.Tensor, keep: int | None) -> torch.Tensor:
    S = seg.shape[0]
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    if keep is None:
        return causal[None, None]
    k, q = seg[None, :], own[:, None]
    readable = (k < 0) | ((q >= 0) & (k <= q) & (k >= q - keep))
    return (causal & readable)[None, None]


_VALUE = {"start": re.compile(r"start \w+ (\w+)\."), "hop": re.compile(r"step \d+: box \w+ (\w+)\."),
          "end": re.compile(r"end \w+ (\w+)\.")}


def value_positions(tok, text: str, offset: int) -> dict[str, list[int]]:
    """Token positions (in the full sequence, ``offset`` = where ``text`` starts) of each category's value tokens."""
    enc = tok.encode(text, add_special_tokens=False)
    spans: dict[str, list[int]] = {c: [] for c in (*_VALUE, "answer")}
    think_end = text.index("</think>") + len("</think>")
    for cat, rx in _VALUE.items():
        for m in rx.finditer(text[:think_end]):
            spans[cat] += [i for i, (a, b) in enumerate(enc.offsets) if a < m.end(1) and b > m.start(1)]
    spans["answer"] = [i for i, (a, _) in enumerate(enc.offsets) if a >= think_end]
    return {c: [offset + i for i in sorted(set(v))] for c, v in spans.items()}


SENTENCES = "keep 0 + sentences"


@torch.no_grad()
def probe(model, tok, problems: list, keeps: list[int | None], sentences=None) -> dict[str, dict[str, ProbeScore]]:
    dev = next(model.parameters()).device
    views = [_name(k) for k in keeps] + ([SENTENCES] if sentences else [])
    scores = {v: {c: [0, 0] for c in (*_VALUE, "answer")} for v in views}
    ends = _sentence_ends(tok, sentences)
    for p in problems:
        ex = data.encode(tok, p, zoomr_aware=True, sentences=sentences, ends=ends)
        ids = torch.tensor(ex.ids)
        seg, own = torch.tensor(ex.seg), torch.tensor(ex.own)
        where = value_positions(tok, p.trace, ex.prompt_len)
        for keep in keeps + ([SENTENCES] if sentences else []):
            mask = window_mask(seg, own, 0 if keep == SENTENCES else keep)
            if keep == SENTENCES:
                mask = sentence_view.restrict(mask, sentence_view.collate([ex.sent], len(ex.ids)))
            logits = model(ids[None].to(dev), mask=mask.to(dev))
            pred = logits[0].argmax(-1).cpu()  # pred[i]: the token at i + 1
            for cat, positions in where.items():
                s = scores[keep if keep == SENTENCES else _name(keep)][cat]
                s[0] += sum(int(pred[i - 1] == ids[i]) for i in positions)
                s[1] += len(positions)
    return {v: {c: ProbeScore(*s) for c, s in cats.items()} for v, cats in scores.items()}


class ZoomHits(NamedTuple):
    positions: int
    top1: int
    top2: int
    at_value: list[bool]  # per problem: the needed thought ranked first at the position that predicts the value


@torch.no_grad()
def zoom_hits(model, tok, problems: list, layers: tuple[int, ...]) -> ZoomHits:
    from reasoner.qwen3 import captured_qk
    from reasoner.zoom_loss import blind, row_scores, summary_positions

    dev = next(model.parameters()).device
    scoring = [model.model.layers[i].self_attn for i in layers]
    positions = top1 = top2 = 0
    at_value = []
    for p in problems:
        if p.target_thought < 0:
            continue
        ex = data.encode(tok, p, zoomr_aware=True)
        seg, own = torch.tensor(ex.seg), torch.tensor(ex.own)
        think_end = ex.ids.index(tok.token_to_id("</think>"), ex.prompt_len)
        own = blind(own, torch.tensor(ex.ids), tok.token_to_id("</think>"))  # no detail back yet
        qs, ks = captured_qk(model, scoring, torch.tensor(ex.ids)[None].to(dev), window_mask(seg, own, 0).to(dev))
        before = torch.arange(len(ex.ids)) < think_end
        spos, sid = summary_positions(seg, own, before)
        value = value_positions(tok, p.trace, ex.prompt_len)["answer"]
        last = max(i for i in value if i < len(ex.ids) - 1) if value else len(ex.ids) - 1
        lead_value = _lead_value_position(tok, ex.ids, think_end, p.answer)
        qpos = torch.arange(think_end, last)
        ranks = row_scores(qs, ks, 0, qpos.to(dev), spos.to(dev), sid.to(dev), int(sid.max()) + 1)
        ranks = torch.sort(-ranks.cpu(), dim=-1, stable=True).indices
        positions += len(qpos)
        top1 += int((ranks[:, 0] == p.target_thought).sum())
        top2 += int((ranks[:, :2] == p.target_thought).any(-1).sum())
        if think_end <= lead_value < last:
            at_value.append(bool(ranks[lead_value - think_end, 0] == p.target_thought))
    return ZoomHits(positions, top1, top2, at_value)


def _sentence_ends(tok, sentences):
    """The tokenizer's sentence ends, once per probe (decoding every id), when the sentence view is asked for."""
    from zoomr_sgl.sentences import SentenceEnds

    return SentenceEnds.from_tokenizer(tok) if sentences else None


class SentenceHits(NamedTuple):
    served: dict[str, ProbeScore]  # per value category (start, hop): looked-up values whose sentences the zoom picked


@torch.no_grad()
def sentence_hits(model, tok, problems: list, layers: tuple[int, ...], settings) -> SentenceHits:
    from reasoner.qwen3 import captured_qk
    from reasoner.sentence_loss import mean_keys
    from reasoner.zoom_loss import group_scores
    from zoomr_sgl.scoring import top_within_budget

    dev = next(model.parameters()).device
    scoring = [model.model.layers[i].self_attn for i in layers]
    served = {c: [0, 0] for c in ("start", "hop")}
    ends = _sentence_ends(tok, settings)
    for p in problems:
        ex = data.encode(tok, p, zoomr_aware=True, sentences=settings, ends=ends)
        sb = sentence_view.collate([ex.sent], len(ex.ids))
        count = int(sb.psent[0].max()) + 1
        if count <= 0:
            continue
        mask = sentence_view.restrict(window_mask(torch.tensor(ex.seg), torch.tensor(ex.own), 0), sb)
        qs, ks = captured_qk(model, scoring, torch.tensor(ex.ids)[None].to(dev), mask.to(dev))
        zpick = sb.zpick[0].tolist()
        first = {}  # zoom j -> its first reader; its query is the position before
        for q, j in enumerate(zpick):
            first.setdefault(j, q)
        zooms = [first[j] - 1 for j in range(len(ex.sent.picks)) if j in first]
        sizes = torch.bincount(sb.psent[0][sb.psent[0] >= 0].long(), minlength=count)
        scores = group_scores([q[0][:, zooms].float().cpu() for q in qs],
                              mean_keys([k.float().cpu() for k in ks], 0, sb.psent[0], count),
                              torch.arange(count), count)
        picks = [set(top_within_budget(row, sizes, count, settings.budget)) for row in scores]
        where = value_positions(tok, p.trace, ex.prompt_len)
        for cat, tally in served.items():
            for i in where[cat]:
                need, j = ex.sent.need[i - 1], zpick[i - 1]  # the query before a value predicts it
                if need and j >= 0:
                    tally[0] += set(need) <= picks[j]
                    tally[1] += 1
    return SentenceHits({c: ProbeScore(*t) for c, t in served.items()})


def _lead_value_position(tok, ids: list[int], think_end: int, answer: str) -> int:
    """The position whose next token is the first token of the lead's value (``end NAME VALUE.``)."""
    first = tok.encode(" " + answer, add_special_tokens=False).ids[0]
    return next((i - 1 for i in range(think_end + 1, len(ids)) if ids[i] == first), -1)


def _name(keep: int | None) -> str:
    return "full" if keep is None else f"keep {keep}"


def load(model_dir: Path, device: str = "cpu"):
    from tokenizers import Tokenizer

    from reasoner.train import read_checkpoint

    return read_checkpoint(model_dir).to(device).eval(), Tokenizer.from_file(str(model_dir / "tokenizer.json"))


def main(argv=None) -> int:
    ap = OneLineParser("view_probe", prog="python -m reasoner.view_probe", description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=Path(__file__).resolve().parents[1] / "models" / "zoomr-reasoner")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--items", type=int, default=24)
    ap.add_argument("--keep", default="0,1,2,all", help="views: thoughts kept before a query's own, or 'all'")
    ap.add_argument("--device", default="cpu", help="torch device (float32 weights)")
    ap.add_argument("--sentences", action="store_true",
                    help="also the view with the prompt as sentencekv serves it, and how SentenceKV's score picks")
    ap.add_argument("--sentence-budget", type=int, default=sentence_view.SentenceSettings().budget)
    ap.add_argument("--linked", action="store_true", help="problems whose item lines name the next item")
    args = ap.parse_args(argv)
    try:
        keeps = [None if k == "all" else int(k) if k.isdigit() else -1 for k in args.keep.split(",") if k]
        if not keeps or any(k is not None and k < 0 for k in keeps) or args.n <= 0 or args.items <= 0 \
                or args.sentence_budget <= 0:
            raise ValueError("--keep takes non-negative counts or 'all'; "
                             "--n, --items and --sentence-budget must be positive")
        if not (args.model / "reasoner_manifest.json").is_file():
            raise ValueError(f"{args.model}: not a checkpoint of reasoner.train (no reasoner_manifest.json)")
    except ValueError as e:
        ap.error(str(e))
    model, tok = load(args.model, args.device)
    problems = [problem("heldout", "chain", i, items=args.items, linked=args.linked) for i in range(args.n)]
    settings = sentence_view.SentenceSettings(budget=args.sentence_budget) if args.sentences else None
    result = probe(model, tok, problems, keeps, settings)
    cats = list(next(iter(result.values())))
    print(f"teacher-forced value accuracy, {args.n} held-out {args.items}-item chain problems, {args.model.name}")
    print("| view | " + " | ".join(cats) + " |\n|---|" + "---|" * len(cats))
    for view, by in result.items():
        print(f"| {view} | " + " | ".join(f"{100 * s.accuracy:.1f}% of {s.total}" if s.total else "-"
                                         for s in by.values()) + " |")
    from zoomr_sgl.config import ZoomRConfig

    layers = ZoomRConfig().scoring_layer_ids(model.cfg.num_hidden_layers)
    hits = zoom_hits(model, tok, problems, layers)
    if hits.positions:
        print(f"zoom scoring (layers {list(layers)}), {len(hits.at_value)} problems needing a thought, positions after "
              f"</think>: the needed thought first at {100 * hits.top1 / hits.positions:.1f}%, in the top 2 at "
              f"{100 * hits.top2 / hits.positions:.1f}% of {hits.positions}; first at the value's position in "
              f"{sum(hits.at_value)} of {len(hits.at_value)}")
    if settings:
        sh = sentence_hits(model, tok, problems, layers, settings).served
        print(f"sentence scoring ({settings}): the zoom before a looked-up value picked its sentences for "
              + ", ".join(f"{100 * s.accuracy:.1f}% of {s.total} {c} values" for c, s in sh.items() if s.total))
    return 0


if __name__ == "__main__":
    sys.exit(main())
