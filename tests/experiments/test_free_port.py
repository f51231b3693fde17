"""free_port: a free loopback port outside the kernel's ephemeral range."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from experiments.prometheus_server import free_port


def test_ports_are_below_the_ephemeral_range_bindable_and_rarely_repeat() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(20)]
    assert all(p < low for p in ports)
    assert len(set(ports)) >= 18  # bind(0) gave 8 distinct of 10 here (3 x the same port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[0]))


def test_a_port_in_use_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", free_port()))
        held.listen()
        taken = held.getsockname()[1]
        other = free_port()
        picks = iter([taken, other])
        monkeypatch.setattr("experiments.prometheus_server.random.randrange", lambda a, b: next(picks))
        assert free_port() == other
