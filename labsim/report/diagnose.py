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

from sipmessage import Request, Response

from labsim.report.outcome import SipMessages, reinvite_refusal, sip_messages
from labsim.trace import ConnectionRecord, MessageRecord, Trace
from labsim.wire import WireError, sip, stun
from labsim.wire.address import Address

#: Every verdict, in the order of the call's steps (scenario ``expect.diagnosis`` values).
DIAGNOSES = (
    "healthy", "stale-nonce-recovered", "slow-network", "presenter-not-allowed",
    "turn-auth-failed", "tcp-relay-unsupported", "relay-unreachable", "permission-missing",
    "connection-bind-missing", "one-way-binding", "allocation-expired", "media-path-lost",
    "no-sip-path", "call-rejected", "unknown",
)  # fmt: skip

#: Setup (INVITE → the reINVITE's ACK) slower than this is worth a word.
SLOW_SETUP = 1.0
#: A link whose round trip (a request and the 100 Trying it gets back) is over this is slow.
SLOW_LINK = 0.1


@dataclass(frozen=True)
class Diagnosis:
    verdict: str
    """One of :data:`DIAGNOSES`."""
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

    def stun(self, prefix: str, src: str | None = None, dst: str | None = None,
             relayed: bool | None = False) -> list[MessageRecord]:  # fmt: skip
        return [
            m for m in self.trace.messages
            if m.protocol == "STUN" and m.summary.startswith(prefix)
            and (src is None or m.src == src) and (dst is None or m.dst == dst)
            and (relayed is None or m.relayed == relayed)
        ]  # fmt: skip

    def reached(self, record: MessageRecord, actor: str) -> MessageRecord | None:
        """The copy of ``record`` (same bytes' summary) delivered to ``actor``, if any."""
        if record.dst == actor:
            return record
        return next(
            (m for m in self.trace.messages
             if m.dst == actor and m.protocol == record.protocol and m.summary == record.summary
             and m.t >= record.t),
            None,
        )  # fmt: skip

    def last_hop(self, record: MessageRecord) -> MessageRecord:
        """The last hop on which ``record``'s message (by summary) was seen."""
        copies = [
            m for m in self.trace.messages
            if m.protocol == record.protocol and m.summary == record.summary and m.t >= record.t
        ]  # fmt: skip
        return copies[-1] if copies else record


def _hop(m: MessageRecord) -> str:
    return f"{m.src} → {m.dst}"


def _relay_address(view: _View) -> Address | None:
    for record in view.stun("Allocate Success Response", src=view.turn, dst=view.callee):
        try:
            message = stun.decode_control(record.data)
        except WireError:
            continue
        relayed = message.get(stun.XorRelayedAddress) if isinstance(message, stun.Message) else None
        if relayed is not None:
            return Address(str(relayed.address), relayed.port)
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


def _invite_of(view: _View) -> tuple[MessageRecord, Request] | None:
    for record, message in view.sip_msgs:
        if (
            record.src == view.caller
            and isinstance(message, Request)
            and message.method == "INVITE"
        ):
            return record, message
    return None


def _sip_invite(view: _View) -> Diagnosis | None:
    first = _invite_of(view)
    if first is None:
        return Diagnosis("unknown", "SIP INVITE", f"{view.caller} sent no INVITE.")
    record, invite = first
    call_id = sip.call_id(invite)
    hops = [
        r for r, m in view.sip_msgs
        if isinstance(m, Request) and m.method == "INVITE" and sip.call_id(m) == call_id
        and sip.to_tag(m) is None
    ]  # fmt: skip
    finals = [
        (r, m) for r, m in view.sip_msgs
        if r.dst == view.caller and isinstance(m, Response) and m.code >= 200
        and sip.call_id(m) == call_id and sip.cseq(m).method == "INVITE"
        and sip.cseq(m).sequence == sip.cseq(invite).sequence
    ]  # fmt: skip
    if not any(r.dst == view.callee for r in hops):
        last = hops[-1] if hops else record
        evidence = [f"the INVITE was last seen on {_hop(last)} at t={last.t:.3f} s"]
        evidence += [
            f"{r.client} could not connect to {r.server_addr}: {r.reason}"
            for r in view.trace.refused
        ]
        if finals:
            evidence.append(f"{view.caller} got {sip.summary(finals[0][1])} back")
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
            r for r, m in view.sip_msgs
            if isinstance(m, Response) and m.code >= 200 and sip.call_id(m) == call_id
            and sip.cseq(m).method == "INVITE" and r.src == view.callee
        ]  # fmt: skip
        evidence = [f"{view.callee} got the INVITE (t={hops[-1].t:.3f} s)"]
        if answers:
            last = view.last_hop(answers[0])
            evidence.append(
                f"its {answers[0].summary} was last seen on {_hop(last)}; it never reached "
                f"{view.caller}"
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
    if final.code >= 300:
        return _refused(view, final, "SIP INVITE", "the INVITE")
    return None


def _refused(view: _View, response: Response, step: str, what: str) -> Diagnosis:
    diag = None
    try:
        diag = sip.ms_diagnostics_public(response) or sip.ms_diagnostics(response)
    except WireError:
        pass
    text = f"{what} was answered {sip.summary(response)}"
    evidence = [text + (f" with ms-diagnostics-public {diag}" if diag else "")]
    if diag is not None and diag.code == 21002:
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
    successes = view.stun("Allocate Success Response", src=turn, dst=cms)
    errors = view.stun("Allocate Error Response", src=turn, dst=cms)
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
    codes = [e.summary for e in errors]
    if any("error-code: 442" in c for c in codes):
        return Diagnosis(
            "tcp-relay-unsupported", step,
            f"{turn} refuses TCP relays: Allocate Error 442 (Unsupported Transport Protocol).",
            (f"{cms} → {turn}: Allocate Request TCP (REQUESTED-TRANSPORT 6, RFC 6062)",
             f"{turn} → {cms}: {next(c for c in codes if 'error-code: 442' in c)}"),
            "Expressway-E before X8.9 has no TCP TURN (RFC 6062); CMS needs it for Skype "
            "content sharing",
            ("upgrade Expressway-E to X8.9 or later (TCP TURN for CMS-Skype content)",
             "Configuration > Traversal > TURN: TURN services on, TCP enabled"),
        )  # fmt: skip
    authed = [r for r in requests if " user: " in r.summary]
    auth_errors = [c for c in codes if "error-code: 401" in c or "error-code: 431" in c]
    if authed and len(auth_errors) > len(requests) - len(authed):
        return Diagnosis(
            "turn-auth-failed", step,
            f"{turn} rejects CMS's TURN credentials: every Allocate with MESSAGE-INTEGRITY is "
            "answered 401.",
            (f"{cms} → {turn}: {authed[0].summary}",
             f"{turn} → {cms}: {auth_errors[-1]}",
             f"{len(authed)} authenticated Allocate(s), no Allocate Success Response"),
            "CMS's TURN username or password differs from the Expressway-E local "
            "authentication database entry (long-term credentials, RFC 5389 §10.2)",
            ("CMS /turnServers username and password",
             "Expressway-E: Configuration > Authentication > Devices > Local database",
             f"the realm CMS uses matches Expressway-E's ({_realm(view) or 'TANDBERG'})"),
        )  # fmt: skip
    if not codes:
        sent = view.stun("Allocate", src=turn, relayed=None)
        where = (
            f"{turn} answered ({sent[0].summary}) but nothing reached {cms}"
            if sent
            else f"{turn} never answered"
        )
        return Diagnosis(
            "unknown", step, f"{cms}'s Allocate Requests got no answer back.",
            (f"{cms} → {turn}: {len(requests)} Allocate Request(s)", where),
            "TURN answers are lost on the way back to CMS (a one-way path on TCP 3478)",
            ("captures on both sides of the firewall between CMS and Expressway-E, TCP 3478",),
        )  # fmt: skip
    return Diagnosis(
        "unknown", step, f"{cms} got no TURN allocation; the last answer: {codes[-1]}.",
        tuple(f"{turn} → {cms}: {c}" for c in codes),
        "the TURN server refuses the allocation",
        ("Expressway-E TURN status and capacity (relay count)",),
    )  # fmt: skip


def _realm(view: _View) -> str | None:
    for record in view.stun("Allocate Error Response", src=view.turn):
        if "realm: " in record.summary:
            return record.summary.split("realm: ", 1)[1].split(" ", 1)[0]
    return None


# -- step 3: the relay connection ----------------------------------------------------------------


def _relay_connection(view: _View) -> Diagnosis | None:
    cms, turn = view.callee, view.turn
    relay = _relay_address(view)
    step = "relay connection"
    binds = view.stun("ConnectionBind Success Response", src=turn, dst=cms)
    if binds:
        return None
    attempts = view.stun("ConnectionAttempt Indication", src=turn, dst=cms)
    to_relay: list[ConnectionRecord] = [
        c for c in view.trace.connections.values() if relay is not None and c.server_addr == relay
    ]
    refused = [r for r in view.trace.refused if relay is not None and r.server_addr == relay]
    if attempts:
        bind_requests = view.stun("ConnectionBind Request", src=cms, dst=turn)
        if bind_requests:
            return None  # a bind was tried; the checks' step tells the rest
        peer = to_relay[0] if to_relay else None
        evidence = [f"{turn} → {cms}: {attempts[0].summary} (t={attempts[0].t:.3f} s)",
                    f"no ConnectionBind Request from {cms} on a new connection"]  # fmt: skip
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
    evidence = [
        f"{peer.client} connected to the relay {peer.server_addr} from {peer.client_addr} "
        f"at t={peer.opened:.3f} s",
        f"no ConnectionAttempt from {turn} reached {cms}, so {cms} never bound it",
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
    """Whether ``sender``'s checks were answered by ``answerer`` and the answers came back."""
    requests = view.stun("Binding Request", src=sender)
    if not requests:
        return False, [f"{sender} sent no connectivity check"]
    delivered = [r for r in requests if view.reached(r, answerer)]
    if not delivered:
        what = f"{sender} sent {len(requests)} check(s) (Binding Request)"
        return False, [_lost(view, requests[0], answerer, what)]
    answers = [
        a for a in view.stun("Binding Success Response", src=answerer) if a.t >= delivered[0].t
    ]
    if not answers:
        return False, [f"{answerer} got {sender}'s check but sent no Binding Success Response"]
    if not any(view.reached(a, sender) for a in answers):
        what = f"{answerer} answered {sender}'s check (Binding Success Response)"
        return False, [_lost(view, answers[0], sender, what)]
    return True, [f"{sender}'s checks were answered by {answerer} and the answers got back"]


def _lost(view: _View, record: MessageRecord, to: str, what: str) -> str:
    return f"{what}, but none reached {to}: last seen on {_hop(view.last_hop(record))}"


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
    call_id = sip.call_id(first[1])
    if not any(
        isinstance(m, Request) and m.method == "INVITE" and sip.call_id(m) == call_id
        and sip.to_tag(m) is not None
        for _, m in view.sip_msgs
    ):  # fmt: skip
        return Diagnosis(
            "unknown", "reINVITE", "The checks succeeded both ways, but no reINVITE followed.",
            (), "the controlling agent did not re-offer", ("ICE roles of both ends",),
        )  # fmt: skip
    return None


def _call_up(view: _View) -> Diagnosis:
    cms, turn, client = view.callee, view.turn, view.caller
    first = _invite_of(view)
    assert first is not None
    acks = [
        r for r, m in view.sip_msgs
        if isinstance(m, Request) and m.method == "ACK" and r.dst in (client, cms)
    ]  # fmt: skip
    setup = (acks[-1].t - first[0].t) if acks else 0.0
    bye = next((r for r, m in view.sip_msgs if isinstance(m, Request) and m.method == "BYE"), None)
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
            r for r in view.stun("Refresh Request", src=cms, dst=turn) if " lifetime: 0" not in
            r.summary
        ]  # fmt: skip
        allocated = view.stun("Allocate Success Response", src=turn, dst=cms)
        lifetime = _lifetime(allocated[0].summary) if allocated else None
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
        if e.protocol == "STUN" and (e.src, e.dst) == (turn, cms)
        and "error-code: 438" in e.summary
    ]  # fmt: skip
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
    method = stale[0].summary.split(" ", 1)[0] if stale else ""
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


def _lifetime(summary: str) -> int | None:
    if "lifetime: " not in summary:
        return None
    try:
        return int(summary.split("lifetime: ", 1)[1].split(" ", 1)[0])
    except ValueError:
        return None


def _link_round_trips(view: _View) -> dict[tuple[str, str], float]:
    """Per SIP link: the time from a request sent on it to the 100 Trying coming back."""
    out: dict[tuple[str, str], float] = {}
    sent: dict[tuple[str, str, str], float] = {}
    for record, message in view.sip_msgs:
        if isinstance(message, Request) and message.method == "INVITE":
            sent.setdefault((record.src, record.dst, _branch(message)), record.t)
        elif isinstance(message, Response) and message.code == 100:
            t0 = sent.get((record.dst, record.src, _branch(message)))
            if t0 is not None:
                a, b = sorted((record.dst, record.src))
                out[(a, b)] = max(out.get((a, b), 0.0), record.t - t0)
    return out


def _branch(message: Request | Response) -> str:
    try:
        vias = sip.vias(message)
    except WireError:
        return ""
    return str(vias[0].parameters.get("branch", "")) if vias else ""
