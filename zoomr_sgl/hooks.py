"""Every place where zoomr-sgl attaches to SGLang 0.5.17, in one module, so a reader can list them.

Contract: ``install(config, role)`` registers hooks with SGLang's ``HookRegistry`` (applied by ``load_plugins``
right after the plugin runs) and is called once per process by ``zoomr_sgl.plugin.register``. Nothing here edits
SGLang's files. Each hook names its target and says why it is the narrowest one.

Hooks now:
- ``Scheduler.get_internal_state`` (AFTER, scheduler processes): adds ``zoomr`` (active flag, pid, config) to the
  scheduler's internal state, which ``/server_info`` returns under ``internal_states``; this is how a client sees
  that the plugin runs inside the scheduler, not only in the HTTP process.
- ``http_server.launch_server`` (BEFORE, main process): adds ``GET /zoomr/config`` to SGLang's FastAPI app
  before it starts serving.
"""

from __future__ import annotations

import os

from zoomr_sgl.config import ZoomRConfig

SCHEDULER_STATE = "sglang.srt.managers.scheduler.Scheduler.get_internal_state"
HTTP_LAUNCH = "sglang.srt.entrypoints.http_server.launch_server"
CONFIG_ROUTE = "/zoomr/config"


def zoomr_state(config: ZoomRConfig) -> dict:
    """What a process reports about ZoomR: enough for a client to tell where it runs and with which settings."""
    return {"active": True, "pid": os.getpid(), "config": config.to_dict()}


def install(config: ZoomRConfig, role: str) -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    def report_state(result, *args, **kwargs):  # result: GetInternalStateReqOutput
        result.internal_state["zoomr"] = zoomr_state(config)
        return result

    if role == "worker":
        HookRegistry.register(SCHEDULER_STATE, report_state, HookType.AFTER)
    else:
        def add_routes(*args, **kwargs):
            from sglang.srt.entrypoints.http_server import app

            if not any(getattr(r, "path", None) == CONFIG_ROUTE for r in app.routes):
                app.add_api_route(CONFIG_ROUTE, lambda: zoomr_state(config), methods=["GET"])
            return None

        HookRegistry.register(HTTP_LAUNCH, add_routes, HookType.BEFORE)
