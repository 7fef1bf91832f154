"""The soak benchmark, small: mixed requests with aborts, cut streams, client timeouts, forced retractions, a small
pool and a host store that must drop; afterwards no slot or host block is leaked, every request that ran to its end
has its exact token count, and the server is healthy (``benchmarks/soak.py``; the full-size run is committed under
``benchmarks/results/soak.md``)."""

from __future__ import annotations

import json

import pytest

from benchmarks import soak

pytestmark = pytest.mark.server


def test_small_soak_leaves_nothing_behind(tmp_path):
    # a store of 256 tokens is less than one long request's detail, so its fallback runs whatever the interleaving
    # (1,024, the benchmark's default for 1,000 requests, held 60 of them in one CI run without a drop)
    status = soak.main(["--requests", "60", "--concurrency", "16", "--host-store-tokens", "256",
                        "--out", str(tmp_path)])
    result = json.loads((tmp_path / "soak.json").read_text())
    assert status == 0, result["checks"]
    assert all(result["checks"].values()) and len(result["checks"]) == 7
    outcomes = {r["outcome"] for r in result["results"]}
    assert {"completed", "aborted", "cut"} <= outcomes, outcomes
    assert result["retractions"] > 0 and result["end"]["totals"]["recalls"] > 0
    assert result["end"]["host_store"]["dropped_tokens"] > 0  # the host store's fallback ran
    assert (tmp_path / "soak.md").read_text().count("| pass |") == 7
