"""The model ``launch.py`` serves when no ``--model-path`` is given.

Contract:
- ``REASONER`` is ``<repo>/models/zoomr-reasoner``: the reasoning model trained by ``python -m reasoner.train`` on the
  task of ``reasoner.tasks`` and committed to the repository (it writes its own ``<summary>`` markers, so ZoomR's
  ``trained`` summary mode serves it as is).
- ``default_model_dir()`` returns the folder to serve: the reasoner when its weights are there, else the bigram model
  of ``zoomr_sgl.embedded_model`` (built if needed). ``ZOOMR_SGL_DEFAULT_MODEL`` picks one explicitly: ``reasoner``
  (an error if it is not there) or ``bigram`` (the test suite's choice: its exactness tests were tuned on the
  bigram model's float32 weights). Any other value, or a missing reasoner that was asked for, raises
  ``DefaultModelError`` with a one-line message.
- Both are served in float32 on CPU and bfloat16 on CUDA (``zoomr_sgl.launcher``).
- ``REASONER_SETTINGS``: the ZoomR settings ``launch.py`` adds when it serves the reasoner as the default model
  (``launcher.reasoner_flags``: less those the user gave): ``trained`` summaries (it writes its own), and
  the zoom settings chosen on its held-out problems (CPU host, 24 chain problems, 2026-12-03,
  ``benchmarks/results/accuracy_cpu_2026-12-03_24*``): top-k 1 without retention (23 of 24 at 2.7x less peak device
  KV, against 22 of 24 at 2.3x with top-k 2 and the LRU buffer: the misses copied another attended item's value),
  a zoom budget of 256 (its longest thought fits) and a zoom every 4 steps (its answers are a few tokens long).
"""

from __future__ import annotations

import os
from pathlib import Path

from zoomr_sgl import embedded_model

ENV_VAR = "ZOOMR_SGL_DEFAULT_MODEL"
CHOICES = ("reasoner", "bigram")
REASONER = embedded_model.repo_root() / "models" / "zoomr-reasoner"


REASONER_SETTINGS: tuple[tuple[tuple[str, ...], str | None], ...] = (  # (flag, value?), and the flag's other spellings
    (("--zoomr-summary-mode",), "trained"),
    (("--zoomr-zoom-topk",), "1"),
    (("--no-zoomr-zoom-retain", "--zoomr-zoom-retain"), None),
    (("--zoomr-zoom-budget",), "256"),
    (("--zoomr-zoom-interval",), "4"),
)


class DefaultModelError(ValueError):
    """The default model asked for cannot be served; the message is one line."""


def reasoner_present() -> bool:
    return all((REASONER / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer.json"))


def choice() -> str:
    """``reasoner`` or ``bigram``: what ``default_model_dir`` serves (see the contract)."""
    asked = os.environ.get(ENV_VAR, "").strip()
    if asked and asked not in CHOICES:
        raise DefaultModelError(f"{ENV_VAR} must be one of {', '.join(CHOICES)}; got {asked!r}")
    if asked == "reasoner" and not reasoner_present():
        raise DefaultModelError(f"{ENV_VAR}=reasoner but {REASONER} holds no trained model")
    return asked or ("reasoner" if reasoner_present() else "bigram")


def default_model_dir(chosen: str | None = None) -> Path:
    """The folder for ``chosen`` (a value ``choice()`` returned; by default ``choice()`` now)."""
    if (chosen or choice()) == "reasoner":
        return REASONER
    return embedded_model.build(embedded_model.default_model_path())
