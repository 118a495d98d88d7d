"""From a scenario to a finished run: build the five actors, run them on the chosen clock,
judge the trace against the scenario's ``expect:``.

This is the only place that knows both the scenario model and the actors' settings classes;
the CLI, the benchmarks and the tests all go through :func:`run_scenario`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from labsim.actors.cms import Cms, CmsSettings
from labsim.actors.common import Refusal
from labsim.actors.expressway_c import ExpresswayC, ExpresswayCSettings
from labsim.actors.expressway_e import ExpresswayE, ExpresswayESettings
from labsim.actors.skype_client import SkypeClient, SkypeClientSettings
from labsim.actors.skype_edge import SkypeEdge, SkypeEdgeSettings
from labsim.net.faults import Block, Cut, Delay, Drop, FaultPlan, MessageMatch, Rule
from labsim.net.live import LiveNetwork
from labsim.net.virtual import VirtualNetwork
from labsim.proto.events import Address
from labsim.proto.ice import IceCredentials
from labsim.proto.turn_client import TurnClientSettings
from labsim.proto.turn_server import TurnServerSettings
from labsim.report.diagnose import Diagnosis, diagnose
from labsim.report.outcome import Outcome, outcome
from labsim.scenario import MessageRule, Scenario
from labsim.trace import Trace
from labsim.wire.facts import has_facts

#: The ladder's columns, left to right, in the order the INVITE travels.
ACTORS = ("skype_client", "skype_edge", "expressway_e", "expressway_c", "cms")

Clock = Literal["live", "virtual"]


def _domain(uri: str) -> str:
    return uri.split("@", 1)[-1].split(";", 1)[0].split(":", 1)[0]


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
    """The actors, their settings taken from the scenario."""
    a, call = sc.actors, sc.call
    client, edge, expe, expc, cms = (
        a.skype_client, a.skype_edge, a.expressway_e, a.expressway_c, a.cms,
    )  # fmt: skip
    cms_domain, skype_domain = _domain(cms.user), _domain(client.user)
    controlling = call.ice_controlling
    reinviter = controlling if call.reinvite_from == "controlling" else call.reinvite_from
    low, high = expe.turn.relay_ports
    # Expressway-E's capacity (1800 relays on a small/medium VM, PROTOCOL.md §6.1) as the size
    # of its relay range: the 1801st allocation gets 508, as a full range gives.
    high = min(high, low + expe.turn.max_allocations - 1)
    turn_server = TurnServerSettings(
        port=expe.turn.port,
        realm=expe.turn.realm,
        users=dict(expe.turn.users),
        layout=expe.turn.layout,
        relay_port_min=low,
        relay_port_max=high,
        nonce_lifetime=expe.turn.nonce_lifetime,
        user_quota=expe.turn.user_quota or 1_000_000,
        tcp_relay=expe.turn.tcp_relay,
        permission_policy=expe.turn.permission_policy,
        bind_timeout=expe.turn.bind_timeout,
    )
    turn_client = TurnClientSettings(
        server=Address(expe.address, expe.turn.port),
        username=cms.turn.username,
        password=cms.turn.password,
        lifetime=cms.turn.lifetime,
        refresh_after_allocate=cms.turn.refresh_after_allocate,
        refresh=cms.turn.refresh,
        refresh_margin=cms.turn.refresh_margin,
        keepalive_first=cms.turn.keepalive_first,
        keepalive_interval=cms.turn.keepalive_interval,
        create_permission=cms.turn.create_permission,
        # The host that will connect to the relay: the Edge, or the client when it has its
        # own path to Expressway-E.
        permission_peers=(
            (client.address if client.direct_path else edge.address,)
            if cms.turn.create_permission
            else ()
        ),
        send_connection_bind=cms.turn.send_connection_bind,
    )
    return Cast(
        skype_client=SkypeClient(SkypeClientSettings(
            host=client.address, sip_port=client.sip_port, user=client.user, target=cms.user,
            edge=Address(edge.address, edge.sip_port),
            edge_media=Address(edge.address, edge.media_port),
            edge_relay=Address(edge.address, edge.relay_port),
            media_port=client.media_port,
            ice=IceCredentials(client.ice_ufrag, client.ice_pwd),
            check_layout=tuple(call.check_layout_skype),
            controlling=controlling == "skype_client",
            sends_reinvite=reinviter == "skype_client",
            direct_path=client.direct_path,
            ice_timeout=client.ice_timeout,
            refuse_reinvite=Refusal() if client.cms_role == "attendee" else None,
            hold=call.hold,
            sends_bye=call.bye_from == "skype_client",
            reinvite_connection=call.reinvite_connection,
        )),
        skype_edge=SkypeEdge(SkypeEdgeSettings(
            host=edge.address, sip_port=edge.sip_port, media_port=edge.media_port,
            relay_port=edge.relay_port, expressway_e=Address(expe.address, expe.sip_port),
            client=Address(client.address, client.sip_port), cms_domain=cms_domain,
            skype_domain=skype_domain,
        )),
        expressway_e=ExpresswayE(ExpresswayESettings(
            host=expe.address, sip_port=expe.sip_port, traversal_port=expe.traversal_port,
            expressway_c=Address(expc.address, expc.sip_port),
            edge=Address(edge.address, edge.sip_port), cms_domain=cms_domain,
            skype_domain=skype_domain, turn=turn_server,
        )),
        expressway_c=ExpresswayC(ExpresswayCSettings(
            host=expc.address, sip_port=expc.sip_port,
            traversal=Address(expe.address, expe.traversal_port),
            cms=Address(cms.address, cms.sip_port), cms_domain=cms_domain,
            skype_domain=skype_domain,
        )),
        cms=Cms(CmsSettings(
            host=cms.address, sip_port=cms.sip_port, user=cms.user,
            ice=IceCredentials(cms.ice_ufrag, cms.ice_pwd),
            check_layout=tuple(call.check_layout_cms),
            controlling=controlling == "cms",
            sends_reinvite=reinviter == "cms",
            sends_bye=call.bye_from == "cms",
            hold=call.hold,
            turn=turn_client,
            reinvite_connection=call.reinvite_connection,
        )),
    )  # fmt: skip


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


@dataclass
class RunResult:
    scenario: Scenario
    clock: Clock
    trace: Trace
    outcome: Outcome
    diagnosis: Diagnosis
    wall: float
    """Wall-clock seconds the run took."""
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
    blocked = blocked_pairs(sc)
    start = time.perf_counter()
    net: VirtualNetwork | LiveNetwork
    links: dict[tuple[str, str], float] = {}
    for link in sc.links:
        x, y = link.between
        links[(x, y)] = links[(y, x)] = link.latency
    if clock == "virtual":
        net = VirtualNetwork(
            cast.all(), trace, latency=sc.latency, link_latency=links, blocked=blocked,
            faults=fault_plan(sc),
        )  # fmt: skip
    else:
        # Loopback has its own (tiny) latency; only the scenario's per-link ones are added.
        net = LiveNetwork(
            cast.all(), trace, blocked=blocked, link_latency=links, faults=fault_plan(sc)
        )
    net.run(sc.deadline, stop=lambda _t: cast.finished())
    wall = time.perf_counter() - start
    result = RunResult(sc, clock, trace, outcome(trace), diagnose(trace), wall)
    result.failures = check(sc, result.trace, result.outcome, result.diagnosis)
    # An actor that raised is a bug in labsim, whatever the outcome: never a passing run.
    result.failures += [
        f"{name} raised {type(exc).__name__}: {exc} (see its error note in the ladder)"
        for name, exc in net.errors
    ]
    return result


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
    for want in sc.expect.messages:
        kind = want.parsed()
        found = [
            m for m in trace.messages
            if m.on_wire and kind.matches(m.protocol, m.facts) and has_facts(m.facts, want.facts)
            and (want.src is None or m.src == want.src)
            and (want.dst is None or m.dst == want.dst)
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
