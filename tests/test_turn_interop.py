"""Interop with coturn (Debian), an independent RFC 6062 implementation.

- Our TURN client (CMS side), with CreatePermission on as a strict server needs, runs the passive
  flow against coturn on the live runtime and moves bytes both ways.
- coturn's own test client, turnutils_uclient, runs against our TURN server (rfc permission
  policy) with -T (client-to-client through Connect) and -P (passive: peers connect in).
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from labsim.net.live import LiveNetwork, claim_block
from labsim.proto.events import Actor, Address
from labsim.proto.turn_client import TurnClientSettings
from labsim.proto.turn_server import TurnServer, TurnServerSettings
from labsim.trace import Trace

from .conftest import require_tool
from .coturn import coturn
from .stun_client import free_port, free_range, wait_listening
from .turn_actors import Board, CmsLike, SkypePeer

pytestmark = pytest.mark.coturn
EXPE = Address("10.48.54.229", 3478)


def test_our_client_against_coturn(tmp_path: Path) -> None:
    with coturn(tmp_path) as server:
        board = Board()
        # coturn sees real loopback addresses: the Skype side is a loopback address (in
        # coturn's block, so no other run has it), and that is the address CMS must give
        # permission to (in the lab it would be 192.168.1.252).
        peer = server.block.address(5)
        settings = TurnClientSettings(create_permission=True)
        actors: list[Actor] = [
            CmsLike("10.48.54.230", settings, board, server=EXPE, hangup_after=1.5, peer_host=peer),
            SkypePeer(peer, board),
        ]
        trace = Trace()
        LiveNetwork(actors, trace, external={EXPE: (server.host, server.port)}).run(
            until=10.0, stop=lambda _t: board.done
        )
    lines = [s for s, _, _ in trace.sequence(relayed=False)]
    assert lines[0] == "Allocate Request TCP lifetime: 600"
    assert lines[1].startswith("Allocate Error Response error-code: 401 (Unauthenticated)")
    assert any(s.startswith("Allocate Success Response") for s in lines)
    assert "CreatePermission Success Response" in lines
    assert any(
        s.startswith(f"ConnectionAttempt Indication XOR-PEER-ADDRESS: {peer}:") for s in lines
    )
    assert "ConnectionBind Success Response" in lines
    assert board.relayed is not None and board.relayed.host == server.host
    # Both checks crossed coturn's relay and were answered.
    assert board.checks_answered == 1
    assert b"\x01\x01" in bytes(board.peer_bytes)
    assert board.released
    assert lines[-1] == "Refresh Success Response lifetime: 0"


def _uclient(flags: list[str], host: str, port: int) -> subprocess.CompletedProcess[str]:
    uclient = require_tool("turnutils_uclient")
    cmd = [uclient, *flags, "-u", "turn", "-w", "secret", "-p", str(port), host]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _serve(
    host: str,
    port: int,
    relays: range,
    until: float,
    finished: threading.Event,
    relay_to_self: bool = False,
) -> tuple[threading.Thread, dict[str, Trace]]:
    """Our TURN server on loopback address ``host`` (its lab address too) in a thread with its
    own event loop, until ``finished`` is set (checked at the server's next event) or
    ``until`` seconds."""
    settings = TurnServerSettings(
        port=port,
        relay_ports=(relays.start, relays.stop - 1),
        permission_policy="rfc",
        relay_to_self=relay_to_self,
    )
    out: dict[str, Trace] = {}

    def run() -> None:
        trace = Trace()
        LiveNetwork([TurnServer("expressway_e", host, settings).actor()], trace).run(
            until=until, stop=lambda _t: finished.is_set()
        )
        out["trace"] = trace

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _lost(output: str) -> int:
    match = re.search(r"Total lost packets (\d+)", output)
    assert match, output[-2000:]
    return int(match.group(1))


def _against_ours(
    flags: list[str], relay_to_self: bool = False
) -> tuple[subprocess.CompletedProcess[str], Trace]:
    # A block of our own for the server (a loopback lab host is its own address), as coturn
    # gets one: its port and relay range cannot be taken by a parallel test meanwhile.
    with claim_block() as block:
        host = block.address(1)
        port = free_port(host)
        relays = free_range(40, host, avoid=port)
        finished = threading.Event()
        thread, out = _serve(host, port, relays, 40.0, finished, relay_to_self)
        try:
            wait_listening(host, port, "our TURN server", 5.0)
            result = _uclient(flags, host, port)
        finally:
            finished.set()
            with contextlib.suppress(OSError):  # an event, so the server sees `finished`
                socket.create_connection((host, port), timeout=1).close()
            thread.join(timeout=30)
    return result, out["trace"]


def test_turnutils_uclient_tcp_relay_against_our_server() -> None:
    """-T: client to client through Connect + ConnectionBind; 4 clients, 10 messages each.
    Each client Connects to another client's relay on this same server, which the default
    policy refuses (403, relay_to_self); coturn allows it with --allow-loopback-peers."""
    flags = ["-T", "-m", "4", "-n", "10", "-l", "120"]
    result, trace = _against_ours(flags, relay_to_self=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-2000:]
    assert _lost(output) == 0, output[-2000:]
    lines = [m.summary for m in trace.messages if m.protocol == "STUN"]
    connects = sum(s.startswith("Connect Success Response") for s in lines)
    attempts = sum(s.startswith("ConnectionAttempt Indication") for s in lines)
    binds = sum(s.startswith("ConnectionBind Success Response") for s in lines)
    # Each client connects out (Connect) and is connected to (ConnectionAttempt): both bind.
    assert connects >= 4 and binds == connects + attempts, (connects, attempts, binds)


def test_turnutils_uclient_passive_like_coturn(tmp_path: Path) -> None:
    """-P: peers connect in (ConnectionAttempt + ConnectionBind, the lab's direction).
    turnutils_uclient 4.6.1 on loopback reports half its packets lost with coturn itself, so
    the check is differential: our server must give exactly what coturn gives."""
    flags = ["-P", "-m", "2", "-n", "4", "-l", "120"]
    ours, trace = _against_ours(flags)
    with coturn(tmp_path) as server:
        theirs = _uclient(flags, server.host, server.port)
    our_out, their_out = ours.stdout + ours.stderr, theirs.stdout + theirs.stderr
    assert ours.returncode == theirs.returncode == 0, (our_out[-1500:], their_out[-1500:])
    assert _lost(our_out) == _lost(their_out), (our_out[-1500:], their_out[-1500:])
    received = re.compile(r"tot_recv_msgs=(\d+)")
    assert received.findall(our_out)[-1] == received.findall(their_out)[-1]
    lines = [m.summary for m in trace.messages if m.protocol == "STUN"]
    assert any(s.startswith("ConnectionAttempt Indication") for s in lines)
    assert any(s.startswith("ConnectionBind Success Response") for s in lines)
