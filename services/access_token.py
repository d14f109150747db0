"""The web's access token, needed when WEB_HOST is not loopback: a random secret kept 0600 in DATA_DIR/web-token,
shared by the web (which checks it) and `python -m bin.token` (which shows or rotates it)."""
from __future__ import annotations

import os
import re
import secrets
from ipaddress import ip_address
from pathlib import Path

from services.config import ConfigError, Settings

TOKEN_FILE = "web-token"
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{40,100}")  # what secrets.token_urlsafe(32) makes: 43 characters
BIND_ALL = ("0.0.0.0", "::")


def path(settings: Settings) -> Path:
    return settings.data_dir / TOKEN_FILE


def is_loopback(host: str) -> bool:
    """localhost or a loopback address; any other name may resolve beyond this machine."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def required(settings: Settings) -> bool:
    return not is_loopback(settings.web_host)


def read(token_path: Path) -> str:
    """The token in the file, or a ConfigError naming the fix when it is not one or others can read it."""
    with open(token_path, encoding="ascii", errors="replace") as file:
        if os.fstat(file.fileno()).st_mode & 0o077:
            raise ConfigError(f"{token_path} can be read by other users: run `python -m bin.token rotate`")
        token = file.read().strip()
    if not TOKEN_PATTERN.fullmatch(token):
        raise ConfigError(f"{token_path} does not hold a token: run `python -m bin.token rotate`")
    return token


def _write_new(token_path: Path, exclusive: bool) -> str:
    token = secrets.token_urlsafe(32)
    token_path.parent.mkdir(parents=True, exist_ok=True)
    # Written to a private temporary file, then renamed over the old one: a reader sees the old token or the new
    # one, never half of one, and the new inode tells the running web that it changed.
    temporary = token_path.with_name(f".{token_path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(token + "\n")
        file.flush()
        os.fsync(file.fileno())
    if exclusive:
        try:
            os.link(temporary, token_path)  # fails if the file appeared meanwhile: the other writer's token wins
        finally:
            temporary.unlink()
    else:
        os.replace(temporary, token_path)
    return token


def read_or_create(token_path: Path) -> str:
    try:
        return read(token_path)
    except FileNotFoundError:
        pass
    try:
        return _write_new(token_path, exclusive=True)
    except FileExistsError:
        return read(token_path)


def rotate(token_path: Path) -> str:
    """A new token in place of the old one: every session signed with the old one ends."""
    return _write_new(token_path, exclusive=False)


def public_url(settings: Settings, token: str) -> str:
    """The link to open on another device: the address WEB_HOST names, or with a bind-all WEB_HOST the first
    ALLOWED_HOSTS name that is not loopback. A ConfigError when the web would refuse that address's Host."""
    outside_names = [name for name in settings.allowed_hosts if not is_loopback(name)]
    host = settings.web_host.lower()
    if host in BIND_ALL:
        if not outside_names:
            raise ConfigError(f"WEB_HOST={settings.web_host} listens beyond loopback, but ALLOWED_HOSTS names no "
                              "address another device would use: add this machine's address or name, e.g. "
                              "ALLOWED_HOSTS=localhost,127.0.0.1,192.168.1.10")
        host = outside_names[0]
    else:
        host = f"[{host}]" if ":" in host else host
        if host not in settings.allowed_hosts:
            raise ConfigError(f"WEB_HOST={settings.web_host} is not in ALLOWED_HOSTS, so the web would refuse "
                              f"requests to it: add it, e.g. ALLOWED_HOSTS=localhost,127.0.0.1,{host}")
    return f"http://{host}:{settings.web_port}/?token={token}"
