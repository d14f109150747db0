"""The access gate (web/auth.py) and the perimeter around it (web/guard.py) in process: ASGI scopes whose client is
another device on the network, no sockets and no processes (tests/test_access.py has the same rules across a real
network namespace, as root)."""
from __future__ import annotations

import asyncio

import pytest

from web.auth import AccessGate

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
