"""Per-request ZoomR settings as a client sends them: flat ``zoomr_*`` keys in ``sampling_params.custom_params``.

Contract: ``check_custom_params(config, custom_params)`` returns the request's effective ``ZoomRConfig`` (or None
when the request opts out with ``zoomr_enable: false``) and raises ``ZoomRConfigError`` (a ``ValueError``, which
SGLang answers with HTTP 400) with a one-line message naming the key for anything it cannot accept: an unknown
``zoomr_`` key, a wrong type, an invalid value or a server-wide setting.
Keys without the ``zoomr_`` prefix belong to others and are ignored. ``check_scoring_layers`` checks the request's
scoring layers against the model's layer count and the server's own (the only ones served). ``request_config(config,
custom_params, num_layers)`` is both, what the HTTP process and the scheduler check (keys SGLang adds, ``__req__``,
are skipped).
"""

from __future__ import annotations

from typing import Any, Mapping

from zoomr_sgl.config import ZoomRConfig, ZoomRConfigError, request_enables_zoomr


def check_scoring_layers(server: ZoomRConfig, request: ZoomRConfig, num_layers: int) -> tuple[int, ...]:
    """The request's scoring layers, which must lie in the model and, for now, be the server's: the attention backend
    captures queries at the server's layers only (on CUDA into buffers recorded in its decode graphs)."""
    layers = request.scoring_layer_ids(num_layers)
    served = server.scoring_layer_ids(num_layers)
    if layers != served:
        raise ZoomRConfigError(f"custom_params key 'zoomr_scoring_layers' must name this server's scoring layers "
                               f"{','.join(map(str, served))} (other layers per request are not served yet)")
    return layers


def check_custom_params(config: ZoomRConfig, custom_params: Mapping[str, Any] | None) -> ZoomRConfig | None:
    if custom_params is not None and not isinstance(custom_params, Mapping):
        raise ZoomRConfigError("custom_params must be a JSON object")
    if not request_enables_zoomr(custom_params):
        return None
    return config.with_request_overrides(custom_params)


def request_config(config: ZoomRConfig, custom_params: Mapping[str, Any] | None, num_layers: int) -> ZoomRConfig | None:
    if isinstance(custom_params, Mapping) and "__req__" in custom_params:
        custom_params = {k: v for k, v in custom_params.items() if k != "__req__"}
    effective = check_custom_params(config, custom_params)
    if effective is not None:
        check_scoring_layers(config, effective, num_layers)
    return effective
