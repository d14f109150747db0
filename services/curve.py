"""ZeroMQ CURVE for the bus and the journal socket: encryption plus a list of allowed clients, for when they must
cross machines. Keys live in BUS_KEYS_DIR (made by `python -m bin.keys`); with it unset, sockets stay plain, and
binding anything but loopback or ipc:// is refused.

    BUS_KEYS_DIR/server.key, server.key_secret   the servers' (bus, web journal) key pair
    BUS_KEYS_DIR/client.key, client.key_secret   the key pair every connecting process uses
    BUS_KEYS_DIR/authorized/*.key                public keys of the clients servers accept
"""
from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth

AUTHORIZED = "authorized"


class InsecureBindError(RuntimeError):
    """Binding a non-loopback address without CURVE keys."""


def is_local(address: str) -> bool:
    """ipc://, inproc:// and tcp:// on a loopback address stay on this machine."""
    if not address.startswith("tcp://"):
        return True
    host = urlsplit(address).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name or "*": may be reachable from elsewhere


def check_bind(address: str, keys_dir: Path | None) -> None:
    if keys_dir is None and not is_local(address):
        raise InsecureBindError(f"refusing to bind {address} without encryption: run `python -m bin.keys` and set "
                                "BUS_KEYS_DIR, or use a 127.0.0.1 / ipc:// address")


def make_server(socket: zmq.Socket, keys_dir: Path | None) -> None:
    if keys_dir is not None:
        socket.curve_publickey, socket.curve_secretkey = zmq.auth.load_certificate(keys_dir / "server.key_secret")
        socket.curve_server = True


def make_client(socket: zmq.Socket, keys_dir: Path | None) -> None:
    if keys_dir is not None:
        socket.curve_serverkey, _ = zmq.auth.load_certificate(keys_dir / "server.key")
        socket.curve_publickey, socket.curve_secretkey = zmq.auth.load_certificate(keys_dir / "client.key_secret")


def allow_clients(authenticator, keys_dir: Path | None) -> None:
    """Start a ZAP authenticator (thread or asyncio flavour) accepting only the authorized client keys."""
    if keys_dir is not None:
        authenticator.start()
        authenticator.configure_curve(domain="*", location=str(keys_dir / AUTHORIZED))


def generate(keys_dir: Path) -> None:
    """Create both key pairs (secret files 0600, folder 0700) and authorize the client key."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    keys_dir.chmod(0o700)
    (keys_dir / AUTHORIZED).mkdir(exist_ok=True)
    for name in ("server", "client"):
        public, secret = zmq.auth.create_certificates(keys_dir, name)
        Path(secret).chmod(0o600)
    (keys_dir / AUTHORIZED / "client.key").write_bytes((keys_dir / "client.key").read_bytes())
