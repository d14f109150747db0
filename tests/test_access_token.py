"""The access token's rules without processes: which hosts need it, the link printed for a phone, the 0600 file and
its rotation, session cookies signed with the token, and the per-address limit on attempts (see tests/test_access.py
for the same rules across real processes)."""
from __future__ import annotations

import stat

import pytest

from services import access_token, config
from services.config import ConfigError
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
                 f"²{issued}.{nonce}.{mac}", "", "a.b", None)
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


def test_attempts_from_one_ipv6_network_count_together():
    # One device on IPv6 can pick any address of its /64: counting per address would not slow it down.
    assert attempt_key({"client": ("fd00::1:2", 5)}) == attempt_key({"client": ("fd00::9", 6)}) == "fd00::/64"
    assert attempt_key({"client": ("10.0.0.2", 5)}) == "10.0.0.2"


def test_a_missing_token_file_lets_nobody_in_until_a_rotation(tmp_path):
    token = WatchedToken(tmp_path / "web-token")
    assert token.current() is not None
    (tmp_path / "web-token").unlink()
    assert token.current() is None and token.generation == 1
    access_token.rotate(tmp_path / "web-token")
    assert token.current() == access_token.read(tmp_path / "web-token") and token.generation == 2
