#!/usr/bin/env python3
"""Accuracy against device KV per policy: greedy pass@1 of a served reasoning model on a problem file.

Problems come from a JSONL file (``--problems``): each line has ``problem`` (the prompt text, sent as is to
``/generate``; ours already carry the chat template, see ``python -m reasoner.tasks``) and ``answer``; optional
``needs_detail`` (the answer needs a value written only in an earlier thought's detail), ``family``, ``kind`` and
``max_new_tokens``. A MATH-500-style file with ``problem`` and ``answer`` works too: ``--template`` wraps each
problem in the user's model's prompt format (``{problem}`` marks where it goes). Answers are compared after
``reasoner.answers.normalise`` (``\\boxed{}`` extracted, else the last ``Answer:`` line).

Per policy of ``--policies`` and budget of ``--budgets`` (``zoomr``: zoom budget in tokens; ``streaming``: recent
window in tokens; ``quest``: pages of ``QUEST_PAGE`` tokens; ``sentencekv``: prompt-sentence tokens recalled at once, with ``MARKER_SHARE``
more zoom buffer for marker thoughts and ``--sink-tokens``/``--recent-tokens`` of the prompt always attended;
``full`` and ``summary_only`` take none), every problem is sent greedy with the
request's ZoomR settings in ``custom_params`` (``--summary-mode``, default ``trained``: the model writes its own
summaries). Recorded per problem: correct, peak device KV (``meta_info.zoomr``),
the mean device KV over its decode steps, full KV, zoom recalls, output tokens. A policy the server refuses (400,
e.g. one it does not serve yet) is recorded as refused with the server's message, not as wrong answers.

Writes ``accuracy.{json,md,png}`` under ``--out`` (``benchmarks/accuracy_report.py``; rewritten after each point,
``partial`` true until the last): accuracy (overall, on the
problems that need an earlier detail, on the others) against peak device KV per policy, ratios to ``full``.
Runs against ``--url`` (one or more servers, comma-separated) or starts ``--servers`` copies of
``launch.py --enable-zoomr --model-path M`` here side by side (their logs are then kept as ``accuracy_server*.log``
under ``--out``). Every point's problems are queued at once, spread round robin over the servers, ``--concurrency``
in flight per server, the points in order: one server's scheduler is one CPU core, so a small model's run scales with
servers sharing the GPU. A progress bar on stderr.
Bad input: one line ``accuracy: error: ...``, status 2. Stopped by SIGTERM (e.g. ``timeout``) or ^C: the report is
written with the problems that had finished (``partial`` true; a cut point counts fewer problems), the servers it
started are stopped, status 1.

    python -m benchmarks.accuracy --problems heldout.jsonl [--url URL | --model-path DIR] [--policies ...]
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import accuracy_report  # noqa: E402
from reasoner import answers  # noqa: E402
from reasoner.cli import OneLineParser  # noqa: E402

BUDGET_KEY = {"zoomr": "zoomr_zoom_budget", "streaming": "zoomr_recent_tokens", "quest": "zoomr_quest_top_pages",
              "sentencekv": "zoomr_sentence_budget", "full": None, "summary_only": None}
MARKER_SHARE = 256  # sentencekv: zoom buffer tokens left to marker thoughts beside the sentence budget
QUEST_PAGE = 16  # quest: tokens per page (the budget counts pages; the zoom buffer holds them all)


class Outcome(NamedTuple):
    correct: bool
    answered: str | None  # what the completion answered (extracted)
    peak_kv: int | None
    mean_kv: float | None
    full_kv: int | None
    recalls: int
    output_tokens: int
    error: str | None
    host_refused: int = 0  # detail left on the device at the end because the server's host store was full
    text: str | None = None  # the completion, kept only when it is wrong (the report's misses file)


def load_problems(path: Path, limit: int | None) -> list[dict]:
    rows = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e})") from None
            if not isinstance(row, dict) or not isinstance(row.get("problem"), str) or "answer" not in row:
                raise ValueError(f"{path}:{n}: a problem needs the string field 'problem' and the field 'answer'")
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise ValueError(f"{path}: no problems")
    return rows


def request_params(policy: str, budget: int | None, args) -> dict:
    params = {"zoomr_policy": policy, "zoomr_summary_mode": args.summary_mode, "zoomr_zoom_topk": args.zoom_topk,
              "zoomr_zoom_interval": args.zoom_interval, "zoomr_zoom_retain": args.zoom_retain == "true"}
    if budget is not None:
        params[BUDGET_KEY[policy]] = budget
    if policy == "sentencekv":  # the prompt's sentences share the one zoom buffer with the marker thoughts
        params.update(zoomr_zoom_budget=budget + MARKER_SHARE, zoomr_sink_tokens=args.sink_tokens,
                      zoomr_recent_tokens=args.recent_tokens)
    if policy == "quest" and budget is not None:
        params.update(zoomr_quest_page_size=QUEST_PAGE, zoomr_zoom_budget=budget * QUEST_PAGE)
    return params


def solve(url: str, row: dict, params: dict, max_new: int, template: str = "{problem}") -> Outcome:
    sampling = {"temperature": 0, "max_new_tokens": int(row.get("max_new_tokens", max_new)), "custom_params": params}
    body = {"text": template.replace("{problem}", row["problem"]), "sampling_params": sampling}
    try:
        r = requests.post(url + "/generate", json=body, timeout=3600)
    except requests.RequestException as e:
        return Outcome(False, None, None, None, None, 0, 0, f"{type(e).__name__}: {e}")
    if r.status_code != 200:
        return Outcome(False, None, None, None, None, 0, 0, f"HTTP {r.status_code}: {r.text[:300]}")
    out = r.json()
    meta, z = out["meta_info"], out["meta_info"].get("zoomr") or {}
    got = answers.extract(out["text"])
    full = meta["prompt_tokens"] + meta["completion_tokens"]
    right = answers.is_correct(out["text"], str(row["answer"]))
    return Outcome(right, got, z.get("peak_device_kv_tokens", full),
                   z.get("mean_device_kv_tokens"), z.get("full_kv_tokens", full), z.get("zoom_recalls", 0),
                   meta["completion_tokens"], None, z.get("host_refused_tokens", 0), None if right else out["text"])


class Point(NamedTuple):
    policy: str
    budget: int | None


def submit_points(urls: list[str], rows: list[dict], points: list[Point], args, pools: list) -> list[list]:
    """Every (point, problem) as a job, spread round robin over the servers (``pools[i]`` sends to ``urls[i]``,
    ``--concurrency`` at a time). Points are submitted in order, so the first point's problems go first on every
    server; returns, per point, its futures in problem order."""
    futures, n = [], 0
    for point in points:
        params = request_params(point.policy, point.budget, args)
        mine = []
        for row in rows:
            i = n % len(urls)
            mine.append(pools[i].submit(solve, urls[i], row, params, args.max_new_tokens, args.template))
            n += 1
        futures.append(mine)
    return futures


def collect_point(point: Point, rows: list[dict], futures: list, args, bar) -> dict:
    """Waits for one point's problems and returns the point as ``accuracy_report.summarise`` takes it."""
    outcomes = []
    for f in futures:
        outcomes.append(f.result())
        bar.update(1)
    return point_result(point, rows, outcomes, args)


def cut_point(point: Point, rows: list[dict], futures: list, args) -> dict:
    """A point of an interrupted run: only its problems that had finished."""
    done = [(row, f.result()) for row, f in zip(rows, futures) if f.done() and not f.cancelled()]
    return point_result(point, [r for r, _ in done], [o for _, o in done], args)


def point_result(point: Point, rows: list[dict], outcomes: list[Outcome], args) -> dict:
    refused = [o.error for o in outcomes if o.error and o.error.startswith("HTTP 400")]
    return {"policy": point.policy, "budget": point.budget, "params": request_params(point.policy, point.budget, args),
            "refused": refused[0] if rows and len(refused) == len(rows) else None,
            "problems": [{**{k: row.get(k) for k in ("seed", "family", "kind", "needs_detail", "answer")},
                          **{k: v for k, v in o._asdict().items() if k != "text"}} for row, o in zip(rows, outcomes)],
            "misses": [{"index": i, "seed": row.get("seed"), "answer": row["answer"], "answered": o.answered,
                        "text": o.text} for i, (row, o) in enumerate(zip(rows, outcomes)) if o.text is not None]}


def parse(argv):
    ap = OneLineParser("accuracy", prog="python -m benchmarks.accuracy", description=__doc__.split("\n")[0])
    ap.add_argument("--problems", type=Path, required=True, help="JSONL: problem, answer[, needs_detail, ...]")
    ap.add_argument("--limit", type=int, default=None, help="only the first N problems")
    ap.add_argument("--url", help="running launch.py --enable-zoomr servers, comma-separated (default: start "
                    "--servers here); problems are spread over them")
    ap.add_argument("--servers", type=int, default=1, help="without --url: how many servers to start side by side")
    ap.add_argument("--model-path", type=Path, default=None, help="the model a started server serves")
    ap.add_argument("--policies", default="full,zoomr,summary_only,streaming,quest")
    ap.add_argument("--budgets", default="128,256,512", help="budgets of the policies that take one")
    ap.add_argument("--template", default="{problem}", help="prompt format; {problem} is replaced by the problem")
    ap.add_argument("--summary-mode", default="trained", choices=("trained", "engine"))
    ap.add_argument("--zoom-topk", type=int, default=1)
    ap.add_argument("--zoom-interval", type=int, default=4)
    ap.add_argument("--zoom-retain", choices=("true", "false"), default="false",
                    help="keep earlier recalls in the zoom buffer (LRU); false: attend only what the last zoom picked")
    ap.add_argument("--sink-tokens", type=int, default=16, help="sentencekv: first prompt tokens always attended")
    ap.add_argument("--recent-tokens", type=int, default=64, help="sentencekv: last prompt tokens always attended")
    ap.add_argument("--max-new-tokens", type=int, default=8192)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("server_args", nargs="*", help="after --: flags for a started server")
    args = ap.parse_args(argv)
    try:
        args.policy_list = [p for p in args.policies.split(",") if p]
        bad = [p for p in args.policy_list if p not in BUDGET_KEY]
        if bad or not args.policy_list:
            raise ValueError(f"unknown policy {','.join(bad) or '(none)'}; expected some of {', '.join(BUDGET_KEY)}")
        args.budget_list = [int(b) for b in args.budgets.split(",") if b]
        for name in ("zoom_topk", "zoom_interval", "max_new_tokens", "concurrency", "servers"):
            if getattr(args, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        if args.sink_tokens < 0 or args.recent_tokens < 0:
            raise ValueError("--sink-tokens and --recent-tokens must be zero or more")
        if any(b <= 0 for b in args.budget_list) or not args.budget_list:
            raise ValueError("--budgets must be positive integers")
        if "{problem}" not in args.template:
            raise ValueError("--template must contain {problem}")
        if args.limit is not None and args.limit <= 0:
            raise ValueError("--limit must be positive")
        if args.model_path is not None and not args.model_path.is_dir():
            raise ValueError(f"--model-path {args.model_path}: no such directory")
        args.urls = [u.strip().rstrip("/") for u in (args.url or "").split(",") if u.strip()]
        if args.url is not None and not args.urls:
            raise ValueError("--url names no server")
        args.rows = load_problems(args.problems, args.limit)
    except (ValueError, OSError) as e:
        ap.error(str(e))
    return args


def _interrupt(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def main(argv=None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # e.g. timeout(1): keep the finished problems, stop the servers
    from tqdm import tqdm

    points = [Point(p, b) for p in args.policy_list for b in ([None] if BUDGET_KEY[p] is None else args.budget_list)]
    servers = []
    try:
        if not args.urls:
            try:
                servers = start_servers(args)
            except (RuntimeError, TimeoutError) as e:  # the server's own last lines say why
                tail = [line for line in str(e).splitlines()[1:] if line.strip()][-1:] or [""]
                print(f"accuracy: error: {str(e).splitlines()[0]} {tail[0].strip()}", file=sys.stderr)
                return 2
            args.urls = [s.url for s in servers]
        t0 = time.time()
        info = requests.get(args.urls[0] + "/server_info", timeout=30).json()
        bar = tqdm(total=len(points) * len(args.rows), desc="accuracy", unit="problem", file=sys.stderr)
        pools = [ThreadPoolExecutor(args.concurrency) for _ in args.urls]
        futures = submit_points(args.urls, args.rows, points, args, pools)
        results = []
        try:
            for point, mine in zip(points, futures):  # the report is rewritten after each point
                results.append(collect_point(point, args.rows, mine, args, bar))
                accuracy_report.write(args.out, _meta(info, args, t0, argv, len(results) < len(points)), results)
        except KeyboardInterrupt:  # SIGTERM (timeout(1)) or ^C: what finished, the unfinished points cut short
            for f in (f for mine in futures for f in mine):
                f.cancel()
            results = [cut_point(point, args.rows, mine, args) for point, mine in zip(points, futures)]
            accuracy_report.write(args.out, _meta(info, args, t0, argv, partial=True), results)
            print(f"accuracy: interrupted; the finished problems are in {args.out / 'accuracy.md'}", file=sys.stderr)
            return 1
        bar.close()
        for pool in pools:
            pool.shutdown()
    except requests.RequestException as e:
        print(f"accuracy: error: cannot reach {','.join(args.urls)}: {e}", file=sys.stderr)
        return 2
    finally:
        stop_servers(servers, args.out)
    print(accuracy_report.write(args.out, _meta(info, args, t0, argv, partial=False), results))
    return 0


def start_servers(args) -> list:
    """``--servers`` servers of ``launch.py --enable-zoomr [--model-path M] SERVER_ARGS``: the first alone (on a bare
    GPU machine it JIT-compiles FlashInfer's kernels into the shared cache: ten started at once on a bare H200 took 4.5
    minutes to be ready, 2026-12-03), then the others side by side."""
    from tests.server_process import ServerProcess

    flags = ["--enable-zoomr"] + (["--model-path", str(args.model_path)] if args.model_path else [])
    print(f"accuracy: starting {args.servers} x launch.py {' '.join(flags + args.server_args)}", file=sys.stderr)
    # without --model-path: launch.py's own default (the trained reasoner), not the test suite's bigram model
    default = {"ZOOMR_SGL_DEFAULT_MODEL": os.environ.get("ZOOMR_SGL_DEFAULT_MODEL", "")}
    servers = [ServerProcess.start(flags + args.server_args, 900, default)]
    with ThreadPoolExecutor(max(1, args.servers - 1)) as pool:
        started = [pool.submit(ServerProcess.start, flags + args.server_args, 900, default)
                   for _ in range(args.servers - 1)]
    servers += [f.result() for f in started if f.exception() is None]
    if len(servers) < 1 + len(started):
        stop_servers(servers, args.out)
        raise next(f.exception() for f in started if f.exception() is not None)
    return servers


def stop_servers(servers: list, out: Path) -> None:
    """Stops what ``start_servers`` started; each server's log is kept beside the report (a server that died says
    why there): ``accuracy_server.log``, or ``accuracy_server_N.log`` for several."""
    for n, server in enumerate(servers):
        out.mkdir(parents=True, exist_ok=True)
        name = "accuracy_server.log" if len(servers) == 1 else f"accuracy_server_{n}.log"
        (out / name).write_text(server.log_text())
        if server.proc is not None and server.proc.poll() is not None:
            print(f"accuracy: a server exited with {server.proc.returncode}; its log: {out / name}", file=sys.stderr)
    if servers:
        with ThreadPoolExecutor(len(servers)) as pool:  # side by side: each may wait out its grace period
            list(pool.map(lambda s: s.stop(), servers))


def _meta(info: dict, args, t0: float, argv, partial: bool) -> dict:
    return {"model": Path(info["model_path"]).name, "device": info.get("device"), "sglang": info.get("version"),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.machine(), "gpu": _gpu_name(info), "problems_file": str(args.problems),
            "problems": len(args.rows), "servers": len(args.urls), "concurrency_per_server": args.concurrency,
            "seconds": round(time.time() - t0, 1),
            "argv": sys.argv[1:] if argv is None else argv, "partial": partial}


def _gpu_name(info: dict) -> str | None:
    if info.get("device") != "cuda":
        return None
    try:
        import torch

        return torch.cuda.get_device_name()
    except Exception:  # noqa: BLE001 - the name is decoration
        return None


if __name__ == "__main__":
    sys.exit(main())
