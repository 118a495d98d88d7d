"""The diagnosis on the faults a new user writes from the README: each case is one the old,
library-shaped diagnosis got wrong, and the verdict must now follow from the evidence.
The sweep over every message and hop is in ``test_diagnosis_sweep.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from labsim.report.diagnose import RULES, verdict_table
from labsim.run import Clock, run_scenario
from labsim.vocabulary import VERDICTS
from tests.labs import variant

DOCS = Path(__file__).parent.parent / "docs" / "diagnosis.md"
CLOCKS: tuple[Clock, ...] = ("virtual", "live")


def test_the_verdict_table_in_the_docs_is_current() -> None:
    assert verdict_table() in DOCS.read_text(), (
        "docs/diagnosis.md is stale: paste `python -m labsim.report.diagnose` into it"
    )


def test_every_verdict_is_reachable_from_the_table_or_the_working_call() -> None:
    working = {"healthy", "stale-nonce-recovered", "glare-recovered", "recovered",
               "slow-network", "unknown"}  # fmt: skip
    assert {r.verdict for r in RULES} | working == set(VERDICTS)


@pytest.mark.parametrize("clock", CLOCKS)
def test_a_lost_ack_is_named_with_its_hop_and_cms_timer(clock: Clock) -> None:
    result = run_scenario(
        variant(
            "deadline: 60\nactors: {skype_client: {ice_timeout: 40.0}}\n"
            "faults:\n  - drop: {from: expressway_c, to: cms, sip: ACK}\n"
        ),
        clock,
    )
    d = result.diagnosis
    assert (result.outcome.name, d.verdict, d.step) == ("call-failed", "ack-lost", "SIP answer")
    assert "expressway_c → cms" in d.evidence[0] and "ACK" in d.evidence[0]
    # Who ended the call, and why, read from the BYE's Reason header.
    assert d.ended.startswith("cms ended the call with BYE") and "64*T1" in d.ended


def test_refused_and_blackholed_turn_ports_are_different_verdicts() -> None:
    verdicts = {}
    for how in ("refuse", "blackhole"):
        rule = f"{{from: cms, to: expressway_e, ports: [3478, 3478], how: {how}}}"
        result = run_scenario(variant(f"faults:\n  - block: {rule}\n"), "virtual")
        assert result.outcome.name == "turn-failed"
        verdicts[how] = result.diagnosis
    assert verdicts["refuse"].verdict == "turn-port-refused"
    assert "RST" in verdicts["refuse"].evidence[0]
    assert verdicts["blackhole"].verdict == "turn-port-blocked"
    assert "SYN" in verdicts["blackhole"].evidence[0]


def test_refreshes_dropped_on_the_way_are_not_cms_that_stopped_refreshing() -> None:
    result = run_scenario(
        variant(
            "deadline: 800\ncall: {hold: 700}\n"
            "faults:\n  - drop: {from: cms, to: expressway_e, stun: Refresh Request}\n"
        ),
        "virtual",
    )
    d = result.diagnosis
    assert d.verdict == "allocation-expired"
    assert "did refresh" in d.cause and "cms → expressway_e" in d.cause
    assert any("Refresh Request" in e and "dropped on cms → expressway_e" in e for e in d.evidence)


def test_no_refresh_at_all_is_cms_that_stopped_refreshing() -> None:
    result = run_scenario(
        variant("deadline: 800\ncall: {hold: 700}\nactors: {cms: {turn: {refresh: false}}}\n"),
        "virtual",
    )
    d = result.diagnosis
    assert d.verdict == "allocation-expired" and "sent no Refresh" in d.cause


def test_checks_dropped_beyond_expressway_e_say_where_not_that_cms_sent_none() -> None:
    result = run_scenario(
        variant(
            "actors: {skype_client: {ice_timeout: 3.0}}\n"
            "faults:\n  - drop: {from: expressway_e, to: skype_edge, stun: Binding Request}\n"
        ),
        "virtual",
    )
    d = result.diagnosis
    assert d.verdict == "one-way-binding"
    assert "sent no" not in d.text()
    assert "crossed cms → expressway_e" in d.evidence[0]
    assert "dropped on expressway_e → skype_edge (fault rule 1)" in d.evidence[0]


def test_a_lost_reinvite_answer_is_not_healthy() -> None:
    # The client's 200 OK to CMS's reINVITE, every copy, dropped between Expressway-E and
    # Expressway-C (the only 200s that cross that hop that way): CMS's Timer B ends the call.
    result = run_scenario(
        variant(
            "deadline: 60\nactors: {skype_client: {ice_timeout: 40.0}}\n"
            "faults:\n  - drop: {from: expressway_e, to: expressway_c, sip: '200'}\n"
        ),
        "virtual",
    )
    d = result.diagnosis
    assert d.verdict != "healthy", d.text()
    assert "200 OK (reINVITE)" in d.text() and "expressway_e → expressway_c" in d.text()


def test_two_faults_the_first_in_call_order_decides_and_the_other_is_listed() -> None:
    result = run_scenario(
        variant(
            "actors: {skype_client: {ice_timeout: 3.0}}\nfaults:\n"
            "  - drop: {from: skype_edge, to: expressway_e, stun: Binding Success Response}\n"
            "  - drop: {from: expressway_e, to: cms, stun: ConnectionAttempt Indication}\n"
        ),
        "virtual",
    )
    d = result.diagnosis
    # The ConnectionAttempt comes before any check in the call.
    assert d.verdict == "connection-bind-missing", d.text()
    assert "ConnectionAttempt" in d.summary


def test_a_fault_that_recovers_is_named_never_healthy() -> None:
    result = run_scenario(
        variant("faults:\n  - drop: {from: skype_edge, to: skype_client, sip: '200', nth: 1}\n"),
        "virtual",
    )
    d = result.diagnosis
    assert result.outcome.name == "sharing-established"
    assert d.verdict == "recovered"
    assert "recovered: sent again" in d.text() and "skype_edge → skype_client" in d.text()


def test_the_healthy_call_says_who_hung_up() -> None:
    result = run_scenario(variant(""), "virtual")
    d = result.diagnosis
    assert d.verdict == "healthy" and not d.evidence and not d.also
    assert d.ended.startswith("skype_client ended the call with BYE") and "hang-up" in d.ended


@pytest.mark.parametrize(
    ("cut", "verdict", "words"),
    [
        ("{from: skype_edge, to: expressway_e, connection: 1, after: 0.3}",
         "sip-connection-lost", "the SIP connection skype_edge/sip:1"),
        ("{from: cms, to: expressway_e, connection: 2, after: 0.3}",
         "media-path-lost", "cms/turn:data:1"),
    ],
)  # fmt: skip
def test_a_cut_connection_is_named_by_what_it_carried(cut: str, verdict: str, words: str) -> None:
    result = run_scenario(variant(f"deadline: 60\nfaults:\n  - cut: {cut}\n"), "virtual")
    d = result.diagnosis
    assert d.verdict == verdict, d.text()
    assert any(words in e and "by the network" in e for e in d.evidence), d.text()
