"""A small HTTP client for a (ZoomR) SGLang server, over ``requests``.

``ZoomRClient(url, zoomr_params=None)`` checks that the server answers (``ServerUnreachable`` otherwise), reads its
ZoomR config from ``/zoomr/config`` (defaults when the server has none) and checks ``zoomr_params`` against it
(``InvalidInput``). ``generate(text, ...)`` posts one ``/generate`` request with those settings in
``sampling_params.custom_params`` and a request id (``rid``), and returns a ``Completion`` (text, meta_info, rid);
an error answer becomes ``ServerRequestError`` with the server's message. Greedy (temperature 0) unless told.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import requests

from programs.errors import ServerRequestError, ServerUnreachable, server_error_message
from programs.settings import config_from_server, program_custom_params
from zoomr_sgl.config import ZoomRConfig


def _base(url: str) -> str:
    if not isinstance(url, str) or not url.strip():
        raise ServerUnreachable("no server URL given")
    url = url.strip().rstrip("/")
    return url if "://" in url else "http://" + url


def get_json(url: str, path: str, timeout: float = 10) -> tuple[int, Any]:
    """GET ``url + path``: (status, JSON body or text). Connection failures become ``ServerUnreachable``."""
    try:
        r = requests.get(url + path, timeout=timeout)
    except requests.RequestException as e:
        raise ServerUnreachable(f"cannot reach the server at {url}: {type(e).__name__}") from None
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, r.text


def server_zoomr_config(url: str) -> ZoomRConfig | None:
    """The ZoomR config the server reports, or None when it serves without ZoomR (no ``/zoomr/config``)."""
    status, body = get_json(url, "/zoomr/config")
    return config_from_server(body) if status == 200 else None


def check_server(url: str) -> str:
    """The normalized base URL of a server that answers ``/get_model_info``; ``ServerUnreachable`` otherwise."""
    url = _base(url)
    status, body = get_json(url, "/get_model_info")
    if status != 200 or not isinstance(body, dict) or "model_path" not in body:
        raise ServerUnreachable(f"no SGLang server at {url} (GET /get_model_info answered {status})")
    return url


class RequestIds:
    """Request ids ``{prefix}-{run}-{n}``: unique per process run, readable in server logs."""

    def __init__(self, prefix: str):
        self.prefix = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self._n = itertools.count()

    def next(self) -> str:
        return f"{self.prefix}-{next(self._n)}"


@dataclass
class Completion:
    text: str
    meta_info: dict
    rid: str
    prompt: str = field(repr=False, default="")

    @property
    def zoomr(self) -> dict:
        return self.meta_info.get("zoomr") or {}

    @property
    def cached_tokens(self) -> int:
        return int(self.meta_info.get("cached_tokens") or 0)


class ZoomRClient:
    def __init__(self, url: str, zoomr_params: Mapping[str, Any] | None = None, timeout: float = 600,
                 rid_prefix: str = "zoomr-agent"):
        program_custom_params(zoomr_params)  # a bad setting fails before any connection
        self.url = check_server(url)
        self.timeout = timeout
        self.server_config = server_zoomr_config(self.url)
        self.custom_params = program_custom_params(zoomr_params, self.server_config)
        self.rids = RequestIds(rid_prefix)
        self.history: list[Completion] = []

    @property
    def zoomr_enabled(self) -> bool:
        return self.server_config is not None

    def generate(self, text: str, *, max_new_tokens: int, stop: Sequence[str] = (), temperature: float = 0.0,
                 extra_custom_params: Mapping[str, Any] | None = None, rid: str | None = None,
                 ignore_eos: bool = False) -> Completion:
        custom = {**self.custom_params, **program_custom_params(extra_custom_params, self.server_config)} \
            if extra_custom_params else dict(self.custom_params)
        rid = rid or self.rids.next()
        payload = {
            "text": text, "rid": rid,
            "sampling_params": {"max_new_tokens": max_new_tokens, "stop": list(stop), "temperature": temperature,
                                "ignore_eos": ignore_eos, "custom_params": custom},
        }
        try:
            r = requests.post(self.url + "/generate", json=payload, timeout=self.timeout)
        except requests.RequestException as e:
            raise ServerUnreachable(f"lost the server at {self.url}: {type(e).__name__}") from None
        try:
            body = r.json()
        except ValueError:
            body = r.text
        if r.status_code != 200 or not isinstance(body, dict) or "text" not in body:
            raise ServerRequestError(f"the server refused request {rid} (HTTP {r.status_code}): "
                                     f"{server_error_message(body)}", r.status_code)
        done = Completion(body["text"], body.get("meta_info") or {}, rid, prompt=text)
        self.history.append(done)
        return done
