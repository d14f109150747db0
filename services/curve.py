"""ZeroMQ CURVE for the bus and the journal socket: encryption plus a list of allowed clients, for when they must
cross machines. Keys live in BUS_KEYS_DIR (made by `python -m bin.keys`). Without keys only ipc:// may be bound:
a plain TCP socket, even on loopback, would let every local user read the journal, and would let any web page the
person visits write onto the bus (a browser's HTTP request parses as ZMTP/1.0 frames; see make_server).

    BUS_KEYS_DIR/server.key, server.key_secret   the servers' (bus, web journal) key pair
    BUS_KEYS_DIR/client.key, client.key_secret   the key pair every connecting process uses
    BUS_KEYS_DIR/authorized/*.key                public keys of the clients servers accept
"""
from __future__ import annotations

from pathlib import Path

import zmq
import zmq.auth

from services.config import StartupError

AUTHORIZED = "authorized"
# A ZAP domain on every bound socket: with it libzmq refuses ZMTP/1.0 peers, the unauthenticated framing that the
# bytes of an ordinary HTTP request can be made to parse as.
ZAP_DOMAIN = b"todo-with-attitude"


class InsecureBindError(StartupError):
    """Binding a TCP address without CURVE keys."""


def check_bind(address: str, keys_dir: Path | None) -> None:
    if keys_dir is None and address.startswith("tcp://"):
        raise InsecureBindError(f"refusing to bind {address} without encryption: TCP is for a bus that crosses "
                                "machines; run `python -m bin.keys` and set BUS_KEYS_DIR, or leave the address unset "
                                "for the private ipc:// default")


def make_server(socket: zmq.Socket, keys_dir: Path | None) -> None:
    socket.zap_domain = ZAP_DOMAIN
    if keys_dir is not None:
        socket.curve_publickey, socket.curve_secretkey = _load(keys_dir / "server.key_secret")
        socket.curve_server = True


def make_client(socket: zmq.Socket, keys_dir: Path | None) -> None:
    if keys_dir is not None:
        socket.curve_serverkey, _ = _load(keys_dir / "server.key")
        socket.curve_publickey, socket.curve_secretkey = _load(keys_dir / "client.key_secret")


def _load(path: Path) -> tuple[bytes, bytes | None]:
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as error:
        raise StartupError(f"cannot read the CURVE key {path} ({error}): make keys with `python -m bin.keys DIR` "
                           "and set BUS_KEYS_DIR=DIR") from None


def allow_clients(authenticator, keys_dir: Path | None) -> None:
    """Start a ZAP authenticator (thread or asyncio flavour) accepting only the authorized client keys."""
    if keys_dir is not None:
        authenticator.start()
        authenticator.configure_curve(domain=ZAP_DOMAIN.decode(), location=str(keys_dir / AUTHORIZED))


def generate(keys_dir: Path) -> None:
    """Create both key pairs (secret files 0600, folder 0700) and authorize the client key."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    keys_dir.chmod(0o700)
    (keys_dir / AUTHORIZED).mkdir(exist_ok=True)
    for name in ("server", "client"):
        public, secret = zmq.auth.create_certificates(keys_dir, name)
        Path(secret).chmod(0o600)
    (keys_dir / AUTHORIZED / "client.key").write_bytes((keys_dir / "client.key").read_bytes())
