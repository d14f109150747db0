"""The bus: a ZeroMQ XSUB/XPUB proxy. Publishers connect to its XSUB side, subscribers to its XPUB side, so no other
process binds a pub/sub address and start order does not matter. Run it with `python -m services.bus`."""
from __future__ import annotations

import signal
import sys

import zmq

from services import config, logs
from services.busclient import HWM_MESSAGES


def _stop(signum, frame):
    raise SystemExit(0)  # surfaces out of zmq.proxy, which retries EINTR only after running signal handlers


def main(argv: list[str] | None = None) -> int:
    settings = config.load()
    log = logs.setup("bus", settings.log_level)
    signal.signal(signal.SIGTERM, _stop)
    context = zmq.Context()
    frontend = context.socket(zmq.XSUB)  # publishers connect here
    backend = context.socket(zmq.XPUB)  # subscribers connect here
    for sock in (frontend, backend):
        sock.setsockopt(zmq.RCVHWM, HWM_MESSAGES)
        sock.setsockopt(zmq.SNDHWM, HWM_MESSAGES)
        sock.setsockopt(zmq.LINGER, 0)
    try:
        frontend.bind(settings.bus_pub_addr)
        backend.bind(settings.bus_sub_addr)
    except zmq.ZMQError as error:
        log.error("cannot bind %s / %s: %s (is another bus running? set BUS_PUB_ADDR / BUS_SUB_ADDR)",
                  settings.bus_pub_addr, settings.bus_sub_addr, error)
        return 2
    log.info("bus up: publishers → %s, subscribers → %s", settings.bus_pub_addr, settings.bus_sub_addr)
    try:
        zmq.proxy(frontend, backend)
    except (SystemExit, KeyboardInterrupt):
        log.info("bus stopping")
    except zmq.ContextTerminated:
        pass
    finally:
        frontend.close(linger=0)
        backend.close(linger=0)
        context.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
