"""The runtime core: the actor table, events to actors, their effects carried out.

It is the same on both clocks and knows no socket and no simpy: it composes a
:class:`~labsim.net.transport.Transport` (live or virtual) that moves the bytes and keeps time,
:class:`~labsim.net.writes.Writes` (batching, backpressure), a
:class:`~labsim.net.fault_exec.FaultExecutor` when the scenario has fault rules, and one
:class:`~labsim.net.faults.Reachability` for which connects get through. Everything it sees
goes into the :class:`~labsim.trace.Trace`.

Rules it keeps (the contract of :mod:`labsim.proto.events`):

* An actor is never re-entered: events that an effect answers at once (:class:`Listening`,
  :class:`ListenFailed`, an immediate :class:`ConnectFailed`) are posted and delivered after
  the effect list is done.
* The trace records a close once, by whoever closed first: the actor that sent :class:`Close`,
  ``"external"`` for a peer outside the run, ``"network"`` for the network itself. Connections
  still open when the run ends are released without a trace record: the trace says they were
  open when the run stopped (``ConnectionRecord.closed is None``).
* An actor that raises is dead for the rest of the run: the exception goes into the trace as an
  ``error`` log (with where it was raised), its connections are reset (RST, ``by`` = the actor),
  its pending connects cancelled, its listeners closed and its timers stopped; it gets no more
  events. A real process that crashes loses its sockets the same way.
* The trace records each :class:`Send` when it is carried out, and each read before the actor
  sees the bytes (what it forwards then joins those messages' journeys).
* Effects on connections the actor does not have are ignored: a ``warning`` in the trace when
  the name was never a connection of that actor (an actor bug), silently when the connection
  has just closed (a normal race: the peer closed while the actor was still sending).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from labsim.net.fault_exec import FaultExecutor
from labsim.net.faults import FaultPlan, Reachability
from labsim.net.model import EXTERNAL, NETWORK, ActorState, End, Link, StopWhen
from labsim.net.nat import StaticNat
from labsim.net.transport import Handle, Transport
from labsim.net.writes import Writes
from labsim.proto.events import (
    Accepted,
    Actor,
    Address,
    Close,
    Closed,
    Connect,
    Connected,
    ConnectFailed,
    ConnId,
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
    TimerId,
    Unlisten,
)
from labsim.trace import ConnectFailure, Trace
from labsim.wire import stun

logger = logging.getLogger("labsim.net")


class Runtime:
    """Carries actors' effects out and delivers their events; the IO is the transport's."""

    def __init__(
        self,
        actors: Sequence[Actor],
        trace: Trace,
        transport: Transport,
        *,
        faults: FaultPlan | None = None,
        blocked: Iterable[tuple[str, str]] = (),
        refused: Iterable[tuple[str, str]] = (),
        nat: Iterable[StaticNat] = (),
    ) -> None:
        self.trace = trace
        #: Public address -> the static NAT in front of an actor (labsim.net.nat).
        self.nat = {n.public: n for n in nat}
        self.transport = transport
        self.actors: dict[str, ActorState] = {}
        for actor in actors:
            if actor.name in self.actors:
                raise ValueError(f"two actors are named {actor.name!r}: names must be unique")
            if actor.name in (EXTERNAL, NETWORK):
                raise ValueError(f"{actor.name!r} is reserved for the runtime; rename the actor")
            self.actors[actor.name] = ActorState(actor)
        #: Which actor a lab host belongs to (the first listed, when two share one).
        self.owner_of_host: dict[str, str] = {}
        for st in self.actors.values():
            self.owner_of_host.setdefault(st.host, st.name)
        self.writes = Writes(transport)
        #: The scenario's network fault rules (None: a healthy network).
        self.faults = FaultExecutor(faults, self) if faults else None
        #: Which connects get through: ``blocked`` pairs (client actor, server actor) are
        #: black-holed, ``refused`` ones get a RST, and so do the ``block`` rules of ``faults``.
        self.reach = Reachability(blocked, refused, faults or None)
        #: (actor name, exception) for every actor exception, in order (also in the trace).
        self.errors: list[tuple[str, BaseException]] = []
        self.stopping = False
        self._next_gid = 1
        #: How often each connection name was given (an opener may reuse its own names).
        self._names: dict[str, int] = {}
        self._stop_when: StopWhen | None = None
        self._started = False
        #: When each connect in flight started, by (actor, its name for it): a connect that
        #: fails is recorded with its start (the first SYN) as well as its end.
        self._connect_started: dict[tuple[str, ConnId], float] = {}
        self._apply_table: dict[type, Callable[[ActorState, Any, float], None]] = {
            Send: self._do_send,
            Close: self._do_close,
            StartTimer: self._do_start_timer,
            StopTimer: self._do_stop_timer,
            Log: self._do_log,
            Connect: self._do_connect,
            Listen: self._do_listen,
            Unlisten: self._do_unlisten,
        }

    # -- the run -------------------------------------------------------------------------------

    def begin(self, stop: StopWhen | None) -> None:
        if self._started:
            raise RuntimeError("a runtime runs once: build a new one (with a new trace) to rerun")
        self._started = True
        self._stop_when = stop

    def start_all(self) -> None:
        """Deliver :class:`Started` to every actor, in the order they were given."""
        started = Started()
        for st in self.actors.values():
            if self.stopping:
                return
            self.deliver(st, started)

    def request_stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            self.transport.stop()

    def release_all(self) -> None:
        """End of run: stop timers, listeners and connects of every actor (not traced); the
        fault rules go into the trace with how often each acted."""
        self.stopping = True
        if self.faults is not None:
            self.faults.finish()
        transport = self.transport
        if self.faults is not None:
            self.faults.settle()
        for st in self.actors.values():
            for end in st.ends.values():
                end.open = False  # left open in the trace: the run ended, not the connection
            st.ends.clear()
            for handle in st.timers.values():
                handle.cancel()
            st.timers.clear()
            for listener in st.listeners.values():
                transport.unlisten(listener)
            st.listeners.clear()
            for attempt in st.connecting.values():
                transport.cancel_connect(attempt)
            st.connecting.clear()

    # -- events to actors ----------------------------------------------------------------------

    def deliver(self, st: ActorState, event: Event) -> None:
        """Hand one event to an actor and carry out its effects, in order."""
        if self.stopping or not st.alive:
            return
        now = self.transport.now()
        try:
            for effect in st.actor.handle(event, now):
                apply = self._apply_table.get(type(effect))
                if apply is None:
                    self._warn(st, now, f"unknown effect {effect!r} ignored")
                else:
                    apply(st, effect, now)
        except Exception as exc:  # noqa: BLE001 - an actor's bug must not end the run silently
            self._crash(st, event, exc, now)
        self.writes.flush()
        stop = self._stop_when
        if stop is not None and not self.stopping and stop(self.trace):
            self.request_stop()

    def _post(self, st: ActorState, event: Event) -> None:
        self.transport.soon(self.deliver, st, event)

    def _crash(self, st: ActorState, event: Event, exc: Exception, now: float) -> None:
        self.errors.append((st.name, exc))
        frames = traceback.extract_tb(exc.__traceback__)
        where = ""
        if frames:
            where = f" at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}"
        self.trace.log(
            now,
            st.name,
            f"{st.name} raised {type(exc).__name__}: {exc} while handling "
            f"{type(event).__name__}{where}; its connections are reset and it gets no more events",
            "error",
        )
        st.alive = False
        for end in list(st.ends.values()):
            self._close_end(st, end, True, now)
        for attempt in st.connecting.values():
            self.transport.cancel_connect(attempt)
        st.connecting.clear()
        for listener in st.listeners.values():
            self.transport.unlisten(listener)
        st.listeners.clear()
        for handle in st.timers.values():
            handle.cancel()
        st.timers.clear()

    def _warn(self, st: ActorState, now: float, text: str) -> None:
        self.trace.log(now, st.name, text, "warning")

    # -- effects -------------------------------------------------------------------------------

    def _do_send(self, st: ActorState, effect: Send, now: float) -> None:
        end = st.ends.get(effect.conn)
        if end is None:
            self._unknown_conn(st, effect, now)
            return
        data = effect.data
        if data:
            end.link.framing = effect.protocol
            if self.faults is not None:
                self.faults.send(end, data, effect.protocol, now)
            else:
                self.pass_on(end, data, effect.protocol, now)

    def pass_on(self, end: End, data: bytes, framing: str, now: float) -> None:
        """Trace ``data`` and queue it for the write at the end of the effect list."""
        budgets = end.link.budgets
        if budgets:
            assert self.faults is not None
            data = self.faults.spend(end, data, budgets)
            if not data:
                return
        self.trace.sent(now, end.link.gid, end.is_client, data, framing)
        self.writes.queue(end, data)

    def _do_close(self, st: ActorState, effect: Close, now: float) -> None:
        end = st.ends.get(effect.conn)
        if end is not None:
            self._close_end(st, end, effect.reset, now)
            return
        if effect.conn in st.connecting:  # the actor gives up on its connect
            self.transport.cancel_connect(st.connecting.pop(effect.conn))
            self._connect_started.pop((st.name, effect.conn), None)
            st.gone.add(effect.conn)
        else:
            self._unknown_conn(st, effect, now)

    def _close_end(self, st: ActorState, end: End, reset: bool, now: float) -> None:
        self.writes.flush_end(end)  # what was sent before the Close goes first
        del st.ends[end.conn]
        st.gone.add(end.conn)
        end.open = False
        if self.faults is not None and self.faults.hold_close(end, reset):
            return  # a delay rule holds data back: the FIN or RST goes out behind it
        # What was coming to this end and not yet read, it will never read; the start of a
        # message among it crossed before the close did, so it is recorded first.
        self.trace.lost(now, end.link.gid, not end.is_client)
        self.trace.closed(now, end.link.gid, st.name, reset)
        self.transport.close(end, reset)

    def _unknown_conn(self, st: ActorState, effect: Send | Close, now: float) -> None:
        kind = type(effect).__name__
        if effect.conn in st.gone:
            logger.debug("%s: %s on closed connection %r ignored", st.name, kind, effect.conn)
        else:
            self._warn(st, now, f"{kind} on unknown connection {effect.conn!r} ignored")

    def _do_connect(self, st: ActorState, effect: Connect, now: float) -> None:
        conn = effect.conn
        if "/" in conn:
            # Accepted connections are named "<opener>/<opener's name>": an actor's own names
            # have no slash, so the two never collide.
            self._warn(st, now, f"Connect named {conn!r} ignored: names with '/' are the runtime's")
        elif conn in st.ends or conn in st.connecting:
            self._warn(st, now, f"Connect {conn!r} ignored: that connection is already in use")
        else:
            st.gone.discard(conn)
            remote = effect.remote
            nat = self.nat.get(remote.host)
            if nat is not None:
                inside = nat.translate(remote)
                if inside is None:  # no forwarding rule: the NAT drops the SYN
                    st.connecting[conn] = self.transport.connect(st, effect, "blackhole")
                    return
                effect = dataclasses.replace(effect, remote=inside)
                remote = inside
            target = self.owner_of_host.get(remote.host)
            verdict = self.reach.check(st.name, target, remote.port)
            how = None
            if verdict is not None:
                how, hit = verdict
                if hit is not None and self.faults is not None:
                    self.faults.note(now, "blocked", hit, st.name, target or str(remote), None)
            self._connect_started[(st.name, conn)] = now
            st.connecting[conn] = self.transport.connect(st, effect, how)

    def _do_listen(self, st: ActorState, effect: Listen, now: float) -> None:
        address = effect.address
        if address.host != st.host:
            reason = f"{address.host} is not {st.name}'s address ({st.host})"
            self._post(st, ListenFailed(address, reason))
        elif address in st.listeners:
            self._post(st, ListenFailed(address, "already listening there"))
        else:
            result = self.transport.listen(st, address)
            if isinstance(result, str):
                self._post(st, ListenFailed(address, result))
            else:
                bound, handle = result
                st.listeners[bound] = handle
                self._post(st, Listening(bound))

    def _do_unlisten(self, st: ActorState, effect: Unlisten, now: float) -> None:
        handle = st.listeners.pop(effect.address, None)
        if handle is None:
            self._warn(st, now, f"Unlisten of {effect.address}, where it does not listen, ignored")
        else:
            self.transport.unlisten(handle)

    def _do_start_timer(self, st: ActorState, effect: StartTimer, now: float) -> None:
        old = st.timers.pop(effect.timer, None)
        if old is not None:
            old.cancel()
        timer = _Timer(self, st, effect.timer)
        timer.handle = self.transport.later(max(0.0, effect.delay), timer.fire)
        st.timers[effect.timer] = timer

    def _do_stop_timer(self, st: ActorState, effect: StopTimer, now: float) -> None:
        timer = st.timers.pop(effect.timer, None)
        if timer is not None:
            timer.cancel()

    def _do_log(self, st: ActorState, effect: Log, now: float) -> None:
        self.trace.log(now, st.name, effect.text, effect.level)

    # -- what the network reports (called by the transport) ------------------------------------

    def open_link(
        self, client: str, client_addr: Address, server: str, server_addr: Address,
        client_conn: ConnId = "",
    ) -> Link:  # fmt: skip
        """A connection is established: give it its trace id and its one name (the opener's
        name for it, qualified by the opener: ``cms/turn:data:1``) and record it."""
        link = Link(self._next_gid, client, server)
        self._next_gid += 1
        name = f"{client}/{client_conn or link.gid}"
        used = self._names.get(name, 0)
        self._names[name] = used + 1
        link.name = name if not used else f"{name}#{used + 1}"
        self.trace.opened(
            self.transport.now(), link.gid, client, client_addr, server, server_addr,
            name=link.name,
        )  # fmt: skip
        if self.faults is not None:
            self.faults.opened(link)
        return link

    def server_end(
        self, link: Link, st: ActorState, local: Address, remote: Address, io: object
    ) -> End:
        """The accepting actor's end, named with the connection's one name and registered (not
        yet announced)."""
        end = End(link, st, link.name, False, local, remote, io)
        link.server = end
        st.ends[end.conn] = end
        return end

    def client_end(
        self, link: Link, st: ActorState, conn: ConnId, local: Address, remote: Address, io: object
    ) -> End:
        """The connecting actor's end (registered by :meth:`connected`)."""
        end = End(link, st, conn, True, local, remote, io)
        link.client = end
        return end

    def accepted(self, end: End) -> None:
        self.deliver(end.st, Accepted(end.conn, end.local, end.remote))

    def connected(self, end: End) -> None:
        st = end.st
        st.connecting.pop(end.conn, None)
        self._connect_started.pop((st.name, end.conn), None)
        st.ends[end.conn] = end
        self.deliver(st, Connected(end.conn, end.local, end.remote))

    def connect_failed(
        self, st: ActorState, conn: ConnId, remote: Address, how: ConnectFailure, reason: str
    ) -> None:
        """A connect failed: ``how``, typed, for the trace; ``reason``, words, for the actor."""
        st.connecting.pop(conn, None)
        now = self.transport.now()
        started = self._connect_started.pop((st.name, conn), now)
        self.trace.refuse(now, st.name, st.host, remote, reason, how=how, started=started)
        self.deliver(st, ConnectFailed(conn, remote, reason))

    def received(self, end: End, data: bytes) -> None:
        """Bytes arrived on ``end`` (after the link's latency)."""
        if not end.open:
            # The receiver closed or reset its end before these bytes reached it: it never
            # reads them (a closed socket answers data with RST, RFC 9293 §3.10.7.1), so what
            # they carried is lost, not in flight.
            self.trace.lost(self.transport.now(), end.link.gid, not end.is_client)
            return
        link = end.link
        now = self.transport.now()
        if end.peer is None:
            # The sender is outside the run: nobody else will put its bytes in the trace.
            if not link.framing:
                link.framing = guess_framing(data)
            self.trace.sent(now, link.gid, not end.is_client, data, link.framing)
        # Before the actor sees them: what it forwards joins these messages' journeys.
        self.trace.delivered(now, link.gid, not end.is_client, len(data))
        writes = self.writes
        writes.source = end
        try:
            self.deliver(end.st, Received(end.conn, data))
        finally:
            writes.source = None

    def peer_closed(self, end: End, reset: bool, by: str) -> None:
        """The far side closed (FIN after all data, or RST) or the network dropped it."""
        if not end.open:
            return
        end.open = False
        st = end.st
        del st.ends[end.conn]
        st.gone.add(end.conn)
        now = self.transport.now()
        self.trace.lost(now, end.link.gid, not end.is_client)  # crossed before the close
        self.trace.closed(now, end.link.gid, by, reset)
        self.deliver(st, Closed(end.conn, reset))

    def write_pressure(self, end: End, paused: bool) -> None:
        """The transport's write buffer for ``end`` went over (or back under) its mark."""
        self.writes.pressure(end, paused)


class _Timer:
    """One start of an actor's timer: fires :class:`TimerFired` unless stopped or restarted."""

    __slots__ = ("runtime", "st", "name", "handle")

    def __init__(self, runtime: Runtime, st: ActorState, name: TimerId) -> None:
        self.runtime = runtime
        self.st = st
        self.name = name
        self.handle: Handle | None = None

    def fire(self) -> None:
        st = self.st
        if st.timers.get(self.name) is self:
            del st.timers[self.name]
            self.runtime.deliver(st, TimerFired(self.name))

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()


_SIP_START = re.compile(rb"(?:[A-Za-z]+ [^ \r\n]+ SIP/2\.0|SIP/2\.0 [1-6]\d\d )")


def guess_framing(data: bytes) -> str:
    """How the first bytes a peer outside the run sends (a TURN client connecting to our
    Expressway-E, sipp calling our Skype client) are framed, as Wireshark's heuristics tell:
    the STUN magic cookie at offset 4 (RFC 5389 §6) or, after an RFC 4571 length, at offset 6;
    a SIP start line (RFC 3261 §7.1, §7.2); anything else is opaque."""
    if len(data) >= 8 and data[0] < 0x40 and data[4:8] == stun.MAGIC_COOKIE_BYTES:
        return "stun"
    if len(data) >= 10 and data[6:10] == stun.MAGIC_COOKIE_BYTES:
        return "rfc4571"
    if _SIP_START.match(data):
        return "sip"
    return "raw"
