"""Shared fixtures: real SGLang servers started through launch.py on the embedded model (one per session and
configuration), and a session-end check that no server process outlives the tests."""

from __future__ import annotations

import os

import pytest

from tests.server_process import ServerProcess

ZOOMR_ARGS = ["--enable-zoomr", "--zoomr-zoom-budget", "512", "--zoomr-zoom-topk", "3", "--enable-metrics"]
# Debug checks on every ZoomR test server: the host hole counts are compared with the device at each plan, freed
# slots are filled with NaN (zoomr_sgl.poison), the step probe counts each decode step's device reads, and with TP the
# ranks compare their zoom decisions and free slots (zoomr_sgl.tp_consensus).
ZOOMR_ENV = {"ZOOMR_SGL_STEP_PROBE": "1", "ZOOMR_SGL_CHECK_HOLES": "1", "ZOOMR_SGL_POISON_FREED": "1",
             "ZOOMR_SGL_CHECK_TP": "1"}
_started: list[ServerProcess] = []


def _serve(args: list[str], env: dict[str, str] | None = None):
    server = ServerProcess.start(args, env=env)
    _started.append(server)
    yield server
    survivors = server.stop()
    assert not survivors, f"server processes still running after stop: {[p.pid for p in survivors]}"


def _serve_or_attach(url_var: str, args: list[str], env: dict[str, str] | None = None):
    """``$url_var`` set: the server already running there (started with ``args`` by the GPU run script)."""
    url = os.environ.get(url_var)
    if url:
        yield ServerProcess.attach(url)
    else:
        yield from _serve(args, env)


@pytest.fixture(scope="session")
def zoomr_server():
    yield from _serve_or_attach("ZOOMR_TEST_ZOOMR_URL", ZOOMR_ARGS, ZOOMR_ENV)


@pytest.fixture(scope="session")
def overlap_server():
    """ZoomR with SGLang's overlap scheduler on: the next forward is launched before a step's results are processed
    (on CPU the forwards themselves run one after the other, so this checks ZoomR's ordering, not device races)."""
    yield from _serve_or_attach("ZOOMR_TEST_OVERLAP_URL", ZOOMR_ARGS + ["--enable-overlap-schedule"], ZOOMR_ENV)


@pytest.fixture(params=["plain", "overlap"])
def any_zoomr_server(request):
    """Each ZoomR server in turn: without and with the overlap scheduler."""
    return request.getfixturevalue("zoomr_server" if request.param == "plain" else "overlap_server")


@pytest.fixture(scope="session")
def stock_server():
    """Stock SGLang (launch.py without ZoomR), with its metrics on: the capacity yardstick reads the scheduler from
    ``/metrics``; nothing else a test compares depends on them."""
    yield from _serve_or_attach("ZOOMR_TEST_STOCK_URL", ["--enable-metrics"])


def pytest_sessionfinish(session, exitstatus):
    # Fixtures normally stopped them already; this covers an interrupted session. Only this session's servers
    # count: another pytest (a child run, a developer's) may have its own.
    left = [p for server in _started for p in server.stop()]
    if left:
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(
            f"ERROR: server processes left running: {[p.pid for p in left]}", red=True
        )
        session.exitstatus = 1
