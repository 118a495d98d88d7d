"""A relay never buffers without bound: when the reader of a relayed TCP pipe stops reading, the
live runtime stops reading the other side, and the fast sender is held back by TCP itself.

Our TURN server on live sockets, a passive RFC 6062 pipe (Allocate, peer connects,
ConnectionAttempt, ConnectionBind), then the peer writes as fast as it can while the client's
data connection never reads. Without backpressure the server would read everything and queue it
in the data connection's write buffer (hundreds of MB in a few seconds); with it the peer's
writes stop once the kernel buffers on both legs are full.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

from labsim.net.live import LiveNetwork
from labsim.net.runtime import guess_framing
from labsim.proto.turn_server import TurnServer, TurnServerSettings
from labsim.trace import Trace
from labsim.wire import stun

from .stun_client import KEY, Control, authed

PORT = 34795
LIMIT = 256 * 1024 * 1024  # what the peer tries to push
BOUND = 64 * 1024 * 1024  # what may get through to buffers when nobody reads


def _flood(host: str, result: dict[str, object]) -> None:
    try:
        control = Control((host, PORT))
        challenge = control.transact(
            stun.Message.request(stun.Method.ALLOCATE, [stun.RequestedTransport(6)])
        )
        nonce = challenge.get(stun.Nonce)
        assert nonce is not None
        ok = control.transact(
            authed(stun.Method.ALLOCATE, [stun.RequestedTransport(6)], nonce.value), KEY
        )
        relayed = ok.get(stun.XorRelayedAddress)
        assert relayed is not None, ok.summary()
        peer = socket.create_connection((host, relayed.port), timeout=5)
        connection_id = control.receive().get(stun.ConnectionId)  # the ConnectionAttempt
        assert connection_id is not None
        data = Control((host, PORT), max_messages=1)  # then raw bytes, never read
        bound = data.transact(
            authed(stun.Method.CONNECTION_BIND, [connection_id], nonce.value), KEY
        )
        assert bound.cls is stun.Class.SUCCESS, bound.summary()
        peer.setblocking(False)
        chunk = b"\x00" * 65536
        sent, idle_since = 0, None
        deadline = time.monotonic() + 8
        while sent < LIMIT and time.monotonic() < deadline:
            try:
                sent += peer.send(chunk)
                idle_since = None
            except BlockingIOError:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 1.0:
                    break  # held back for a second: the pipe is full
                time.sleep(0.005)
        result["sent"] = sent
        peer.close()
        data.close()
        control.close()
    except BaseException as exc:  # reported by the test
        result["error"] = exc


async def test_a_reader_that_stops_holds_the_writer_back() -> None:
    settings = TurnServerSettings(port=PORT, relay_ports=(34796, 34799))
    net = LiveNetwork([TurnServer("expressway_e", "10.48.54.229", settings).actor()], Trace())
    result: dict[str, object] = {}
    # Expressway-E's address in this run's loopback block.
    host = net.loopback_of("10.48.54.229")
    flood = threading.Thread(target=_flood, args=(host, result), daemon=True)
    started = threading.Event()
    run = asyncio.create_task(
        net.arun(15, stop=lambda _t: started.is_set() and not flood.is_alive())
    )
    await asyncio.sleep(0.2)
    flood.start()
    started.set()
    await asyncio.wait_for(run, timeout=20)
    flood.join(timeout=5)
    assert "error" not in result, result.get("error")
    sent = result["sent"]
    assert isinstance(sent, int)
    assert net.read_pauses >= 1
    assert 0 < sent < BOUND, f"{sent / 2**20:.0f} MiB went into buffers"


def test_bytes_from_a_peer_outside_the_run_are_framed_by_their_first_bytes() -> None:
    assert guess_framing(bytes.fromhex("000300082112a442") + b"\0" * 12) == "stun"
    assert guess_framing(bytes.fromhex("006c000100582112a442")) == "rfc4571"
    assert guess_framing(b"INVITE sip:meeting@cms.lab SIP/2.0\r\nVia: ...") == "sip"
    assert guess_framing(b"SIP/2.0 200 OK\r\n") == "sip"
    assert guess_framing(b"GET / HTTP/1.1\r\n") == "raw"


async def test_an_outside_clients_first_allocate_is_traced_as_stun() -> None:
    # Before, the trace framed a peer outside the run by what our end had sent: nothing yet,
    # so the first Allocate of coturn's or the bench's client showed as "TCP data, 36 bytes".
    port = PORT + 10
    settings = TurnServerSettings(port=port, relay_ports=(port + 1, port + 2))
    net = LiveNetwork([TurnServer("expressway_e", "10.48.54.229", settings).actor()], Trace())
    done = threading.Event()
    host = net.loopback_of("10.48.54.229")

    def allocate() -> None:
        try:
            control = Control((host, port))
            control.transact(
                stun.Message.request(stun.Method.ALLOCATE, [stun.RequestedTransport(6)])
            )
            control.close()
        finally:
            done.set()

    run = asyncio.create_task(net.arun(10, stop=lambda _t: done.is_set()))
    await asyncio.sleep(0.2)
    client = threading.Thread(target=allocate, daemon=True)
    client.start()
    trace = await asyncio.wait_for(run, timeout=15)
    client.join(timeout=5)
    assert [m.summary.split(" error-code")[0] for m in trace.messages][:2] == [
        "Allocate Request TCP",
        "Allocate Error Response",
    ]
