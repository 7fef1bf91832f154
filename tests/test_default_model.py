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
