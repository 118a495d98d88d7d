"""The two halves of a sharing call run apart (docs/locust.md): the **target** (Expressway-E with
its TURN server, Expressway-C and the multi-call CMS) standing on live sockets, taking calls from
whoever connects (``labsim serve``), and the **Skype side** (one Skype client and its Skype
Edge) placing one call against a target given as a real host and port (:func:`place_call`;
the Locust user class in :mod:`labsim.locustfile` calls it).

The halves share nothing but bytes, as :mod:`labsim.actors.meeting` says: each is an ordinary
live run (:class:`~labsim.net.live.LiveNetwork`, its own loopback block) whose trace holds only
its own actors; the other half is ``external`` in it. The Skype side reaches the target through
the live runtime's ``external`` map (Expressway-E's lab SIP address to the target's real SIP
address) and ``external_hosts`` (every other port of Expressway-E's lab address, which is where
CMS's TURN relay candidate points, to the target's real host: the relay port is only known
when CMS allocates it).

Each half judges the calls from its own trace, with the unchanged
:func:`~labsim.report.outcome.outcome`, told which actors stand for the far ends (as for a
capture point, docs/diagnosis.md): the Skype side sees the dialog between its client and CMS
beyond its Edge (``external``: CMS's reINVITE reaches the client, CMS's ACK of it too); the
target sees it between Expressway-E (what it forwards outside is sent, not seen delivered) and
CMS. The target cuts its trace into one view per call (:class:`~labsim.load.CallTrace`): a
call's SIP by Call-ID, a Call-ID given to the call of the client address in the bottom Via of
the dialog's first request (RFC 3261 §16.6 step 8: proxies leave it in place), and CMS's
per-call TURN connections by their ``c<call>.`` names.

Each Skype side's Edge takes a loopback address of its own as its lab address (from a block it
claims): the target reaches every Edge back at the address its Via and Record-Route name, where
the lab's one address (192.168.1.252) would name every Edge alike.

A call's number picks its client's lab address (:func:`~labsim.actors.meeting.client_address`),
and the target's CMS gives each client address one participant for the target's life: the
numbers of all the Skype sides that call one target must differ (:mod:`labsim.locustfile` gives
each Locust worker a range of its own).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import selectors
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from labsim.actors.expressway_c import ExpresswayC
from labsim.actors.expressway_e import ExpresswayE
from labsim.actors.meeting import (
    MAX_CALLS,
    MeetingEdge,
    MeetingServer,
    call_lab,
    call_log_prefix,
    call_of_actor,
    call_of_address,
    call_of_connection,
    client_name,
    origin_of,
    role_of,
)
from labsim.actors.skype_client import SkypeClient
from labsim.load import CallTrace, raise_fd_limit, setup_time
from labsim.net.live import LiveNetwork, LoopbackBlock, claim_block
from labsim.net.model import EXTERNAL
from labsim.proto.events import Actor, Address
from labsim.report.outcome import Outcome, outcome
from labsim.run import fault_plan, static_nats
from labsim.scenario import Scenario
from labsim.trace import ConnectionRecord, LogRecord, MessageRecord, Trace
from labsim.wire.facts import SipFacts

#: The outcome a healthy call reaches (:data:`labsim.vocabulary.OUTCOMES`).
ESTABLISHED = "sharing-established"

#: File descriptors the target holds per call up at once, with margin (its SIP is shared; the
#: TURN control, data and relay-peer connections, each with the far end's socket when the
#: Skype side runs in the same process).
FDS_PER_TARGET_CALL = 8


class TargetError(ValueError):
    """A target address that cannot be used (bad input: CLI exit 2)."""


# -- where the target is -----------------------------------------------------------------------


@dataclass(frozen=True)
class TargetAddress:
    """A target as the Skype side reaches it: Expressway-E's SIP listener at a real ``host`` and
    ``port``, and the host its TURN relays are reached at (``relay_host``: the same host unless
    the relays are elsewhere)."""

    host: str
    port: int
    relay_host: str

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_target(text: str, default_port: int) -> TargetAddress:
    """``labsim://HOST[:PORT]``, ``HOST[:PORT]`` or ``sip://HOST:PORT`` (Locust's ``--host``):
    the target's Expressway-E SIP address; ``default_port`` when none is given."""
    rest = text.strip()
    for scheme in ("labsim://", "sip://", "tcp://"):
        if rest.lower().startswith(scheme):
            rest = rest[len(scheme) :]
            break
    rest = rest.rstrip("/")
    host, colon, port_text = rest.rpartition(":")
    if not colon:
        host, port_text = rest, ""
    host = host.strip("[]")
    if not host:
        raise TargetError(f"{text!r}: no host (labsim://HOST:PORT)")
    if not port_text:
        return TargetAddress(host, default_port, host)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise TargetError(f"{text!r}: the port is 1 to 65535, not {port_text!r}")
    return TargetAddress(host, int(port_text), host)


# -- the target --------------------------------------------------------------------------------


@dataclass
class TargetCall:
    """One call as the target saw it."""

    call: int
    call_ids: list[str]
    outcome: Outcome
    first: float
    """When its first SIP message reached the target (seconds of the target's run)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "call": self.call, "client": client_name(self.call), "call_ids": self.call_ids,
            "outcome": self.outcome.name, "reason": self.outcome.reason, "first": self.first,
        }  # fmt: skip


def _blocked(sc: Scenario, names: Iterable[str]) -> set[tuple[str, str]]:
    """The scenario's unreachable pairs among the actors ``names`` (by role)."""
    names = list(names)
    return {
        (a, b) for a in names for b in names
        if a != b and not sc.can_connect(role_of(a), role_of(b))
    }  # fmt: skip


class Target:
    """Expressway-E, Expressway-C and the multi-call CMS of scenario ``sc`` on live sockets, in a
    loopback block of their own, taking sharing calls from anyone who connects."""

    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.lab = lab = sc.lab()
        self.expressway_e = ExpresswayE(lab)
        self.expressway_c = ExpresswayC(lab)
        self.cms = MeetingServer(lab)
        self.trace = Trace()
        actors: list[Actor] = [self.expressway_e, self.expressway_c, self.cms]
        self.net = LiveNetwork(
            actors, self.trace, blocked=_blocked(sc, (a.name for a in actors)),
            faults=fault_plan(sc), nat=static_nats(sc), backlog=4096,
        )  # fmt: skip

    def addresses(self) -> dict[str, Any]:
        """Where the target listens (real loopback addresses, with the lab's beside them);
        asking claims the run's block, so this can be printed before the run starts."""
        lab = self.lab
        expe, expc, cms = lab.expressway_e, lab.expressway_c, lab.cms
        e_host = self.net.loopback_of(expe.address)
        return {
            "target": f"{e_host}:{expe.sip_port}",
            "expressway_e": {
                "host": e_host, "lab": expe.address, "sip": expe.sip_port,
                "traversal": expe.traversal_port, "turn": expe.turn.port,
                "relays": list(expe.turn.relay_ports),
            },
            "expressway_c": {"host": self.net.loopback_of(expc.address), "lab": expc.address,
                             "sip": expc.sip_port},
            "cms": {"host": self.net.loopback_of(cms.address), "lab": cms.address,
                    "sip": cms.sip_port},
        }  # fmt: skip

    def address(self) -> TargetAddress:
        """The target as :func:`place_call` takes it."""
        host = self.net.loopback_of(self.lab.expressway_e.address)
        return TargetAddress(host, self.lab.expressway_e.sip_port, host)

    async def serve(
        self, seconds: float, on_ready: Callable[[], None] | None = None, *, signals: bool = True
    ) -> Trace:
        """Serve for ``seconds`` (wall clock), or until SIGTERM or SIGINT when ``signals``
        (the handlers are the loop's, removed at the end); ``on_ready`` is called once every
        listener is up."""
        loop = asyncio.get_running_loop()
        run = asyncio.ensure_future(self.net.arun(seconds))
        installed: list[signal.Signals] = []
        if signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self.stop)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass  # not the main thread: the caller stops the target itself
        try:
            # start_all binds every listener before the run's first await.
            for _ in range(1000):
                if run.done() or self.net.runtime.stopping or self._all_listening():
                    break
                await asyncio.sleep(0.001)
            if on_ready is not None and not run.done():
                on_ready()
            return await run
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def _all_listening(self) -> bool:
        actors = self.net.runtime.actors
        return bool(actors["expressway_e"].listeners) and bool(actors["cms"].listeners)

    def stop(self) -> None:
        """End the run (safe from a signal handler on the loop)."""
        self.net.runtime.request_stop()

    def calls(self) -> list[TargetCall]:
        """Every call the target saw, judged from its trace (see the module docstring)."""
        return judge_target(self.trace)


def _message_call(call_ids: dict[str, int], m: MessageRecord) -> int | None:
    facts = m.sip_facts
    return call_ids.get(facts.call_id) if facts is not None else None


def target_call_ids(trace: Trace) -> dict[str, int]:
    """Call-ID -> call, from the client address in the bottom Via of each dialog's requests."""
    out: dict[str, int] = {}
    for m in trace.messages:
        if m.protocol != "SIP" or m.src != EXTERNAL:
            continue
        facts = m.sip_facts
        if facts is None or facts.status is not None or facts.call_id in out:
            continue
        origin = origin_of(m.data)
        call = call_of_address(origin) if origin is not None else None
        if call is not None:
            out[facts.call_id] = call
    return out


def target_views(trace: Trace) -> dict[int, CallTrace]:
    """One view per call the target saw: its SIP (by Call-ID), CMS's per-call connections and
    their messages, CMS's lines about it, and the SIP connections they share."""
    call_ids = target_call_ids(trace)
    calls = sorted(set(call_ids.values()))
    conn_call: dict[int, int | None] = {
        cid: call_of_connection(c.name) for cid, c in trace.connections.items()
    }
    parts: dict[int, dict[str, list[Any]]] = {
        n: {"messages": [], "logs": [], "timeline": [], "journeys": []} for n in calls
    }
    conns_of: dict[int, set[int]] = {n: set() for n in calls}
    of_message: dict[int, int] = {}
    for m in trace.messages:
        call = conn_call.get(m.connection)
        if call is None and m.protocol == "SIP":
            call = _message_call(call_ids, m)
        if call in parts:
            assert call is not None
            of_message[id(m)] = call
            parts[call]["messages"].append(m)
            conns_of[call].add(m.connection)
    for journey in trace.journeys:
        call = of_message.get(id(journey.first))
        if call is not None:
            parts[call]["journeys"].append(journey)
    prefixes = {call_log_prefix(n): n for n in calls}
    for item in trace.timeline:
        owner: int | None = None
        if isinstance(item, MessageRecord):
            owner = of_message.get(id(item))
        elif isinstance(item, ConnectionRecord):
            owner = conn_call.get(item.id)
        elif isinstance(item, LogRecord) and item.text.startswith("[c"):
            owner = prefixes.get(item.text[: item.text.find("] ") + 2])
        if owner is not None and owner in parts:
            parts[owner]["timeline"].append(item)
            if isinstance(item, LogRecord):
                parts[owner]["logs"].append(item)
    views: dict[int, CallTrace] = {}
    for n, p in parts.items():
        conns = {cid: trace.connections[cid] for cid in sorted(conns_of[n])}
        views[n] = CallTrace(
            trace, p["journeys"], connections=conns, messages=p["messages"], refused=[],
            logs=p["logs"], faults=[], fault_rules=trace.fault_rules, timeline=p["timeline"],
        )  # fmt: skip
    return views


def judge_target(trace: Trace) -> list[TargetCall]:
    """Each call the target saw, with its outcome as the target can tell it: the dialog between
    Expressway-E's outside and CMS, CMS the TURN client."""
    call_ids = target_call_ids(trace)
    out: list[TargetCall] = []
    for n, view in sorted(target_views(trace).items()):
        # What reaches the Skype side is "outside" in this trace (sent, not seen delivered):
        # the dialog's near end is Expressway-E, which forwards it there.
        result = outcome(view, caller=EXTERNAL, callee="cms", sip_caller="expressway_e")
        ids = [cid for cid, call in call_ids.items() if call == n]
        first = min((m.t for m in view.messages if m.protocol == "SIP"), default=0.0)
        out.append(TargetCall(n, ids, result, first))
    return out


def target_summary(calls: list[TargetCall]) -> dict[str, Any]:
    """Calls by outcome, and each call's (``labsim serve``'s judgement)."""
    by_outcome: dict[str, int] = {}
    for c in calls:
        by_outcome[c.outcome.name] = by_outcome.get(c.outcome.name, 0) + 1
    return {
        "calls": len(calls),
        "established": by_outcome.get(ESTABLISHED, 0),
        "by_outcome": by_outcome,
        "per_call": [c.as_dict() for c in calls],
    }


# -- the Skype side ----------------------------------------------------------------------------


@dataclass
class SkypeCall:
    """One call placed by the Skype side, as its client and Edge saw it."""

    call: int
    client: str
    target: str
    outcome: Outcome
    setup: float | None
    """Seconds from the sharing INVITE leaving the client to the ACK of CMS's reINVITE
    reaching it (:func:`labsim.load.setup_time`); None when that ACK never came."""
    ended: str
    """``finished`` (the client hung up or gave up), ``deadline`` (the scenario's deadline
    stopped it), or ``error`` (an actor raised)."""
    wall: float
    errors: list[str] = field(default_factory=list)
    trace: Trace | None = None

    @property
    def established(self) -> bool:
        return self.outcome.name == ESTABLISHED and not self.errors

    @property
    def verdict(self) -> str:
        """The outcome's name, and why (for a failed Locust request)."""
        return f"{self.outcome.name}: {self.outcome.reason}"


@dataclass
class SkypeSide:
    """One call's Skype side: its client, its Edge, their live network and trace, and the
    loopback block the Edge's address is taken from (released when the call is over)."""

    client: SkypeClient
    edge: MeetingEdge
    net: LiveNetwork
    trace: Trace
    block: LoopbackBlock


def skype_side(sc: Scenario, target: TargetAddress, call: int) -> SkypeSide:
    """Call ``call``'s client and an Edge of its own on a live network whose Expressway-E is
    ``target`` (see the module docstring)."""
    if not 1 <= call <= MAX_CALLS:
        raise TargetError(f"calls are numbered 1 to {MAX_CALLS}, not {call}")
    block = claim_block()
    try:
        # The Edge's lab address is a loopback address of its own: the target, which sees
        # every Skype side as "external", reaches each Edge back at the address its Via and
        # Record-Route name (the lab's 192.168.1.252 would name every Edge alike).
        lab = sc.lab()
        lab = replace(lab, skype_edge=replace(lab.skype_edge, address=block.address(1)))
        client = SkypeClient(call_lab(lab, call), client_name(call))
        edge = MeetingEdge(lab)
        trace = Trace()
        expe = lab.expressway_e
        net = LiveNetwork(
            [client, edge], trace, blocked=_blocked(sc, (client.name, edge.name)),
            faults=fault_plan(sc),
            external={Address(expe.address, expe.sip_port): (target.host, target.port)},
            external_hosts={expe.address: target.relay_host},
        )  # fmt: skip
    except ValueError as exc:
        block.release()
        raise TargetError(f"target {target}: {exc}") from None
    except BaseException:
        block.release()
        raise
    return SkypeSide(client, edge, net, trace, block)


async def aplace_call(
    sc: Scenario, target: TargetAddress, call: int, *, keep_trace: bool = False
) -> SkypeCall:
    """:func:`place_call` inside a running event loop."""
    side = skype_side(sc, target, call)
    wall0 = time.perf_counter()
    try:
        await side.net.arun(sc.deadline, stop=lambda _t: side.client.finished)
    finally:
        side.block.release()
    return _judge_skype(target, side, time.perf_counter() - wall0, keep_trace)


def place_call(
    sc: Scenario, target: TargetAddress, call: int, *, keep_trace: bool = False
) -> SkypeCall:
    """Place one sharing call of scenario ``sc`` from call ``call``'s client, through a Skype
    Edge of its own, against the target at ``target``; wait for it to end (the client hangs
    up after the scenario's hold, or the deadline) and judge it from the Skype side's trace.
    Called where an event loop runs already, the call runs in a thread of its own (as
    :meth:`LiveNetwork.run` does)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        with asyncio.Runner(loop_factory=own_loop) as runner:
            return runner.run(aplace_call(sc, target, call, keep_trace=keep_trace))
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="labsim-call") as pool:
        return pool.submit(place_call, sc, target, call, keep_trace=keep_trace).result()


def own_loop() -> asyncio.AbstractEventLoop:
    """An event loop on the operating system's own selector, also where gevent has patched
    the ``selectors`` module (Locust does, at import): gevent's selector would wait on the
    gevent hub of the thread the loop runs in, a second loop under asyncio's own, which adds
    tens of milliseconds to every wake-up."""
    selector: type[selectors.BaseSelector] = selectors.DefaultSelector
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("selectors"):
        selector = monkey.get_original("selectors", "DefaultSelector")
    return asyncio.SelectorEventLoop(selector())


def _judge_skype(target: TargetAddress, side: SkypeSide, wall: float, keep: bool) -> SkypeCall:
    client, trace = side.client, side.trace
    name = client.name
    # The dialog as the Skype side sees it: its client, and CMS beyond its Edge (outside).
    result = outcome(trace, caller=name, callee=EXTERNAL)
    errors = [f"{who} raised {type(exc).__name__}: {exc}" for who, exc in side.net.errors]
    ended = "error" if errors else ("finished" if client.finished else "deadline")
    return SkypeCall(call_of_actor(name) or 0, name, str(target), result, setup_time(trace, name),
                     ended, wall, errors, trace if keep else None)  # fmt: skip


def sip_of(trace: Trace) -> list[SipFacts]:
    """The facts of every SIP message of ``trace`` that parses (for tests and reports)."""
    return [f for m in trace.messages if m.protocol == "SIP" and (f := m.sip_facts) is not None]


def with_hold(sc: Scenario, hold: float) -> Scenario:
    """``sc`` with its calls held ``hold`` seconds (``call.hold``), the deadline moved by as
    much as the hold grew."""
    grown = max(0.0, hold - sc.call.hold)
    return sc.model_copy(
        update={"call": replace(sc.call, hold=hold), "deadline": sc.deadline + grown}
    )


def locustfile_path() -> Path:
    """Where the Locust user class is (``locust -f PATH``): shipped in the package."""
    return Path(__file__).with_name("locustfile.py")


def prepare_fds(calls_up: int) -> int:
    """Raise this process's file descriptor limit for ``calls_up`` calls at once."""
    return raise_fd_limit(1024 + FDS_PER_TARGET_CALL * calls_up)
