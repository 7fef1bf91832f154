"""A real SGLang server started through ``launch.py`` for end-to-end tests, and stopped without leftovers.

Contract: ``ServerProcess.start(args)`` runs ``python launch.py ARGS --host 127.0.0.1 --port P`` in its own
process group (``$ZOOMR_TEST_SERVER_ARGS`` appended), waits until ``/health`` answers 200 and a first ``/generate`` succeeds, and raises with the log's
tail if the server dies or takes longer than ``timeout``. A free port another process binds first (the pick and the
server's bind race) is retried on a new port, ``PORT_TRIES`` times in all. ``stop()`` ends the whole group (SIGTERM, then SIGKILL)
and returns the processes that survived, which callers assert to be none. Without ``--model-path`` the server
serves the bigram model (``ZOOMR_SGL_DEFAULT_MODEL=bigram`` unless ``env`` or the caller's environment says
otherwise; ``zoomr_sgl.default_model``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests

REPO = Path(__file__).resolve().parents[1]
EXTRA_ARGS_VAR = "ZOOMR_TEST_SERVER_ARGS"  # appended to every test server's flags (the GPU run trims graph capture)
TIMEOUT_VAR = "ZOOMR_TEST_SERVER_TIMEOUT"  # seconds to ready (default 240; the GPU's first start compiles kernels)


PORT_IN_USE = "address already in use"  # uvicorn's bind error; the server then hangs in its shutdown
PORT_TRIES = 3


class PortTaken(RuntimeError):
    """The port ``free_port`` picked was bound by another process before the server could bind it."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, args: list[str], env: dict[str, str] | None = None):
        self.args = list(args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="zoomr-server-", suffix=".log", delete=False)
        self.env = {k: v for k, v in os.environ.items() if k != "ZOOMR_SGL_CONFIG"}
        self.env.setdefault("ZOOMR_SGL_DEFAULT_MODEL", "bigram")  # the suite's exactness tests were tuned on it
        self.env.update(env or {})
        self.proc: subprocess.Popen | None = None
        self.ready_seconds: float | None = None

    @classmethod
    def start(cls, args: list[str], timeout: float | None = None, env: dict[str, str] | None = None) -> "ServerProcess":
        timeout = timeout if timeout is not None else float(os.environ.get(TIMEOUT_VAR, 240))
        for attempt in range(PORT_TRIES):
            server = cls(args + os.environ.get(EXTRA_ARGS_VAR, "").split(), env)
            t0 = time.monotonic()
            server.proc = subprocess.Popen(
                [sys.executable, str(REPO / "launch.py"), *server.args, "--host", "127.0.0.1", "--port",
                 str(server.port)],
                cwd=REPO, env=server.env, stdout=server.log, stderr=subprocess.STDOUT, start_new_session=True,
            )
            try:
                server._wait_ready(t0 + timeout)
            except PortTaken:
                server.stop()  # another process took the free port between our pick and the server's bind
                if attempt + 1 == PORT_TRIES:
                    raise
                continue
            except BaseException:
                server.stop()
                raise
            server.ready_seconds = time.monotonic() - t0
            return server
        raise AssertionError("unreachable")

    @classmethod
    def attach(cls, url: str) -> "ServerProcess":
        """A server started elsewhere (e.g. by the GPU run script): requests only; ``stop()`` leaves it running."""
        server = cls([])
        server.url = url.rstrip("/")
        return server

    def _wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if PORT_IN_USE in self.log_tail(5):
                raise PortTaken(f"port {self.port} was taken before the server bound it:\n{self.log_tail()}")
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/health", timeout=5).status_code == 200:
                    probe = {"text": "ready?", "sampling_params": {"max_new_tokens": 1, "temperature": 0}}
                    if requests.post(self.url + "/generate", json=probe, timeout=60).status_code == 200:
                        return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not ready in time:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        self.log.flush()
        return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-lines:])

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def group_processes(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        found = []
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) == self.proc.pid and p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
            except (psutil.Error, ProcessLookupError):
                continue
        return found

    def stop(self, grace: float = 20) -> list[psutil.Process]:
        """End the server's whole process group; returns the processes still alive afterwards."""
        if self.proc is None:
            return []
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self.group_processes():
                try:
                    self.proc.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass
            if not self.group_processes():
                break
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        return self.group_processes()

    # ------------------------------------------------------------------ requests
    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, timeout=kw.pop("timeout", 60), **kw)

    def post(self, path: str, payload: dict, **kw) -> requests.Response:
        return requests.post(self.url + path, json=payload, timeout=kw.pop("timeout", 300), **kw)

    def flush_cache(self, timeout: float = 30) -> None:
        """Flush the radix tree. SGLang refuses while a request is still in the running batch (a finished one stays
        there until the scheduler's next iteration), so it is asked to wait for idle."""
        r = self.post(f"/flush_cache?timeout={timeout}", {}, timeout=timeout + 30)
        assert r.status_code == 200, r.text

    def generate(self, text: str, **sampling) -> dict:
        params = {"temperature": 0, **sampling}
        r = self.post("/generate", {"text": text, "sampling_params": params})
        r.raise_for_status()
        return r.json()
