"""Final answers: extraction from the answer text, and the majority over several samples.

Extraction rule (``extract_answer``), first that applies:
1. the number in the last ``\\boxed{...}``;
2. the number right after the last "answer is" / "answer:" / "result is" (case-insensitive; "final answer is" too);
3. the number right after the last ``=`` in the text.
Numbers may carry a sign, thousands commas and a decimal part; they come back normalized ("1,200" -> "1200",
"7.0" -> "7"). Nothing matching gives None: with a model that writes noise, no answer is an honest outcome.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

_NUM = r"[-+]?\d[\d,]*(?:\.\d+)?"
_RULES = (
    re.compile(r"\\boxed\{\s*(" + _NUM + r")"),
    re.compile(r"(?:answer|result)\s*(?:is|:|=)\s*\$?\s*(" + _NUM + r")", re.IGNORECASE),
    re.compile(r"=\s*\$?\s*(" + _NUM + r")"),
)


def normalize_number(text: str) -> str:
    text = text.replace(",", "").lstrip("+")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    return text


def extract_answer(text: str | None) -> str | None:
    if not text:
        return None
    for rule in _RULES:
        found = rule.findall(text)
        if found:
            return normalize_number(found[-1])
    return None


def majority(answers: Iterable[str | None]) -> str | None:
    """The most frequent non-None answer; ties go to the answer first given (lowest sample index)."""
    answers = list(answers)
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    first = {}
    for i, a in enumerate(answers):
        if a is not None:
            first.setdefault(a, i)
    return min(counts, key=lambda a: (-counts[a], first[a]))
