"""Fault rules in both runtimes, the scenario library, and the diagnosis of faults injected
by network rules alone (issue 5)."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from labsim.cli import main
from labsim.net.faults import Drop, FaultPlan, MessageMatch
from labsim.run import Clock, RunResult, run_scenario
from labsim.scenario import Scenario, library_dir, list_scenarios
from labsim.trace import Trace
from labsim.wire.facts import DataFacts, facts_of, parse_kind

from .conftest import VECTORS
from .labs import variant

CLOCKS: tuple[Clock, ...] = ("virtual", "live")

#: Library scenarios whose wall time on live sockets is too long for every test run (the
#: 600 s allocation lifetime): checked in virtual time here, live by `labsim test --clock live`.
LIVE_TOO_LONG = {"allocation-expiry", "turn-refresh-437", "refresh-dropped"}

#: Library scenarios whose call no end ever ends, so only the deadline stops the run: a lost
#: BYE leaves CMS in a call the client hung up (the lab's CMS runs no session timer).
ENDS_AT_DEADLINE = {"bye-lost"}


def lab(extra: str, hold: float = 1.0) -> Scenario:
    return variant(extra, hold=hold)


def load_invite() -> bytes:
    return (VECTORS / "sip" / "invite-appsharing-cl813.sip").read_bytes()


def messages(trace: Trace) -> list[tuple[float, str, str, bytes, int]]:
    return [(m.t, m.src, m.dst, bytes(m.data), m.size) for m in trace.messages]


HOPS = [
    ("skype_client", "skype_edge"), ("skype_edge", "expressway_e"),
    ("expressway_e", "expressway_c"), ("expressway_c", "cms"), ("cms", "expressway_e"),
]  # fmt: skip


def test_rules_that_match_nothing_change_no_byte_and_no_time() -> None:
    rules = "".join(
        f"\n  - drop: {{from: {a}, to: {b}, message: NOPE}}"
        f"\n  - delay: {{from: {b}, to: {a}, message: NOPE, by: 1.0}}"
        for a, b in HOPS
    )
    # The TURN server's secrets from the seed: every byte of the two runs may be compared.
    repeat = "actors: {expressway_e: {turn: {secrets_from_seed: true}}}\n"
    plain = run_scenario(lab(repeat), "virtual").trace
    ruled = run_scenario(lab(repeat + "faults:" + rules), "virtual").trace
    assert messages(ruled) == messages(plain)
    assert ruled.faults == []
    # ... and each of them is known to have done nothing.
    assert [r.number for r in ruled.unmatched_rules] == list(range(1, 2 * len(HOPS) + 1))


@pytest.mark.parametrize("clock", CLOCKS)
def test_drop_takes_exactly_the_matching_message(clock: Clock) -> None:
    sc = lab(
        "actors: {skype_client: {ice_timeout: 2.0}}\n"
        "faults: [{drop: {from: cms, to: expressway_e, stun: Binding Request}}]"
    )
    result = run_scenario(sc, clock)
    [fault] = result.trace.faults
    assert (fault.action, fault.src, fault.dst) == ("dropped", "cms", "expressway_e")
    assert fault.summary.startswith("Binding Request user: Xa3f:cM5k")
    assert "fault 1: drop cms → expressway_e STUN 'Binding Request'" in fault.rule
    # Never on the wire: its journey is one hop, dropped by rule 1, received by nobody ...
    [check] = [j for j in result.trace.journeys if j.first.fate == "dropped"]
    assert [(h.src, h.dst, h.fate, h.rule) for h in check.hops] == [
        ("cms", "expressway_e", "dropped", 1)
    ]
    assert check.first.is_kind("Binding Request") and check.first.summary == fault.summary
    assert not [m for m in result.trace.messages if m.summary == fault.summary and m.on_wire]
    # ... while its answer to the Skype side's check, sent just after it, went through.
    assert [m for m in result.trace.messages
            if m.src == "cms" and m.summary.startswith("Binding Success Response")]  # fmt: skip
    assert result.outcome.name == "ice-failed"
    assert result.diagnosis.verdict == "one-way-binding"


def test_nth_and_probability_select_occurrences_reproducibly() -> None:
    plan = FaultPlan([Drop(MessageMatch(kind=parse_kind("INVITE"), nth=(2,)))])
    invite = facts_of("SIP", load_invite())
    hits = [plan.message("a", "b", 1, "SIP", invite) for _ in range(3)]
    assert [h is not None for h in hits] == [False, True, False]
    # A kind that is not this message never counts an occurrence.
    assert plan.message("a", "b", 1, "STUN", DataFacts()) is None

    def draws(seed: int) -> list[bool]:
        p = FaultPlan([Drop(MessageMatch(probability=0.5))], seed=seed)
        return [p.message("a", "b", 1, "STUN", DataFacts()) is not None for _ in range(64)]

    assert draws(1) == draws(1)
    assert draws(1) != draws(2)
    assert 10 < sum(draws(1)) < 54


@pytest.mark.parametrize("clock", CLOCKS)
def test_delay_holds_a_message_and_what_follows_it_on_the_connection(clock: Clock) -> None:
    sc = lab("faults: [{delay: {from: cms, to: expressway_c, sip: 200 OK, nth: 1, by: 0.4}}]")
    result = run_scenario(sc, clock)
    assert result.outcome.name == "sharing-established"
    [fault] = result.trace.faults
    ok = next(m for m in result.trace.messages if m.src == "cms" and m.summary == "200 OK")
    assert ok.t - fault.t == pytest.approx(0.4, abs=0.05)
    forwarded = next(
        m for m in result.trace.messages if m.src == "expressway_c" and m.summary == "200 OK"
    )
    assert forwarded.t > ok.t


@pytest.mark.parametrize("clock", CLOCKS)
@pytest.mark.parametrize(
    ("how", "reason", "verdict"),
    [("refuse", "refused", "relay-refused"), ("blackhole", "timeout", "relay-unreachable")],
)
def test_block_refuses_or_black_holes_connects_to_a_port_range(
    clock: Clock, how: str, reason: str, verdict: str
) -> None:
    sc = lab(
        "actors: {skype_client: {ice_timeout: 7.0}}\n"
        f"faults: [{{block: {{to: expressway_e, ports: [24000, 29999], how: {how}}}}}]"
    )
    result = run_scenario(sc, clock)
    [refused] = result.trace.refused
    assert (refused.client, refused.server_addr.port, refused.reason, refused.how) == (
        "skype_edge",
        24000,
        reason,
        reason,  # the typed value: refuse is a RST (refused), blackhole silence (timeout)
    )
    # It started (its first SYN) when the Edge's Connect was carried out, before it failed.
    assert refused.started is not None and refused.started <= refused.t
    [blocked] = [f for f in result.trace.faults if f.action == "blocked"]
    assert blocked.t == refused.started and blocked.number == 1
    # A RST and unanswered SYNs are different evidence, and different verdicts.
    assert result.diagnosis.verdict == verdict
    assert result.trace.unmatched_rules == []


def test_a_blackholed_connect_fails_at_its_timeout_a_refused_one_after_a_round_trip() -> None:
    def refused(how: str) -> tuple[float, float]:
        sc = lab(
            "actors: {skype_client: {ice_timeout: 7.0}}\nlatency: 0.01\n"
            f"faults: [{{block: {{to: expressway_e, ports: [24000, 29999], how: {how}}}}}]"
        )
        [record] = run_scenario(sc, "virtual").trace.refused
        assert record.started is not None
        return record.started, record.t

    start, end = refused("refuse")
    assert end - start == pytest.approx(0.02)  # the RST comes back after one round trip
    start, end = refused("blackhole")
    assert end - start > 1.0  # the SYNs went unanswered until the connect's own timeout


@pytest.mark.parametrize("clock", CLOCKS)
def test_cut_resets_both_ends_after_a_time_or_after_bytes(clock: Clock) -> None:
    sc = lab("faults: [{cut: {from: cms, to: expressway_e, connection: 2, after: 0.3}}]")
    result = run_scenario(sc, clock)
    data = [c for c in result.trace.connections.values()
            if (c.client, c.server) == ("cms", "expressway_e")][1]  # fmt: skip
    assert (data.closed_by, data.reset) == ("network", True)
    assert data.closed is not None and data.closed - data.opened == pytest.approx(0.3, abs=0.05)
    assert result.diagnosis.verdict == "media-path-lost"

    by_bytes = lab(
        "actors: {skype_client: {ice_timeout: 2.0}}\n"
        "faults: [{cut: {from: expressway_e, to: cms, connection: 2, after_bytes: 100}}]"
    )
    result = run_scenario(by_bytes, clock)
    # What crossed: the messages Expressway-E put on the wire there, the last one cut short.
    on_wire = [m for m in result.trace.messages
               if m.connection == data.id and m.src == "expressway_e" and m.on_wire]  # fmt: skip
    assert sum(m.wire_size for m in on_wire) == 100
    assert on_wire[-1].fate == "lost" and on_wire[-1].error
    assert result.trace.connections[data.id].closed_by == "network"


# -- rules that never act --------------------------------------------------------------------------

#: Two rules: one on a hop whose actors share no connection (the Expressway-C never talks to the
#: Skype Edge), one that acts (the ACK of CMS's 200 OK, on the hop it crosses).
TYPO = (
    "faults:\n"
    "  - drop: {from: expressway_c, to: skype_edge, sip: INVITE}\n"
    "  - drop: {from: expressway_c, to: cms, sip: ACK}\n"
    "  - drop: {from: expressway_c, to: cms, stun: Binding Request}\n"
    "  - block: {from: cms, to: skype_edge}\n"
)


@pytest.mark.parametrize("clock", CLOCKS)
def test_a_rule_that_never_acts_is_reported_and_fails_the_scenario(clock: Clock) -> None:
    result = run_scenario(lab(TYPO + "expect: {outcome: call-failed}\n"), clock)
    rules = result.trace.fault_rules
    # The ACK is dropped each time CMS resends its 200 OK.
    assert [(r.number, r.action, r.acted > 0) for r in rules] == [
        (1, "drop", False), (2, "drop", True), (3, "drop", False), (4, "block", False)
    ]  # fmt: skip
    assert [r.number for r in result.trace.unmatched_rules] == [1, 3, 4]
    assert rules[0].unmatched() == (
        "fault rule 1 (drop expressway_c → skype_edge SIP 'INVITE') matched nothing"
    )
    assert rules[1].unmatched() == ""
    # The ACK did what the user meant: the call fails. The scenario still fails, on the rest.
    assert result.outcome.name == "call-failed"
    assert [f.split(":")[0] for f in result.failures] == [
        "fault rule 1 (drop expressway_c → skype_edge SIP 'INVITE') matched nothing",
        "fault rule 3 (drop expressway_c → cms STUN 'Binding Request') matched nothing",
        "fault rule 4 (block (blackhole) cms → skype_edge) matched nothing",
    ]
    assert all(f.endswith("expect.unmatched_faults: allowed") for f in result.failures)
    allowed = lab(TYPO + "expect: {outcome: call-failed, unmatched_faults: allowed}\n")
    again = run_scenario(allowed, clock)
    assert again.failures == [] and len(again.trace.unmatched_rules) == 3


def test_a_rule_whose_occurrence_or_chance_never_comes_says_so() -> None:
    sc = lab(
        "faults:\n"
        "  - drop: {from: skype_client, to: skype_edge, sip: INVITE, nth: 3}\n"
        "  - drop: {from: skype_edge, to: expressway_e, sip: INVITE, probability: 0.01}\n"
        "  - drop: {from: skype_edge, to: cms, sip: INVITE, probability: 0.5}\n"
        "  - cut: {from: cms, to: expressway_e, connection: 1, after: 500}\n"
    )
    rules = run_scenario(sc, "virtual").trace.fault_rules
    # Two INVITEs cross skype_client → skype_edge: the audio/video call's, then the share's.
    assert [(r.acted, r.matched) for r in rules] == [(0, 2), (0, 2), (0, 0), (0, 1)]
    assert rules[0].unmatched().endswith("matched 2 messages, none of the occurrences it names")
    assert "with probability 0.01 a rule may act zero times" in rules[1].unmatched()
    assert rules[2].unmatched().endswith("matched nothing (even before its probability 0.5)")
    assert "matched 1 connections and cut none" in rules[3].unmatched()


def test_labsim_run_warns_of_a_rule_that_matched_nothing_and_test_fails_it(
    tmp_path: Path,
) -> None:
    import json

    typo = tmp_path / "typo.yaml"
    typo.write_text(
        f"extends: {library_dir() / 'ack-lost.yaml'}\nclock: virtual\n"
        "faults: [{drop: {from: expressway_c, to: cms, sip: ACK}}, "
        "{drop: {from: expressway_c, to: cms, stun: Binding Request}}]\n"
        "expect: {outcome: call-failed}\n"
    )
    out = tmp_path / "run.json"
    ran = CliRunner().invoke(main, ["run", str(typo), "-q", "--json", str(out)])
    assert ran.exit_code == 1, ran.output
    assert (
        "warning: fault rule 2 (drop expressway_c → cms STUN 'Binding Request') matched nothing"
        in ran.output
    )
    data = json.loads(out.read_text())
    assert [(r["number"], r["acted"] > 0, r["warning"]) for r in data["fault_rules"]] == [
        (1, True, None),
        (2, False, "fault rule 2 (drop expressway_c → cms STUN 'Binding Request') matched nothing"),
    ]
    assert {f["number"] for f in data["faults"]} == {1}
    tested = CliRunner().invoke(main, ["test", str(typo)])
    assert tested.exit_code == 1 and "0 passed, 1 failed" in tested.output
    assert "fault rule 2 (drop expressway_c → cms STUN 'Binding Request') matched nothing" in (
        tested.output
    )


# -- the diagnosis of faults injected by rules alone, into the healthy lab -----------------------

RULE_FAULTS = [
    ("one-way-binding", "faults: [{drop: {from: expressway_e, to: skype_edge, "
     "stun: Binding Request}}]"),
    ("one-way-binding", "faults: [{drop: {from: cms, to: expressway_e, "
     "stun: Binding Success Response}}]"),
    ("one-way-binding", "faults: [{drop: {from: skype_edge, to: skype_client, "
     "stun: Binding Success Response}}]"),
    ("relay-refused", "faults: [{block: {from: skype_edge, to: expressway_e, "
     "ports: [24000, 29999], how: refuse}}]"),
    ("relay-unreachable", "faults: [{block: {from: skype_edge, to: expressway_e, "
     "ports: [24000, 29999]}}]\nactors: {skype_client: {ice_timeout: 8.0}}"),
    ("connection-bind-missing", "faults: [{drop: {from: cms, to: expressway_e, "
     "stun: ConnectionBind Request}}]\nactors: {skype_client: {ice_timeout: 40.0}}\n"
     "deadline: 60"),
    ("connection-bind-missing", "faults: [{drop: {from: expressway_e, to: cms, "
     "stun: ConnectionAttempt}}]\nactors: {skype_client: {ice_timeout: 40.0}}\ndeadline: 60"),
    ("media-path-lost", "faults: [{cut: {from: skype_edge, to: expressway_e, connection: 2, "
     "after: 0.5}}]"),
    ("media-path-lost", "faults: [{cut: {from: cms, to: expressway_e, connection: 2, "
     "after: 0.5}}]"),
    ("slow-network", "faults: [{delay: {from: expressway_c, to: cms, sip: INVITE, by: 1.5}}]"),
    ("no-sip-path", "faults: [{drop: {from: expressway_e, to: expressway_c, sip: INVITE}}]\n"
     "deadline: 60"),
    ("no-sip-path", "faults: [{block: {from: expressway_c, to: expressway_e}}]\ndeadline: 60"),
]  # fmt: skip


@pytest.mark.parametrize(("verdict", "rules"), RULE_FAULTS)
def test_a_fault_injected_by_rules_alone_gets_the_right_diagnosis(verdict: str, rules: str) -> None:
    result = run_scenario(lab(rules, hold=2.0), "virtual")
    assert result.diagnosis.verdict == verdict, result.diagnosis.text()
    assert result.trace.faults, "the rule did something"
    assert result.trace.unmatched_rules == []
    text = result.diagnosis.text()
    assert "fault 1:" not in text, "the diagnosis must not read the fault records"


def test_the_diagnosis_ignores_fault_records() -> None:
    result = run_scenario(lab(RULE_FAULTS[0][1]), "virtual")
    from labsim.report.diagnose import diagnose

    before = diagnose(result.trace)
    result.trace.faults.clear()
    result.trace.timeline[:] = [
        r for r in result.trace.timeline if type(r).__name__ != "FaultRecord"
    ]
    assert diagnose(result.trace) == before


# -- the library --------------------------------------------------------------------------------


def library() -> list[tuple[str, Scenario]]:
    return [(path.stem, sc) for path, sc in list_scenarios()]


def test_the_library_covers_every_fault_of_the_issue() -> None:
    names = {name for name, _ in library()}
    assert {
        "sharing-call", "one-way-binding-cms-checks", "one-way-binding-skype-answers",
        "presenter-not-allowed", "wrong-turn-credentials", "relay-ports-blocked",
        "tcp-relay-unsupported", "connection-bind-never-sent", "allocation-expiry",
        "stale-nonce", "permission-required", "latency-500ms",
    } <= names  # fmt: skip
    for name, sc in library():
        assert sc.description
        assert sc.expect.diagnosis is not None, name


@pytest.mark.parametrize("name", [name for name, _ in library()])
@pytest.mark.parametrize("clock", CLOCKS)
def test_every_library_scenario_meets_its_expectation(name: str, clock: Clock) -> None:
    sc = dict(library())[name]
    if clock == "live" and name in LIVE_TOO_LONG and os.environ.get("LABSIM_SLOW") != "1":
        sc = sc.model_copy(update={"clock": "virtual"})
        clock = "virtual"  # see LIVE_TOO_LONG
    fds = len(os.listdir("/proc/self/fd"))
    result: RunResult = run_scenario(sc, clock)
    assert result.passed, (result.failures, result.diagnosis.text())
    # Every scenario ends with a verdict, both ends done before its deadline, and leaves
    # nothing open. (How fast is bench/'s business: tests assert no timing.)
    assert result.ended == ("deadline" if name in ENDS_AT_DEADLINE else "finished")
    assert len(os.listdir("/proc/self/fd")) <= fds, "a socket outlived the run"


def test_labsim_test_prints_a_table_and_writes_junit(tmp_path: Path) -> None:
    out = tmp_path / "report.xml"
    files = [str(library_dir() / f) for f in ("sharing-call.yaml", "presenter-not-allowed.yaml")]
    result = CliRunner().invoke(main, ["test", *files, "--clock", "virtual", "--junit", str(out)])
    assert result.exit_code == 0, result.output
    assert "presenter-not-allowed" in result.output and "2 passed, 0 failed" in result.output
    suite = ET.parse(out).getroot()
    assert (suite.get("tests"), suite.get("failures")) == ("2", "0")
    assert [c.get("name") for c in suite.iter("testcase")] == [
        "sharing-call", "presenter-not-allowed"
    ]  # fmt: skip


def test_labsim_test_fails_when_an_expectation_does_not_hold(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(
        "extends: sharing-call.yaml\nclock: virtual\ncall: {hold: 1}\n"
        "expect: {outcome: sharing-established, diagnosis: one-way-binding}\n"
    )
    out = tmp_path / "r.xml"
    result = CliRunner().invoke(main, ["test", str(wrong), "--junit", str(out)])
    assert result.exit_code == 1
    assert "diagnosis 'healthy', expected 'one-way-binding'" in result.output
    [failure] = ET.parse(out).getroot().iter("failure")
    assert "one-way-binding" in (failure.get("message") or "")


def test_labsim_run_prints_the_diagnosis_and_puts_it_in_json(tmp_path: Path) -> None:
    import json

    out = tmp_path / "run.json"
    result = CliRunner().invoke(
        main, ["run", "presenter-not-allowed", "--clock", "virtual", "-q", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "Diagnosis: presenter-not-allowed" in result.output
    assert "Make Presenter" in result.output
    data = json.loads(out.read_text())
    assert data["diagnosis"]["verdict"] == "presenter-not-allowed"


@pytest.mark.tshark
def test_a_faulted_run_still_makes_a_clean_capture(tmp_path: Path) -> None:
    """Dropped bytes never reach the capture and held ones are captured when they leave, so
    sequence numbers stay whole: tshark sees no gap, no retransmission, nothing malformed."""
    from labsim.report.pcap import write_pcapng

    from .test_report_pcap import tshark

    sc = lab(
        "actors: {skype_client: {ice_timeout: 2.0}}\nfaults:\n"
        "  - drop: {from: cms, to: expressway_e, stun: Binding Request}\n"
        "  - delay: {from: expressway_c, to: cms, sip: INVITE, by: 0.3}\n"
        "  - drop: {from: expressway_e, to: skype_edge, protocol: STUN, nth: 1}\n"
    )
    result = run_scenario(sc, "virtual")
    assert {f.action for f in result.trace.faults} == {"dropped", "delayed"}
    path = tmp_path / "faulted.pcapng"
    write_pcapng(result.trace, path)
    assert tshark(path, "-Y", "tcp.analysis.flags || _ws.malformed") == []
    stun_rows = tshark(path, "-Y", "stun", "-T", "fields", "-e", "_ws.col.Info")
    assert not [r for r in stun_rows if "user: Xa3f:cM5k" in r], "a dropped check was captured"
