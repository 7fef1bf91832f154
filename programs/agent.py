"""A multi-turn agent over HTTP: each turn reasons with think-summarize-continue over the whole conversation so far,
may use a calculator, and answers; later turns reuse the earlier turns' KV from the server's radix tree.

Library::

    client = ZoomRClient("http://127.0.0.1:30000", {"zoomr_zoom_budget": 256})
    agent = Agent(client, Limits(max_thoughts=3))
    turn = agent.ask("What is 12 * 7 + 3?")      # a Turn: thoughts, summaries, tool calls, answer, per-request stats
    turn2 = agent.ask("And twice that?")         # its first request's cached_tokens cover turn 1

How later turns reuse earlier ones: **prefix matching**, not SGLang sessions. Every step (a thought, a summary, the
answer) is one ``/generate`` request whose prompt is the full transcript text so far, exactly as the frontend
programs send it. The server's radix tree matches the earlier turns as a prefix; with the ZoomR tree, their thoughts'
details come back host-resident (holes on the device, zoomable) and their summaries device-resident. Why not
``/open_session`` + ``session_params``: in SGLang 0.5.17 a session only concatenates the previous request's token
ids on the server, and its KV reuse goes through the same radix-tree match (no streaming session), so it would add
server state (open/close, capacity, one request chain per session) without adding reuse, and it could not take the
text the agent inserts between steps (the summary markers and tool results) without extra bookkeeping. Stateless
requests also survive a client restart and keep the transcript inspectable. The cost: the text is sent and
tokenized again each step, and re-tokenizing at the join of a generated piece and added text can cost a few tokens
of reuse at that point.

Modes: ``program`` (default) writes the summary markers itself, one request per thought and per summary, like
``programs.think_summarize``; ``engine`` sends the thinking as one request (``zoomr_summary_mode: "engine"``, thought
and summary bounds from ``Limits``) and lets the server close thoughts and force the markers, so each finished
request's thoughts were offloaded by that request itself.

Tool policy (the calculator, ``programs.calculator``):
1. before thinking, every arithmetic expression written in the user's message (``find_arithmetic``, at most
   ``MAX_TOOL_CALLS``) is evaluated, and ``<calc>EXPR</calc><result>VALUE</result>`` opens the turn's thinking,
   so the model reasons with the result in view. A small model will not reliably ask for a tool, so the agent does;
2. when the model writes ``<calc>EXPR`` itself, its thought stops at ``</calc>`` and the agent appends
   ``</calc><result>VALUE</result>`` before the thought's summary.
Each call is recorded in the turn's ``tool_calls`` with its source (``question`` or ``model``).

CLI::

    python -m programs.agent --url URL --turns "q1" "q2" ... [--max-thoughts N]
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Callable

from programs import calculator, protocol
from programs.answers import extract_answer
from programs.cli import OneLineParser, Progress, add_limit_args, add_server_args, limits_from_args, run_main
from programs.client import ZoomRClient
from programs.errors import InvalidInput
from programs.protocol import Limits
from programs.transcript import render_reasoning, stats_line

MAX_TOOL_CALLS = 3
MODES = ("program", "engine")
AGENT_SYSTEM = "You are a careful assistant. Use the calculator results when they are given."


@dataclass
class Turn:
    user: str
    thoughts: list[str] = field(default_factory=list)
    summaries: list[str] = field(default_factory=list)
    tool_calls: list[dict] = field(default_factory=list)  # expression, result, ok, source
    ended_by: str = "thought limit"
    answer_text: str = ""
    answer: str | None = None
    requests: list[tuple[str, dict]] = field(default_factory=list)  # (rid, meta_info) in order

    @property
    def reused_tokens(self) -> int:
        """Prompt tokens of the turn's first request that the server found cached (the earlier turns)."""
        return int((self.requests[0][1].get("cached_tokens") or 0) if self.requests else 0)

    @property
    def first_prompt_tokens(self) -> int:
        return int(self.requests[0][1].get("prompt_tokens") or 0) if self.requests else 0


def _system(text: str | None) -> str:
    return f"{protocol.IM_START}system\n{text}{protocol.IM_END}\n" if text else ""


class Agent:
    """A conversation with a ZoomR server; ``transcript`` is the whole text so far (every prompt starts with it)."""

    def __init__(self, client: ZoomRClient, limits: Limits = Limits(), system: str | None = AGENT_SYSTEM,
                 temperature: float = 0.0, progress: Callable[[str], None] | None = None, mode: str = "program"):
        if not isinstance(limits, Limits):
            raise InvalidInput("limits must be a programs.protocol.Limits")
        if mode not in MODES:
            raise InvalidInput(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        self.mode = mode
        self.client = client
        self.limits = limits
        self.temperature = temperature
        self.transcript = _system(system)
        self.turns: list[Turn] = []
        self.say = progress or (lambda _m: None)

    def _gen(self, turn: Turn, text: str, max_tokens: int, stop, custom=None, ignore_eos=False) -> tuple[str, dict]:
        done = self.client.generate(text, max_new_tokens=max_tokens, stop=stop, temperature=self.temperature,
                                    extra_custom_params=custom, ignore_eos=ignore_eos)
        turn.requests.append((done.rid, done.meta_info))
        return done.text, done.meta_info

    def _tool(self, turn: Turn, expr: str, source: str) -> str:
        value, ok = calculator.answer(expr)
        turn.tool_calls.append({"expression": expr, "result": value, "ok": ok, "source": source})
        self.say(f"turn {len(self.turns) + 1}: calculator({expr}) -> {value}  [{source}]")
        return value

    def ask(self, message: str) -> Turn:
        message = protocol.check_question(message)
        turn = Turn(message)
        n = len(self.turns) + 1
        text = self.transcript + protocol.user_turn(message)
        # Policy 1: arithmetic in the question goes to the calculator before thinking.
        for expr in calculator.find_arithmetic(message)[:MAX_TOOL_CALLS]:
            text += calculator.format_call(expr, self._tool(turn, expr, "question")) + "\n"
        text = self._think_engine(turn, text, n) if self.mode == "engine" else self._think_program(turn, text, n)
        answer, _ = self._gen(turn, text, self.limits.answer_tokens, list(protocol.ANSWER_STOPS))
        turn.answer_text = answer
        turn.answer = extract_answer(answer)
        self.transcript = text + answer + protocol.answer_closing()
        self.turns.append(turn)
        self.say(f"turn {n}: answered ({len(turn.requests)} requests)")
        return turn

    def _think_program(self, turn: Turn, text: str, n: int) -> str:
        """Program mode: one request per thought and per summary; the agent writes the markers."""
        thought_stops = list(protocol.THOUGHT_STOPS) + [calculator.CALL_CLOSE]
        for i in range(self.limits.max_thoughts):
            thought, meta = self._gen(turn, text, self.limits.thought_tokens, thought_stops)
            if protocol.stop_matched(meta) == calculator.CALL_CLOSE:  # Policy 2: the model asked for the tool
                expr = calculator.open_call(thought) or ""
                value = self._tool(turn, expr, "model")
                thought += calculator.CALL_CLOSE + calculator.RESULT_OPEN + value + calculator.RESULT_CLOSE
            ended = protocol.ends_thinking(meta)
            turn.thoughts.append(thought)
            text += thought + protocol.summary_opening()
            summary, smeta = self._gen(turn, text, self.limits.summary_tokens, list(protocol.SUMMARY_STOPS))
            turn.summaries.append(summary)
            ended = ended or protocol.stop_matched(smeta) == protocol.THINK_CLOSE
            if ended:
                turn.ended_by = "model"
            last = ended or i + 1 == self.limits.max_thoughts
            text += summary + protocol.summary_closing(last)
            extra = f", reused {turn.reused_tokens}/{turn.first_prompt_tokens} prompt tokens" if i == 0 else ""
            self.say(f"turn {n}: thought {i + 1} + summary{extra} ({stats_line(smeta)})")
            if last:
                break
        return text

    def _engine_params(self) -> dict:
        lim = self.limits
        return {"zoomr_summary_mode": "engine", "zoomr_max_thought_tokens": lim.thought_tokens,
                "zoomr_min_thought_tokens": max(1, lim.thought_tokens // 2),
                "zoomr_max_summary_tokens": lim.summary_tokens}

    def _think_engine(self, turn: Turn, text: str, n: int) -> str:
        """Engine mode: the server closes thoughts and forces the markers inside one request (a new request only
        after a model-written tool call; the end-of-reply token is ignored while thinking); the agent reads thoughts
        and summaries back from the text."""
        lim = self.limits
        budget = lim.max_thoughts * (lim.thought_tokens + lim.summary_tokens + 2)
        thinking = ""
        ended = False
        for _ in range(1 + MAX_TOOL_CALLS):
            # Inside thinking an end-of-reply token is no valid end: thinking ends at </think> or the budget.
            stops = [protocol.THINK_CLOSE, calculator.CALL_CLOSE]
            piece, meta = self._gen(turn, text + thinking, budget, stops, self._engine_params(), ignore_eos=True)
            thinking += piece
            self.say(f"turn {n}: thinking ({stats_line(meta)})")
            if protocol.stop_matched(meta) != calculator.CALL_CLOSE:
                ended = protocol.ends_thinking(meta)
                break
            value = self._tool(turn, calculator.open_call(piece) or "", "model")
            thinking += calculator.CALL_CLOSE + calculator.RESULT_OPEN + value + calculator.RESULT_CLOSE
        turn.ended_by = "model" if ended else "token limit"
        turn.thoughts, turn.summaries = split_thinking(thinking)
        return text + thinking.rstrip("\n") + "\n" + protocol.THINK_CLOSE + protocol.THOUGHT_BREAK


def split_thinking(thinking: str) -> tuple[list[str], list[str]]:
    """Thoughts and summaries of a stretch of thinking with summary markers in it."""
    thoughts, summaries = [], []
    rest = thinking
    while protocol.SUMMARY_OPEN in rest:
        thought, rest = rest.split(protocol.SUMMARY_OPEN, 1)
        summary, _, rest = rest.partition(protocol.SUMMARY_CLOSE)
        thoughts.append(thought.strip())
        summaries.append(summary.strip())
    if rest.strip():
        thoughts.append(rest.strip())
    return thoughts, summaries


def render_turn(turn: Turn, index: int) -> str:
    head = (f"=== turn {index}: {turn.user}\n"
            f"  reuse     first request: cached {turn.reused_tokens} of {turn.first_prompt_tokens} prompt tokens")
    return head + "\n" + render_reasoning(turn)


# ---------------------------------------------------------------------------------------------------- command line
def _parser() -> OneLineParser:
    p = OneLineParser(prog="python -m programs.agent",
                      description="A multi-turn calculator agent against a ZoomR SGLang server.")
    add_server_args(p)
    p.add_argument("--turns", nargs="+", required=True, metavar="MESSAGE", help="the user's messages, one per turn")
    add_limit_args(p, max_thoughts=3)
    p.add_argument("--mode", choices=MODES, default="program",
                   help="program: the agent writes the summary markers (default); engine: the server does")
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)

    def go() -> int:
        messages = [protocol.check_question(m) if m.strip() else None for m in args.turns]
        if None in messages:
            raise InvalidInput(f"turn {messages.index(None) + 1}: the question is empty")
        limits = limits_from_args(args)
        progress = Progress(not args.quiet)
        client = ZoomRClient(args.url, dict(args.zoomr))
        progress(f"connected to {client.url} (ZoomR {'on' if client.zoomr_enabled else 'off'}); "
                 f"settings {client.custom_params}")
        agent = Agent(client, limits, progress=progress, mode=args.mode)
        for message in messages:
            turn = agent.ask(message)
            if not args.json:
                print(render_turn(turn, len(agent.turns)), flush=True)
        if args.json:
            print(json.dumps([asdict(t) | {"reused_tokens": t.reused_tokens} for t in agent.turns], indent=1))
        return 0

    return run_main(p.prog, go)


if __name__ == "__main__":
    sys.exit(main())
