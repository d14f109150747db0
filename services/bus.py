"""The bus: a ZeroMQ XSUB/XPUB proxy. Publishers connect to its XSUB side, subscribers to its XPUB side, so no other
process binds a pub/sub address and start order does not matter. Run it with `python -m services.bus`."""
from __future__ import annotations

import signal
import sys
import threading

import zmq
from zmq.auth.thread import ThreadAuthenticator

from services import config, curve, instance, logs
from services.busclient import HWM_MESSAGES, MAX_MESSAGE_BYTES
from services.config import StartupError

CONTROL_ADDR = "inproc://bus-control"
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}  # SIGHUP: the terminal honcho ran in was closed


def _forward(frontend: zmq.Socket, backend: zmq.Socket, control: zmq.Socket) -> None:
    zmq.proxy_steerable(frontend, backend, None, control)  # returns when TERMINATE arrives on `control`


def main(argv: list[str] | None = None) -> int:
    log = logs.setup("bus")
    # Signals are taken synchronously with sigwait below. A handler that raises out of zmq.proxy only works when the
    # signal lands inside its poll call; one arriving mid-forward would be lost and the bus would ignore SIGTERM.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        settings = config.load()
        logs.setup("bus", settings.log_level)
        for address in (settings.bus_pub_addr, settings.bus_sub_addr):
            curve.check_bind(address, settings.bus_keys_dir)
        with instance.hold_lock(settings, "bus"):
            return serve(settings, log)
    except StartupError as error:
        log.error("%s", error)
        return 2


def serve(settings: config.Settings, log) -> int:
    context = zmq.Context()
    frontend = context.socket(zmq.XSUB)  # publishers connect here
    backend = context.socket(zmq.XPUB)  # subscribers connect here
    frontend.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    for sock in (frontend, backend):
        try:
            curve.make_server(sock, settings.bus_keys_dir)
        except StartupError:
            context.destroy(linger=0)
            raise
        sock.setsockopt(zmq.RCVHWM, HWM_MESSAGES)
        sock.setsockopt(zmq.SNDHWM, HWM_MESSAGES)
        sock.setsockopt(zmq.LINGER, 0)
    authenticator = ThreadAuthenticator(context)
    curve.allow_clients(authenticator, settings.bus_keys_dir)
    try:
        frontend.bind(settings.bus_pub_addr)
        backend.bind(settings.bus_sub_addr)
    except zmq.ZMQError as error:
        if authenticator.is_alive():
            authenticator.stop()
        context.destroy(linger=0)
        raise StartupError(f"cannot bind {settings.bus_pub_addr} / {settings.bus_sub_addr}: {error} (is something "
                           "else using them? set BUS_PUB_ADDR / BUS_SUB_ADDR)") from None
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
