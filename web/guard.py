"""Refuses requests a page on another site could make through the browser: a Host that is not ours (DNS rebinding)
gets 400; a WebSocket upgrade or a state-changing request whose Origin is another site (cross-site WebSocket
hijacking, CSRF) gets 403. Requests without an Origin (curl, scripts) are not from a browser page and pass."""
from __future__ import annotations

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def allowed_hosts(names: list[str], port: int) -> set[str]:
    """Each name with our port, as a browser sends Host; bare names only when the port is 80, which Host omits."""
    return {f"{name}:{port}" for name in names} | (set(names) if port == 80 else set())


class Guard:
    def __init__(self, app: ASGIApp, hosts: set[str]) -> None:
        self.app = app
        self.hosts = hosts
        self.origins = {f"http://{host}" for host in hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
            refusal = self._refusal(scope, headers)
            if refusal is not None:
                # For a WebSocket this is an HTTP denial before the upgrade (ASGI websocket.http.response).
                await PlainTextResponse(refusal[1], status_code=refusal[0])(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        if headers.get("host", "").lower() not in self.hosts:
            return 400, "Unknown Host header: open the app at the address it was started on."
        changes_state = scope["type"] == "websocket" or scope.get("method", "GET") not in SAFE_METHODS
        origin = headers.get("origin")
        if changes_state and origin is not None and origin.lower() not in self.origins:
            return 403, "Cross-origin request refused."
        return None
