"""Small actors for the TURN integration tests: a CMS-like owner of a TurnClient and a
Skype-side peer that connects to the relayed address. Test code, not the call's actors."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Never

from labsim.proto.events import (
    Accepted,
    Address,
    Close,
    Closed,
    Connect,
    Connected,
    Effect,
    Event,
    Log,
    Received,
    Send,
    Started,
    StartTimer,
    TimerFired,
)
from labsim.proto.machine import Step, Timers
from labsim.proto.router import Router
from labsim.proto.turn_client import (
    Allocated,
    AllocationFailed,
    Expired,
    Notification,
    PeerConnected,
    Released,
    TurnClient,
    TurnClientSettings,
)
from labsim.wire import stun
from labsim.wire.framing import Rfc4571Splitter, frame_rfc4571

CHECK_KEY = stun.short_term_key("Hh3uY7pQ1wE5rT9iO2aS6dF0")


def ice_check(tid: bytes, use_candidate: bool) -> bytes:
    """An RFC 4571-framed ICE Binding Request (RFC 5245 §7.1.2)."""
    attrs: list[stun.Attribute] = [stun.UseCandidate()] if use_candidate else []
    attrs += [stun.Priority(0x6E0001FF), stun.IceControlling(7), stun.Username("Xa3f:cM5k"),
              stun.MessageIntegrity(), stun.Fingerprint()]  # fmt: skip
    return frame_rfc4571(
        stun.Message(stun.Method.BINDING, stun.Class.REQUEST, tid, attrs).encode(CHECK_KEY)
    )


def ice_answer(request: stun.Message, mapped: Address) -> bytes:
    response = request.success(
        [stun.XorMappedAddress(mapped.host, mapped.port), stun.MessageIntegrity(),
         stun.Fingerprint()]
    )  # fmt: skip
    return frame_rfc4571(response.encode(CHECK_KEY))


@dataclass
class Board:
    """What the actors of one test publish for each other (and for the test's asserts)."""

    relayed: Address | None = None
    allocation_failed: AllocationFailed | None = None
    cms_pipe_bytes: bytearray = field(default_factory=bytearray)
    peer_bytes: bytearray = field(default_factory=bytearray)
    checks_answered: int = 0
    released: bool = False
    expired: bool = False
    peer_closed: float | None = None
    peer_reset: bool = False
    done: bool = False


class _Pipe:
    """The data connection once the client hands it over: its bytes go to ``take``."""

    def __init__(self, take: Callable[[bytes], list[Effect]]) -> None:
        self.take = take

    def handle(self, event: Event, now: float) -> Step[Never]:
        if isinstance(event, Received):
            return Step(tuple(self.take(event.data)))
        return Step()


class CmsLike:
    """Owns a TurnClient; once the pipe is up, answers ICE checks and sends its own, then
    releases the allocation when ``hangup_after`` seconds have passed. Wired as the call's
    actors are: machines behind a :class:`Router`."""

    def __init__(
        self, host: str, settings: TurnClientSettings, board: Board, *, server: Address,
        seed: int = 1, hangup_after: float | None = None, peer_host: str | None = None,
    ) -> None:  # fmt: skip
        self.name, self.host = "cms", host
        self.board = board
        self.client = TurnClient(settings, random.Random(seed), server=server)
        self.hangup_after = hangup_after
        self.peer_host = peer_host
        self.pipe: str | None = None
        self.splitter = Rfc4571Splitter()
        self.clock: Timers[str] = Timers()
        self.link = _Pipe(self._pipe_bytes)
        self.router = Router(on_started=self._start)
        self.router.add(self.client, self._notification)
        self.router.add(self.clock, self._on_timer)
        self.router.add(self.link)

    def handle(self, event: Event, now: float) -> list[Effect]:
        return self.router.handle(event, now)

    def _start(self, now: float) -> list[Effect]:
        effects = self.router.run(self.client, self.client.start(now))
        if self.hangup_after is not None:
            effects += self.router.run(self.clock, self.clock.start("hangup", self.hangup_after))
        return effects

    def _on_timer(self, timer: str, now: float) -> list[Effect]:
        return self.router.run(self.client, self.client.release(now))  # "hangup"

    def _notification(self, note: Notification, now: float) -> list[Effect]:
        effects: list[Effect] = []
        if isinstance(note, Allocated):
            self.board.relayed = note.relayed
            if self.peer_host is not None:
                effects += self.router.run(
                    self.client, self.client.create_permission(self.peer_host, now)
                )
        elif isinstance(note, AllocationFailed):
            self.board.allocation_failed = note
            self.board.done = True
        elif isinstance(note, PeerConnected):
            self.pipe = note.conn
            self.router.give(note.conn, self.link)
            effects.append(Log(f"pipe to {note.peer} up"))
            # CMS nominates: its check carries USE-CANDIDATE (PROTOCOL.md §10).
            effects.append(Send(note.conn, ice_check(b"cms-check-01", True), "rfc4571"))
            effects += self._pipe_bytes(note.early_data)
        elif isinstance(note, Released):
            self.board.released = True
            self.board.done = True
        elif isinstance(note, Expired):
            self.board.expired = True
            self.board.done = True
        return effects

    def _pipe_bytes(self, data: bytes) -> list[Effect]:
        self.board.cms_pipe_bytes += data
        effects: list[Effect] = []
        assert self.pipe is not None
        for frame in self.splitter.feed(data):
            message = stun.decode(frame)
            if message.cls is stun.Class.REQUEST:
                effects.append(Send(self.pipe, ice_answer(message, Address("10.48.54.229", 0)),
                                    "rfc4571"))  # fmt: skip
                self.board.checks_answered += 1
        return effects


class SkypePeer:
    """Connects to the relayed address once it is known, sends a framed check, answers CMS's."""

    def __init__(self, host: str, board: Board, *, poll: float = 0.01) -> None:
        self.name, self.host = "skype_edge", host
        self.board = board
        self.poll = poll
        self.splitter = Rfc4571Splitter()
        self.connected = False

    def handle(self, event: Event, now: float) -> list[Effect]:
        if isinstance(event, Started):
            return [StartTimer("wait-relay", self.poll)]
        if isinstance(event, TimerFired):
            if self.board.relayed is None:
                return [] if self.board.done else [StartTimer("wait-relay", self.poll)]
            return [Connect("media", self.board.relayed)]
        if isinstance(event, Connected):
            self.connected = True
            return [Send("media", ice_check(b"skype-check1", False), "rfc4571")]
        if isinstance(event, Received):
            self.board.peer_bytes += event.data
            effects: list[Effect] = []
            for frame in self.splitter.feed(event.data):
                message = stun.decode(frame)
                if message.cls is stun.Class.REQUEST:
                    effects.append(Send("media", ice_answer(message, Address(self.host, 0)),
                                        "rfc4571"))  # fmt: skip
            return effects
        if isinstance(event, Closed):
            self.board.peer_closed, self.board.peer_reset = now, event.reset
            return []
        if isinstance(event, Accepted):
            return [Close(event.conn, reset=True)]
        return []
