"""Command lines that answer bad input with one line: ``OneLineParser`` is an ``argparse.ArgumentParser`` whose errors
(its own, such as a bad type or a missing flag, and the ``error(message)`` calls of its users) print
``<name>: error: <message>`` on stderr, nothing else, and exit with status 2."""

from __future__ import annotations

import argparse
import sys


class OneLineParser(argparse.ArgumentParser):
    def __init__(self, name: str, **kw):
        super().__init__(**kw)
        self.name = name

    def error(self, message: str):
        print(f"{self.name}: error: {message}", file=sys.stderr)
        raise SystemExit(2)
