"""Sentence segmentation of a prompt, for SentenceKV (arXiv 2504.00970): token ids in, sentence spans out.

The first piece of the ``sentencekv`` policy (``zoomr_sgl.sentence_index`` is the second; the server's side is
``zoomr_sgl.prompt_sentences``).

Contract:
- ``SentenceEnds.from_texts(texts)``: one flag per vocabulary id, from each id's decoded text: an id ends a sentence
  when its text, trailing white space, quotes and closing brackets stripped, ends in ``.``, ``!`` or ``?``, or when
  it holds a blank line (two newlines). ``from_tokenizer(tok)`` decodes every id of a Hugging Face tokenizer
  (``tokenizers`` or ``transformers``) one by one. An id past the table ends nothing.
- ``sentences(ids, ends, min_len, start=0, stop=None)``: the sentences of ``ids[start:stop]`` as half-open
  ``Sentence(start, end, closed)`` spans in sequence positions. They tile ``[start, stop)`` in order with no gap and no
  overlap. A sentence closes at the first end token at which it holds at least ``min_len`` tokens (end token
  included): an end token earlier than that does not split (short sentences merge into the next one). What follows
  the last closed sentence, if anything, is one last span with ``closed=False`` (its tokens are the recent window
  SentenceKV keeps on the device; only closed sentences may leave). Deterministic; ``min_len >= 1``.
- Bad arguments (``min_len < 1``, ``start`` or ``stop`` outside the ids, ``stop < start``) raise ``ValueError``.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

_TRAILING = " \t\n\"')]}\u201d\u2019"
_ENDS = (".", "!", "?")


class Sentence(NamedTuple):
    start: int
    end: int
    closed: bool

    @property
    def tokens(self) -> int:
        return self.end - self.start


class SentenceEnds:
    """Which vocabulary ids end a sentence (one flag per id)."""

    def __init__(self, flags: Sequence[bool]):
        self.flags = tuple(bool(f) for f in flags)

    @classmethod
    def from_texts(cls, texts: Sequence[str]) -> "SentenceEnds":
        return cls(_ends_sentence(t) for t in texts)

    @classmethod
    def from_tokenizer(cls, tok) -> "SentenceEnds":
        size = tok.get_vocab_size() if hasattr(tok, "get_vocab_size") else len(tok)  # tokenizers' or transformers'
        return cls.from_texts([tok.decode([i]) for i in range(size)])

    def __call__(self, token_id: int) -> bool:
        return 0 <= token_id < len(self.flags) and self.flags[token_id]


def _ends_sentence(text: str) -> bool:
    return "\n\n" in text or text.rstrip(_TRAILING).endswith(_ENDS)


def sentences(ids: Sequence[int], ends: SentenceEnds, min_len: int, start: int = 0,
              stop: int | None = None) -> list[Sentence]:
    stop = len(ids) if stop is None else stop
    if min_len < 1:
        raise ValueError(f"min_len must be at least 1, got {min_len}")
    if not 0 <= start <= stop <= len(ids):
        raise ValueError(f"need 0 <= start <= stop <= {len(ids)}, got start={start}, stop={stop}")
    out, begin = [], start
    for pos in range(start, stop):
        if pos + 1 - begin >= min_len and ends(ids[pos]):
            out.append(Sentence(begin, pos + 1, True))
            begin = pos + 1
    if begin < stop:
        out.append(Sentence(begin, stop, False))
    return out
