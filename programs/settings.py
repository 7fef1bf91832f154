"""Per-request ZoomR settings as the programs send them: flat ``zoomr_*`` keys in ``sampling_params.custom_params``.

``program_custom_params(params, server_config)`` returns the keys to send, with ``zoomr_summary_mode: "program"``
unless the caller chose otherwise, after checking them with the same code the server runs
(``zoomr_sgl.request_params.check_custom_params``) so that a bad value fails here with a one-line ``InvalidInput``
before anything is sent. ``server_config`` is what the server reports at ``/zoomr/config`` (the defaults when it
reports nothing, for example a server without ZoomR).
"""

from __future__ import annotations

from typing import Any, Mapping

from programs.errors import InvalidInput
from zoomr_sgl.config import ZoomRConfig, ZoomRConfigError
from zoomr_sgl.request_params import check_custom_params

PROGRAM_MODE = {"zoomr_summary_mode": "program"}


def config_from_server(data: Mapping[str, Any] | None) -> ZoomRConfig:
    """The server's ZoomR config from its ``/zoomr/config`` answer; defaults if it is missing or unreadable."""
    if isinstance(data, Mapping) and isinstance(data.get("config"), Mapping):
        data = data["config"]
    if not isinstance(data, Mapping):
        return ZoomRConfig()
    known = {k: v for k, v in data.items() if k in ZoomRConfig.__dataclass_fields__}
    try:
        return ZoomRConfig.from_dict(known)
    except (ZoomRConfigError, TypeError):
        return ZoomRConfig()


def program_custom_params(params: Mapping[str, Any] | None, server_config: ZoomRConfig | None = None) -> dict:
    params = dict(params or {})
    bad = [k for k in params if not isinstance(k, str) or not k.startswith("zoomr_")]
    if bad:
        raise InvalidInput(f"ZoomR settings must be zoomr_* keys; got {', '.join(map(repr, bad))}")
    merged = {**PROGRAM_MODE, **params}
    try:
        check_custom_params(server_config or ZoomRConfig(), merged)
    except ZoomRConfigError as e:
        raise InvalidInput(str(e)) from None
    return merged
