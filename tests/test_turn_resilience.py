"""A misbehaving client never delays another client's allocation, and a run leaves nothing open.

On real sockets: 200 idle connections to the TURN port, one that sends garbage and one that sends
half a STUN header and stalls, then a well-behaved CMS allocates; it must get its relay at once.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from labsim.net.live import LiveNetwork
from labsim.proto.events import (
    Actor,
    Address,
    Closed,
    Connect,
    Connected,
    Effect,
    Event,
    Send,
    Started,
)
from labsim.proto.turn_client import TurnClientSettings
from labsim.proto.turn_server import TurnServer, TurnServerSettings
from labsim.trace import Trace

from .turn_actors import Board, CmsLike

EXPE = "10.48.54.229"
PORT = 34790
IDLE = 200


class Nuisance:
    """Opens IDLE silent connections, one garbage sender and one half-header staller, then
    releases CMS (a timer) so its Allocate arrives while all of them are open."""

    def __init__(self) -> None:
        self.name, self.host = "nuisance", "10.48.54.66"
        self.connected = 0
        self.resets: list[str] = []

    def handle(self, event: Event, now: float) -> list[Effect]:
        target = Address(EXPE, PORT)
        if isinstance(event, Started):
            conns: list[Effect] = [Connect(f"idle:{i}", target) for i in range(IDLE)]
            return [*conns, Connect("garbage", target), Connect("half", target)]
        if isinstance(event, Connected):
            self.connected += 1
            if event.conn == "garbage":
                return [Send(event.conn, b"GET / HTTP/1.1\r\nHost: expressway\r\n\r\n", "stun")]
            if event.conn == "half":
                return [Send(event.conn, b"\x00\x03\x00\x10\x21\x12", "stun")]  # 6 of 20 bytes
        if isinstance(event, Closed) and event.reset:
            self.resets.append(event.conn)
        return []


class DelayedCms(CmsLike):
    """CMS that starts allocating only after the nuisance connections are in."""

    def _start(self, now: float) -> list[Effect]:
        return self.router.run(self.clock, self.clock.start("go", 0.3))

    def _on_timer(self, timer: str, now: float) -> list[Effect]:
        if timer != "go":
            return super()._on_timer(timer, now)
        self.started_at = now
        return self.router.run(self.client, self.client.start(now))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_misbehaving_clients_do_not_delay_an_allocation() -> None:
    before = open_fds()
    board = Board()
    nuisance = Nuisance()
    cms = DelayedCms(
        "10.48.54.230",
        TurnClientSettings(),
        board,
        server=Address(EXPE, PORT),
        hangup_after=None,
    )
    server = TurnServer(
        "expressway_e",
        EXPE,
        TurnServerSettings(port=PORT, relay_ports=(44100, 44109)),
    )
    actors: list[Actor] = [server.actor(), nuisance, cms]
    trace = Trace()
    LiveNetwork(actors, trace).run(until=10.0, stop=lambda _t: board.relayed is not None)
    assert nuisance.connected == IDLE + 2
    assert board.relayed is not None, "no allocation"
    success = trace.find("Allocate Success Response")[0]
    assert success.t - cms.started_at < 1.0, success.t - cms.started_at
    # The garbage sender was reset; the staller and the idle ones were left alone (they only
    # cost a connection each).
    assert nuisance.resets == ["garbage"]
    # Nothing outlives the run: sockets, listeners, timers, tasks.
    assert open_fds() <= before
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()  # the run's loop is gone with its tasks
