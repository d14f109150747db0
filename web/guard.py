"""The web's perimeter, as ASGI middleware. Refuses what a page on another site could make the browser send: a Host
that is not ours (DNS rebinding) gets 400; a WebSocket upgrade or a state-changing request whose Origin is another
site (cross-site WebSocket hijacking, CSRF) gets 403. Requests without an Origin (curl, scripts) are not from a
browser page and pass. State changes beyond the rate limit get 429 (ChangeLimit, inside the access gate). Every
response carries a Content-Security-Policy that allows only this origin's own scripts, styles and connections: no
inline script, nothing from elsewhere."""
from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services import access_token
from services.config import Settings
from web.auth import AccessGate
from web.ratelimit import TokenBucket

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "font-src 'self'; manifest-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
}
# No Referer leaves the app, unless a response asks for same-origin: the token page does, because with no-referrer a
# browser sends a plain form POST with `Origin: null`, which the Origin check below rightly refuses.
DEFAULT_REFERRER_POLICY = "no-referrer"
# htmx swaps a 429 into the page's notice area instead of the form that was submitted.
RATE_LIMITED_HEADERS = {"HX-Retarget": "#notice", "HX-Reswap": "innerHTML", "Retry-After": "1"}
RATE_LIMITED = "Too many changes at once: slow down a little."


def allowed_hosts(names: list[str], port: int) -> set[str]:
    """Each name with our port, as a browser sends Host; bare names only when the port is 80, which Host omits."""
    return {f"{name}:{port}" for name in names} | (set(names) if port == 80 else set())


def add_perimeter(app: Starlette, settings: Settings) -> TokenBucket:
    """The middleware, outermost last: the Guard (Host, Origin, CSP), then the access gate when the web listens beyond
    loopback, then the rate limit. The limit is innermost because its budget is shared by every user: a device the
    gate refuses must not spend it, or a phone with no token could make everyone's edits 429. Returns that budget,
    which a chat message sent over a tab's WebSocket spends too (web/app.py)."""
    bucket = TokenBucket(settings.actions_per_s, settings.action_burst)
    app.add_middleware(ChangeLimit, bucket=bucket)
    if access_token.required(settings):
        app.add_middleware(AccessGate, token_path=access_token.path(settings), port=settings.web_port)
    app.add_middleware(Guard, hosts=allowed_hosts(settings.allowed_hosts, settings.web_port))
    app.add_middleware(OneConnectAtATime)
    return bucket


class OneConnectAtATime:
    """WebSockets that connect together are let in one per turn of the event loop. Each opening (the checks, the
    upgrade, the resync it is sent) holds the loop for 1-3 ms, and the loop runs everything that is ready before it
    looks at its sockets again: ten tabs reconnecting at once held a streaming reply's next token for 20-30 ms.
    Paced, a token waits for one opening at most."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._last_turn: asyncio.Future | None = None  # resolved once the connection before can be let in

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._wait_turn()
        await self.app(scope, receive, send)

    async def _wait_turn(self) -> None:
        loop = asyncio.get_running_loop()
        before, mine = self._last_turn, loop.create_future()
        self._last_turn = mine
        try:
            if before is not None:
                await before
        finally:
            # The next one goes in a later turn, after the loop has polled its sockets (the bus among them); and
            # even if this one was cancelled while it waited, or the line would stop here.
            loop.call_soon(_resolve, mine)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class Guard:
    def __init__(self, app: ASGIApp, hosts: set[str]) -> None:
        self.app = app
        self.hosts = hosts
        self.origins = {f"http://{host}" for host in hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            # For a WebSocket this is an HTTP denial before the upgrade (ASGI websocket.http.response).
            await refusal(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    response_headers[name] = value
                if response_headers.get("referrer-policy") != "same-origin":
                    response_headers["referrer-policy"] = DEFAULT_REFERRER_POLICY
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> PlainTextResponse | None:
        if headers.get("host", "").lower() not in self.hosts:
            return PlainTextResponse("Unknown Host header: open the app at the address it was started on.", 400)
        is_websocket = scope["type"] == "websocket"
        changes_state = is_websocket or scope.get("method", "GET") not in SAFE_METHODS
        origin = headers.get("origin")
        if changes_state and origin is not None and origin.lower() not in self.origins:
            return PlainTextResponse("Cross-origin request refused.", 403)
        return None


class ChangeLimit:
    """State-changing HTTP requests beyond ACTIONS_PER_S (bursts of ACTION_BURST) get 429."""

    def __init__(self, app: ASGIApp, bucket: TokenBucket) -> None:
        self.app = app
        self.bucket = bucket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method", "GET") not in SAFE_METHODS and not self.bucket.take():
            response = PlainTextResponse(RATE_LIMITED, 429, headers=RATE_LIMITED_HEADERS)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
