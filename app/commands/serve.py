"""``ibrnet serve``: the HTTP service under uvicorn (uvloop and httptools when installed)."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import resource

import uvicorn

from app.api.protocol import GuardedHttpToolsProtocol
from app.settings import get_settings

# Command-line flags override the environment: they are written into it, so that every uvicorn
# worker process (which builds its own app through the factory) sees the same settings.
_FLAG_TO_ENV = {"models": "IBRNET_MODELS_DIR", "database_url": "IBRNET_DATABASE_URL"}


def run(args: argparse.Namespace) -> int:
    for flag, variable in _FLAG_TO_ENV.items():
        value = getattr(args, flag, None)
        if value:
            os.environ[variable] = str(value)
    get_settings.cache_clear()
    get_settings()  # refuse bad settings here, with a clear message, not in each worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    _raise_open_files_limit(settings.max_connections)
    has_httptools = importlib.util.find_spec("httptools") is not None
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=max(1, getattr(args, "workers", 1)),
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        # The limits of app/api/protocol.py; without httptools, h11 with its header size limit.
        http=GuardedHttpToolsProtocol if has_httptools else "h11",
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        # Per-request access lines cost more than the request itself at thousands of requests
        # per second; /metrics counts requests by route and status instead.
        access_log=False,
        log_level="info",
    )
    return 0


def _raise_open_files_limit(connections: int) -> None:
    """Room for IBRNET_MAX_CONNECTIONS sockets plus the models', database's and logs' files: the
    soft limit (often 1,024) up to the hard one, which only root could raise further."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = connections + 256
        if soft != resource.RLIM_INFINITY and soft < wanted:
            new_soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
    except (ValueError, OSError) as error:
        logging.getLogger(__name__).warning("cannot raise the open-files limit: %s", error)
