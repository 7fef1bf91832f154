"""Command-line plumbing shared by the entry points: an argument parser whose errors are one line, progress on
stderr, and ``run_main`` which turns every user-facing error into one line ``PROG: error: MESSAGE`` on stderr and
exit status 2 (no traceback)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from typing import Callable

from programs.errors import ProgramError
from programs.protocol import Limits


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def zoomr_setting(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` (``zoomr_`` prefix optional); VALUE is read as JSON when it parses, else as a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip().replace("-", "_")
    key = key if key.startswith("zoomr_") else "zoomr_" + key
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def add_server_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:30000", help="the server (default: %(default)s)")
    parser.add_argument("--zoomr", type=zoomr_setting, action="append", default=[], metavar="KEY=VALUE",
                        help="a per-request ZoomR setting, e.g. --zoomr zoom_budget=256 (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a transcript")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def add_limit_args(parser: argparse.ArgumentParser, max_thoughts: int = Limits.max_thoughts) -> None:
    """The think-summarize bounds every entry point takes; ``limits_from_args`` reads them back."""
    parser.add_argument("--max-thoughts", type=positive_int, default=max_thoughts)
    parser.add_argument("--thought-tokens", type=positive_int, default=Limits.thought_tokens)
    parser.add_argument("--summary-tokens", type=positive_int, default=Limits.summary_tokens)
    parser.add_argument("--answer-tokens", type=positive_int, default=Limits.answer_tokens)


def limits_from_args(args: argparse.Namespace) -> Limits:
    return Limits(args.max_thoughts, args.thought_tokens, args.summary_tokens, args.answer_tokens)


class Progress:
    """Progress lines on stderr, with the time since start."""

    def __init__(self, enabled: bool = True, stream=None):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.t0 = time.monotonic()

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[{time.monotonic() - self.t0:6.1f}s] {message}", file=self.stream, flush=True)


def run_main(prog: str, main: Callable[[], int]) -> int:
    # SGLang's frontend reports a failed request as a warning with a traceback, then the program raises it again.
    warnings.filterwarnings("ignore", message="Error in stream_executor")
    try:
        return main()
    except ProgramError as e:  # InvalidInput included
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
