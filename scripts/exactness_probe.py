#!/usr/bin/env python3
"""Where two greedy generations part: the first differing token and how far the log-probabilities had drifted before.

Against running servers (``--zoomr URL``, optionally ``--stock URL``), each probe generates the same greedy request
twice under two settings and prints one line: the first index where the output ids differ (or ``same``), the
largest |logprob difference| over the common prefix (0.0: bit-identical attention up to there; small: floating-point
drift; large at one step: that step attended something else), and the ZoomR stats of both. Probes:

- ``repeat-full`` / ``repeat-zoomr``: the same request twice (is the server deterministic at all?);
- ``recall-vs-full``: every thought offloaded and recalled at once against full KV (the radix cache as it is), and
  ``flushed``: the same with the cache flushed before each, so both prefill alike;
- ``batch``: the batched exactness test's 20 prompts at once, twice on each server, then ZoomR (nothing offloaded) against stock (only the
  prompts that differ get a line).

    python scripts/exactness_probe.py --zoomr http://127.0.0.1:30011 [--stock http://127.0.0.1:30012]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.test_resident_attention import EXACT, random_prompts  # noqa: E402  the suite's requests, not copies
from tests.test_zoomr_serving import QUESTION, RECALL_ALL, RECALL_QUESTIONS  # noqa: E402


def generate(url, text, custom, n, zoomr=True):
    params = {"temperature": 0, "max_new_tokens": n, "ignore_eos": True}
    if zoomr:
        params["custom_params"] = custom
    r = requests.post(url + "/generate", json={"text": text, "sampling_params": params, "return_logprob": True},
                      timeout=600)
    r.raise_for_status()
    return r.json()


def compare(name, a, b, quiet=False):
    ids_a, ids_b = a["output_ids"], b["output_ids"]
    first = next((i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y), None)
    lp_a = [t[0] for t in a["meta_info"]["output_token_logprobs"]]
    lp_b = [t[0] for t in b["meta_info"]["output_token_logprobs"]]
    upto = len(ids_a) if first is None else first
    drift = max((abs(x - y) for x, y in zip(lp_a[:upto], lp_b[:upto]) if x is not None and y is not None),
                default=0.0)
    stats = lambda o: {k: o["meta_info"].get("zoomr", {}).get(k) for k in ("thoughts", "offloaded_tokens",  # noqa: E731
                                                                           "zoom_recalls", "device_kv_tokens")}
    where = "same" if first is None else f"differ at {first} ({ids_a[first]} vs {ids_b[first]}; logprobs " \
        f"{lp_a[first]:.4f} vs {lp_b[first]:.4f})"
    if quiet and first is None:
        return True
    print(f"{name:28s} {where}; max |dlogprob| before: {drift:.2e}; stats {json.dumps(stats(a))} / "
          f"{json.dumps(stats(b))}", flush=True)
    return first is None


def flush(url):
    requests.post(url + "/flush_cache", timeout=60)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoomr", required=True)
    ap.add_argument("--stock")
    args = ap.parse_args()
    z, s = args.zoomr.rstrip("/"), (args.stock or "").rstrip("/")
    full = {**RECALL_ALL, "zoomr_policy": "full"}
    zoom = {**RECALL_ALL, "zoomr_policy": "zoomr"}
    compare("repeat-full", generate(z, QUESTION, full, 200), generate(z, QUESTION, full, 200))
    compare("repeat-zoomr", generate(z, QUESTION, zoom, 200), generate(z, QUESTION, zoom, 200))
    compare("recall-vs-full", generate(z, QUESTION, zoom, 200), generate(z, QUESTION, full, 200))
    for q in RECALL_QUESTIONS:
        flush(z)
        a = generate(z, q, zoom, 200)
        flush(z)
        compare(f"flushed {q[:14]!r}", a, generate(z, q, full, 200))
    prompts = random_prompts(20)
    servers = [("zoomr", z)] + ([("stock", s)] if s else [])
    runs = {}
    for name, url in servers:
        runs[name] = [generate(url, prompts, EXACT, 48, zoomr=name == "zoomr") for _ in range(2)]
        same = sum(compare(f"batch {name} run1-vs-run2 #{i}", x, y, True) for i, (x, y) in enumerate(zip(*runs[name])))
        print(f"batch {name}: {same}/20 repeat exactly", flush=True)
    if s:
        same = sum(compare(f"batch zoomr-vs-stock #{i}", x, y, True) for i, (x, y) in enumerate(zip(runs["zoomr"][0],
                                                                                          runs["stock"][0])))
        print(f"batch zoomr vs stock: {same}/20 equal", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
