"""Container health check: exit 0 when GET /health answers 200, 1 otherwise.

Slim images have no curl or wget; the interpreter is already there. Used by the Dockerfile's
HEALTHCHECK and by docker-compose.yml.

    python healthcheck.py [URL]      # default: $IBRNET_HEALTHCHECK_URL or http://127.0.0.1:8000/health
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8000/health"
# Below Docker's --timeout so that a hung server reports "unhealthy" rather than a killed probe.
TIMEOUT_S = 4.0


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return response.status == 200
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        print(f"healthcheck: {url}: {error}", file=sys.stderr)
        return False


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    url = args[0] if args else os.environ.get("IBRNET_HEALTHCHECK_URL", DEFAULT_URL)
    return 0 if healthy(url) else 1


if __name__ == "__main__":
    sys.exit(main())
