"""``labsim load``: many sharing calls at once through one Skype Edge, one Expressway-E, one
Expressway-C and one CMS, each call judged as ``labsim run`` judges its one call.

The composition (:mod:`labsim.actors.meeting`): N clients ``skype_client/1`` …
``skype_client/N`` (each its own lab address and seeds), a :class:`MeetingEdge`, Expressway-E,
Expressway-C and a :class:`MeetingServer`, on one network (virtual or live) with the scenario's
faults, links and reachability applied to every call: rules name actors by role
(``skype_client`` matches every client) and count their ``nth`` and ``connection`` per call
where the message shows its call (:class:`PerCallFaults`).

Each client is started by a :class:`Gate` that keeps ``--rate`` (calls started per second) and
``--concurrent`` (calls up at once). When the run is over the trace is cut into one view per
call (:func:`call_views`: its client, the four shared actors, only its own connections and
messages), and the unchanged :func:`~labsim.report.outcome.outcome`,
:func:`~labsim.report.diagnose.diagnose` and :func:`~labsim.run.check` judge each.
"""

from __future__ import annotations

import bisect
import math
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Literal

from labsim.actors.expressway_c import ExpresswayC
from labsim.actors.expressway_e import ExpresswayE
from labsim.actors.lab import ACTOR_NAMES
from labsim.actors.meeting import (
    MeetingEdge,
    MeetingServer,
    call_lab,
    call_log_prefix,
    call_of_actor,
    call_of_connection,
    calls_possible,
    client_name,
    role_of,
)
from labsim.actors.skype_client import SkypeClient
from labsim.net.faults import FaultPlan, Hit
from labsim.net.live import LiveNetwork
from labsim.net.virtual import VirtualNetwork
from labsim.proto.events import Effect, Event, Started, StartTimer, TimerFired
from labsim.report.diagnose import Diagnosis, diagnose
from labsim.report.outcome import Outcome, first_invite, outcome, sip_messages
from labsim.run import check, fault_plan, static_nats
from labsim.scenario import Scenario
from labsim.trace import (
    ClosedRecord,
    ConnectionRecord,
    Journey,
    LogRecord,
    MessageRecord,
    RefusedRecord,
    Trace,
)
from labsim.wire.facts import Facts, SipFacts

Clock = Literal["live", "virtual"]

#: The four actors every call shares, in call-path order.
SHARED = ("skype_edge", "expressway_e", "expressway_c", "cms")

#: How often a second of the run's clock the peaks (allocations, relays) are looked at.
PEEK = 20

#: Seconds between two looks at the live event loop's lateness (:class:`LoopLag`).
LAG_TICK = 0.05

#: Loop lateness from which a live run's timings are the simulator's, not the network's:
#: loopback answers in well under a millisecond, so 10 ms late means the one process playing
#: every actor is behind (its CPU is the bottleneck), and round trips measured then include it.
LAG_NOTICE = 0.010

#: Seconds between two looks of a held gate at the number of calls up (--concurrent).
GATE_POLL = 0.05


# -- pacing ------------------------------------------------------------------------------------


class _GateTimer(Enum):
    OPEN = "open"


@dataclass
class Pacer:
    """What the gates share: the next start time (``rate`` calls a second) and how many calls
    are up (at most ``concurrent``)."""

    rate: float | None = None
    concurrent: int | None = None
    active: int = 0
    started: int = 0
    done: int = 0
    _next: float = 0.0

    def slot(self, now: float) -> float:
        """When the next call may start (from ``now`` on)."""
        at = max(now, self._next)
        if self.rate:
            self._next = at + 1.0 / self.rate
        return at

    def full(self) -> bool:
        return self.concurrent is not None and self.active >= self.concurrent


class Gate:
    """A client held back until the pacer lets it start: its ``Started`` waits for a rate
    slot and a free place under ``concurrent``; everything else passes through."""

    def __init__(self, client: SkypeClient, pacer: Pacer) -> None:
        self.client = client
        self.pacer = pacer
        self.name = client.name
        self.host = client.host
        self.started_at: float | None = None
        self._counted = False

    @property
    def finished(self) -> bool:
        return self.client.finished

    def handle(self, event: Event, now: float) -> list[Effect]:
        if isinstance(event, Started):
            return [StartTimer(_GateTimer.OPEN, self.pacer.slot(now) - now)]
        if isinstance(event, TimerFired) and event.timer is _GateTimer.OPEN:
            if self.pacer.full():
                return [StartTimer(_GateTimer.OPEN, GATE_POLL)]
            self.pacer.active += 1
            self.pacer.started += 1
            self._counted = True
            self.started_at = now
            return self._after(self.client.handle(Started(), now))
        return self._after(self.client.handle(event, now))

    def _after(self, effects: list[Effect]) -> list[Effect]:
        if self._counted and self.client.finished:
            self._counted = False
            self.pacer.active -= 1
            self.pacer.done += 1
        return effects


# -- the cast ----------------------------------------------------------------------------------


@dataclass
class LoadCast:
    """The actors of a load run: the Skype side (clients and Edge) and the target
    (Expressway-E, Expressway-C, CMS), which share nothing but bytes."""

    clients: list[Gate]
    skype_edge: MeetingEdge
    expressway_e: ExpresswayE
    expressway_c: ExpresswayC
    cms: MeetingServer
    pacer: Pacer

    def skype_side(self) -> list[Gate | MeetingEdge]:
        return [*self.clients, self.skype_edge]

    def target(self) -> list[ExpresswayE | ExpresswayC | MeetingServer]:
        return [self.expressway_e, self.expressway_c, self.cms]

    def all(self) -> list[Gate | MeetingEdge | ExpresswayE | ExpresswayC | MeetingServer]:
        return [*self.skype_side(), *self.target()]

    def finished(self) -> bool:
        """Every client has been and is done, and so is every user agent of CMS (counted as
        they finish: the runtime asks after every event)."""
        return self.pacer.done == len(self.clients) and self.cms.finished


def build_load(sc: Scenario, calls: int, pacer: Pacer | None = None) -> LoadCast:
    """``calls`` clients and the four shared actors, each built from the scenario's lab."""
    lab = sc.lab()
    if not 1 <= calls <= calls_possible(lab):
        raise ValueError(
            f"{calls} calls: one meeting numbers 1 to {calls_possible(lab)} (client addresses, "
            f"and Edge relay ports from {lab.skype_edge.relay_port} to 65535)"
        )
    pacer = pacer or Pacer()
    clients = [Gate(SkypeClient(call_lab(lab, n), client_name(n)), pacer)
               for n in range(1, calls + 1)]  # fmt: skip
    return LoadCast(clients, MeetingEdge(lab), ExpresswayE(lab), ExpresswayC(lab),
                    MeetingServer(lab), pacer)  # fmt: skip


# -- faults, per call --------------------------------------------------------------------------


class PerCallFaults(FaultPlan):
    """The scenario's fault rules applied to every call: a rule names actors by role (its
    ``skype_client`` is every client, :mod:`labsim.net.faults`), and its occurrence counts
    (``nth``, ``connection``, the seeded ``probability`` draws) are kept per call, as if each
    call ran alone, wherever the hop shows the call: a client at one end, or a SIP message
    whose Call-ID a client used. Hops between shared actors carrying no SIP (the TURN and
    relay connections) count across calls."""

    def __init__(self, plan: FaultPlan, seed: int) -> None:
        super().__init__(plan.rules, seed)
        self.seed = seed
        self._calls: dict[int, FaultPlan] = {}
        self._call_ids: dict[str, int] = {}

    def _plan(self, call: int) -> FaultPlan:
        plan = self._calls.get(call)
        if plan is None:
            plan = self._calls[call] = FaultPlan(self.rules, self.seed)
        return plan

    def _call(self, *actors: str) -> int | None:
        for actor in actors:
            call = call_of_actor(actor)
            if call is not None:
                return call
        return None

    def matched(self, number: int) -> int | None:
        own = super().matched(number)
        if own is None:
            return None
        return own + sum(p.matched(number) or 0 for p in self._calls.values())

    def opened(self, client: str, server: str) -> int:
        call = self._call(client, server)
        if call is None:
            return super().opened(client, server)
        return self._plan(call).opened(client, server)

    def message(
        self, src: str, dst: str, connection: int, protocol: str, facts: Facts
    ) -> Hit | None:
        call = self._call(src, dst)
        if isinstance(facts, SipFacts):
            if call is not None:
                self._call_ids.setdefault(facts.call_id, call)
            else:
                call = self._call_ids.get(facts.call_id)
        if call is None:
            return super().message(src, dst, connection, protocol, facts)
        return self._plan(call).message(src, dst, connection, protocol, facts)


# -- the network -------------------------------------------------------------------------------


def _roles(names: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name in names:
        out.setdefault(role_of(name), []).append(name)
    return out


def load_network(
    sc: Scenario, cast: LoadCast, trace: Trace, clock: Clock
) -> VirtualNetwork | LiveNetwork:
    """:func:`labsim.run.network` for many calls: the scenario's reachability and links hold
    between roles, so for every client."""
    actors = cast.all()
    by_role = _roles([a.name for a in actors])
    blocked: set[tuple[str, str]] = set()
    for a in ACTOR_NAMES:
        for b in ACTOR_NAMES:
            if a != b and not sc.can_connect(a, b):
                blocked |= {(x, y) for x in by_role.get(a, ()) for y in by_role.get(b, ())}
    links: dict[tuple[str, str], float] = {}
    for link in sc.links:
        x, y = link.between
        for p in by_role.get(x, ()):
            for q in by_role.get(y, ()):
                links[(p, q)] = links[(q, p)] = link.latency
    faults = PerCallFaults(fault_plan(sc), sc.seed)
    if clock == "virtual":
        return VirtualNetwork(
            actors, trace, latency=sc.latency, link_latency=links, blocked=blocked,
            faults=faults, nat=static_nats(sc),
        )  # fmt: skip
    return LiveNetwork(
        actors, trace, blocked=blocked, link_latency=links, faults=faults, nat=static_nats(sc),
        backlog=4096,
    )  # fmt: skip


# -- one view per call -------------------------------------------------------------------------


class CallTrace(Trace):
    """One call's view of a load run's trace: its client, the four shared actors, its own
    connections and, on the shared SIP connections, its own Call-IDs' messages. Read by the
    unchanged reports; journeys and byte counts come from the whole trace (a journey never
    leaves its call: a proxy forwards a message with its Call-ID, a relay within the call's
    own connections)."""

    def __init__(self, whole: Trace, journeys: list[Journey], **parts: Any) -> None:
        super().__init__(**parts)
        self.whole = whole
        self._call_journeys = journeys

    @property
    def journeys(self) -> list[Journey]:
        return self._call_journeys

    def wire_bytes(self, conn: int, from_client: bool) -> int:
        return self.whole.wire_bytes(conn, from_client)


def _connection_calls(trace: Trace) -> dict[int, int | None]:
    out: dict[int, int | None] = {}
    for cid, record in trace.connections.items():
        call = call_of_actor(record.client) or call_of_actor(record.server)
        out[cid] = call if call is not None else call_of_connection(record.name)
    return out


def message_calls(trace: Trace) -> dict[int, int | None]:
    """The call of every message (by ``id``), None for one no call owns."""
    conns = _connection_calls(trace)
    call_ids: dict[str, int] = {}
    for m in trace.messages:
        call = conns.get(m.connection)
        if call is not None and m.protocol == "SIP":
            facts = m.sip_facts
            if facts is not None:
                call_ids.setdefault(facts.call_id, call)
    out: dict[int, int | None] = {}
    for m in trace.messages:
        call = conns.get(m.connection)
        if call is None and m.protocol == "SIP":
            facts = m.sip_facts
            call = call_ids.get(facts.call_id) if facts is not None else None
        out[id(m)] = call
    return out


def call_views(trace: Trace, calls: int) -> dict[int, CallTrace]:
    """One :class:`CallTrace` per call, 1 to ``calls``, in one pass over the trace."""
    conns = _connection_calls(trace)
    of_message = message_calls(trace)
    parts: dict[int, dict[str, list[Any]]] = {
        n: {"messages": [], "refused": [], "logs": [], "faults": [], "timeline": [],
            "journeys": [], "connections": []}
        for n in range(1, calls + 1)
    }  # fmt: skip
    # Relay addresses (XOR-RELAYED-ADDRESS) each call's allocation got: a connect to one
    # that failed (the Edge's, to a blocked relay port) is that call's.
    relayed: dict[tuple[str, int], int] = {}
    for m in trace.messages:
        call = of_message[id(m)]
        if call in parts:
            parts[call]["messages"].append(m)
            if m.protocol == "STUN":
                stun = m.stun_facts
                if stun is not None and stun.relayed is not None:
                    relayed[(stun.relayed.host, stun.relayed.port)] = call
    for journey in trace.journeys:
        call = of_message.get(id(journey.first))
        if call in parts:
            parts[call]["journeys"].append(journey)
    for cid, call in conns.items():
        if call in parts:
            parts[call]["connections"].append(trace.connections[cid])
    own_logs: dict[str, int] = {call_log_prefix(n): n for n in parts}
    log_call: dict[int, tuple[int, LogRecord]] = {}
    for log in trace.logs:
        call = call_of_actor(log.actor)
        record = log
        if call is None and log.actor == "cms" and log.text.startswith("[c"):
            # The server's lines about one call: that call's, without the prefix.
            prefix = log.text[: log.text.find("] ") + 2]
            call = own_logs.get(prefix)
            if call is not None:
                record = replace(log, text=log.text[len(prefix) :])
        if call in parts:
            assert call is not None
            parts[call]["logs"].append(record)
            log_call[id(log)] = (call, record)
    # A shared actor's failed connect that names no relay: the call whose lines that actor
    # writes next (the runtime hands the failure to the per-call user agent at once).
    after: dict[int, int] = {}
    pending: list[RefusedRecord] = []
    for item in trace.timeline:
        if isinstance(item, RefusedRecord) and call_of_actor(item.client) is None:
            pending.append(item)
        elif pending and isinstance(item, LogRecord) and id(item) in log_call:
            for r in [r for r in pending if r.client == item.actor]:
                after[id(r)] = log_call[id(item)][0]
                pending.remove(r)
    refused_call: dict[int, int] = {}
    for r in trace.refused:
        call = call_of_actor(r.client)
        if call is None:
            call = relayed.get((r.server_addr.host, r.server_addr.port), after.get(id(r)))
        if call in parts:
            parts[call]["refused"].append(r)
            refused_call[id(r)] = call
    fault_call: dict[int, int] = {}
    for f in trace.faults:
        call = conns.get(f.connection) if f.connection is not None else None
        if call in parts:
            parts[call]["faults"].append(f)
            fault_call[id(f)] = call
    for item in trace.timeline:
        key = id(item)
        if isinstance(item, MessageRecord):
            call = of_message.get(key)
        elif isinstance(item, ConnectionRecord):
            call = conns.get(item.id)
        elif isinstance(item, LogRecord):
            call, item = log_call.get(key, (None, item))
        else:
            call = refused_call.get(key) or fault_call.get(key)
            if call is None and isinstance(item, ClosedRecord):
                call = conns.get(item.connection.id)
        if call in parts:
            parts[call]["timeline"].append(item)
    views: dict[int, CallTrace] = {}
    for n, p in parts.items():
        views[n] = CallTrace(
            trace, p["journeys"],
            connections={c.id: c for c in p["connections"]},
            messages=p["messages"], refused=p["refused"], logs=p["logs"], faults=p["faults"],
            fault_rules=trace.fault_rules, timeline=p["timeline"],
        )  # fmt: skip
    return views


# -- running -----------------------------------------------------------------------------------


@dataclass
class CallResult:
    """One call of a load run, judged as ``labsim run`` judges its call."""

    call: int
    client: str
    outcome: Outcome
    diagnosis: Diagnosis
    failures: list[str]
    setup: float | None
    """Seconds from the sharing INVITE leaving the client to the ACK of the first
    reINVITE's 200 (media route established), None when the call got no such ACK."""
    ended: Literal["finished", "deadline"]
    loop_lag: float = 0.0
    """The live event loop's worst lateness, in seconds, while the call ran (first to last
    message): time the simulator itself added to every hop then (0 on the virtual clock)."""

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class Sample:
    """Figures at one moment of the run (``--stats``)."""

    t: float
    wall: float
    started: int
    active: int
    done: int
    allocations: int
    edge_relays: int
    fds: int
    rss_kib: int
    loop_lag_ms: float = 0.0
    """The live event loop's worst lateness since the previous sample, in ms."""


class LoopLag:
    """How late the live event loop runs timers: every :data:`LAG_TICK` seconds it asks to be
    called back and notes by how much the call came late. One process plays every actor, so
    when its CPU cannot keep up every hop waits that long too, and a verdict that reads round
    trips (``slow-network``) then measures labsim, not the network. The virtual clock is never
    late."""

    def __init__(self, net: LiveNetwork | VirtualNetwork) -> None:
        self.net = net
        self.ticks: list[tuple[float, float]] = []
        """(when due, lateness) in the run's seconds."""
        self._window = 0.0
        self._armed = not isinstance(net, LiveNetwork)

    def start(self) -> None:
        """Begin once the run's loop turns (the first event of the run); no-op after."""
        if not self._armed:
            self._armed = True
            self._arm()

    def _arm(self) -> None:
        due = self.net.now() + LAG_TICK
        self.net.later(LAG_TICK, self._tick, due)

    def _tick(self, due: float) -> None:
        late = max(0.0, self.net.now() - due)
        self.ticks.append((due, late))
        self._window = max(self._window, late)
        self._arm()

    def take_window(self) -> float:
        """The worst lateness since the last call, in seconds."""
        worst, self._window = self._window, 0.0
        return worst

    def worst_between(self, start: float, end: float) -> float:
        """The worst lateness of a tick due from ``start`` to ``end`` (run seconds)."""
        # Ticks are appended in due order: bisect rather than scan them for every call.
        lo = bisect.bisect_left(self.ticks, (start, -1.0))
        hi = bisect.bisect_right(self.ticks, (end + LAG_TICK, math.inf))
        return max((late for _, late in self.ticks[lo:hi]), default=0.0)


@dataclass
class LoadResult:
    scenario: Scenario
    clock: Clock
    calls: list[CallResult]
    samples: list[Sample]
    wall: float
    cpu: float
    end: float
    """The run's clock when it stopped (virtual or live seconds)."""
    peak_allocations: int
    peak_edge_relays: int
    peak_fds: int
    peak_rss_kib: int
    errors: list[str] = field(default_factory=list)
    trace: Trace | None = None
    loop_lag: list[float] = field(default_factory=list)
    """Every lateness :class:`LoopLag` measured, in seconds (empty on the virtual clock)."""

    def failed(self) -> list[CallResult]:
        return [c for c in self.calls if not c.passed]


def open_fds() -> int:
    """File descriptors this process holds (Linux /proc; 0 elsewhere)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def rss_kib() -> int:
    """Resident set size now, in KiB (Linux /proc; the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE toward ``wanted`` (up to the hard limit); the new soft
    limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def setup_time(trace: Trace, client: str) -> float | None:
    """Seconds from the client's sharing INVITE to the first ACK of a reINVITE of that
    dialog (the post-ICE media route acknowledged, RFC 5245 §8.1.2)."""
    messages = sip_messages(trace)
    first = first_invite(messages, client)
    if first is None:
        return None
    invite, facts = first
    reinvite: SipFacts | None = None
    for r, f in messages:
        if r.t < invite.t or f.call_id != facts.call_id or not r.on_wire:
            continue
        if reinvite is None and f.method == "INVITE" and f.to_tag is not None:
            reinvite = f
        elif reinvite is not None and f.method == "ACK" and f.cseq == reinvite.cseq:
            return r.t - invite.t
    return None


def _allocations(cast: LoadCast) -> int:
    """TURN allocations Expressway-E holds (none with an external TURN server)."""
    turn = cast.expressway_e.turn
    return turn.allocation_count if turn is not None else 0


def until_for(sc: Scenario, calls: int, rate: float | None, concurrent: int | None) -> float:
    """The run's deadline: the scenario's per call, times the waves ``concurrent`` makes,
    after the last start ``rate`` allows."""
    waves = math.ceil(calls / concurrent) if concurrent else 1
    starts = (calls - 1) / rate if rate else 0.0
    return sc.deadline * waves + starts


def run_load(
    sc: Scenario,
    calls: int,
    *,
    clock: Clock | None = None,
    rate: float | None = None,
    concurrent: int | None = None,
    every: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
    on_sample: Callable[[Sample], None] | None = None,
    keep_trace: bool = False,
) -> LoadResult:
    """Run ``calls`` sharing calls of ``sc`` and judge each; ``every`` seconds of the run's
    clock a :class:`Sample` is taken (handed to ``on_sample``) and ``progress(done, calls)``
    called."""
    clock = clock or sc.clock
    pacer = Pacer(rate, concurrent)
    cast = build_load(sc, calls, pacer)
    trace = Trace()
    net = load_network(sc, cast, trace, clock)
    lag = LoopLag(net)
    until = until_for(sc, calls, rate, concurrent)
    samples: list[Sample] = []
    wall0, cpu0 = time.perf_counter(), time.process_time()
    peaks = {"allocations": 0, "relays": 0, "fds": 0, "rss": 0}
    next_sample = [0.0]

    def sample(final: bool = False) -> None:
        t = net.now()
        s = Sample(
            t, time.perf_counter() - wall0, pacer.started, pacer.active, pacer.done,
            _allocations(cast), cast.skype_edge.relay.pipes,
            open_fds(), rss_kib(), lag.take_window() * 1000,
        )  # fmt: skip
        samples.append(s)
        if on_sample is not None and not final:
            on_sample(s)
        peaks["fds"] = max(peaks["fds"], s.fds)
        peaks["rss"] = max(peaks["rss"], s.rss_kib)
        if progress is not None:
            progress(pacer.done, calls)

    next_peek = [0.0]

    def stop(_trace: Trace) -> bool:
        lag.start()
        now = net.now()
        if now >= next_peek[0]:
            # The peaks, PEEK times a second of the run's clock (counting the allocations
            # builds their list: not on every event).
            next_peek[0] = now + 1.0 / PEEK
            peaks["allocations"] = max(peaks["allocations"], _allocations(cast))
            peaks["relays"] = max(peaks["relays"], cast.skype_edge.relay.pipes)
        if now >= next_sample[0]:
            next_sample[0] = net.now() + every
            sample()
        return cast.finished()

    net.run(until, stop=stop)
    sample(final=True)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    end = net.now()
    views = call_views(trace, calls)
    results: list[CallResult] = []
    for n in range(1, calls + 1):
        view = views[n]
        name = client_name(n)
        ended: Literal["finished", "deadline"] = (
            "finished" if cast.clients[n - 1].finished else "deadline"
        )
        result_of = outcome(view, caller=name)
        diagnosis = diagnose(view, caller=name, end=end, deadline=ended == "deadline",
                             result=result_of)  # fmt: skip
        failures = check(sc, view, result_of, diagnosis)
        span = [m.t for m in view.messages]
        results.append(CallResult(
            n, name, result_of, diagnosis, failures, setup_time(view, name), ended,
            lag.worst_between(span[0], span[-1]) if span else 0.0,
        ))  # fmt: skip
    errors = [f"{name} raised {type(exc).__name__}: {exc}" for name, exc in net.errors]
    return LoadResult(
        sc, clock, results, samples, wall, cpu, end, peaks["allocations"], peaks["relays"],
        max(peaks["fds"], open_fds()), max(peaks["rss"], rss_kib()), errors,
        trace if keep_trace else None, [late for _, late in lag.ticks],
    )  # fmt: skip
