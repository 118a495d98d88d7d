"""What went wrong in a run, and what to do about it on the real systems, in plain words.

The diagnosis reads the trace's messages, connections and refused connects — what captures
at each hop would show — and nothing else: not the scenario, not the fault rules (their
:class:`~labsim.trace.FaultRecord` entries are for the reader of the ladder), not the actors'
log lines. An injected fault must be found the way an engineer finds it in a real capture:
from what is missing, refused, reset or answered with an error, and in which direction.

It walks the call's steps in order and stops at the first that did not happen:

1. **SIP INVITE** — the applicationsharing INVITE reaches CMS and is answered 2xx;
2. **TURN allocation** — CMS gets a TCP relay from Expressway-E (RFC 6062 §4.1);
3. **relay connection** — the Skype side connects to the relayed address, Expressway-E
   announces it (ConnectionAttempt) and CMS binds it (ConnectionBind, RFC 6062 §4.3-4.4);
4. **ICE checks** — RFC 4571-framed Binding requests answered in both directions;
5. **reINVITE** — the sharing is confirmed, and the media path stays up until the hang-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from labsim.report.outcome import (
    SipHop,
    SipMessages,
    first_invite,
    reinvite_refusal,
    reinvites,
    sip_messages,
    status_text,
)
from labsim.trace import ConnectionRecord, Journey, MessageRecord, Trace
from labsim.vocabulary import Verdict
from labsim.wire.address import Address
from labsim.wire.facts import SipFacts, parse_kind

#: Setup (INVITE → the reINVITE's ACK) slower than this is worth a word.
SLOW_SETUP = 1.0
#: A link whose round trip (a request and the 100 Trying it gets back) is over this is slow.
SLOW_LINK = 0.1


@dataclass(frozen=True)
class Diagnosis:
    verdict: Verdict
    """One of :data:`~labsim.vocabulary.VERDICTS`."""
    step: str
    """The step of the call where it stopped (or ``call up`` when it did not)."""
    summary: str
    """One sentence."""
    evidence: tuple[str, ...] = ()
    """What the messages show, each with its direction."""
    cause: str = ""
    """The likely cause."""
    advice: tuple[str, ...] = ()
    """What to check or change on the real systems."""

    def text(self) -> str:
        lines = [f"Diagnosis: {self.verdict} (step: {self.step})", f"  {self.summary}"]
        if self.evidence:
            lines.append("  Evidence:")
            lines += [f"    - {e}" for e in self.evidence]
        if self.cause:
            lines.append(f"  Likely cause: {self.cause}")
        if self.advice:
            lines.append("  Check:")
            lines += [f"    - {a}" for a in self.advice]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, object]:
        return {
            "verdict": self.verdict, "step": self.step, "summary": self.summary,
            "evidence": list(self.evidence), "cause": self.cause, "advice": list(self.advice),
        }  # fmt: skip


@dataclass
class _View:
    """The trace, indexed for the questions the diagnosis asks."""

    trace: Trace
    caller: str
    callee: str
    turn: str
    sip_msgs: SipMessages = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sip_msgs = sip_messages(self.trace)

    def stun(self, kind: str, src: str | None = None, dst: str | None = None,
             relayed: bool | None = False, delivered: bool | None = None,
             ) -> list[MessageRecord]:  # fmt: skip
        """STUN hops of this kind (``Allocate Success Response``; typed, see
        :func:`labsim.wire.facts.parse_kind`); ``delivered=True``: only those that reached
        ``dst``."""
        wanted = parse_kind(kind)
        return [
            m for m in self.trace.messages
            if m.protocol == "STUN" and wanted.matches("STUN", m.facts)
            and (src is None or m.src == src) and (dst is None or m.dst == dst)
            and (relayed is None or m.relayed == relayed)
            and (delivered is None or m.delivered == delivered)
        ]  # fmt: skip

    def reached(self, record: MessageRecord, actor: str) -> MessageRecord | None:
        """The hop of ``record``'s message that was delivered to ``actor``, if any."""
        journey = record.journey
        hops = journey.hops if journey is not None else [record]
        return next((h for h in hops if h.dst == actor and h.delivered), None)


def _hop(m: MessageRecord) -> str:
    return f"{m.src} → {m.dst}"


def where_lost(journeys: list[Journey], to: str) -> str:
    """Where messages that never reached ``to`` ended, from their journeys' last hops:
    "all 3 crossed cms → expressway_e and were dropped on expressway_e → skype_edge (fault
    rule 1)"."""
    ends: dict[tuple[str, str, str, int | None], list[Journey]] = {}
    for journey in journeys:
        last = journey.last
        ends.setdefault((last.src, last.dst, last.fate, last.rule), []).append(journey)
    parts = []
    for (src, dst, fate, rule), ended in ends.items():
        count = len(ended)
        crossed = [_hop(h) for h in ended[0].hops[:-1]]
        what = {
            "dropped": f"dropped on {src} → {dst}" + (f" (fault rule {rule})" if rule else ""),
            "lost": f"lost with the connection {src} → {dst}",
            "in-flight": f"still in flight on {src} → {dst} when the run ended",
            "outside": f"handed to a peer outside the run on {src} → {dst}",
            "delivered": f"delivered to {dst}, which did not pass it on",
        }[fate]
        lead = "all" if count == len(journeys) and count > 1 else ""
        lead = f"{lead} {count}".strip() if len(journeys) > 1 else "it"
        via = f" crossed {', '.join(crossed)} and" if crossed else ""
        verb = "was" if lead == "it" or count == 1 else "were"
        parts.append(f"{lead}{via} {verb} {what}")
    return "; ".join(parts)


def _relay_address(view: _View) -> Address | None:
    for record in view.stun("Allocate Success Response", src=view.turn, dst=view.callee):
        facts = record.stun_facts
        if facts is not None and facts.relayed is not None:
            return facts.relayed
    return None


def diagnose(
    trace: Trace, *, caller: str = "skype_client", callee: str = "cms",
    turn: str = "expressway_e",
) -> Diagnosis:  # fmt: skip
    """The verdict on one run, from its trace alone."""
    view = _View(trace, caller, callee, turn)
    return (
        _sip_invite(view)
        or _turn(view)
        or _relay_connection(view)
        or _ice(view)
        or _reinvite(view)
        or _call_up(view)
    )


# -- step 1: the INVITE ------------------------------------------------------------------------


def _invite_of(view: _View) -> SipHop | None:
    return first_invite(view.sip_msgs, view.caller)


def _sip_invite(view: _View) -> Diagnosis | None:
    first = _invite_of(view)
    if first is None:
        return Diagnosis("unknown", "SIP INVITE", f"{view.caller} sent no INVITE.")
    record, invite = first
    journey = record.journey
    hops = journey.hops if journey is not None else [record]
    finals = [
        (r, f) for r, f in view.sip_msgs
        if r.dst == view.caller and r.delivered and f.status is not None and f.status >= 200
        and f.answers(invite)
    ]  # fmt: skip
    if not any(r.dst == view.callee and r.delivered for r in hops):
        evidence = [
            f"{view.caller}'s INVITE (t={record.t:.3f} s) never reached {view.callee}: "
            + where_lost([journey] if journey is not None else [], view.callee)
        ]
        evidence += [
            f"{r.client} could not connect to {r.server_addr}: {r.reason}"
            for r in view.trace.refused
        ]
        if finals:
            evidence.append(f"{view.caller} got {status_text(finals[0][1])} back")
        return Diagnosis(
            "no-sip-path", "SIP INVITE",
            f"The sharing INVITE never reached {view.callee}.",
            tuple(evidence),
            "a SIP hop cannot forward it: a missing connection (the traversal zone between "
            "Expressway-C and Expressway-E), a routing rule, or a firewall on the SIP ports",
            ("the traversal zone status on Expressway-C and Expressway-E (Active)",
             "the search rules and dial plan that route the meeting's domain to CMS",
             "TCP 5060/5061 and the traversal port (7001) through the firewalls"),
        )  # fmt: skip
    if not finals:
        if view.stun("Allocate Request", src=view.callee, dst=view.turn):
            stuck = _turn(view)  # CMS answers only once it has a relay
            if stuck is not None:
                return stuck
        answers = [
            (r, f) for r, f in view.sip_msgs
            if f.status is not None and f.status >= 200 and f.answers(invite)
            and r.src == view.callee
        ]  # fmt: skip
        reached = next(r for r in hops if r.dst == view.callee and r.delivered)
        evidence = [f"{view.callee} got the INVITE (t={reached.fate_t or reached.t:.3f} s)"]
        if answers:
            lost = [r.journey for r, _ in answers if r.journey is not None]
            evidence.append(
                f"{view.callee} sent {len(answers)} final answer(s) ({status_text(answers[0][1])})"
                f", none reached {view.caller}: {where_lost(lost, view.caller)}"
            )
        else:
            evidence.append(f"{view.callee} sent no final answer")
        return Diagnosis(
            "no-sip-path", "SIP INVITE", f"The INVITE got no final answer back to {view.caller}.",
            tuple(evidence),
            "the answer is lost on the way back (Record-Route / Via handling on a hop, or a "
            "one-way SIP path)",
            ("SIP logs of each hop for the 200 OK", "the traversal zone in both directions"),
        )  # fmt: skip
    final = finals[0][1]
    assert final.status is not None
    if final.status >= 300:
        return _refused(view, final, "SIP INVITE", "the INVITE")
    return None


def _refused(view: _View, response: SipFacts, step: str, what: str) -> Diagnosis:
    text = f"{what} was answered {status_text(response)}"
    diag = response.diagnostics
    evidence = [text + (f" with ms-diagnostics-public {diag}" if diag else "")]
    if response.diagnostics_code == 21002:
        return Diagnosis(
            "presenter-not-allowed", step,
            "The Skype meeting refuses to let CMS share: attendees cannot share in this "
            "conference (ms-diagnostics 21002, component ASMCU).",
            tuple(evidence),
            "the Skype for Business meeting lets only presenters share, and CMS joined as an "
            "attendee",
            ("in the Skype meeting, right-click the CMS participant and choose Make Presenter",
             "or change the meeting options so that everyone can present",
             "CMS's logs show the same ms-diagnostics-public line"),
        )  # fmt: skip
    return Diagnosis(
        "call-rejected", step, f"{text[0].upper()}{text[1:]}.", tuple(evidence),
        "the far end refused the session; the status and any ms-diagnostics say why",
        ("the logs of the end that answered", "the SIP status meaning (RFC 3261 §21)"),
    )  # fmt: skip


# -- step 2: TURN ------------------------------------------------------------------------------


def _turn(view: _View) -> Diagnosis | None:
    cms, turn = view.callee, view.turn
    successes = view.stun("Allocate Success Response", src=turn, dst=cms, delivered=True)
    errors = view.stun("Allocate Error Response", src=turn, dst=cms, delivered=True)
    requests = view.stun("Allocate Request", src=cms, dst=turn)
    if successes:
        return None
    step = "TURN allocation"
    if not requests:
        refused = [r for r in view.trace.refused if r.client == cms]
        evidence = [f"{cms} could not connect to {r.server_addr}: {r.reason}" for r in refused]
        return Diagnosis(
            "unknown", step, f"{cms} sent no Allocate Request to {turn}.",
            tuple(evidence) or (f"no TURN traffic from {cms}",),
            "CMS cannot reach the TURN server, or has no TURN server configured",
            ("CMS /turnServers (serverAddress, clientAddress, type expressway)",
             "TCP 3478 from CMS to Expressway-E"),
        )  # fmt: skip
    codes = [(e, e.stun_facts.error if e.stun_facts else None) for e in errors]
    unsupported = [e for e, code in codes if code == 442]
    if unsupported:
        return Diagnosis(
            "tcp-relay-unsupported", step,
            f"{turn} refuses TCP relays: Allocate Error 442 (Unsupported Transport Protocol).",
            (f"{cms} → {turn}: Allocate Request TCP (REQUESTED-TRANSPORT 6, RFC 6062)",
             f"{turn} → {cms}: {unsupported[0].summary}"),
            "Expressway-E before X8.9 has no TCP TURN (RFC 6062); CMS needs it for Skype "
            "content sharing",
            ("upgrade Expressway-E to X8.9 or later (TCP TURN for CMS-Skype content)",
             "Configuration > Traversal > TURN: TURN services on, TCP enabled"),
        )  # fmt: skip
    authed = [r for r in requests if r.stun_facts is not None and r.stun_facts.username]
    auth_errors = [e for e, code in codes if code in (401, 431)]
    if authed and len(auth_errors) > len(requests) - len(authed):
        return Diagnosis(
            "turn-auth-failed", step,
            f"{turn} rejects CMS's TURN credentials: every Allocate with MESSAGE-INTEGRITY is "
            "answered 401.",
            (f"{cms} → {turn}: {authed[0].summary}",
             f"{turn} → {cms}: {auth_errors[-1].summary}",
             f"{len(authed)} authenticated Allocate(s), no Allocate Success Response"),
            "CMS's TURN username or password differs from the Expressway-E local "
            "authentication database entry (long-term credentials, RFC 5389 §10.2)",
            ("CMS /turnServers username and password",
             "Expressway-E: Configuration > Authentication > Devices > Local database",
             f"the realm CMS uses matches Expressway-E's ({_realm(view) or 'TANDBERG'})"),
        )  # fmt: skip
    if not codes:
        answers = view.stun("Allocate", src=turn, dst=cms)
        answers = [a for a in answers if a.stun_facts is not None and not a.stun_facts.is_request]
        journeys = [r.journey for r in requests if r.journey is not None]
        if answers:
            lost = [a.journey for a in answers if a.journey is not None]
            where = (
                f"{turn} answered {len(answers)} time(s) ({answers[0].summary}); none reached "
                f"{cms}: {where_lost(lost, cms)}"
            )
        elif not any(j.reached(turn) for j in journeys):
            where = f"none reached {turn}: {where_lost(journeys, turn)}"
        else:
            where = f"{turn} got them and never answered"
        return Diagnosis(
            "unknown", step, f"{cms}'s Allocate Requests got no answer back.",
            (f"{cms} → {turn}: {len(requests)} Allocate Request(s)", where),
            "TURN requests or answers are lost between CMS and Expressway-E (TCP 3478)",
            ("captures on both sides of the firewall between CMS and Expressway-E, TCP 3478",),
        )  # fmt: skip
    return Diagnosis(
        "unknown", step, f"{cms} got no TURN allocation; the last answer: {codes[-1][0].summary}.",
        tuple(f"{turn} → {cms}: {e.summary}" for e, _ in codes),
        "the TURN server refuses the allocation",
        ("Expressway-E TURN status and capacity (relay count)",),
    )  # fmt: skip


def _realm(view: _View) -> str | None:
    for record in view.stun("Allocate Error Response", src=view.turn):
        facts = record.stun_facts
        if facts is not None and facts.realm:
            return facts.realm
    return None


# -- step 3: the relay connection ----------------------------------------------------------------


def _relay_connection(view: _View) -> Diagnosis | None:
    cms, turn = view.callee, view.turn
    relay = _relay_address(view)
    step = "relay connection"
    binds = view.stun("ConnectionBind Success Response", src=turn, dst=cms, delivered=True)
    if binds:
        return None
    announced = view.stun("ConnectionAttempt", src=turn, dst=cms)
    attempts = [a for a in announced if a.delivered]
    to_relay: list[ConnectionRecord] = [
        c for c in view.trace.connections.values() if relay is not None and c.server_addr == relay
    ]
    refused = [r for r in view.trace.refused if relay is not None and r.server_addr == relay]
    if attempts:
        bind_requests = view.stun("ConnectionBind Request", src=cms, dst=turn)
        if any(r.delivered for r in bind_requests):
            return None  # a bind reached the server; the checks' step tells the rest
        peer = to_relay[0] if to_relay else None
        lost = [r.journey for r in bind_requests if r.journey is not None]
        evidence = [
            f"{turn} → {cms}: {attempts[0].summary} (t={attempts[0].t:.3f} s)",
            f"{cms} sent {_count(len(lost), 'ConnectionBind Request')} on a new connection; "
            f"none reached {turn}: {where_lost(lost, turn)}"
            if lost else f"no ConnectionBind Request from {cms} on a new connection",
        ]  # fmt: skip
        if peer is not None and peer.closed is not None:
            evidence.append(
                f"{turn} closed the peer connection from {peer.client_addr} "
                f"{peer.closed - attempts[0].t:.1f} s after the ConnectionAttempt"
            )
        return Diagnosis(
            "connection-bind-missing", step,
            f"{cms} never bound the peer's connection: no ConnectionBind after the "
            "ConnectionAttempt, so the relay never carried media.",
            tuple(evidence),
            "CMS did not open the data connection to Expressway-E's TURN port (RFC 6062 §4.3), "
            "or could not: Expressway-E closes the peer connection 30 s after the "
            "ConnectionAttempt when no bind comes",
            ("TCP 3478 from CMS to Expressway-E for a second (data) connection",
             "CMS's TURN logs for the ConnectionAttempt",
             "CMS software version (TCP TURN support for Skype content)"),
        )  # fmt: skip
    if refused:
        r = refused[0]
        return Diagnosis(
            "relay-unreachable", step,
            f"The Skype side cannot connect to CMS's relay candidate {relay}: {r.reason}.",
            (f"{r.client} → {r.server_addr}: TCP connect {r.reason} at t={r.t:.3f} s",
             f"no ConnectionAttempt from {turn} to {cms}"),
            "a firewall blocks the Expressway-E relay port range in front of the Skype Edge's "
            "address, or Expressway-E is not listening there",
            ("the firewall between the Skype Edge and Expressway-E: TCP to the TURN relay "
             "range (default 24000-29999) on Expressway-E's public address",
             "Expressway-E: Configuration > Traversal > TURN, relay port range",
             "which address CMS advertised as relay candidate (NAT / dual NIC)"),
        )  # fmt: skip
    reset = [c for c in to_relay if c.reset and c.closed_by == turn]
    if reset:
        c = reset[0]
        perms = view.stun("CreatePermission Request", src=cms, dst=turn)
        evidence = [
            f"{c.client} connected to the relay {c.server_addr} from {c.client_addr}; {turn} "
            f"reset it at t={c.closed or 0:.3f} s",
            f"no ConnectionAttempt from {turn} to {cms}",
        ]
        evidence.append(
            f"{cms} created no permission (no CreatePermission Request)"
            if not perms
            else f"{cms}'s CreatePermission did not cover {c.client_addr.host}"
        )
        return Diagnosis(
            "permission-missing", step,
            f"{turn} rejects the peer's connection to the relay: there is no permission for "
            f"{c.client_addr.host}.",
            tuple(evidence),
            "the TURN server enforces permissions for incoming TCP connections (RFC 6062 §5.3) "
            "and CMS installed none for the Skype Edge's address",
            ("whether CMS sends CreatePermission for the remote candidate's address",
             "the Expressway-E version and its permission handling for TCP relays"),
        )  # fmt: skip
    if not to_relay:
        return Diagnosis(
            "relay-unreachable", step,
            f"Nobody connected to CMS's relay candidate {relay}.",
            (f"no TCP connection to {relay}", f"no ConnectionAttempt from {turn} to {cms}"),
            "the Skype side did not get, or could not use, the relay candidate from CMS's answer",
            ("the 200 OK's SDP: a=candidate ... typ relay with Expressway-E's public address",
             "the Skype Edge's media relay to the Expressway-E relay range"),
        )  # fmt: skip
    peer = to_relay[0]
    lost = [a.journey for a in announced if a.journey is not None]
    evidence = [
        f"{peer.client} connected to the relay {peer.server_addr} from {peer.client_addr} "
        f"at t={peer.opened:.3f} s",
        f"{turn} sent {len(lost)} ConnectionAttempt(s) for it; none reached {cms}: "
        f"{where_lost(lost, cms)}"
        if lost
        else f"{turn} sent no ConnectionAttempt to {cms}",
        f"so {cms} never bound it",
    ]
    if peer.closed is not None:
        evidence.append(
            f"{peer.closed_by} closed that connection {peer.closed - peer.opened:.1f} s later"
        )
    return Diagnosis(
        "connection-bind-missing", step,
        f"The peer's connection to the relay was never bound: {cms} got no ConnectionAttempt "
        "for it.",
        tuple(evidence),
        "the ConnectionAttempt indication (RFC 6062 §4.3) is lost between Expressway-E and "
        "CMS, or Expressway-E does not send it",
        ("CMS's TURN control connection to Expressway-E (TCP 3478): is it still up?",
         "Expressway-E's TURN logs for the incoming peer connection"),
    )  # fmt: skip


# -- step 4: ICE checks -------------------------------------------------------------------------


def _direction(view: _View, sender: str, answerer: str) -> tuple[bool, list[str]]:
    """Whether ``sender``'s checks were answered by ``answerer`` and the answers came back,
    with the evidence: how many were sent, where the lost ones ended."""
    requests = view.stun("Binding Request", src=sender)
    if not requests:
        return False, [f"{sender} sent no connectivity check"]
    journeys = [r.journey for r in requests if r.journey is not None]
    delivered = [j for j in journeys if j.reached(answerer)]
    if not delivered:
        what = f"{sender} sent {_count(len(journeys), 'check')} (Binding Request)"
        return False, [f"{what}; none reached {answerer}: {where_lost(journeys, answerer)}"]
    first = min(h.fate_t or h.t for j in delivered for h in j.hops if h.dst == answerer)
    answers = [a for a in view.stun("Binding Success Response", src=answerer) if a.t >= first]
    if not answers:
        return False, [
            f"{_count(len(delivered), 'check')} of {sender} reached {answerer}, which sent no "
            "Binding Success Response"
        ]
    back = [a.journey for a in answers if a.journey is not None]
    if not any(j.reached(sender) for j in back):
        what = f"{answerer} answered {sender}'s checks {_count(len(back), 'time')}"
        return False, [f"{what}; none reached {sender}: {where_lost(back, sender)}"]
    return True, [f"{sender}'s checks were answered by {answerer} and the answers got back"]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _ice(view: _View) -> Diagnosis | None:
    cms, client = view.callee, view.caller
    forward_ok, forward = _direction(view, cms, client)
    back_ok, backward = _direction(view, client, cms)
    if forward_ok and back_ok:
        return None
    step = "ICE checks"
    if not forward_ok and not back_ok and not view.stun("Binding Request", relayed=None):
        return Diagnosis(
            "unknown", step, "No connectivity checks were sent at all.", (*forward, *backward),
            "neither end started ICE on the relay", ("the SDP candidates of both ends",),
        )  # fmt: skip
    which = (
        f"{client} → {cms} works, {cms} → {client} does not"
        if back_ok
        else f"{cms} → {client} works, {client} → {cms} does not"
        if forward_ok
        else "neither direction completes"
    )
    return Diagnosis(
        "one-way-binding", step,
        f"The ICE checks succeed in one direction only ({which}): the candidate pair never "
        "becomes valid both ways, so no reINVITE confirms the sharing.",
        (*forward, *backward),
        "STUN binding traffic is lost one way on the media path (a firewall or ALG that "
        "passes the TCP connection but drops framed STUN one way); the lab document's check: "
        "there must be a Binding Request and a Binding Success Response in each direction",
        ("capture on Expressway-E's relay port and CMS's data connection: look for "
         "00 6c 00 01 (Binding Request) and 01 01 (Binding Success Response) both ways",
         "firewall / ALG inspection between the Skype Edge and Expressway-E",
         "the Skype Edge's media relay logs"),
    )  # fmt: skip


# -- step 5: the reINVITE and the call ----------------------------------------------------------


def _reinvite(view: _View) -> Diagnosis | None:
    refused = reinvite_refusal(view.sip_msgs, view.caller, view.callee)
    if refused is not None:
        sender, answer = refused
        return _refused(view, answer, "reINVITE", f"{sender}'s sharing reINVITE")
    first = _invite_of(view)
    assert first is not None
    if not reinvites(view.sip_msgs, first[1].call_id, view.caller, view.callee):
        return Diagnosis(
            "unknown", "reINVITE", "The checks succeeded both ways, but no reINVITE followed.",
            (), "the controlling agent did not re-offer", ("ICE roles of both ends",),
        )  # fmt: skip
    return None


def _call_up(view: _View) -> Diagnosis:
    cms, turn, client = view.callee, view.turn, view.caller
    first = _invite_of(view)
    assert first is not None
    acks = [r for r, f in view.sip_msgs if f.method == "ACK" and r.dst in (client, cms)]
    setup = (acks[-1].t - first[0].t) if acks else 0.0
    bye = next((r for r, f in view.sip_msgs if f.method == "BYE"), None)
    end = bye.t if bye is not None else float("inf")
    data = [
        c for c in view.trace.connections.values()
        if {c.client, c.server} == {cms, turn} and c.id != _control_id(view)
        and c.opened <= end
    ]  # fmt: skip
    lost = [c for c in data if c.closed is not None and c.closed < end and c.closed_by != cms]
    if lost:
        c = lost[0]
        closed = c.closed if c.closed is not None else end
        refreshes = [
            r for r in view.stun("Refresh Request", src=cms, dst=turn)
            if r.stun_facts is not None and r.stun_facts.lifetime != 0
        ]  # fmt: skip
        allocated = view.stun("Allocate Success Response", src=turn, dst=cms, delivered=True)
        facts = allocated[0].stun_facts if allocated else None
        lifetime = facts.lifetime if facts is not None else None
        last_refresh = max([allocated[0].t, *(r.t for r in refreshes)]) if allocated else 0.0
        if (
            lifetime is not None and c.closed_by == turn
            and closed >= last_refresh + lifetime - 1.0
        ):  # fmt: skip
            return Diagnosis(
                "allocation-expired", "call up",
                f"The relay allocation expired {lifetime} s after its last refresh: "
                f"{turn} closed CMS's data connection at t={closed:.1f} s and the media path "
                "with it.",
                (f"{turn} → {cms}: Allocate Success Response lifetime: {lifetime}",
                 f"{cms} → {turn}: {len(refreshes)} Refresh Request(s), the last at "
                 f"t={last_refresh:.1f} s",
                 f"{turn} closed the data connection at t={closed:.1f} s (RFC 5766 §5: an "
                 "allocation expires without Refresh)"),
                "CMS stopped refreshing its TURN allocation (RFC 5766 §7: Refresh before the "
                "lifetime ends)",
                ("CMS's TURN logs for Refresh failures (438 Stale Nonce, 401)",
                 "the allocation lifetime Expressway-E grants"),
            )  # fmt: skip
        who = c.closed_by or "?"
        return Diagnosis(
            "media-path-lost", "call up",
            f"The sharing was established, then the relay's data connection was "
            f"{'reset' if c.reset else 'closed'} by {who} at t={closed:.3f} s, before the "
            "hang-up.",
            (f"data connection {c.client_addr} ↔ {c.server_addr}: "
             f"{'RST' if c.reset else 'FIN'} by {who} at t={closed:.3f} s",
             f"the call was still up ({f'BYE at t={end:.3f} s' if bye else 'no BYE yet'})"),
            "the TCP session through the firewall or Expressway-E ended under the call (an "
            "idle timeout, a firewall state flush, a restart)",
            ("firewall TCP idle timeouts on the relay range (keepalives every few seconds "
             "must pass)", "Expressway-E TURN logs at that time"),
        )  # fmt: skip
    stale = [
        e for e in view.trace.messages
        if (e.src, e.dst) == (turn, cms) and e.stun_facts is not None
        and e.stun_facts.error == 438
    ]  # fmt: skip
    glare = [
        (r, f) for r, f in view.sip_msgs
        if f.status == 491 and f.cseq_method == "INVITE" and r.delivered and r.dst in (client, cms)
    ]  # fmt: skip
    if glare:
        evidence = []
        for record, _ in glare:
            loser = record.dst
            evidence.append(
                f"{loser} got 491 Request Pending to its reINVITE at "
                f"t={record.fate_t or record.t:.3f} s (the other end's crossed it)"
            )
            retry = next(
                (r for r, f in view.sip_msgs
                 if f.method == "INVITE" and f.to_tag is not None and r.src == loser
                 and r.t > record.t),
                None,
            )  # fmt: skip
            if retry is not None:
                evidence.append(
                    f"{loser} sent its reINVITE again {retry.t - record.t:.2f} s later "
                    f"(t={retry.t:.3f} s)"
                )
        evidence.append(f"setup took {setup:.3f} s (INVITE to the reINVITE's ACK)")
        return Diagnosis(
            "glare-recovered", "call up",
            "The sharing works; on the way both ends re-offered at the same moment (glare), "
            "one got 491 and retried after a random wait, as RFC 3261 §14.1 says.",
            tuple(evidence),
            "both user agents send the post-ICE reINVITE (RFC 5245 §9.1.3 gives it to the "
            "controlling agent alone)",
            ("which side sends the reINVITE on each end (ICE role); the retry wait (2.1-4 s "
             "for the side that chose the Call-ID, 0-2 s for the other) adds to setup",),
        )  # fmt: skip
    links = _link_round_trips(view)
    slow = {k: v for k, v in links.items() if v > SLOW_LINK}
    if setup > SLOW_SETUP or slow:
        worst = sorted(slow.items(), key=lambda kv: -kv[1])
        return Diagnosis(
            "slow-network", "call up",
            f"The sharing works, but setup took {setup:.3f} s (INVITE to the reINVITE's ACK).",
            tuple(f"round trip {a} ↔ {b}: {rtt * 1000:.0f} ms (a request and its 100 Trying)"
                  for (a, b), rtt in worst),  # fmt: skip
            "latency on the links shown; ICE and TURN each add round trips over them",
            ("the network path between the actors with the slowest round trip",),
        )  # fmt: skip
    method = stale[0].stun_facts.method if stale and stale[0].stun_facts else ""
    recovered = stale and view.stun(f"{method} Success Response", src=turn, dst=cms)
    if stale and any(r.t > stale[0].t for r in recovered or ()):
        return Diagnosis(
            "stale-nonce-recovered", "call up",
            "The sharing works; on the way CMS's nonce went stale and it retried.",
            (f"{turn} → {cms}: {stale[0].summary} at t={stale[0].t:.3f} s",
             f"{cms} retried with the new nonce and the request succeeded"),
            "Expressway-E's nonce lifetime is shorter than the time between CMS's requests; "
            "CMS recovers as RFC 5389 §10.2.4 says (438 then a retry)",
            ("nothing to fix; if 438s are frequent, compare the nonce lifetime with CMS's "
             "refresh interval",),
        )  # fmt: skip
    return Diagnosis(
        "healthy",
        "call up",
        f"The sharing call worked: relay, ConnectionBind, checks both ways and the reINVITE "
        f"(setup {setup * 1000:.1f} ms).",
    )


def _control_id(view: _View) -> int | None:
    first = view.stun("Allocate Request", src=view.callee, dst=view.turn)
    return first[0].connection if first else None


def _link_round_trips(view: _View) -> dict[tuple[str, str], float]:
    """Per SIP link: the time from a request sent on it to the 100 Trying coming back."""
    out: dict[tuple[str, str], float] = {}
    sent: dict[tuple[str, str, str], float] = {}
    for record, facts in view.sip_msgs:
        if facts.method == "INVITE":
            sent.setdefault((record.src, record.dst, facts.branch), record.t)
        elif facts.status == 100:
            t0 = sent.get((record.dst, record.src, facts.branch))
            if t0 is not None:
                a, b = sorted((record.dst, record.src))
                out[(a, b)] = max(out.get((a, b), 0.0), record.t - t0)
    return out
