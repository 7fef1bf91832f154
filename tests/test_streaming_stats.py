"""``meta_info.zoomr`` reaches a client however SGLang streams: with ``--incremental-streaming-output`` SGLang slices
each request's per-token info by token offset, so the stats must come one entry per token (they used to vanish)."""

from __future__ import annotations

import json

import pytest
import requests

from tests.server_process import ServerProcess
from tests.test_zoomr_serving import ENGINE, QUESTION

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def incremental_server():
    server = ServerProcess.start(["--enable-zoomr", "--incremental-streaming-output"])
    yield server
    assert not server.stop()


def test_every_streamed_chunk_carries_the_latest_stats(incremental_server):
    s = incremental_server
    payload = {"text": QUESTION, "stream": True, "sampling_params": {
        "max_new_tokens": 120, "temperature": 0, "ignore_eos": True, "custom_params": ENGINE}}
    chunks = []
    with requests.post(s.url + "/generate", json=payload, stream=True, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith(b"data:") and line.strip() != b"data: [DONE]":
                chunks.append(json.loads(line[5:]))
    assert len(chunks) > 10
    # The prefill's token is streamed before the scheduler's manager admits the request (it does so after the prefill
    # result is processed): the first chunk has no stats yet; every later one has the latest.
    stats = [c["meta_info"].get("zoomr") for c in chunks[1:]]
    assert all(isinstance(z, dict) for z in stats), [type(z).__name__ for z in stats][:20]
    assert stats[-1]["full_kv_tokens"] > stats[0]["full_kv_tokens"] and stats[-1]["thoughts"] > 0
    assert sum(len(c["output_ids"]) for c in chunks) == 120  # incremental: each chunk brings its own tokens
