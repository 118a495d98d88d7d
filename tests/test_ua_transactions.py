"""RFC 3261 transactions of the two user agents, in virtual time: the 2xx resent at T1 doubling
up to T2 until its ACK and BYE after 64·T1 (§13.3.1.4), the reINVITE held until that ACK
(§14.1), Timer B on the INVITE and the reINVITE, Timer F on the BYE, 491 glare on both sides
(§14.1, §14.2). Sans-IO cases drive one actor with a small clock of its own; whole-call cases
run the five actors on the virtual runtime."""

from __future__ import annotations

from pathlib import Path

import pytest
from sipmessage import Request, Response, Via

from labsim.actors.cms import Cms
from labsim.actors.common import UaTimer
from labsim.actors.lab import Lab, SkypeClientSettings
from labsim.actors.skype_client import SkypeClient
from labsim.net.virtual import VirtualNetwork
from labsim.proto.events import (
    Accepted,
    Address,
    Connected,
    Effect,
    Event,
    Log,
    Received,
    Started,
    StartTimer,
    StopTimer,
    TimerFired,
)
from labsim.proto.sip_ua_state import SipTimers, UaEvent, UaState
from labsim.run import Cast, blocked_pairs, build, fault_plan, run_scenario
from labsim.scenario import Scenario, library_dir, load, loads
from labsim.trace import MessageRecord, Trace
from labsim.wire import sip

from .labs import av_sip, share_lab, share_sip
from .test_call_robustness import invite, sent_sip

LAB = Path(__file__).parent.parent / "scenarios" / "sharing-call.yaml"
T1_SCHEDULE = [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]


class Clock:
    """One actor on a clock of its own: it keeps the UA timers the actor starts and fires the
    earliest when asked (TURN timers are left alone)."""

    def __init__(self, actor: Cms | SkypeClient) -> None:
        self.actor = actor
        self.now = 0.0
        self.timers: dict[UaTimer, float] = {}

    def feed(self, effects: list[Effect]) -> list[Effect]:
        for effect in effects:
            if isinstance(effect, StartTimer) and isinstance(effect.timer, UaTimer):
                self.timers[effect.timer] = self.now + effect.delay
            elif isinstance(effect, StopTimer) and isinstance(effect.timer, UaTimer):
                self.timers.pop(effect.timer, None)
        return effects

    def handle(self, event: Event) -> list[Effect]:
        return self.feed(self.actor.handle(event, self.now))

    def fire(self, only: UaTimer | None = None) -> tuple[UaTimer, list[Effect]]:
        """Advance to the earliest running timer (or ``only``) and fire it."""
        name = only or min(self.timers, key=lambda n: self.timers[n])
        self.now = self.timers.pop(name)
        return name, self.handle(TimerFired(name))


def logs(effects: list[Effect]) -> str:
    return "\n".join(e.text for e in effects if isinstance(e, Log))


def summaries(effects: list[Effect]) -> list[str]:
    return [sip.summary(m) for m in sent_sip(effects)]


# -- CMS as the UAS of the INVITE -----------------------------------------------------------------


def routed_invite() -> Request:
    """The sharing INVITE as Expressway-C hands it to CMS: recorded in the route, so CMS's
    requests in the dialog go back over the connection it came in on."""
    request = invite()
    sip.add_record_route(request, "<sip:10.48.54.228:5060;transport=tcp;lr>")
    return request


def cms_answering() -> tuple[Cms, Clock, Response]:
    """CMS took the INVITE and sent its 200 OK at t=0 (the relay step skipped: its answer is
    given as if the allocation had failed)."""
    cms = Cms(Lab())
    clock = Clock(cms)
    clock.handle(Started())
    clock.handle(Accepted("in:1", Address("10.48.54.230", 5060), Address("10.48.54.228", 40001)))
    answers = summaries(clock.handle(Received("in:1", sip.encode(routed_invite()))))
    assert answers == ["100 Trying"] and cms.state is UaState.PROCEEDING
    effects = clock.feed(cms._answer(clock.now))
    (ok,) = sent_sip(effects)
    assert isinstance(ok, Response) and ok.code == 200
    assert cms.state is UaState.ACCEPTED
    return cms, clock, ok


def ack_of(ok: Response) -> Request:
    return sip.build_request(
        "ACK", "sip:meeting@10.48.54.230:5060;transport=tcp",
        via=Via.parse("SIP/2.0/TCP 10.48.54.228:5060;branch=z9hG4bKack1"),
        from_addr=sip.from_address(ok), to_addr=sip.to_address(ok), call_id=sip.call_id(ok),
        cseq=1,
    )  # fmt: skip


def in_dialog_request(ok: Response, method: str, cseq: int) -> Request:
    """A request of the Skype side in CMS's dialog (after ``ok``)."""
    return sip.build_request(
        method, "sip:meeting@10.48.54.230:5060;transport=tcp",
        via=Via.parse(f"SIP/2.0/TCP 10.48.54.228:5060;branch=z9hG4bK{method.lower()}{cseq}"),
        from_addr=sip.from_address(ok), to_addr=sip.to_address(ok), call_id=sip.call_id(ok),
        cseq=cseq, contact="<sip:alice@192.168.1.100:5060;transport=tcp>",
    )  # fmt: skip


def test_cms_resends_its_200_at_t1_doubling_to_t2_then_ends_with_bye_after_64_t1() -> None:
    cms, clock, ok = cms_answering()
    sent: list[float] = []
    while True:
        name, effects = clock.fire()
        if name == UaTimer.ACK_WAIT:
            break
        assert name == UaTimer.RETRANSMIT_2XX
        assert [m.code for m in sent_sip(effects) if isinstance(m, Response)] == [200]
        assert "no ACK yet: 200 OK sent again (RFC 3261 §13.3.1.4)" in logs(effects)
        sent.append(clock.now)
    assert sent == T1_SCHEDULE
    assert clock.now == 32.0
    (bye,) = sent_sip(effects)
    assert isinstance(bye, Request) and bye.method == "BYE"
    assert sip.call_id(bye) == "call-1" and sip.to_tag(bye) == "abc"  # to the caller
    assert (
        "no ACK for the 200 OK to the INVITE after 32 s (64·T1, RFC 3261 §13.3.1.4): "
        "ending the dialog with BYE"
    ) in logs(effects)
    assert cms.state is UaState.TERMINATING
    assert set(clock.timers) == {UaTimer.TIMER_F}  # the retransmissions stopped with the BYE


def test_the_ack_stops_the_retransmissions_and_lets_the_held_reinvite_go() -> None:
    cms, clock, ok = cms_answering()
    name, _ = clock.fire()
    assert (name, clock.now) == (UaTimer.RETRANSMIT_2XX, 0.5)
    # The checks complete before the ACK: §14.1, the reINVITE waits.
    held = clock.feed(cms.send_reoffer())
    assert sent_sip(held) == []
    assert "reINVITE held: our 200 OK is not acknowledged yet" in logs(held)
    # §15: no BYE either before the ACK.
    refused = clock.feed(cms.hang_up("testing", clock.now))
    assert sent_sip(refused) == [] and "no BYE in state ACCEPTED" in logs(refused)
    clock.now = 0.7
    effects = clock.handle(Received("in:1", sip.encode(ack_of(ok))))
    assert StopTimer(UaTimer.RETRANSMIT_2XX) in effects and StopTimer(UaTimer.ACK_WAIT) in effects
    assert summaries(effects) == ["INVITE"]  # the held reINVITE, now
    assert cms.state is UaState.REINVITING
    assert set(clock.timers) == {UaTimer.TIMER_B}
    # A repeated ACK acknowledges nothing pending any more: absorbed, logged, no state change.
    again = clock.handle(Received("in:1", sip.encode(ack_of(ok))))
    assert sent_sip(again) == [] and "acknowledges nothing pending" in logs(again)
    assert cms.state is UaState.REINVITING


def test_a_bye_before_the_ack_ends_the_call_and_the_retransmissions() -> None:
    cms, clock, ok = cms_answering()
    effects = clock.handle(Received("in:1", sip.encode(in_dialog_request(ok, "BYE", 2))))
    assert summaries(effects) == ["200 OK"]
    assert cms.state is UaState.TERMINATED
    assert set(clock.timers) <= {UaTimer.FINISH}  # no SIP timer left running


def test_reinvite_timer_b_ends_the_dialog_with_bye_and_timer_f_ends_the_bye() -> None:
    cms, clock, ok = cms_answering()
    clock.handle(Received("in:1", sip.encode(ack_of(ok))))
    assert cms.state is UaState.CONFIRMED
    start = clock.now
    (reinvite,) = sent_sip(clock.feed(cms.send_reoffer()))
    assert isinstance(reinvite, Request) and sip.to_tag(reinvite) == "abc"
    name, effects = clock.fire()
    assert name == UaTimer.TIMER_B and clock.now - start == 32.0
    assert summaries(effects) == ["BYE"] and cms.state is UaState.TERMINATING
    assert "Timer B" in logs(effects) and "§14.1: the UAC terminates the dialog" in logs(effects)
    name, effects = clock.fire()
    assert name == UaTimer.TIMER_F and clock.now - start == 64.0
    assert cms.state is UaState.TERMINATED
    assert "no answer to our BYE within 32 s (Timer F" in logs(effects)


def test_a_provisional_answer_stops_timer_b_of_the_reinvite() -> None:
    cms, clock, ok = cms_answering()
    clock.handle(Received("in:1", sip.encode(ack_of(ok))))
    (reinvite,) = sent_sip(clock.feed(cms.send_reoffer()))
    assert isinstance(reinvite, Request)
    trying = sip.build_response(reinvite, 100)
    effects = clock.handle(Received("in:1", sip.encode(trying)))
    assert StopTimer(UaTimer.TIMER_B) in effects and cms.state is UaState.REINVITING
    assert UaTimer.TIMER_B not in clock.timers


def test_cms_glare_491_both_ways_and_its_retry_in_0_to_2_s() -> None:
    cms, clock, ok = cms_answering()
    clock.handle(Received("in:1", sip.encode(ack_of(ok))))
    (ours,) = sent_sip(clock.feed(cms.send_reoffer()))
    assert isinstance(ours, Request)
    # The client's reINVITE crosses ours: §14.2, 491.
    theirs = in_dialog_request(ok, "INVITE", 2)
    effects = clock.handle(Received("in:1", sip.encode(theirs)))
    assert summaries(effects) == ["491 Request Pending"]
    assert cms.state is UaState.REINVITING
    # Ours gets 491 too: ACK hop by hop, then wait 0-2 s (the client owns the Call-ID).
    busy = sip.build_response(ours, 491, "Request Pending")
    effects = clock.handle(Received("in:1", sip.encode(busy)))
    (ack,) = sent_sip(effects)
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert sip.via_branch(sip.top_via(ack)) == sip.via_branch(sip.top_via(ours))
    assert cms.state is UaState.GLARE_WAIT
    (delay,) = [e.delay for e in effects if isinstance(e, StartTimer) and e.timer is UaTimer.GLARE]
    assert 0.0 <= delay <= 2.0
    name, effects = clock.fire()
    assert name == UaTimer.GLARE
    (retry,) = sent_sip(effects)
    assert isinstance(retry, Request) and retry.method == "INVITE"
    assert sip.cseq(retry).sequence > sip.cseq(ours).sequence
    assert sip.via_branch(sip.top_via(retry)) != sip.via_branch(sip.top_via(ours))
    assert cms.state is UaState.REINVITING


def test_a_peer_reinvite_during_the_491_wait_goes_first() -> None:
    cms, clock, ok = cms_answering()
    clock.handle(Received("in:1", sip.encode(ack_of(ok))))
    (ours,) = sent_sip(clock.feed(cms.send_reoffer()))
    assert isinstance(ours, Request)
    clock.handle(Received("in:1", sip.encode(sip.build_response(ours, 491, "Request Pending"))))
    effects = clock.handle(Received("in:1", sip.encode(in_dialog_request(ok, "INVITE", 3))))
    assert summaries(effects) == ["200 OK"] and StopTimer(UaTimer.GLARE) not in effects
    assert cms.state is UaState.REINVITE_ACCEPTED
    effects = clock.handle(Received("in:1", sip.encode(in_dialog_request(ok, "ACK", 3))))
    assert cms.shared and cms.state is UaState.CONFIRMED
    assert sent_sip(effects) == []
    # Our §14.1 wait still runs; when it ends, sharing is on: our reINVITE is not needed.
    name, effects = clock.fire()
    assert name == UaTimer.GLARE and sent_sip(effects) == []


def test_when_both_ends_refuse_each_others_reinvite_each_still_waits_its_491_delay() -> None:
    """Each end refuses the other's reINVITE (491) whatever happens: the retries come one per
    §14.1 wait, not at once after each refusal (that was a storm of thousands per second)."""
    from labsim.run import run_scenario

    from .labs import variant

    sc = variant(
        "deadline: 30\ncall: {reinvite_from: both}\n"
        "actors: {cms: {refuse_reinvite: {status: 491}},"
        " skype_client: {refuse_reinvite: {status: 491}}}\n"
    )
    trace = run_scenario(sc, "virtual").trace
    sent = sorted(m.t for m in trace.messages if m.summary == "INVITE" and m.hop == 0)[1:]
    # Two ends over 30 s, each waiting at least 2.1 s (the Call-ID's owner) or 0-2 s: tens,
    # never thousands.
    assert 4 < len(sent) < 200, len(sent)


def test_requests_out_of_order_or_outside_the_dialog_are_answered_not_obeyed() -> None:
    cms, clock, ok = cms_answering()
    clock.handle(Received("in:1", sip.encode(ack_of(ok))))
    clock.handle(Received("in:1", sip.encode(in_dialog_request(ok, "INVITE", 5))))
    assert cms.state is UaState.REINVITE_ACCEPTED
    # A second reINVITE while our 200 to the first waits for its ACK: 491 (§14.2).
    effects = clock.handle(Received("in:1", sip.encode(in_dialog_request(ok, "INVITE", 6))))
    assert summaries(effects) == ["491 Request Pending"]
    # §12.2.2: a lower CSeq than the last is out of order.
    effects = clock.handle(Received("in:1", sip.encode(in_dialog_request(ok, "BYE", 4))))
    assert summaries(effects) == ["500 Server Internal Error"]
    assert cms.state is UaState.REINVITE_ACCEPTED


def test_a_second_reinvite_before_our_answer_to_the_first_gets_500_with_retry_after() -> None:
    client, clock, dialog_ok = client_confirmed()
    cms_tag = sip.to_tag(dialog_ok)
    first = reinvite_to_client(client, cms_tag, 2)
    effects = clock.handle(Received("sip:1", sip.encode(first)))
    assert "held" in logs(effects) and client.state is UaState.REINVITE_RECEIVED
    effects = clock.handle(Received("sip:1", sip.encode(reinvite_to_client(client, cms_tag, 3))))
    (no,) = sent_sip(effects)
    assert isinstance(no, Response) and no.code == 500
    assert 0 <= int(no.headers.get("Retry-After") or "-1") <= 10  # §14.2


# -- the Skype client -----------------------------------------------------------------------------


def client_calling() -> tuple[SkypeClient, Clock, Request]:
    # The sharing dialog's transactions, from the client's first INVITE: the lab without the
    # audio/video call before it (labsim.actors.av_call has its own tests).
    client = SkypeClient(share_lab())
    clock = Clock(client)
    clock.handle(Started())
    edge = Address("192.168.1.252", 5060)
    clock.handle(Connected("sip:1", Address("192.168.1.100", 40000), edge))
    clock.timers.pop(UaTimer.CALL)
    effects = clock.handle(TimerFired(UaTimer.CALL))
    (request,) = sent_sip(effects)
    assert isinstance(request, Request) and client.state is UaState.CALLING
    assert StartTimer(UaTimer.TIMER_B, 32.0) in effects
    return client, clock, request


def client_confirmed() -> tuple[SkypeClient, Clock, Response]:
    """The client got CMS's 200 OK (relay candidate in it) and ACKed it."""
    client, clock, request = client_calling()
    cms = Cms(Lab())
    cms.relayed = Address("10.48.54.229", 24000)
    ok = sip.build_response(
        request, 200, to_tag="cmstag", contact="<sip:meeting@10.48.54.230:5060;transport=tcp>",
        record_route=["<sip:192.168.1.252:5060;transport=tcp;lr>"],
        content_type="application/sdp", body=cms._body(version=2),
    )  # fmt: skip
    effects = clock.handle(Received("sip:1", sip.encode(ok)))
    assert summaries(effects) == ["ACK"] and client.state is UaState.CONFIRMED
    return client, clock, ok


def reinvite_to_client(client: SkypeClient, cms_tag: str | None, cseq: int) -> Request:
    return sip.build_request(
        "INVITE", "sip:alice@192.168.1.100:5060;transport=tcp",
        via=Via.parse(f"SIP/2.0/TCP 192.168.1.252:5060;branch=z9hG4bKre{cseq}"),
        from_addr=f"<sip:meeting@cms.lab>;tag={cms_tag}",
        to_addr=f"<sip:alice@skype.lab>;tag={client.tag}", call_id=client.call_id, cseq=cseq,
        contact="<sip:meeting@10.48.54.230:5060;transport=tcp>",
    )  # fmt: skip


def test_invite_timer_b_fails_the_call_attempt() -> None:
    client, clock, _ = client_calling()
    name, effects = clock.fire()
    assert (name, clock.now) == (UaTimer.TIMER_B, 32.0)
    assert client.state is UaState.TERMINATED
    assert (
        "no response to the sharing INVITE within 32 s (Timer B, 64·T1, RFC 3261 §17.1.1.2): "
        "the call attempt fails"
    ) in logs(effects)
    assert sent_sip(effects) == []  # nothing to cancel or end: no dialog
    assert UaTimer.FINISH in clock.timers


def test_the_edges_100_trying_stops_invite_timer_b() -> None:
    client, clock, request = client_calling()
    effects = clock.handle(Received("sip:1", sip.encode(sip.build_response(request, 100))))
    assert StopTimer(UaTimer.TIMER_B) in effects and client.state is UaState.CALLING
    assert UaTimer.TIMER_B not in clock.timers


def test_timer_b_follows_t1() -> None:
    settings = SkypeClientSettings(sip_timers=SipTimers(t1=0.25, t2=2.0))
    client = SkypeClient(share_lab(skype_client=settings))
    client.handle(Started(), 0)
    effects = client.handle(TimerFired(UaTimer.CALL), 0)
    assert StartTimer(UaTimer.TIMER_B, 16.0) in effects
    # The audio/video INVITE's Timer B follows T1 too.
    client = SkypeClient(Lab(skype_client=settings))
    client.handle(Started(), 0)
    effects = client.handle(TimerFired(UaTimer.CALL), 0)
    assert StartTimer(UaTimer.AV_TIMER_B, 16.0) in effects


def test_a_retransmitted_2xx_is_acked_again_without_a_state_change() -> None:
    client, clock, ok = client_confirmed()
    effects = clock.handle(Received("sip:1", sip.encode(ok)))
    assert summaries(effects) == ["ACK"] and client.state is UaState.CONFIRMED


def test_client_glare_491_both_ways_and_its_retry_in_2_1_to_4_s() -> None:
    client, clock, ok = client_confirmed()
    (ours,) = sent_sip(clock.feed(client.send_reoffer()))
    assert isinstance(ours, Request) and client.state is UaState.REINVITING
    effects = clock.handle(Received("sip:1", sip.encode(reinvite_to_client(client, "cmstag", 2))))
    assert summaries(effects) == ["491 Request Pending"]
    effects = clock.handle(
        Received("sip:1", sip.encode(sip.build_response(ours, 491, "Request Pending")))
    )
    assert summaries(effects) == ["ACK"] and client.state is UaState.GLARE_WAIT
    (delay,) = [e.delay for e in effects if isinstance(e, StartTimer) and e.timer is UaTimer.GLARE]
    assert 2.1 <= delay <= 4.0
    assert "we chose the Call-ID, RFC 3261 §14.1" in logs(effects)
    name, effects = clock.fire(UaTimer.GLARE)
    (retry,) = sent_sip(effects)
    assert isinstance(retry, Request) and sip.cseq(retry).sequence > sip.cseq(ours).sequence
    assert client.state is UaState.REINVITING


def test_a_bye_for_no_dialog_gets_481_and_moves_nothing() -> None:
    client, clock, request = client_calling()
    bye = sip.build_request(
        "BYE", "sip:alice@192.168.1.100:5060", via=Via.parse("SIP/2.0/TCP 1.2.3.4;branch=z9hG4bKx"),
        from_addr="<sip:meeting@cms.lab>;tag=zz", to_addr=f"<sip:alice@skype.lab>;tag={client.tag}",
        call_id=client.call_id, cseq=9,
    )  # fmt: skip
    effects = clock.handle(Received("sip:1", sip.encode(bye)))
    assert summaries(effects) == ["481 Call/Transaction Does Not Exist"]
    assert client.state is UaState.CALLING


# -- whole calls in virtual time ----------------------------------------------------------------


def sip_from(trace: Trace, src: str, summary: str, dst: str | None = None) -> list[MessageRecord]:
    """The sharing dialog's SIP messages (not the audio/video call's) ``src`` sent."""
    return [
        m for m in share_sip(trace)
        if m.src == src and m.summary == summary and (dst is None or m.dst == dst)
    ]  # fmt: skip


def lab(extra: str, call: str = "hold: 1") -> Scenario:
    return loads(f"extends: {LAB}\nclock: virtual\ncall: {{{call}}}\n{extra}", source="t.yaml")


def invite_oks(trace: Trace, src: str) -> list[MessageRecord]:
    """The 200 OKs ``src`` sent to an INVITE or reINVITE (not to a BYE)."""
    return [
        m for m in sip_from(trace, src, "200 OK")
        if sip.cseq(sip.parse_message(m.data)).method == "INVITE"
    ]  # fmt: skip


def test_ack_lost_scenario_resends_the_200_then_cms_hangs_up_after_64_t1() -> None:
    sc = load(library_dir() / "ack-lost.yaml")
    result = run_scenario(sc, "virtual")
    assert result.passed, result.failures
    assert result.outcome.name != "sharing-established"
    trace = result.trace
    oks = invite_oks(trace, "cms")
    first = oks[0].t
    assert [round(m.t - first, 6) for m in oks[1:]] == T1_SCHEDULE
    (bye,) = sip_from(trace, "cms", "BYE")
    assert bye.t - first == pytest.approx(32.0)
    assert not sip_from(trace, "cms", "INVITE")  # the reINVITE stayed held
    texts = [(log.actor, log.text) for log in trace.logs]
    assert any(a == "cms" and "no ACK for the 200 OK to the INVITE after 32 s (64·T1" in t
               for a, t in texts)  # fmt: skip
    assert any(a == "cms" and t.startswith("reINVITE held") for a, t in texts)
    # The client answers CMS's BYE and both ends finish before the deadline.
    assert sip_from(trace, "skype_client", "200 OK")
    assert trace.logs[-1].t < sc.deadline


def test_a_late_ack_holds_the_reinvite_until_it_arrives() -> None:
    # The sharing INVITE's ACK is the second on that hop: the audio/video call's is the first.
    sc = lab("faults: [{delay: {from: expressway_c, to: cms, sip: ACK, nth: 2, by: 1.0}}]\n"
             "expect: {outcome: sharing-established}")  # fmt: skip
    result = run_scenario(sc, "virtual")
    assert result.outcome.name == "sharing-established", result.outcome
    trace = result.trace
    (ack,) = [m for m in share_sip(trace) if m.summary == "ACK" and m.dst == "cms"][:1]
    reinvite = sip_from(trace, "cms", "INVITE")
    assert len(reinvite) == 1 and reinvite[0].t >= ack.t
    assert len(invite_oks(trace, "cms")) == 2  # one resend at T1


def test_the_lab_call_retransmits_nothing_and_both_tables_end() -> None:
    sc = load(LAB)
    cast = build(sc)
    trace = Trace()
    VirtualNetwork(cast.all(), trace).run(30, stop=lambda _t: cast.finished())
    assert len(invite_oks(trace, "cms")) == len(invite_oks(trace, "skype_client")) == 1
    assert cast.cms.state is UaState.TERMINATED
    assert cast.skype_client.state is UaState.TERMINATED
    # The audio/video call before it: answered once, acknowledged, hung up by the client.
    av_oks = [m for m in av_sip(trace) if m.src == "cms" and m.summary == "200 OK"]
    assert len(av_oks) == 2  # to the INVITE and to the BYE, nothing resent
    assert cast.cms.av is not None and cast.skype_client.av is not None
    assert [e for _, e, _ in cast.cms.av.machine.history] == [
        UaEvent.RECV_INVITE, UaEvent.SEND_2XX, UaEvent.RECV_ACK, UaEvent.RECV_BYE,
    ]  # fmt: skip
    assert [e for _, e, _ in cast.skype_client.av.machine.history] == [
        UaEvent.SEND_INVITE, UaEvent.RECV_1XX, UaEvent.RECV_2XX, UaEvent.SEND_BYE,
        UaEvent.RECV_BYE_ANSWER,
    ]  # fmt: skip
    assert [e for _, e, _ in cast.cms.machine.history] == [
        UaEvent.RECV_INVITE, UaEvent.SEND_2XX, UaEvent.RECV_ACK, UaEvent.SEND_REINVITE,
        UaEvent.RECV_1XX, UaEvent.RECV_2XX, UaEvent.RECV_BYE,
    ]  # fmt: skip
    assert [e for _, e, _ in cast.skype_client.machine.history] == [
        UaEvent.SEND_INVITE, UaEvent.RECV_1XX, UaEvent.RECV_2XX, UaEvent.RECV_REINVITE,
        UaEvent.SEND_2XX, UaEvent.RECV_ACK, UaEvent.SEND_BYE, UaEvent.RECV_BYE_ANSWER,
    ]  # fmt: skip


def run_cast(sc: Scenario, cast: Cast) -> Trace:
    trace = Trace()
    VirtualNetwork(
        cast.all(), trace, latency=sc.latency, blocked=blocked_pairs(sc), faults=fault_plan(sc)
    ).run(sc.deadline, stop=lambda _t: cast.finished())
    return trace


def test_glare_both_ends_send_a_reinvite_both_get_491_and_cms_retries_first() -> None:
    sc = load(library_dir() / "reinvite-glare.yaml")  # call: {reinvite_from: both}
    assert sc.call.sends_reinvite("cms") and sc.call.sends_reinvite("skype_client")
    cast = build(sc)
    trace = run_cast(sc, cast)
    # Both post-ICE reINVITEs cross; each end answers the other's 491 (§14.2).
    refused_at_client = sip_from(trace, "skype_client", "491 Request Pending")
    refused_at_cms = sip_from(trace, "cms", "491 Request Pending")
    assert len(refused_at_client) == len(refused_at_cms) == 1
    # CMS (not the Call-ID's owner) retries within 0-2 s, before the client's 2.1-4 s.
    cms_invites = sip_from(trace, "cms", "INVITE")
    assert len(cms_invites) == 2
    got_491 = next(m for m in trace.messages
                   if m.dst == "cms" and m.summary == "491 Request Pending")  # fmt: skip
    assert 0.0 <= cms_invites[1].t - got_491.t <= 2.0
    # The client takes CMS's retry during its own wait; sharing is on, its retry is dropped.
    assert len(sip_from(trace, "skype_client", "INVITE")) == 2  # the INVITE and one reINVITE
    assert cast.skype_client.shared and cast.cms.shared
    events = [e for _, e, _ in cast.skype_client.machine.history]
    assert UaEvent.RECV_491 in events and UaEvent.TIMER_491 not in events
    assert cast.cms.machine.history.count((UaState.GLARE_WAIT, UaEvent.TIMER_491,
                                           UaState.REINVITING))  # fmt: skip
    from labsim.report.outcome import outcome

    assert outcome(trace).name == "sharing-established"


def test_client_reinvite_timer_b_ends_the_dialog_with_bye() -> None:
    """The client is the side that re-offers and nothing answers its reINVITE, not even the
    Edge (dropped on the first hop): Timer B, then BYE (RFC 3261 §14.1)."""
    sc = lab(
        "deadline: 60\n"
        "actors: {skype_client: {ice_timeout: 50}}\n"
        # INVITE 1 on that hop is the audio/video call's, 2 the sharing INVITE, 3 the reINVITE.
        "faults: [{drop: {from: skype_client, to: skype_edge, sip: INVITE, nth: 3}}]\n"
        "expect: {outcome: call-failed}",
        call="reinvite_from: skype_client, hold: 1",
    )
    result = run_scenario(sc, "virtual")
    trace = result.trace
    reinvite = next(f for f in trace.faults if f.summary == "INVITE")
    (bye,) = sip_from(trace, "skype_client", "BYE")
    assert bye.t - reinvite.t == pytest.approx(32.0)
    assert any("no response to our reINVITE within 32 s (Timer B" in log.text
               for log in trace.logs if log.actor == "skype_client")  # fmt: skip
    assert result.outcome.name != "sharing-established"


def test_client_resends_its_200_to_the_reinvite_until_64_t1_then_ends_with_bye() -> None:
    sc = lab(
        "deadline: 60\nactors: {skype_client: {ice_timeout: 50}}\n"
        "faults: [{drop: {from: skype_edge, to: skype_client, sip: ACK}}]\n"
        "expect: {outcome: call-failed}"
    )
    result = run_scenario(sc, "virtual")
    trace = result.trace
    oks = invite_oks(trace, "skype_client")
    assert [round(m.t - oks[0].t, 6) for m in oks[1:]] == T1_SCHEDULE
    (bye,) = sip_from(trace, "skype_client", "BYE")
    assert bye.t - oks[0].t == pytest.approx(32.0)
    assert any("no ACK for the 200 OK to the reINVITE after 32 s" in log.text
               for log in trace.logs if log.actor == "skype_client")  # fmt: skip
    assert result.outcome.name != "sharing-established"


def test_a_cancel_of_the_held_reinvite_gets_200_and_487() -> None:
    client, clock, ok = client_confirmed()
    held = reinvite_to_client(client, sip.to_tag(ok), 2)
    clock.handle(Received("sip:1", sip.encode(held)))
    assert client.state is UaState.REINVITE_RECEIVED
    cancel = sip.build_request(
        "CANCEL", held.uri, via=[sip.top_via(held)], from_addr=sip.from_address(held),
        to_addr=sip.to_address(held), call_id=sip.call_id(held), cseq=2,
    )  # fmt: skip
    effects = clock.handle(Received("sip:1", sip.encode(cancel)))
    assert summaries(effects) == ["200 OK", "487 Request Terminated"]  # RFC 3261 §9.2
    assert client.state is UaState.CONFIRMED
    again = clock.handle(Received("sip:1", sip.encode(cancel)))
    assert summaries(again) == ["481 Call/Transaction Does Not Exist"]
    # The hop-by-hop ACK of the 487 ends that transaction quietly.
    ack = sip.build_failure_ack(held, sip.build_response(held, 487))
    assert clock.handle(Received("sip:1", sip.encode(ack))) == []
