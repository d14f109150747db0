"""The access gate (web/auth.py) and the perimeter around it (web/guard.py) in process: ASGI scopes whose client is
another device on the network, no sockets and no processes (tests/test_access.py has the same rules across a real
network namespace, as root)."""
from __future__ import annotations

import asyncio
import os

import pytest

from web.auth import POLICY_VIOLATION, SESSION_CHECK_S, AccessGate

PHONE = ("10.0.0.2", 50000)  # another device on the network: the gate never lets it in by its address
PORT = 5001


async def ok(scope, receive, send) -> None:
    """The app behind the gate: 200 to every request."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"the app"})


def http(app, path: str, *, method: str = "GET", query: bytes = b"", cookie: str | None = None,
         body: bytes = b"", client: tuple = PHONE) -> tuple[int, dict[str, str], bytes]:
    """One request as uvicorn hands it over: `path` already percent-decoded. Status, headers, body."""
    headers = [(b"host", f"10.0.0.1:{PORT}".encode())]
    if cookie is not None:
        headers.append((b"cookie", cookie.encode("latin-1")))
    if body:
        headers.append((b"content-type", b"application/x-www-form-urlencoded"))
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": query,
             "headers": headers, "client": client, "server": ("10.0.0.1", PORT), "scheme": "http",
             "http_version": "1.1", "root_path": ""}
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=5))
    start = sent[0]
    return (start["status"], {k.decode(): v.decode() for k, v in start["headers"]},
            b"".join(m.get("body", b"") for m in sent[1:]))


@pytest.fixture
def gate(tmp_path) -> AccessGate:
    return AccessGate(ok, token_path=tmp_path / "web-token", port=PORT)


def token_of(gate: AccessGate) -> str:
    return gate.sessions.token.current()


@pytest.mark.parametrize("path", ["//evil.example/", "///evil.example/", "/\\evil.example/"])
def test_the_link_with_the_token_redirects_only_within_this_site(gate, path):
    # `/%2F/evil.example` reaches the app as `//evil.example`: uvicorn decodes the path.
    status, headers, _ = http(gate, path, query=f"token={token_of(gate)}&filter=open".encode())
    assert status == 303
    location = headers["location"]
    assert location.startswith("/") and location[1] not in "/\\", location
    assert location.endswith("evil.example/?filter=open")


def perimeter(tmp_path, **env):
    """The middleware stack of web/app.py around an app that answers 200."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from services import config
    from web.guard import add_perimeter

    async def change(request):
        return PlainTextResponse("changed")

    app = Starlette(routes=[Route("/todos", change, methods=["POST"])])
    add_perimeter(app, config.load({"DATA_DIR": str(tmp_path), "WEB_HOST": "0.0.0.0",
                                    "ALLOWED_HOSTS": "10.0.0.1,127.0.0.1", **env}))
    return app


def test_a_device_without_a_session_does_not_spend_the_change_budget_everyone_shares(tmp_path):
    app = perimeter(tmp_path, ACTIONS_PER_S="0.01", ACTION_BURST="3")
    for _ in range(10):  # a phone with no token, posting and trying tokens
        assert http(app, "/todos", method="POST", body=b"title=x")[0] == 401
    assert http(app, "/login", method="POST", body=b"token=wrong")[0] == 401  # only its own attempt limit applies
    loopback = ("127.0.0.1", 40000)
    assert [http(app, "/todos", method="POST", body=b"title=x", client=loopback)[0] for _ in range(4)] == \
        [200, 200, 200, 429]  # the user's whole burst is still there, and the limit still holds


def session_of(gate: AccessGate) -> str:
    return f"todo-session-{PORT}={gate.sessions.new(token_of(gate))}"


@pytest.mark.parametrize("others", ['x={"a":1}', 'a=b c', "theme=dark"])
def test_the_session_is_found_among_cookies_of_other_apps_on_the_same_host(gate, others):
    assert http(gate, "/", cookie=f"{others}; {session_of(gate)}; last=1")[0] == 200
    assert http(gate, "/", cookie=f"{others}; last=1")[0] == 401


def test_a_cookie_with_an_absurd_issue_time_gets_the_token_page_not_a_500(gate):
    assert http(gate, "/", cookie=f"todo-session-{PORT}={'9' * 5000}.nonce.mac")[0] == 401


async def echo(scope, receive, send) -> None:
    """The app's WebSocket, reduced to: accept, then send back every text frame."""
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": message["text"]})


class Tab:
    """A WebSocket through the gate, driven by hand: what the tab sends in, what the gate lets out."""

    def __init__(self, gate: AccessGate, cookie: str) -> None:
        self.incoming: asyncio.Queue = asyncio.Queue()
        self.outgoing: asyncio.Queue = asyncio.Queue()
        scope = {"type": "websocket", "path": "/ws", "raw_path": b"/ws", "query_string": b"",
                 "headers": [(b"host", f"10.0.0.1:{PORT}".encode()), (b"cookie", cookie.encode())],
                 "client": PHONE, "server": ("10.0.0.1", PORT), "scheme": "ws", "root_path": "", "subprotocols": []}
        self.incoming.put_nowait({"type": "websocket.connect"})
        self.task = asyncio.create_task(gate(scope, self.incoming.get, self.outgoing.put))

    async def next_out(self, timeout_s: float = 3) -> dict:
        return await asyncio.wait_for(self.outgoing.get(), timeout_s)

    async def close(self) -> None:
        self.incoming.put_nowait({"type": "websocket.disconnect", "code": 1001})
        await asyncio.wait_for(self.task, 5)


def test_an_open_websocket_keeps_streaming_after_the_token_file_was_briefly_unreadable(tmp_path, monkeypatch):
    from services import access_token

    gate = AccessGate(echo, token_path=tmp_path / "web-token", port=PORT)
    cookie = session_of(gate)
    real_read = access_token.read

    def unreadable(token_path):
        raise OSError(5, "Input/output error")

    async def scenario():
        tab = Tab(gate, cookie)
        assert (await tab.next_out())["type"] == "websocket.accept"
        # The token goes away and comes back, between two checks of the gate's once-a-second watcher.
        monkeypatch.setattr(access_token, "read", unreadable)
        os.utime(tmp_path / "web-token", ns=(1, 1))  # the file looks changed, so it is read again
        assert not gate.sessions.valid(cookie.split("=", 1)[1])
        monkeypatch.setattr(access_token, "read", real_read)
        assert gate.sessions.valid(cookie.split("=", 1)[1])
        tab.incoming.put_nowait({"type": "websocket.receive", "text": "still here?"})
        assert await tab.next_out() == {"type": "websocket.send", "text": "still here?"}
        await tab.close()

    asyncio.run(scenario())


def test_an_open_websocket_is_closed_once_the_token_is_rotated(tmp_path):
    from services import access_token

    gate = AccessGate(echo, token_path=tmp_path / "web-token", port=PORT)

    async def scenario():
        tab = Tab(gate, session_of(gate))
        assert (await tab.next_out())["type"] == "websocket.accept"
        access_token.rotate(tmp_path / "web-token")
        assert gate.sessions.accepts(access_token.read(tmp_path / "web-token"))  # a request shows the web the new one
        tab.incoming.put_nowait({"type": "websocket.receive", "text": "the new user's secret"})
        # Not one frame more, even before the once-a-second watcher closes it.
        closed = await tab.next_out(timeout_s=3 * SESSION_CHECK_S)
        assert closed["type"] == "websocket.close" and closed["code"] == POLICY_VIOLATION
        await tab.close()

    asyncio.run(scenario())


def test_a_frame_a_tab_sends_after_its_session_ended_never_reaches_the_app(tmp_path):
    # A chat message comes up the tab's WebSocket: it must be refused as a POST from that tab would be (401), even in
    # the second before the watcher closes the socket.
    from services import access_token

    heard: list[str] = []
    heard_one = asyncio.Event()

    async def listening(scope, receive, send) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            heard.append(message["text"])
            heard_one.set()

    gate = AccessGate(listening, token_path=tmp_path / "web-token", port=PORT)

    async def scenario():
        tab = Tab(gate, session_of(gate))
        assert (await tab.next_out())["type"] == "websocket.accept"
        tab.incoming.put_nowait({"type": "websocket.receive", "text": "before"})
        await asyncio.wait_for(heard_one.wait(), 5)
        access_token.rotate(tmp_path / "web-token")
        assert gate.sessions.accepts(access_token.read(tmp_path / "web-token"))
        tab.incoming.put_nowait({"type": "websocket.receive", "text": "after"})
        closed = await tab.next_out(timeout_s=3 * SESSION_CHECK_S)
        assert closed["type"] == "websocket.close" and closed["code"] == POLICY_VIOLATION
        await asyncio.wait_for(tab.task, 5)  # the app saw its socket end

    asyncio.run(scenario())
    assert heard == ["before"]


def test_refused_token_attempts_are_logged_the_first_time_and_then_every_hundredth(gate, caplog):
    from web.auth import REFUSALS_LOG_EVERY
    from web.sessions import ATTEMPT_BURST, Attempts

    gate.attempts = Attempts(clock=lambda: 0.0)  # no attempt comes back while the test runs
    caplog.set_level("WARNING", logger="web.auth")
    statuses = [http(gate, "/login", method="POST", body=b"token=guess")[0]
                for _ in range(ATTEMPT_BURST + 2 * REFUSALS_LOG_EVERY)]
    assert statuses == [401] * ATTEMPT_BURST + [429] * 2 * REFUSALS_LOG_EVERY
    for _ in range(ATTEMPT_BURST + 2):  # another device: its own first refusal is logged
        http(gate, "/login", method="POST", body=b"token=guess", client=("10.0.0.3", 5))
    logged = [record.getMessage() for record in caplog.records if "too many token attempts" in record.getMessage()]
    assert logged == ["too many token attempts from 10.0.0.2 (1 refused so far)",
                      "too many token attempts from 10.0.0.2 (100 refused so far)",
                      "too many token attempts from 10.0.0.2 (200 refused so far)",
                      "too many token attempts from 10.0.0.3 (1 refused so far)"]


def test_without_a_session_only_what_the_token_page_and_a_home_screen_icon_load_is_served(gate):
    from web.auth import PUBLIC_PATHS

    assert PUBLIC_PATHS == {"/static/app.css", "/static/favicon.svg", "/static/manifest.webmanifest",
                            "/static/icon-192.png", "/static/icon-512.png", "/static/apple-touch-icon.png"}
    assert http(gate, "/static/icon-192.png")[0] == 200
    assert http(gate, "/static/app.js")[0] == 401
