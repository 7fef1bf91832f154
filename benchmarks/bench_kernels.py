#!/usr/bin/env python3
"""Kernel benchmark: FlashInfer decode over the full KV against ZoomR decode over 1/4, 1/8, 1/16 of it resident
(index building and thought scoring timed beside it), against the device copy ceiling and the pinned host->device
recall bandwidth measured in the same run. One command, one table:

    python benchmarks/bench_kernels.py                 # on a CUDA GPU with flashinfer; exit 2 elsewhere
    python benchmarks/bench_kernels.py --plot FILE.json  # only (re)draw the PNG from a results file (any host)

Heads like Qwen3-8B (32 q, 8 kv, head_dim 128), bf16, page size 1 (SGLang's slots), batch {1, 16, 64} x context
{8K, 32K}. Fresh random data per configuration (never zeros); times are ``triton.testing.do_bench`` medians (it
clears the L2 between repeats). A request's resident set is the last span (the open thought) plus random 256-token
spans (thoughts and summaries) up to the fraction; every closed span is a thought with a 32-token summary scored at 2
layers. Writes ``benchmarks/results/kernels.{json,md,png}`` with the GPU, versions and date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

HQ, HKV, D = 32, 8, 128
BATCHES, CONTEXTS, FRACTIONS = (1, 16, 64), (8192, 32768), (4, 8, 16)
SPAN, SUMMARY, SCORING_LAYERS = 256, 32, 2
RESULTS = REPO / "benchmarks" / "results"
MODEL_LAYERS = 36  # Qwen3-8B: attention runs once per layer per decode step
TARGET = {"batch": 16, "context": 32768, "fraction": 8, "speedup": 5.5, "overhead_pct": 10.0, "bw_pct": 75.0}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def bench(fn) -> float:
    """Median microseconds of ``fn`` on the device (events), after warm-up."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3


def copy_ceiling_tbps() -> float:
    n = 1 << 30  # bytes per buffer: far past the L2
    src = torch.randint(-100, 100, (n // 2,), dtype=torch.int16, device="cuda").view(torch.bfloat16)
    dst = torch.empty_like(src)
    us = bench(lambda: dst.copy_(src))
    return 2 * n / (us * 1e-6) / 1e12  # bytes read + bytes written


def recall_bandwidth() -> dict:
    """Host->device recall of one thought's detail, all layers at once, through HostDetailStore (pinned)."""
    from zoomr_sgl.host_store import HostDetailStore

    layers, tokens, pool = 8, 8192, 16384
    store = HostDetailStore(layers, tokens, HKV, D, torch.bfloat16, device="cuda")
    store.k.copy_(torch.randn(store.k.shape, dtype=torch.float32).to(torch.bfloat16))
    store.v.copy_(torch.randn(store.v.shape, dtype=torch.float32).to(torch.bfloat16))
    block = store.allocate(tokens, owner="bench")
    k_bufs = [torch.empty(pool, HKV, D, dtype=torch.bfloat16, device="cuda") for _ in range(layers)]
    v_bufs = [torch.empty(pool, HKV, D, dtype=torch.bfloat16, device="cuda") for _ in range(layers)]
    slots = torch.randperm(pool - 1, device="cuda")[:tokens] + 1
    nbytes = 2 * layers * tokens * HKV * D * 2

    def timed(fn, repeats=10):
        out = []
        for i in range(repeats + 2):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            if i >= 2:
                out.append(time.perf_counter() - t0)
        return statistics.median(out)

    store_s = timed(lambda: store.copy_to_device(block, k_bufs, v_bufs, slots).wait())
    ok = torch.equal(k_bufs[3][slots[:5]].cpu(), store.k[3, :5]) and torch.equal(v_bufs[5][slots[-5:]].cpu(),
                                                                                  store.v[5, tokens - 5:tokens])
    raw = store.kv.reshape(-1)[: nbytes // 2]  # the same bytes as one pinned buffer: the link's ceiling
    dev = torch.empty_like(raw, device="cuda")
    raw_s = timed(lambda: dev.copy_(raw, non_blocking=True))
    return {"bytes": nbytes, "store_gbps": nbytes / store_s / 1e9, "pinned_ceiling_gbps": nbytes / raw_s / 1e9,
            "layers": layers, "tokens": tokens, "correct": ok}


def resident_rows(gen, rows: torch.Tensor, fraction: int) -> torch.Tensor:
    """Holes (0) everywhere but the last span and random spans, ``1/fraction`` of the spans in all."""
    bs, ctx = rows.shape
    spans = ctx // SPAN
    keep = torch.zeros(bs, spans, dtype=torch.bool)
    for i in range(bs):
        keep[i, torch.randperm(spans - 1, generator=gen)[: spans // fraction - 1]] = True
    keep[:, -1] = True
    mask = keep.repeat_interleave(SPAN, dim=1).to(rows.device)
    return torch.where(mask, rows, torch.zeros_like(rows))


def run_config(gen, bs: int, ctx: int, ceiling: float, use_tc: bool) -> dict:
    import flashinfer

    from kernels.resident_indices import resident_indices
    from kernels.thought_scoring import thought_scores_triton
    from zoomr_sgl.reference_attention import reference_decode_attention

    total = bs * ctx
    k_pool = torch.randn(total + 1, HKV, D, dtype=torch.bfloat16, device="cuda")
    v_pool = torch.randn(total + 1, HKV, D, dtype=torch.bfloat16, device="cuda")
    kv = (k_pool.unsqueeze(1), v_pool.unsqueeze(1))  # NHD pages of one token: [slots, 1, Hkv, D]
    blocks = torch.randperm(total // SPAN, generator=gen).to("cuda")  # allocator-like: shuffled runs of slots
    slots = (blocks[:, None] * SPAN + torch.arange(SPAN, device="cuda")).flatten().to(torch.int32) + 1
    req_to_token = torch.zeros(bs + 1, ctx, dtype=torch.int32, device="cuda")  # row 0: SGLang's padding row
    req_to_token[1:] = slots.view(bs, ctx)
    rows = torch.arange(1, bs + 1, device="cuda")
    seq_lens = torch.full((bs,), ctx, dtype=torch.int32, device="cuda")
    q = torch.randn(bs, HQ, D, dtype=torch.bfloat16, device="cuda")
    workspace = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    last = torch.ones(bs, dtype=torch.int32, device="cuda")

    def planned(indptr, indices):
        w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD", use_tensor_cores=use_tc)
        w.plan(indptr, indices, last, HQ, HKV, D, 1, q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16)
        return w

    full_indptr = torch.arange(bs + 1, dtype=torch.int32, device="cuda") * ctx
    full = planned(full_indptr, req_to_token[1:].flatten())
    full_us = bench(lambda: full.run(q, kv))
    full_bytes = 2 * total * HKV * D * 2
    row = {"batch": bs, "context": ctx, "full_us": full_us, "full_tbps": full_bytes / (full_us * 1e-6) / 1e12,
           "zoomr": {}}
    log(f"  full: {full_us:8.1f} us  {row['full_tbps']:.2f} TB/s")

    for fraction in FRACTIONS:
        holed = req_to_token.clone()
        holed[1:] = resident_rows(gen, req_to_token[1:], fraction)
        built = resident_indices(holed, rows, seq_lens, max_len=ctx)
        lens_cpu = built.lens.cpu()
        nres = int(lens_cpu.sum())
        plan_s = []
        for _ in range(10):
            t0 = time.perf_counter()
            wrapper = planned(built.kv_indptr, built.kv_indices)
            plan_s.append(time.perf_counter() - t0)
        attn_us = bench(lambda: wrapper.run(q, kv))

        def build():
            resident_indices(holed, rows, seq_lens, max_len=ctx).lens.cpu()  # with the step's host read

        index_us = bench(build)

        # every closed span is a thought with a SUMMARY-token summary among the resident slots
        thoughts = ctx // SPAN - 1
        thought_req = torch.arange(bs, device="cuda").repeat_interleave(thoughts)
        summary_indptr = torch.arange(bs * thoughts + 1, dtype=torch.int32, device="cuda") * SUMMARY
        pick = torch.randint(0, nres, (bs * thoughts * SUMMARY,), generator=gen).to("cuda")
        summary_slots = built.kv_indices[:nres][pick]
        queries = torch.randn(bs, SCORING_LAYERS, HQ, D, dtype=torch.bfloat16, device="cuda")
        k_layers = [k_pool] * SCORING_LAYERS
        scores = torch.empty(bs * thoughts, dtype=torch.float32, device="cuda")
        score_us = bench(lambda: thought_scores_triton(queries, k_layers, thought_req, summary_indptr, summary_slots,
                                                       out=scores))

        out = wrapper.run(q, kv)  # correctness of the sparse decode on request 0, against a float32 reference
        res0 = built.kv_indices[: int(lens_cpu[0])].long()
        ref = reference_decode_attention(q[:1].cpu(), k_pool[res0].cpu(), v_pool[res0].cpu(),
                                         [torch.arange(len(res0))])
        rel = ((out[:1].float().cpu() - ref).norm() / ref.norm()).item()

        res_bytes = 2 * nres * HKV * D * 2
        tbps = res_bytes / (attn_us * 1e-6) / 1e12
        z = {"resident_tokens": nres, "attn_us": attn_us, "speedup": full_us / attn_us, "tbps": tbps,
             "bw_pct_of_ceiling": 100 * tbps / ceiling, "index_us": index_us, "scoring_us": score_us,
             "thoughts": bs * thoughts, "overhead_pct_of_full": 100 * (index_us + score_us) / full_us,
             "plan_host_us": 1e6 * statistics.median(plan_s), "rel_err_vs_fp32": rel}
        row["zoomr"][f"1/{fraction}"] = z
        log(f"  1/{fraction:<2}: {attn_us:8.1f} us  x{z['speedup']:.1f}  {tbps:.2f} TB/s ({z['bw_pct_of_ceiling']:.0f}%)"
            f"  index {index_us:.1f} us  scoring {score_us:.1f} us  plan {z['plan_host_us']:.0f} us  err {rel:.1e}")
    del k_pool, v_pool, kv
    torch.cuda.empty_cache()
    return row


def per_step(row: dict, fraction: int) -> dict:
    """One decode step of a ``MODEL_LAYERS``-layer model: attention runs per layer, the resident index is built once
    per step and thought scoring runs once per zoom step (counted here on every step, the worst case)."""
    z = row["zoomr"][f"1/{fraction}"]
    full = MODEL_LAYERS * row["full_us"]
    zoomr = MODEL_LAYERS * z["attn_us"] + z["index_us"] + z["scoring_us"]
    return {"full_us": full, "zoomr_us": zoomr, "speedup": full / zoomr,
            "overhead_pct": 100 * (z["index_us"] + z["scoring_us"]) / full}


def check_targets(rows: list[dict]) -> dict:
    t = next(r for r in rows if r["batch"] == TARGET["batch"] and r["context"] == TARGET["context"])
    z, step = t["zoomr"][f"1/{TARGET['fraction']}"], per_step(t, TARGET["fraction"])
    at_target_fraction = [r["zoomr"][f"1/{TARGET['fraction']}"]["bw_pct_of_ceiling"] for r in rows
                          if r["batch"] >= TARGET["batch"] and r["context"] == TARGET["context"]]
    return {
        f"attention alone: speedup >= {TARGET['speedup']}": z["speedup"] >= TARGET["speedup"],
        f"step of {MODEL_LAYERS} layers incl. index + scoring: speedup >= {TARGET['speedup']}":
            step["speedup"] >= TARGET["speedup"],
        f"index + scoring <= {TARGET['overhead_pct']}% of one layer's full attention":
            z["overhead_pct_of_full"] <= TARGET["overhead_pct"],
        f"index + scoring <= {TARGET['overhead_pct']}% of a step's full attention ({MODEL_LAYERS} layers)":
            step["overhead_pct"] <= TARGET["overhead_pct"],
        f"bandwidth >= {TARGET['bw_pct']}% of ceiling, batch >= 16 x 32K, 1/{TARGET['fraction']}":
            all(b >= TARGET["bw_pct"] for b in at_target_fraction),
        f"bandwidth >= {TARGET['bw_pct']}% of ceiling, every batch >= 16 row and fraction": all(
            r["zoomr"][f"1/{f}"]["bw_pct_of_ceiling"] >= TARGET["bw_pct"] for r in rows if r["batch"] >= 16
            for f in FRACTIONS),
    }


LOG_ENV = re.compile(r"\] (?P<gpu>.+): torch (?P<torch>\S+), triton (?P<triton>\S+), flashinfer (?P<flashinfer>\S+)$")
LOG_FULL = re.compile(r"full:\s+(?P<us>[\d.]+) us\s+(?P<tbps>[\d.]+) TB/s")
LOG_SPARSE = re.compile(r"1/(?P<f>\d+)\s*:\s+(?P<us>[\d.]+) us\s+x[\d.]+\s+(?P<tbps>[\d.]+) TB/s \((?P<pct>\d+)%\)\s+"
                        r"index (?P<index>[\d.]+) us\s+scoring (?P<scoring>[\d.]+) us\s+plan (?P<plan>\d+) us\s+"
                        r"err (?P<err>[\d.e+-]+)")


def from_log(path: Path, date: str) -> dict:
    """Rebuild a result from a run's printed log (the device can return fewer files than a run writes)."""
    rows, env, ceiling, recall = [], {}, None, {}
    for line in path.read_text().splitlines():
        if m := LOG_ENV.search(line):
            env = {**m.groupdict(), "date": date, "source": f"parsed from {path.name}"}
        elif m := re.search(r"copy ceiling ([\d.]+) TB/s", line):
            ceiling = float(m.group(1))
        elif m := re.search(r"recall ([\d.]+) GB/s \(pinned ceiling ([\d.]+) GB/s\)", line):
            recall = {"store_gbps": float(m.group(1)), "pinned_ceiling_gbps": float(m.group(2)), "layers": 8,
                      "tokens": 8192}
        elif m := re.search(r"batch (\d+) x context (\d+)", line):
            rows.append({"batch": int(m.group(1)), "context": int(m.group(2)), "zoomr": {}})
        elif m := LOG_FULL.search(line):
            rows[-1].update(full_us=float(m["us"]), full_tbps=float(m["tbps"]))
        elif m := LOG_SPARSE.search(line):
            r = rows[-1]
            z = {"attn_us": float(m["us"]), "tbps": float(m["tbps"]), "bw_pct_of_ceiling": float(m["pct"]),
                 "index_us": float(m["index"]), "scoring_us": float(m["scoring"]), "plan_host_us": float(m["plan"]),
                 "rel_err_vs_fp32": float(m["err"])}
            z["speedup"] = r["full_us"] / z["attn_us"]
            z["overhead_pct_of_full"] = 100 * (z["index_us"] + z["scoring_us"]) / r["full_us"]
            r["zoomr"][f"1/{m['f']}"] = z
    env.setdefault("cuda", "13.0")
    return {"env": env, "copy_ceiling_tbps": ceiling, "recall": recall, "rows": rows, "targets": check_targets(rows)}


def write_results(result: dict, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernels.json").write_text(json.dumps(result, indent=1))
    table = markdown(result)
    (out / "kernels.md").write_text(table)
    plot(result, out / "kernels.png")
    return table


def markdown(result: dict) -> str:
    env = result["env"]
    lines = [
        f"# Kernel benchmark ({env['gpu']}, {env['date']})", "",
        f"torch {env['torch']}, triton {env['triton']}, flashinfer {env['flashinfer']}, CUDA {env['cuda']}. "
        f"{HQ} q heads, {HKV} kv heads, head_dim {D}, bf16, page size 1; medians of `do_bench`.", "",
        f"Device copy ceiling: **{result['copy_ceiling_tbps']:.2f} TB/s** (read + write). Recall host->device "
        f"(HostDetailStore, pinned, {result['recall']['layers']} layers x {result['recall']['tokens']} tokens): "
        f"**{result['recall']['store_gbps']:.1f} GB/s** against {result['recall']['pinned_ceiling_gbps']:.1f} GB/s "
        f"for one pinned buffer of the same bytes.", "",
        "| batch x context | full | " + " | ".join(f"ZoomR 1/{f}" for f in FRACTIONS) + " | index + scoring (1/8) |",
        "|---|---|" + "---|" * len(FRACTIONS) + "---|",
    ]
    for r in result["rows"]:
        cells = [f"{r['full_us']:.0f} us ({r['full_tbps']:.2f} TB/s)"]
        for f in FRACTIONS:
            z = r["zoomr"][f"1/{f}"]
            cells.append(f"{z['attn_us']:.0f} us (x{z['speedup']:.1f}, {z['tbps']:.2f} TB/s, {z['bw_pct_of_ceiling']:.0f}%)")
        z8 = r["zoomr"]["1/8"]
        cells.append(f"{z8['index_us']:.0f} + {z8['scoring_us']:.0f} us ({z8['overhead_pct_of_full']:.1f}% of full)")
        lines.append(f"| {r['batch']} x {r['context']} | " + " | ".join(cells) + " |")
    lines += ["", f"One decode step of a {MODEL_LAYERS}-layer model (Qwen3-8B): attention per layer, index building "
              "once per step, scoring once per zoom step (counted every step here):", "",
              "| batch x context | full attention | ZoomR 1/8 incl. index + scoring | speedup | index + scoring |",
              "|---|---|---|---|---|"]
    for r in result["rows"]:
        st = per_step(r, TARGET["fraction"])
        lines.append(f"| {r['batch']} x {r['context']} | {st['full_us'] / 1e3:.2f} ms | {st['zoomr_us'] / 1e3:.2f} ms | "
                     f"x{st['speedup']:.1f} | {st['overhead_pct']:.1f}% of full |")
    lines += ["", "Targets (batch 16 x 32K, 1/8 resident):", ""] + [
        f"- {k}: {'met' if v else 'MISSED'}" for k, v in result["targets"].items()] + [""]
    if "source" in result["env"]:
        lines += [f"Numbers {result['env']['source']} (the run's JSON did not come back from the device).", ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log(f"no matplotlib here: draw the PNG later with `python {Path(__file__).name} --plot RESULTS.json`")
        return False
    fig, ax = plt.subplots(figsize=(9, 4.5))
    labels = [f"{r['batch']}x{r['context'] // 1024}K" for r in result["rows"]]
    series = [("full", [r["full_us"] for r in result["rows"]])] + [
        (f"ZoomR 1/{f}", [r["zoomr"][f"1/{f}"]["attn_us"] for r in result["rows"]]) for f in FRACTIONS]
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series):
        ax.bar([x + i * width for x in range(len(labels))], values, width, label=name)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))], labels)
    ax.set_yscale("log")
    ax.set_ylabel("decode attention, one layer (us)")
    ax.set_title(f"FlashInfer decode, full vs resident set ({result['env']['gpu']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plot", type=Path, help="only draw the PNG from this results JSON")
    ap.add_argument("--from-log", type=Path, help="rebuild JSON, table and PNG from a run's printed log (any host)")
    ap.add_argument("--date", help="with --from-log: the run's date (UTC, ISO)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    args = ap.parse_args()
    if args.plot:
        return 0 if plot(json.loads(args.plot.read_text()), args.plot.with_suffix(".png")) else 1
    if args.from_log:
        if not args.date:
            print("bench_kernels: --from-log needs --date", file=sys.stderr)
            return 2
        print(write_results(from_log(args.from_log, args.date), args.out))
        return 0
    try:
        import flashinfer
        import triton
    except ImportError:
        flashinfer = None
    if flashinfer is None or not torch.cuda.is_available():
        print("bench_kernels: needs a CUDA GPU with flashinfer", file=sys.stderr)
        return 2
    from sglang.srt.layers.attention.flashinfer_backend import should_use_tensor_core

    use_tc = should_use_tensor_core(torch.bfloat16, HQ, HKV)
    env = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "flashinfer": getattr(flashinfer, "__version__", "?"), "cuda": torch.version.cuda,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "decode_tensor_cores": use_tc}
    log(f"{env['gpu']}: torch {env['torch']}, triton {env['triton']}, flashinfer {env['flashinfer']}")
    ceiling = copy_ceiling_tbps()
    log(f"copy ceiling {ceiling:.2f} TB/s")
    recall = recall_bandwidth()
    log(f"recall {recall['store_gbps']:.1f} GB/s (pinned ceiling {recall['pinned_ceiling_gbps']:.1f} GB/s)")
    gen = torch.Generator().manual_seed(int(time.time()))  # fresh inputs every run
    rows = []
    for bs in BATCHES:
        for ctx in CONTEXTS:
            log(f"batch {bs} x context {ctx}")
            rows.append(run_config(gen, bs, ctx, ceiling, use_tc))
    targets = check_targets(rows)
    result = {"env": env, "copy_ceiling_tbps": ceiling, "recall": recall, "rows": rows, "targets": targets}
    print(write_results(result, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
