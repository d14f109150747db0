"""Reads the environment once, with the documented defaults (see .env.example). Bad values raise ConfigError with a
message that names the variable, so a process can exit with one clear line instead of a traceback."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_OLLAMA_PORT = 11434
RUN_DIR = "run"  # under DATA_DIR, mode 0700: the default bus and journal sockets, and the instance locks
IPC_PATH_MAX = 107  # sun_path is 108 bytes on Linux, with its terminating NUL


class StartupError(RuntimeError):
    """A process cannot start as configured; str() is the one line it logs before exiting with status 2."""


class ConfigError(StartupError):
    """A setting that does not parse or does not fit."""


@dataclass(frozen=True)
class Settings:
    ollama_url: str
    ollama_model: str  # "" means: pick the best installed chat model
    num_ctx: int
    num_predict: int
    keep_alive: str | int  # how long Ollama keeps the model loaded after a request (seconds, or "30m", "-1": forever)
    connect_timeout_s: float
    first_token_timeout_s: float
    chunk_timeout_s: float
    web_host: str
    web_port: int
    allowed_hosts: list[str]  # host names the web answers to (DNS-rebinding guard); the port is added
    actions_per_s: float  # state-changing requests the web accepts per second, sustained
    action_burst: int  # ... and in a burst
    data_dir: Path
    bus_pub_addr: str  # publishers connect here (the bus binds XSUB)
    bus_sub_addr: str  # subscribers connect here (the bus binds XPUB)
    bus_keys_dir: Path | None  # CURVE keys (see services/curve.py); None: plain sockets, ipc:// only
    journal_addr: str  # the web's ROUTER: catch-up and claims
    heartbeat_s: float
    history_window: int  # journal entries a cold-started worker asks for
    log_level: str
    think: bool | str = True  # OLLAMA_THINK: a thinking model's `think` (True, False, "low", "medium", "high")

    @property
    def run_dir(self) -> Path:
        return self.data_dir / RUN_DIR


def ollama_url(host: str) -> str:
    """Normalise OLLAMA_HOST as Ollama's envconfig does: no scheme means http on port 11434, an explicit scheme
    without a port means its standard port, and the bind-all address 0.0.0.0 means loopback when connecting."""
    host = host.strip() or "127.0.0.1"
    default_port = DEFAULT_OLLAMA_PORT
    if "://" not in host:
        host = "http://" + host
    elif host.startswith("https://"):
        default_port = 443
    elif host.startswith("http://"):
        default_port = 80
    parts = urlsplit(host)
    hostname = parts.hostname or "127.0.0.1"
    if hostname in ("0.0.0.0", "::"):
        hostname = "127.0.0.1"
    if ":" in hostname:
        hostname = f"[{hostname}]"
    return f"{parts.scheme}://{hostname}:{parts.port or default_port}{parts.path.rstrip('/')}"


def _number(env, name: str, default: str, kind: type, minimum: float = 0, maximum: float = float("inf")):
    raw = env.get(name, "").strip() or default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a {'whole ' if kind is int else ''}number") from None
    if not minimum <= value <= maximum:  # also refuses NaN
        raise ConfigError(f"{name}={raw!r} must be between {minimum:g} and {maximum:g}")
    return value


def _address(env, name: str, run_dir: Path, socket_name: str) -> str:
    """The configured address, or by default an ipc:// socket in DATA_DIR/run: private to this copy of the app
    (two checkouts never meet) and unreachable from a browser, which can only speak TCP."""
    address = env.get(name, "").strip() or f"ipc://{run_dir.resolve() / socket_name}"
    if not address.startswith(("ipc://", "tcp://")):
        raise ConfigError(f"{name}={address!r}: use ipc:///path or tcp://host:port")
    if address.startswith("ipc://") and len(address.removeprefix("ipc://").encode()) > IPC_PATH_MAX:
        raise ConfigError(f"{name}: the socket path {address.removeprefix('ipc://')!r} is longer than the "
                          f"{IPC_PATH_MAX} bytes Linux allows: use a shorter DATA_DIR, or set {name}")
    return address


def _keep_alive(env) -> str | int:
    raw = env.get("OLLAMA_KEEP_ALIVE", "").strip() or "30m"
    if re.fullmatch(r"-?\d+", raw):
        return int(raw)  # Ollama reads a bare number as seconds
    if not re.fullmatch(r"-?\d+(\.\d+)?(ms|s|m|h)", raw):
        raise ConfigError(f"OLLAMA_KEEP_ALIVE={raw!r}: use seconds or a duration like 30m, 2h (negative: forever)")
    return raw


def load(environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    data_dir = Path(env.get("DATA_DIR", "").strip() or "./data")
    run_dir = data_dir / RUN_DIR
    return Settings(
        ollama_url=ollama_url(env.get("OLLAMA_HOST", "")),
        ollama_model=env.get("OLLAMA_MODEL", "").strip(),
        num_ctx=_number(env, "OLLAMA_NUM_CTX", "4096", int, 256),
        num_predict=_number(env, "OLLAMA_NUM_PREDICT", "512", int, 1),
        keep_alive=_keep_alive(env),
        connect_timeout_s=_number(env, "OLLAMA_CONNECT_TIMEOUT_S", "3", float, 0.1),
        first_token_timeout_s=_number(env, "OLLAMA_FIRST_TOKEN_TIMEOUT_S", "300", float, 0.1),
        chunk_timeout_s=_number(env, "OLLAMA_CHUNK_TIMEOUT_S", "60", float, 0.1),
        web_host=env.get("WEB_HOST", "").strip() or "127.0.0.1",
        web_port=_number(env, "WEB_PORT", "5001", int, 1, 65535),
        allowed_hosts=[h.strip().lower() for h in env.get("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")
                       if h.strip()],
        actions_per_s=_number(env, "ACTIONS_PER_S", "20", float, 0.01),
        action_burst=_number(env, "ACTION_BURST", "60", int, 1),
        data_dir=data_dir,
        bus_pub_addr=_address(env, "BUS_PUB_ADDR", run_dir, "bus-pub"),
        bus_sub_addr=_address(env, "BUS_SUB_ADDR", run_dir, "bus-sub"),
        bus_keys_dir=Path(env["BUS_KEYS_DIR"]) if env.get("BUS_KEYS_DIR", "").strip() else None,
        journal_addr=_address(env, "JOURNAL_ADDR", run_dir, "journal"),
        heartbeat_s=_number(env, "HEARTBEAT_S", "1.0", float, 0.05),
        history_window=_number(env, "HISTORY_WINDOW", "500", int, 1),
        log_level=env.get("LOG_LEVEL", "INFO").strip().upper() or "INFO",
        think=_think(env),
    )


def _think(env) -> bool | str:
    raw = env.get("OLLAMA_THINK", "").strip().lower() or "on"
    levels = {"on": True, "off": False, "low": "low", "medium": "medium", "high": "high"}
    if raw not in levels:
        raise ConfigError(f"OLLAMA_THINK={raw!r}: use on, off, low, medium or high")
    return levels[raw]
