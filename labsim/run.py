"""From a scenario to a finished run: build the five actors, run them on the chosen clock,
judge the trace against the scenario's ``expect:``.

The scenario validates straight into the actors' settings types, so building the cast is
composition, not translation; the CLI, the benchmarks and the tests all go through
:func:`run_scenario`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from labsim.actors.cms import Cms
from labsim.actors.expressway_c import ExpresswayC
from labsim.actors.expressway_e import ExpresswayE
from labsim.actors.lab import ACTOR_NAMES
from labsim.actors.skype_client import SkypeClient
from labsim.actors.skype_edge import SkypeEdge
from labsim.net.faults import Block, Cut, Delay, Drop, FaultPlan, MessageMatch, Rule, role
from labsim.net.live import LiveNetwork
from labsim.net.model import EXTERNAL
from labsim.net.nat import StaticNat
from labsim.net.virtual import VirtualNetwork
from labsim.proto.events import Address
from labsim.report.diagnose import Diagnosis, diagnose
from labsim.report.outcome import Outcome, outcome
from labsim.scenario import MessageRule, Scenario
from labsim.trace import Trace
from labsim.wire.facts import has_facts

#: The ladder's columns, left to right, in the order the INVITE travels.
ACTORS = ACTOR_NAMES

Clock = Literal["live", "virtual"]


@dataclass
class Cast:
    """The five actors of one run."""

    skype_client: SkypeClient
    skype_edge: SkypeEdge
    expressway_e: ExpresswayE
    expressway_c: ExpresswayC
    cms: Cms

    def all(self) -> list[SkypeClient | SkypeEdge | ExpresswayE | ExpresswayC | Cms]:
        return [self.skype_client, self.skype_edge, self.expressway_e, self.expressway_c, self.cms]

    def finished(self) -> bool:
        """Both ends have hung up (or given up) and let their closes go out."""
        return self.skype_client.finished and self.cms.finished


def build(sc: Scenario) -> Cast:
    """The actors, each composed from the scenario's lab: its own settings and what it needs
    of the others' (the scenario validated straight into the actors' settings types)."""
    lab = sc.lab()
    return Cast(SkypeClient(lab), SkypeEdge(lab), ExpresswayE(lab), ExpresswayC(lab), Cms(lab))


def fault_plan(sc: Scenario) -> FaultPlan:
    """The scenario's ``faults:`` as the rules both runtimes apply."""
    rules: list[Rule] = []

    def match(spec: MessageRule) -> MessageMatch:
        return MessageMatch(
            src=spec.src, dst=spec.dst, protocol=spec.protocol_only(), kind=spec.kind(),
            connection=spec.connection, nth=spec.occurrences(), probability=spec.probability,
        )  # fmt: skip

    for fault in sc.faults:
        if fault.drop is not None:
            rules.append(Drop(match(fault.drop)))
        elif fault.delay is not None:
            rules.append(Delay(match(fault.delay), fault.delay.by))
        elif fault.block is not None:
            b = fault.block
            rules.append(Block(b.src, b.dst, b.port_range(), b.how))
        elif fault.cut is not None:
            c = fault.cut
            rules.append(Cut(c.src, c.dst, c.connection, c.after, c.after_bytes))
    return FaultPlan(rules, sc.seed)


def blocked_pairs(sc: Scenario) -> set[tuple[str, str]]:
    """Every (client, server) pair the scenario's reachability does not allow."""
    return {(a, b) for a in ACTORS for b in ACTORS if a != b and not sc.can_connect(a, b)}


def static_nats(sc: Scenario) -> list[StaticNat]:
    """The scenario's static NAT in front of Expressway-E, as the runtimes apply it: its relay
    range forwarded to Expressway-E's own address, or nothing forwarded."""
    expe = sc.actors.expressway_e
    if expe.nat is None:
        return []
    ports = expe.turn.relay_ports if expe.nat.relay_ports_forwarded else None
    return [StaticNat(expe.nat.public_address, expe.address, ports)]


@dataclass
class RunResult:
    scenario: Scenario
    clock: Clock
    trace: Trace
    outcome: Outcome
    diagnosis: Diagnosis
    wall: float
    """Wall-clock seconds the run took (for people; tests judge ``ended``, not speed)."""
    ended: Literal["finished", "deadline"] = "finished"
    """``finished``: both ends hung up (or gave up) and the run stopped there; ``deadline``:
    the scenario's deadline stopped it first."""
    failures: list[str] = field(default_factory=list)
    """Expectations that do not hold (empty: the scenario passed)."""

    @property
    def passed(self) -> bool:
        return not self.failures


def run_scenario(sc: Scenario, clock: Clock | None = None) -> RunResult:
    """Run ``sc`` on ``clock`` (default: the scenario's) and judge it."""
    clock = clock or sc.clock
    cast = build(sc)
    trace = Trace()
    start = time.perf_counter()
    net = network(sc, cast, trace, clock)
    net.run(sc.deadline, stop=lambda _t: cast.finished())
    wall = time.perf_counter() - start
    ended: Literal["finished", "deadline"] = "finished" if cast.finished() else "deadline"
    result_of = outcome(trace)
    diagnosis = diagnose(
        trace, end=min(net.now(), sc.deadline), deadline=ended == "deadline", result=result_of,
        turn=turn_name(sc),
    )  # fmt: skip
    result = RunResult(sc, clock, trace, result_of, diagnosis, wall, ended)
    result.failures = check(sc, result.trace, result.outcome, result.diagnosis)
    # An actor that raised is a bug in labsim, whatever the outcome: never a passing run.
    result.failures += [
        f"{name} raised {type(exc).__name__}: {exc} (see its error note in the ladder)"
        for name, exc in net.errors
    ]
    return result


class NeedsLiveClock(ValueError):
    """A scenario with a real peer outside the run (an external TURN server) asked to run on
    the virtual clock, where no real process can take part: bad input (CLI exit 2)."""


def turn_name(sc: Scenario) -> str:
    """The trace's name for the TURN server of ``sc``: Expressway-E, or ``external`` for a
    real server standing in for its TURN service (the runtime's name for peers outside the
    run)."""
    return EXTERNAL if sc.actors.expressway_e.turn.external is not None else "expressway_e"


def external_peers(
    sc: Scenario,
) -> tuple[dict[Address, tuple[str, int]], dict[str, str]]:
    """The live network's ``external`` and ``external_hosts`` for ``sc``: Expressway-E's lab
    TURN port goes to the external TURN server's real address and port, and any other port of
    Expressway-E's lab address that Expressway-E does not listen on (a relay the server
    advertises at the lab address: coturn ``--external-ip``) to the server's address."""
    expe = sc.actors.expressway_e
    ext = expe.turn.external
    if ext is None:
        return {}, {}
    return {Address(expe.address, expe.turn.port): (ext.address, ext.port)}, {
        expe.address: ext.address
    }


def network(sc: Scenario, cast: Cast, trace: Trace, clock: Clock) -> VirtualNetwork | LiveNetwork:
    """The network ``sc`` runs ``cast`` on: its links, blocked pairs, faults and NATs, on the
    virtual or the live clock (tests drive a live one themselves next to peers of their own)."""
    links: dict[tuple[str, str], float] = {}
    for link in sc.links:
        x, y = link.between
        links[(x, y)] = links[(y, x)] = link.latency
    blocked = blocked_pairs(sc)
    external, external_hosts = external_peers(sc)
    if clock == "virtual":
        if external:
            raise NeedsLiveClock(
                f"{sc.name}: actors.expressway_e.turn.external names a real TURN server, "
                "which runs in real time: run it with --clock live"
            )
        return VirtualNetwork(
            cast.all(), trace, latency=sc.latency, link_latency=links, blocked=blocked,
            faults=fault_plan(sc), nat=static_nats(sc),
        )  # fmt: skip
    # Loopback has its own (tiny) latency; only the scenario's per-link ones are added.
    return LiveNetwork(
        cast.all(), trace, blocked=blocked, link_latency=links, faults=fault_plan(sc),
        nat=static_nats(sc), external=external, external_hosts=external_hosts,
    )  # fmt: skip


def check(
    sc: Scenario, trace: Trace, result: Outcome, diagnosis: Diagnosis | None = None
) -> list[str]:
    """What in ``expect:`` does not hold, in words."""
    failures: list[str] = []
    if result.name != sc.expect.outcome:
        failures.append(f"outcome {result.name!r}, expected {sc.expect.outcome!r}")
    verdict = sc.expect.diagnosis
    if verdict is not None and diagnosis is not None and diagnosis.verdict != verdict:
        failures.append(f"diagnosis {diagnosis.verdict!r}, expected {verdict!r}")
    if sc.expect.unmatched_faults == "error":
        failures += [
            f"{rule.unmatched()}: fix the rule, or allow it with expect.unmatched_faults: allowed"
            for rule in trace.unmatched_rules
        ]
    # With an external TURN server the trace names it "external"; the scenario names the
    # service it stands in for, Expressway-E's.
    turn = turn_name(sc)

    def lab_name(name: str) -> str:
        return "expressway_e" if name == turn else name

    for want in sc.expect.messages:
        kind = want.parsed()
        found = [
            m for m in trace.messages
            if m.on_wire and kind.matches(m.protocol, m.facts) and has_facts(m.facts, want.facts)
            and (want.src is None or lab_name(role(m.src)) == want.src)
            and (want.dst is None or lab_name(role(m.dst)) == want.dst)
        ]  # fmt: skip
        where = f"{want.src or 'any'} → {want.dst or 'any'}"
        if want.count is not None and len(found) != want.count:
            failures.append(
                f"{want.label!r} ({where}) seen {len(found)} times, expected {want.count}"
            )
        elif want.present and not found:
            failures.append(f"{want.label!r} ({where}) never seen")
        elif not want.present and found:
            failures.append(f"{want.label!r} ({where}) seen at t={found[0].t:.6f}")
    return failures
