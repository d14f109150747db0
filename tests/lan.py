"""A private network for tests of "another device on the same network": a network namespace joined to this one by a
veth pair, both made by the test and removed however it ends. The web runs inside the namespace (bound to all of its
addresses: its own loopback and its end of the pair); the test, on the other end, is the phone. No traffic goes to any
address but the pair's and loopback. Needs root and iproute2; tests skip with the reason otherwise."""
from __future__ import annotations

import ipaddress
import os
import random
import secrets
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import pytest

IP_TIMEOUT_S = 10


@dataclass(frozen=True)
class PrivateNetwork:
    namespace: str
    phone_address: str  # this side of the pair: where the test's requests come from
    web_address: str  # the namespace's side: where the web listens

    def command(self, *args: str) -> list[str]:
        """`args` run inside the namespace."""
        return ["ip", "netns", "exec", self.namespace, *args]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=IP_TIMEOUT_S)


def _unused_subnet() -> ipaddress.IPv4Network:
    """A /30 in 10.200.0.0/13 that no interface here uses (tests run in parallel: each picks its own)."""
    taken = subprocess.run(["ip", "-4", "-o", "addr"], check=True, capture_output=True, text=True,
                           timeout=IP_TIMEOUT_S).stdout
    networks = [ipaddress.ip_interface(field).network for line in taken.splitlines()
                for field in line.split()[3:4]]
    while True:
        subnet = ipaddress.ip_network(f"10.{random.randint(200, 207)}.{random.randint(0, 255)}."
                                      f"{random.randrange(0, 256, 4)}/30")
        if not any(subnet.overlaps(network) for network in networks):
            return subnet


@contextmanager
def private_network() -> Iterator[PrivateNetwork]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2's `ip` to make a network namespace that plays the phone's network")
    suffix = secrets.token_hex(4)
    namespace, phone_link, web_link = f"todo-{suffix}", f"tp{suffix}", f"tw{suffix}"  # names: 15 bytes at most
    phone, web = (str(address) for address in _unused_subnet().hosts())
    try:
        _ip("netns", "add", namespace)
        _ip("link", "add", phone_link, "type", "veth", "peer", "name", web_link)
        _ip("link", "set", web_link, "netns", namespace)
        _ip("addr", "add", f"{phone}/30", "dev", phone_link)
        _ip("link", "set", phone_link, "up")
        for args in (("addr", "add", f"{web}/30", "dev", web_link), ("link", "set", web_link, "up"),
                     ("link", "set", "lo", "up")):
            _ip("netns", "exec", namespace, "ip", *args)
        yield PrivateNetwork(namespace, phone, web)
    finally:
        subprocess.run(["ip", "link", "del", phone_link], capture_output=True, timeout=IP_TIMEOUT_S)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=IP_TIMEOUT_S)
