"""SIP over TCP for one actor (RFC 3261 §18): listeners, connections, framing, connection reuse.

Every hop of the call runs SIP over TCP, and the elements decide *where* a message goes; this
machine decides *how*: which connection carries it. It keeps, per connection, the peer's
address and a :class:`~labsim.wire.framing.SipSplitter`, and hands up whole parsed messages.

Connection reuse: a message for a host goes over any open connection to that host, whichever
side opened it, before a new one is opened. RFC 3261 §18.2.2 sends responses back on the
connection the request came in on; reusing connections for requests too (as RFC 5923 does for
TLS) is what Cisco's traversal zone relies on: Expressway-C opens the connection to
Expressway-E (port 7001), and Expressway-E, which may not open connections into the internal
network, sends its requests for Expressway-C down that connection.

A message that does not parse is logged and the connection closed (RFC 3261 §18.3: with TCP
there is no way to find the next message after a framing error); nothing escapes as an
exception, so a bad peer never stops the actor.

It speaks the machines' contract (:mod:`labsim.proto.machine`): :meth:`SipTransport.handle`
and the commands (:meth:`~SipTransport.send`, :meth:`~SipTransport.open`,
:meth:`~SipTransport.send_on`, :meth:`~SipTransport.close_all`) return a
:class:`~labsim.proto.machine.Step` of :data:`Notice`. On ``Started`` it listens on its ports;
the router learns its connections from its ``Connect`` effects and ``Accepted`` on its ports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from labsim.proto.events import (
    Accepted,
    Address,
    Close,
    Closed,
    Connect,
    Connected,
    ConnectFailed,
    ConnId,
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
)
from labsim.proto.machine import Step
from labsim.wire import WireError, sip
from labsim.wire.errors import FramingError
from labsim.wire.framing import SipSplitter


@dataclass(frozen=True)
class Incoming:
    """A whole SIP message arrived."""

    conn: ConnId
    message: sip.SipMessage
    source: Address
    """The peer's address (host and the connection's port)."""


@dataclass(frozen=True)
class SendFailed:
    """Messages queued for ``to`` could not be sent: the connection could not be opened."""

    to: Address
    messages: tuple[sip.SipMessage, ...]
    reason: str


@dataclass(frozen=True)
class ConnectionLost:
    """A SIP connection closed (by the peer, a reset or a framing error)."""

    conn: ConnId
    remote: Address
    reset: bool


Notice = Incoming | SendFailed | ConnectionLost

#: Seconds a SIP message may take to arrive whole once its first byte is in: 64·T1, the longest
#: any RFC 3261 transaction waits (§17.1.1.2). A peer that sends part of a message and stalls
#: would otherwise hold its connection and up to a header block of buffer for ever (web servers
#: bound the same wait: nginx's client_header_timeout).
INCOMPLETE_TIMEOUT = 32.0


@dataclass(frozen=True)
class IncompleteTimer:
    """The wait for the rest of a SIP message on ``conn``."""

    conn: ConnId


@dataclass
class _Conn:
    remote: Address
    open: bool
    splitter: SipSplitter = field(default_factory=SipSplitter)
    queue: list[sip.SipMessage] = field(default_factory=list)
    waiting: bool = False
    """Whether an :class:`IncompleteTimer` runs for it."""


class SipTransport:
    """The SIP connections of one actor.

    Every call returns a :class:`Step` of :data:`Notice` (:class:`Incoming`,
    :class:`SendFailed`, :class:`ConnectionLost`).
    """

    def __init__(
        self,
        host: str,
        ports: tuple[int, ...],
        *,
        prefix: str = "sip",
        timeout: float = 5.0,
        incomplete_timeout: float = INCOMPLETE_TIMEOUT,
    ) -> None:
        self.host = host
        self.ports = ports
        self.prefix = prefix
        self.timeout = timeout
        self.incomplete_timeout = incomplete_timeout
        self._conns: dict[ConnId, _Conn] = {}
        #: Per remote host, its connections in the order they were made: connection_to runs
        #: for every message sent, and a shared actor of a load run (the Edge, CMS) holds a
        #: connection per client, so scanning them all would make each send cost as many steps
        #: as there are calls.
        self._by_host: dict[str, dict[ConnId, None]] = {}
        self._count = 0

    # -- events ------------------------------------------------------------------------------

    def handle(self, event: Event, now: float) -> Step[Notice]:
        effects: list[Effect] = []
        notices: list[Notice] = []
        if type(event) is Received:  # most events: bytes on a connection
            effects = self._received(event.conn, event.data, notices)
            return Step(tuple(effects), tuple(notices))
        match event:
            case Started():
                effects += [Listen(Address(self.host, port)) for port in self.ports]
            case Listening(address=address):
                effects.append(Log(f"SIP on TCP {address}"))
            case ListenFailed(address=address, reason=reason):
                effects.append(Log(f"cannot listen for SIP on {address}: {reason}", "error"))
            case Accepted(conn=conn, remote=remote):
                self._add(conn, _Conn(remote, open=True))
            case Connected(conn=conn, remote=remote):
                state = self._conns.get(conn)
                if state is not None:
                    state.open = True
                    for message in state.queue:
                        effects.append(Send(conn, sip.encode(message), "sip"))
                    state.queue.clear()
            case ConnectFailed(conn=conn, remote=remote, reason=reason):
                state = self._drop(conn)
                if state is not None:
                    notices.append(SendFailed(remote, tuple(state.queue), reason))
            case Received(conn=conn, data=data):
                effects += self._received(conn, data, notices)
            case Closed(conn=conn, reset=reset):
                state = self._drop(conn)
                if state is not None:
                    notices.append(ConnectionLost(conn, state.remote, reset))
                    if state.waiting:
                        effects.append(StopTimer(IncompleteTimer(conn)))
            case TimerFired(timer=IncompleteTimer(conn=conn)):
                effects += self._incomplete(conn, notices)
        return Step(tuple(effects), tuple(notices))

    def _received(self, conn: ConnId, data: bytes, notices: list[Notice]) -> list[Effect]:
        state = self._conns[conn]
        lost: FramingError | None = None
        try:
            frames = state.splitter.feed(data)
        except FramingError as exc:
            # The whole messages before the bad bytes arrived intact: they are delivered first.
            frames, lost = list(exc.messages), exc
        effects: list[Effect] = []
        for frame in frames:
            try:
                message = sip.parse_message(frame)
            except WireError as exc:
                # A whole message (Content-Length held) that does not parse: drop it alone.
                effects.append(Log(f"bad SIP message from {state.remote}: {exc}", "error"))
                continue
            notices.append(Incoming(conn, message, state.remote))
        if lost is not None:
            return effects + self._reset(conn, f"SIP framing error from {state.remote}: {lost}",
                                         notices)  # fmt: skip
        if state.splitter.buffered and (not state.waiting or frames):
            # The wait is for the message now incomplete: one that completed restarts it (a
            # busy connection, many calls' SIP, may end every read inside a message).
            state.waiting = True
            effects.append(StartTimer(IncompleteTimer(conn), self.incomplete_timeout))
        elif not state.splitter.buffered and state.waiting:
            state.waiting = False
            effects.append(StopTimer(IncompleteTimer(conn)))
        return effects

    def _incomplete(self, conn: ConnId, notices: list[Notice]) -> list[Effect]:
        state = self._conns.get(conn)
        if state is None or not state.waiting:
            return []  # closed meanwhile
        state.waiting = False
        if not state.splitter.buffered:
            return []
        why = (
            f"{state.splitter.buffered} bytes of a SIP message from {state.remote} still "
            f"incomplete after {self.incomplete_timeout:g} s"
        )
        return self._reset(conn, why, notices)

    def _reset(self, conn: ConnId, why: str, notices: list[Notice]) -> list[Effect]:
        """Give the connection up: RFC 3261 §18.3, no next message can be found on it."""
        state = self._drop(conn)
        assert state is not None
        notices.append(ConnectionLost(conn, state.remote, True))
        effects: list[Effect] = [Log(f"{why}: reset", "error"), Close(conn, reset=True)]
        if state.waiting:
            effects.append(StopTimer(IncompleteTimer(conn)))
        return effects

    # -- sending -------------------------------------------------------------------------------

    def connection_to(self, to: Address) -> ConnId | None:
        """An open or opening connection to ``to``: the exact address first, then any to its
        host (the reuse described in the module docstring)."""
        same_host: ConnId | None = None
        for conn in self._by_host.get(to.host, ()):
            if self._conns[conn].remote == to:
                return conn
            if same_host is None:
                same_host = conn
        return same_host

    def _add(self, conn: ConnId, state: _Conn) -> None:
        self._drop(conn)
        self._conns[conn] = state
        self._by_host.setdefault(state.remote.host, {})[conn] = None

    def _drop(self, conn: ConnId) -> _Conn | None:
        state = self._conns.pop(conn, None)
        if state is not None:
            same_host = self._by_host[state.remote.host]
            del same_host[conn]
            if not same_host:
                del self._by_host[state.remote.host]
        return state

    def send(self, message: sip.SipMessage, to: Address) -> Step[Notice]:
        """Send ``message`` to ``to``, opening a connection when none exists."""
        conn = self.connection_to(to)
        if conn is None:
            return Step((self._connect(to, [message]),))
        return self.send_on(conn, message)

    def open(self, to: Address) -> Step[Notice]:
        """Open a connection to ``to`` ahead of any message (a traversal zone's link)."""
        if self.connection_to(to) is not None:
            return Step()
        return Step((self._connect(to, []),))

    def _connect(self, to: Address, queue: list[sip.SipMessage]) -> Connect:
        self._count += 1
        conn = f"{self.prefix}:{self._count}"
        self._add(conn, _Conn(to, open=False, queue=queue))
        return Connect(conn, to, self.timeout)

    def send_on(self, conn: ConnId, message: sip.SipMessage) -> Step[Notice]:
        """Send on a given connection (a response goes back the way its request came)."""
        state = self._conns.get(conn)
        if state is None:
            why = f"cannot send {sip.summary(message)}: connection {conn} is gone"
            return Step((Log(why, "warn"),))
        if not state.open:
            state.queue.append(message)
            return Step()
        return Step((Send(conn, sip.encode(message), "sip"),))

    def remote_of(self, conn: ConnId) -> Address | None:
        state = self._conns.get(conn)
        return None if state is None else state.remote

    def close_all(self) -> Step[Notice]:
        effects = tuple(Close(conn) for conn in self._conns)
        self._conns.clear()
        self._by_host.clear()
        return Step(effects)
