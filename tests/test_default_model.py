"""Which model launch.py serves without --model-path (zoomr_sgl.default_model), and its one-line refusals."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.server_process import REPO
from zoomr_sgl import default_model as dm


def test_the_committed_reasoner_is_the_default(monkeypatch):
    monkeypatch.delenv(dm.ENV_VAR, raising=False)
    assert dm.reasoner_present(), f"{dm.REASONER} should hold the trained reasoner"
    assert dm.choice() == "reasoner" and dm.default_model_dir() == dm.REASONER


def test_bigram_on_request(monkeypatch):
    monkeypatch.setenv(dm.ENV_VAR, "bigram")
    assert dm.choice() == "bigram"
    assert dm.default_model_dir().name == "zoomr-tiny"


def test_reasoner_asked_for_but_missing(monkeypatch, tmp_path):
    monkeypatch.setenv(dm.ENV_VAR, "reasoner")
    monkeypatch.setattr(dm, "REASONER", tmp_path / "nothing")
    with pytest.raises(dm.DefaultModelError, match="holds no trained model"):
        dm.choice()


def test_bad_choice_is_one_line_and_status_2():
    env = {"PATH": "/usr/bin:/bin", dm.ENV_VAR: "gpt"}
    r = subprocess.run([sys.executable, str(REPO / "launch.py"), "--enable-zoomr"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-1000:]
    assert r.stderr.strip().splitlines()[-1].startswith("launch.py: error: ZOOMR_SGL_DEFAULT_MODEL must be one of")


def test_reasoner_flags_add_what_the_user_did_not_give():
    from zoomr_sgl.launcher import reasoner_flags

    assert reasoner_flags([]) == ["--zoomr-summary-mode", "trained", "--zoomr-zoom-topk", "1",
                                     "--no-zoomr-zoom-retain", "--zoomr-zoom-budget", "256", "--zoomr-zoom-interval", "4"]
    mine = ["--zoomr-zoom-topk=3", "--zoomr-zoom-retain", "--zoomr-summary-mode", "engine"]
    assert reasoner_flags(mine) == ["--zoomr-zoom-budget", "256", "--zoomr-zoom-interval", "4"]
    assert "--no-zoomr-zoom-retain" not in reasoner_flags(["--no-zoomr-zoom-retain"])


def test_the_reasoner_flags_reach_zoomrs_config_and_the_users_win():
    """What the server would run with (the served path: tests/test_accuracy_bench.py reads the plugin's line)."""
    from zoomr_sgl import launcher

    argv = ["--enable-zoomr"] + launcher.reasoner_flags(["--enable-zoomr", "--zoomr-zoom-budget", "512"]) + [
        "--zoomr-zoom-budget", "512"]
    plan = launcher.plan_launch(argv, cuda_available=False, default_model=str(dm.REASONER))
    cfg = plan.zoomr
    assert (cfg.summary_mode, cfg.zoom_topk, cfg.zoom_retain, cfg.zoom_budget, cfg.zoom_interval) == (
        "trained", 1, False, 512, 4)
