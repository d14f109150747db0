"""Reads the environment once, with the documented defaults (see .env.example)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_OLLAMA_PORT = 11434


@dataclass(frozen=True)
class Settings:
    ollama_url: str
    ollama_model: str  # "" means: pick the best installed chat model
    num_ctx: int
    num_predict: int
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
    bus_keys_dir: Path | None  # CURVE keys (see services/curve.py); None: plain sockets, loopback/ipc only
    journal_addr: str  # the web's ROUTER answering catch-up requests
    heartbeat_s: float
    history_window: int  # journal entries a cold-started worker asks for
    log_level: str


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


def load(environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    return Settings(
        ollama_url=ollama_url(env.get("OLLAMA_HOST", "")),
        ollama_model=env.get("OLLAMA_MODEL", "").strip(),
        num_ctx=int(env.get("OLLAMA_NUM_CTX", "4096")),
        num_predict=int(env.get("OLLAMA_NUM_PREDICT", "512")),
        connect_timeout_s=float(env.get("OLLAMA_CONNECT_TIMEOUT_S", "3")),
        first_token_timeout_s=float(env.get("OLLAMA_FIRST_TOKEN_TIMEOUT_S", "300")),
        chunk_timeout_s=float(env.get("OLLAMA_CHUNK_TIMEOUT_S", "60")),
        web_host=env.get("WEB_HOST", "127.0.0.1"),
        web_port=int(env.get("WEB_PORT", "5001")),
        allowed_hosts=[h.strip().lower() for h in env.get("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")
                       if h.strip()],
        actions_per_s=float(env.get("ACTIONS_PER_S", "20")),
        action_burst=int(env.get("ACTION_BURST", "60")),
        data_dir=Path(env.get("DATA_DIR", "./data")),
        bus_pub_addr=env.get("BUS_PUB_ADDR", "tcp://127.0.0.1:5555"),
        bus_sub_addr=env.get("BUS_SUB_ADDR", "tcp://127.0.0.1:5556"),
        bus_keys_dir=Path(env["BUS_KEYS_DIR"]) if env.get("BUS_KEYS_DIR") else None,
        journal_addr=env.get("JOURNAL_ADDR", "tcp://127.0.0.1:5557"),
        heartbeat_s=float(env.get("HEARTBEAT_S", "1.0")),
        history_window=int(env.get("HISTORY_WINDOW", "500")),
        log_level=env.get("LOG_LEVEL", "INFO").upper(),
    )
