"""The meeting's audio/video call before the share (issue 14 §1; Cisco 212580: the sharing
INVITE "will have a different SIP call-id than the initial audio/video call"): on the wire
(tshark reads labsim's pcap), in order (the A/V dialog, then the sharing INVITE, then TURN), the
key that turns it off, the library's verdicts with it and without it, and its two state machines
driven sans-IO."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from sipmessage import Request, Response

from labsim.actors.cms import Cms
from labsim.actors.common import UaTimer
from labsim.actors.lab import Lab
from labsim.actors.skype_client import SkypeClient
from labsim.cli import main
from labsim.proto import avcall
from labsim.proto.events import (
    Accepted,
    Address,
    Connect,
    Connected,
    Received,
    Started,
    TimerFired,
)
from labsim.proto.sip_ua_state import UaEvent, UaState
from labsim.report.ladder import _Ladder, render_ladder
from labsim.report.pcap import write_pcapng
from labsim.run import ACTORS, RunResult, run_scenario
from labsim.scenario import library_dir, load
from labsim.trace import MessageRecord
from labsim.wire import sip

from .conftest import require_tool
from .labs import av_call_ids, av_sip, share_sip, variant
from .test_call_robustness import sent_sip
from .test_ua_transactions import Clock, logs, summaries

LIBRARY = sorted(library_dir().glob("*.yaml"))


@pytest.fixture(scope="module")
def lab() -> RunResult:
    result = run_scenario(load(library_dir() / "sharing-call.yaml"), "virtual")
    assert result.passed, result.failures
    return result


def initial_invites(result: RunResult) -> list[MessageRecord]:
    """The client's dialog-creating INVITEs as they left it (no To tag)."""
    return [
        m for m in result.trace.messages
        if m.src == "skype_client" and (f := m.sip_facts) is not None and f.method == "INVITE"
        and f.to_tag is None
    ]  # fmt: skip


# -- on the wire -----------------------------------------------------------------------------------


def test_tshark_reads_two_invites_with_different_call_ids(lab: RunResult, tmp_path: Path) -> None:
    tshark = require_tool("tshark")
    pcap = tmp_path / "lab.pcapng"
    write_pcapng(lab.trace, pcap, capture_at=["cms"], scenario="sharing-call")
    done = subprocess.run(
        [tshark, "-r", str(pcap), "-Y", "sip.Method == INVITE && !sip.to.tag", "-T", "fields",
         "-e", "sip.Call-ID", "-e", "sdp.media.media", "-E", "separator=|"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    rows = [line.split("|") for line in done.stdout.splitlines()]
    # At CMS: the audio/video INVITE, then the sharing INVITE, each once (no reINVITE here:
    # it carries the To tag).
    assert len(rows) == 2, done.stdout
    (av_id, av_media), (share_id, share_media) = rows
    assert av_id != share_id
    assert av_media.split(",")[:2] == ["audio", "video"] or {"audio", "video"} <= set(
        av_media.split(",")
    )
    assert "applicationsharing" in share_media and "audio" not in share_media


def test_the_trace_holds_two_dialogs_each_end_to_end(lab: RunResult) -> None:
    av, share = initial_invites(lab)
    assert av.sip_facts is not None and share.sip_facts is not None
    assert av.sip_facts.media == ("audio", "video")
    assert share.sip_facts.media == ("applicationsharing",)
    assert av.sip_facts.call_id != share.sip_facts.call_id
    assert av.sip_facts.from_tag != share.sip_facts.from_tag
    assert av_call_ids(lab.trace) == {av.sip_facts.call_id}
    # Hop by hop like the share: four hops each way, every proxy adding Via and Record-Route.
    hops = [(m.src, m.dst) for m in av_sip(lab.trace) if m.summary == "INVITE"]
    assert hops == list(zip(ACTORS, ACTORS[1:], strict=False))
    at_cms = next(m for m in av_sip(lab.trace) if m.summary == "INVITE" and m.dst == "cms")
    invite = sip.parse_message(at_cms.data)
    assert len(sip.record_route(invite)) == 3 and len(invite.headers.getlist("Via")) == 4


def test_the_av_dialog_precedes_the_share_and_turn_follows_the_sharing_invite(
    lab: RunResult,
) -> None:
    trace = lab.trace
    av_ack = next(m for m in av_sip(trace) if m.summary == "ACK" and m.dst == "cms")
    av_ok = next(m for m in av_sip(trace) if m.summary == "200 OK" and m.dst == "skype_client")
    _, share = initial_invites(lab)
    assert av_ok.t < share.t and av_ack.sent_t < share.t
    share_at_cms = next(
        m for m in share_sip(trace)
        if m.summary == "INVITE" and m.dst == "cms" and m.sip_facts is not None
        and m.sip_facts.to_tag is None
    )  # fmt: skip
    # CMS asks for a relay only for the share (Cisco 212580): nothing reaches its TURN server,
    # no connection to it opens, before the sharing INVITE reaches CMS.
    stun = [m for m in trace.messages if m.protocol == "STUN"]
    assert stun and min(m.t for m in stun) > share_at_cms.t
    turn = [
        c for c in trace.connections.values() if c.client == "cms" and c.server_addr.port == 3478
    ]
    assert turn and min(c.opened for c in turn) >= share_at_cms.t
    # Both dialogs end: the share's BYE first, then the client leaves the meeting.
    byes = [m for m in trace.messages if m.summary == "BYE" and m.src == "skype_client"]
    assert [m.sip_facts.call_id for m in byes if m.sip_facts is not None] == [
        share.sip_facts.call_id if share.sip_facts else "",
        av_ok.sip_facts.call_id if av_ok.sip_facts else "",
    ]
    answered = [m for m in av_sip(trace) if m.summary == "200 OK" and m.dst == "skype_client"]
    assert len(answered) == 2  # to the INVITE and to the BYE


def test_the_key_turns_it_off_and_leaves_the_sharing_call_as_it_was(lab: RunResult) -> None:
    off = run_scenario(variant("call: {av_call: false}"), "virtual")
    assert off.passed and off.diagnosis.verdict == "healthy"
    assert av_call_ids(off.trace) == set() and len(initial_invites(off)) == 1
    # Every message of the call without it is the call with it, less the audio/video dialog,
    # in the same order.
    av = av_call_ids(lab.trace)
    with_av = [
        (m.src, m.dst, m.summary) for m in lab.trace.messages
        if m.sip_facts is None or m.sip_facts.call_id not in av
    ]  # fmt: skip
    assert [(m.src, m.dst, m.summary) for m in off.trace.messages] == with_av
    # The client's sharing INVITE is the same bytes either way (the A/V call draws its random
    # values from a generator of its own); only the time it leaves moves.
    assert initial_invites(off)[0].data == initial_invites(lab)[1].data


@pytest.mark.parametrize("path", LIBRARY, ids=[p.stem for p in LIBRARY])
def test_every_library_verdict_is_the_same_with_the_av_call_and_without(path: Path) -> None:
    sc = load(path)
    on = run_scenario(sc, "virtual")
    assert on.passed, on.failures
    off = run_scenario(
        sc.model_copy(update={"call": dataclasses.replace(sc.call, av_call=False)}), "virtual"
    )
    assert (off.outcome.name, off.diagnosis.verdict) == (on.outcome.name, on.diagnosis.verdict)
    assert on.diagnosis.step == off.diagnosis.step


# -- the expanded ladder ---------------------------------------------------------------------------


def test_the_expanded_ladder_shows_the_relayed_address_and_the_relay_candidate_whole(
    lab: RunResult,
) -> None:
    trace = lab.trace
    allocated = next(m for m in trace.find("Allocate Success Response") if m.dst == "cms")
    assert allocated.stun_facts is not None and allocated.stun_facts.relayed is not None
    relayed = allocated.stun_facts.relayed
    ok = next(
        m for m in share_sip(trace)
        if m.summary == "200 OK" and m.src == "cms" and m.sip_facts is not None
        and m.sip_facts.media == ("applicationsharing",)
    )  # fmt: skip
    (candidate,) = [
        line for line in sip.parse_message(ok.data).body.decode().splitlines()
        if line.startswith("a=candidate:") and "typ relay" in line
    ]  # fmt: skip
    attempt = next(m for m in trace.find("ConnectionAttempt Indication") if m.dst == "cms")
    assert attempt.stun_facts is not None and attempt.stun_facts.connection_id is not None
    av_id, share_id = (m.sip_facts.call_id for m in initial_invites(lab) if m.sip_facts)
    for width in (80, 120):
        short = render_ladder(trace, list(ACTORS), width=width)
        assert f"XOR-RELAYED-ADDRESS: {relayed}" not in short  # cut at this width …
        assert "… = cut to fit" in " ".join(short.splitlines()[-2:])  # … and said so
        full = render_ladder(trace, list(ACTORS), width=width, full=True)
        assert f"XOR-RELAYED-ADDRESS: {relayed}" in full
        assert candidate in full  # a=candidate:3 1 TCP-PASS … typ relay raddr … rport …
        assert f"CONNECTION-ID: 0x{attempt.stun_facts.connection_id:08x}" in full
        assert f"Call-ID: {av_id}" in full and f"Call-ID: {share_id}" in full
        assert "m=audio" in full and "m=applicationsharing" in full
        assert "…" not in "".join(line for line in full.splitlines() if line[:10].strip() == "")


def test_labsim_run_full_prints_the_expanded_ladder() -> None:
    ran = CliRunner().invoke(
        main, ["run", "--clock", "virtual", "--full", "--no-logs", "--width", "100"]
    )
    assert ran.exit_code == 0, ran.output
    assert "XOR-RELAYED-ADDRESS: 10.48.54.229:24000" in ran.output
    assert "typ relay raddr 10.48.54.230" in ran.output
    plain = CliRunner().invoke(main, ["run", "--clock", "virtual", "--no-logs", "--width", "100"])
    assert "XOR-RELAYED-ADDRESS: 10.48.54.229:24000" not in plain.output
    assert "labsim run --full" in plain.output


@pytest.mark.parametrize("width", [20, 30, 50, 120])
def test_no_cut_is_silent(lab: RunResult, width: int) -> None:
    """Every row shows its label whole, or cut with the ellipsis, at any width; the last line
    then says so (piped output is 120 wide)."""
    for ascii in (False, True):
        ladder = _Ladder(lab.trace, list(ACTORS), width=width, ascii=ascii)
        rows = ladder.rows()
        mark = ladder.g.ellipsis
        assert max(len(row.text()) for row in rows) <= width
        for row, item in zip(rows[2:], ladder.items, strict=False):
            text = row.text()
            assert item.label in text or (row.cut and mark[:1] in text), (width, text)
        assert any(row.cut for row in rows)
        assert "labsim run --full" in " ".join(row.text() for row in rows[-3:])


# -- the two machines, sans-IO ---------------------------------------------------------------------


def client_joining() -> tuple[SkypeClient, Clock, Request]:
    client = SkypeClient(Lab())
    clock = Clock(client)
    clock.handle(Started())
    clock.handle(
        Connected("sip:1", Address("192.168.1.100", 40000), Address("192.168.1.252", 5060))
    )
    clock.timers.pop(UaTimer.CALL)
    effects = clock.handle(TimerFired(UaTimer.CALL))
    (invite,) = sent_sip(effects)
    assert isinstance(invite, Request) and avcall.is_av_offer(invite.body)
    assert client.av is not None and client.av.state is UaState.CALLING
    assert client.state is UaState.IDLE  # the sharing dialog has not begun
    return client, clock, invite


def test_no_answer_to_the_av_invite_means_no_share() -> None:
    client, clock, _ = client_joining()
    name, effects = clock.fire()
    assert (name, clock.now) == (UaTimer.AV_TIMER_B, 32.0)
    assert client.av is not None and client.av.state is UaState.TERMINATED
    assert sent_sip(effects) == [] and client.state is UaState.IDLE
    assert "not in the meeting, so no sharing" in logs(effects)
    assert UaTimer.FINISH in clock.timers and UaTimer.SHARE not in clock.timers


def test_the_share_goes_share_after_the_av_ack_in_a_new_dialog() -> None:
    client, clock, invite = client_joining()
    ok = sip.build_response(
        invite, 200, to_tag="cmsav", contact="<sip:meeting@10.48.54.230:5060;transport=tcp>",
        record_route=["<sip:192.168.1.252:5060;transport=tcp;lr>"],
        content_type="application/sdp",
        body=avcall.build(avcall.AvSide("10.48.54.230", avcall.CMS_PORTS, "u", "p" * 22,
                                        bytes(30)), answer=True),
    )  # fmt: skip
    effects = clock.handle(Received("sip:1", sip.encode(ok)))
    assert summaries(effects) == ["ACK"]
    assert clock.timers[UaTimer.SHARE] == pytest.approx(0.5)
    name, effects = clock.fire(UaTimer.SHARE)
    (share,) = sent_sip(effects)
    assert isinstance(share, Request) and share.method == "INVITE" and sip.to_tag(share) is None
    assert sip.call_id(share) != sip.call_id(invite) and sip.from_tag(share) != sip.from_tag(invite)
    assert client.state is UaState.CALLING
    # The A/V 200 again (its ACK lost on the way): ACKed again, nothing else moves.
    assert summaries(clock.handle(Received("sip:1", sip.encode(ok)))) == ["ACK"]


def cms_with_av_call() -> tuple[Cms, Clock, Response]:
    cms = Cms(Lab())
    clock = Clock(cms)
    clock.handle(Started())
    clock.handle(Accepted("in:1", Address("10.48.54.230", 5060), Address("10.48.54.228", 40001)))
    _, _, invite = client_joining()
    sip.add_record_route(invite, "<sip:10.48.54.228:5060;transport=tcp;lr>")
    effects = clock.handle(Received("in:1", sip.encode(invite)))
    assert summaries(effects) == ["100 Trying", "200 OK"]
    assert not any(isinstance(e, Connect) for e in effects)  # no TURN for audio and video
    assert "allocates its relay for the share only" in logs(effects)
    assert cms.av is not None and cms.av.state is UaState.ACCEPTED
    assert cms.state is UaState.IDLE  # the sharing dialog is another one
    ok = sent_sip(effects)[1]
    assert isinstance(ok, Response) and avcall.media_kinds(ok.body) == ("audio", "video")
    return cms, clock, ok


def test_cms_resends_its_av_200_then_ends_the_av_call_after_64_t1() -> None:
    cms, clock, _ = cms_with_av_call()
    resent = 0
    while True:
        name, effects = clock.fire()
        if name is UaTimer.AV_ACK_WAIT:
            break
        assert name is UaTimer.AV_RETRANSMIT_2XX and summaries(effects) == ["200 OK"]
        resent += 1
    assert resent == 10 and clock.now == 32.0
    (bye,) = sent_sip(effects)
    assert isinstance(bye, Request) and bye.method == "BYE"
    assert sip.reason_text(bye).startswith("SIP ;cause=408 ;")
    assert cms.av is not None and cms.av.state is UaState.TERMINATING


def test_a_second_av_call_is_busy() -> None:
    cms, clock, _ = cms_with_av_call()
    _, _, other = client_joining()
    raw = sip.encode(other).replace(sip.call_id(other).encode(), b"another-call@192.168.1.100")
    effects = clock.handle(Received("in:1", raw))
    assert summaries(effects) == ["486 Busy Here"]
    assert cms.av is not None and [e for _, e, _ in cms.av.machine.history] == [
        UaEvent.RECV_INVITE, UaEvent.SEND_2XX,
    ]  # fmt: skip


def test_without_the_key_cms_takes_an_av_offer_as_before() -> None:
    """Without the audio/video call (call.av_call: false) CMS reads every INVITE as a share,
    as it always did: an offer without m=applicationsharing is not acceptable (488)."""
    from .labs import share_lab

    cms = Cms(share_lab())
    clock = Clock(cms)
    clock.handle(Started())
    clock.handle(Accepted("in:1", Address("10.48.54.230", 5060), Address("10.48.54.228", 40001)))
    _, _, invite = client_joining()
    effects = clock.handle(Received("in:1", sip.encode(invite)))
    assert summaries(effects) == ["100 Trying", "488 Not Acceptable Here"]
