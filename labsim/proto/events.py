"""The sans-IO contract between actors and runtimes (DESIGN.md, "Rules that keep it honest").

An actor (or a protocol machine inside one) never touches a socket or a clock. A runtime —
:mod:`labsim.net.live` on asyncio sockets or :mod:`labsim.net.virtual` on simpy — calls::

    effects = actor.handle(event, now)

with one :data:`Event` and the current time in seconds, and carries out the returned
:data:`Effect` list in order. That is the whole interface; the first event an actor sees is
:class:`Started`.

Addresses are **lab addresses** (10.48.54.229:3478, 192.168.1.252:53577 …): what the actors
believe, what goes into STUN attributes, SDP and the capture. A live runtime maps them onto
loopback addresses (each run claims a block, 127.A.B.0/24) and back; actors never see it.

Connections are named by :data:`ConnId` strings. An actor names the connections it opens
(:class:`Connect`), never with a ``/``; the accepting actor gets the connection's one name
(:class:`Accepted`): the opener and the opener's name for it, ``cms/turn:data:1``, the name the
ladder, the JSON and the capture use too.

Timers are named by :data:`TimerId` values the actor chooses; starting a timer with a name
already running restarts it. The runtime only stores a name as a dict key and hands it back in
:class:`TimerFired`, so any hashable value works; labsim's machines use typed ones (enum
members, frozen dataclasses: :mod:`labsim.proto.machine`), never strings built by formatting.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Protocol

# Re-exported: actors and runtimes take Address from here with the rest of the contract.
from labsim.wire.address import Address as Address

ConnId = str
TimerId = Hashable
"""A timer's name: a hashable, immutable value compared by equality (an enum member or a frozen
dataclass). Its type says which machine starts it (:mod:`labsim.proto.machine`)."""


# ---------------------------------------------------------------------------------------------
# Events: runtime -> actor
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    """The run begins: return the first effects (listeners, timers, first connects)."""


@dataclass(frozen=True)
class Listening:
    """A :class:`Listen` succeeded."""

    address: Address
    """The address now accepting connections."""


@dataclass(frozen=True)
class ListenFailed:
    """A :class:`Listen` failed (address in use, not this actor's address)."""

    address: Address
    """The address asked for."""
    reason: str
    """Why, in words."""


@dataclass(frozen=True)
class Accepted:
    """A peer opened a connection to one of this actor's listeners."""

    conn: ConnId
    """The connection's name: the opener's, qualified by the opener (``cms/turn:data:1``;
    ``external/<n>`` for a peer outside the run)."""
    local: Address
    """The listening address it arrived on."""
    remote: Address
    """The peer's address (its lab address, ephemeral port)."""


@dataclass(frozen=True)
class Connected:
    """A :class:`Connect` of this actor succeeded."""

    conn: ConnId
    """The name the actor gave in :class:`Connect`."""
    local: Address
    """This end's address (lab host, ephemeral port)."""
    remote: Address
    """The address connected to."""


@dataclass(frozen=True)
class ConnectFailed:
    """A :class:`Connect` of this actor failed."""

    conn: ConnId
    """The name the actor gave in :class:`Connect`."""
    remote: Address
    """The address it tried."""
    reason: str
    """``"refused"``, ``"timeout"`` or another word saying why."""


@dataclass(frozen=True)
class Received:
    """Bytes arrived on a connection, cut and coalesced anywhere (TCP semantics)."""

    conn: ConnId
    """The connection."""
    data: bytes
    """The bytes, never empty."""


@dataclass(frozen=True)
class Closed:
    """The connection is gone: the peer closed it (FIN) or reset it (RST), or the runtime
    had to drop it. No event for this connection follows."""

    conn: ConnId
    """The connection."""
    reset: bool = False
    """True for a reset (RST) rather than an orderly close."""


@dataclass(frozen=True)
class TimerFired:
    """A timer started with :class:`StartTimer` expired."""

    timer: TimerId
    """The actor's name for the timer."""


Event = (
    Started
    | Listening
    | ListenFailed
    | Accepted
    | Connected
    | ConnectFailed
    | Received
    | (Closed | TimerFired)
)


# ---------------------------------------------------------------------------------------------
# Effects: actor -> runtime
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listen:
    """Accept TCP connections on one of this actor's addresses; answered by :class:`Listening`
    or :class:`ListenFailed`."""

    address: Address
    """Lab address to listen on (the actor's own host)."""


@dataclass(frozen=True)
class Unlisten:
    """Stop accepting on an address (existing connections stay)."""

    address: Address
    """A listening address of this actor."""


@dataclass(frozen=True)
class Connect:
    """Open a TCP connection; answered by :class:`Connected` or :class:`ConnectFailed`."""

    conn: ConnId
    """The actor's name for it, unique among this actor's open connections, without ``/``."""
    remote: Address
    """Lab address to connect to."""
    timeout: float = 5.0
    """Seconds before :class:`ConnectFailed` with reason ``"timeout"``."""
    local_port: int = 0
    """Source port to bind (0: the runtime picks the next ephemeral one). The Skype Edge uses it
    to open its relay connection from the lab's 192.168.1.252:53577."""


@dataclass(frozen=True)
class Send:
    """Write bytes on a connection, in order after earlier sends on it."""

    conn: ConnId
    """The connection."""
    data: bytes
    """The bytes."""
    protocol: str = "raw"
    """How the trace should read these bytes (see :mod:`labsim.trace`): ``"stun"`` (STUN or
    ChannelData, self-delimiting), ``"rfc4571"`` (2-byte length framing), ``"sip"``, or
    ``"raw"`` (opaque bytes, e.g. relayed by a TURN server)."""


@dataclass(frozen=True)
class Close:
    """Close a connection: FIN after the pending sends, or RST (``reset``) at once."""

    conn: ConnId
    """The connection."""
    reset: bool = False
    """True to reset (RST) instead of an orderly close."""


@dataclass(frozen=True)
class StartTimer:
    """Fire :class:`TimerFired` after ``delay`` seconds; restarts a running timer of that name."""

    timer: TimerId
    """The actor's name for the timer."""
    delay: float
    """Seconds from now."""


@dataclass(frozen=True)
class StopTimer:
    """Cancel a timer; nothing happens if it is not running."""

    timer: TimerId
    """The actor's name for the timer."""


@dataclass(frozen=True)
class Log:
    """A line for the trace: what the actor decided and why (shown in the ladder)."""

    text: str
    """One sentence."""
    level: str = "info"
    """``"info"``, ``"warning"`` or ``"error"``."""


Effect = Listen | Unlisten | Connect | Send | Close | StartTimer | StopTimer | Log


class Actor(Protocol):
    """What a runtime drives. ``name`` is unique in a run; ``host`` is the actor's lab address
    (it listens and connects from there)."""

    name: str
    host: str

    def handle(self, event: Event, now: float) -> list[Effect]:
        """Take one event at time ``now`` (seconds); return the effects, in order."""
        ...
