"""`python -m web`: serve the app with uvicorn on WEB_HOST:WEB_PORT."""
from __future__ import annotations

import sys

import uvicorn

from services import config, logs
from services.curve import InsecureBindError
from web.app import create_app

SHUTDOWN_GRACE_S = 2  # open WebSockets get this long before uvicorn closes them; honcho kills at 5 s
# No permessage-deflate: on loopback it saves bytes nobody pays for and costs ~35 µs of CPU per frame per tab.


def main(argv: list[str] | None = None) -> int:
    settings = config.load()
    log = logs.setup("web", settings.log_level)
    try:
        app = create_app(settings)
    except InsecureBindError as error:
        log.error("%s", error)
        return 2
    uvicorn.run(app, host=settings.web_host, port=settings.web_port, log_config=None,
                timeout_graceful_shutdown=SHUTDOWN_GRACE_S, ws_max_size=64 * 1024, ws_per_message_deflate=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
