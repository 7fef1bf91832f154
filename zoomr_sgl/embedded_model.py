"""The embedded bigram model (the test suite's): a tiny Qwen3 built offline, deterministically, from code here.

Contract:
- ``build(out, force=False) -> Path`` writes a servable HuggingFace model folder to ``out``: ``config.json``
  (``Qwen3ForCausalLM``, float32), ``generation_config.json``, ``model.safetensors``, ``tokenizer.json``,
  ``tokenizer_config.json``, ``special_tokens_map.json``, ``chat_template.jinja`` and ``zoomr_manifest.json``.
  No network, no downloads: the tokenizer (``zoomr_sgl.bpe_tokenizer``'s recipe) is trained on text generated from a
  fixed seed (``zoomr_sgl.embedded_corpus``), and the weights are computed from that text's bigram statistics plus
  seeded random attention/MLP weights (``zoomr_sgl.embedded_weights``; no gradient training).
- Deterministic: every build of the same recipe writes the same files, byte for byte.
- Idempotent: if ``out`` holds a manifest whose ``recipe_hash`` equals ``recipe_hash()`` (sha256 of the sources of
  this module and the three it builds from, and ``PARAMS``), ``build`` returns at once. ``force=True`` rebuilds.
- Atomic: the model is written to a temporary sibling folder and renamed into place; an interrupted build never
  leaves a half model at ``out``.
- ``default_model_path()`` is ``<repo>/.models/zoomr-tiny`` (repository root found from this file's path).
- Tokenizer: ``zoomr_sgl.bpe_tokenizer``'s contract (byte-level BPE, the markers single ids).
- Model: greedy decoding gives varied text (bigram model in the residual stream, perturbed by context through
  attention), so which KV positions are attended changes outputs; blank lines appear now and then; 2,000+ tokens
  can be generated (``max_position_embeddings`` 40960).
- dtype float32: fewer near-ties for greedy-exactness comparisons between server configurations. SGLang downcasts
  a float32 checkpoint to float16 under ``--dtype auto``; serve it with ``--dtype float32``.

CLI: ``python -m zoomr_sgl.embedded_model build [--out DIR] [--quiet] [--force]`` and ``... path``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from zoomr_sgl import bpe_tokenizer, embedded_corpus, embedded_weights
from zoomr_sgl.bpe_tokenizer import ADDED_TOKENS, EOS_TOKEN, PAD_TOKEN, SPECIAL_TOKENS

MANIFEST = "zoomr_manifest.json"

PARAMS = {
    "seed": 20240917,
    "corpus_docs": 2500,
    "vocab_size": 2048,
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "intermediate_size": 512,
    "max_position_embeddings": 40960,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "bigram_smoothing": 1.0,  # pseudo-count of the unigram back-off
    "summary_open_penalty": 6.0,  # nats off the bigram logit of <summary>: the model seldom opens one by itself
    "summary_close_penalty": 3.0,  # nats off </summary>: rarely written outside a summary (engine mode forces it)
    "qk_norm_scale": 3.0,  # q_norm / k_norm weights: sharp attention, so *which* positions are attended matters
    "attn_out_scale": 0.5,  # attention output RMS relative to the (unit RMS) embedding
    "mlp_out_scale": 0.2,
    "logit_scale": 1.0,
    "weight_grid_bits": 20,  # weights are snapped to multiples of 2**-bits (robust against BLAS rounding)
}


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def default_model_path() -> Path:
    return repo_root() / ".models" / "zoomr-tiny"


def recipe_hash() -> str:
    h = hashlib.sha256()
    for module in (__file__, bpe_tokenizer.__file__, embedded_corpus.__file__, embedded_weights.__file__):
        h.update(Path(module).read_bytes())
    h.update(json.dumps(PARAMS, sort_keys=True).encode())
    return h.hexdigest()



def _read_manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def is_current(out: Path) -> bool:
    m = _read_manifest(Path(out))
    return bool(m) and m.get("recipe_hash") == recipe_hash() and all((Path(out) / f).is_file() for f in m["files"])


def _build_into(tmp: Path, log) -> None:
    from tokenizers import Tokenizer

    p = PARAMS
    t0 = time.perf_counter()
    docs = embedded_corpus.corpus(p["corpus_docs"], p["seed"])
    tok_json = bpe_tokenizer.train_tokenizer(docs, p["vocab_size"])
    (tmp / "tokenizer.json").write_text(tok_json, encoding="utf-8")
    for name, text in bpe_tokenizer.tokenizer_files(p["max_position_embeddings"]).items():
        (tmp / name).write_text(text, encoding="utf-8")
    tok = Tokenizer.from_str(tok_json)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    log(f"tokenizer: {vocab} tokens ({time.perf_counter() - t0:.1f}s)")

    ids = [e.ids for e in tok.encode_batch(docs, add_special_tokens=False)]
    logits, _ = embedded_weights.bigram_logits(ids, vocab, p["bigram_smoothing"])
    logits[:, tok.token_to_id("<summary>")] -= p["summary_open_penalty"]
    logits[:, tok.token_to_id("</summary>")] -= p["summary_close_penalty"]
    sd = embedded_weights.weights(logits, p)
    embedded_weights.write_safetensors(tmp / "model.safetensors", sd)
    log(f"weights: {sum(v.size for v in sd.values())} parameters ({time.perf_counter() - t0:.1f}s)")

    eos_ids = [tok.token_to_id(EOS_TOKEN), tok.token_to_id(PAD_TOKEN)]
    pad_id = tok.token_to_id(PAD_TOKEN)
    config = embedded_weights.model_config(vocab, eos_ids, pad_id, p)
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gen = {"eos_token_id": eos_ids, "pad_token_id": pad_id, "transformers_version": "5.12.1"}
    (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    files = sorted(f.name for f in tmp.iterdir())
    manifest = {
        "recipe_hash": recipe_hash(),
        "params": p,
        "files": files,
        "sha256": {f: hashlib.sha256((tmp / f).read_bytes()).hexdigest() for f in files},
        "token_ids": {t: tok.token_to_id(t) for t in SPECIAL_TOKENS + ADDED_TOKENS},
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _logger(verbose: bool):
    if not verbose:
        return lambda msg: None
    return lambda msg: print(f"[zoomr-tiny] {msg}", file=sys.stderr, flush=True)


def build(out: Path | str | None = None, force: bool = False, quiet: bool = True) -> Path:
    """Build the embedded model into ``out`` (default ``default_model_path()``) unless it is already current."""
    out = Path(out) if out is not None else default_model_path()
    if not force and is_current(out):
        return out
    log = _logger(not quiet)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        # The numerics run in a child with single-threaded BLAS/OpenMP: the bytes must not depend on the caller's
        # thread settings or on how many cores this machine has.
        pythonpath = os.pathsep.join([str(repo_root()), os.environ.get("PYTHONPATH", "")])
        env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                   MKL_NUM_THREADS="1", PYTHONPATH=pythonpath)
        cmd = [sys.executable, "-m", "zoomr_sgl.embedded_model", "_build-into", str(tmp)] + ([] if quiet else ["-v"])
        subprocess.run(cmd, env=env, check=True, cwd=str(repo_root()))
        os.chmod(tmp, 0o755)
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
        try:
            os.rename(tmp, out)
        except OSError:
            if not is_current(out):  # a concurrent build finished first: keep its (identical) result
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"built {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zoomr_sgl.embedded_model", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the model folder (no-op when already current)")
    b.add_argument("--out", type=Path, default=None, help=f"target folder (default {default_model_path()})")
    b.add_argument("--quiet", action="store_true")
    b.add_argument("--force", action="store_true", help="rebuild even when current")
    sub.add_parser("path", help="print the default model folder")
    bi = sub.add_parser("_build-into", help=argparse.SUPPRESS)  # internal: the child that does the numerics
    bi.add_argument("dir", type=Path)
    bi.add_argument("-v", action="store_true")
    args = ap.parse_args(argv)
    if args.cmd == "_build-into":
        _build_into(args.dir, _logger(args.v))
        return 0
    if args.cmd == "path":
        print(default_model_path())
        return 0
    t0 = time.perf_counter()
    out = build(args.out, force=args.force, quiet=args.quiet)
    if not args.quiet:
        print(f"{out} ({time.perf_counter() - t0:.2f}s)", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
