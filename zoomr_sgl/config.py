"""ZoomR settings: one typed config, the only place where every ``--zoomr-*`` flag and ``zoomr_*`` request key is
defined.

Contract:
- ``ZoomRConfig`` is immutable; ``validate()`` raises ``ZoomRConfigError`` with a one-line message naming the bad
  setting. Every constructor path (CLI, environment, per-request overrides) validates.
- ``add_cli_args`` adds ``--zoomr-<field>`` flags (dashes for underscores) with the defaults below;
  ``from_cli_args`` reads them back. ``--enable-zoomr`` itself belongs to the launcher.
- ``to_env``/``from_env`` carry the config to SGLang's child processes through one environment variable
  (``ZOOMR_SGL_CONFIG``, JSON). Its absence means ZoomR is disabled in that process.
- ``with_request_overrides(custom_params)`` applies the flat ``zoomr_*`` keys of a request's
  ``sampling_params.custom_params``; unknown ``zoomr_*`` keys, wrong types and invalid values raise
  ``ZoomRConfigError``. Keys without the ``zoomr_`` prefix are not ours and are ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

ENV_VAR = "ZOOMR_SGL_CONFIG"
POLICIES = ("zoomr", "full", "streaming", "summary_only", "quest", "sentencekv")
SUMMARY_MODES = ("engine", "program", "trained")
HOST_FULL_FALLBACKS = ("keep_on_device", "drop_oldest")


class ZoomRConfigError(ValueError):
    """A ZoomR setting is invalid; the message is one line that names it."""


def _opt(default: Any, help: str, per_request: bool = True, choices: tuple[str, ...] | None = None):
    return field(default=default, metadata={"help": help, "per_request": per_request, "choices": choices})


@dataclass(frozen=True)
class ZoomRConfig:
    """Every ZoomR setting, with its default. Token counts are per request."""

    summary_open: str = _opt("<summary>", "marker string that opens a thought's summary")
    summary_close: str = _opt("</summary>", "marker string that closes a thought's summary")
    beacon: str = _opt(
        "", "beacon mode (Breadcrumbs): this marker alone is each thought's summary, in place of the summary markers; "
        "engine mode forces it where it would open a summary (every max_thought_tokens generated tokens when "
        "min_thought_tokens equals it), a trained model writes it itself; empty: the summary markers")
    summary_mode: str = _opt(
        "engine",
        "how summaries enter the stream: 'engine' (the server closes thoughts and forces markers), "
        "'program' (a frontend program writes them), 'trained' (the model writes them itself)",
        choices=SUMMARY_MODES,
    )
    thought_delimiter: str = _opt("\n\n", "text that ends a thought in engine mode once min_thought_tokens are out")
    thinking_end: str = _opt(
        "</think>", "engine mode: once the output holds this text the answer has begun and no further thought is "
        "closed (empty: thoughts are closed to the end)")
    min_thought_tokens: int = _opt(64, "engine mode: shortest thought before a delimiter may close it")
    max_thought_tokens: int = _opt(512, "engine mode: a thought is closed at this length regardless")
    max_summary_tokens: int = _opt(48, "engine mode: the closing marker is forced after this many summary tokens")
    zoom_topk: int = _opt(4, "most thoughts zoomed into at once")
    zoom_retain: bool = _opt(
        True, "keep details recalled earlier in the zoom buffer (LRU) until room is needed; false: attend only what the "
        "last zoom picked"
    )
    zoom_budget: int = _opt(2048, "most recalled detail tokens held on the device per request (the zoom buffer)")
    zoom_interval: int = _opt(16, "decode steps between zoom decisions")
    policy: str = _opt("zoomr", "resident-set policy", choices=POLICIES)
    scoring_layers: str = _opt(
        "auto", "layers whose queries score thoughts: 'auto' (a few spread over the model) or comma-separated ids"
    )
    sink_tokens: int = _opt(64, "streaming and sentencekv policies: first tokens always attended (attention sink)")
    recent_tokens: int = _opt(1024, "streaming and sentencekv policies: most recent tokens always attended")
    quest_page_size: int = _opt(16, "quest policy: tokens per page")
    quest_top_pages: int = _opt(64, "quest policy: pages attended per step besides the open window")
    sentence_budget: int = _opt(
        1024, "sentencekv policy: most prompt-sentence tokens recalled at once (within zoom_budget, which marker "
        "thoughts share)")
    sentence_min_tokens: int = _opt(
        8, "sentencekv policy: shortest prompt sentence (an end token closes one only this far in; server-wide, so "
        "that a repeated prompt splits the same way)", per_request=False)
    host_store_tokens: int = _opt(
        0, "detail tokens the host store holds across all requests (all layers of each; preallocated); 0: sized at "
        "start to four times the device KV pool, within a quarter of the host's available memory", per_request=False
    )
    host_full_fallback: str = _opt(
        "keep_on_device",
        "when the host store is full: keep the detail on the device (parked: in its own slots, out of the resident set, "
        "zoomable), or drop the oldest offloaded thought (counted)",
        per_request=False,
        choices=HOST_FULL_FALLBACKS,
    )
    wait_for_recall: bool = _opt(False, "a step waits for a recall to land instead of using it from the next step")

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ZoomRConfigError(f"zoomr {f.name} must be an integer, got {value!r}")
            if f.type == "str" and not isinstance(value, str):
                raise ZoomRConfigError(f"zoomr {f.name} must be a string, got {value!r}")
            if f.type == "bool" and not isinstance(value, bool):
                raise ZoomRConfigError(f"zoomr {f.name} must be true or false, got {value!r}")
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise ZoomRConfigError(f"zoomr {f.name} must be one of {', '.join(choices)}; got {value!r}")
        positive = (
            "min_thought_tokens", "max_thought_tokens", "max_summary_tokens", "zoom_topk", "zoom_budget",
            "zoom_interval", "quest_page_size", "quest_top_pages", "sentence_budget", "sentence_min_tokens",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ZoomRConfigError(f"zoomr {name} must be positive, got {getattr(self, name)}")
        for name in ("sink_tokens", "recent_tokens", "host_store_tokens"):
            if getattr(self, name) < 0:
                raise ZoomRConfigError(f"zoomr {name} must be zero or more, got {getattr(self, name)}")
        if not self.summary_open.strip() or not self.summary_close.strip():
            raise ZoomRConfigError("zoomr summary markers must not be empty")
        if self.summary_open == self.summary_close:
            raise ZoomRConfigError(f"zoomr summary markers must differ; both are {self.summary_open!r}")
        if self.summary_open in self.summary_close or self.summary_close in self.summary_open:
            raise ZoomRConfigError("zoomr summary markers must not contain one another")
        if self.min_thought_tokens > self.max_thought_tokens:
            raise ZoomRConfigError(
                f"zoomr min_thought_tokens ({self.min_thought_tokens}) exceeds max_thought_tokens "
                f"({self.max_thought_tokens})"
            )
        if self.policy == "quest" and self.quest_page_size > self.zoom_budget:
            raise ZoomRConfigError(f"zoomr quest_page_size ({self.quest_page_size}) exceeds zoom_budget "
                                   f"({self.zoom_budget}): not one page could be attended")
        if not self.thought_delimiter:
            raise ZoomRConfigError("zoomr thought_delimiter must not be empty")
        if self.thinking_end and self.thinking_end in (self.summary_open, self.summary_close):
            raise ZoomRConfigError("zoomr thinking_end must differ from the summary markers")
        if self.beacon and not self.beacon.strip():
            raise ZoomRConfigError("zoomr beacon must not be blank (empty turns beacon mode off)")
        if self.beacon and self.thinking_end and (self.beacon in self.thinking_end or self.thinking_end in self.beacon):
            raise ZoomRConfigError("zoomr beacon and thinking_end must not contain one another")
        self.scoring_layer_ids(num_layers=None)

    def marker_texts(self) -> tuple[str, str]:
        """The strings that open and close a summary: the beacon and nothing in beacon mode."""
        return (self.beacon, "") if self.beacon else (self.summary_open, self.summary_close)

    def scoring_layer_ids(self, num_layers: int | None) -> tuple[int, ...]:
        """The layers whose queries score thoughts. 'auto' picks up to 4 layers spread over the upper half of the
        model (where attention is most selective); explicit ids must be within the model when it is known."""
        spec = self.scoring_layers.strip()
        if spec == "auto":
            if num_layers is None:
                return ()
            lo = num_layers // 2
            picks = sorted({lo + (num_layers - 1 - lo) * i // 3 for i in range(4)})
            return tuple(picks)
        try:
            ids = tuple(sorted({int(x) for x in spec.split(",") if x.strip()}))
        except ValueError:
            raise ZoomRConfigError(f"zoomr scoring_layers must be 'auto' or comma-separated integers; got {spec!r}")
        if not ids or ids[0] < 0:
            raise ZoomRConfigError(f"zoomr scoring_layers must name layers >= 0; got {spec!r}")
        if num_layers is not None and ids[-1] >= num_layers:
            raise ZoomRConfigError(f"zoomr scoring_layers {spec!r} names a layer beyond the model's {num_layers}")
        return ids

    # ------------------------------------------------------------------ command line
    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("ZoomR")
        for f in fields(ZoomRConfig):
            flag = "--zoomr-" + f.name.replace("_", "-")
            helptext = f"{f.metadata['help']} (default: {f.default!r})"
            if f.type == "bool":
                group.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=helptext)
            else:
                py_type = {"int": int, "str": str}[f.type]
                group.add_argument(flag, type=py_type, default=f.default, help=helptext, metavar=f.name.upper())

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> "ZoomRConfig":
        return cls(**{f.name: getattr(args, "zoomr_" + f.name) for f in fields(cls)})

    # ------------------------------------------------------------------ processes and requests
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_env(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ZoomRConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ZoomRConfigError(f"unknown zoomr setting(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "ZoomRConfig | None":
        """The config SGLang's processes run with, or None when ZoomR is not enabled."""
        raw = (os.environ if environ is None else environ).get(ENV_VAR)
        if not raw:
            return None
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ZoomRConfigError(f"{ENV_VAR} is not valid JSON: {e}")
        if not isinstance(data, dict):
            raise ZoomRConfigError(f"{ENV_VAR} must hold a JSON object")
        return cls.from_dict(data)

    def with_request_overrides(self, custom_params: Mapping[str, Any] | None) -> "ZoomRConfig":
        """This config with a request's ``zoomr_*`` keys applied. ``zoomr_enable`` is read by the caller and skipped
        here. Raises ``ZoomRConfigError`` naming the key on anything it cannot accept."""
        if not custom_params:
            return self
        if not isinstance(custom_params, Mapping):
            raise ZoomRConfigError("custom_params must be a JSON object")
        by_name = {f.name: f for f in fields(self)}
        changes: dict[str, Any] = {}
        for key, value in custom_params.items():
            if not isinstance(key, str) or not key.startswith("zoomr_") or key == "zoomr_enable":
                continue
            name = key[len("zoomr_"):]
            f = by_name.get(name)
            if f is None:
                raise ZoomRConfigError(f"unknown custom_params key {key!r}")
            if not f.metadata["per_request"]:
                raise ZoomRConfigError(f"custom_params key {key!r} is a server-wide setting, not a per-request one")
            changes[name] = value
        if not changes:
            return self
        try:
            return dataclasses.replace(self, **changes)
        except ZoomRConfigError as e:
            message = str(e)
            for name in changes:  # name the request key the client sent, not the field
                message = message.replace(f"zoomr {name} ", f"custom_params key 'zoomr_{name}' ")
            raise ZoomRConfigError(message if message != str(e) else f"custom_params: {message}") from None


def request_enables_zoomr(custom_params: Mapping[str, Any] | None, default: bool = True) -> bool:
    """Whether a request opted in (``zoomr_enable``); a non-boolean value is an error."""
    if not custom_params or "zoomr_enable" not in custom_params:
        return default
    value = custom_params["zoomr_enable"]
    if not isinstance(value, bool):
        raise ZoomRConfigError(f"custom_params key 'zoomr_enable' must be true or false, got {value!r}")
    return value
