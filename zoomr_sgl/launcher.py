"""``python launch.py``: SGLang's server with the ZoomR plugin, started the way ``sglang.launch_server`` does.

Contract:
- Takes every ``sglang.launch_server`` flag plus ``--enable-zoomr`` and the ``--zoomr-*`` flags of
  ``ZoomRConfig``. A bad ZoomR flag prints one line ``launch.py: error: ...`` on stderr and exits with status 2,
  before anything heavy is imported.
- Picks the platform by itself: without CUDA it sets ``SGLANG_USE_CPU_ENGINE=1`` and passes ``--device cpu
  --attention-backend torch_native --disable-overlap-schedule --max-total-tokens 65536 --sleep-on-idle``; with
  CUDA it passes ``--attention-backend flashinfer``. Flags given by the user come later on the command line and win.
- Without ``--model-path`` it serves the default model (``zoomr_sgl.default_model``: the committed reasoner, else the
  bigram model, built if needed): in float32 on CPU (fewer greedy near-ties), in bfloat16 on CUDA (FlashInfer's
  kernels take 16-bit inputs). Serving the reasoner so, it adds ``reasoner_flags``: trained summaries
  (the reasoner writes its own ``<summary>`` markers) and the zoom settings chosen on its problems, each unless the
  user gave that flag (with ``--enable-zoomr``; without it the server is stock and takes no ZoomR flag).
- With ``--enable-zoomr`` it refuses, one line and exit 2, every setup ZoomR would serve wrongly: an
  ``--attention-backend`` other than the two it replaces, separate prefill/decode backends, pipeline parallelism
  and data-parallel attention, page sizes other than 1, and the SGLang features in ``ZOOMR_INCOMPATIBLE``; and,
  for a model folder on disk, a model SGLang would serve with windowed or chunked attention layers or as an
  encoder-decoder
  (``model_refusal``, read from its ``config.json`` with SGLang's own tests). The scheduler refuses the same at start
  for any model source (``zoomr_sgl.hooks``). So is a ``--zoomr-host-store-tokens`` whose host store, for that
  model, would not fit in ``HOST_STORE_SHARE`` of the memory available (``host_store_refusal``).
- With ``--enable-zoomr`` it also passes ``--page-size 1`` and, unless the user gave ``--radix-cache-backend``,
  ``--radix-cache-backend zoomr`` (the ZoomR radix tree). SGLang's overlap scheduler stays on where stock has it on
  (CUDA); ``--disable-overlap-schedule`` is the user's choice.
- ``--enable-overlap-schedule`` (ours) drops the platform's ``--disable-overlap-schedule`` default (CPU hosts), so
  the overlap scheduler runs there too; given with ``--disable-overlap-schedule`` it is an error.
- With ``--enable-zoomr`` it exports the config as ``ZOOMR_SGL_CONFIG`` for every SGLang process; without it the
  variable is removed, the plugin stays inert and SGLang behaves as stock.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NamedTuple, Sequence

from zoomr_sgl.config import ENV_VAR, ZoomRConfig, ZoomRConfigError

PROG = "launch.py"
CPU_DEFAULTS = [
    "--device", "cpu",
    "--attention-backend", "torch_native",
    "--disable-overlap-schedule",
    "--max-total-tokens", "65536",
    "--sleep-on-idle",  # an idle scheduler otherwise spins a core; two servers on 2 cores then crawl (~50x)
]
CUDA_DEFAULTS = ["--attention-backend", "flashinfer"]
# ZoomR edits req_to_token token by token: token-granular pages.
ZOOMR_DEFAULTS = ["--page-size", "1"]
NO_OVERLAP = "--disable-overlap-schedule"
# Finished thoughts are cached as host-backed detail nodes (zoomr_sgl.radix_tree), unless the user names a tree.
ZOOMR_TREE = ["--radix-cache-backend", "zoomr"]
ZOOMR_INCOMPATIBLE = {
    "--enable-mixed-chunk": "mixed chunks send decode tokens through prefill attention",
    "--speculative-algorithm": "speculative decoding is not supported",
    "--enable-hierarchical-cache": "ZoomR keeps its own host tier",
    "--enable-hisparse": "ZoomR keeps its own host tier",
    "--enable-dp-attention": "attention split by data parallel inside the TP group is not served (plain --dp is)",
}


class LaunchError(Exception):
    """A launcher input is wrong; the message is the one line the user sees."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as for every other bad flag
        raise LaunchError(message)


class LaunchPlan(NamedTuple):
    """What the launcher will do: the SGLang argv, the environment changes, and the ZoomR config (or None)."""

    sglang_argv: list[str]
    env: dict[str, str | None]  # None: remove the variable
    zoomr: ZoomRConfig | None
    device: str


def zoomr_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, add_help=False, allow_abbrev=False)
    parser.add_argument("--enable-zoomr", action="store_true", help="turn ZoomR on in every SGLang process")
    parser.add_argument("--enable-overlap-schedule", action="store_true",
                        help="keep SGLang's overlap scheduler on where the platform default turns it off (CPU hosts)")
    ZoomRConfig.add_cli_args(parser)
    return parser


def _has_flag(argv: Sequence[str], *names: str) -> bool:
    return any(a == n or a.startswith(n + "=") for a in argv for n in names)


def reasoner_flags(argv: Sequence[str]) -> list[str]:
    """``default_model.REASONER_SETTINGS`` the user did not give (either spelling of a boolean flag counts), as
    command-line arguments."""
    from zoomr_sgl.default_model import REASONER_SETTINGS

    flags: list[str] = []
    for names, value in REASONER_SETTINGS:
        if not _has_flag(argv, *names):
            flags += [names[0]] + ([value] if value is not None else [])
    return flags


def _flag_value(argv: Sequence[str], *names: str) -> str | None:
    """The last value given to any of ``names`` (``--flag value`` or ``--flag=value``), or None."""
    value = None
    for i, a in enumerate(argv):
        for n in names:
            if a == n and i + 1 < len(argv):
                value = argv[i + 1]
            elif a.startswith(n + "="):
                value = a[len(n) + 1:]
    return value


# The attention backends ZoomR replaces with its resident-set subclass (zoomr_sgl.resident_attention); any other
# would attend slot 0 where detail has left.
RESIDENT_BACKEND_NAMES = ("torch_native", "flashinfer")
# One backend for prefill and decode: ZoomR replaces one, separate ones would leave the other attending holes.
SPLIT_BACKEND_FLAGS = ("--decode-attention-backend", "--prefill-attention-backend")
PARALLEL_FLAGS = {  # tensor parallel is served: the ranks agree on every zoom (zoomr_sgl.tp_consensus)
    ("--pp-size", "--pipeline-parallel-size"): "ZoomR reads every layer's KV from one process",
}


def plan_launch(argv: Sequence[str], cuda_available: bool, default_model: str | None) -> LaunchPlan:
    """Split our flags from SGLang's, validate ours, and add the platform defaults. Raises ``LaunchError``."""
    ours, rest = zoomr_parser().parse_known_args(list(argv))
    try:
        config = ZoomRConfig.from_cli_args(ours)
    except ZoomRConfigError as e:
        raise LaunchError(str(e)) from None
    stray = [a for a in rest if a.startswith("--zoomr")]
    if stray:
        raise LaunchError(f"unknown ZoomR flag {stray[0]} (see --help)")
    zoomr_given = [a for a in argv if a.startswith("--zoomr-")]
    if zoomr_given and not ours.enable_zoomr:
        raise LaunchError(f"{zoomr_given[0].split('=')[0]} needs --enable-zoomr")
    if ours.enable_zoomr:
        for flag, why in ZOOMR_INCOMPATIBLE.items():
            if _has_flag(rest, flag):
                raise LaunchError(f"{flag} cannot be used with --enable-zoomr: {why}")
        page = _flag_value(rest, "--page-size")
        if page is not None and page != "1":
            raise LaunchError("--enable-zoomr needs --page-size 1 (holes are token-granular)")
        backend = _flag_value(rest, "--attention-backend")
        if backend is not None and backend not in RESIDENT_BACKEND_NAMES:
            raise LaunchError(f"--attention-backend {backend} cannot be used with --enable-zoomr: it would attend "
                              f"holes (ZoomR serves {' and '.join(RESIDENT_BACKEND_NAMES)})")
        for flag in SPLIT_BACKEND_FLAGS:
            if _has_flag(rest, flag):
                raise LaunchError(f"{flag} cannot be used with --enable-zoomr: one attention backend serves both "
                                  "prefill and decode (use --attention-backend)")
        for names, why in PARALLEL_FLAGS.items():
            size = _flag_value(rest, *names)
            if size is not None and size != "1":
                raise LaunchError(f"{names[0]} {size} cannot be used with --enable-zoomr yet: {why}")

    if ours.enable_overlap_schedule and _has_flag(rest, NO_OVERLAP):
        raise LaunchError(f"--enable-overlap-schedule contradicts {NO_OVERLAP}")
    defaults = list(CUDA_DEFAULTS if cuda_available else CPU_DEFAULTS)
    if ours.enable_overlap_schedule:
        defaults = [a for a in defaults if a != NO_OVERLAP]
    if ours.enable_zoomr:
        defaults += ZOOMR_DEFAULTS
        if not _has_flag(rest, "--radix-cache-backend"):
            defaults += ZOOMR_TREE
    if not _has_flag(rest, "--model-path", "--model"):
        if default_model is None:
            raise LaunchError("no --model-path given and no embedded default model")
        # The embedded model is stored in float32; 'auto' would turn it into float16.
        dtype = "bfloat16" if cuda_available else "float32"
        defaults = ["--model-path", default_model, "--dtype", dtype] + defaults
    env: dict[str, str | None] = {ENV_VAR: config.to_env() if ours.enable_zoomr else None}
    if not cuda_available:
        env["SGLANG_USE_CPU_ENGINE"] = "1"
    return LaunchPlan(defaults + rest, env, config if ours.enable_zoomr else None, "cuda" if cuda_available else "cpu")


def model_refusal(model_path: str | None) -> str | None:
    """Why ZoomR cannot serve the model in folder ``model_path`` (None: it can, or there is no local config to read):
    SGLang attends a window of some layers (hybrid sliding-window architectures, chunked local attention) or runs an
    encoder beside the decoder, and ZoomR's resident set would leave holes inside those windows, or in cross-attention,
    that SGLang's own kernels read."""
    import json
    from pathlib import Path
    from types import SimpleNamespace

    config_file = Path(model_path or "") / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return None
    import warnings

    with warnings.catch_warnings():  # importing SGLang's config module warns about CPU-only kernels: one line stays one
        warnings.simplefilter("ignore")
        from sglang.srt.configs.model_config import is_encoder_decoder_model, is_hybrid_swa_model

    archs = list(config.get("architectures") or [])
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    text_config = SimpleNamespace(**text)
    if is_encoder_decoder_model(archs):
        return f"{archs[0]} is an encoder-decoder model (cross-attention is not served)"
    if is_hybrid_swa_model(archs, text_config):
        return f"{archs[0]} has sliding-window attention layers"
    if text.get("attention_chunk_size"):
        return f"{archs[0] if archs else 'the model'} has chunked local attention (attention_chunk_size)"
    return None


HOST_STORE_SHARE = 0.9  # of the available host memory an explicitly sized store may take (page-locked, unswappable)


def host_store_refusal(model_path: str | None, tokens: int, sglang_argv: Sequence[str], available: int) -> str | None:
    """Why a host store of ``tokens`` rows cannot be given for the model in folder ``model_path`` with
    ``available`` bytes of host memory (None: it can, or there is no local config to size a row from). A row is K and
    V of every layer's KV heads (per tensor-parallel rank, at least one head each, times the ranks and the
    data-parallel replicas) at the KV cache's element size."""
    import json
    from pathlib import Path

    try:
        config = json.loads((Path(model_path or "") / "config.json").read_text())
    except (OSError, ValueError):
        return None
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    try:
        layers, heads = int(text["num_hidden_layers"]), int(text.get("num_key_value_heads") or text["num_attention_heads"])
        head_dim = int(text.get("head_dim") or int(text["hidden_size"]) // int(text["num_attention_heads"]))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    tp = int(_flag_value(sglang_argv, "--tp-size", "--tensor-parallel-size") or 1)
    dp = int(_flag_value(sglang_argv, "--dp-size", "--data-parallel-size") or 1)
    kv_dtype = _flag_value(sglang_argv, "--kv-cache-dtype") or "auto"
    dtype = _flag_value(sglang_argv, "--dtype") or "auto"
    if dtype == "auto":
        dtype = str(text.get("torch_dtype") or config.get("torch_dtype") or "bfloat16")
    element = 1 if kv_dtype.startswith("fp8") else 4 if dtype in ("float32", "float") else 2
    row = 2 * layers * max(1, heads // tp) * head_dim * element * tp * dp
    need = tokens * row
    if need <= HOST_STORE_SHARE * available:
        return None
    fits = int(HOST_STORE_SHARE * available // row)
    return (f"--zoomr-host-store-tokens {tokens} needs {need / 2**30:.1f} GiB of host memory for this model "
            f"({row // 1024} KiB a token), {available / 2**30:.1f} GiB is available: at most {fits} tokens fit")


def _print_help() -> None:
    zoomr_parser().print_help()
    print("\nEvery other flag goes to SGLang's server; its own help follows.\n")
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser(prog=PROG + " [SGLang flags]")
    ServerArgs.add_cli_args(parser)
    parser.print_help()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if _has_flag(argv, "-h", "--help"):
        _print_help()
        return 0
    from zoomr_sgl import default_model  # light: no torch

    wants_default_model = not _has_flag(argv, "--model-path", "--model")
    try:  # validate before the heavy imports, so a bad flag answers at once
        plan_launch(argv, False, "<embedded>")
        chosen = default_model.choice() if wants_default_model else None
        if chosen == "reasoner" and _has_flag(argv, "--enable-zoomr"):
            argv += reasoner_flags(argv)  # trained summaries, its zoom settings
    except (default_model.DefaultModelError, LaunchError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    import torch

    plan = plan_launch(argv, torch.cuda.is_available(), "<embedded>")
    model_path = _flag_value(plan.sglang_argv, "--model-path", "--model")
    refusal = model_refusal(model_path) if plan.zoomr else None
    if refusal is not None:
        print(f"{PROG}: error: --enable-zoomr cannot serve this model: {refusal}", file=sys.stderr)
        return 2
    if plan.zoomr and plan.zoomr.host_store_tokens:
        import psutil

        refusal = host_store_refusal(model_path, plan.zoomr.host_store_tokens, plan.sglang_argv,
                                     psutil.virtual_memory().available)
        if refusal is not None:
            print(f"{PROG}: error: {refusal}", file=sys.stderr)
            return 2
    if wants_default_model:
        model_dir = str(default_model.default_model_dir(chosen))
        plan = plan._replace(sglang_argv=[model_dir if a == "<embedded>" else a for a in plan.sglang_argv])
    for key, value in plan.env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value

    # From here on, what sglang.launch_server's __main__ does, with our argv.
    from sglang.launch_server import run_server
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import prepare_server_args
    from sglang.srt.utils import kill_process_tree

    load_plugins()
    server_args = prepare_server_args(plan.sglang_argv)
    try:
        run_server(server_args)
    finally:
        kill_process_tree(os.getpid(), include_parent=False)
    return 0
