"""The bus: a ZeroMQ XSUB/XPUB proxy. Publishers connect to its XSUB side, subscribers to its XPUB side, so no other
process binds a pub/sub address and start order does not matter. Run it with `python -m services.bus`."""
from __future__ import annotations

import signal
import sys
import threading

import zmq
from zmq.auth.thread import ThreadAuthenticator

from services import config, curve, logs
from services.busclient import HWM_MESSAGES, MAX_MESSAGE_BYTES

CONTROL_ADDR = "inproc://bus-control"
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _forward(frontend: zmq.Socket, backend: zmq.Socket, control: zmq.Socket) -> None:
    zmq.proxy_steerable(frontend, backend, None, control)  # returns when TERMINATE arrives on `control`


def main(argv: list[str] | None = None) -> int:
    settings = config.load()
    log = logs.setup("bus", settings.log_level)
    # Signals are taken synchronously with sigwait below. A handler that raises out of zmq.proxy only works when the
    # signal lands inside its poll call; one arriving mid-forward would be lost and the bus would ignore SIGTERM.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        for address in (settings.bus_pub_addr, settings.bus_sub_addr):
            curve.check_bind(address, settings.bus_keys_dir)
    except curve.InsecureBindError as error:
        log.error("%s", error)
        return 2
    context = zmq.Context()
    authenticator = ThreadAuthenticator(context)
    curve.allow_clients(authenticator, settings.bus_keys_dir)
    frontend = context.socket(zmq.XSUB)  # publishers connect here
    backend = context.socket(zmq.XPUB)  # subscribers connect here
    frontend.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    for sock in (frontend, backend):
        curve.make_server(sock, settings.bus_keys_dir)
        sock.setsockopt(zmq.RCVHWM, HWM_MESSAGES)
        sock.setsockopt(zmq.SNDHWM, HWM_MESSAGES)
        sock.setsockopt(zmq.LINGER, 0)
    try:
        frontend.bind(settings.bus_pub_addr)
        backend.bind(settings.bus_sub_addr)
    except zmq.ZMQError as error:
        log.error("cannot bind %s / %s: %s (is another bus running? set BUS_PUB_ADDR / BUS_SUB_ADDR)",
                  settings.bus_pub_addr, settings.bus_sub_addr, error)
        if authenticator.is_alive():
            authenticator.stop()
        context.destroy(linger=0)
        return 2
    stopper = context.socket(zmq.PAIR)
    stopper.bind(CONTROL_ADDR)
    control = context.socket(zmq.PAIR)
    control.connect(CONTROL_ADDR)
    forwarder = threading.Thread(target=_forward, args=(frontend, backend, control), name="proxy")
    forwarder.start()
    log.info("bus up: publishers → %s, subscribers → %s", settings.bus_pub_addr, settings.bus_sub_addr)
    signal.sigwait(STOP_SIGNALS)
    log.info("bus stopping")
    stopper.send(b"TERMINATE")
    forwarder.join(timeout=2)
    if authenticator.is_alive():
        authenticator.stop()
    context.destroy(linger=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
