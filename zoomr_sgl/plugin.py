"""The SGLang plugin entry point (group ``sglang.srt.plugins``, name ``zoomr``).

Contract: SGLang calls ``register()`` once per process (the launcher, every scheduler process, ``Engine``); it may
be called again and must then do nothing. It is inert unless ``ZOOMR_SGL_CONFIG`` is set in the environment (the
launcher sets it for ``--enable-zoomr``; child processes inherit it), so without ZoomR SGLang behaves as stock.
When enabled it validates the config, says so on stderr with the process id and role, and registers the hooks
listed in ``zoomr_sgl.hooks``. A config that does not validate stops the process with the message.

For a server that seems stuck: ``kill -USR2 PID`` of a ZoomR process (e.g. ``pgrep -f '^sglang::scheduler'``)
prints every thread's Python stack to its stderr (``faulthandler``) and the process goes on.
"""

from __future__ import annotations

import faulthandler
import logging
import multiprocessing
import os
import signal
import sys

from zoomr_sgl.config import ZoomRConfig

logger = logging.getLogger("zoomr_sgl")
_registered_config: ZoomRConfig | None = None


def _plugin_logger() -> logging.Logger:
    # SGLang loads plugins before it configures logging, so this logger brings its own handler.
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s zoomr] %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def process_role() -> str:
    """'main' in the process that started SGLang (HTTP server or Engine), 'worker' in its spawned children."""
    return "main" if multiprocessing.parent_process() is None else "worker"


def active_config() -> ZoomRConfig | None:
    """The config this process registered with, or None where ZoomR is not enabled."""
    return _registered_config


def register() -> None:
    global _registered_config
    if _registered_config is not None:
        return
    config = ZoomRConfig.from_env()
    if config is None:
        return
    from zoomr_sgl import hooks

    _registered_config = config
    role = process_role()
    hooks.install(config, role)
    faulthandler.register(signal.SIGUSR2, file=sys.stderr, all_threads=True, chain=False)
    _plugin_logger().info(
        "ZoomR plugin active (pid %d, %s process): policy=%s zoom_budget=%d zoom_topk=%d summary_mode=%s",
        os.getpid(), role, config.policy, config.zoom_budget, config.zoom_topk, config.summary_mode,
    )
