"""Think-summarize-continue as SGLang frontend programs (``@sgl.function``), and the command line that runs them.

- ``think_summarize(s, question, limits)``: a thought (stops at a blank line, ``</think>``, ``<summary>`` or the
  thought token limit), then ``<summary>``, the model's summary (one line, bounded), ``</summary>``; repeated until
  the model ends its thinking or ``limits.max_thoughts`` thoughts are out; then ``</think>`` and the answer, from
  which ``programs.answers.extract_answer`` takes the final answer (None when there is no number to take).
- ``think_summarize_parallel(s, question, samples, limits)``: the same after ``s.fork(samples)``: the samples share
  the prompt (SGLang caches it once), reason in lock-step (each step's generations of all samples are in flight
  together), and the majority of their extracted answers is the answer (ties: the earliest sample).
- ``run_think_summarize`` / ``run_parallel`` check the inputs, run the program on a ``ZoomREndpoint`` and return a
  ``ThinkResult`` / ``ParallelResult``. A refused request raises ``ServerRequestError`` (the frontend's own error
  channel is read and re-raised).

Each ``gen`` is a new ``/generate`` request whose prompt is all the text so far: the radix tree reuses it, and with
the ZoomR tree the earlier thoughts' details come back host-resident and zoomable, summaries on the device.

CLI::

    python -m programs.think_summarize --url URL --question "..." [--max-thoughts N] [--samples K]
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Callable

import sglang as sgl

from programs import protocol
from programs.answers import extract_answer, majority
from programs.cli import OneLineParser, Progress, add_limit_args, add_server_args, limits_from_args, positive_int, run_main
from programs.endpoint import ZoomREndpoint
from programs.errors import InvalidInput, ProgramError
from programs.protocol import Limits
from programs.transcript import render_reasoning, stats_line


@dataclass
class ThinkResult:
    thoughts: list[str] = field(default_factory=list)
    summaries: list[str] = field(default_factory=list)
    ended_by: str = "thought limit"  # or "model" (it wrote </think> or ended its reply)
    answer_text: str = ""
    answer: str | None = None
    requests: list[tuple[str, dict]] = field(default_factory=list)  # (rid, meta_info) in order
    text: str = ""


@dataclass
class ParallelResult:
    samples: list[ThinkResult]
    answer: str | None  # the majority


def _read(state, name: str) -> tuple[str, dict]:
    """A finished ``gen``'s text and meta_info, or the frontend's error raised again."""
    meta = state.get_meta_info(name)
    if meta is None:
        err = state.error()
        if isinstance(err, ProgramError):
            raise err
        raise ProgramError(f"generation {name!r} failed: {err}" if err else f"generation {name!r} returned nothing")
    return state[name], meta


def _reason(states: list, limits: Limits, progress: Callable[[str], None] | None) -> list[ThinkResult]:
    """Think-summarize-continue on every state in lock-step, then the answers."""
    say = progress or (lambda _m: None)
    results = [ThinkResult() for _ in states]
    active = list(range(len(states)))
    for i in range(limits.max_thoughts):
        for k in active:
            states[k] += sgl.gen(f"thought_{i}", max_tokens=limits.thought_tokens, stop=list(protocol.THOUGHT_STOPS))
        ending = set()
        for k in active:
            text, meta = _read(states[k], f"thought_{i}")
            results[k].thoughts.append(text)
            results[k].requests.append((meta.get("id"), meta))
            if protocol.ends_thinking(meta):
                ending.add(k)
                results[k].ended_by = "model"
            states[k] += protocol.summary_opening() + sgl.gen(
                f"summary_{i}", max_tokens=limits.summary_tokens, stop=list(protocol.SUMMARY_STOPS))
        for k in active:
            text, meta = _read(states[k], f"summary_{i}")
            results[k].summaries.append(text)
            results[k].requests.append((meta.get("id"), meta))
            if protocol.stop_matched(meta) == protocol.THINK_CLOSE:
                ending.add(k)
                results[k].ended_by = "model"
            last = k in ending or i + 1 == limits.max_thoughts
            states[k] += protocol.summary_closing(last)
            tag = f"sample {k + 1}: " if len(states) > 1 else ""
            say(f"{tag}thought {i + 1} + summary ({stats_line(meta)})")
        active = [k for k in active if k not in ending]
        if not active:
            break
    for st in states:
        st += sgl.gen("answer", max_tokens=limits.answer_tokens, stop=list(protocol.ANSWER_STOPS))
    for k, st in enumerate(states):
        text, meta = _read(st, "answer")
        results[k].answer_text = text
        results[k].answer = extract_answer(text)
        results[k].requests.append((meta.get("id"), meta))
        results[k].text = st.text()
    say("answer" + ("s" if len(states) > 1 else "") + " written")
    return results


@sgl.function
def think_summarize(s, question, limits=Limits(), progress=None):
    s += protocol.user_turn(question)
    return _reason([s], limits, progress)[0]


@sgl.function
def think_summarize_parallel(s, question, samples=3, limits=Limits(), progress=None):
    s += protocol.user_turn(question)
    s.text()  # wait for it: fork prefills the shared prompt once only if its text is in place (it does not wait)
    forks = s.fork(samples)
    results = _reason([forks[i] for i in range(samples)], limits, progress)
    return ParallelResult(results, majority(r.answer for r in results))


def _check(question: str, samples: int = 1) -> str:
    question = protocol.check_question(question)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise InvalidInput(f"samples must be at least 1, got {samples!r}")
    return question


def _run(program, endpoint, temperature, *args, **kwargs):
    state = program.run(*args, backend=endpoint, temperature=temperature, **kwargs)
    return state.ret_value


def run_think_summarize(endpoint: ZoomREndpoint, question: str, limits: Limits = Limits(),
                        temperature: float = 0.0, progress=None) -> ThinkResult:
    question = _check(question)
    return _run(think_summarize, endpoint, temperature, question, limits=limits, progress=progress)


def run_parallel(endpoint: ZoomREndpoint, question: str, samples: int = 3, limits: Limits = Limits(),
                 temperature: float = 0.8, progress=None) -> ParallelResult:
    question = _check(question, samples)
    return _run(think_summarize_parallel, endpoint, temperature, question, samples=samples, limits=limits,
                progress=progress)


# ---------------------------------------------------------------------------------------------------- command line
def _parser() -> OneLineParser:
    p = OneLineParser(prog="python -m programs.think_summarize",
                      description="Think-summarize-continue against a ZoomR SGLang server (program mode).")
    add_server_args(p)
    p.add_argument("--question", required=True, help="the question")
    add_limit_args(p)
    p.add_argument("--samples", type=positive_int, default=1, help="K > 1: K forked samples and a majority answer")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature (default: 0 for one sample, 0.8 for several)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)

    def go() -> int:
        question = _check(args.question, args.samples)
        limits = limits_from_args(args)
        progress = Progress(not args.quiet)
        endpoint = ZoomREndpoint(args.url, dict(args.zoomr))
        progress(f"connected to {endpoint.base_url} (model {endpoint.get_model_name()}, "
                 f"ZoomR {'on' if endpoint.server_zoomr_config else 'off'}); settings {endpoint.custom_params}")
        if args.samples == 1:
            t = 0.0 if args.temperature is None else args.temperature
            results = [run_think_summarize(endpoint, question, limits, t, progress)]
            answer = results[0].answer
        else:
            t = 0.8 if args.temperature is None else args.temperature
            par = run_parallel(endpoint, question, args.samples, limits, t, progress)
            results, answer = par.samples, par.answer
        if args.json:
            print(json.dumps({"question": question, "answer": answer,
                              "samples": [asdict(r) for r in results]}, indent=1, default=str))
            return 0
        print(f"question: {question}")
        for k, r in enumerate(results):
            print(render_reasoning(r, title=f"--- sample {k + 1} ---" if len(results) > 1 else "--- reasoning ---"))
        print(f"answer: {answer if answer is not None else '(none extracted)'}"
              + (f"   (majority of {len(results)}: {[r.answer for r in results]})" if len(results) > 1 else ""))
        return 0

    return run_main(p.prog, go)


if __name__ == "__main__":
    sys.exit(main())
