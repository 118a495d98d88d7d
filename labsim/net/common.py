"""What both runtimes share: the actor table, connections, timers, and carrying effects out.

A runtime (:mod:`labsim.net.live`, :mod:`labsim.net.virtual`) subclasses :class:`Runtime` and
supplies the clock and the IO hooks (``_io_*``); everything that is the same in both — naming
connections, checking effects, writing the :class:`~labsim.trace.Trace`, timers, containing an
actor's exception, the stop condition — lives here, once.

Rules this module keeps (the contract of :mod:`labsim.proto.events`):

* An actor is never re-entered: events that an effect answers at once (:class:`Listening`,
  :class:`ListenFailed`, an immediate :class:`ConnectFailed`) are posted with ``_soon`` and
  delivered after the effect list is done.
* Every connection has one run-global int id (``Link.gid``, the id in the trace) and one name
  (``Link.name``): the opener's name for it, qualified by the opener (``cms/turn:data:1``).
  The opener knows its end by the name it gave in :class:`Connect`; the accepting actor by
  the connection's name, so its notes and the ladder, JSON and capture say the same.
* The trace records a close once, by whoever closed first: the actor that sent :class:`Close`,
  ``"external"`` for a peer outside the run, ``"network"`` for the network itself. Connections
  still open when the run ends are released without a trace record: the trace says they were
  open when the run stopped (``ConnectionRecord.closed is None``).
* An actor that raises is dead for the rest of the run: the exception goes into the trace as an
  ``error`` log (with where it was raised), its connections are reset (RST, ``by`` = the actor),
  its pending connects cancelled, its listeners closed and its timers stopped; it gets no more
  events. A real process that crashes loses its sockets the same way.
* The trace records each :class:`Send` when it is carried out; the bytes of all the Sends one
  effect list makes on one connection are then written together, after the list (before a
  Close of that connection in it), as TCP_CORK would.
* Effects on connections the actor does not have are ignored: a ``warning`` in the trace when
  the name was never a connection of that actor (an actor bug), silently when the connection
  has just closed (a normal race: the peer closed while the actor was still sending).
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from labsim.net.faults import Cut, Delay, Drop, FaultPlan, Hit
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
from labsim.trace import FaultRecord, Trace
from labsim.wire import stun

logger = logging.getLogger("labsim.net")

#: ``stop(trace)``: end the run as soon as this is true (checked after every event).
StopWhen = Callable[[Trace], bool]

#: Who a connection's far end belongs to when it is not an actor of the run (live only).
EXTERNAL = "external"
#: ``closed_by`` when neither end closed it (a reset by the network, a lost listener).
NETWORK = "network"
#: Client ports (and ``Listen`` on port 0) come from a per-host counter over this range, in
#: both runtimes, so one scenario shows the same ports on both clocks.
EPHEMERAL_FIRST = 40000
EPHEMERAL_LAST = 65535


class ActorState:
    """One actor and everything the runtime holds for it."""

    __slots__ = (
        "actor",
        "name",
        "host",
        "alive",
        "ends",
        "gone",
        "connecting",
        "listeners",
        "timers",
        "accepted",
    )

    def __init__(self, actor: Actor) -> None:
        self.actor = actor
        self.name: str = actor.name
        self.host: str = actor.host
        self.alive = True
        #: Open connections by the actor's name for them.
        self.ends: dict[ConnId, End] = {}
        #: Names of connections that closed: later effects on them are quietly ignored.
        self.gone: set[ConnId] = set()
        #: Connects in progress: name -> the runtime's handle for the attempt.
        self.connecting: dict[ConnId, Any] = {}
        #: Listening addresses -> the runtime's handle.
        self.listeners: dict[Address, Any] = {}
        #: Running timers -> a token unique to this start (a restart makes a new one).
        self.timers: dict[TimerId, Any] = {}
        #: Accepted connections so far, for the ``in:<n>`` names.
        self.accepted = 0


class Link:
    """One TCP connection of the run: the trace's id and its two ends (None: outside the run)."""

    __slots__ = ("gid", "client", "server", "framing", "names", "number", "budgets", "name")

    def __init__(self, gid: int, client: str = "", server: str = "") -> None:
        self.gid = gid
        self.client: End | None = None
        self.server: End | None = None
        #: The framing the run's own end last sent with: bytes from a peer outside the run
        #: (coturn, sipp) are traced with the same framing, so its answers decode too. Empty
        #: until then: a peer outside the run that speaks first is framed by its first bytes.
        self.framing = ""
        #: (client actor, server actor), as the trace names them.
        self.names = (client, server)
        #: Which connection between these two actors this is (1-based), for fault rules.
        self.number = 0
        #: Cut-after-bytes rules on this connection: [rule, sender or None for both ways,
        #: bytes still allowed].
        self.budgets: list[list[Any]] | None = None
        #: The connection's one name (``cms/turn:data:1``), see :meth:`Runtime._open_link`.
        self.name = ""


class End:
    """One actor's end of a connection."""

    __slots__ = (
        "link", "st", "conn", "is_client", "local", "remote", "open", "io", "outbuf",
        "feeders", "write_paused", "read_pauses", "watched", "held",
    )  # fmt: skip

    def __init__(
        self,
        link: Link,
        st: ActorState,
        conn: ConnId,
        is_client: bool,
        local: Address,
        remote: Address,
        io: Any,
    ) -> None:
        self.link = link
        self.st = st
        self.conn = conn
        self.is_client = is_client
        #: Lab addresses, as the actor sees them.
        self.local = local
        self.remote = remote
        #: False once the actor closed it or was told it closed.
        self.open = True
        #: The runtime's handle: a transport (live), the one-way latency to the peer (virtual).
        self.io = io
        #: Sends of the effect list being carried out, written as one when it is done.
        self.outbuf: list[bytes] | None = None
        #: Backpressure (live runtime): the ends of the same actor whose received bytes made it
        #: send on this one (a relay's other side). While this end's write buffer is over the
        #: high-water mark they are not read, so a slow reader cannot make a relay buffer
        #: without bound; the kernel's window then slows the fast sender down, as TCP does.
        self.feeders: set[End] | None = None
        self.write_paused = False
        #: How many paused ends this one currently feeds (reading resumes at 0).
        self.read_pauses = 0
        #: Fault rules (see :mod:`labsim.net.faults`): whether a drop or delay rule can match
        #: what this end sends (None: not worked out yet), and what a delay holds back:
        #: [release time, a unit of ``Trace.cut`` or the actor's Close (its reset flag)], in
        #: order.
        self.watched: bool | None = None
        self.held: list[list[Any]] | None = None

    @property
    def names(self) -> tuple[str, str]:
        """(this end's actor, the far end's), as the trace names them."""
        client, server = self.link.names
        return (client, server) if self.is_client else (server, client)

    @property
    def peer(self) -> End | None:
        """The other end, when it belongs to an actor of the run."""
        return self.link.server if self.is_client else self.link.client


class Runtime:
    """Carries actors' effects out and delivers their events; the IO is the subclass's.

    Subclasses implement :meth:`now`, :meth:`_soon` and the ``_io_*`` hooks, call
    :meth:`_start_all` to begin, and report what the network did through :meth:`_open_link`,
    :meth:`_server_end` / :meth:`_client_end`, :meth:`_deliver_accepted` /
    :meth:`_deliver_connected`, :meth:`_connect_failed`, :meth:`_received`,
    :meth:`_peer_closed` and :meth:`_timer_fired`.
    """

    def __init__(
        self, actors: Sequence[Actor], trace: Trace, faults: FaultPlan | None = None
    ) -> None:
        self.trace = trace
        #: The scenario's network fault rules (None or empty: a healthy network).
        self.faults = faults if faults else None
        self.actors: dict[str, ActorState] = {}
        for actor in actors:
            if actor.name in self.actors:
                raise ValueError(f"two actors are named {actor.name!r}: names must be unique")
            if actor.name in (EXTERNAL, NETWORK):
                raise ValueError(f"{actor.name!r} is reserved for the runtime; rename the actor")
            self.actors[actor.name] = ActorState(actor)
        #: (actor name, exception) for every actor exception, in order (also in the trace).
        self.errors: list[tuple[str, BaseException]] = []
        self._next_gid = 1
        #: How often each connection name was given (an opener may reuse its own names).
        self._names: dict[str, int] = {}
        self._stop_when: StopWhen | None = None
        self._corked: list[End] = []
        self._stopping = False
        #: The end whose bytes the actor is handling (for backpressure bookkeeping).
        self._source: End | None = None
        self._started = False
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

    # -- supplied by the runtime ---------------------------------------------------------------

    def now(self) -> float:
        """Seconds since the run started."""
        raise NotImplementedError

    def _soon(self, fn: Callable[..., object], *args: Any) -> None:
        """Call ``fn(*args)`` after the current callback, at the same time."""
        raise NotImplementedError

    def _later(self, delay: float, fn: Callable[..., object], *args: Any) -> None:
        """Call ``fn(*args)`` ``delay`` seconds from now (callbacks due at the same time run
        in the order they were scheduled)."""
        raise NotImplementedError

    def _io_alive(self, end: End) -> bool:
        """Whether bytes written on ``end`` can still go out (its socket is not lost)."""
        return True

    def _io_abort(self, end: End) -> None:
        """The network cut the connection: drop ``end``'s socket without a word to the peer."""

    def _on_stop(self) -> None:
        """The run must end now (``until`` reached or ``stop`` true)."""
        raise NotImplementedError

    def _io_listen(self, st: ActorState, address: Address) -> tuple[Address, Any] | str:
        """Start listening: (bound address, handle), or why not."""
        raise NotImplementedError

    def _io_unlisten(self, handle: Any) -> None:
        raise NotImplementedError

    def _io_connect(self, st: ActorState, effect: Connect) -> Any:
        """Start a connect; returns the handle stored in ``st.connecting``. Must end in
        :meth:`_deliver_connected` or :meth:`_connect_failed` unless cancelled."""
        raise NotImplementedError

    def _io_cancel_connect(self, st: ActorState, handle: Any) -> None:
        raise NotImplementedError

    def _io_send(self, end: End, data: bytes) -> None:
        """Write bytes (the sends of one effect list on ``end``, joined)."""
        raise NotImplementedError

    def _io_close(self, end: End, reset: bool) -> None:
        """The actor closed its end (already marked closed and traced): FIN or RST the peer."""
        raise NotImplementedError

    def _io_start_timer(self, st: ActorState, timer: TimerId, delay: float) -> Any:
        """Arm a timer that calls :meth:`_timer_fired` with the returned token."""
        raise NotImplementedError

    def _io_stop_timer(self, token: Any) -> None:
        raise NotImplementedError

    # -- the run -------------------------------------------------------------------------------

    def _begin(self, stop: StopWhen | None) -> None:
        if self._started:
            raise RuntimeError("a runtime runs once: build a new one (with a new trace) to rerun")
        self._started = True
        self._stop_when = stop

    def _start_all(self) -> None:
        """Deliver :class:`Started` to every actor, in the order they were given."""
        started = Started()
        for st in self.actors.values():
            if self._stopping:
                return
            self.deliver(st, started)

    def _request_stop(self) -> None:
        if not self._stopping:
            self._stopping = True
            self._on_stop()

    def _release_all(self) -> None:
        """End of run: stop timers, listeners and connects of every actor (not traced)."""
        self._stopping = True
        for st in self.actors.values():
            for end in st.ends.values():
                end.open = False  # left open in the trace: the run ended, not the connection
            st.ends.clear()
            for token in st.timers.values():
                self._io_stop_timer(token)
            st.timers.clear()
            for handle in st.listeners.values():
                self._io_unlisten(handle)
            st.listeners.clear()
            for handle in st.connecting.values():
                self._io_cancel_connect(st, handle)
            st.connecting.clear()

    # -- events to actors ----------------------------------------------------------------------

    def deliver(self, st: ActorState, event: Event) -> None:
        """Hand one event to an actor and carry out its effects, in order."""
        if self._stopping or not st.alive:
            return
        now = self.now()
        try:
            for effect in st.actor.handle(event, now):
                apply = self._apply_table.get(type(effect))
                if apply is None:
                    self._warn(st, now, f"unknown effect {effect!r} ignored")
                else:
                    apply(st, effect, now)
        except Exception as exc:  # noqa: BLE001 - an actor's bug must not end the run silently
            self._crash(st, event, exc, now)
        if self._corked:
            self._flush()
        stop = self._stop_when
        if stop is not None and not self._stopping and stop(self.trace):
            self._request_stop()

    def _post(self, st: ActorState, event: Event) -> None:
        self._soon(self.deliver, st, event)

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
        for handle in st.connecting.values():
            self._io_cancel_connect(st, handle)
        st.connecting.clear()
        for handle in st.listeners.values():
            self._io_unlisten(handle)
        st.listeners.clear()
        for token in st.timers.values():
            self._io_stop_timer(token)
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
        source = self._source
        if source is not None and source is not end and source.st is st:
            self._note_feeder(source, end)
        if data:
            end.link.framing = effect.protocol
            if self.faults is not None:
                self._send_with_faults(end, data, effect.protocol, now)
            else:
                self._pass(end, data, effect.protocol, now)

    def _pass(self, end: End, data: bytes, framing: str, now: float) -> None:
        """Trace ``data`` and queue it for the write at the end of the effect list."""
        budgets = end.link.budgets
        if budgets:
            data = self._spend(end, data, budgets)
            if not data:
                return
        self.trace.sent(now, end.link.gid, end.is_client, data, framing)
        self._write(end, data)

    def _write(self, end: End, data: bytes) -> None:
        """Queue bytes (already traced) for the write at the end of the effect list."""
        buf = end.outbuf
        if buf is None:
            end.outbuf = [data]
            self._corked.append(end)
        else:
            buf.append(data)

    # -- fault rules (decided by labsim.net.faults, carried out here for both runtimes) --------

    def _send_with_faults(self, end: End, data: bytes, framing: str, now: float) -> None:
        plan = self.faults
        assert plan is not None
        if end.watched is None:
            end.watched = plan.watches(*end.names)
        if not end.watched and not end.held:
            self._pass(end, data, framing, now)
            return
        src, dst = end.names
        trace = self.trace
        budgets = end.link.budgets
        # Units that pass untouched leave as one write, as they would have without the rules
        # (a relay's write of two framed checks stays one TCP segment).
        passing: list[bytes] = []
        for unit in trace.cut(now, end.link.gid, end.is_client, data, framing):
            record, wire = unit
            hit = None
            if end.watched:
                hit = plan.message(src, dst, end.link.number, record.protocol, record.facts)
            held = end.held
            if hit is None and not held:
                if budgets:
                    wire = self._spend(end, wire, budgets)
                    if not wire:
                        continue
                trace.wire((record, wire), now)
                passing.append(wire)
                continue
            if passing:
                self._write(end, b"".join(passing))
                passing = []
            if hit is not None and isinstance(hit.rule, Drop):
                trace.drop(unit, now, hit.number)
                self._note_fault(now, "dropped", hit, src, dst, end.link.gid, record.summary)
            elif hit is not None and isinstance(hit.rule, Delay):
                release = now + hit.rule.seconds
                if held:
                    release = max(release, held[-1][0])
                trace.hold(unit, hit.number, release - now)
                self._note_fault(now, "delayed", hit, src, dst, end.link.gid, record.summary)
                if held is None:
                    held = end.held = []
                held.append([release, unit])
                self._later(release - now, self._release, end)
            elif held:
                trace.hold(unit, 0, held[-1][0] - now)  # TCP order: behind the held bytes
                held.append([held[-1][0], unit])
        if passing:
            self._write(end, b"".join(passing))

    def _release(self, end: End) -> None:
        """A delay is over: send what it held (and what queued behind it), in order."""
        held = end.held
        now = self.now()
        while held and held[0][0] <= now:
            _, unit = held.pop(0)
            if isinstance(unit, bool):  # the actor's Close (its reset flag), held behind data
                self.trace.closed(now, end.link.gid, end.st.name, unit)
                self.trace.lost(now, end.link.gid, not end.is_client)
                self._io_close(end, unit)
            elif self._io_alive(end) and (end.open or held):
                self.trace.wire(unit, now)
                self._io_send(end, unit[1])

    def _spend(self, end: End, data: bytes, budgets: list[list[Any]]) -> bytes:
        """Count bytes against cut-after-bytes rules; the rest of a cut write never leaves."""
        sender = end.st.name
        for budget in budgets:
            hit, who, left = budget
            if who is not None and who != sender or left < 0:
                continue
            if len(data) < left:
                budget[2] = left - len(data)
                continue
            data = data[:left]
            budget[2] = -1
            self._soon(self._cut, end.link, hit)
        return data

    def _cut(self, link: Link, hit: Hit) -> None:
        """The network cuts a connection: both ends get a reset, nothing more goes through."""
        ends = [e for e in (link.client, link.server) if e is not None and e.open]
        if not ends or self._stopping:
            return
        now = self.now()
        self._note_fault(now, "cut", hit, *link.names, link.gid)
        self.trace.closed(now, link.gid, NETWORK, True)
        for end in ends:
            end.outbuf = end.held = None  # not yet on the wire: lost with the connection
            self._io_abort(end)
            # Not the live runtime's override, which delays a peer's close by the link's
            # latency: the network cuts here, so both ends learn of it now.
            Runtime._peer_closed(self, end, True, NETWORK)

    def _blocked(self, st: ActorState, target: str | None, remote: Address) -> str | None:
        """How a fault rule blocks this connect (``refuse`` / ``blackhole``), if one does."""
        if self.faults is None:
            return None
        hit = self.faults.block(st.name, target, remote.port)
        if hit is None:
            return None
        self._note_fault(self.now(), "blocked", hit, st.name, target or str(remote), None)
        assert not isinstance(hit.rule, Drop | Delay | Cut)
        return hit.rule.how

    def _note_fault(
        self, now: float, action: str, hit: Hit, src: str, dst: str, conn: int | None,
        summary: str = "",
    ) -> None:  # fmt: skip
        self.trace.fault(FaultRecord(now, action, hit.words(), src, dst, conn, summary))

    def _note_feeder(self, source: End, end: End) -> None:
        feeders = end.feeders
        if feeders is None:
            feeders = end.feeders = set()
        if source not in feeders:
            feeders.add(source)
            if end.write_paused:
                self._pause_feeder(source)

    def _write_pressure(self, end: End, paused: bool) -> None:
        """The write buffer of ``end`` went over (or back under) its high-water mark."""
        if end.write_paused == paused:
            return
        end.write_paused = paused
        for feeder in end.feeders or ():
            if paused:
                self._pause_feeder(feeder)
            else:
                feeder.read_pauses -= 1
                if feeder.read_pauses == 0 and feeder.open:
                    self._io_reading(feeder, True)

    def _pause_feeder(self, feeder: End) -> None:
        feeder.read_pauses += 1
        if feeder.read_pauses == 1 and feeder.open:
            self._io_reading(feeder, False)

    def _io_reading(self, end: End, on: bool) -> None:
        """Resume (``on``) or pause reading ``end``; runtimes without buffers do nothing."""

    def _flush(self) -> None:
        """Write what each connection was sent by one effect list, as one write: the bytes one
        event makes an actor send leave together (like TCP_CORK), so they usually arrive as one
        Received in both runtimes, and a live run makes one syscall instead of several."""
        corked, self._corked = self._corked, []
        for end in corked:
            self._flush_end(end)

    def _flush_end(self, end: End) -> None:
        buf = end.outbuf
        if buf is not None:
            end.outbuf = None
            self._io_send(end, buf[0] if len(buf) == 1 else b"".join(buf))

    def _do_close(self, st: ActorState, effect: Close, now: float) -> None:
        end = st.ends.get(effect.conn)
        if end is not None:
            self._close_end(st, end, effect.reset, now)
            return
        if effect.conn in st.connecting:  # the actor gives up on its connect
            self._io_cancel_connect(st, st.connecting.pop(effect.conn))
            st.gone.add(effect.conn)
        else:
            self._unknown_conn(st, effect, now)

    def _close_end(self, st: ActorState, end: End, reset: bool, now: float) -> None:
        self._flush_end(end)  # what was sent before the Close goes first
        del st.ends[end.conn]
        st.gone.add(end.conn)
        end.open = False
        if end.held:  # a delay rule holds data back: the FIN or RST goes out behind it
            end.held.append([end.held[-1][0], reset])
            return
        self.trace.closed(now, end.link.gid, st.name, reset)
        # What was coming to this end and not yet read, it will never read.
        self.trace.lost(now, end.link.gid, not end.is_client)
        self._io_close(end, reset)

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
            st.connecting[conn] = self._io_connect(st, effect)

    def _do_listen(self, st: ActorState, effect: Listen, now: float) -> None:
        address = effect.address
        if address.host != st.host:
            reason = f"{address.host} is not {st.name}'s address ({st.host})"
            self._post(st, ListenFailed(address, reason))
        elif address in st.listeners:
            self._post(st, ListenFailed(address, "already listening there"))
        else:
            result = self._io_listen(st, address)
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
            self._io_unlisten(handle)

    def _do_start_timer(self, st: ActorState, effect: StartTimer, now: float) -> None:
        old = st.timers.pop(effect.timer, None)
        if old is not None:
            self._io_stop_timer(old)
        st.timers[effect.timer] = self._io_start_timer(st, effect.timer, max(0.0, effect.delay))

    def _do_stop_timer(self, st: ActorState, effect: StopTimer, now: float) -> None:
        token = st.timers.pop(effect.timer, None)
        if token is not None:
            self._io_stop_timer(token)

    def _do_log(self, st: ActorState, effect: Log, now: float) -> None:
        self.trace.log(now, st.name, effect.text, effect.level)

    # -- what the network reports --------------------------------------------------------------

    def _open_link(
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
            self.now(), link.gid, client, client_addr, server, server_addr, name=link.name
        )
        if self.faults is not None:
            link.number = self.faults.opened(client, server)
            for hit in self.faults.cuts(client, server, link.number):
                rule = hit.rule
                assert isinstance(rule, Cut)
                if rule.after is not None:
                    self._later(rule.after, self._cut, link, hit)
                elif rule.after_bytes is not None:
                    sender = rule.src if rule.dst is not None else None
                    link.budgets = (link.budgets or []) + [[hit, sender, rule.after_bytes]]
        return link

    def _server_end(
        self, link: Link, st: ActorState, local: Address, remote: Address, io: Any
    ) -> End:
        """The accepting actor's end, named with the connection's one name (the opener's,
        ``cms/turn:data:1``) and registered (not yet announced)."""
        st.accepted += 1
        end = End(link, st, link.name, False, local, remote, io)
        link.server = end
        st.ends[end.conn] = end
        return end

    def _client_end(
        self, link: Link, st: ActorState, conn: ConnId, local: Address, remote: Address, io: Any
    ) -> End:
        """The connecting actor's end (registered by :meth:`_deliver_connected`)."""
        end = End(link, st, conn, True, local, remote, io)
        link.client = end
        return end

    def _deliver_accepted(self, end: End) -> None:
        self.deliver(end.st, Accepted(end.conn, end.local, end.remote))

    def _deliver_connected(self, end: End) -> None:
        st = end.st
        st.connecting.pop(end.conn, None)
        st.ends[end.conn] = end
        self.deliver(st, Connected(end.conn, end.local, end.remote))

    def _connect_failed(self, st: ActorState, conn: ConnId, remote: Address, reason: str) -> None:
        st.connecting.pop(conn, None)
        self.trace.refuse(self.now(), st.name, st.host, remote, reason)
        self.deliver(st, ConnectFailed(conn, remote, reason))

    def _received(self, end: End, data: bytes) -> None:
        if end.open:
            link = end.link
            now = self.now()
            if end.peer is None:
                # The sender is outside the run: nobody else will put its bytes in the trace.
                if not link.framing:
                    link.framing = guess_framing(data)
                self.trace.sent(now, link.gid, not end.is_client, data, link.framing)
            # Before the actor sees them: what it forwards joins these messages' journeys.
            self.trace.delivered(now, link.gid, not end.is_client, len(data))
            self._source = end
            try:
                self.deliver(end.st, Received(end.conn, data))
            finally:
                self._source = None

    def _peer_closed(self, end: End, reset: bool, by: str) -> None:
        """The far side closed (FIN after all data, or RST) or the network dropped it."""
        if not end.open:
            return
        end.open = False
        st = end.st
        del st.ends[end.conn]
        st.gone.add(end.conn)
        now = self.now()
        self.trace.closed(now, end.link.gid, by, reset)
        self.trace.lost(now, end.link.gid, not end.is_client)
        self.deliver(st, Closed(end.conn, reset))

    def _timer_fired(self, st: ActorState, timer: TimerId, token: Any) -> None:
        if st.timers.get(timer) is token:
            del st.timers[timer]
            self.deliver(st, TimerFired(timer))


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
