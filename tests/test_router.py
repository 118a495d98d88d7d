"""The machines' contract (labsim/proto/machine.py) and the router that learns ownership from
effects (labsim/proto/router.py): small machines of the test's own, then the real ones."""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

import pytest

from labsim.actors.lab import Lab
from labsim.actors.skype_edge import SkypeEdge
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
    Listening,
    Log,
    Received,
    Started,
    StartTimer,
    StopTimer,
    TimerFired,
    Unlisten,
)
from labsim.proto.ice import CheckLink, CheckSettings, CheckStream, IceCredentials, LinkUp
from labsim.proto.machine import NOTHING, Step, Timers
from labsim.proto.router import OwnershipError, Router, Solo
from labsim.proto.turn_client import TurnClient, TurnClientSettings
from labsim.proto.turn_server import TurnServer, TurnServerSettings

HOST = "10.0.0.1"
PEER = Address("10.0.0.2", 5000)


class Tick(Enum):
    A = "a"
    B = "b"


@dataclass(frozen=True)
class Heard:
    """What a :class:`Recorder` tells its owner: the event it was given."""

    event: Event


class Recorder:
    """A machine that says back every event it gets and emits what it is told to."""

    def __init__(self, start: tuple[Effect, ...] = ()) -> None:
        self.start = start
        self.events: list[Event] = []
        self.reply: tuple[Effect, ...] = ()

    def handle(self, event: Event, now: float) -> Step[Heard]:
        self.events.append(event)
        effects = self.start if isinstance(event, Started) else self.reply
        return Step(effects, (Heard(event),))

    def command(self, *effects: Effect) -> Step[Heard]:
        return Step(effects, (Heard(Started()),))


def wired(*machines: Recorder) -> tuple[Router, list[tuple[int, Heard]]]:
    """A router over ``machines``; the list collects (machine index, notice)."""
    heard: list[tuple[int, Heard]] = []
    router = Router()
    for i, machine in enumerate(machines):

        def react(notice: Heard, now: float, i: int = i) -> list[Effect]:
            heard.append((i, notice))
            return [Log(f"{i} heard {type(notice.event).__name__}")]

        router.add(machine, react)
    return router, heard


# -- the contract -----------------------------------------------------------------------------


def test_a_step_is_frozen_and_built_from_lists() -> None:
    step = Step.of([Log("x")], ["n"])
    assert step == Step((Log("x"),), ("n",))
    assert NOTHING == Step() and NOTHING.effects == () and NOTHING.notices == ()
    with pytest.raises(AttributeError):
        step.effects = ()  # type: ignore[misc]


def test_timers_machine_reports_its_timer_by_name() -> None:
    timers: Timers[Tick] = Timers()
    assert timers.start(Tick.A, 2.0) == Step((StartTimer(Tick.A, 2.0),))
    assert timers.stop(Tick.A, Tick.B) == Step((StopTimer(Tick.A), StopTimer(Tick.B)))
    assert timers.handle(TimerFired(Tick.B), 1.0) == Step((), (Tick.B,))
    assert timers.handle(Started(), 0.0) == Step()


def test_the_real_machines_speak_the_contract() -> None:
    """Every machine returns a Step, for events and for commands."""
    server = TurnServer("expressway_e", HOST, TurnServerSettings())
    assert isinstance(server.handle(Started(), 0.0), Step)
    client = TurnClient(TurnClientSettings(), random.Random(1), server=PEER)
    assert isinstance(client.start(0.0), Step)
    assert isinstance(client.handle(Connected("turn:ctl", Address(HOST, 1), PEER), 0.0), Step)
    assert isinstance(client.release(1.0), Step)
    link = CheckLink("peer")
    assert link.connect("media", PEER) == Step((Connect("media", PEER),))
    assert link.handle(Connected("media", Address(HOST, 1), PEER), 0.0) == Step((), (LinkUp(PEER),))


# -- ownership learned from effects ------------------------------------------------------------


def test_started_goes_to_every_machine_in_order_then_the_owner() -> None:
    a, b = Recorder((Listen(Address(HOST, 1)),)), Recorder((Listen(Address(HOST, 2)),))
    router = Router(on_started=lambda now: [Log("actor started")])
    router.add(a)
    router.add(b)
    effects = router.handle(Started(), 0.0)
    assert effects == [Listen(Address(HOST, 1)), Listen(Address(HOST, 2)), Log("actor started")]


def test_ownership_is_learned_from_connect_listen_and_start_timer() -> None:
    a = Recorder((Listen(Address(HOST, 1)), Connect("a:1", PEER), StartTimer(Tick.A, 1.0)))
    b = Recorder((Listen(Address(HOST, 2)),))
    router, heard = wired(a, b)
    router.handle(Started(), 0.0)
    heard.clear()

    # Each event reaches the machine whose effect named it, and its notice the owner.
    assert router.handle(Listening(Address(HOST, 2)), 0.0) == [Log("1 heard Listening")]
    assert router.handle(Connected("a:1", Address(HOST, 9), PEER), 0.0) == [
        Log("0 heard Connected")
    ]
    router.handle(TimerFired(Tick.A), 1.0)
    # A connection accepted on b's address is b's from then on.
    router.handle(Accepted("x/1", Address(HOST, 2), PEER), 1.0)
    router.handle(Received("x/1", b"hi"), 1.0)
    assert [(i, type(n.event).__name__) for i, n in heard] == [
        (1, "Listening"),
        (0, "Connected"),
        (0, "TimerFired"),
        (1, "Accepted"),
        (1, "Received"),
    ]
    assert router.owner(Received("a:1", b"x")) is a
    assert router.owner(Received("x/1", b"x")) is b


def test_events_nobody_owns_are_dropped() -> None:
    a = Recorder((Connect("a:1", PEER),))
    router, heard = wired(a)
    router.handle(Started(), 0.0)
    heard.clear()
    assert router.handle(Received("nobody", b"x"), 0.0) == []
    assert router.handle(Closed("nobody"), 0.0) == []
    assert router.handle(TimerFired(Tick.B), 0.0) == []
    assert router.handle(Accepted("x/1", Address(HOST, 7), PEER), 0.0) == []
    assert router.handle(Listening(Address(HOST, 7)), 0.0) == []
    assert heard == []


def test_claims_end_with_close_unlisten_stop_and_the_ending_events() -> None:
    a = Recorder(
        (Connect("a:1", PEER), Connect("a:2", PEER), Listen(Address(HOST, 1)),
         StartTimer(Tick.A, 1.0), StartTimer(Tick.B, 1.0))
    )  # fmt: skip
    router, heard = wired(a)
    router.handle(Started(), 0.0)
    router.run(a, a.command(Close("a:1"), Unlisten(Address(HOST, 1)), StopTimer(Tick.A)))
    assert router.owner(Received("a:1", b"x")) is None
    assert router.owner(Listening(Address(HOST, 1))) is None
    assert router.owner(TimerFired(Tick.A)) is None
    # ConnectFailed and Closed end a connection's claim, TimerFired a timer's.
    router.handle(ConnectFailed("a:2", PEER, "refused"), 1.0)
    assert router.owner(Received("a:2", b"x")) is None
    router.handle(TimerFired(Tick.B), 1.0)
    assert router.owner(TimerFired(Tick.B)) is None


def test_a_timer_restarted_in_its_own_step_stays_claimed() -> None:
    a = Recorder((StartTimer(Tick.A, 1.0),))
    router, _ = wired(a)
    router.handle(Started(), 0.0)
    a.reply = (StartTimer(Tick.A, 1.0),)
    router.handle(TimerFired(Tick.A), 1.0)
    assert router.owner(TimerFired(Tick.A)) is a


def test_a_name_another_machine_holds_is_refused() -> None:
    a = Recorder((Connect("c", PEER), StartTimer(Tick.A, 1.0), Listen(Address(HOST, 1))))
    b = Recorder()
    router, _ = wired(a, b)
    router.handle(Started(), 0.0)
    with pytest.raises(OwnershipError, match="timer"):
        router.run(b, b.command(StartTimer(Tick.A, 5.0)))
    with pytest.raises(OwnershipError, match="connection"):
        router.run(b, b.command(Connect("c", PEER)))
    with pytest.raises(OwnershipError, match="address"):
        router.run(b, b.command(Listen(Address(HOST, 1))))
    # Stopping or closing what another machine holds changes nothing.
    router.run(b, b.command(StopTimer(Tick.A), Close("c")))
    assert router.owner(TimerFired(Tick.A)) is a and router.owner(Closed("c")) is a
    # The holder restarts its own timer freely.
    router.run(a, a.command(StartTimer(Tick.A, 5.0)))
    assert router.owner(TimerFired(Tick.A)) is a


def test_give_hands_a_connection_over() -> None:
    a, b = Recorder((Connect("data", PEER),)), Recorder()
    router, heard = wired(a, b)
    router.handle(Started(), 0.0)
    router.give("data", b)
    heard.clear()
    router.handle(Received("data", b"x"), 0.0)
    assert [i for i, _ in heard] == [1]
    router.give("data", None)
    assert router.handle(Received("data", b"x"), 0.0) == []


def test_a_commands_notices_wait_for_the_end_of_the_event() -> None:
    """The owner hears what a command reported after the event that led to it (as the
    machine's own notices come right after its effects)."""
    a, b = Recorder((Connect("a:1", PEER),)), Recorder()
    heard: list[str] = []
    router = Router()

    def on_a(notice: Heard, now: float) -> list[Effect]:
        heard.append("a")
        return [Log("a reacts"), *router.run(b, b.command(Log("b's command")))]

    def on_b(notice: Heard, now: float) -> list[Effect]:
        heard.append("b")
        return [Log("b's notice heard")]

    router.add(a, on_a)
    router.add(b, on_b)
    router.handle(Started(), 0.0)
    a.reply = (Log("a's effect"),)
    heard.clear()
    effects = router.handle(Received("a:1", b"x"), 0.0)
    assert effects == [Log("a's effect"), Log("a reacts"), Log("b's command"),
                       Log("b's notice heard")]  # fmt: skip
    assert heard == ["a", "b"]


# -- the real machines behind a router ----------------------------------------------------------


def test_the_turn_server_alone_claims_its_listeners_and_relays() -> None:
    settings = TurnServerSettings(port=3478, relay_ports=(24000, 24009))
    solo = TurnServer("expressway_e", HOST, settings).actor()
    assert isinstance(solo, Solo)
    effects = solo.handle(Started(), 0.0)
    assert Listen(Address(HOST, 3478)) in effects
    assert solo.router.owner(Accepted("cms/turn:ctl", Address(HOST, 3478), PEER)) is solo.machine
    assert solo.router.owner(Accepted("x/1", Address(HOST, 5061), PEER)) is None


def test_the_edge_routes_sip_and_media_to_their_machines() -> None:
    edge = SkypeEdge(Lab())
    edge.handle(Started(), 0.0)
    sip_port = Address(edge.host, edge.settings.sip_port)
    media = Address(edge.host, edge.settings.media_port)
    assert edge.router.owner(Accepted("c/sip:1", sip_port, PEER)) is edge.proxy
    assert edge.router.owner(Accepted("c/media", media, PEER)) is edge.relay
    # No relay target yet: the client's media connection is reset.
    effects = edge.handle(Accepted("c/media", media, PEER), 0.0)
    assert Close("c/media", reset=True) in effects


def test_a_check_link_begins_with_our_check_and_feeds_early_bytes() -> None:
    local, remote = IceCredentials("aaaa", "a" * 22), IceCredentials("bbbb", "b" * 22)
    layout = ("USERNAME", "MESSAGE-INTEGRITY", "FINGERPRINT")
    ours = CheckStream(CheckSettings(local, True, 1, layout), remote, PEER, random.Random(1))
    theirs = CheckStream(CheckSettings(remote, False, 1, layout), local, PEER, random.Random(2))
    link = CheckLink("peer")
    step = link.begin("data", ours, early=theirs.request())
    # Our check first, then the answer to theirs.
    assert [e.conn for e in step.effects if hasattr(e, "conn")] == ["data", "data"]
    assert step.notices == ()
    assert link.close() == Step((Close("data"),)) and link.close() == Step()
