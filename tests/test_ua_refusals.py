"""The user agents refusing and being refused (RFC 3261 §13.2.2.3, §14.1, §14.2, §12.2.1.2,
§21): CMS answers the sharing INVITE with a chosen error (``cms.refuse_invite``), either end
answers the other's reINVITE with one (``refuse_reinvite``), and the other end reacts: ACK and
no dialog after a refused INVITE; after a refused reINVITE the session stays as it was and the
lab's UAs end the dialog with BYE whose Reason (RFC 3326) carries the status; 481 ends the
dialog without BYE, 408 with one; 491 is glare and the retry goes through. Sans-IO cases drive
one actor; whole calls run on both clocks."""

from __future__ import annotations

import pytest
from sipmessage import Request, Response

from labsim.actors.cms import Cms
from labsim.actors.common import UaTimer
from labsim.actors.lab import CmsSettings, Lab, SipRefusal, SkypeClientSettings
from labsim.actors.skype_client import SkypeClient
from labsim.proto.events import (
    Accepted,
    Address,
    Connect,
    Connected,
    Effect,
    Received,
    Started,
    StartTimer,
    TimerFired,
)
from labsim.proto.settings import SettingError
from labsim.proto.sip_ua_state import UaEvent, UaState
from labsim.run import Clock as RunClock
from labsim.run import RunResult
from labsim.scenario import ScenarioError, load, loads
from labsim.trace import Trace
from labsim.wire import sip

from .labs import av_sip, run_variant, share_lab, share_sip, variant
from .test_call_robustness import sent_sip
from .test_ua_transactions import (
    Clock,
    ack_of,
    client_calling,
    in_dialog_request,
    logs,
    routed_invite,
    summaries,
)

CLOCKS: list[RunClock] = ["virtual", "live"]


# -- the settings ---------------------------------------------------------------------------------


def test_a_refusal_takes_rfc_3261_s_reason_phrase_unless_told_another() -> None:
    assert SipRefusal(488).phrase == "Not Acceptable Here"
    assert SipRefusal(603).phrase == "Decline"
    assert SipRefusal(499, reason="Meeting Locked").phrase == "Meeting Locked"
    with pytest.raises(SettingError, match="defines no reason phrase for 499"):
        SipRefusal(499)
    with pytest.raises(SettingError, match="one-line ASCII"):
        SipRefusal(488, reason="Not\r\nAcceptable")
    assert [SipRefusal(491, nth=2).applies(n) for n in (1, 2, 3)] == [False, True, False]
    assert all(SipRefusal(500).applies(n) for n in (1, 2, 3))


def test_a_scenario_reports_a_bad_refusal_at_its_line() -> None:
    with pytest.raises(ScenarioError, match=r"t\.yaml:3:.*(400|699)"):
        loads("actors:\n  cms:\n    refuse_invite: {status: 302}\n", source="t.yaml")
    with pytest.raises(ScenarioError, match=r"t\.yaml:3:.*no reason phrase for 499"):
        loads("actors:\n  skype_client:\n    refuse_reinvite: {status: 499}\n", source="t.yaml")


# -- CMS refuses the sharing INVITE ---------------------------------------------------------------


def cms_refusing(refusal: SipRefusal) -> tuple[Cms, Clock]:
    cms = Cms(Lab(cms=CmsSettings(refuse_invite=refusal)))
    clock = Clock(cms)
    clock.handle(Started())
    clock.handle(Accepted("in:1", Address("10.48.54.230", 5060), Address("10.48.54.228", 40001)))
    return cms, clock


@pytest.mark.parametrize("status", [403, 486, 488, 500, 503, 603, 480, 606])
def test_cms_refuses_the_invite_with_the_status_it_is_told_and_asks_for_no_relay(
    status: int,
) -> None:
    cms, clock = cms_refusing(SipRefusal(status))
    effects = clock.handle(Received("in:1", sip.encode(routed_invite())))
    answers = sent_sip(effects)
    assert summaries(effects) == ["100 Trying", f"{status} {sip.DEFAULT_REASONS[status]}"]
    no = answers[1]
    assert isinstance(no, Response) and sip.to_tag(no) == cms.tag  # §8.2.6.2
    assert no.headers.get("Retry-After") is None
    assert not any(isinstance(e, Connect) for e in effects)  # no TURN: nothing to offer
    # No dialog was made (§13.3.1): CMS is back in IDLE and finishes.
    assert cms.state is UaState.IDLE and cms.dialog is None
    assert [e for _, e, _ in cms.machine.history] == [UaEvent.RECV_INVITE, UaEvent.SEND_ERROR]
    assert UaTimer.FINISH in clock.timers
    # The caller's hop-by-hop ACK ends the server transaction quietly (§17.2.1) ...
    ack = sip.build_failure_ack(routed_invite(), no)
    assert clock.handle(Received("in:1", sip.encode(ack))) == []
    # ... and the same INVITE again gets the same answer again.
    again = clock.handle(Received("in:1", sip.encode(routed_invite())))
    assert summaries(again) == [sip.summary(no)] and cms.state is UaState.IDLE


def test_a_503_says_when_to_try_again() -> None:
    _, clock = cms_refusing(SipRefusal(503, retry_after=5))
    effects = clock.handle(Received("in:1", sip.encode(routed_invite())))
    no = sent_sip(effects)[-1]
    assert sip.summary(no) == "503 Service Unavailable"
    assert no.headers.get("Retry-After") == "5"  # §20.33


def test_cms_refuses_only_the_nth_invite_and_takes_the_next_call() -> None:
    cms, clock = cms_refusing(SipRefusal(503, retry_after=1, nth=1))
    clock.handle(Received("in:1", sip.encode(routed_invite())))
    assert cms.state is UaState.IDLE
    # The caller's new attempt: same Call-ID and tags, next CSeq, a new branch.
    first = sip.encode(routed_invite())
    second = first.replace(b"CSeq: 1 INVITE", b"CSeq: 2 INVITE").replace(b"test1", b"test2")
    assert second.count(b"2 INVITE") == 1 and second != first
    effects = clock.handle(Received("in:1", second))
    assert summaries(effects) == ["100 Trying"]
    assert cms.state is UaState.PROCEEDING and not cms.finished
    assert any(isinstance(e, Connect) for e in effects)  # the TURN allocation begins
    assert UaTimer.FINISH not in clock.timers


@pytest.mark.parametrize("status", [488, 503, 603])
def test_the_client_acks_a_refused_invite_and_the_call_is_over_without_bye(status: int) -> None:
    client, clock, request = client_calling()
    extra = [("Retry-After", "5")] if status == 503 else []
    no = sip.build_response(request, status, to_tag="cmstag", extra_headers=extra)
    effects = clock.handle(Received("sip:1", sip.encode(no)))
    (ack,) = sent_sip(effects)
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert sip.via_branch(sip.top_via(ack)) == sip.via_branch(sip.top_via(request))  # §17.1.1.3
    assert client.state is UaState.TERMINATED and client.dialog is None
    assert f"sharing refused: {sip.summary(no)}" in logs(effects)
    assert UaTimer.FINISH in clock.timers and UaTimer.TIMER_B not in clock.timers


# -- a refused reINVITE, at the end that sent it ------------------------------------------------


def cms_reinviting() -> tuple[Cms, Clock, Response, Request]:
    """CMS's dialog is confirmed and its reINVITE is out."""
    from .test_ua_transactions import cms_answering

    cms, clock, ok = cms_answering()
    clock.handle(Received("in:1", sip.encode(ack_of(ok))))
    (reinvite,) = sent_sip(clock.feed(cms.send_reoffer()))
    assert isinstance(reinvite, Request) and cms.state is UaState.REINVITING
    return cms, clock, ok, reinvite


def bye_reason(effects: list[Effect]) -> str:
    (bye,) = [m for m in sent_sip(effects) if isinstance(m, Request) and m.method == "BYE"]
    return sip.reason_text(bye)


@pytest.mark.parametrize("status", [403, 486, 488, 500, 503, 603, 415])
def test_a_refused_reinvite_keeps_the_session_then_bye_says_the_status(status: int) -> None:
    cms, clock, _, reinvite = cms_reinviting()
    no = sip.build_response(reinvite, status)
    effects = clock.handle(Received("in:1", sip.encode(no)))
    ack, bye = sent_sip(effects)
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert sip.via_branch(sip.top_via(ack)) == sip.via_branch(sip.top_via(reinvite))
    # §14.1: the session is as it was (CONFIRMED, not shared); the lab's UA then hangs up.
    assert [e for _, e, _ in cms.machine.history][-2:] == [UaEvent.RECV_ERROR, UaEvent.SEND_BYE]
    assert isinstance(bye, Request) and bye.method == "BYE"
    assert sip.reason_text(bye).startswith(f"SIP ;cause={status} ;text=")  # RFC 3326
    assert cms.state is UaState.TERMINATING and not cms.shared


def test_a_481_to_the_reinvite_ends_the_dialog_without_bye() -> None:
    cms, clock, _, reinvite = cms_reinviting()
    effects = clock.handle(Received("in:1", sip.encode(sip.build_response(reinvite, 481))))
    assert summaries(effects) == ["ACK"]  # §12.2.1.2: the peer has no dialog to end
    assert cms.state is UaState.TERMINATED
    assert "the peer has no such dialog" in logs(effects)
    assert set(clock.timers) <= {UaTimer.FINISH}


def test_a_408_to_the_reinvite_ends_the_dialog_with_bye_as_timer_b_does() -> None:
    cms, clock, _, reinvite = cms_reinviting()
    effects = clock.handle(Received("in:1", sip.encode(sip.build_response(reinvite, 408))))
    assert summaries(effects) == ["ACK", "BYE"]
    assert cms.machine.history[-1] == (UaState.REINVITING, UaEvent.RECV_408, UaState.TERMINATING)
    assert bye_reason(effects).startswith("SIP ;cause=408 ;")
    assert "§14.1, the UAC terminates the dialog" in logs(effects)


def test_a_repeated_refusal_is_acked_again_and_moves_nothing() -> None:
    cms, clock, _, reinvite = cms_reinviting()
    no = sip.build_response(reinvite, 488)
    clock.handle(Received("in:1", sip.encode(no)))
    state = cms.state
    again = clock.handle(Received("in:1", sip.encode(no)))
    assert summaries(again) == ["ACK"] and cms.state is state


# -- a refused reINVITE, at the end that refuses it -----------------------------------------------


def cms_confirmed(refusal: SipRefusal) -> tuple[Cms, Clock, Response]:
    from .test_ua_transactions import Clock as UaClock

    cms = Cms(Lab(cms=CmsSettings(refuse_reinvite=refusal)))
    clock = UaClock(cms)
    clock.handle(Started())
    clock.handle(Accepted("in:1", Address("10.48.54.230", 5060), Address("10.48.54.228", 40001)))
    clock.handle(Received("in:1", sip.encode(routed_invite())))
    (ok,) = sent_sip(clock.feed(cms._answer(clock.now)))
    assert isinstance(ok, Response)
    clock.handle(Received("in:1", sip.encode(ack_of(ok))))
    assert cms.state is UaState.CONFIRMED
    return cms, clock, ok


def test_the_refusing_end_keeps_the_dialog_and_answers_the_next_reinvite_200() -> None:
    cms, clock, ok = cms_confirmed(SipRefusal(491, nth=1))
    effects = clock.handle(Received("in:1", sip.encode(in_dialog_request(ok, "INVITE", 2))))
    assert summaries(effects) == ["491 Request Pending"] and cms.state is UaState.CONFIRMED
    assert "refusing the reINVITE: 491 Request Pending" in logs(effects)
    effects = clock.handle(Received("in:1", sip.encode(in_dialog_request(ok, "INVITE", 3))))
    assert summaries(effects) == ["200 OK"] and cms.state is UaState.REINVITE_ACCEPTED


def test_refuse_reinvite_with_retry_after_and_its_own_phrase() -> None:
    cms, clock, ok = cms_confirmed(SipRefusal(503, reason="Content Busy", retry_after=3))
    effects = clock.handle(Received("in:1", sip.encode(in_dialog_request(ok, "INVITE", 2))))
    (no,) = sent_sip(effects)
    assert sip.summary(no) == "503 Content Busy" and no.headers.get("Retry-After") == "3"
    # Every reINVITE (no nth): the next one too.
    effects = clock.handle(Received("in:1", sip.encode(in_dialog_request(ok, "INVITE", 3))))
    assert summaries(effects) == ["503 Content Busy"]


def test_answering_481_drops_the_dialog_at_the_refusing_end() -> None:
    cms, clock, ok = cms_confirmed(SipRefusal(481))
    effects = clock.handle(Received("in:1", sip.encode(in_dialog_request(ok, "INVITE", 2))))
    assert summaries(effects)[0] == "481 Call/Transaction Does Not Exist"
    assert cms.machine.history[-1] == (
        UaState.REINVITE_RECEIVED, UaEvent.SEND_481, UaState.TERMINATED
    )  # fmt: skip


def test_the_meeting_policy_answers_what_refuse_reinvite_leaves() -> None:
    settings = SkypeClientSettings(cms_role="attendee", refuse_reinvite=SipRefusal(491, nth=1))
    client = SkypeClient(Lab(skype_client=settings))
    client._reinvites_taken = 1
    refusal = client.reinvite_refusal()
    assert refusal is not None and (refusal.code, refusal.diagnostics) == (491, None)
    client._reinvites_taken = 2
    refusal = client.reinvite_refusal()
    assert refusal is not None and refusal.code == 403 and refusal.diagnostics is not None
    assert refusal.diagnostics.code == 21002


# -- whole calls, both clocks ----------------------------------------------------------------------


def sip_sent(trace: Trace, src: str, summary: str) -> list[sip.SipMessage]:
    """The sharing dialog's SIP messages (not the audio/video call's) ``src`` sent."""
    return [
        sip.parse_message(m.data) for m in share_sip(trace)
        if m.src == src and m.summary == summary
    ]  # fmt: skip


def run_library(name: str, clock: RunClock, outcome: str) -> RunResult:
    """Run a library scenario; it must meet its own expectations and end with ``outcome``."""
    from labsim.run import run_scenario
    from labsim.scenario import library_dir

    result = run_scenario(load(library_dir() / f"{name}.yaml"), clock)
    assert result.passed, result.failures
    assert result.outcome.name == outcome and result.ended == "finished"
    return result


@pytest.mark.parametrize("clock", CLOCKS)
@pytest.mark.parametrize(
    ("name", "status"),
    [("invite-refused-488", 488), ("invite-refused-503", 503)],
)
def test_a_refused_invite_ends_the_call_with_no_dialog(
    name: str, status: int, clock: RunClock
) -> None:
    result = run_library(name, clock, "call-rejected")
    (no,) = sip_sent(result.trace, "cms", f"{status} {sip.DEFAULT_REASONS[status]}")
    if status == 503:
        assert no.headers.get("Retry-After") == "5"
    assert not sip_sent(result.trace, "skype_client", "BYE")
    assert not sip_sent(result.trace, "cms", "BYE")
    assert len(sip_sent(result.trace, "skype_client", "INVITE")) == 1  # no retry by default
    # The client leaves the meeting: its audio/video call ends with its BYE, answered.
    av = [(m.src, m.summary) for m in av_sip(result.trace) if m.dst == "skype_client"
          or m.src == "skype_client"]  # fmt: skip
    assert av[-2:] == [("skype_client", "BYE"), ("skype_edge", "200 OK")]


@pytest.mark.parametrize("clock", CLOCKS)
@pytest.mark.parametrize(
    ("name", "status"),
    [("reinvite-refused-488", 488), ("reinvite-refused-500", 500)],
)
def test_a_refused_reinvite_is_followed_by_bye_with_its_status(
    name: str, status: int, clock: RunClock
) -> None:
    result = run_library(name, clock, "call-rejected")
    (bye,) = sip_sent(result.trace, "cms", "BYE")
    assert sip.reason_text(bye).startswith(f"SIP ;cause={status} ;")


@pytest.mark.parametrize("clock", CLOCKS)
def test_491_once_the_retry_after_the_random_wait_sets_sharing_up(clock: RunClock) -> None:
    result = run_library("reinvite-491-once", clock, "sharing-established")
    trace = result.trace
    first, retry = sip_sent(trace, "cms", "INVITE")
    assert sip.cseq(retry).sequence > sip.cseq(first).sequence
    assert len(sip_sent(trace, "skype_client", "491 Request Pending")) == 1
    assert any("trying again in" in log.text for log in trace.logs if log.actor == "cms")


@pytest.mark.parametrize("clock", CLOCKS)
def test_cms_refusing_the_clients_reinvite_gets_the_clients_bye(clock: RunClock) -> None:
    result = run_variant(
        "call: {reinvite_from: skype_client, hold: 1}\n"
        "actors: {cms: {refuse_reinvite: {status: 603}}}",
        "call-rejected",
        clock,
    )
    (no,) = sip_sent(result.trace, "cms", "603 Decline")
    assert isinstance(no, Response)
    (bye,) = sip_sent(result.trace, "skype_client", "BYE")
    assert sip.reason_text(bye).startswith("SIP ;cause=603 ;")


@pytest.mark.parametrize("clock", CLOCKS)
def test_a_481_to_the_reinvite_ends_both_ends_without_bye(clock: RunClock) -> None:
    result = run_variant(
        "actors: {skype_client: {refuse_reinvite: {status: 481}}}", "call-rejected", clock
    )
    assert result.ended == "finished"
    assert not sip_sent(result.trace, "cms", "BYE")
    assert not sip_sent(result.trace, "skype_client", "BYE")


def test_the_scenario_knobs_reach_the_actors() -> None:
    sc = variant("actors: {cms: {refuse_invite: {status: 486}}}")
    assert sc.actors.cms.refuse_invite == SipRefusal(486)


# -- 503 with Retry-After: one more try (skype_client.retry_after_503) ----------------------------


def client_retrying() -> tuple[SkypeClient, Clock, Request]:
    """A client with retry_after_503 that has sent its sharing INVITE."""
    client = SkypeClient(share_lab(skype_client=SkypeClientSettings(retry_after_503=True)))
    clock = Clock(client)
    clock.handle(Started())
    edge = Address("192.168.1.252", 5060)
    clock.handle(Connected("sip:1", Address("192.168.1.100", 40000), edge))
    clock.timers.pop(UaTimer.CALL)
    (first,) = sent_sip(clock.handle(TimerFired(UaTimer.CALL)))
    assert isinstance(first, Request)
    return client, clock, first


def test_the_client_retries_once_after_a_503s_retry_after() -> None:
    client, clock, first = client_retrying()
    busy = sip.build_response(
        first, 503, to_tag="x", extra_headers=[("Retry-After", "5 (maintenance)")]
    )
    effects = clock.handle(Received("sip:1", sip.encode(busy)))
    assert summaries(effects) == ["ACK"] and client.state is UaState.RETRY_WAIT
    assert StartTimer(UaTimer.RETRY_AFTER, 5) in effects
    assert "trying once more in 5 s (Retry-After, RFC 3261 §21.5.4)" in logs(effects)
    name, effects = clock.fire()
    assert (name, clock.now) == (UaTimer.RETRY_AFTER, 5.0)
    (retry,) = sent_sip(effects)
    assert isinstance(retry, Request) and retry.method == "INVITE"
    assert sip.call_id(retry) == sip.call_id(first) and sip.from_tag(retry) == client.tag
    assert sip.cseq(retry).sequence == 2 and sip.to_tag(retry) is None
    assert sip.via_branch(sip.top_via(retry)) != sip.via_branch(sip.top_via(first))
    assert client.state is UaState.CALLING and UaTimer.TIMER_B in clock.timers
    # Once only: a second 503 ends the attempt.
    busy = sip.build_response(retry, 503, to_tag="y", extra_headers=[("Retry-After", "5")])
    effects = clock.handle(Received("sip:1", sip.encode(busy)))
    assert summaries(effects) == ["ACK"] and client.state is UaState.TERMINATED


def test_a_503_without_retry_after_is_not_retried() -> None:
    client, clock, first = client_retrying()
    effects = clock.handle(Received("sip:1", sip.encode(sip.build_response(first, 503))))
    assert summaries(effects) == ["ACK"] and client.state is UaState.TERMINATED


@pytest.mark.parametrize("clock", CLOCKS)
def test_the_retry_after_a_503_reaches_cms_and_the_sharing_is_set_up(clock: RunClock) -> None:
    from labsim.run import run_scenario

    sc = variant(
        "actors:\n"
        "  cms: {refuse_invite: {status: 503, retry_after: 1, nth: 1}}\n"
        "  skype_client: {retry_after_503: true}\n",
        hold=1.0,
    )
    result = run_scenario(sc, clock)
    trace = result.trace
    assert result.ended == "finished"
    first, retry = sip_sent(trace, "skype_client", "INVITE")[:2]
    assert (sip.cseq(first).sequence, sip.cseq(retry).sequence) == (1, 2)
    assert len(sip_sent(trace, "cms", "503 Service Unavailable")) == 1
    established = {log.actor for log in trace.logs if log.text.startswith("sharing established")}
    assert established == {"skype_client", "cms"}
