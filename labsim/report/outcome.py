"""What became of the sharing call, read from the trace alone (DESIGN.md: the trace is the
truth; the outcome knows nothing of the scenario or of injected faults).

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

from sipmessage import Request, Response

from labsim.trace import MessageRecord, Trace
from labsim.wire import WireError, sip

OUTCOMES = (
    "sharing-established", "call-rejected", "ice-failed", "turn-failed", "no-answer",
    "call-failed",
)  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    name: str
    """One of :data:`OUTCOMES`."""
    reason: str
    """One sentence of evidence."""


SipMessages = list[tuple[MessageRecord, Request | Response]]


def sip_messages(trace: Trace) -> SipMessages:
    """Every SIP message of the trace that parses, with its record, in order."""
    out: SipMessages = []
    for record in trace.messages:
        if record.protocol != "SIP" or record.error is not None:
            continue
        try:
            out.append((record, sip.parse_message(record.data)))
        except WireError:
            continue
    return out


def _call_id(m: Request | Response) -> str | None:
    try:
        return sip.call_id(m)
    except WireError:
        return None


def _key(m: Request | Response) -> tuple[str | None, int]:
    # CSeq numbers count per direction, so a request is matched by its From tag and CSeq.
    return sip.from_tag(m), sip.cseq(m).sequence


def reinvite_refusal(
    messages: SipMessages, caller: str = "skype_client", callee: str = "cms"
) -> tuple[str, Response] | None:
    """Who sent a reINVITE of the call (an INVITE with a To tag, either direction) and the
    error answer that came back to it; None when no reINVITE was refused."""
    invite = next(
        (m for r, m in messages
         if r.src == caller and isinstance(m, Request) and m.method == "INVITE"),
        None,
    )  # fmt: skip
    if invite is None:
        return None
    call = sip.call_id(invite)
    for record, m in messages:
        if not (
            isinstance(m, Request) and m.method == "INVITE" and _call_id(m) == call
            and sip.to_tag(m) is not None and record.dst in (caller, callee)
        ):  # fmt: skip
            continue
        sender = callee if record.dst == caller else caller
        for r, answer in messages:
            if (
                r.dst == sender and isinstance(answer, Response) and answer.code >= 300
                and _call_id(answer) == call and sip.cseq(answer).method == "INVITE"
                and _key(answer) == _key(m)
            ):  # fmt: skip
                return sender, answer
    return None


def outcome(trace: Trace, *, caller: str = "skype_client", callee: str = "cms") -> Outcome:
    messages = sip_messages(trace)
    invite = next(
        (m for r, m in messages
         if r.src == caller and isinstance(m, Request) and m.method == "INVITE"),
        None,
    )  # fmt: skip
    if invite is None:
        return Outcome("no-answer", f"{caller} sent no INVITE")
    call = sip.call_id(invite)
    first = _key(invite)
    final = next(
        (m for r, m in messages
         if r.dst == caller and isinstance(m, Response) and _call_id(m) == call and m.code >= 200
         and sip.cseq(m).method == "INVITE"
         and _key(m) == first),
        None,
    )  # fmt: skip
    if final is None:
        return Outcome("no-answer", f"the INVITE got no final answer back to {caller}")
    if final.code >= 300:
        text = f"the INVITE was answered {sip.summary(final)}"
        diag = sip.diagnostics_text(final)
        extra = f" ({diag})" if diag else ""
        return Outcome("call-rejected", text + extra)

    # The reINVITE: an INVITE inside the call's dialog (it has a To tag), either direction.
    reinvites = [
        (r, m) for r, m in messages
        if isinstance(m, Request) and m.method == "INVITE" and _call_id(m) == call
        and sip.to_tag(m) is not None and r.dst in (caller, callee)
    ]  # fmt: skip
    for record, reinvite in reinvites:
        answerer = record.dst
        answered = any(
            isinstance(m, Response) and _call_id(m) == call and m.code == 200
            and sip.cseq(m).method == "INVITE" and _key(m) == _key(reinvite)
            for _, m in messages
        )  # fmt: skip
        acked = any(
            r.dst == answerer and isinstance(m, Request) and m.method == "ACK"
            and _call_id(m) == call and _key(m) == _key(reinvite)
            for r, m in messages
        )  # fmt: skip
        if answered and acked:
            sender = callee if answerer == caller else caller
            return Outcome(
                "sharing-established",
                f"{sender}'s reINVITE was answered 200 OK and acknowledged at {answerer}",
            )
    if not any(r.dst == callee for r in trace.find("Allocate Success Response")):
        errors = [r for r in trace.find("Allocate Error Response") if r.dst == callee]
        why = f"; last answer: {errors[-1].summary}" if errors else ""
        return Outcome("turn-failed", f"{callee} got no TURN relay allocation{why}")
    refused = reinvite_refusal(messages, caller, callee)
    if refused is not None:
        diag = sip.diagnostics_text(refused[1])
        extra = f" ({diag})" if diag else ""
        return Outcome(
            "call-rejected", f"the sharing reINVITE was answered {sip.summary(refused[1])}{extra}"
        )
    # Whose checks got their answer back: a Binding Success Response delivered to that end.
    answered_by = {
        m.dst for m in trace.messages if m.summary.startswith("Binding Success Response")
    }
    if reinvites and {caller, callee} <= answered_by:
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
