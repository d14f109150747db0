"""`python -m web`: serve the app with uvicorn on WEB_HOST:WEB_PORT. Exits with status 2 and one line naming the fix
when it cannot start (a setting, the port, DATA_DIR, another web on the same DATA_DIR)."""
from __future__ import annotations

import errno
import gc
import signal
import socket
import sys

import uvicorn

from services import access_token, config, instance, logs
from services.config import StartupError
from web.app import create_app

SHUTDOWN_GRACE_S = 2  # open WebSockets get this long before uvicorn closes them; honcho kills at 5 s
# No permessage-deflate: on loopback it saves bytes nobody pays for and costs ~35 µs of CPU per frame per tab.


def listen(host: str, port: int) -> socket.socket:
    """Bind the page's port here rather than in uvicorn, so a port in use is one clear line, not a traceback."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        # "::" means every address, as it does to services/access_token.py, whose link may name an IPv4 one; a
        # plain IPv6 socket would be IPv6-only (create_server sets IPV6_V6ONLY).
        dualstack = host == "::" and socket.has_dualstack_ipv6()
        sock = socket.create_server((host, port), family=family, reuse_port=False, dualstack_ipv6=dualstack)
        # Each connection accepted from it inherits this. uvloop sets it on every connection, but asyncio's own
        # loop (where uvloop is not installed) only on sockets made for IPPROTO_TCP by name, which create_server's
        # are not: a response's body then waited for the ACK of its headers, which the client delays up to 40 ms
        # (Nagle's algorithm), and a todo POST took ~45 ms instead of ~7.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    except socket.gaierror as error:
        raise StartupError(f"WEB_HOST={host!r} is not an address of this machine ({error.strerror})") from None
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise StartupError(f"port {port} on {host} is already in use (another copy of the app, or another "
                               "program): set WEB_PORT to a free port") from None
        raise StartupError(f"cannot listen on {host}:{port}: {error.strerror}") from None


def access_link(settings: config.Settings) -> str | None:
    """The link with the access token when WEB_HOST is not loopback (the token is made on first use)."""
    if not access_token.required(settings):
        return None
    return access_token.public_url(settings, access_token.read_or_create(access_token.path(settings)))


def main(argv: list[str] | None = None) -> int:
    log = logs.setup("web")
    try:
        settings = config.load()
        logs.setup("web", settings.log_level)
        with instance.hold_lock(settings, "web"):
            link = access_link(settings)
            app = create_app(settings)
            sock = listen(settings.web_host, settings.web_port)
            if link:  # once per start, as Jupyter does: the link a phone opens to get its session cookie
                log.info("listening beyond loopback, so other devices need the access token: open %s", link)
            # What start-up made (modules, the app, its templates) lives as long as the process: out of the
            # collector's way, so its full collections do not walk it between two tokens.
            gc.freeze()
            return serve(app, sock)
    except StartupError as error:
        log.error("%s", error)
        return 2


def serve(app, sock: socket.socket) -> int:
    server = uvicorn.Server(uvicorn.Config(
        app, log_config=None, timeout_graceful_shutdown=SHUTDOWN_GRACE_S, ws_max_size=64 * 1024,
        ws_per_message_deflate=False,
        # The peer address is the socket's own: uvicorn would otherwise take X-Forwarded-For from a loopback peer,
        # and web/auth.py lets loopback in by that address.
        proxy_headers=False))
    signal.signal(signal.SIGHUP, server.handle_exit)  # the terminal was closed: end like on SIGTERM
    server.run(sockets=[sock])
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
