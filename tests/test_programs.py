"""ZoomR programs against the real server on the embedded model (CPU): the frontend think-summarize program and its
fork variant, the endpoint's settings and request ids, the multi-turn calculator agent (reuse of earlier turns from
the radix tree, their details host-resident), and the command lines' errors.

The embedded model writes noise, so nothing here checks what the answers say; every generation is bounded."""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from programs.agent import Agent, split_thinking
from programs.answers import extract_answer, majority
from programs.client import ZoomRClient
from programs.endpoint import ZoomREndpoint
from programs.errors import InvalidInput, ServerRequestError, ServerUnreachable
from programs.protocol import Limits
from programs.think_summarize import run_parallel, run_think_summarize
from tests.server_process import REPO, free_port

pytestmark = pytest.mark.server

QUESTION = "Tom has 12 apples and buys 7 more. How many apples now?"
SMALL = Limits(max_thoughts=3, thought_tokens=32, summary_tokens=10, answer_tokens=20)


@pytest.fixture
def posted(monkeypatch):
    """rid -> (prompt text, output token ids) of every single-prompt ``/generate`` the SGLang frontend posts (it
    keeps only the output text): spies on ``http_request``, which ``RuntimeEndpoint`` posts through."""
    from sglang.lang.backend import runtime_endpoint

    seen: dict[str, tuple[str, list[int]]] = {}
    lock = threading.Lock()
    post = runtime_endpoint.http_request

    def spy(url, json=None, **kw):
        res = post(url, json=json, **kw)
        if url.endswith("/generate") and not kw.get("stream") and isinstance((json or {}).get("text"), str) \
                and res.status_code == 200:
            with lock:
                seen[json["rid"]] = (json["text"], res.json()["output_ids"])  # the body is read once, then cached
        return res

    monkeypatch.setattr(runtime_endpoint, "http_request", spy)
    return seen


def _tokenize(server, text: str) -> list[int]:
    r = server.post("/tokenize", {"prompt": text})
    r.raise_for_status()
    return r.json()["tokens"]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def test_think_summarize_program_writes_thoughts_and_summaries(zoomr_server, posted):
    endpoint = ZoomREndpoint(zoomr_server.url)
    r = run_think_summarize(endpoint, QUESTION, SMALL)
    assert 1 <= len(r.thoughts) <= SMALL.max_thoughts and len(r.summaries) == len(r.thoughts)
    assert r.text.count("</think>") == 1 and r.text.endswith(r.answer_text)
    thinking = r.text[: r.text.index("</think>")]  # the answer after it is the model's own text, markers and all
    assert thinking.count("<summary>") == len(r.thoughts) and thinking.count("</summary>") == len(r.thoughts)
    assert r.answer is None or r.answer == extract_answer(r.answer_text)
    assert len(r.requests) == 2 * len(r.thoughts) + 1
    prompts = []
    for i, (rid, meta) in enumerate(r.requests):
        assert rid.startswith(endpoint.rids.prefix), rid  # the request id we sent came back
        assert meta["zoomr"]["policy"] == "zoomr"
        prompt = _tokenize(zoomr_server, posted[rid][0])
        assert meta["prompt_tokens"] == len(prompt), meta
        prompts.append(prompt)
        if not i:
            continue
        before, out = prompts[i - 1], posted[r.requests[i - 1][0]][1]
        # Each prompt is the previous one's text and more. The markers are tokens of their own, and every prompt
        # ends in one or in a newline run after one: only that run, one token, can re-tokenize with what follows.
        assert _common_prefix(prompt, before) >= len(before) - 1, (prompt, before)
        # The previous request left its prompt and its output in the tree, all but the last token (sampled, never
        # run through the model, so it has no KV). Every token of this prompt that agrees with them is reused, up
        # to where the text was cut at the stop string and re-tokenized. SGLang matches at most the prompt less one.
        left = before + out[:-1]
        assert meta["cached_tokens"] >= min(_common_prefix(prompt, left), len(prompt) - 1), (meta, prompt, left)
    assert r.requests[-1][1]["zoomr"]["thoughts"] >= 1  # the server segmented the program's thoughts


def test_fork_variant_returns_k_samples_and_a_majority(zoomr_server):
    endpoint = ZoomREndpoint(zoomr_server.url)
    par = run_parallel(endpoint, QUESTION, samples=3, limits=Limits(2, 24, 8, 16), temperature=0.8)
    assert len(par.samples) == 3
    assert par.answer == majority(s.answer for s in par.samples)
    prompt_tokens = []
    for s in par.samples:
        assert s.thoughts and len(s.summaries) == len(s.thoughts) and s.text.count("</think>") == 1
        first = s.requests[0][1]
        prompt_tokens.append(first["prompt_tokens"])
        # fork prefilled the shared prompt once; a sample's first prompt is that text, matched all but the last token
        assert first["cached_tokens"] == first["prompt_tokens"] - 1, first
    assert len({rid for s in par.samples for rid, _ in s.requests}) == sum(len(s.requests) for s in par.samples)


@pytest.mark.filterwarnings("ignore:Error in stream_executor")  # SGLang's frontend warns, then we raise it
def test_endpoint_sends_zoomr_settings_and_checks_them(zoomr_server):
    endpoint = ZoomREndpoint(zoomr_server.url, {"zoomr_policy": "full"})
    r = run_think_summarize(endpoint, QUESTION, Limits(1, 8, 4, 4))
    assert {m["zoomr"]["policy"] for _, m in r.requests} == {"full"}  # custom_params reached the scheduler
    with pytest.raises(InvalidInput, match="zoomr_zoom_budget"):  # refused locally, nothing sent
        ZoomREndpoint(zoomr_server.url, {"zoomr_zoom_budget": -1})
    with pytest.raises(InvalidInput, match="quest_page_size"):
        ZoomREndpoint(zoomr_server.url, {"zoomr_policy": "quest", "zoomr_quest_page_size": 4096})
    endpoint.custom_params = {"zoomr_zoom_budget": -1}  # bypass the local check: the server's 400 comes through
    with pytest.raises(ServerRequestError, match="zoomr_zoom_budget"):
        run_think_summarize(endpoint, QUESTION, Limits(1, 4, 4, 4))
    with pytest.raises(InvalidInput, match="empty"):
        run_think_summarize(endpoint, "  ", SMALL)
    with pytest.raises(InvalidInput, match="max_thoughts"):
        Limits(max_thoughts=-1)
    with pytest.raises(ServerUnreachable):
        ZoomREndpoint(f"http://127.0.0.1:{free_port()}")


def _earlier_details_host_resident(meta: dict, earlier_thoughts: int) -> None:
    """Tree-dependent: a request whose prompt holds earlier turns got their thoughts from the ZoomR radix tree with
    the details on the host (holes on the device, zoomable), the summaries on the device."""
    z = meta["zoomr"]
    assert z.get("thoughts_from_tree", 0) >= 1, f"no earlier thought came from the tree as host detail: {z}"
    assert z.get("reused_host_tokens", 0) > 0, f"no prefix position came back host-resident: {z}"
    assert z["device_kv_tokens"] < z["full_kv_tokens"], z
    assert z["device_kv_tokens"] <= z["full_kv_tokens"] - z["reused_host_tokens"] + z["zoom_tokens"], z


def _check_reuse(agent: Agent, host_resident: bool) -> None:
    earlier_thoughts = 0
    for prev, turn in zip(agent.turns, agent.turns[1:]):
        earlier_thoughts += len(prev.summaries)  # closed thoughts
        last = prev.requests[-1][1]
        # Earlier turns reused: this turn's prompt is the previous turn's last prompt (ending in "</think>\n\n") and
        # more, so at most that newline run, one token, re-tokenizes (see the think-summarize test).
        assert turn.reused_tokens >= last["prompt_tokens"] - 1, (turn.reused_tokens, last)
        if host_resident:
            _earlier_details_host_resident(turn.requests[0][1], earlier_thoughts)


def test_agent_program_mode_turns_reuse_earlier_turns(zoomr_server):
    client = ZoomRClient(zoomr_server.url, {"zoomr_zoom_interval": 4})
    agent = Agent(client, SMALL)
    turns = [agent.ask("What is 12 * 7 + 3?"), agent.ask("Now add 5 to that."), agent.ask("And (4+5)/3?")]
    assert turns[0].tool_calls == [{"expression": "12 * 7 + 3", "result": "87", "ok": True, "source": "question"}]
    assert turns[2].tool_calls[0]["result"] == "3" and not turns[1].tool_calls
    assert "<calc>12 * 7 + 3</calc><result>87</result>" in agent.transcript
    assert agent.transcript.count("<|im_start|>user") == 3 and agent.transcript.count("</think>") == 3
    assert all(t.thoughts and len(t.summaries) == len(t.thoughts) for t in turns)
    assert all(rid.startswith(client.rids.prefix) for t in turns for rid, _ in t.requests)
    _check_reuse(agent, host_resident=False)
    _check_reuse(agent, host_resident=True)  # needs the ZoomR radix tree (see the report)


def test_agent_engine_mode_turns_reuse_host_resident_details(zoomr_server):
    client = ZoomRClient(zoomr_server.url, {"zoomr_zoom_interval": 4, "zoomr_zoom_topk": 2})
    agent = Agent(client, Limits(max_thoughts=3, thought_tokens=16, summary_tokens=4, answer_tokens=8), mode="engine")
    agent.ask("What is 9 * 8?")
    second = agent.ask("Is that more than 70? Think it over.")
    assert agent.turns[0].tool_calls[0]["result"] == "72"
    thinking = agent.turns[0].requests[0][1]["zoomr"]
    assert thinking["thoughts"] >= 1 and thinking["offloaded_tokens"] > 0  # the server closed and offloaded them
    assert len(agent.turns[0].summaries) >= 1
    _check_reuse(agent, host_resident=False)
    _check_reuse(agent, host_resident=True)  # needs the ZoomR radix tree
    assert max(m["zoomr"]["zoom_recalls"] for _, m in second.requests) > 0  # details came back when relevant


def test_split_thinking():
    assert split_thinking("a b\n\n<summary>s1</summary>\n\nc<summary>s2</summary>\n\nd") == (["a b", "c", "d"],
                                                                                            ["s1", "s2"])


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_command_lines_run_and_print_transcripts(zoomr_server):
    url = zoomr_server.url
    with ThreadPoolExecutor(2) as ex:
        agent = ex.submit(_cli, "programs.agent", "--url", url, "--turns", "What is 2+3?", "And then?",
                          "--max-thoughts", "2", "--thought-tokens", "16")
        think = ex.submit(_cli, "programs.think_summarize", "--url", url, "--question", QUESTION,
                          "--max-thoughts", "2", "--thought-tokens", "16", "--samples", "2")
        agent, think = agent.result(), think.result()
    assert agent.returncode == 0, agent.stderr
    for needle in ("=== turn 1: What is 2+3?", "=== turn 2", "tool      calculator(2+3) -> 5", "thought1",
                   "summary", "answer", "extracted", "reuse", "cached=", "thoughts="):
        assert needle in agent.stdout, (needle, agent.stdout)
    assert "turn 2: thought 1 + summary, reused" in agent.stderr and "Traceback" not in agent.stderr
    assert think.returncode == 0, think.stderr
    for needle in ("--- sample 1 ---", "--- sample 2 ---", "thought1", "summary", "answer:", "majority of 2"):
        assert needle in think.stdout, (needle, think.stdout)
    assert "sample 2: thought 1 + summary" in think.stderr


BAD = [
    ("programs.think_summarize", ["--question", ""], "the question is empty"),
    ("programs.think_summarize", ["--question", "q", "--url", "UNREACHABLE"], "cannot reach the server"),
    ("programs.agent", ["--turns", "q", "--max-thoughts", "0"], "--max-thoughts: must be at least 1, got 0"),
    ("programs.agent", ["--turns", "q", "--thought-tokens", "-5"], "must be at least 1, got -5"),
    ("programs.agent", ["--turns", "q", "  "], "turn 2: the question is empty"),
    ("programs.agent", ["--turns", "q", "--zoomr", "zoom_budget=-1"], "'zoomr_zoom_budget' must be positive"),
    ("programs.agent", ["--turns", "q", "--url", "UNREACHABLE"], "cannot reach the server"),
]


def test_command_line_bad_input_is_one_line_and_exit_2():
    dead = f"http://127.0.0.1:{free_port()}"
    with ThreadPoolExecutor(4) as ex:
        runs = list(ex.map(lambda c: _cli(c[0], *[dead if a == "UNREACHABLE" else a for a in c[1]]), BAD))
    for (module, args, needle), run in zip(BAD, runs):
        assert run.returncode == 2, (module, args, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and lines[0].startswith(f"python -m {module}: error:"), \
            (args, run.stderr)
        assert run.stdout == ""
