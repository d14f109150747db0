"""Instances that never cross, and a perimeter nothing from outside gets through: the default bus is ipc:// in
DATA_DIR, two copies side by side never meet, a second copy on one DATA_DIR or a taken port is refused with one
clear line, and bytes a browser can send (an HTTP request carrying ZMTP/1.0 frames) never reach the bus."""
from __future__ import annotations

import socket
import stat
import sys
from pathlib import Path

import httpx
import pytest

from tests.fake_ollama import free_port
from tests.system import System, running
from tests.test_curve import make_keys
from tests.test_system import post

# An ordinary HTTP POST, as a `no-cors` fetch() from any web page can send it, whose body is a sled of empty ZMTP/1.0
# frames and then an `llm.error` message: a plain libzmq socket without ZAP parses it as valid frames. The one-byte
# pad is the alignment that makes the sled land on frame boundaries after the request line (found by trying).
SLED = b"x" + b"\x01\x00" * 500


def cross_protocol_request(host: str, port: int, topic: bytes, payload: bytes) -> bytes:
    body = SLED + bytes([len(topic) + 1, 1]) + topic + bytes([len(payload) + 1, 0]) + payload
    return (b"POST / HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
            % (host.encode(), port, len(body)) + body)


def listening_tcp_ports(pids: list[int]) -> set[int]:
    """TCP ports in LISTEN state owned by these processes, read from /proc like `ss -ltnp` does."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = fd.readlink().as_posix()
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def send_cross_protocol_payload(port: int) -> None:
    from services import protocol
    frames = protocol.encode(protocol.Message(protocol.LLM_ERROR, {"reply_id": "rx", "message": "INJECTED"}, "evil"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(cross_protocol_request("127.0.0.1", port, *frames))
        connection.settimeout(2)
        try:
            connection.recv(1024)  # the web answers; a ZeroMQ socket with ZAP hangs up
        except (TimeoutError, ConnectionError):
            pass


def assert_payload_never_arrives(app: System) -> None:
    pids = [process.pid for process in app.processes.values()]
    ports = listening_tcp_ports(pids)
    assert app.web_port in ports
    for port in ports:
        send_cross_protocol_payload(port)
    # A marker sent after the payloads, through the same bus: once it is seen, the payloads had their chance.
    post(app, "/todos", title="marker")
    app.bus.wait_for("journal.todo.added", title="marker")
    assert not [m for m in app.bus.of_type("llm.error") if m.data.get("message") == "INJECTED"]


def test_by_default_the_only_tcp_port_is_the_page_and_the_bus_is_private_ipc(tmp_path, fake_ollama):
    with running(tmp_path, fake_ollama.url) as app:
        app.bus.wait_for("llm.status", timeout_s=15, state="ready")
        pids = [process.pid for process in app.processes.values()]
        assert listening_tcp_ports(pids) == {app.web_port}
        assert app.settings.bus_pub_addr.startswith("ipc://" + str(app.data_dir.resolve()))
        assert stat.S_IMODE((app.data_dir / "run").stat().st_mode) == 0o700
        assert_payload_never_arrives(app)


def test_a_cross_protocol_request_to_any_tcp_port_of_a_tcp_bus_reaches_nothing(tmp_path, fake_ollama):
    keys = make_keys(tmp_path)
    addresses = {name: f"tcp://127.0.0.1:{free_port()}" for name in ("BUS_PUB_ADDR", "BUS_SUB_ADDR", "JOURNAL_ADDR")}
    with running(tmp_path, fake_ollama.url, BUS_KEYS_DIR=str(keys), **addresses) as app:
        app.bus.wait_for("llm.status", timeout_s=15, state="ready")
        assert len(listening_tcp_ports([p.pid for p in app.processes.values()])) == 4  # page, bus ×2, journal
        assert_payload_never_arrives(app)


def test_two_copies_side_by_side_never_see_each_others_messages(tmp_path, fake_ollama):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with running(tmp_path / "a", fake_ollama.url) as first, running(tmp_path / "b", fake_ollama.url) as second:
        for app in (first, second):
            app.bus.wait_for("llm.status", timeout_s=15, state="ready")
        post(first, "/todos", title="only in the first")
        post(second, "/todos", title="only in the second")
        first.bus.wait_for("journal.reply.saved", timeout_s=15)
        second.bus.wait_for("journal.reply.saved", timeout_s=15)
        for app, other in ((first, second), (second, first)):
            titles = [m.data["title"] for m in app.bus.of_type("journal.todo.added")]
            assert titles == [f"only in the {'first' if app is first else 'second'}"]
            assert f"only in the {'first' if other is first else 'second'}" not in httpx.get(app.url, timeout=5).text
        workers = {name: {m.data["worker_id"] for m in app.bus.of_type("llm.status")}
                   for name, app in (("first", first), ("second", second))}
        assert len(workers["first"]) == len(workers["second"]) == 1 and not workers["first"] & workers["second"]


@pytest.mark.parametrize("process", ["bus", "web"])
def test_a_second_copy_on_the_same_data_dir_refuses_to_start_with_one_message(tmp_path, fake_ollama, process):
    with running(tmp_path, fake_ollama.url) as app:
        app.bus.wait_for("llm.status", timeout_s=15, state="ready")
        twin = System(tmp_path / "twin", fake_ollama.url, DATA_DIR=str(app.data_dir))
        (tmp_path / "twin").mkdir()
        started = twin.start(process, sys.executable, "-m", "services.bus" if process == "bus" else "web")
        assert started.popen.wait(10) == 2
        errors = [line for line in started.log().splitlines() if " ERROR " in line]
        assert len(errors) == 1 and f"another {process} is already running on DATA_DIR" in errors[0]
        assert "Traceback" not in started.log()
        post(app, "/todos", title="the first copy still works")
        app.bus.wait_for("journal.reply.saved", timeout_s=15)


def test_a_port_in_use_or_a_bad_setting_ends_the_web_with_one_clear_line(tmp_path):
    taken = socket.create_server(("127.0.0.1", 0))
    cases = {
        "port": ({"WEB_PORT": str(taken.getsockname()[1])}, "already in use"),
        "setting": ({"WEB_PORT": "five thousand"}, "WEB_PORT='five thousand' is not a whole number"),
        "data_dir": ({"DATA_DIR": str(tmp_path / "a-file" / "data")}, "is not writable"),
        # Beyond loopback, but no Host a phone could send is allowed: refused before anything listens.
        "lan": ({"WEB_HOST": "0.0.0.0"}, "ALLOWED_HOSTS names no address another device would use"),
    }
    (tmp_path / "a-file").write_text("not a folder")
    try:
        for name, (overrides, expected) in cases.items():
            (tmp_path / name).mkdir()
            app = System(tmp_path / name, "http://127.0.0.1:9", **overrides)
            web = app.start("web", sys.executable, "-m", "web")
            assert web.popen.wait(10) == 2, web.log()
            errors = [line for line in web.log().splitlines() if " ERROR " in line]
            assert len(errors) == 1 and expected in errors[0], web.log()
            assert "Traceback" not in web.log()
    finally:
        taken.close()
