"""The text protocol every program here follows, so that the frontend programs and the agent write the same stream.

A Qwen-style chat turn opens the assistant's thinking; then, repeatedly, a thought (a paragraph, ended by a blank
line), its summary between the ZoomR markers, and a blank line; then ``</think>`` and the answer::

    <|im_start|>user\\n{question}<|im_end|>\\n<|im_start|>assistant\\n<think>\\n
    {thought 1}\\n\\n<summary>{summary 1}</summary>\\n\\n
    {thought 2}\\n\\n<summary>{summary 2}</summary>\\n</think>\\n\\n
    {answer}<|im_end|>\\n

This is the layout the embedded model was built from. The program writes the markers itself (ZoomR program mode).
Thinking ends when the model writes ``</think>`` (or ``<|im_end|>``) inside a thought, or at ``Limits.max_thoughts``.
Every generation is bounded by a token limit and stop strings: a model need not ever write ``</summary>``.
"""

from __future__ import annotations

from dataclasses import dataclass

from programs.errors import InvalidInput
from zoomr_sgl.config import ZoomRConfig

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
SUMMARY_OPEN = ZoomRConfig.summary_open  # the server's default markers: '<summary>' and '</summary>'
SUMMARY_CLOSE = ZoomRConfig.summary_close
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THOUGHT_BREAK = "\n\n"

# A thought ends at a blank line, at the end of thinking, or where the model starts a summary on its own.
THOUGHT_STOPS = (THOUGHT_BREAK, THINK_CLOSE, SUMMARY_OPEN, IM_END)
# A summary is one line.
SUMMARY_STOPS = (SUMMARY_CLOSE, "\n", THINK_CLOSE)
# The answer ends the reply; thinking markers in it would break the one-thinking-block layout above.
ANSWER_STOPS = (IM_END, IM_START, THINK_OPEN, THINK_CLOSE)
# Stops that mean "thinking is over" when a thought ends on them.
END_OF_THINKING = (THINK_CLOSE, IM_END)


@dataclass(frozen=True)
class Limits:
    """Bounds on one reasoning run (all at least 1)."""

    max_thoughts: int = 4
    thought_tokens: int = 64
    summary_tokens: int = 16
    answer_tokens: int = 48

    def __post_init__(self) -> None:
        for name in ("max_thoughts", "thought_tokens", "summary_tokens", "answer_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInput(f"{name} must be an integer, got {value!r}")
            if value < 1:
                raise InvalidInput(f"{name} must be at least 1, got {value}")


def check_question(question) -> str:
    if not isinstance(question, str) or not question.strip():
        raise InvalidInput("the question is empty")
    return question.strip()


def user_turn(question: str, think: bool = True) -> str:
    """A user message and the opening of the assistant's reply (with ``<think>`` unless ``think`` is False)."""
    opening = f"{THINK_OPEN}\n" if think else ""
    return f"{IM_START}user\n{check_question(question)}{IM_END}\n{IM_START}assistant\n{opening}"


def summary_opening() -> str:
    """What the program writes after a thought, before the model summarizes it."""
    return THOUGHT_BREAK + SUMMARY_OPEN


def summary_closing(last: bool) -> str:
    """What the program writes after a summary: a blank line before the next thought, or, after the last one,
    the end of thinking and a blank line before the answer."""
    return SUMMARY_CLOSE + ("\n" + THINK_CLOSE + THOUGHT_BREAK if last else THOUGHT_BREAK)


def answer_closing() -> str:
    return IM_END + "\n"


def stop_matched(meta_info: dict | None) -> str | int | None:
    """The stop string (or token id) that ended a generation, None if it ran to its token limit."""
    reason = (meta_info or {}).get("finish_reason") or {}
    return reason.get("matched") if reason.get("type") == "stop" else None


def ends_thinking(meta_info: dict | None, eos_ids: tuple[int, ...] = ()) -> bool:
    matched = stop_matched(meta_info)
    if isinstance(matched, int):  # an eos/stop token id: the model ended its reply
        return True
    return matched in END_OF_THINKING
