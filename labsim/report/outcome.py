"""What became of the sharing call, read from the trace alone (DESIGN.md: the trace is the
truth; the outcome knows nothing of the scenario or of injected faults).

"The call" is the sharing dialog: the caller's first initial INVITE whose SDP offers
``m=applicationsharing`` (:func:`first_invite`). The meeting's audio/video call that comes before
it is a dialog of its own, with its own Call-ID (Cisco 212580); only when no INVITE offers
sharing is the first INVITE the call (a run whose audio/video call failed, so no share
followed; a capture of another kind of call).

The steps of the call, in order, and the outcome when a run stops at one:

1. the Skype client's INVITE gets no final answer → ``no-answer``;
2. it gets a final answer of 300 or more → ``call-rejected`` (with the status and any
   ``ms-diagnostics-public`` / ``ms-diagnostics`` text); so does a sharing reINVITE refused
   with an error (the Skype meeting's 21002 "Attendees cannot share");
3. it is answered 2xx, but CMS never got a TURN relay (no Allocate Success Response reached
   it) → ``turn-failed``;
4. CMS had a relay, but no reINVITE was answered 200 and acknowledged → ``ice-failed`` (the
   candidate pair never became valid both ways, so nobody re-offered the media route);
5. a reINVITE of the call's dialog was answered 200 and its ACK reached the answerer →
   ``sharing-established``.

``call-failed`` covers a 2xx that does not fit: a reINVITE answered with an error, or checks
that succeeded both ways with no reINVITE after them.
"""

from __future__ import annotations

from dataclasses import dataclass

from labsim.trace import MessageRecord, Trace
from labsim.vocabulary import OutcomeName
from labsim.wire.facts import SipFacts, parse_kind


@dataclass(frozen=True)
class Outcome:
    name: OutcomeName
    """One of :data:`~labsim.vocabulary.OUTCOMES`."""
    reason: str
    """One sentence of evidence."""


SipHop = tuple[MessageRecord, SipFacts]
SipMessages = list[SipHop]


def sip_messages(trace: Trace) -> SipMessages:
    """Every hop of every SIP message of the trace that parses, with its facts, in order
    (dropped hops too: their ``fate`` says so)."""
    out: SipMessages = []
    for record in trace.messages:
        if record.protocol == "SIP":
            facts = record.facts
            if isinstance(facts, SipFacts):
                out.append((record, facts))
    return out


def first_invite(messages: SipMessages, caller: str) -> SipHop | None:
    """The caller's initial INVITE (no To tag) of the sharing call, as it left the caller: the
    first whose SDP offers ``m=applicationsharing`` (MS-SDPEXT §3.1.5); the audio/video call
    before it is another dialog (Cisco 212580: the sharing INVITE "will have a different SIP
    call-id than the initial audio/video call"). When none offers sharing, the first initial
    INVITE."""
    first: SipHop | None = None
    for r, f in messages:
        if r.src == caller and f.method == "INVITE" and f.to_tag is None:
            if SHARING in f.media:
                return r, f
            if first is None:
                first = (r, f)
    return first


#: The m= kind of the share's media (MS-SDPEXT §3.1.5).
SHARING = "applicationsharing"


def is_av_call(facts: SipFacts) -> bool:
    """An INVITE whose SDP offers audio or video and no application sharing: the meeting's
    audio/video call, not the share."""
    return SHARING not in facts.media and bool({"audio", "video"} & set(facts.media))


def reinvites(messages: SipMessages, call_id: str, *ends: str) -> SipMessages:
    """The hops of the call's reINVITEs (an INVITE with a To tag) delivered to one of
    ``ends``: the UA that got it, in ``record.dst``."""
    return [
        (r, f) for r, f in messages
        if f.method == "INVITE" and f.call_id == call_id and f.to_tag is not None
        and r.dst in ends and r.delivered
    ]  # fmt: skip


#: What identifies a transaction's messages: Call-ID, From tag, CSeq number, CSeq method.
_Transaction = tuple[str | None, str | None, int | None, str | None]


def responses_by_transaction(messages: SipMessages) -> dict[_Transaction, SipMessages]:
    """Every response hop, by the transaction it answers (RFC 3261 §17.1.3's match of Call-ID,
    From tag and CSeq, as :meth:`SipFacts.answers` does), in trace order: one pass, so that
    finding a request's answers does not scan the whole trace for each request."""
    out: dict[_Transaction, SipMessages] = {}
    for record, facts in messages:
        if facts.status is not None:
            key = (facts.call_id, facts.from_tag, facts.cseq, facts.cseq_method)
            out.setdefault(key, []).append((record, facts))
    return out


def answers_to(responses: dict[_Transaction, SipMessages], request: SipFacts) -> SipMessages:
    """The hops of the responses to ``request``, in trace order."""
    return responses.get((request.call_id, request.from_tag, request.cseq, request.method), [])


def reinvite_refusal(
    messages: SipMessages,
    responses: dict[_Transaction, SipMessages],
    caller: str = "skype_client",
    callee: str = "cms",
) -> tuple[str, SipFacts] | None:
    """Who sent a reINVITE of the call (either direction) and the error answer that came back
    to it; None when no reINVITE was refused. 491 is glare, not a refusal: the UA retries
    after a random delay (RFC 3261 §14.1)."""
    first = first_invite(messages, caller)
    if first is None:
        return None
    for record, request in reinvites(messages, first[1].call_id, caller, callee):
        sender = callee if record.dst == caller else caller
        for r, answer in answers_to(responses, request):
            status = answer.status or 0
            if r.dst == sender and r.delivered and status >= 300 and status != 491:
                return sender, answer
    return None


def status_text(facts: SipFacts) -> str:
    """``403 Forbidden``: a response's status line as people read it."""
    return f"{facts.status} {facts.reason}".rstrip()


def outcome(
    trace: Trace, *, caller: str = "skype_client", callee: str = "cms",
    sip_caller: str | None = None, sip_callee: str | None = None,
) -> Outcome:  # fmt: skip
    """What became of the call. ``caller`` and ``callee`` are the ends of the media path (the
    callee is the TURN client); ``sip_caller`` and ``sip_callee`` the ends of the SIP dialog,
    the same actors unless a capture point sees only the proxies next to it (then they are
    the nearest actors it sees toward each end)."""
    sip_caller = sip_caller or caller
    sip_callee = sip_callee or callee
    messages = sip_messages(trace)
    first = first_invite(messages, sip_caller)
    if first is None:
        return Outcome("no-answer", f"{sip_caller} sent no INVITE")
    invite = first[1]
    final = next(
        (f for r, f in messages
         if r.dst == sip_caller and r.delivered and f.status is not None and f.status >= 200
         and f.answers(invite)),
        None,
    )  # fmt: skip
    # No INVITE offered sharing: the one we have is the meeting's audio/video call, and the
    # share never followed it.
    what = "the audio/video INVITE (no sharing INVITE followed it)" if is_av_call(invite) else (
        "the INVITE"
    )  # fmt: skip
    if final is None:
        return Outcome("no-answer", f"{what} got no final answer back to {sip_caller}")
    assert final.status is not None
    if final.status >= 300:
        extra = f" ({final.diagnostics})" if final.diagnostics else ""
        return Outcome("call-rejected", f"{what} was answered {status_text(final)}{extra}")
    if is_av_call(invite):
        return Outcome("call-failed", f"{what} was answered {status_text(final)}")

    # The reINVITE: an INVITE inside the call's dialog, either direction.
    sharing = reinvites(messages, invite.call_id, sip_caller, sip_callee)
    responses = responses_by_transaction(messages)
    # ACK hops delivered, by Call-ID, From tag and CSeq number (an ACK's CSeq method is ACK).
    acks: dict[tuple[str | None, str | None, int | None], set[str]] = {}
    for r, f in messages:
        if f.method == "ACK" and r.delivered:
            acks.setdefault((f.call_id, f.from_tag, f.cseq), set()).add(r.dst)
    for record, reinvite in sharing:
        answerer = record.dst
        answered = any(f.status == 200 for _, f in answers_to(responses, reinvite))
        acked = answerer in acks.get((reinvite.call_id, reinvite.from_tag, reinvite.cseq), ())
        if answered and acked:
            sender = sip_callee if answerer == sip_caller else sip_caller
            return Outcome(
                "sharing-established",
                f"{sender}'s reINVITE was answered 200 OK and acknowledged at {answerer}",
            )
    allocated = [r for r in trace.find(_ALLOCATE_OK) if r.dst == callee and r.delivered]
    if not allocated:
        errors = [r for r in trace.find(_ALLOCATE_ERROR) if r.dst == callee and r.delivered]
        why = f"; last answer: {errors[-1].summary}" if errors else ""
        return Outcome("turn-failed", f"{callee} got no TURN relay allocation{why}")
    refused = reinvite_refusal(messages, responses, sip_caller, sip_callee)
    if refused is not None:
        answer = refused[1]
        extra = f" ({answer.diagnostics})" if answer.diagnostics else ""
        return Outcome(
            "call-rejected", f"the sharing reINVITE was answered {status_text(answer)}{extra}"
        )
    # Whose checks got their answer back: a Binding Success Response delivered to that end.
    answered_by = {m.dst for m in trace.find(_CHECK_OK) if m.delivered}
    if sharing and {caller, callee} <= answered_by:
        return Outcome("call-failed", "a reINVITE was sent but not completed")
    if {caller, callee} <= answered_by:
        return Outcome(
            "call-failed",
            "the ICE checks succeeded in both directions, but no reINVITE followed",
        )
    return Outcome(
        "ice-failed",
        "the call was answered and a relay allocated, but no reINVITE followed: the candidate "
        "pair never became valid in both directions",
    )


_ALLOCATE_OK = parse_kind("Allocate Success Response")
_ALLOCATE_ERROR = parse_kind("Allocate Error Response")
_CHECK_OK = parse_kind("Binding Success Response")
