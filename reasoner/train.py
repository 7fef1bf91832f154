"""Train the reasoner, the embedded reasoning model: one command, seeded, on one GPU in minutes (CPU works, slowly).

    python -m reasoner.train --out models/zoomr-reasoner [--minutes 12] [--steps 4000] [--eval 200]

What it does, in order: trains the tokenizer on task text (``reasoner.data``); generates and encodes
``--train-problems`` problems of the train split (and ``--warm-problems`` small chain problems: the first ``--warm``
of the schedule trains on those, a curriculum that lets in-context lookup form on short contexts); trains
``reasoner.qwen3.Qwen3`` (``--layers``, ``--hidden``, ...; or the checkpoint ``--init`` names) with AdamW, linear warm-up and cosine decay over ``--steps`` steps or ``--minutes`` minutes, whichever ends first (the
schedule follows the larger of the two fractions), bf16 autocast on CUDA, the answer's tokens weighted ``--answer-weight`` in the loss (``--zoomr-aware``: under ZoomR's view of
the context, ``reasoner.data``; ``--zoom-loss-weight``: plus ``reasoner.zoom_loss``, which teaches the queries after
``</think>`` to rank the needed thought's summary first by ZoomR's score; ``--sentence-view``: the prompt as
``sentencekv`` serves it too, its sentences handed back by an oracle zoom, ``reasoner.sentence_view``, and
``--sentence-loss-weight`` adds ``reasoner.sentence_loss``, which teaches the queries to pick those sentences by
SentenceKV's score); writes a servable checkpoint into ``--out``
(``config.json``, ``generation_config.json``, tokenizer files, ``model.safetensors`` in bfloat16, and
``reasoner_manifest.json`` with the settings, the loss curve, the device and the time taken); then measures greedy
pass@1 with full attention on ``--eval`` held-out problems (``reasoner.evaluate``, no new batch after
``--eval-minutes``) and adds it to the manifest. Bad arguments: one line
``train: error: ...``, status 2.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from reasoner import data
from reasoner.cli import OneLineParser
from reasoner.evaluate import evaluate
from reasoner.qwen3 import Qwen3, Qwen3Config, captured_qk, forward_qk, hf_config
from reasoner.sentence_loss import sentence_loss
from reasoner.sentence_view import SentenceSettings
from reasoner.zoom_loss import ZoomLoss, after_think, blind, participants, zoom_loss
from zoomr_sgl.config import ZoomRConfig
from zoomr_sgl import bpe_tokenizer

MANIFEST = "reasoner_manifest.json"


def parse(argv):
    ap = OneLineParser("train", prog="python -m reasoner.train", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=20261201)
    ap.add_argument("--minutes", type=float, default=12.0, help="training time cap (the eval and save come after)")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--train-problems", type=int, default=24000)
    ap.add_argument("--eval", type=int, default=200, help="held-out problems for the full-attention accuracy")
    ap.add_argument("--eval-minutes", type=float, default=3.0, help="no new evaluation batch after this long")
    ap.add_argument("--init", type=Path, default=None,
                    help="start from this checkpoint (its tokenizer, shape and weights), e.g. to fine-tune ZoomR-aware")
    ap.add_argument("--zoomr-aware", action="store_true",
                    help="train under ZoomR's view: closed thoughts' detail masked, but the one the answer needs")
    ap.add_argument("--aware-share", type=float, default=1.0,
                    help="with --zoomr-aware: share of the problems under ZoomR's view (the rest full attention)")
    ap.add_argument("--stray-share", type=float, default=0.0,
                    help="with --zoomr-aware: share of each later thought's 8-token blocks whose queries also read "
                         "one earlier thought's detail, at random (the server's zoom leaves one while the model "
                         "writes; reasoner.data)")
    ap.add_argument("--sentence-view", action="store_true",
                    help="with --zoomr-aware: also train under SentenceKV's view of the prompt "
                         "(reasoner.sentence_view)")
    ap.add_argument("--sentence-share", type=float, default=1.0, help="share of ZoomR-aware problems under it")
    ap.add_argument("--sentence-loss-weight", type=float, default=0.0,
                    help="weight of reasoner.sentence_loss (needs --sentence-view)")
    ap.add_argument("--sentence-min-tokens", type=int, default=SentenceSettings().min_tokens,
                    help="the server's --zoomr-sentence-min-tokens trained for")
    ap.add_argument("--sentence-sink", type=int, default=SentenceSettings().sink,
                    help="the server's --zoomr-sink-tokens trained for")
    ap.add_argument("--sentence-recent", type=int, default=SentenceSettings().recent,
                    help="the server's --zoomr-recent-tokens trained for")
    ap.add_argument("--sentence-budget", type=int, default=SentenceSettings().budget,
                    help="the server's --zoomr-sentence-budget trained for")
    ap.add_argument("--zoom-interval", type=int, default=SentenceSettings().interval,
                    help="the server's --zoomr-zoom-interval trained for (the sentence view's zooms)")
    ap.add_argument("--records-share", type=float, default=0.25, help="share of long-prompt (records) problems")
    ap.add_argument("--items", type=int, default=None, help="chain problems: items each (default 12-48 at random)")
    ap.add_argument("--boxes", type=int, default=None, help="chain problems: box labels each (default 40)")
    ap.add_argument("--linked", action="store_true",
                    help="chain problems: each item's line names the next (reasoner.tasks; for --sentence-view)")
    ap.add_argument("--warm", type=float, default=0.2,
                    help="curriculum: share of the schedule trained on small chain problems first (0: none)")
    ap.add_argument("--warm-problems", type=int, default=8000, help="size of the curriculum's warm-up set")
    ap.add_argument("--zoom-loss-weight", type=float, default=0.0,
                    help="with --zoomr-aware: weight of the zoom loss (reasoner.zoom_loss: ZoomR's summary score "
                    "as a classifier of the thought the answer needs)")
    ap.add_argument("--answer-weight", type=float, default=1.0,
                    help="loss weight of the tokens after </think> (the answer: a few tokens of each trace)")
    ap.add_argument("--tokens-per-step", type=int, default=65536)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--vocab", type=int, default=1024, help="BPE vocabulary target (the corpus may give fewer)")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=768)
    ap.add_argument("--workers", type=int, default=max(1, min(16, (os.cpu_count() or 2) - 1)))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    for name in ("minutes", "steps", "train_problems", "tokens_per_step", "lr", "layers", "hidden", "heads"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be positive")
    if args.init and not (args.init / MANIFEST).is_file():
        ap.error(f"--init {args.init}: no {MANIFEST} there (a checkpoint written by this script)")
    if not 0.0 <= args.warm < 1.0 or args.warm_problems <= 0:
        ap.error("--warm must be within [0, 1) and --warm-problems positive")
    if args.zoom_loss_weight < 0 or (args.zoom_loss_weight > 0 and not args.zoomr_aware):
        ap.error("--zoom-loss-weight must be >= 0 and needs --zoomr-aware (the loss reads ZoomR's view)")
    if args.answer_weight <= 0 or not 0.0 < args.aware_share <= 1.0:
        ap.error("--answer-weight must be positive and --aware-share within (0, 1]")
    if not 0.0 <= args.stray_share <= 1.0 or (args.stray_share > 0 and not args.zoomr_aware):
        ap.error("--stray-share must be within [0, 1] and needs --zoomr-aware")
    if args.sentence_view and not args.zoomr_aware or args.sentence_loss_weight > 0 and not args.sentence_view:
        ap.error("--sentence-view needs --zoomr-aware, and --sentence-loss-weight needs --sentence-view")
    if not 0.0 < args.sentence_share <= 1.0 or args.sentence_loss_weight < 0:
        ap.error("--sentence-share must be within (0, 1] and --sentence-loss-weight >= 0")
    if min(args.sentence_min_tokens, args.sentence_budget, args.zoom_interval) < 1 or \
            min(args.sentence_sink, args.sentence_recent) < 0:
        ap.error("--sentence-min-tokens, --sentence-budget and --zoom-interval must be positive, "
                 "--sentence-sink and --sentence-recent not negative")
    if args.eval < 0 or args.heads % args.kv_heads or args.hidden % args.heads:
        ap.error("--eval must be >= 0 and --heads a multiple of --kv-heads, --hidden of --heads")
    return args


def weighted_loss(logits, ids, tgt, end_think: int, answer_weight: float) -> torch.Tensor:
    """Cross-entropy over the target tokens, those after ``</think>`` (the answer) weighted ``answer_weight``: a
    trace's answer is a few tokens among thousands, and its lookup is what accuracy measures."""
    per = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=data.IGNORE,
                                            reduction="none").view_as(tgt)
    weight = (tgt != data.IGNORE).float()
    if answer_weight != 1.0:  # position t predicts token t + 1: weighted from the </think> position on
        weight = weight * (1.0 + (answer_weight - 1.0) * after_think(ids, end_think).float())
    return (per * weight).sum() / weight.sum().clamp_min(1.0)


def blind_zoom_loss(model, scoring, ids, seg, own, stray, sent, end_think: int, dev):
    """``reasoner.zoom_loss`` over the rows that take part, from a second forward under its blind view (nothing after
    ``</think>`` reads detail): the scoring layers' queries as the server's are when it picks its first recall."""
    rows = torch.nonzero(participants(seg, own, ids, end_think)).flatten()
    if not len(rows):
        return ZoomLoss(torch.zeros((), device=ids.device), 0)
    ids, seg, own, stray = ids[rows], seg[rows], own[rows], stray[rows]
    sent = None if sent is None else sent.rows(rows)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        qs, ks = captured_qk(model, scoring, ids, data.attention_mask(seg, blind(own, ids, end_think), stray, sent))
    return zoom_loss(qs, ks, seg, own, ids, end_think)


def read_checkpoint(path: Path) -> Qwen3:
    """The model ``write_checkpoint`` wrote into ``path`` (its shape from the manifest), in float32 on the CPU."""
    from safetensors.torch import load_file

    model = Qwen3(Qwen3Config(**json.loads((path / MANIFEST).read_text())["model"]))
    model.load_state_dict({k: v.float() for k, v in load_file(str(path / "model.safetensors")).items()})
    return model


def write_checkpoint(out: Path, model: Qwen3, tok_json: str, manifest: dict) -> None:
    from safetensors.torch import save_file
    from tokenizers import Tokenizer

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.from_str(tok_json)
    eos, pad = tok.token_to_id(data.EOS), tok.token_to_id(data.PAD)
    (out / "tokenizer.json").write_text(tok_json, encoding="utf-8")
    for name, text in bpe_tokenizer.tokenizer_files(model.cfg.max_position_embeddings).items():
        (out / name).write_text(text, encoding="utf-8")
    (out / "config.json").write_text(json.dumps(hf_config(model.cfg, eos, pad), indent=2) + "\n")
    gen = {"eos_token_id": [eos, pad], "pad_token_id": pad, "transformers_version": "5.12.1"}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    sd = {k: v.detach().to("cpu", torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    files = sorted(f.name for f in out.iterdir() if f.name != MANIFEST)
    manifest["sha256"] = {f: hashlib.sha256((out / f).read_bytes()).hexdigest() for f in files}
    markers = bpe_tokenizer.SPECIAL_TOKENS + bpe_tokenizer.ADDED_TOKENS
    manifest["token_ids"] = {t: tok.token_to_id(t) for t in markers}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def main(argv=None) -> int:
    args = parse(argv)
    from tokenizers import Tokenizer

    t_start = time.time()
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    tok_json = (args.init / "tokenizer.json").read_text() if args.init else data.build_tokenizer(args.vocab)
    tok = Tokenizer.from_str(tok_json)
    vocab = -(-tok.get_vocab_size() // 64) * 64
    aware = args.aware_share if args.zoomr_aware else 0.0
    chain = {k: v for k, v in (("items", args.items), ("boxes", args.boxes), ("linked", args.linked or None))
             if v is not None}
    sentences = (SentenceSettings(args.sentence_min_tokens, args.sentence_sink, args.sentence_recent,
                                  args.sentence_budget, args.zoom_interval) if args.sentence_view else None)
    train = data.examples(tok_json, "train", args.train_problems, args.workers, args.records_share, chain,
                          aware, stray=args.stray_share, sentences=sentences, sentence_share=args.sentence_share)
    warm = data.warm_examples(tok_json, args.warm_problems, args.workers, aware) if args.warm else []
    print(f"[train] {len(train)} problems, {sum(len(e.ids) for e in train) / 1e6:.1f}M tokens (warm-up: {len(warm)}), "
          f"vocab {vocab}, data in {time.time() - t_start:.0f}s", flush=True)
    if args.init:  # go on from a checkpoint: its tokenizer, shape and weights (the shape flags are ignored)
        model = read_checkpoint(args.init)
        cfg = model.cfg
    else:
        cfg = Qwen3Config(vocab_size=vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                          num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                          head_dim=args.hidden // args.heads, intermediate_size=args.intermediate)
        model = Qwen3(cfg)
        model.init_weights(torch.Generator().manual_seed(args.seed))
    model.to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() > 1]
    rest = [p for p in model.parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), fused=dev.type == "cuda")
    batches = iter(data.Batches(train, args.tokens_per_step, tok.token_to_id(data.PAD), args.seed))
    warm_batches = iter(data.Batches(warm, args.tokens_per_step, tok.token_to_id(data.PAD), args.seed)) if warm else None
    end_think = tok.token_to_id("</think>")
    scoring = [model.model.layers[i].self_attn for i in ZoomRConfig().scoring_layer_ids(cfg.num_hidden_layers)]
    curve, t0, step, seen = [], time.time(), 0, 0
    budget_s = args.minutes * 60
    while True:
        frac = max(step / args.steps, (time.time() - t0) / budget_s)
        if frac >= 1.0:
            break
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        warming = warm_batches is not None and frac < args.warm
        ids, tgt, view = next(warm_batches if warming else batches)
        seen += int((tgt != data.IGNORE).sum())  # on the host: no device sync per step
        ids, tgt = ids.to(dev, non_blocking=True), tgt.to(dev, non_blocking=True)
        view = None if view is None else tuple(None if t is None else t.to(dev, non_blocking=True) for t in view)
        mask = None if view is None else data.attention_mask(*view)
        sent = None if view is None else view[3]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            if args.sentence_loss_weight > 0 and sent is not None:
                logits, qs, ks = forward_qk(model, scoring, ids, mask)
            else:
                logits, qs = model(ids, mask=mask), None
        loss = weighted_loss(logits, ids, tgt, end_think, args.answer_weight)
        zl = sl = None
        if args.zoom_loss_weight > 0 and view is not None:
            zl = blind_zoom_loss(model, scoring, ids, *view, end_think, dev)
            loss = loss + args.zoom_loss_weight * zl.loss
        if qs is not None:
            sl = sentence_loss(qs, ks, sent, args.zoom_interval)
            loss = loss + args.sentence_loss_weight * sl.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 25 == 0 or step == 1:
            curve.append({"step": step, "loss": round(loss.item(), 5), "lr": lr, "trained_tokens": seen,
                          "elapsed_s": round(time.time() - t0, 1), "warm_up": warming,
                          **({"zoom_loss": round(zl.loss.item(), 5)} if zl is not None and zl.rows else {}),
                          **({"sentence_loss": round(sl.loss.item(), 5)} if sl is not None and sl.rows else {})})
            print(f"[train] step {step} loss {curve[-1]['loss']:.4f} lr {lr:.2e} {time.time() - t0:.0f}s"
                  + (f" zoom loss {curve[-1]['zoom_loss']:.4f}" if "zoom_loss" in curve[-1] else "")
                  + (f" sentence loss {curve[-1]['sentence_loss']:.4f}" if "sentence_loss" in curve[-1] else "")
                  + (" (warm-up)" if warming else ""), flush=True)
    train_s = time.time() - t0
    model.eval()
    manifest = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": cfg.to_dict(), "parameters": n_params, "steps": step, "train_seconds": round(train_s, 1),
        "trained_tokens": seen, "loss_curve": curve, "heldout_full_attention": None,
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # the lineage: what --init started from, with its own base, so one manifest tells how the weights were made
        "base_checkpoint": json.loads((args.init / MANIFEST).read_text()) if args.init else None,
    }
    write_checkpoint(args.out, model, tok_json, manifest)  # first, so a cut-short evaluation loses nothing
    print(f"[train] wrote {args.out} ({n_params / 1e6:.2f}M parameters, {step} steps, {train_s:.0f}s)", flush=True)
    result = (evaluate(model, tok, "heldout", args.eval, dev, args.records_share, chain, args.eval_minutes * 60)
              if args.eval else None)
    if result:
        print(f"[train] held-out full-attention accuracy {result['accuracy']:.3f} on {result['n']}", flush=True)
    manifest.update(heldout_full_attention=result, total_seconds=round(time.time() - t_start, 1))
    write_checkpoint(args.out, model, tok_json, manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
