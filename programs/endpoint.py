"""``ZoomREndpoint``: SGLang's ``RuntimeEndpoint`` that also sends ZoomR per-request settings and request ids.

``RuntimeEndpoint`` builds each ``/generate`` body from the text, the sampling parameters and the logprob fields
only, then calls ``_add_images(s, data)`` on that body right before posting it, in every path that posts one
(``generate``, ``generate_stream``, ``select``, ``commit_lazy_operations`` for ``fork``, ``fill_image``). That is
the narrowest place to add fields, so this class extends it there: after the stock image handling it puts the
checked ``zoomr_*`` settings into ``sampling_params.custom_params`` and a fresh ``rid`` (one per prompt when the
body holds a batch) into the body. Everything else is SGLang's own code.

Also:
- settings are checked locally against the server's ``/zoomr/config`` before anything is sent (``InvalidInput``
  with a one-line message); the default is ``{"zoomr_summary_mode": "program"}``, as the programs write the markers;
- construction fails with ``ServerUnreachable`` (one line) when nothing answers at the URL;
- a refused request raises ``ServerRequestError`` with the server's message (``_assert_success`` override);
- ``requests`` records ``(rid, meta_info)`` of every ``generate`` call, for transcripts and stats.
"""

from __future__ import annotations

import threading
from typing import Any, Mapping

from sglang.lang.backend.runtime_endpoint import RuntimeEndpoint

from programs.client import RequestIds, check_server, server_zoomr_config
from programs.errors import ServerRequestError, server_error_message
from programs.settings import program_custom_params


class ZoomREndpoint(RuntimeEndpoint):
    def __init__(self, base_url: str, zoomr_params: Mapping[str, Any] | None = None,
                 rid_prefix: str = "zoomr-prog", **kwargs):
        program_custom_params(zoomr_params)  # a bad setting fails before any connection
        base_url = check_server(base_url)  # one-line ServerUnreachable instead of urllib's traceback
        self.server_zoomr_config = server_zoomr_config(base_url)
        self.custom_params = program_custom_params(zoomr_params, self.server_zoomr_config)
        self.rids = RequestIds(rid_prefix)
        self.requests: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        super().__init__(base_url, **kwargs)

    # ------------------------------------------------------------------ the extension point
    def _add_images(self, s, data):
        super()._add_images(s, data)
        params = data.setdefault("sampling_params", {})
        params["custom_params"] = {**(params.get("custom_params") or {}), **self.custom_params}
        batch = data.get("text", data.get("input_ids"))
        if isinstance(batch, list) and batch and not isinstance(batch[0], int):
            data["rid"] = [self.rids.next() for _ in batch]
        else:
            data["rid"] = self.rids.next()

    def generate(self, s, sampling_params):
        comp, meta_info = super().generate(s, sampling_params)
        with self._lock:
            self.requests.append((meta_info.get("id"), meta_info))
        return comp, meta_info

    def _assert_success(self, res):
        if res.status_code != 200:
            try:
                body = res.json()
            except ValueError:
                body = res.text
            raise ServerRequestError(
                f"the server refused the request (HTTP {res.status_code}): {server_error_message(body)}",
                res.status_code,
            )
