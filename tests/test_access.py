"""A web that listens beyond loopback needs its access token: real processes, with the web in a private network
namespace (tests/lan.py) and the test as a phone on the other end of a veth pair. Every rule of issue 12: the link
printed at start, the cookie, 401 without it (WebSockets too, before any frame), wrong tokens rate-limited, rotation
ending sessions, and loopback needing nothing."""
from __future__ import annotations

import json
import re
import sqlite3
import stat
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.lan import PrivateNetwork, private_network
from tests.system import ROOT, System

SECRET = "secret plan"  # a todo title that must never reach a device without a session
LINK = re.compile(r"open (http://\S+/\?token=(\S+))")


@dataclass
class LanApp:
    app: System
    network: PrivateNetwork
    url: str  # as the phone reaches it
    link: str  # the one the web logged at start
    token: str

    @property
    def cookie_name(self) -> str:
        return f"todo-session-{self.app.web_port}"

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"

    def phone(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=5, **kwargs)

    @contextmanager
    def session(self) -> Iterator[httpx.Client]:
        """A phone that has opened the link: its client holds the session cookie."""
        with self.phone() as client:
            assert client.get(self.link).status_code == 303
            yield client


def wait_for_link(app: System, timeout_s: float = 15) -> re.Match:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = LINK.search(app.processes["web"].log())
        if found:
            return found
        if not app.processes["web"].alive():
            raise RuntimeError(f"web exited:\n{app.logs()}")
        time.sleep(0.05)  # the log is a file: there is no event to await
    raise TimeoutError(f"the web logged no link within {timeout_s} s:\n{app.logs()}")


@pytest.fixture
def lan(tmp_path, fake_ollama):
    with private_network() as network:
        app = System(tmp_path, fake_ollama.url, WEB_HOST="0.0.0.0",
                     ALLOWED_HOSTS=f"{network.web_address},127.0.0.1")
        try:
            app.start_bus()
            app.start("web", *network.command(sys.executable, "-m", "web"))
            app.start_worker()  # (in this namespace: it reaches the web over the ipc:// socket in DATA_DIR)
            found = wait_for_link(app)
            lan_app = LanApp(app, network, f"http://{network.web_address}:{app.web_port}", found[1], found[2])
            with lan_app.phone() as phone:  # the log line comes just before uvicorn listens
                deadline = time.monotonic() + 10
                while phone_status(phone, "/static/app.css") != 200 and time.monotonic() < deadline:
                    time.sleep(0.05)
            yield lan_app
        finally:
            codes = app.stop()
            print(app.logs())
        assert all(code is not None for code in codes.values()), codes


def phone_status(phone: httpx.Client, path: str) -> int | None:
    try:
        return phone.get(path).status_code
    except httpx.TransportError:
        return None


def titles(app: System) -> list[str]:
    with sqlite3.connect(app.data_dir / "app.sqlite3") as db:
        return [row[0] for row in db.execute("SELECT title FROM todos")]


def test_the_link_is_logged_once_and_its_token_lives_0600_in_data_dir(lan):
    assert lan.app.processes["web"].log().count("?token=") == 1
    assert lan.link == f"{lan.url}/?token={lan.token}"
    token_file = lan.app.data_dir / "web-token"
    assert token_file.read_text().strip() == lan.token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600


def test_without_a_session_every_page_route_and_websocket_gets_401_with_no_content(lan):
    with lan.session() as phone:
        assert phone.post("/todos", data={"title": SECRET}).status_code == 200
        assert SECRET in phone.get("/").text
    forged = {"Host": f"127.0.0.1:{lan.app.web_port}", "X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1"}
    with lan.phone() as stranger:
        responses = [stranger.get("/"), stranger.get("/?filter=active"), stranger.get("/chat/history?before=99"),
                     stranger.get("/static/app.js"), stranger.get("/no-such-page"), stranger.get("/", headers=forged),
                     stranger.get("/", headers={"Cookie": f"{lan.cookie_name}=1.forged.0000"}),
                     stranger.post("/todos", data={"title": "from a stranger"}), stranger.post("/stop"),
                     stranger.get("/?" + "a=1&" * 50 + "token=x"), stranger.post("/login", content="a=1&" * 50)]
        for response in responses:
            assert response.status_code == 401, (response.request.url, response.status_code)
            assert SECRET not in response.text and 'label for="token">Access token' in response.text
            assert response.headers["cache-control"] == "no-store"
            assert "default-src 'none'" in response.headers["content-security-policy"]  # the Guard still wraps it
        # What the login page and a home-screen icon load: public, and none of it holds a todo or a message.
        for path in ("/static/app.css", "/static/manifest.webmanifest", "/static/favicon.svg",
                     "/static/icon-192.png", "/static/icon-512.png", "/static/apple-touch-icon.png"):
            assert stranger.get(path).status_code == 200, path
    for cookie in (None, f"{lan.cookie_name}=1.forged.0000"):
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(lan.ws_url, open_timeout=5, additional_headers={"Cookie": cookie} if cookie else None)
        assert refused.value.response.status_code == 401
        assert SECRET not in refused.value.response.body.decode()
    assert titles(lan.app) == [SECRET]


def test_the_link_sets_an_httponly_strict_cookie_and_redirects_to_the_clean_url(lan):
    with lan.phone() as phone:
        opened = phone.get(f"/?filter=active&token={lan.token}")
        assert opened.status_code == 303 and opened.headers["location"] == "/?filter=active"
        cookie = opened.headers["set-cookie"].lower()
        assert cookie.startswith(f"{lan.cookie_name}=") and "httponly" in cookie and "samesite=strict" in cookie
        assert "path=/" in cookie
        page = phone.get("/?filter=active")
        assert page.status_code == 200 and 'aria-label="Todos"' in page.text
        again = phone.get(lan.link)  # opened again with a session: the token is only taken out of the address
        assert again.status_code == 303 and again.headers["location"] == "/" and "set-cookie" not in again.headers
        with ws_connect(lan.ws_url + "?filter=active", open_timeout=5,
                        additional_headers={"Cookie": f"{lan.cookie_name}={phone.cookies[lan.cookie_name]}"}) as tab:
            assert "llm-status" in tab.recv(timeout=5)
    with lan.phone() as phone:  # the token typed into the form works the same way
        typed = phone.post("/login", data={"token": lan.token}, headers={"Origin": lan.url})
        assert typed.status_code == 303 and typed.headers["location"] == "/"
        assert phone.get("/").status_code == 200


def test_wrong_tokens_are_refused_and_then_rate_limited_even_the_right_one(lan):
    with lan.phone() as phone:
        for attempt in range(5):
            wrong = phone.post("/login", data={"token": f"guess-{attempt}" * 8})
            assert wrong.status_code == 401 and "That is not the access token." in wrong.text
        limited = phone.post("/login", data={"token": lan.token})
        assert limited.status_code == 429 and "Too many attempts" in limited.text
        assert lan.cookie_name not in phone.cookies
        assert phone.get(lan.link).status_code == 429  # the link counts as an attempt too
        assert phone.get("/").status_code == 401


def test_rotating_the_token_ends_every_session_and_closes_its_open_websocket(lan):
    with lan.session() as old_phone:
        old_cookie = f"{lan.cookie_name}={old_phone.cookies[lan.cookie_name]}"
        with ws_connect(lan.ws_url, open_timeout=5, additional_headers={"Cookie": old_cookie}) as tab:
            assert "llm-status" in tab.recv(timeout=5)
            rotated = subprocess.run([sys.executable, "-m", "bin.token", "rotate"], cwd=ROOT, env=lan.app.env,
                                     capture_output=True, text=True, timeout=20)
            assert rotated.returncode == 0, rotated.stderr
            new_link = rotated.stdout.strip()
            new_token = new_link.rsplit("=", 1)[1]
            assert new_token != lan.token and new_link == f"{lan.url}/?token={new_token}"
            assert stat.S_IMODE((lan.app.data_dir / "web-token").stat().st_mode) == 0o600
            assert old_phone.get("/").status_code == 401  # the web re-reads the file: no restart
            assert old_phone.get(lan.link).status_code == 401  # the old link is dead too
            with lan.phone() as new_phone:
                assert new_phone.get(new_link).status_code == 303
                assert new_phone.post("/todos", data={"title": SECRET}).status_code == 200
            frames = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    frames.append(tab.recv(timeout=5))
            assert closed.value.rcvd.code == 1008
            assert not [frame for frame in frames if SECRET in frame]


LOOPBACK_CLIENT = """
import json, sys, httpx
from websockets.sync.client import connect
port, secret = sys.argv[1], sys.argv[2]
page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5) as tab:
    frame = tab.recv(timeout=5)
print(json.dumps({"status": page.status_code, "secret_shown": secret in page.text, "ws": "llm-status" in frame}))
"""


def test_loopback_needs_no_token(lan):
    with lan.session() as phone:
        phone.post("/todos", data={"title": SECRET})
    # Run inside the web's namespace, where 127.0.0.1 is the web's own loopback: the peer address decides.
    result = subprocess.run(lan.network.command(sys.executable, "-c", LOOPBACK_CLIENT, str(lan.app.web_port), SECRET),
                            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"status": 200, "secret_shown": True, "ws": True}
