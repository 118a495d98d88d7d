"""Every message on every hop: its journey, its fate per hop, its typed facts (issue 10).

The healthy call is swept message by message and hop by hop: dropping one message on one hop
must show up in the record exactly there — sent by its sender, delivered on the hops before,
dropped on that hop by the rule, on no hop after — whatever the message and the hop.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from labsim.cli import main
from labsim.run import RunResult, run_scenario
from labsim.scenario import Scenario, library_dir, load
from labsim.trace import Journey, MessageRecord, Trace

from .labs import variant


def lab(extra: str = "", hold: float = 1.0) -> Scenario:
    return variant(extra, hold=hold)


@pytest.fixture(scope="module")
def healthy() -> RunResult:
    return run_scenario(lab(), "virtual")


def chained(journey: Journey) -> Iterator[tuple[MessageRecord, MessageRecord]]:
    return zip(journey.hops, journey.hops[1:], strict=False)


def test_every_hop_of_the_healthy_call_is_delivered_and_chained(healthy: RunResult) -> None:
    trace = healthy.trace
    assert trace.messages and trace.journeys
    assert sorted(id(h) for j in trace.journeys for h in j.hops) == sorted(
        id(m) for m in trace.messages
    )
    for message in trace.messages:
        # Every message reached its receiver, after it was sent; nothing is left in flight.
        assert message.fate == "delivered", message
        assert message.fate_t is not None and message.fate_t >= message.t >= message.sent_t
    for journey in trace.journeys:
        for before, after in chained(journey):
            # A forwarded copy leaves the actor that got the message, after it got it.
            assert after.src == before.dst and after.t >= (before.fate_t or 0), journey
            assert after.protocol == before.protocol
    # The Skype side's INVITE crosses the four SIP hops as one message.
    invite = next(j for j in trace.journeys if j.first.is_kind("INVITE") and
                  j.first.src == "skype_client")  # fmt: skip
    assert [(h.src, h.dst) for h in invite.hops] == [
        ("skype_client", "skype_edge"), ("skype_edge", "expressway_e"),
        ("expressway_e", "expressway_c"), ("expressway_c", "cms"),
    ]  # fmt: skip
    # 100 Trying is hop by hop (RFC 3261 §16.7): one per proxy hop of each INVITE, never
    # forwarded.
    tryings = [j for j in trace.journeys if j.first.is_kind("100")]
    assert len(tryings) >= 4 and all(len(j.hops) == 1 for j in tryings)
    # The 200 OK to the INVITE comes back over the same four hops as one message.
    ok = next(j for j in trace.journeys if j.first.is_kind("200") and j.first.src == "cms")
    assert [h.dst for h in ok.hops] == ["expressway_c", "expressway_e", "skype_edge",
                                         "skype_client"]  # fmt: skip
    # TURN control messages never cross a relay.
    assert all(len(j.hops) == 1 for j in trace.journeys if j.first.framing == "stun")


def test_the_wire_bytes_of_a_direction_add_up(healthy: RunResult) -> None:
    """What the records say went on the wire is what the connection carried: the delivery
    offsets of a direction's messages are the running sum of their wire sizes."""
    trace = healthy.trace
    per_direction: dict[tuple[int, str], list[MessageRecord]] = {}
    for m in trace.messages:
        per_direction.setdefault((m.connection, m.src), []).append(m)
    for records in per_direction.values():
        total = 0
        for record in records:
            total += record.wire_size
            assert record.wire_end == total, record


def hop_kinds(trace: Trace) -> list[tuple[str, str, str, str]]:
    """(from, to, protocol, kind) of each first message of its kind on each hop."""
    seen: dict[tuple[str, str, str, str], None] = {}
    for m in trace.messages:
        facts = m.sip_facts
        if facts is not None:
            kind = facts.method or str(facts.status)
        elif m.stun_facts is not None:
            kind = f"{m.stun_facts.method} {m.stun_facts.cls}"
        else:
            continue
        seen.setdefault((m.src, m.dst, m.protocol, kind), None)
    return list(seen)


def test_a_drop_anywhere_is_recorded_exactly_there(healthy: RunResult) -> None:
    """The sweep: for every kind of message on every hop of the healthy call, drop its first
    occurrence there and read the record."""
    cases = hop_kinds(healthy.trace)
    assert len(cases) > 40  # SIP and STUN, every hop of the call
    for src, dst, protocol, kind in cases:
        key = "sip" if protocol == "SIP" else "stun"
        sc = lab(
            f"deadline: 60\nfaults: [{{drop: {{from: {src}, to: {dst}, {key}: '{kind}', nth: 1}}}}]"
        )
        result = run_scenario(sc, "virtual")
        dropped = [m for m in result.trace.messages if m.fate == "dropped"]
        assert len(dropped) == 1, (src, dst, kind, dropped)
        [record] = dropped
        assert (record.src, record.dst, record.rule) == (src, dst, 1)
        assert record.is_kind(kind)
        journey = record.journey
        assert journey is not None and journey.last is record, (kind, journey)
        # Every hop before the drop was delivered; the sender of the first hop sent it.
        assert all(h.fate == "delivered" for h in journey.hops[:-1]), journey
        # Nobody got it on this hop, and it went no further.
        assert not journey.reached(dst) or any(h.dst == dst for h in journey.hops[:-1])


def test_json_shows_where_cms_checks_were_lost(tmp_path: Path) -> None:
    """Issue 10's example: CMS's checks dropped on expressway_e → skype_edge."""
    scenario = tmp_path / "drop-cms-checks.yaml"
    scenario.write_text(
        "extends: sharing-call.yaml\nname: drop-cms-checks\ncall: {hold: 1.0}\n"
        "actors: {skype_client: {ice_timeout: 3.0}}\n"
        "faults:\n  - drop: {from: expressway_e, to: skype_edge, stun: Binding Request}\n",
        encoding="utf-8",
    )
    out = tmp_path / "run.json"
    result = CliRunner().invoke(
        main, ["run", str(scenario), "--clock", "virtual", "-q", "--json", str(out)]
    )
    assert result.exit_code in (0, 1), result.output
    data = json.loads(out.read_text(encoding="utf-8"))
    messages = data["messages"]
    checks = [
        j for j in data["journeys"]
        if j["sender"] == "cms"
        and messages[j["hops"][0]["message"]]["facts"].get("method") == "Binding"
        and messages[j["hops"][0]["message"]]["facts"].get("cls") == "Request"
    ]  # fmt: skip
    assert checks
    for journey in checks:
        hops = [(h["src"], h["dst"], h["fate"], h["rule"]) for h in journey["hops"]]
        assert hops == [
            ("cms", "expressway_e", "delivered", None),
            ("expressway_e", "skype_edge", "dropped", 1),
        ]
        assert journey["received_by"] == ["expressway_e"]
    assert data["outcome"] == "ice-failed"
    evidence = " ".join(data["diagnosis"]["evidence"])
    assert "dropped on expressway_e → skype_edge (fault rule 1)" in evidence
    assert "sent no connectivity check" not in evidence  # cms did send them


def test_messages_on_a_cut_connection_are_lost_with_it() -> None:
    # A cut after 100 bytes on CMS's data connection: what crossed is recorded, the message
    # in progress is lost with the connection, at the moment of the cut; nothing elsewhere.
    sc = lab(
        "actors: {skype_client: {ice_timeout: 2.0}}\n"
        "faults: [{cut: {from: expressway_e, to: cms, connection: 2, after_bytes: 100}}]"
    )
    result = run_scenario(sc, "virtual")
    lost = [m for m in result.trace.messages if m.fate == "lost"]
    assert lost and not [m for m in result.trace.messages if m.fate == "dropped"]
    [conn] = {m.connection for m in lost}
    record = result.trace.connections[conn]
    assert (record.client, record.server, record.closed_by) == ("cms", "expressway_e", "network")
    assert all(m.fate_t == record.closed for m in lost)


def test_resent_2xx_cross_the_proxies_and_each_is_acknowledged_again() -> None:
    """RFC 3261 §13.3.1.4 and RFC 6026 §7.2: CMS resends its 200 OK while no ACK reaches it;
    the proxies pass every resend on (their INVITE transaction is Accepted), the client ACKs
    each one again, and the lost ACKs end where the rule drops them."""
    lost = run_scenario(load(library_dir() / "ack-lost.yaml"), "virtual")
    oks = [
        j for j in lost.trace.journeys
        if j.sender == "cms" and j.first.is_kind("200") and j.first.sip_facts is not None
        and j.first.sip_facts.cseq_method == "INVITE"
    ]  # fmt: skip
    # 11 in each dialog: the rule drops every ACK on that hop, the audio/video call's too.
    assert len(oks) == 22 and all(j.reached("skype_client") for j in oks)
    assert len({j.first.sip_facts.call_id for j in oks if j.first.sip_facts is not None}) == 2
    acks = [j for j in lost.trace.journeys if j.sender == "skype_client" and j.first.is_kind("ACK")]
    assert len(acks) == 22
    for ack in acks:
        assert [(h.src, h.dst, h.fate) for h in ack.hops][-1] == ("expressway_c", "cms", "dropped")
    bye = next(j for j in lost.trace.journeys if j.sender == "cms" and j.first.is_kind("BYE"))
    assert bye.reached("skype_client") and bye.first.t - oks[0].first.t == pytest.approx(32.0)


KINDS = [
    ("sip", "INVITE"), ("sip", "ACK"), ("sip", "200"), ("sip", "BYE"), ("sip", "100"),
    ("stun", "Allocate Request"), ("stun", "Binding Request"), ("stun", "Binding Success Response"),
    ("stun", "ConnectionAttempt"), ("stun", "ConnectionBind Request"), ("stun", "Refresh"),
]  # fmt: skip
HOPS = [
    ("skype_client", "skype_edge"), ("skype_edge", "expressway_e"),
    ("expressway_e", "expressway_c"), ("expressway_c", "cms"), ("cms", "expressway_e"),
]  # fmt: skip


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["drop", "delay"]),
            st.sampled_from(HOPS),
            st.booleans(),  # reversed hop
            st.sampled_from(KINDS),
            st.integers(min_value=1, max_value=3),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_the_record_holds_together_under_any_faults(
    rules: list[tuple[str, tuple[str, str], bool, tuple[str, str], int]],
) -> None:
    """Whatever drops and delays a user writes: every hop of a journey leaves the actor the
    previous hop reached, after it got there; a dropped message never reached anyone and names
    its rule; a delivered one arrived after it left; nothing else is on the wire."""
    lines = []
    for action, (a, b), flip, (key, kind), nth in rules:
        src, dst = (b, a) if flip else (a, b)
        extra = ", by: 0.3" if action == "delay" else ""
        lines.append(
            f"  - {action}: {{from: {src}, to: {dst}, {key}: '{kind}', nth: {nth}{extra}}}"
        )
    sc = variant("deadline: 60\nfaults:\n" + "\n".join(lines) + "\n", hold=1.0)
    trace = run_scenario(sc, "virtual").trace
    for journey in trace.journeys:
        for before, after in chained(journey):
            assert before.fate == "delivered", journey
            assert after.src == before.dst and after.sent_t >= (before.fate_t or 0.0)
    for m in trace.messages:
        if m.fate == "dropped":
            assert m.rule is not None and 1 <= m.rule <= len(rules) and m.fate_t == m.t
            assert m.journey is not None and m.journey.last is m
        elif m.fate == "delivered":
            assert m.fate_t is not None and m.fate_t >= m.t >= m.sent_t
        if m.delay:
            assert m.t == pytest.approx(m.sent_t + m.delay)
    # The wire bytes of each direction add up, dropped messages left out.
    ends: dict[tuple[int, str], int] = {}
    for m in trace.messages:
        if m.on_wire:
            ends[(m.connection, m.src)] = ends.get((m.connection, m.src), 0) + m.wire_size
            assert m.wire_end == ends[(m.connection, m.src)], m
