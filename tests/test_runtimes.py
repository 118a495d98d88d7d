"""The two runtimes carry the same actors out the same way: live (loopback sockets) and virtual.

Small actors defined here (echo and sink servers, a client, timers, a crashing server, a STUN
responder) drive both runtimes; the assertions read what the actors saw and what the trace
recorded. Live-only tests check the loopback rules (no socket off 127.0.0.0/8, lab addresses
reported back), clean-up (no file descriptor or task left) and many idle connections.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from labsim.net.live import LiveNetwork, NonLoopbackError
from labsim.net.virtual import VirtualNetwork
from labsim.proto.events import (
    Accepted,
    Address,
    Close,
    Closed,
    Connect,
    Connected,
    ConnectFailed,
    Effect,
    Event,
    Listen,
    ListenFailed,
    Listening,
    Log,
    Received,
    Send,
    Started,
    StartTimer,
    StopTimer,
    TimerFired,
    Unlisten,
)
from labsim.trace import Trace
from labsim.wire import stun
from labsim.wire.framing import StunSplitter

from .stun_client import free_port as free_loopback_port

SERVER_HOST = "10.48.54.229"  # Expressway-E in the lab
CLIENT_HOST = "192.168.1.252"  # the Skype Edge in the lab
OTHER_HOST = "10.48.54.230"
RUNTIMES = ["live", "virtual"]


def free_port() -> int:
    """A port for a test server (both runtimes then use it). Every port of a live run's own
    loopback block is free; one the kernel hands out on 127.0.0.1 also keeps clear of
    anything listening on the wildcard address."""
    return free_loopback_port()


def run(
    kind: str,
    actors: list[Any],
    until: float,
    stop: Callable[[Trace], bool] | None = None,
    **options: Any,
) -> Trace:
    trace = Trace()
    if kind == "live":
        return LiveNetwork(actors, trace, **options).run(until, stop)
    return VirtualNetwork(actors, trace, **options).run(until, stop)


# -- test actors -------------------------------------------------------------------------------


def first_in(actor: Recorder) -> str:
    """The name of the first connection ``actor`` accepted (the opener's, qualified)."""
    return str(actor.of(Accepted)[0].conn)


class Recorder:
    """Keeps every (now, event) it is handed."""

    def __init__(self, name: str, host: str) -> None:
        self.name = name
        self.host = host
        self.events: list[tuple[float, Event]] = []

    def handle(self, event: Event, now: float) -> list[Effect]:
        self.events.append((now, event))
        return self.on(event, now)

    def on(self, event: Event, now: float) -> list[Effect]:
        return []

    def of(self, kind: type) -> list[Any]:
        return [e for _, e in self.events if isinstance(e, kind)]

    def time_of(self, kind: type) -> float:
        return next(t for t, e in self.events if isinstance(e, kind))


class EchoServer(Recorder):
    """Listens and sends back what it receives (``echo=False``: a sink that only keeps it)."""

    def __init__(
        self, port: int, *, name: str = "server", host: str = SERVER_HOST, echo: bool = True
    ) -> None:
        super().__init__(name, host)
        self.port = port
        self.echo = echo
        self.data: dict[str, bytearray] = {}

    def on(self, event: Event, now: float) -> list[Effect]:
        if isinstance(event, Started):
            return [Listen(Address(self.host, self.port))]
        if isinstance(event, Accepted):
            self.data[event.conn] = bytearray()
        if isinstance(event, Received):
            self.data[event.conn] += event.data
            if self.echo:
                return [Send(event.conn, event.data)]
        return []


class Client(Recorder):
    """Connects, sends its chunks, and closes (after the whole echo, or at once)."""

    def __init__(
        self,
        target: Address,
        chunks: list[bytes],
        *,
        name: str = "client",
        host: str = CLIENT_HOST,
        wait_echo: bool = True,
        reset: bool = False,
        timeout: float = 5.0,
        local_port: int = 0,
    ) -> None:
        super().__init__(name, host)
        self.target = target
        self.local_port = local_port
        self.chunks = chunks
        self.wait_echo = wait_echo
        self.reset = reset
        self.timeout = timeout
        self.sent = b"".join(chunks)
        self.received = bytearray()
        self.done = False

    def on(self, event: Event, now: float) -> list[Effect]:
        if isinstance(event, Started):
            return [Connect("c", self.target, self.timeout, self.local_port)]
        if isinstance(event, Connected):
            effects: list[Effect] = [Send("c", chunk) for chunk in self.chunks]
            if not self.wait_echo:
                self.done = True
                effects.append(Close("c", self.reset))
            return effects
        if isinstance(event, Received):
            self.received += event.data
            if len(self.received) == len(self.sent):
                self.done = True
                return [Close("c", self.reset)]
        if isinstance(event, ConnectFailed | Closed):
            self.done = True
        return []


class Timers(Recorder):
    """a, b and c started; when a fires, b is restarted (later) and c stopped, twice."""

    def __init__(self, scale: float, name: str = "timers") -> None:
        super().__init__(name, OTHER_HOST)
        self.scale = scale
        self.fired: list[tuple[str, float]] = []

    def on(self, event: Event, now: float) -> list[Effect]:
        s = self.scale
        if isinstance(event, Started):
            return [
                StartTimer("a", 1 * s),
                StartTimer("b", 2 * s),
                StartTimer("c", 3 * s),
                StopTimer("never-started"),
            ]
        if isinstance(event, TimerFired):
            self.fired.append((event.timer, now))
            if event.timer == "a":
                return [StartTimer("b", 5 * s), StopTimer("c"), StopTimer("c")]
        return []


class Crasher(EchoServer):
    def on(self, event: Event, now: float) -> list[Effect]:
        if isinstance(event, Received):
            raise ValueError("boom")
        return super().on(event, now)


class Ticker(Recorder):
    """Fires one timer after ``delay``: proof that the run went on."""

    def __init__(self, delay: float) -> None:
        super().__init__("ticker", OTHER_HOST)
        self.delay = delay

    def on(self, event: Event, now: float) -> list[Effect]:
        if isinstance(event, Started):
            return [StartTimer("tick", self.delay)]
        return []


def tid(n: int) -> bytes:
    return b"labsim%06d" % n


class StunServer(Recorder):
    """Answers each Binding Request, with the requester's address when ``mapped``."""

    def __init__(self, port: int, *, mapped: bool = True) -> None:
        super().__init__("stun_server", SERVER_HOST)
        self.port = port
        self.mapped = mapped
        self.peers: dict[str, Address] = {}
        self.splitters: dict[str, StunSplitter] = {}

    def on(self, event: Event, now: float) -> list[Effect]:
        if isinstance(event, Started):
            return [Listen(Address(self.host, self.port))]
        if isinstance(event, Accepted):
            self.peers[event.conn] = event.remote
            self.splitters[event.conn] = StunSplitter()
        if isinstance(event, Received):
            effects: list[Effect] = []
            for frame in self.splitters[event.conn].feed(event.data):
                request = stun.decode(frame)
                peer = self.peers[event.conn]
                attrs = [stun.XorMappedAddress(peer.host, peer.port)] if self.mapped else []
                effects.append(Send(event.conn, request.success(attrs).encode(), "stun"))
            return effects
        return []


class StunClient(Recorder):
    """Sends ``count`` Binding Requests, each after the previous answer, then closes."""

    def __init__(self, target: Address, count: int = 3) -> None:
        super().__init__("stun_client", CLIENT_HOST)
        self.target = target
        self.count = count
        self.answers: list[stun.Message] = []
        self.splitter = StunSplitter()

    def request(self) -> Send:
        message = stun.Message.request(stun.Method.BINDING, transaction_id=tid(len(self.answers)))
        return Send("c", message.encode(), "stun")

    def on(self, event: Event, now: float) -> list[Effect]:
        if isinstance(event, Started):
            return [Connect("c", self.target)]
        if isinstance(event, Connected):
            return [self.request()]
        if isinstance(event, Received):
            self.answers += [stun.decode(f) for f in self.splitter.feed(event.data)]
            if len(self.answers) == self.count:
                return [Close("c")]
            return [self.request()]
        return []


def pattern(size: int, seed: int = 0) -> bytes:
    """Bytes that differ at every offset (a reordering or loss cannot go unnoticed)."""
    block = bytes((i * 7 + seed + (i >> 8)) & 0xFF for i in range(65536))
    return (block * (size // len(block) + 1))[:size]


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def no_errors(trace: Trace) -> None:
    assert [log for log in trace.logs if log.level != "info"] == []


# -- both runtimes -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", RUNTIMES)
def test_echo_one_megabyte_in_order(kind: str) -> None:
    port = free_port()
    server = EchoServer(port)
    data = pattern(1 << 20)
    client = Client(Address(SERVER_HOST, port), chunked(data, 8192))
    started = time.monotonic()
    trace = run(kind, [server, client], 8.0, stop=lambda _: bool(server.of(Closed)))
    elapsed = time.monotonic() - started
    assert bytes(client.received) == data
    assert server.data[first_in(server)] == data
    assert server.of(Closed) == [Closed(first_in(server), reset=False)]
    (record,) = trace.connections.values()
    assert (record.client, record.server, record.closed_by, record.reset) == (
        "client", "server", "client", False
    )  # fmt: skip
    assert sum(m.size for m in trace.messages if m.src == "client") == len(data)
    assert sum(m.size for m in trace.messages if m.src == "server") == len(data)
    no_errors(trace)
    print(f"{kind}: 1 MiB echoed in {elapsed * 1000:.0f} ms ({2 / elapsed:.0f} MB/s both ways)")


@pytest.mark.parametrize("kind", RUNTIMES)
def test_connect_to_a_port_nobody_listens_on_is_refused(kind: str) -> None:
    target = Address(SERVER_HOST, free_port())
    client = Client(target, [b"x"])
    trace = run(kind, [client], 3.0, stop=lambda _: client.done)
    assert client.of(ConnectFailed) == [ConnectFailed("c", target, "refused")]
    (refused,) = trace.refused
    assert (refused.client, refused.client_host, refused.server_addr, refused.reason) == (
        "client", CLIENT_HOST, target, "refused"
    )  # fmt: skip
    assert refused.how == "refused"  # a RST came back
    assert refused.started is not None and refused.started <= refused.t
    assert trace.connections == {}


@pytest.mark.parametrize("kind", RUNTIMES)
def test_fin_reaches_the_peer_after_all_the_data(kind: str) -> None:
    port = free_port()
    sink = EchoServer(port, echo=False)
    data = pattern(300_000, seed=3)
    client = Client(Address(SERVER_HOST, port), chunked(data, 10_000), wait_echo=False)
    run(kind, [sink, client], 5.0, stop=lambda _: bool(sink.of(Closed)))
    assert sink.data[first_in(sink)] == data
    assert isinstance(sink.events[-1][1], Closed) and sink.events[-1][1] == Closed(
        first_in(sink), False
    )


@pytest.mark.parametrize("kind", RUNTIMES)
def test_reset_reaches_the_peer_as_reset(kind: str) -> None:
    port = free_port()
    server = EchoServer(port)
    client = Client(Address(SERVER_HOST, port), [b"hello"], reset=True)
    trace = run(kind, [server, client], 5.0, stop=lambda _: bool(server.of(Closed)))
    assert client.received == b"hello"
    assert server.of(Closed) == [Closed(first_in(server), reset=True)]
    (record,) = trace.connections.values()
    assert (record.closed_by, record.reset) == ("client", True)


@pytest.mark.parametrize("kind", RUNTIMES)
def test_reset_right_after_sending_may_drop_data_but_is_a_reset(kind: str) -> None:
    port = free_port()
    sink = EchoServer(port, echo=False)
    data = pattern(200_000, seed=5)
    client = Client(Address(SERVER_HOST, port), chunked(data, 20_000), wait_echo=False, reset=True)
    run(kind, [sink, client], 5.0, stop=lambda _: bool(sink.of(Closed)))
    assert sink.of(Closed) == [Closed(first_in(sink), reset=True)]
    assert data.startswith(bytes(sink.data[first_in(sink)]))


@pytest.mark.parametrize("kind", RUNTIMES)
def test_timers_start_restart_and_stop(kind: str) -> None:
    scale = 1.0 if kind == "virtual" else 0.1
    timers = Timers(scale)
    run(kind, [timers], 10 * scale)
    assert [name for name, _ in timers.fired] == ["a", "b"]
    (_, a_at), (_, b_at) = timers.fired
    if kind == "virtual":
        assert (a_at, b_at) == (1.0, 6.0)
    else:  # b restarted at a (0.1 s) for 0.5 s; c (0.3 s) stopped
        assert 0.1 <= a_at < 0.1 + 0.25
        assert a_at + 0.5 <= b_at < a_at + 0.5 + 0.25


def test_long_timers_pass_in_no_wall_time_in_virtual() -> None:
    class Lifetimes(Recorder):
        def on(self, event: Event, now: float) -> list[Effect]:
            if isinstance(event, Started):
                return [StartTimer("allocation", 600.0), StartTimer("bind", 30.0)]
            return []

    actor = Lifetimes("cms", OTHER_HOST)
    started = time.monotonic()
    VirtualNetwork([actor], Trace()).run(3600.0)
    assert time.monotonic() - started < 0.5
    assert [(t, e) for t, e in actor.events[1:]] == [
        (30.0, TimerFired("bind")),
        (600.0, TimerFired("allocation")),
    ]


@pytest.mark.parametrize("kind", RUNTIMES)
def test_an_actor_exception_is_contained(kind: str) -> None:
    port = free_port()
    crasher = Crasher(port)
    client = Client(Address(SERVER_HOST, port), [b"trigger"])
    ticker = Ticker(0.3)
    trace = run(kind, [crasher, client, ticker], 2.0, stop=lambda _: bool(ticker.of(TimerFired)))
    (error,) = [log for log in trace.logs if log.level == "error"]
    assert error.actor == "server" and "ValueError: boom" in error.text
    assert "Received" in error.text and "test_runtimes.py" in error.text
    assert client.of(Closed) == [Closed("c", reset=True)]
    (record,) = trace.connections.values()
    assert (record.closed_by, record.reset) == ("server", True)
    assert ticker.of(TimerFired) == [TimerFired("tick")]  # the run went on
    assert crasher.of(Received) == [
        Received(first_in(crasher), b"trigger")
    ]  # and the crasher got no more


@pytest.mark.parametrize("kind", RUNTIMES)
def test_trace_decodes_stun_with_lab_addresses(kind: str) -> None:
    port = free_port()
    server = StunServer(port)
    client = StunClient(Address(SERVER_HOST, port), count=2)
    trace = run(
        kind, [server, client], 5.0, stop=lambda t: any(c.closed for c in t.connections.values())
    )
    (connected,) = client.of(Connected)
    (accepted,) = server.of(Accepted)
    # Actors see lab addresses only, whatever the runtime did underneath.
    assert connected.local.host == CLIENT_HOST and connected.remote == Address(SERVER_HOST, port)
    assert accepted.local == Address(SERVER_HOST, port) and accepted.remote == connected.local
    assert [a.get(stun.XorMappedAddress) for a in client.answers] == [
        stun.XorMappedAddress(CLIENT_HOST, connected.local.port)
    ] * 2
    (record,) = trace.connections.values()
    assert (record.client_addr, record.server_addr) == (connected.local, accepted.local)
    mapped = f"Binding Success Response XOR-MAPPED-ADDRESS: {connected.local}"
    assert (
        trace.sequence()
        == [
            ("Binding Request", "stun_client", "stun_server"),
            (mapped, "stun_server", "stun_client"),
        ]
        * 2
    )
    first = trace.messages[0]
    assert (first.protocol, first.framing, first.src_addr, first.dst_addr) == (
        "STUN", "stun", connected.local, accepted.local
    )  # fmt: skip
    assert first.data[8:20] == tid(0)
    assert record.closed_by == "stun_client" and not record.reset
    no_errors(trace)


def test_same_actors_same_sequence_in_both_runtimes() -> None:
    def actors(port: int) -> list[Any]:
        # The answers carry the client's address: both runtimes number client ports from 40000.
        return [StunServer(port), StunClient(Address(SERVER_HOST, port), count=4)]

    def shape(trace: Trace) -> list[tuple[object, ...]]:
        return [
            (r.client, r.server, r.client_addr.host, r.server_addr, r.closed_by, r.reset)
            for r in trace.connections.values()
        ]

    def done(trace: Trace) -> bool:
        return any(r.closed is not None for r in trace.connections.values())

    port = free_port()
    live = run("live", actors(port), 5.0, stop=done)
    virtual = run("virtual", actors(port), 5.0, stop=done)
    assert len(virtual.sequence()) == 8
    assert live.sequence() == virtual.sequence()
    assert shape(live) == shape(virtual)


@pytest.mark.parametrize("kind", RUNTIMES)
def test_effects_on_unknown_or_closed_connections_are_ignored(kind: str) -> None:
    class Sloppy(Client):
        def on(self, event: Event, now: float) -> list[Effect]:
            effects = super().on(event, now)
            if isinstance(event, Started):
                effects += [Send("nope", b"x"), Close("nope")]
            if isinstance(event, Received):
                effects += [Send("c", b"after close"), Close("c")]  # quietly ignored
            return effects

    port = free_port()
    server = EchoServer(port)
    client = Sloppy(Address(SERVER_HOST, port), [b"ping"])
    trace = run(kind, [server, client], 5.0, stop=lambda _: bool(server.of(Closed)))
    warnings = [log.text for log in trace.logs if log.level == "warning"]
    assert warnings == [
        "Send on unknown connection 'nope' ignored",
        "Close on unknown connection 'nope' ignored",
    ]
    assert server.data[first_in(server)] == b"ping"
    assert server.of(Closed) == [Closed(first_in(server), False)]


@pytest.mark.parametrize("kind", RUNTIMES)
def test_listen_only_on_own_address_and_once(kind: str) -> None:
    port = free_port()

    class Greedy(Recorder):
        def on(self, event: Event, now: float) -> list[Effect]:
            if isinstance(event, Started):
                mine = Address(self.host, port)
                return [Listen(mine), Listen(mine), Listen(Address(CLIENT_HOST, port)), Log("hi")]
            return []

    actor = Greedy("greedy", SERVER_HOST)
    trace = run(kind, [actor], 0.2)
    assert [type(e) for _, e in actor.events] == [Started, Listening, ListenFailed, ListenFailed]
    assert actor.of(Listening) == [Listening(Address(SERVER_HOST, port))]
    failed: list[ListenFailed] = actor.of(ListenFailed)
    assert "already listening" in failed[0].reason
    assert f"{CLIENT_HOST} is not greedy's address" in failed[1].reason
    assert [(log.actor, log.text) for log in trace.logs] == [("greedy", "hi")]


@pytest.mark.parametrize("kind", RUNTIMES)
def test_stop_condition_ends_the_run_early(kind: str) -> None:
    port = free_port()
    server = EchoServer(port)
    client = Client(Address(SERVER_HOST, port), [b"one"])
    ticker = Ticker(50.0)
    trace = run(kind, [server, client, ticker], 60.0, stop=lambda t: bool(t.messages))
    # Stopped at the first message: the 50 s timer never fired (no clock read needed).
    assert len(trace.messages) == 1 and ticker.of(TimerFired) == []


@pytest.mark.parametrize("kind", RUNTIMES)
def test_close_while_connecting_cancels_the_connect(kind: str) -> None:
    class Hasty(Recorder):
        def on(self, event: Event, now: float) -> list[Effect]:
            if isinstance(event, Started):
                return [Connect("c", Address(SERVER_HOST, port)), Close("c"), Send("c", b"x")]
            return []

    port = free_port()
    server = EchoServer(port)
    hasty = Hasty("hasty", CLIENT_HOST)
    trace = run(kind, [server, hasty], 0.3)
    assert [type(e) for _, e in hasty.events] == [Started]
    assert server.of(Accepted) == [] and trace.connections == {} and trace.refused == []
    no_errors(trace)


@pytest.mark.parametrize("kind", RUNTIMES)
def test_unlisten_then_connects_are_refused(kind: str) -> None:
    class Brief(EchoServer):
        def on(self, event: Event, now: float) -> list[Effect]:
            if isinstance(event, Listening):
                return [Unlisten(event.address)]
            return super().on(event, now)

    class Late(Client):
        def on(self, event: Event, now: float) -> list[Effect]:
            if isinstance(event, Started):
                return [StartTimer("go", 0.1)]
            if isinstance(event, TimerFired):
                return super().on(Started(), now)
            return super().on(event, now)

    port = free_port()
    server = Brief(port)
    client = Late(Address(SERVER_HOST, port), [b"x"])
    run(kind, [server, client], 2.0, stop=lambda _: client.done)
    assert [e.reason for e in client.of(ConnectFailed)] == ["refused"]


# -- virtual only ------------------------------------------------------------------------------


def test_virtual_connect_takes_one_round_trip_and_data_one_way() -> None:
    port = 5061
    server = EchoServer(port)
    client = Client(Address(SERVER_HOST, port), [b"pi", b"ng"])
    net = VirtualNetwork([server, client], Trace(), link_latency={("client", "server"): 0.01})
    trace = net.run(1.0)
    # The two sends of one event leave together: one segment, one Received.
    assert server.of(Received) == [Received(first_in(server), b"ping")]
    # ... and one record: opaque writes nobody has read yet grow one record.
    assert [m.data for m in trace.messages] == [b"ping", b"ping"]
    assert server.time_of(Accepted) == pytest.approx(0.01)
    assert client.time_of(Connected) == pytest.approx(0.02)
    assert server.time_of(Received) == pytest.approx(0.03)
    assert client.time_of(Received) == pytest.approx(0.04)
    assert server.time_of(Closed) == pytest.approx(0.05)
    assert client.of(Connected)[0].local == Address(CLIENT_HOST, 40000)
    assert trace.connections[1].opened == pytest.approx(0.01)


def test_virtual_blocked_pair_times_out() -> None:
    server = EchoServer(5061)
    client = Client(Address(SERVER_HOST, 5061), [b"x"], timeout=3.0)
    trace = VirtualNetwork([server, client], Trace(), blocked={("client", "server")}).run(10.0)
    assert client.of(ConnectFailed) == [ConnectFailed("c", Address(SERVER_HOST, 5061), "timeout")]
    assert client.time_of(ConnectFailed) == 3.0
    assert server.of(Accepted) == [] and trace.refused[0].reason == "timeout"
    # Typed: the SYN got no answer; it left at the Connect (0) and the connect gave up at 3 s.
    assert (trace.refused[0].how, trace.refused[0].started, trace.refused[0].t) == (
        "timeout", 0.0, 3.0
    )  # fmt: skip


def test_virtual_refused_pair_and_ephemeral_ports() -> None:
    server = EchoServer(5061)
    refused = Client(Address(SERVER_HOST, 5061), [b"x"], name="refused", host=OTHER_HOST)
    first = Client(Address(SERVER_HOST, 5061), [b"x"], name="first")
    second = Client(Address(SERVER_HOST, 5061), [b"x"], name="second")
    VirtualNetwork([server, refused, first, second], Trace(), refused={("refused", "server")}).run(
        1.0
    )
    assert refused.of(ConnectFailed)[0].reason == "refused"
    assert [c.of(Connected)[0].local.port for c in (first, second)] == [40000, 40001]
    # Accepted connections carry their one name: the opener and the opener's own name.
    assert [e.conn for e in server.of(Accepted)] == ["first/c", "second/c"]


def test_virtual_runs_are_deterministic() -> None:
    def once() -> str:
        server = StunServer(3478)
        echo = EchoServer(5061, host=OTHER_HOST, name="echo")
        data = pattern(200_000)
        actors = [
            server,
            echo,
            StunClient(Address(SERVER_HOST, 3478), count=3),
            Client(Address(OTHER_HOST, 5061), chunked(data, 7000), reset=True),
            Timers(0.001),
            Crasher(7000, name="crasher", host="10.0.0.9"),
            Client(Address("10.0.0.9", 7000), [b"die"], name="victim", host="10.0.0.10"),
        ]
        trace = VirtualNetwork(actors, Trace(), latency=0.0003).run(5.0)
        return repr(trace.timeline)

    assert once() == once()


# -- live only ---------------------------------------------------------------------------------


def test_each_live_run_maps_lab_hosts_into_a_loopback_block_of_its_own() -> None:
    actors = [Recorder("a", SERVER_HOST), Recorder("b", CLIENT_HOST), Recorder("c", "127.0.0.5")]
    one, two = LiveNetwork(actors, Trace()), LiveNetwork(actors, Trace())
    assert one.block is None  # nothing claimed before it is needed
    # In actor order: .1, .2; a loopback lab host is its own address.
    assert one.loopback_of(SERVER_HOST) == f"{one.block.prefix}.1"  # type: ignore[union-attr]
    assert one.loopback_of(CLIENT_HOST) == f"{one.block.prefix}.2"  # type: ignore[union-attr]
    assert one.loopback_of("127.0.0.5") == "127.0.0.5"
    assert two.loopback_of(SERVER_HOST) != one.loopback_of(SERVER_HOST)
    assert one.block is not None and two.block is not None
    assert not one.block.prefix.startswith("127.0.") and one.block.held
    two.run(0.01)
    assert not two.block.held  # given back at the end of the run, the mapping stays
    assert two.loopback_of(CLIENT_HOST) == f"{two.block.prefix}.2"
    with pytest.raises(ValueError, match="IPv6"):
        LiveNetwork([Recorder("a", "2001:db8::1")], Trace())
    one.run(0.01)


def test_live_connect_to_a_host_with_no_loopback_address_is_unreachable() -> None:
    # A lab IPv6 host no actor has cannot be mapped into the run's block: no route, no SYN.
    target = Address("2001:db8::7", 5061)
    client = Client(target, [b"x"])
    trace = LiveNetwork([client], Trace()).run(3.0, stop=lambda _: client.done)
    [failed] = client.of(ConnectFailed)
    assert failed.reason.startswith("unreachable")
    [refused] = trace.refused
    assert (refused.how, refused.server_addr) == ("unreachable", target)


def test_live_rejects_off_loopback_externals_and_maps_any_lab_addresses() -> None:
    with pytest.raises(NonLoopbackError):
        LiveNetwork([], Trace(), external={Address(SERVER_HOST, 3478): ("10.48.54.229", 3478)})
    # Hosts alike in their last three bytes once shared 127.1.2.3; now each has an address.
    net = LiveNetwork([Recorder("a", "10.1.2.3"), Recorder("b", "11.1.2.3")], Trace())
    assert net.loopback_of("10.1.2.3") != net.loopback_of("11.1.2.3")
    net.run(0.01)
    # Two actors on the same lab host share its loopback address: allowed.
    net = LiveNetwork([Recorder("a", SERVER_HOST), Recorder("b", SERVER_HOST)], Trace())
    assert net.loopback_of(SERVER_HOST).endswith(".1")
    net.run(0.01)


@contextmanager
def socket_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, Any]]]:
    """Every bind and connect of any Python socket while inside."""
    calls: list[tuple[str, Any]] = []
    real_bind, real_connect = socket.socket.bind, socket.socket.connect

    def bind(self: socket.socket, address: Any) -> None:
        calls.append(("bind-unix" if self.family == socket.AF_UNIX else "bind", address))
        real_bind(self, address)

    def connect(self: socket.socket, address: Any) -> None:
        calls.append(("connect", address))
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "bind", bind)
    monkeypatch.setattr(socket.socket, "connect", connect)
    yield calls
    monkeypatch.undo()


async def test_live_stays_on_loopback_and_reports_lab_addresses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    server = EchoServer(port)
    client = Client(Address(SERVER_HOST, port), [b"where am I"])
    unreachable = Client(Address("2001:db8::5", 80), [b"x"], name="v6", host=OTHER_HOST)
    with socket_calls(monkeypatch) as calls:
        net = LiveNetwork([server, client, unreachable], Trace())
        trace = await net.arun(5.0, stop=lambda _: bool(server.of(Closed)) and unreachable.done)
    expe, edge = net.loopback_of(SERVER_HOST), net.loopback_of(CLIENT_HOST)
    assert net.block is not None and expe in net.block and edge in net.block
    assert ("bind", (expe, port)) in calls
    assert ("bind", (edge, 40000)) in calls
    assert ("connect", (expe, port)) in calls
    # The block's claim: one name in the abstract Unix namespace, no network address.
    assert [a for kind, a in calls if kind == "bind-unix"] == [
        f"\0labsim-loopback-{net.block.prefix}".encode()
    ]
    for kind, address in calls:
        assert kind == "bind-unix" or address[0].startswith("127."), calls
    (accepted,) = server.of(Accepted)
    (connected,) = client.of(Connected)
    assert accepted.remote == connected.local and connected.local.host == CLIENT_HOST
    assert accepted.local == connected.remote == Address(SERVER_HOST, port)
    (record,) = trace.connections.values()
    assert record.client_addr == connected.local and record.server_addr == accepted.local
    assert unreachable.of(ConnectFailed)[0].reason.startswith("unreachable")


async def test_live_external_endpoints_both_ways() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    external_server = await asyncio.start_server(echo, "127.0.0.1", 0)
    real_port = external_server.sockets[0].getsockname()[1]
    turn = Address("10.48.54.240", 3478)  # stands for coturn, say
    client = Client(turn, [b"to the outside"])
    port = free_port()
    server = EchoServer(port)
    net = LiveNetwork([server, client], Trace(), external={turn: ("127.0.0.1", real_port)})

    async def outsider() -> bytes:
        while not server.of(Listening):
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection(net.loopback_of(SERVER_HOST), port)
        writer.write(b"from the outside")
        data = await reader.readexactly(16)
        writer.close()
        await writer.wait_closed()
        return data

    outside = asyncio.create_task(outsider())
    try:
        trace = await net.arun(5.0, stop=lambda _: client.done and bool(server.of(Closed)))
        assert await outside == b"from the outside"
    finally:
        external_server.close()
        await external_server.wait_closed()
    assert client.received == b"to the outside"
    out_record, in_record = sorted(trace.connections.values(), key=lambda r: r.server)
    assert (out_record.server, out_record.server_addr) == ("external", turn)
    assert (in_record.client, in_record.server) == ("external", "server")
    # 127.0.0.1 is where the external endpoint lives: its lab host stands for it.
    assert in_record.client_addr.host == "10.48.54.240"
    assert server.of(Accepted)[0].remote == in_record.client_addr


async def test_live_connect_timeout() -> None:
    # A listener whose accept queue is full drops further SYNs: the connect times out.
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    filler = socket.create_connection(full.getsockname(), timeout=1)
    target = Address("10.48.54.241", 443)
    client = Client(target, [b"x"], timeout=0.3)
    try:
        net = LiveNetwork([client], Trace(), external={target: full.getsockname()})
        trace = await net.arun(3.0, stop=lambda _: client.done)
    finally:
        filler.close()
        full.close()
    assert client.of(ConnectFailed) == [ConnectFailed("c", target, "timeout")]
    # Not before its timeout (how soon after is the loop's business, not a test's).
    assert client.time_of(ConnectFailed) >= 0.3
    assert trace.refused[0].reason == "timeout" and trace.refused[0].how == "timeout"


class Idler(Recorder):
    """Opens ``count`` connections and never sends on them."""

    def __init__(self, target: Address, count: int) -> None:
        super().__init__("idler", OTHER_HOST)
        self.target = target
        self.count = count

    def on(self, event: Event, now: float) -> list[Effect]:
        if isinstance(event, Started):
            return [Connect(f"idle{i}", self.target) for i in range(self.count)]
        return []


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_live_200_idle_connections_do_not_block_a_client_and_nothing_leaks() -> None:
    fds_before = open_fds()
    tasks_before = asyncio.all_tasks()
    port = free_port()
    server = EchoServer(port)
    idler = Idler(Address(SERVER_HOST, port), 200)
    client = Client(Address(SERVER_HOST, port), chunked(pattern(100_000), 4096))
    crasher = Crasher(free_port(), name="crasher", host="10.0.0.9")
    victim = Client(Address("10.0.0.9", crasher.port), [b"die"], name="victim", host="10.0.0.10")
    refused = Client(Address(SERVER_HOST, free_port()), [b"x"], name="refused", host="10.0.0.11")
    timers = Timers(10.0)  # still running when the run ends

    def done(_: Trace) -> bool:
        return client.done and victim.done and refused.done and len(idler.of(Connected)) == 200

    net = LiveNetwork([server, idler, client, crasher, victim, refused, timers], Trace())
    trace = await net.arun(8.0, stop=done)
    assert done(trace)
    assert bytes(client.received) == client.sent
    assert len(server.of(Accepted)) == 201
    assert sum(1 for r in trace.connections.values() if r.closed is None) == 200  # left open
    assert open_fds() <= fds_before
    assert asyncio.all_tasks() == tasks_before


async def test_live_run_cancelled_from_outside_still_cleans_up() -> None:
    fds_before = open_fds()
    port = free_port()
    server = EchoServer(port)
    idler = Idler(Address(SERVER_HOST, port), 20)
    task = asyncio.create_task(LiveNetwork([server, idler], Trace()).arun(30.0))
    while len(idler.of(Connected)) < 20:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert open_fds() <= fds_before


async def test_live_listen_on_a_port_in_use_fails() -> None:
    server = EchoServer(0)
    net = LiveNetwork([server], Trace())
    taken = socket.socket()
    taken.bind((net.loopback_of(SERVER_HOST), 0))  # someone ignoring the claim, inside it
    taken.listen(1)
    port = server.port = taken.getsockname()[1]
    try:
        await net.arun(0.2, stop=lambda _: bool(server.events[1:]))
    finally:
        taken.close()
    (failed,) = server.of(ListenFailed)
    assert "in use" in failed.reason and failed.address == Address(SERVER_HOST, port)
