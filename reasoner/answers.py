"""Final answers out of generated text, normalised so that equal answers compare equal.

Contract:
- ``extract(text)``: the answer a completion gives: the content of the last ``\\boxed{...}`` (braces balanced) if
  there is one, else what follows the last ``Answer:`` up to the end of that line (stripped), else ``None``.
- ``normalise(s)``: lower case, surrounding ``$``, spaces and a final period dropped, inner whitespace collapsed to
  one space, ``\\text{...}`` unwrapped, a number written with thousands commas or a trailing ``.0`` as the integer.
- ``is_correct(text, answer)``: ``extract(text)`` is not None and normalises to ``normalise(answer)``.
"""

from __future__ import annotations

import re

_TEXT = re.compile(r"\\text\{([^{}]*)\}")
_NUMBER = re.compile(r"-?\d{1,3}(,\d{3})+(\.\d+)?|-?\d+\.0+")


def _boxed(text: str) -> str | None:
    at = text.rfind("\\boxed{")
    if at < 0:
        return None
    depth, start = 0, at + len("\\boxed{")
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            if depth == 0:
                return text[start:i]
            depth -= 1
    return None


def extract(text: str) -> str | None:
    boxed = _boxed(text)
    if boxed is not None:
        return boxed
    at = text.rfind("Answer:")
    if at < 0:
        return None
    return text[at + len("Answer:"):].split("\n", 1)[0].strip()


def normalise(s: str) -> str:
    s = _TEXT.sub(r"\1", str(s)).strip()
    s = s[:-1].strip() if s.endswith(".") else s
    s = s.strip("$").strip()
    s = " ".join(s.lower().split())
    if _NUMBER.fullmatch(s):
        s = s.replace(",", "")
        s = s.split(".")[0] if re.fullmatch(r"-?\d+\.0+", s) else s
    return s


def is_correct(text: str, answer: str) -> bool:
    got = extract(text)
    return got is not None and normalise(got) == normalise(answer)
