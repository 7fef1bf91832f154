"""Greedy pass@1 of a trained reasoner with full attention, in torch (no server): the training script's check.

Contract:
- ``greedy(model, prompts, max_new, eos_id, device, batch_size)``: one completion (ids, eos excluded) per prompt,
  greedy, at most ``max_new[i]`` tokens; prompts are batched by length, left-padded (``reasoner.qwen3.KVCache``).
- ``evaluate(model, tok, split, n, device, records_share, chain)``: the first ``n`` problems of ``split`` (mixed and
  sized as ``reasoner.data.examples`` makes them; batches of ``batch_size`` in order, no new batch after
  ``max_seconds``: ``n`` in the result is how many were evaluated), each generated up to its gold trace's length plus 64 tokens; returns
  ``{"n", "accuracy", "by_kind": {kind: {"n", "accuracy"}}, "needs_detail_accuracy", "examples": [3 texts]}``.
"""

from __future__ import annotations

import time

import torch

from reasoner import answers, data
from reasoner.qwen3 import KVCache, Qwen3
from reasoner.tasks import family_of, problem


@torch.no_grad()
def greedy(model: Qwen3, prompts: list[list[int]], max_new: list[int], eos_id: int, device,
           batch_size: int = 64) -> list[list[int]]:
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int] | None] = [None] * len(prompts)
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    for lo in range(0, len(order), batch_size):
        rows = order[lo:lo + batch_size]
        width, steps = max(len(prompts[i]) for i in rows), max(max_new[i] for i in rows)
        cache = KVCache(model.cfg, len(rows), width + steps, device, dtype)
        ids = torch.zeros(len(rows), width, dtype=torch.int64)
        pos = torch.zeros(len(rows), width, dtype=torch.int64)
        for r, i in enumerate(rows):
            pad = width - len(prompts[i])
            ids[r, pad:] = torch.tensor(prompts[i])
            pos[r, pad:] = torch.arange(len(prompts[i]))
            cache.valid[r, pad:width] = True
        ids, pos = ids.to(device), pos.to(device)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            logits = model(ids, pos, cache)
            nxt = logits[:, -1].argmax(-1)
            cur = pos[:, -1] + 1
            gen, done = [nxt], nxt == eos_id
            limit = torch.tensor([max_new[i] for i in rows], device=device)
            for t in range(1, steps):
                if bool((done | (t >= limit)).all()):
                    break
                cache.valid[:, width + t - 1] = True
                logits = model(nxt[:, None], cur[:, None], cache)
                nxt = logits[:, -1].argmax(-1)
                cur = cur + 1
                gen.append(nxt)
                done = done | (nxt == eos_id)
        toks = torch.stack(gen, 1).tolist()
        for r, i in enumerate(rows):
            seq = toks[r][: max_new[i]]
            out[i] = seq[: seq.index(eos_id)] if eos_id in seq else seq
    return out


def evaluate(model: Qwen3, tok, split: str, n: int, device, records_share: float = 0.25,
             chain: dict | None = None, max_seconds: float = float("inf"), batch_size: int = 64) -> dict:
    problems = [problem(split, f, i, **((chain or {}) if f == "chain" else {}))
                for i, f in ((i, family_of(i, records_share)) for i in range(n))]
    encoded = [data.encode(tok, p) for p in problems]
    prompts = [e.ids[: e.prompt_len] for e in encoded]
    max_new = [len(e.ids) - e.prompt_len + 64 for e in encoded]
    outs, t0 = [], time.monotonic()
    for lo in range(0, n, batch_size):  # in problem order, so a time cap keeps a prefix of the list
        if outs and time.monotonic() - t0 > max_seconds:
            break
        outs += greedy(model, prompts[lo:lo + batch_size], max_new[lo:lo + batch_size], tok.token_to_id(data.EOS),
                       device, batch_size)
    n, problems = len(outs), problems[: len(outs)]
    texts = [tok.decode(o, skip_special_tokens=False) for o in outs]
    ok = [answers.is_correct(t, p.answer) for t, p in zip(texts, problems)]
    kinds: dict[str, list[bool]] = {}
    for p, good in zip(problems, ok):
        kinds.setdefault(f"{p.family}/{p.kind}", []).append(good)
    detail = [g for p, g in zip(problems, ok) if p.needs_detail]
    return {
        "n": n, "accuracy": sum(ok) / max(1, n),
        "by_kind": {k: {"n": len(v), "accuracy": sum(v) / len(v)} for k, v in sorted(kinds.items())},
        "needs_detail_accuracy": sum(detail) / max(1, len(detail)),
        "examples": [t[-400:] for t in texts[:3]],
    }
