"""Attach to the running bus and print every message: `python -m bin.tap` (pretty) or `python -m bin.tap --jsonl`.
A tap is just one more subscriber: attach and detach at any time without restarting anything."""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path

import zmq.asyncio

from services import config, logs
from services.busclient import Subscriber
from services.protocol import Message


def pretty(message: Message) -> str:
    clock = time.strftime("%H:%M:%S", time.localtime(message.ts)) + f".{int(message.ts * 1000) % 1000:03d}"
    seq = f" #{message.seq}" if message.seq is not None else ""
    data = " ".join(f"{key}={value!r}" for key, value in message.data.items())
    return f"{clock} {message.type:<22}{seq} [{message.src}] {data}"


def as_json(message: Message) -> str:
    return json.dumps(message.envelope(), ensure_ascii=False, default=repr)


async def tap(address: str, topics: list[str], jsonl: bool, keys_dir: Path | None) -> None:
    context = zmq.asyncio.Context()
    subscriber = Subscriber(address, topics, context, keys_dir)
    try:
        while True:
            message = await subscriber.receive()
            print(as_json(message) if jsonl else pretty(message), flush=True)
    finally:
        subscriber.close()
        context.term()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    settings = config.load()
    parser = argparse.ArgumentParser(prog="python -m bin.tap", description=__doc__)
    parser.add_argument("--jsonl", action="store_true", help="one JSON object per line instead of pretty text")
    parser.add_argument("--bus", default=settings.bus_sub_addr, help="the bus's subscriber address (BUS_SUB_ADDR)")
    parser.add_argument("topics", nargs="*", default=[""], help="topic prefixes to show (default: everything)")
    args = parser.parse_args(argv)
    logs.setup("tap", settings.log_level)
    signal.signal(signal.SIGTERM, _interrupt)  # end quietly, like Ctrl-C
    try:
        asyncio.run(tap(args.bus, args.topics, args.jsonl, settings.bus_keys_dir))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
