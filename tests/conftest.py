"""Shared fixtures: real SGLang servers started through launch.py on the embedded model (one per session and
configuration), and a session-end check that no server process outlives the tests."""

from __future__ import annotations

import psutil
import pytest

from tests.server_process import REPO, ServerProcess

ZOOMR_ARGS = ["--enable-zoomr", "--zoomr-zoom-budget", "512", "--zoomr-zoom-topk", "3", "--enable-metrics"]
_started: list[ServerProcess] = []


def _serve(args: list[str]):
    server = ServerProcess.start(args)
    _started.append(server)
    yield server
    survivors = server.stop()
    assert not survivors, f"server processes still running after stop: {[p.pid for p in survivors]}"


@pytest.fixture(scope="session")
def zoomr_server():
    yield from _serve(ZOOMR_ARGS)


@pytest.fixture(scope="session")
def stock_server():
    yield from _serve([])


def _leftover_servers() -> list[psutil.Process]:
    launcher = str(REPO / "launch.py")
    left = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if launcher in (p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p)
        except psutil.Error:
            continue
    return left


def pytest_sessionfinish(session, exitstatus):
    for server in _started:  # fixtures normally did this already; this covers an interrupted session
        server.stop()
    left = _leftover_servers()
    if left:
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(
            f"ERROR: server processes left running: {[p.pid for p in left]}", red=True
        )
        session.exitstatus = 1
