"""The task generator: seeded, offline problems whose late reasoning needs an early thought's detail.

Two families, both chat prompts (``chat_text`` wraps them in the model's chat template):

- ``chain`` (the reasoning family). The prompt lists a table of boxes (``box Kis mun.``: box ``Kis`` holds ``mun``, a
  random map on ``boxes`` (default 40) of 90 box labels) and 12-48 items (``item kilo: start kilo Kis, steps kilo 5.``),
  then a question (``linked``: each item's line also names the next, ``..., steps kilo 5, next golf.``, the last
  ``next none``, so that which item comes next is in the line of the item traced last, not only in the line after it:
  one sentence holds every value a step copies, as a SentenceKV view needs; the problem is otherwise the same, drawn
  from the same numbers). Every lookup is one token matching one earlier token whose next token is the value: a label is
  written capitalised where it names a box to open and in lower case where it is what a box holds (a table line's key
  is the only capitalised occurrence in the table), and an item's facts are written ``FACT NAME VALUE`` with values of
  three types (capitalised box, digit, lower-case box), so the token after an item's name is its value of the type
  asked for (``item kilo ends at rit``, which needs the name two tokens back, was not learnt to look up in an H200
  training run: 19% of teacher-forced answer values right). The trace is ``<think>``, one thought per item (follow
  the item's chain hop by hop through the table: ``item kilo: start kilo Kis.``, ``step 1: box Kis mun.``, ``step 2:
  box Mun rit.``, ..., then ``end kilo rit.``), each followed by ``<summary>item kilo traced over 3
  steps.</summary>`` (what the thought handled, without the value it found), ``</think>``, then an answer that
  restates the question, names the item three times (so that a zoom decision, every 16 tokens by default, falls
  between the first naming and the value) and gives ``end NAME VALUE``, then ``Answer: VALUE``. Every chain problem
  asks where an item ends: the value is written only inside that item's thought, so the answer needs an earlier
  thought's detail, found through its summary's item name. (Questions the prompt answers, where an item starts and
  how many steps it takes, were dropped: they test prompt retrieval, which ZoomR leaves alone and the ``records``
  family covers, and the 5M-parameter model never learned them: 0 of 19 and 1 of 17 right with full attention on
  the H200, 2026-12-02, against 53 of 53 ``end``.)
- ``records`` (the long-prompt family, for prompt-side retrieval). The prompt lists records
  (``record kilo 17 has color red and code 4 9 1 7.``: one sentence each) up to a target length, then asks for one
  record's code; the trace is a short thought that names the record, then the answer. The value is in the prompt only.

A ``Problem`` carries ``prompt`` (the user message), ``trace`` (what the model writes, ending with the answer),
``answer`` (the normalised string an evaluator compares), ``needs_detail`` (the answer needs a value written only in an
earlier thought's detail), ``target_thought`` (that thought's index, -1 when none) and sizes. ``line_reads(p)`` says,
for each line of the trace, which lines of the prompt it copies from (the sentences a SentenceKV view must hold while
the model writes it; ``reasoner.sentence_view``). ``generate(split, n, family=None)`` is deterministic: problem ``i`` of
a split comes from ``random.Random(f"{SPLIT_SEEDS[split]}:{family}:{i}")``, and the train and held-out splits use different
seeds. Bad arguments raise ``ValueError``.

CLI: ``python -m reasoner.tasks --split heldout --n 200 [--family chain] --out problems.jsonl`` writes JSONL with
``problem`` (the chat prompt), ``answer`` and the rest of the fields, the format ``benchmarks/accuracy.py`` reads.
"""

from __future__ import annotations

import json
import random
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from reasoner.cli import OneLineParser

SPLIT_SEEDS = {"train": 1_000_003, "heldout": 7_000_019, "smoke": 31_337}
FAMILIES = ("chain", "records")
DEFAULT_BOXES = 40  # boxes in a chain problem's table (of the 90 labels)
NAMES = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec romeo "
    "sierra tango uniform victor whiskey xray yankee zulu amber cedar dune ember fern grove harbor iris jade lotus "
    "maple nova onyx pearl quartz raven slate thorn umber violet willow yarrow zephyr"
).split()
COLORS = "red blue green gold gray pink teal plum rust jade".split()
# Box labels: made-up two-syllable words, one BPE token each (capitalised and not) once the tokenizer has seen them, so
# a lookup in the box table matches one token (two-digit labels split into two digits, and a key two tokens before its
# value, ``box kis holds mun``, were not learnt to look up in an H200 training run of 6 minutes).
BOXES = tuple(a + b for a in ("ba", "de", "ki", "lo", "mu", "ne", "po", "ri", "su") for b in
              ("k", "l", "m", "n", "p", "r", "s", "t", "v", "x"))
THINK, END_THINK, OPEN, CLOSE = "<think>", "</think>", "<summary>", "</summary>"


@dataclass(frozen=True)
class Problem:
    family: str
    kind: str  # chain: end; records: code
    prompt: str
    trace: str
    answer: str
    needs_detail: bool
    thoughts: int
    seed: str
    target_thought: int = -1  # the thought whose detail the answer needs (-1: none)

    def record(self) -> dict:
        """The JSONL row: ``problem`` is the chat prompt the model is served."""
        return {"problem": chat_text(self.prompt), **asdict(self)}


def chat_text(user: str) -> str:
    """The prompt as the embedded chat template renders one user turn with the generation prompt."""
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def _chain(rng: random.Random, seed: str, items: int | None = None, boxes: int = DEFAULT_BOXES,
           linked: bool = False) -> Problem:
    n_items = items or rng.randint(12, 48)
    labels = rng.sample(BOXES, boxes)
    table = {b: rng.choice(labels) for b in labels}
    names = rng.sample(NAMES, n_items)
    plan = [(name, rng.choice(labels).capitalize(), rng.randint(4, 10)) for name in names]
    lines = ["Boxes:"] + [f"box {b.capitalize()} {table[b]}." for b in labels]
    after = {n: (f", next {m}" if linked else "") for (n, _, _), (m, _, _) in zip(plan, plan[1:] + [("none", 0, 0)])}
    lines += ["Items:"] + [f"item {n}: start {n} {s}, steps {n} {k}{after[n]}." for n, s, k in plan]
    target = rng.choice(plan)[0]
    prompt = "\n".join(lines) + f"\nTrace every item, then answer: where does item {target} end?"
    thoughts, ends = [], {}
    for name, box, k in plan:  # box: the capitalised key of the box to open next
        body = [f"item {name}: start {name} {box}."]
        for step in range(1, k + 1):
            held = table[box.lower()]
            body.append(f"step {step}: box {box} {held}.")
            box = held.capitalize()
        box = box.lower()
        ends[name] = box
        body.append(f"end {name} {box}.")
        thoughts.append("\n".join(body) + f"\n{OPEN}item {name} traced over {k} steps.{CLOSE}\n")
    answer = ends[target]
    lead = (f"The question asks where item {target} ends. The answer is in the thought on item {target}, so I look "
            f"back at item {target}: end {target} {answer}.")
    trace = f"{THINK}\n" + "".join(thoughts) + f"{END_THINK}\n{lead}\nAnswer: {answer}"
    target_index = [name for name, _, _ in plan].index(target)
    return Problem("chain", "end", prompt, trace, answer, True, n_items, seed, target_index)


def _records(rng: random.Random, seed: str, prompt_chars: int | None = None) -> Problem:
    target_chars = prompt_chars or rng.randint(6_000, 24_000)  # about 2K-8K tokens with the trained tokenizer
    seen, lines = set(), ["Records:"]
    while sum(len(x) + 1 for x in lines) < target_chars:
        key = (rng.choice(NAMES), rng.randint(10, 99))
        if key in seen:
            continue
        seen.add(key)
        code = " ".join(str(rng.randint(0, 9)) for _ in range(4))
        lines.append(f"record {key[0]} {key[1]} has color {rng.choice(COLORS)} and code {code}.")
    pick = rng.randrange(1, len(lines))
    words = lines[pick].split()
    name, num, code = words[1], words[2], " ".join(words[8:12]).rstrip(".")
    prompt = "\n".join(lines) + f"\nAnswer: what is the code of record {name} {num}?"
    trace = (f"{THINK}\nThe question asks for the code of record {name} {num}. I look for record {name} {num}.\n"
             f"{OPEN}looked up record {name} {num}.{CLOSE}\n{END_THINK}\n"
             f"Record {name} {num} has code {code}.\nAnswer: {code}")
    return Problem("records", "code", prompt, trace, code, False, 1, seed)


_READS = (  # (a trace line's pattern, the start of the prompt line it copies from)
    (re.compile(r"step \d+: box (\w+) "), "box {} "),  # a hop: the table line of the box it opens
    (re.compile(r"item (\w+): start "), "item {}: "),  # an item's start box: its line in the item list
    (re.compile(r"<summary>item (\w+) traced over"), "item {}: "),  # its step count: the same line
    (re.compile(r"Record (\w+ \d+) has code"), "record {} has "),  # a record's code: the record's line
)


def line_reads(p: Problem) -> list[tuple[int, ...]]:
    """Per line of ``p.trace`` (split at newlines), the indices of the ``p.prompt`` lines (split alike) it copies
    from: empty when it copies nothing from the prompt (it restates the question, which stays in SentenceKV's recent
    window, or copies from the trace itself). An item's first line reads two: the item list's line before its own
    (the item traced last: which item comes next is the line after it) and its own. Every later line of an item's
    thought (its hops, its end) also reads the item's own line: its step count says when the trace stops."""
    lines = [line.split() for line in p.prompt.split("\n")]
    heads: dict[int, dict[tuple, int]] = {}  # words of a head -> the first prompt line that starts with them
    out, item = [], None  # item: the prompt line of the item whose thought this is
    for line in p.trace.split("\n"):
        found: tuple[int, ...] = ()
        for pattern, head in _READS:
            m = pattern.match(line)
            if m:
                key = tuple(head.format(m.group(1)).split())
                if len(key) not in heads:
                    heads[len(key)] = {}
                    for i, words in reversed(list(enumerate(lines))):
                        heads[len(key)][tuple(words[:len(key)])] = i
                at = heads[len(key)].get(key)
                starts = head == "item {}: " and "start" in line
                if starts:
                    item = at
                found = () if at is None else (at - 1, at) if starts else (at,)
                break
        if item is not None and re.match(r"(step \d+:|end \w+) ", line):  # within an item's thought
            found = tuple(dict.fromkeys(found + (item,)))
        if line.startswith("<summary>"):
            item = None
        out.append(found)
    return out


def problem(split: str, family: str, index: int, **size) -> Problem:
    """Problem ``index`` of ``family`` in ``split`` (``size``: ``items`` for chain, ``prompt_chars`` for records)."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLIT_SEEDS)}")
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    seed = f"{SPLIT_SEEDS[split]}:{family}:{index}"
    rng = random.Random(seed)
    return _chain(rng, seed, **size) if family == "chain" else _records(rng, seed, **size)


def generate(split: str, n: int, family: str | None = None, records_share: float = 0.25, **size) -> list[Problem]:
    """``n`` problems of one family, or a mix with ``records_share`` of ``records`` (problem ``i``'s family is
    fixed by the index, so a longer list starts with the shorter one)."""
    if n < 0:
        raise ValueError(f"n must be zero or more, got {n}")
    if not 0.0 <= records_share <= 1.0:
        raise ValueError(f"records_share must be within [0, 1], got {records_share}")
    if size and family is None:
        raise ValueError("problem sizes need one family")
    return [problem(split, family or family_of(i, records_share), i, **size) for i in range(n)]


def family_of(index: int, records_share: float = 0.25) -> str:
    """The family of problem ``index`` in a mixed list (fixed by the index alone)."""
    return "records" if random.Random(f"family:{index}").random() < records_share else "chain"


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser("tasks", prog="python -m reasoner.tasks", description=__doc__.split("\n")[0])
    ap.add_argument("--split", default="heldout", choices=sorted(SPLIT_SEEDS))
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--family", choices=FAMILIES, default=None, help="one family (default: a mix)")
    ap.add_argument("--items", type=int, default=None, help="chain: items (thoughts) per problem")
    ap.add_argument("--linked", action="store_true", help="chain: each item's line names the next item")
    ap.add_argument("--prompt-chars", type=int, default=None, help="records: prompt length in characters")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    size = {k: v for k, v in (("items", args.items), ("prompt_chars", args.prompt_chars),
                              ("linked", args.linked or None)) if v is not None}
    try:
        if size and args.family is None:
            raise ValueError("--items, --linked and --prompt-chars need --family")
        if args.items is not None and not 1 <= args.items <= len(NAMES):
            raise ValueError(f"--items must be within 1..{len(NAMES)}")
        problems = generate(args.split, args.n, args.family, **size)
    except ValueError as e:
        ap.error(str(e))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as f:
        for p in problems:
            f.write(json.dumps(p.record()) + "\n")
    detail = sum(p.needs_detail for p in problems)
    print(f"{len(problems)} problems ({detail} need an earlier thought's detail) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
