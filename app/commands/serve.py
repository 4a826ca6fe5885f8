"""``ibrnet serve``: the HTTP service under uvicorn (uvloop and httptools when installed)."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os

import uvicorn

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
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=max(1, getattr(args, "workers", 1)),
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        # Per-request access lines cost more than the request itself at thousands of requests
        # per second; /metrics counts requests by route and status instead.
        access_log=False,
        log_level="info",
    )
    return 0
