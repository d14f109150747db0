"""The web's event loop hands a token to the tabs in the iteration it arrives (issue 15's reconnecting tabs, issue
16's relay p99): bus messages are handled from the socket's reader callback, a frame is sent without waking a task
when the tab can take it, and WebSockets that connect together are let in one per turn. Each is tested here on its
own, with real sockets where there are any; tests/test_faults.py covers a tab that stops reading."""
from __future__ import annotations

import asyncio

import msgpack
import pytest
import zmq
import zmq.asyncio

from services import protocol
from services.busclient import YIELD_EVERY, Subscriber
from services.protocol import Message
from web.clients import start_now
from web.guard import OneConnectAtATime

WAIT_S = 5


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, WAIT_S))


def test_a_coroutine_that_need_not_wait_finishes_where_it_is_started():
    done = []

    async def send():
        done.append("sent")

    assert start_now(send()) is None
    assert done == ["sent"]


def test_a_coroutine_that_must_wait_is_finished_by_awaiting_the_rest():
    async def scenario():
        ready = asyncio.get_running_loop().create_future()

        async def send():
            before = "started"
            await ready
            return before + ", then sent"

        rest = start_now(send())
        assert rest is not None
        finishing = asyncio.ensure_future(_awaited(rest))
        await asyncio.sleep(0)
        assert not finishing.done()
        ready.set_result(None)
        return await finishing

    assert run(scenario()) == "started, then sent"


def test_cancelling_the_rest_cancels_the_coroutine_where_it_waits():
    async def scenario():
        cleaned = []

        async def send():
            try:
                await asyncio.get_running_loop().create_future()  # never resolved
            finally:
                cleaned.append("cleaned up")

        finishing = asyncio.ensure_future(_awaited(start_now(send())))
        await asyncio.sleep(0)
        finishing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await finishing
        return cleaned

    assert run(scenario()) == ["cleaned up"]


async def _awaited(rest):
    return await rest


class Bus:
    """A PUB socket bound where a Subscriber listens: of the bus, what these tests need."""

    def __init__(self, tmp_path) -> None:
        address = f"ipc://{tmp_path}/pub"
        self.context = zmq.asyncio.Context()
        self.publisher = self.context.socket(zmq.PUB)
        self.publisher.bind(address)
        self.subscriber = Subscriber(address, [protocol.LLM], self.context)

    def send(self, text: str) -> None:
        self.publisher.send_multipart(protocol.encode(Message(protocol.LLM_TOKEN, {"text": text}, "test")))

    async def probe_until(self, heard) -> None:
        """PUB drops what it sends before the subscription reaches it: probes until `heard()`."""
        while not heard():
            self.send(PROBE)
            await asyncio.sleep(0.01)

    def close(self) -> None:
        self.subscriber.close()
        self.publisher.close(linger=0)
        self.context.term()


PROBE = "probe"


def test_bus_messages_are_handled_in_order_and_malformed_ones_are_dropped(tmp_path):
    async def scenario():
        bus = Bus(tmp_path)
        got: list[str] = []
        arrived = asyncio.Event()

        def handle(message: Message) -> None:
            got.append(message.data["text"])
            if message.data["text"] == "last":
                arrived.set()

        dispatching = asyncio.ensure_future(bus.subscriber.dispatch(handle))
        try:
            await bus.probe_until(lambda: got)
            for i in range(120):  # more than one callback's batch (busclient.YIELD_EVERY)
                bus.send(str(i))
                bus.publisher.send_multipart([b"llm.token", msgpack.packb({"not": "an envelope"})])
            bus.send("last")
            await arrived.wait()
        finally:
            dispatching.cancel()
            bus.close()
        return [text for text in got if text != PROBE], bus.subscriber.drops.count

    got, dropped = run(scenario())
    assert got == [str(i) for i in range(120)] + ["last"]
    assert dropped == 120


def test_a_handler_that_raises_ends_the_dispatch_with_its_error(tmp_path):
    async def scenario():
        bus = Bus(tmp_path)

        def handle(message: Message) -> None:
            raise RuntimeError("a bug in the handler")

        dispatching = asyncio.ensure_future(bus.subscriber.dispatch(handle))
        try:
            await bus.probe_until(dispatching.done)
            return dispatching.exception()
        finally:
            bus.close()

    error = run(scenario())
    assert isinstance(error, RuntimeError) and str(error) == "a bug in the handler"


def test_websockets_that_connect_together_are_let_in_one_per_turn_of_the_loop():
    async def scenario():
        let_in: list[tuple[int, int]] = []  # (connection, turn of the loop)
        turn = 0

        async def app(scope, receive, send):
            let_in.append((scope["n"], turn))

        paced = OneConnectAtATime(app)
        connecting = [asyncio.ensure_future(paced({"type": "websocket", "n": n}, None, None)) for n in range(4)]
        connecting[1].cancel()  # a tab that went away while it waited must not stop the line
        while not all(task.done() for task in connecting):
            await asyncio.sleep(0)
            turn += 1
        await paced({"type": "http", "n": 9}, None, None)  # pages are not paced
        return let_in

    let_in = run(scenario())
    assert [n for n, _ in let_in] == [0, 2, 3, 9]
    turns = [t for _, t in let_in[:3]]
    assert turns[0] < turns[1] < turns[2]


def test_no_message_is_handled_once_the_dispatch_has_ended(tmp_path):
    async def scenario():
        bus = Bus(tmp_path)
        probed, got = [], []

        def handle(message: Message) -> None:
            if message.data["text"] == PROBE:
                probed.append(message)
                return
            got.append(message.data["text"])
            if message.data["text"] == "0":
                dispatching.cancel()  # mid-batch, with hundreds more queued behind it

        dispatching = asyncio.ensure_future(bus.subscriber.dispatch(handle))
        try:
            await bus.probe_until(lambda: probed)
            for i in range(500):
                bus.send(str(i))
            with pytest.raises(asyncio.CancelledError):
                await dispatching
            await asyncio.sleep(0.2)  # nothing to await for what must not happen: a drain that outlived it would run
            return got
        finally:
            bus.close()

    got = run(scenario())
    assert got[0] == "0" and len(got) <= YIELD_EVERY  # the batch it was cancelled in, and no other
