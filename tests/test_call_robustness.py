"""The call's actors facing peers that misbehave: each case below once crashed an actor, hung a
call or misled the outcome (found in review); now each gets the answer RFC 3261 asks for."""

from __future__ import annotations

from pathlib import Path

from sipmessage import Request, Via

from labsim.actors.cms import Cms
from labsim.actors.common import UaTimer
from labsim.actors.expressway_c import ExpresswayC
from labsim.actors.lab import Lab, SkypeClientSettings
from labsim.actors.skype_client import SkypeClient
from labsim.proto.events import (
    Accepted,
    Address,
    Close,
    Closed,
    Connected,
    Effect,
    Received,
    Send,
    Started,
    StartTimer,
    TimerFired,
)
from labsim.proto.turn_client import PeerConnected
from labsim.report.outcome import outcome
from labsim.run import run_scenario
from labsim.scenario import load
from labsim.trace import Trace
from labsim.wire import sip

from .labs import run_variant, share_lab

LAB = Path(__file__).parent.parent / "scenarios" / "sharing-call.yaml"


def sent_sip(effects: list[Effect]) -> list[sip.SipMessage]:
    return [
        sip.parse_message(e.data) for e in effects if isinstance(e, Send) and e.protocol == "sip"
    ]


def offer_body() -> bytes:
    from labsim.proto import appsharing

    edge = Address("192.168.1.252", 53577)
    cand = appsharing.candidate(4, "TCP-ACT", "relay", edge)
    side = appsharing.ShareSide(
        "192.168.1.100", edge, "Xa3f", "Tq9sLmN2vB7xYc4ZkP1rW8dE", (cand,), "sharer",
        "sendonly", bytes(30),
    )  # fmt: skip
    return appsharing.build(side)


def invite(*, contact: bool = True, tag: str = "abc") -> Request:
    return sip.build_request(
        "INVITE", "sip:meeting@cms.lab",
        via=Via.parse("SIP/2.0/TCP 10.48.54.228:5060;branch=z9hG4bKtest1"),
        from_addr=f"<sip:alice@skype.lab>;tag={tag}", to_addr="<sip:meeting@cms.lab>",
        call_id="call-1", cseq=1,
        contact="<sip:alice@192.168.1.100:5060;transport=tcp>" if contact else None,
        content_type="application/sdp", body=offer_body(),
    )  # fmt: skip


def test_an_invite_without_contact_gets_400_not_a_crash() -> None:
    cms = Cms(Lab())
    cms.handle(Started(), 0)
    cms.handle(Accepted("in:1", Address("10.48.54.230", 5060), Address("10.48.54.228", 40000)), 0)
    answers = sent_sip(cms.handle(Received("in:1", sip.encode(invite(contact=False))), 0))
    assert [sip.summary(m) for m in answers] == ["100 Trying", "400 Missing Contact"]
    assert sip.to_tag(answers[1])


def test_a_response_before_the_invite_is_dropped_as_a_stray() -> None:
    client = SkypeClient(Lab(skype_client=SkypeClientSettings(start_delay=5)))
    client.handle(Started(), 0)
    client.handle(
        Connected("sip:1", Address("192.168.1.100", 40000), Address("192.168.1.252", 5060)), 0
    )
    stray = sip.build_response(invite(), 200, to_tag="x", contact="<sip:cms@10.48.54.230>")
    effects = client.handle(Received("sip:1", sip.encode(stray)), 0)
    assert not sent_sip(effects) and client.dialog is None


def test_a_refusal_with_a_malformed_diagnostics_header_is_still_acknowledged() -> None:
    client = SkypeClient(share_lab())  # its first INVITE is the share's
    client.handle(Started(), 0)
    client.handle(
        Connected("sip:1", Address("192.168.1.100", 40000), Address("192.168.1.252", 5060)), 0
    )
    client.handle(TimerFired(UaTimer.CALL), 0)
    assert client.invite is not None
    refusal = sip.build_response(
        client.invite,
        403,
        to_tag="asmcu",
        extra_headers=[("ms-diagnostics-public", "21002;reason=")],
    )
    effects = client.handle(Received("sip:1", sip.encode(refusal)), 0.1)
    (ack,) = sent_sip(effects)
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert sip.via_branch(sip.top_via(ack)) == sip.via_branch(sip.top_via(client.invite))
    assert any(isinstance(e, StartTimer) and e.timer is UaTimer.FINISH for e in effects)
    # The outcome reads the same bytes from a trace without raising.
    trace = Trace()
    trace.opened(0, 1, "skype_client", Address("192.168.1.100", 40000), "skype_edge",
                 Address("192.168.1.252", 5060))  # fmt: skip
    trace.sent(0, 1, True, sip.encode(client.invite), "sip")
    answer = sip.encode(refusal)
    trace.sent(0.1, 1, False, answer, "sip")
    trace.delivered(0.1, 1, False, len(answer))
    result = outcome(trace)
    assert result.name == "call-rejected" and "403" in result.reason


def test_a_lost_downstream_connection_ends_the_transaction_with_503() -> None:
    expc = ExpresswayC(Lab())
    effects = expc.handle(Started(), 0)
    # The traversal and CMS connections open at start; CMS's comes up.
    expc.handle(
        Connected("sip:2", Address("10.48.54.228", 40001), Address("10.48.54.230", 5060)), 0
    )
    expc.handle(Accepted("in:1", Address("10.48.54.228", 5060), Address("10.48.54.229", 40000)), 0)
    forwarded = sent_sip(expc.handle(Received("in:1", sip.encode(invite())), 0))
    assert [sip.summary(m) for m in forwarded] == ["100 Trying", "INVITE"]
    answers = sent_sip(expc.handle(Closed("sip:2", reset=True), 0.1))
    assert [sip.summary(m) for m in answers] == ["503 Service Unavailable"]
    assert sip.to_tag(answers[0]) and len(sip.vias(answers[0])) == 1
    assert effects  # the start effects exist (listen, connects)


def test_an_options_ping_to_a_proxy_is_answered_there() -> None:
    expc = ExpresswayC(Lab())
    expc.handle(Started(), 0)
    expc.handle(Accepted("in:1", Address("10.48.54.228", 5060), Address("10.48.54.229", 40000)), 0)
    ping = sip.build_request(
        "OPTIONS", "sip:10.48.54.228:5060",
        via=Via.parse("SIP/2.0/TCP 10.48.54.229:5060;branch=z9hG4bKping"),
        from_addr="<sip:expe@cms.lab>;tag=p", to_addr="<sip:10.48.54.228>", call_id="ping-1",
        cseq=1,
    )  # fmt: skip
    effects = expc.handle(Received("in:1", sip.encode(ping)), 0)
    assert [sip.summary(m) for m in sent_sip(effects)] == ["200 OK"]
    assert not any(e.__class__.__name__ == "Connect" for e in effects)


def test_a_second_peer_on_the_relay_gets_no_second_reinvite() -> None:
    from labsim.proto import appsharing

    result = run_scenario(load(LAB), "virtual")
    offer = next(
        m for m in result.trace.messages
        if m.summary == "INVITE" and m.dst == "cms" and m.sip_facts is not None
        and "applicationsharing" in m.sip_facts.media
    )  # fmt: skip
    cms = Cms(Lab())
    cms.offer = appsharing.parse(sip.parse_message(offer.data).body)
    first = cms._pipe_up(PeerConnected("turn:data:1", Address("192.168.1.252", 53577), b"", 1))
    assert any(isinstance(e, Send) and e.conn == "turn:data:1" for e in first)  # its check
    second = cms._pipe_up(PeerConnected("turn:data:9", Address("192.0.2.9", 1), b"", 9))
    assert [e for e in second if isinstance(e, Close)] == [Close("turn:data:9")]
    assert not any(isinstance(e, Send) for e in second)
    assert cms.pipe == "turn:data:1"


def test_the_edge_keeps_cms_relay_not_its_own_after_the_reinvite() -> None:
    from labsim.run import build

    sc = load(LAB)
    cast = build(sc)
    from labsim.net.virtual import VirtualNetwork

    VirtualNetwork(cast.all(), Trace()).run(20, stop=lambda _t: cast.finished())
    assert cast.skype_edge.relay_target == Address("10.48.54.229", 24000)


def test_wrong_turn_credentials_end_the_live_run_soon() -> None:
    result = run_variant("actors: {cms: {turn: {password: wrong}}}", "turn-failed", "live")
    assert result.ended == "finished"  # both ends finish; the run does not wait for its deadline


def test_direct_path_with_strict_permissions_names_the_client() -> None:
    result = run_variant(
        "actors: {skype_client: {direct_path: true}, expressway_e: {turn: {permission_policy: "
        "rfc}}, cms: {turn: {create_permission: true}}}",
        "sharing-established",
    )
    [permission] = result.trace.find("CreatePermission Request")
    assert permission.stun_facts is not None
    assert permission.stun_facts.peer is not None
    assert permission.stun_facts.peer.host == "192.168.1.100"


def test_cancel_before_the_answer_gets_487_through_the_proxies() -> None:
    """A sipp-like caller behind Expressway-C cancels while CMS is still allocating: the
    proxy answers the CANCEL and cancels downstream with the INVITE's branch; CMS answers 487,
    which comes back (and is ACKed hop by hop); a repeated INVITE is absorbed by the proxy."""
    expc = ExpresswayC(Lab())
    expc.handle(Started(), 0)
    expc.handle(
        Connected("sip:2", Address("10.48.54.228", 40001), Address("10.48.54.230", 5060)), 0
    )
    expc.handle(Accepted("in:1", Address("10.48.54.228", 5060), Address("10.48.54.229", 40000)), 0)
    offer = invite()
    out = [e for e in expc.handle(Received("in:1", sip.encode(offer)), 0) if isinstance(e, Send)]
    forwarded = sip.parse_message(next(e.data for e in out if e.conn == "sip:2"))
    again = expc.handle(Received("in:1", sip.encode(invite())), 0)
    assert not [e for e in again if isinstance(e, Send)]  # the repeat is absorbed
    cancel = sip.build_request(
        "CANCEL", "sip:meeting@cms.lab", via=sip.top_via(offer),
        from_addr=sip.from_address(offer), to_addr=sip.to_address(offer), call_id="call-1",
        cseq=1,
    )  # fmt: skip
    effects = [e for e in expc.handle(Received("in:1", sip.encode(cancel)), 0.1)
               if isinstance(e, Send)]  # fmt: skip
    upstream = [sip.summary(sip.parse_message(e.data)) for e in effects if e.conn == "in:1"]
    down = [sip.parse_message(e.data) for e in effects if e.conn == "sip:2"]
    assert upstream == ["200 OK"]
    assert [sip.summary(m) for m in down] == ["CANCEL"]
    assert sip.via_branch(sip.top_via(down[0])) == sip.via_branch(sip.top_via(forwarded))

    cms = Cms(Lab())
    cms.handle(Started(), 0)
    cms.handle(Accepted("in:1", Address("10.48.54.230", 5060), Address("10.48.54.228", 40001)), 0)
    cms.handle(Received("in:1", sip.encode(forwarded)), 0)
    answers = sent_sip(cms.handle(Received("in:1", sip.encode(down[0])), 0.1))
    assert sorted(sip.summary(m) for m in answers) == ["200 OK", "487 Request Terminated"]
    terminated = next(m for m in answers if sip.summary(m).startswith("487"))
    back = [e for e in expc.handle(Received("sip:2", sip.encode(terminated)), 0.2)
            if isinstance(e, Send)]  # fmt: skip
    assert [sip.summary(sip.parse_message(e.data)) for e in back if e.conn == "in:1"] == [
        "487 Request Terminated"
    ]
    assert [sip.summary(sip.parse_message(e.data)) for e in back if e.conn == "sip:2"] == ["ACK"]
