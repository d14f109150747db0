"""The bus across machines: CURVE keys made by bin.keys, the whole system running encrypted, outsiders hearing
nothing, and no TCP bind without keys."""
from __future__ import annotations

import stat
import subprocess
import sys

import zmq

from tests.fake_ollama import free_port
from tests.system import ROOT, System, running
from tests.test_system import post


def make_keys(tmp_path):
    keys = tmp_path / "keys"
    result = subprocess.run([sys.executable, "-m", "bin.keys", str(keys)], cwd=ROOT, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    return keys


def test_keys_are_made_with_private_permissions(tmp_path):
    keys = make_keys(tmp_path)
    for secret in ("server.key_secret", "client.key_secret"):
        assert stat.S_IMODE((keys / secret).stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert (keys / "authorized" / "client.key").exists()


def test_the_system_runs_on_an_encrypted_bus_and_an_outsider_hears_nothing(tmp_path, fake_ollama):
    keys = make_keys(tmp_path)
    with running(tmp_path, fake_ollama.url, BUS_KEYS_DIR=str(keys)) as app:
        app.bus.wait_for("llm.status", timeout_s=15, state="ready")  # the keyed watcher hears the worker
        context = zmq.Context()
        outsider = context.socket(zmq.SUB)  # knows the address, not the keys
        outsider.setsockopt(zmq.SUBSCRIBE, b"")
        outsider.connect(app.settings.bus_sub_addr)
        try:
            post(app, "/todos", title="secret plans")
            todo = app.bus.wait_for("journal.todo.added", title="secret plans")
            app.bus.wait_for("journal.reply.saved", timeout_s=15, covers_seq=todo.seq)
            heartbeats_meanwhile = len(app.bus.of_type("llm.status"))
            assert heartbeats_meanwhile > 2
            assert outsider.poll(1000) == 0  # several heartbeats, actions and tokens later: not one frame
        finally:
            outsider.close(linger=0)
            context.term()


def test_a_tcp_bind_without_keys_is_refused_even_on_loopback(tmp_path):
    for address in (f"tcp://0.0.0.0:{free_port()}", f"tcp://127.0.0.1:{free_port()}"):
        app = System(tmp_path, "http://127.0.0.1:9", BUS_PUB_ADDR=address)
        bus = app.start_bus()
        assert bus.popen.wait(10) == 2
        assert "refusing to bind" in bus.log() and "bin.keys" in bus.log()
