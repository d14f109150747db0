"""The access gate of a web that listens beyond loopback: a browser on another device needs a session cookie, got by
opening the link with the token that the web logs at start, or by typing the token into the small page that every
refused request gets. Connections from loopback pass: that is decided by the connection's peer address, which a
client cannot forge, never by a header (Host, X-Forwarded-For). The cookie is signed with the token, so rotating the
token (`python -m bin.token rotate`) ends every session, open WebSockets included."""
from __future__ import annotations

import asyncio
import json
import logging
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from fasthtml.common import H1, Body, Button, Form, Head, Html, Input, Label, Main, P, Title, to_xml
from starlette.requests import cookie_parser
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from web.components import PAGE_HEAD
from web.sessions import ATTEMPTS_PER_S, SESSION_MAX_AGE_S, Attempts, Sessions, WatchedToken

SESSION_COOKIE = "todo-session-{port}"  # cookies are per host, not per port: two copies of the app keep theirs apart
LOGIN_PATH = "/login"
MAX_FORM_BYTES = 1024  # a token is 43 characters
SESSION_CHECK_S = 1.0  # how soon an open WebSocket notices that its session ended
POLICY_VIOLATION = 1008  # WebSocket close code: htmx's ws extension does not reconnect on it
NO_STORE = {"Cache-Control": "no-store"}
REFUSALS_LOG_EVERY = 100  # refused attempts from one address: the first is logged, then every hundredth

log = logging.getLogger(__name__)


def public_paths() -> frozenset[str]:
    """What the login page and a home-screen icon load: the files the page head links, and the manifest's icons
    (read from both, so neither list is kept twice). None of it reveals a todo or a message; browsers fetch the
    manifest without cookies, so it must be public anyway."""
    linked = {element.attrs["href"] for element in PAGE_HEAD if "href" in element.attrs}
    manifest = json.loads((Path(__file__).parent / "static" / "manifest.webmanifest").read_text(encoding="utf-8"))
    return frozenset(linked | {icon["src"] for icon in manifest["icons"]})


PUBLIC_PATHS = public_paths()


def peer_address(scope: Scope) -> IPv4Address | IPv6Address | None:
    """The connection's peer, an IPv4-mapped IPv6 address (a dual-stack socket's IPv4 peer) as plain IPv4."""
    client = scope.get("client")
    if not client:
        return None  # a Unix socket or a server that does not say
    try:
        address = ip_address(client[0])
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_loopback_peer(scope: Scope) -> bool:
    address = peer_address(scope)
    return address is not None and address.is_loopback  # no address: not provably this machine


def login_page(message: str = "", status_code: int = 401) -> HTMLResponse:
    """The only thing a browser without a session sees: a form for the token, and no todo or chat content. A plain
    form POST, so it works under the CSP with no script at all."""
    form = Form(
        Label("Access token", fr="token"),
        Input(type="password", id="token", name="token", required=True, autocomplete="current-password",
              autocapitalize="none", spellcheck="false"),
        Button("Open", type="submit"),
        *([P(message, role="alert", cls="error")] if message else []),
        method="post", action=LOGIN_PATH, enctype="application/x-www-form-urlencoded",  # (FastHTML's default is
        # multipart, which read_form_token does not parse)
    )
    page = Html(
        Head(Title("Todo, with attitude: access token"), *PAGE_HEAD),
        Body(Main(
            H1("Todo, with attitude"),
            P("This app needs its access token. Open the link the app printed when it started (it ends in "
              "?token=…), or paste the token here."),
            form, cls="login")),
        lang="en")
    headers = {**NO_STORE, "HX-Refresh": "true",  # an htmx request whose session ended reloads into this page
               "Referrer-Policy": "same-origin"}  # else the form's POST carries `Origin: null` (see web/guard.py)
    if status_code == 429:
        headers["Retry-After"] = str(round(1 / ATTEMPTS_PER_S))
    return HTMLResponse(to_xml(page), status_code, headers=headers)


def link_token(scope: Scope) -> str | None:
    """The token of a GET to the link the web printed (`/?token=…`), if this is one."""
    if scope["type"] != "http" or scope.get("method") != "GET":
        return None
    try:
        return dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), max_num_fields=20)).get("token")
    except ValueError:  # more fields than any link of the app has
        return None


def without_token(scope: Scope) -> str:
    """The request's path and query string with the token taken out: where a link with the token redirects. Always
    one leading slash: `GET //evil.example/?token=…` (or `/%2F/evil.example`, which the server decodes to `//`)
    must not redirect to the scheme-relative `//evil.example/`, another site. (RedirectResponse percent-encodes a
    backslash or a tab, so neither can turn into a second slash in the browser.)"""
    query = [(k, v) for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1")) if k != "token"]
    return "/" + scope["path"].lstrip("/") + (f"?{urlencode(query)}" if query else "")


def session_cookie(scope: Scope, name: str) -> str | None:
    # Starlette's lenient parser, as browsers read cookies: SimpleCookie.load silently stops at the first cookie it
    # dislikes (another app on this host setting `x={"a":1}`), which would hide ours.
    return cookie_parser(dict(scope["headers"]).get(b"cookie", b"").decode("latin-1")).get(name)


def attempt_key(scope: Scope) -> str:
    """Whom token attempts are counted for: the full peer address, an IPv4-mapped one as its IPv4 address. Not the
    IPv6 /64: every device of a home network shares one, so one guesser would lock out the phone. (A device that
    walks its /64 gets more attempts, but against a 256-bit token that buys nothing.)"""
    address = peer_address(scope)
    return str(address) if address is not None else str((scope.get("client") or ("unknown",))[0])


async def read_form_token(receive: Receive) -> str | None:
    """The `token` field of a small urlencoded form body; None if there is none or the body is too big."""
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        body += message.get("body", b"")
        if len(body) > MAX_FORM_BYTES:
            return None
        if not message.get("more_body"):
            break
    try:
        return dict(parse_qsl(body.decode("utf-8", "replace"), max_num_fields=10)).get("token")
    except ValueError:  # more fields than a token form has
        return None


class AccessGate:
    def __init__(self, app: ASGIApp, token_path: Path, port: int) -> None:
        self.app = app
        self.cookie_name = SESSION_COOKIE.format(port=port)
        self.sessions = Sessions(WatchedToken(token_path))
        self.attempts = Attempts()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or is_loopback_peer(scope):
            await self.app(scope, receive, send)
            return
        session = session_cookie(scope, self.cookie_name)
        if self.sessions.valid(session):
            if scope["type"] == "websocket":
                await self._serve_websocket(session, scope, receive, send)
            elif link_token(scope) is not None:  # the link opened again: only take the token out of sight
                await RedirectResponse(without_token(scope), 303, headers=NO_STORE)(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        method = scope.get("method")
        if method in ("GET", "HEAD") and scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        response = await self._without_session(scope, receive)
        # For a WebSocket this is an HTTP denial before the upgrade: not one frame is sent.
        await response(scope, receive, send)

    async def _without_session(self, scope: Scope, receive: Receive) -> Response:
        method = scope.get("method")
        if scope["type"] == "http" and method == "POST" and scope["path"] == LOGIN_PATH:
            return self._attempt(scope, await read_form_token(receive), "/")
        candidate = link_token(scope)
        if candidate is not None:
            return self._attempt(scope, candidate, without_token(scope))
        return login_page()

    def _attempt(self, scope: Scope, candidate: str | None, redirect_to: str) -> Response:
        # Counted before the comparison, right or wrong: past the limit even the right token waits.
        who = attempt_key(scope)
        if not self.attempts.allow(who):
            refused = self.attempts.refused(who)
            if refused == 1 or refused % REFUSALS_LOG_EVERY == 0:  # a flood of guesses must not flood the log
                log.warning("too many token attempts from %s (%d refused so far)", who, refused)
            return login_page("Too many attempts: wait a minute, then try again.", 429)
        token = self.sessions.accepts(candidate or "")
        if token is None:
            log.info("a wrong access token from %s", who)
            return login_page("That is not the access token.")
        response = RedirectResponse(redirect_to, 303, headers=NO_STORE)
        response.set_cookie(self.cookie_name, self.sessions.new(token), max_age=SESSION_MAX_AGE_S, path="/",
                            httponly=True, samesite="strict")
        return response

    async def _serve_websocket(self, session: str, scope: Scope, receive: Receive, send: Send) -> None:
        """The app's WebSocket, closed (1008) within SESSION_CHECK_S once its session ends: after a rotation the web
        has seen, not one more frame goes out, and no frame the tab sends after its session ended gets in (a chat
        message comes up this socket: it is checked as a POST is)."""
        seen = self.sessions.token.generation

        async def receive_while_valid() -> Message:
            message = await receive()
            if message["type"] == "websocket.receive" and not self.sessions.valid(session):
                await send({"type": "websocket.close", "code": POLICY_VIOLATION, "reason": "session ended"})
                return {"type": "websocket.disconnect", "code": POLICY_VIOLATION}
            return message

        async def send_while_valid(message: Message) -> None:
            # Per frame (the token-streaming path) one integer compare, no lock and no stat. Only when the token
            # changed is the session checked: still valid (the file was briefly unreadable, then the same token
            # again) and frames flow on; not valid and nothing more goes out, while the watcher below closes it.
            nonlocal seen
            if self.sessions.token.generation != seen:
                if not self.sessions.valid(session):
                    return
                seen = self.sessions.token.generation
            await send(message)

        async def end_when_invalid() -> None:
            while self.sessions.valid(session):
                await asyncio.sleep(SESSION_CHECK_S)
            try:
                await send({"type": "websocket.close", "code": POLICY_VIOLATION, "reason": "session ended"})
            except Exception as error:  # the tab had gone already
                log.info("closing a WebSocket whose session ended failed (%s)", error)

        watcher = asyncio.create_task(end_when_invalid())
        try:
            await self.app(scope, receive_while_valid, send_while_valid)
        finally:
            watcher.cancel()
