"""What a capture taken at one point shows stopped past it: the ``beyond`` anomalies.

A run sees every hop, so where a message was lost is in its trace. A capture at one actor sees
only that actor's hops: a message that leaves the point and whose answer never comes back was
lost on one of the hops past it, or the far end never answered, and the point cannot tell
which. Each finder here says what left the point and what never came back, with the path past
the point's interface where the fault lies (``Anomaly.beyond``); the diagnosis calls it
``beyond-capture`` and says where to capture next (docs/diagnosis.md, "Read from a capture").

The ends of the call the point cannot see are played by its neighbours
(:func:`labsim.report.evidence.stand_ins`); what is said of them is only what reached the
point.
"""

from __future__ import annotations

from typing import Protocol

from labsim.report.evidence import (
    MEDIA_PATH,
    SIP_PATH,
    Anomaly,
    Evidence,
    Step,
    beyond_words,
    path_past,
    stands_in,
)
from labsim.trace import MessageRecord
from labsim.wire.facts import SipFacts


def beyond(ev: Evidence) -> list[Anomaly]:
    """What a capture at one point shows stopped past it: a message that left the point
    toward an end it cannot see and whose answer never came back (a SIP request and its final
    response, a 2xx and its ACK, a check and its response); the call that never reached the
    point; the relay no peer reached; the checks that never came through. Each names the path
    past the point where the fault lies: the point cannot tell which hop of it."""
    point = ev.point
    if point is None:
        return []
    out: list[Anomaly] = []

    def add(step: Step, t: float, line: str, kind: str, toward: str, path: tuple[str, ...],
            record: MessageRecord | None = None) -> None:  # fmt: skip
        past = path_past(ev, toward, path)
        out.append(Anomaly(
            "beyond", step, t, f"{line}: lost {beyond_words(ev, past)}", kind=kind,
            method=kind.split()[0], sender=point, hop=(point, toward), beyond=past,
            records=(record,) if record is not None else (),
        ))  # fmt: skip

    # No share reached the point: lost before it, when the meeting's audio/video call (if any
    # crossed it) was set up, its ACK through; else that call's own anomalies tell why.
    av_set_up = any(f.method == "ACK" and ev.is_av(f) for _, f in ev.sip)
    if not ev.sharing and point != SIP_PATH[0] and (av_set_up or not ev.av_calls):
        add("SIP INVITE", 0.0, f"no sharing INVITE crossed {point}", "INVITE", ev.sip_caller,
            SIP_PATH)  # fmt: skip
    for finder in (_sip_unanswered, _ack_ignored, _checks_unanswered, _relay_unreached,
                   _hang_up_missing, _stun_retried):  # fmt: skip
        finder(ev, add)
    return out + _unanswered_stun(ev)


def _sip_unanswered(ev: Evidence, add: _Add) -> None:
    """A SIP request that left the point and got no final answer, a 2xx that got no ACK, within
    64·T1."""
    point = ev.point
    sip_ends = {ev.sip_caller, ev.sip_callee} - {point}
    # When each final answer and each ACK reached the point: one that comes after its
    # transaction gave up (64·T1, RFC 3261 §17.1.1.2 Timer B, §13.3.1.4 for the ACK) came too
    # late to count, and what it answers was lost past the point for as long.
    answers: dict[tuple[object, ...], float] = {}
    acks: dict[tuple[object, ...], float] = {}
    for r, f in ev.sip:
        if r.dst == point and f.status is not None and f.status >= 200:
            answers.setdefault((f.call_id, f.from_tag, f.cseq, f.cseq_method), r.t)
        elif r.dst == point and f.method == "ACK":
            acks.setdefault((f.call_id, f.from_tag, f.cseq), r.t)
    for r, f in ev.sip:
        if r.src != point or r.dst not in sip_ends or not stands_in(ev, r.dst) or not r.delivered:
            continue
        if f.method is not None and f.method not in ("ACK", "CANCEL"):
            came = answers.get((f.call_id, f.from_tag, f.cseq, f.method))
            awaited, kind = "final answer", ev.name(r)
        elif f.cseq_method == "INVITE" and f.status is not None and 200 <= f.status < 300:
            came = acks.get((f.call_id, f.from_tag, f.cseq))
            awaited, kind = "ACK", _ack_kind(ev, f)
        else:
            continue
        if came is not None and came - r.t <= SIP_TIMEOUT:
            continue
        late = "" if came is None else f" within 64·T1 (one came {came - r.t:.1f} s on)"
        add(ev.step_of(r), r.fate_t or r.t,
            f"{ev.name(r)} left {point} for {r.dst} at t={r.t:.3f} s and {r.dst}'s TCP "
            f"acknowledged it; no {awaited} came back{late}", kind, r.dst, SIP_PATH,
            r)  # fmt: skip


def _ack_ignored(ev: Evidence, add: _Add) -> None:
    """An ACK the point sent on, after which the 2xx it acknowledges kept coming back."""
    point = ev.point
    # An ACK sent on toward the answerer, after which its 2xx kept coming back: the answerer
    # retransmits its 2xx until an ACK reaches it (RFC 3261 §13.3.1.4), so this one did not.
    oks: dict[tuple[object, ...], list[float]] = {}
    for r, f in ev.sip:
        if r.dst == point and f.status is not None and 200 <= f.status < 300:
            oks.setdefault((f.call_id, f.from_tag, f.cseq), []).append(r.t)
    # The round trip past the point: the INVITE leaving it to its first 2xx coming back. A
    # 2xx resent later than that after the ACK left crossed no ACK on the way.
    asked = {(f.call_id, f.from_tag, f.cseq): r.t for r, f in reversed(ev.sip)
             if r.src == point and f.method == "INVITE"}  # fmt: skip
    for r, f in ev.sip:
        key = (f.call_id, f.from_tag, f.cseq)
        if r.src != point or f.method != "ACK" or not r.delivered or not stands_in(ev, r.dst):
            continue
        resent = oks.get(key, [])
        rtt = resent[0] - asked[key] if resent and key in asked else 0.0
        again = sum(t > r.t + rtt for t in resent)
        if again:
            add(ev.step_of(r), r.fate_t or r.t,
                f"the ACK left {point} for {r.dst} at t={r.t:.3f} s and {r.dst}'s TCP "
                f"acknowledged it, yet the 200 OK it acknowledges came back {again} more "
                f"time(s), later than the {rtt * 1000:.0f} ms round trip past {point} (RFC "
                "3261 §13.3.1.4: resent until an ACK reaches its sender)", _ack_kind(ev, f),
                r.dst, SIP_PATH, r)  # fmt: skip
            break


def _checks_unanswered(ev: Evidence, add: _Add) -> None:
    """Checks sent toward the caller's side that got no answer back (RFC 5389 §7.3: a response
    carries its request's transaction ID)."""
    point = ev.point
    answered = {f.transaction_id for r, f in ev.stun
                if r.dst == point and f.method == "Binding" and not f.is_request}  # fmt: skip
    unanswered = [
        r for r, f in ev.stun
        if r.src == point and r.dst == ev.caller and stands_in(ev, ev.caller) and r.delivered
        and f.method == "Binding" and f.is_request and f.transaction_id not in answered
    ]  # fmt: skip
    if unanswered:
        first = unanswered[0]
        add("ICE checks", first.fate_t or first.t,
            f"{len(unanswered)} of the connectivity checks (Binding Request) that left {point} "
            f"for {ev.caller} from t={first.t:.3f} s got no answer back", "Binding Request",
            ev.caller, MEDIA_PATH, first)  # fmt: skip


def _ack_kind(ev: Evidence, facts: SipFacts) -> str:
    """The name of the ACK of ``facts``'s transaction (the audio/video call's named apart)."""
    return "A/V ACK" if ev.is_av(facts) else "ACK"


def _stun_retried(ev: Evidence, add: _Add) -> None:
    """At the TURN server: an Allocate or ConnectionBind answered, and the client's next one
    only a STUN transaction's timeout later (RFC 5389 §7.2.2: a TCP client waits 39.5 s, then
    tries again): the answer, or the client's request after it, was lost past the point."""
    point = ev.point
    if point != ev.turn:
        return
    for method in ("Allocate", "ConnectionBind"):
        events = [(r, f) for r, f in ev.stun if f.method == method and ev.callee in (r.src, r.dst)]
        for (r, f), (nxt, g) in zip(events, events[1:], strict=False):
            if (
                r.src == point and not f.is_request and g.is_request and nxt.src == ev.callee
                and nxt.t - r.t >= STUN_TCP_TIMEOUT - 1.0
            ):  # fmt: skip
                add(ev.step_of(r), r.t,
                    f"{ev.name(r)} left {point} for {ev.callee} at t={r.t:.3f} s and "
                    f"{ev.callee}'s next {method} Request came {nxt.t - r.t:.1f} s later, a STUN "
                    "transaction's timeout (RFC 5389 §7.2.2: 39.5 s over TCP): the answer, or "
                    "the request after it, was lost between them", f"{method} Request",
                    ev.callee, MEDIA_PATH, r)  # fmt: skip
                return


#: How long after the far side closed its media a capture must go on for a missing BYE to
#: count: a UA sends its BYE as it closes its media (RFC 3261 §15.1.1).
HANG_UP_WAIT = 5.0


def _hang_up_missing(ev: Evidence, add: _Add) -> None:
    """The far side closed its media path and no BYE crossed the point after it: the hang-up
    was lost past the point (or never sent)."""
    point = ev.point
    if point is None or ev.expiry is not None or not stands_in(ev, ev.caller):
        return
    closes = sorted(
        c.closed for c in ev.trace.connections.values()
        if c.closed is not None and not c.reset and ev.caller in (c.client, c.server)
        and c.closed_by == ev.caller and not any(r.connection == c.id for r, _ in ev.sip)
    )  # fmt: skip
    if not closes or ev.end - closes[0] < HANG_UP_WAIT:
        return
    t0 = closes[0]
    if any(f.method == "BYE" and r.t >= t0 - HANG_UP_WAIT and not ev.is_av(f) for r, f in ev.sip):
        return
    add("hang-up", t0,
        f"{ev.caller} closed the media path at t={t0:.3f} s and no BYE crossed {point} in "
        f"the {ev.end - t0:.0f} s after", "BYE", ev.sip_caller, SIP_PATH)  # fmt: skip


#: How long a STUN client over TCP waits for a response (RFC 5389 §7.2.2: Ti, 39.5 s).
STUN_TCP_TIMEOUT = 39.5
#: How long a SIP transaction waits for its final answer, and a UAS for the ACK of its 2xx:
#: 64·T1 (RFC 3261 §17.1.1.2 Timer B, §13.3.1.4).
SIP_TIMEOUT = 32.0


def _unanswered_stun(ev: Evidence) -> list[Anomaly]:
    """TURN requests the capture point sent that got no response: a capture at the client
    shows them leave and nothing come back (a run records where they were lost). Said once
    the client's wait (:data:`STUN_TCP_TIMEOUT`) is over, or the connection ended first."""
    point = ev.point
    out: list[Anomaly] = []
    answered = {f.transaction_id for r, f in ev.stun if r.dst == point and not f.is_request}
    for r, f in ev.stun:
        if (
            r.src != point or not f.is_request or f.method == "Binding"
            or f.transaction_id in answered
        ):  # fmt: skip
            continue
        conn = ev.trace.connections.get(r.connection)
        ended = conn is not None and conn.closed is not None
        if ev.end - r.t < STUN_TCP_TIMEOUT and not ended:
            continue
        out.append(Anomaly(
            "lost", ev.step_of(r), r.t,
            f"{point} sent a {ev.name(r)} to {r.dst} at t={r.t:.3f} s and got no response: "
            f"it or its response was lost between {point} and {r.dst}, or {r.dst} did not "
            "answer (a capture at one end cannot tell which)",
            kind=ev.name(r), method=f.method, sender=point, hop=(point, r.dst), how="unanswered",
            records=(r,), facts=f,
        ))  # fmt: skip
    return out


def _relay_unreached(ev: Evidence, add: _Add) -> None:
    """The relay that no peer reached, and the checks that never came through it, as a capture
    at CMS or Expressway-E sees them."""
    point = ev.point
    assert point is not None
    if not stands_in(ev, ev.caller):
        return
    answered_2xx = [
        r for r, f in ev.sip
        if r.src == point and ev.invite is not None and ev.sharing and f.answers(ev.invite)
        and f.status is not None and 200 <= f.status < 300 and r.delivered
    ]  # fmt: skip
    if not answered_2xx:
        return
    if (
        point == ev.turn
        and not any(r.src == ev.callee for r, _ in ev.stun)
        and not any(ev.callee in (c.client, c.server) for c in ev.trace.connections.values())
    ):
        sent = answered_2xx[0]
        add("TURN allocation", sent.fate_t or sent.t,
            f"the INVITE was answered 200 OK (it left {point} at t={sent.t:.3f} s) and no TCP "
            f"connection or Allocate from {ev.callee} reached {point}: {ev.callee} did not "
            "allocate, or its connect to the TURN port was dropped or refused on the way",
            "Allocate Request", ev.callee, MEDIA_PATH)  # fmt: skip
        return
    refused = any(
        f.is_error and f.method in ("CreatePermission", "Connect", "ConnectionBind")
        and r.dst == ev.callee for r, f in ev.stun
    )  # fmt: skip
    if ev.relay is None or refused:
        return  # no relay, or the point sees why no peer got through it
    peer_came = any(
        c.server_addr.port == ev.relay.port and c.server == ev.turn
        for c in ev.trace.connections.values()
    ) or any(r.server_addr.port == ev.relay.port for r in ev.trace.refused)
    attempts = [r for r, f in ev.stun if f.method == "ConnectionAttempt" and r.dst == ev.callee]
    if not peer_came and not attempts:
        sent = answered_2xx[0]
        add(
            "relay connection",
            sent.fate_t or sent.t,
            f"the relay {ev.relay} went out in the 200 OK at t={sent.t:.3f} s and no peer "
            f"connection to it reached {ev.turn} (no TCP connect to the relay port, no "
            "ConnectionAttempt, RFC 6062 §5.2)",
            "TCP connect",
            ev.caller,
            MEDIA_PATH,
            sent,
        )
        return
    bound = [r for r, f in ev.stun if f.method == "ConnectionBind" and f.is_success
             and r.dst == ev.callee and r.delivered]  # fmt: skip
    came = any(f.method == "Binding" and f.is_request and r.src == ev.caller for r, f in ev.stun)
    if bound and not came:
        t0 = bound[0].fate_t or bound[0].t
        add("ICE checks", t0,
            f"the relay connection was bound at t={t0:.3f} s and no connectivity check "
            f"(Binding Request) from the Skype side came through {ev.caller}", "Binding Request",
            ev.caller, MEDIA_PATH)  # fmt: skip


class _Add(Protocol):
    def __call__(
        self, step: Step, t: float, line: str, kind: str, toward: str, path: tuple[str, ...],
        record: MessageRecord | None = None,
    ) -> None: ...  # fmt: skip
