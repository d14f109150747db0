"""The access token's rules without processes: which hosts need it, the link printed for a phone, the 0600 file and
its rotation, session cookies signed with the token, and the per-address limit on attempts (see tests/test_access.py
for the same rules across real processes)."""
from __future__ import annotations

import errno
import socket
import stat

import pytest

from services import access_token, config
from services.config import ConfigError
from web.__main__ import listen
from web.auth import attempt_key, is_loopback_peer
from web.sessions import ATTEMPT_BURST, SESSION_MAX_AGE_S, Attempts, Sessions, WatchedToken


@pytest.mark.parametrize("host, loopback", [
    ("localhost", True), ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.10", False), ("mybox.local", False), ("fd00::5", False)])
def test_only_loopback_hosts_need_no_token(host, loopback):
    assert access_token.is_loopback(host) is loopback


@pytest.mark.parametrize("peer, loopback", [
    (("127.0.0.1", 5), True), (("::1", 5), True), (("::ffff:127.0.0.1", 5), True), (("10.0.0.2", 5), False),
    (("::ffff:10.0.0.2", 5), False), (None, False), (("not an address", 5), False)])
def test_the_peer_address_alone_says_loopback(peer, loopback):
    assert is_loopback_peer({"client": peer, "headers": [(b"x-forwarded-for", b"127.0.0.1")]}) is loopback


def settings(**env) -> config.Settings:
    return config.load({"DATA_DIR": "/nonexistent", **env})


def test_the_link_names_the_address_a_phone_uses():
    lan = settings(WEB_HOST="0.0.0.0", ALLOWED_HOSTS="localhost,127.0.0.1,192.168.1.10,box.lan")
    assert access_token.public_url(lan, "T") == "http://192.168.1.10:5001/?token=T"
    exact = settings(WEB_HOST="192.168.1.10", WEB_PORT="8000", ALLOWED_HOSTS="192.168.1.10")
    assert access_token.public_url(exact, "T") == "http://192.168.1.10:8000/?token=T"
    six = settings(WEB_HOST="fd00::5", ALLOWED_HOSTS="[fd00::5]")
    assert access_token.public_url(six, "T") == "http://[fd00::5]:5001/?token=T"


@pytest.mark.parametrize("env, expected", [
    ({"WEB_HOST": "0.0.0.0"}, "ALLOWED_HOSTS names no address another device would use"),
    ({"WEB_HOST": "192.168.1.10"}, "WEB_HOST=192.168.1.10 is not in ALLOWED_HOSTS")])
def test_a_link_the_web_would_refuse_is_a_config_error_naming_the_fix(env, expected):
    with pytest.raises(ConfigError, match=expected):
        access_token.public_url(settings(**env), "T")


def test_the_token_is_made_once_0600_and_rotation_replaces_it(tmp_path):
    path = tmp_path / "data" / "web-token"
    token = access_token.read_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(token) == 43
    assert access_token.read_or_create(path) == token
    rotated = access_token.rotate(path)
    assert rotated != token and access_token.read(path) == rotated
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["web-token"]  # no temporary file left behind


def test_the_token_is_made_where_the_filesystem_has_no_hard_links(tmp_path, monkeypatch):
    def no_hard_links(source, destination):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(access_token.os, "link", no_hard_links)
    path = tmp_path / "web-token"
    token = access_token.read_or_create(path)
    assert access_token.read(path) == token and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert access_token.read_or_create(path) == token
    assert [p.name for p in tmp_path.iterdir()] == ["web-token"]


@pytest.mark.parametrize("content, mode, expected", [
    ("x" * 43, 0o644, "can be read by other users"), ("short", 0o600, "does not hold a token")])
def test_a_token_file_others_can_read_or_that_holds_no_token_is_refused(tmp_path, content, mode, expected):
    path = tmp_path / "web-token"
    path.write_text(content)
    path.chmod(mode)
    with pytest.raises(ConfigError, match=f"{expected}.*python -m bin.token rotate"):
        access_token.read(path)


def test_a_session_is_valid_until_it_is_tampered_with_expires_or_the_token_rotates(tmp_path):
    now = [1_000_000.0]
    sessions = Sessions(WatchedToken(tmp_path / "web-token"), clock=lambda: now[0])
    token = sessions.token.current()
    cookie = sessions.new(token)
    assert sessions.valid(cookie)
    issued, nonce, mac = cookie.split(".")
    forgeries = (f"{issued}.{nonce}.{'0' * len(mac)}", f"{int(issued) + 1}.{nonce}.{mac}",
                 f"²{issued}.{nonce}.{mac}", f"{'9' * 5000}.{nonce}.{mac}", "", "a.b", None)
    for forged in forgeries:
        assert not sessions.valid(forged)
    assert sessions.accepts(token) == token and sessions.accepts(token[:-1]) is None
    assert sessions.accepts("é" * 43) is None  # not ASCII: refused, not an exception
    now[0] += SESSION_MAX_AGE_S + 1
    assert not sessions.valid(cookie)
    now[0] -= SESSION_MAX_AGE_S + 1
    access_token.rotate(tmp_path / "web-token")
    assert not sessions.valid(cookie) and sessions.token.generation == 1
    assert sessions.valid(sessions.new(sessions.token.current()))


def test_attempts_are_limited_per_address(tmp_path):
    now = [0.0]
    attempts = Attempts(clock=lambda: now[0])
    assert [attempts.allow("10.0.0.2") for _ in range(ATTEMPT_BURST + 1)] == [True] * ATTEMPT_BURST + [False]
    assert attempts.allow("10.0.0.3")  # another device is not locked out
    now[0] += 10
    assert attempts.allow("10.0.0.2") and not attempts.allow("10.0.0.2")


def test_attempts_are_counted_per_device_address_not_per_network():
    # Every IPv6 device of a home network shares its /64; IPv4 peers of a dual-stack socket come as ::ffff:a.b.c.d.
    keys = [attempt_key({"client": (peer, 5)}) for peer in ("fd00::1:2", "fd00::9", "::ffff:10.0.0.2",
                                                            "::ffff:10.0.0.3", "10.0.0.2")]
    assert keys == ["fd00::1:2", "fd00::9", "10.0.0.2", "10.0.0.3", "10.0.0.2"]


def test_a_missing_token_file_lets_nobody_in_until_a_rotation(tmp_path, caplog):
    token = WatchedToken(tmp_path / "web-token")
    assert token.current() is not None
    (tmp_path / "web-token").unlink()
    assert [token.current() for _ in range(3)] == [None] * 3 and token.generation == 1
    assert sum("no access token" in record.message for record in caplog.records) == 1  # said once, not per request
    access_token.rotate(tmp_path / "web-token")
    assert token.current() == access_token.read(tmp_path / "web-token") and token.generation == 2


def test_a_failed_read_of_the_token_file_is_retried_on_the_next_request(tmp_path, monkeypatch):
    path = tmp_path / "web-token"
    token = WatchedToken(path)
    rotated = access_token.rotate(path)
    real_read = access_token.read
    failures = iter([OSError(errno.EIO, "Input/output error")])

    def read_once_failing(token_path):
        for error in failures:
            raise error
        return real_read(token_path)

    monkeypatch.setattr(access_token, "read", read_once_failing)
    assert token.current() is None  # the failed read: nobody in, as with a broken file
    assert token.current() == rotated  # the file has not changed since, and is read again all the same


def test_a_web_host_of_all_ipv6_addresses_listens_on_ipv4_too_where_the_link_may_point():
    if not socket.has_dualstack_ipv6():
        pytest.skip("this machine has no dual-stack IPv6 sockets")
    with listen("::", 0) as server:
        with socket.create_connection(("127.0.0.1", server.getsockname()[1]), timeout=5):
            pass


def test_connections_to_the_page_send_small_writes_at_once():
    # Without TCP_NODELAY a response's body waited for the ACK of its headers, which clients delay up to 40 ms:
    # a todo POST took ~45 ms (bin/bench, figure 5). asyncio sets it only on sockets made for IPPROTO_TCP by name.
    with listen("127.0.0.1", 0) as server:
        with socket.create_connection(("127.0.0.1", server.getsockname()[1]), timeout=5):
            accepted, _ = server.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
