"""``labsim load``: many sharing calls through one Edge, Expressway-E, Expressway-C and CMS
(labsim/load.py, labsim/actors/meeting.py), each call judged as ``labsim run`` judges one.

Small N throughout (virtual clock, plus one bounded live run); speed is bench/load.py's.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from collections import Counter
from pathlib import Path

from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from labsim import scenario
from labsim.actors.meeting import (
    call_id_of,
    call_of_address,
    call_of_connection,
    client_address,
    origin_of,
)
from labsim.cli import main
from labsim.load import LoadResult, call_views, message_calls, run_load
from labsim.load_command import report_lines, summary
from labsim.net.faults import Drop, FaultPlan, MessageMatch, role
from labsim.proto.events import Accepted, Address, Close, Received, Started, StartTimer, TimerFired
from labsim.proto.sip_transport import Incoming, IncompleteTimer, SipTransport
from labsim.run import run_scenario
from labsim.scenario import Scenario, bundled
from labsim.trace import Trace
from labsim.wire.facts import parse_kind

LIBRARY = Path(__file__).parent.parent / "labsim" / "scenarios"


def extended(text: str) -> Scenario:
    """The healthy lab with ``text`` added (YAML, at the top level)."""
    return scenario.loads(f"extends: sharing-call.yaml\n{text}", base=LIBRARY)


def library(name: str) -> Scenario:
    path = bundled(name)
    assert path is not None
    return scenario.load(path)


def by_call(result: LoadResult) -> Counter[tuple[str, str]]:
    return Counter((c.outcome.name, c.diagnosis.verdict) for c in result.calls)


def roles(trace: Trace) -> list[tuple[str, str, str]]:
    """The call's flow with actors by role and numbers (addresses, ports, sizes) left out:
    comparable between calls and with one run."""
    return [(re.sub(r"\d+", "#", s), role(a), role(b)) for s, a, b in trace.sequence()]


# -- the composition -----------------------------------------------------------------------------


def test_addresses_names_and_sip_dispatch_keys() -> None:
    assert client_address(1) == "192.168.10.1" and client_address(251) == "192.168.11.1"
    assert all(call_of_address(client_address(n)) == n for n in (1, 250, 251, 10_000))
    assert call_of_address("192.168.1.252") is None  # the Edge is no client
    assert call_of_connection("cms/c17.turn:ctl") == 17
    assert call_of_connection("skype_client/17/sip:1") == 17
    assert call_of_connection("skype_edge/c3.relay:1") == 3
    assert call_of_connection("expressway_c/sip:1") is None
    invite = (
        b"INVITE sip:meeting@cms.lab SIP/2.0\r\n"
        b"Via: SIP/2.0/TCP 10.48.54.228:5060;branch=z9hG4bKc1\r\n"
        b"v: SIP/2.0/TCP 192.168.1.252:5060;branch=z9hG4bKe1, SIP/2.0/TCP 192.168.10.7:5060;"
        b"branch=z9hG4bKsc1;rport=5060\r\n"
        b"i: abc@192.168.10.7\r\nContent-Length: 0\r\n\r\n"
    )
    assert call_id_of(invite) == "abc@192.168.10.7"
    assert origin_of(invite) == "192.168.10.7"


def test_one_call_runs_as_labsim_run_does() -> None:
    sc = library("sharing-call")
    one = run_scenario(sc, "virtual")
    load = run_load(sc, 1, clock="virtual", keep_trace=True)
    assert load.trace is not None
    view = call_views(load.trace, 1)[1]
    assert roles(view) == roles(one.trace)
    assert load.calls[0].outcome.name == one.outcome.name
    assert load.calls[0].diagnosis.verdict == one.diagnosis.verdict == "healthy"


def test_twenty_calls_are_all_established_and_healthy() -> None:
    result = run_load(library("sharing-call"), 20, clock="virtual", keep_trace=True)
    assert by_call(result) == Counter({("sharing-established", "healthy"): 20})
    assert not result.failed() and not result.errors
    assert result.peak_allocations == 20 and result.peak_edge_relays == 20
    assert all(c.setup is not None and c.setup > 0 for c in result.calls)
    # Every call had its own TURN allocation: 20 Allocate Success Responses, 20 relay ports.
    assert result.trace is not None
    ok = result.trace.find("Allocate Success Response")
    relays = {m.stun_facts.relayed for m in ok if m.stun_facts is not None}
    assert len(relays) == 20


def test_rate_and_concurrency_bound_the_calls_up() -> None:
    result = run_load(library("sharing-call"), 6, clock="virtual", rate=10, concurrent=2)
    assert by_call(result) == Counter({("sharing-established", "healthy"): 6})
    assert result.peak_allocations <= 2
    assert max(s.active for s in result.samples) <= 2


# -- the scenario's faults and settings, on every call ---------------------------------------


def test_a_library_fault_gives_every_call_its_verdict() -> None:
    for name in ("one-way-binding-skype-answers", "ack-lost", "turn-port-firewalled"):
        sc = library(name)
        result = run_load(sc, 8, clock="virtual")
        assert not result.failed(), (name, result.failed()[0].failures)
        assert by_call(result) == Counter({(sc.expect.outcome, sc.expect.diagnosis): 8}), name


def test_rule_roles_match_every_client() -> None:
    rule = MessageMatch(src="skype_client", dst="skype_edge")
    assert rule.hop("skype_client/17", "skype_edge") and rule.hop("skype_client", "skype_edge")
    assert not rule.hop("skype_edge", "skype_client/17")
    plan = FaultPlan([Drop(MessageMatch(src="skype_client", kind=parse_kind("INVITE")))])
    assert plan.watches("skype_client/3", "skype_edge")


def test_more_calls_than_relay_ports_get_508_and_the_diagnosis_says_so() -> None:
    sc = extended("actors: {expressway_e: {turn: {relay_ports: [24000, 24009]}}}")
    result = run_load(sc, 20, clock="virtual")
    assert by_call(result) == Counter(
        {("sharing-established", "healthy"): 10, ("turn-failed", "turn-no-capacity"): 10}
    )
    for call in result.failed():
        assert "508" in " ".join(call.diagnosis.evidence)
        assert "508 Insufficient Capacity" in call.diagnosis.summary
    assert result.peak_allocations == 10


def test_the_user_quota_gives_486_and_the_diagnosis_says_so() -> None:
    sc = extended("actors: {expressway_e: {turn: {user_quota: 5}}}")
    result = run_load(sc, 12, clock="virtual")
    assert by_call(result) == Counter(
        {("sharing-established", "healthy"): 5, ("turn-failed", "turn-no-capacity"): 7}
    )
    for call in result.failed():
        assert "486 Allocation Quota Reached" in call.diagnosis.summary


def test_calls_reset_by_the_turn_server_are_told_from_calls_lost_on_the_way() -> None:
    """Six calls open their TURN connections at one instant; Expressway-E keeps two without an
    allocation and resets the oldest to make room. The Allocates on the reset connections were
    on the wire when the server itself ended them: ``turn-connection-reset``, not a loss
    between CMS and Expressway-E. The same Allocate dropped on the hop, its connection left up,
    stays ``turn-no-answer``."""
    reset = run_load(extended(
        "call: {av_call: false}\nactors: {expressway_e: {turn: {max_idle_connections: 2}}}\n"
    ), 6, clock="virtual")  # fmt: skip
    assert by_call(reset) == Counter({
        ("turn-failed", "turn-connection-reset"): 4, ("sharing-established", "healthy"): 2,
    })  # fmt: skip
    lost = run_load(extended(
        "call: {av_call: false}\n"
        "faults: [{drop: {from: cms, to: expressway_e, stun: Allocate Request}}]\n"
    ), 2, clock="virtual")  # fmt: skip
    assert {c.diagnosis.verdict for c in lost.calls} == {"turn-no-answer"}


@settings(max_examples=8, deadline=None)
@given(calls=st.integers(1, 8), ports=st.integers(1, 8))
def test_sweep_calls_past_the_relay_range_are_refused_one_for_one(calls: int, ports: int) -> None:
    last = 24000 + ports - 1
    sc = extended(f"actors: {{expressway_e: {{turn: {{relay_ports: [24000, {last}]}}}}}}")
    result = run_load(sc, calls, clock="virtual")
    verdicts = Counter(c.diagnosis.verdict for c in result.calls)
    assert verdicts["healthy"] == min(calls, ports)
    assert verdicts["turn-no-capacity"] == max(0, calls - ports)


# -- isolation ---------------------------------------------------------------------------------


def test_a_fault_in_one_call_never_touches_another() -> None:
    """Checks dropped at random on the shared CMS -> Expressway-E hop hit some calls: the
    others run exactly as a call alone does, and no message of one call crosses onto another
    call's connections."""
    healthy = run_scenario(library("sharing-call"), "virtual")
    sc = extended(
        "faults:\n  - drop: {from: cms, to: expressway_e, stun: Binding Success Response, "
        "probability: 0.3}\nexpect: {unmatched_faults: allowed}\nseed: 7\n"
    )
    result = run_load(sc, 12, clock="virtual", keep_trace=True)
    trace = result.trace
    assert trace is not None
    views = call_views(trace, 12)
    conns_of = {n: set(v.connections) for n, v in views.items()}
    hit = {n for n, v in views.items() if v.faults}
    assert hit and hit != set(views), "the seed should hit some calls and spare others"
    for n, view in views.items():
        call = result.calls[n - 1]
        if n in hit:
            assert call.diagnosis.verdict != "healthy"
            continue
        # Untouched: the same flow and judgement as the one call run alone.
        assert roles(view) == roles(healthy.trace), n
        assert (call.outcome.name, call.diagnosis.verdict) == ("sharing-established", "healthy")
    # 0 bytes crossing: every connection belongs to one call at most, and every hop of every
    # message stays on the connections of the call it started in.
    for a in views:
        for b in views:
            assert a == b or not conns_of[a] & conns_of[b]
    owner = message_calls(trace)
    for journey in trace.journeys:
        calls = {owner[id(hop)] for hop in journey.hops}
        assert len(calls) == 1, journey
    crossing = {
        (a, b): sum(m.wire_size for m in views[a].messages if m.connection in conns_of[b])
        for a in views for b in views if a != b
    }  # fmt: skip
    assert set(crossing.values()) == {0}
    # On the shared SIP connections, each call's messages carry its own Call-IDs only.
    for n, view in views.items():
        ids = {m.sip_facts.call_id for m in view.messages if m.sip_facts is not None}
        assert len(ids) == 2  # the audio/video call and the share
        others = {
            m.sip_facts.call_id for k, v in views.items() if k != n
            for m in v.messages if m.sip_facts is not None
        }  # fmt: skip
        assert not ids & others


# -- live ---------------------------------------------------------------------------------------


def test_ten_live_calls_are_all_established() -> None:
    result = run_load(library("sharing-call"), 10, clock="live")
    assert not result.errors
    assert [c.outcome.name for c in result.calls] == ["sharing-established"] * 10
    assert result.peak_fds > 10
    # The live loop's lateness is measured through the run and bounds each call's own.
    assert result.loop_lag and all(late >= 0 for late in result.loop_lag)
    assert all(0 <= c.loop_lag <= max(result.loop_lag) for c in result.calls)


def test_the_virtual_clock_is_never_late() -> None:
    result = run_load(library("sharing-call"), 3, clock="virtual")
    assert result.loop_lag == [] and all(c.loop_lag == 0.0 for c in result.calls)
    assert summary(result, 0)["loop_lag"]["max_ms"] is None


def test_a_slow_verdict_while_labsim_itself_was_late_is_said_to_be_labsim() -> None:
    """The evidence for ``slow-network`` is round trips; when the one process playing every
    actor ran its timers late during a call, those round trips include that lateness, and the
    summary must say so rather than blame a network. Calls are given lateness here; the live
    measurement itself is the test above."""
    result = run_load(library("sharing-call"), 4, clock="virtual")
    slow = [
        dataclasses.replace(c, diagnosis=dataclasses.replace(c.diagnosis, verdict="slow-network"),
                            loop_lag=late)
        for c, late in zip(result.calls, (0.0, 0.004, 0.012, 0.3), strict=True)
    ]  # fmt: skip
    s = summary(dataclasses.replace(result, calls=slow, loop_lag=[0.3]), 0)
    assert s["loop_lag"]["not_healthy_while_late"] == {"slow-network": 2}
    assert [c["loop_lag_ms"] for c in s["per_call"]] == [0.0, 4.0, 12.0, 300.0]
    text = "\n".join(report_lines(s))
    assert "late by p99 300.0 ms" in text
    assert "calls judged slow-network 2 ran while that loop was 10 ms or more late" in text
    # Lateness under the notice: no caution, the verdict stands alone.
    calm = [dataclasses.replace(c, loop_lag=0.004) for c in slow]
    text = "\n".join(report_lines(summary(dataclasses.replace(result, calls=calm), 0)))
    assert "caution" not in text


def test_more_lab_hosts_than_a_loopback_block_holds_run_live() -> None:
    sc = extended("call: {hold: 1.0, av_call: false}\n")
    # Paced and bounded, so a loaded machine slows the run down rather than its calls.
    result = run_load(sc, 260, clock="live", rate=20, concurrent=24)
    assert not result.errors
    assert Counter(c.outcome.name for c in result.calls) == Counter({"sharing-established": 260})


# -- the command ---------------------------------------------------------------------------------


def test_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["load", "--calls", "3", "--clock", "virtual"])
    assert ok.exit_code == 0, ok.output
    assert "sharing-established 3" in ok.output and "healthy 3" in ok.output
    assert "p50" in ok.output and "TURN allocations" in ok.output
    few = tmp_path / "few-ports.yaml"
    few.write_text(
        f"extends: {LIBRARY / 'sharing-call.yaml'}\n"
        "actors: {expressway_e: {turn: {relay_ports: [24000, 24001]}}}\n"
    )
    failed = runner.invoke(main, ["load", str(few), "--calls", "4", "--clock", "virtual"])
    assert failed.exit_code == 1, failed.output
    assert "turn-no-capacity 2" in failed.output
    allowed = runner.invoke(
        main, ["load", str(few), "--calls", "4", "--clock", "virtual", "--max-failures", "2"]
    )
    assert allowed.exit_code == 0, allowed.output
    for bad in (["--calls", "0"], ["--rate", "fast"], ["--stats", str(tmp_path / "s.txt")],
                ["no-such-scenario"], ["--concurrent", "0"]):  # fmt: skip
        assert runner.invoke(main, ["load", *bad]).exit_code == 2, bad


def test_stats_and_json_files(tmp_path: Path) -> None:
    runner = CliRunner()
    stats, out = tmp_path / "stats.csv", tmp_path / "load.json"
    args = ["load", "--calls", "4", "--clock", "virtual", "--stats-every", "1"]
    result = runner.invoke(main, [*args, "--stats", str(stats), "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(stats.open()))
    assert rows[0].keys() >= {"kind", "t", "started", "active", "allocations", "fds", "rss_kib"}
    assert [r["kind"] for r in rows].count("final") == 1 and rows[-1]["kind"] == "final"
    assert len(rows) >= 4  # a row a second of a ~6.6 s run, and the final one
    assert max(int(r["allocations"]) for r in rows) == 4
    assert rows[-1]["started"] == "4" and rows[-1]["active"] == "0"
    doc = json.loads(out.read_text())
    assert doc["calls"] == 4 and doc["by_outcome"] == {"sharing-established": 4}
    assert doc["ok"] and len(doc["per_call"]) == 4 and doc["peak"]["allocations"] == 4
    assert doc["setup"]["p50"] > 0
    as_json = tmp_path / "stats.json"
    result = runner.invoke(main, [*args, "--stats", str(as_json)])
    assert result.exit_code == 0
    figures = json.loads(as_json.read_text())
    assert figures["final"]["by_verdict"] == {"healthy": 4} and figures["samples"]
    to_stdout = runner.invoke(main, [*args, "--json", "-", "-q"])
    assert to_stdout.exit_code == 0


# -- the shared SIP connections ------------------------------------------------------------------


def test_a_busy_shared_sip_connection_is_not_reset_while_its_messages_complete() -> None:
    """Every call's SIP crosses the Expressway-C -> CMS connection: under load each read may
    end inside a message. The 64·T1 wait for an incomplete message is for that message
    (labsim/proto/sip_transport.py): each message that completes restarts it."""
    transport = SipTransport("10.48.54.228", (5060,), incomplete_timeout=32.0)
    transport.handle(Started(), 0.0)
    conn = "cms/sip:1"
    transport.handle(Accepted(conn, Address("10.48.54.228", 5060),
                              Address("10.48.54.230", 40000)), 0.0)  # fmt: skip
    message = (
        b"OPTIONS sip:meeting@cms.lab SIP/2.0\r\n"
        b"Via: SIP/2.0/TCP 10.48.54.230:5060;branch=z9hG4bKcms1\r\n"
        b"From: <sip:meeting@cms.lab>;tag=1\r\nTo: <sip:meeting@cms.lab>\r\n"
        b"Call-ID: busy@10.48.54.230\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    half = len(message) // 2
    first = transport.handle(Received(conn, message[:half]), 0.0)
    assert StartTimer(IncompleteTimer(conn), 32.0) in first.effects
    for n in range(1, 6):  # 100 s of reads, each completing one message and starting the next
        step = transport.handle(Received(conn, message[half:] + message[:half]), 20.0 * n)
        assert len([x for x in step.notices if isinstance(x, Incoming)]) == 1
        assert StartTimer(IncompleteTimer(conn), 32.0) in step.effects, n
    # A message that stays incomplete still ends the connection when its wait runs out.
    fired = transport.handle(TimerFired(IncompleteTimer(conn)), 132.0)
    assert any(isinstance(e, Close) and e.reset for e in fired.effects)
