"""What went wrong in a run, and what to do about it on the real systems, in plain words.

The diagnosis reasons from evidence (:mod:`labsim.report.evidence`): what was sent, on which
hop, what became of it and who received it; error answers; connects that never opened;
connections that ended under the call; steps an actor never took; and who ended the call,
when and why. It reads nothing else: not the scenario, not the fault rules' words, not the
actors' logs, so it holds for faults nobody wrote yet.

The verdicts are data: :data:`RULES`, in call order, each a predicate over one anomaly (and the
evidence around it) with its words: what happened, the likely cause, what to check on the real
systems. The choice:

* the call reached sharing, ended as planned (the user's BYE, answered) and nothing that
  happened on the way broke it → ``healthy`` when nothing happened at all, else the name of
  what recovered (``stale-nonce-recovered``, ``glare-recovered``, ``recovered``) or
  ``slow-network``. Never ``healthy`` when anything departed from the healthy call;
* otherwise the first failure in call order (:data:`~labsim.report.evidence.STEPS`, then time)
  is the verdict, found by the first rule that matches it; the other failures are listed
  under "also", what recovered under "recovered";
* no failure found although the call did not work → ``unknown``, with every anomaly found.

The meeting's audio/video call before the share is a dialog of its own (Cisco 212580); its
faults (step ``A/V call``, after the share's up to the hang-up) are the verdict only when nothing
of the share's
explains the run, and words of their own say so: a lost audio/video INVITE is a SIP path that
does not carry the meeting's call, never "the sharing INVITE". A share that worked and ended as
planned beside an audio/video call that did not (never set up, or not hung up as planned) is not
a working call: the audio/video call's faults are the verdict then.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from labsim.report.evidence import Anomaly, Evidence, Step, gather, lines
from labsim.report.outcome import Outcome, outcome
from labsim.trace import Trace
from labsim.vocabulary import Verdict
from labsim.wire.facts import SipFacts

#: Setup (INVITE → the reINVITE's ACK) slower than this is worth a word.
SLOW_SETUP = 1.0
#: A link whose round trip (a request and the 100 Trying it gets back) is over this is slow.
SLOW_LINK = 0.1


@dataclass(frozen=True)
class Diagnosis:
    verdict: Verdict
    """One of :data:`~labsim.vocabulary.VERDICTS`."""
    step: str
    """The step of the call where it failed (``call up`` when it did not)."""
    summary: str
    """One sentence."""
    evidence: tuple[str, ...] = ()
    """The facts behind the verdict: message, hop, count and time."""
    cause: str = ""
    """The likely cause."""
    advice: tuple[str, ...] = ()
    """What to check or change on the real systems."""
    ended: str = ""
    """Who ended the call, when and why."""
    also: tuple[str, ...] = ()
    """Other failures, after the first in call order."""
    recovered: tuple[str, ...] = ()
    """What departed from the healthy call without breaking it, and why it did not."""
    failure: Anomaly | None = field(default=None, repr=False, compare=False)
    """The first failure in call order, which the verdict explains (None when the call
    worked, or nothing explains it)."""

    def text(self) -> str:
        lines = [f"Diagnosis: {self.verdict} (step: {self.step})", f"  {self.summary}"]
        lines += _section("Evidence", self.evidence)
        lines += [f"  Ended: {self.ended}"] if self.ended else []
        lines += [f"  Likely cause: {self.cause}"] if self.cause else []
        lines += _section("Check", self.advice)
        lines += _section("Recovered on the way", self.recovered)
        lines += _section("Also found after the first failure (often its consequences)", self.also)
        return "\n".join(lines)

    def as_dict(self) -> dict[str, object]:
        return {
            "verdict": self.verdict, "step": self.step, "summary": self.summary,
            "evidence": list(self.evidence), "cause": self.cause, "advice": list(self.advice),
            "ended": self.ended, "also": list(self.also), "recovered": list(self.recovered),
        }  # fmt: skip


def _section(title: str, items: tuple[str, ...]) -> list[str]:
    return [f"  {title}:", *(f"    - {item}" for item in items)] if items else []


# -- the words of error codes -------------------------------------------------------------------

#: STUN/TURN error codes (RFC 5389 §15.6, RFC 5766 §15, RFC 6062 §6.3) and what they mean here.
STUN_ERRORS: dict[int, tuple[str, str]] = {
    400: ("Bad Request", "the request is malformed"),
    401: ("Unauthorized", "the credentials (long-term, RFC 5389 §10.2) are not accepted"),
    403: ("Forbidden", "the server's policy refuses the request (an address or user it will "
                       "not serve)"),
    420: ("Unknown Attribute", "the server does not understand a required attribute"),
    437: ("Allocation Mismatch", "the server holds no allocation for this 5-tuple (it "
                                 "expired or was never made; RFC 5766 §7.2)"),
    438: ("Stale Nonce", "the nonce expired; the client must retry with the new one"),
    441: ("Wrong Credentials", "the credentials differ from the allocation's (RFC 5766 §4)"),
    442: ("Unsupported Transport Protocol", "the server does not relay that transport (TCP "
                                            "relays need RFC 6062)"),
    446: ("Connection Already Exists", "a connection to that peer exists already (RFC 6062 "
                                       "§5.2)"),
    447: ("Connection Timeout or Failure", "the server could not connect to the peer, or the "
                                           "peer connection to bind is gone (RFC 6062 §5.2, "
                                           "§5.4)"),
    486: ("Allocation Quota Reached", "this user holds as many allocations as allowed"),
    500: ("Server Error", "the server failed"),
    508: ("Insufficient Capacity", "the server has no relay port or capacity left"),
}  # fmt: skip

#: SIP statuses (RFC 3261 §21) and what a refusal of the share means.
SIP_STATUSES: dict[int, str] = {
    403: "the far end forbids the session (policy, or the meeting's roles)",
    404: "the far end does not know the address",
    408: "the far end gave up waiting",
    480: "the far end is not available now",
    481: "the far end knows no such dialog or transaction",
    486: "the far end is busy",
    488: "the far end does not accept the offered session (SDP: media kind, candidates or "
         "attributes it cannot use, RFC 3261 §21.4.26)",
    491: "both ends re-offered at once (glare) and the retry never completed (RFC 3261 §14.1)",
    500: "the far end failed while handling the request",
    503: "the far end is out of service or capacity (RFC 3261 §21.5.4)",
    603: "the far end declined the session (RFC 3261 §21.6.2)",
}  # fmt: skip


def stun_phrase(code: int | None) -> str:
    if code is None:
        return ""
    return f"{code} {STUN_ERRORS.get(code, ('', ''))[0]}".rstrip()


# -- the verdict table ------------------------------------------------------------------------

Words = str | Callable[[Anomaly, Evidence], str]


@dataclass(frozen=True)
class On:
    """What evidence a verdict explains: a predicate over one anomaly (and the evidence
    around it) that says itself in words, for the table in docs/diagnosis.md."""

    test: Callable[[Anomaly, Evidence], bool]
    words: str

    def __call__(self, a: Anomaly, ev: Evidence) -> bool:
        return self.test(a, ev)

    def __and__(self, other: On) -> On:
        return On(lambda a, ev: self(a, ev) and other(a, ev), f"{self.words}, {other.words}")


@dataclass(frozen=True)
class Rule:
    """One verdict: the anomaly it explains, and its words. Templates name the anomaly's
    fields: ``{sender}``, ``{kind}``, ``{where}`` (its hop), ``{code}``, ``{phrase}``, and the
    call's ``{caller}``, ``{callee}``, ``{turn}``, ``{relay}``."""

    verdict: Verdict
    when: On
    summary: Words
    cause: Words
    advice: tuple[str, ...] = ()
    context: Callable[[Evidence], list[str]] | None = None
    """Evidence lines beyond the anomalies: facts of the call that tell causes apart."""


def _is(
    *what: str, step: Step | None = None, methods: tuple[str, ...] = (),
    codes: tuple[int, ...] = (), how: tuple[str, ...] = (), kinds: tuple[str, ...] = (),
) -> On:  # fmt: skip
    def match(a: Anomaly, ev: Evidence) -> bool:
        return (
            (not what or a.what in what) and (step is None or a.step == step)
            and (not methods or a.method in methods) and (not codes or a.code in codes)
            and (not how or a.how in how) and (not kinds or a.kind in kinds)
        )  # fmt: skip

    parts = [" or ".join(what) if what else "any anomaly"]
    parts += [f"of {' or '.join(kinds)}"] if kinds else []
    parts += [f"on {' or '.join(methods)}"] if methods else []
    parts += [f"code {' or '.join(map(str, codes))}"] if codes else []
    parts += [f"({' or '.join(how)})"] if how else []
    parts += [f"in step {step}"] if step else []
    return On(match, " ".join(parts))


def _closed_by_turn(a: Anomaly, ev: Evidence) -> bool:
    """The lost message's connection was closed or reset by the TURN server, its receiver:
    the message was on the wire when the server ended the connection (or came after it did)."""
    if a.how != "lost" or not a.records or a.hop is None or a.hop[1] != ev.turn:
        return False
    conn = ev.trace.connections.get(a.records[0].connection)
    return conn is not None and conn.closed_by == ev.turn


_CLOSED_BY_TURN = On(_closed_by_turn, "with its connection ended by the TURN server")
_DIAG_21002 = On(
    lambda a, ev: isinstance(a.facts, SipFacts) and a.facts.diagnostics_code == 21002,
    "with ms-diagnostics 21002",
)
_FINAL_ANSWER = On(
    lambda a, ev: a.kind.endswith("(INVITE)") and not a.kind.startswith("1"),
    "the INVITE's final answer",
)


_EXPIRED = On(
    lambda a, ev: (
        a.step == "call up" and (a.what == "closed" or (a.what in ("lost", "held")
                                                         and a.method == "Refresh"))
        and ev.expiry is not None
    ),
    "closed, or a lost or held Refresh, in step call up, when the TURN server closed the "
    "callee's TURN connection once the allocation's lifetime ran out",
)  # fmt: skip


def _expiry_summary(a: Anomaly, ev: Evidence) -> str:
    found = ev.expiry
    assert found is not None
    c, lifetime, last = found.connection, found.lifetime, found.last
    return (
        f"The relay allocation expired: its lifetime ({lifetime} s) ran out after the last "
        f"successful Allocate or Refresh (t={last:.1f} s), and {ev.turn} closed {ev.callee}'s "
        f"TURN connection at t={c.closed or 0:.1f} s, and the media path with it."
    )


def _expiry_cause(a: Anomaly, ev: Evidence) -> str:
    refreshes = [
        r for r, f in ev.stun
        if f.method == "Refresh" and f.is_request and r.src == ev.callee and r.hop == 0
        and f.lifetime != 0
    ]  # fmt: skip
    lost = [r for r in refreshes if r.journey is not None and not r.journey.reached(ev.turn)]
    if refreshes and lost:
        where = lost[0].journey.last if lost[0].journey is not None else lost[0]
        return (
            f"{ev.callee} did refresh ({len(refreshes)} Refresh Request(s)), but "
            f"{len(lost)} never reached {ev.turn}: lost on {where.src} → {where.dst}; the "
            "allocation was never extended (RFC 5766 §7)"
        )
    if refreshes:
        last = max(r.t for r in refreshes)
        return (
            f"{ev.callee} sent no Refresh after t={last:.3f} s (its last, which reached "
            f"{ev.turn}), so the allocation ran out (RFC 5766 §7: the client refreshes before "
            "expiry)"
        )
    return (
        f"{ev.callee} sent no Refresh before the lifetime ended (RFC 5766 §7: the client "
        "refreshes before expiry)"
    )


def _relay_address_lines(ev: Evidence) -> list[str]:
    """Where the relayed address points: Expressway-E's own address, or another one (a
    static NAT's public address) that only a NAT or firewall can forward to it."""
    relay, server = ev.relay, ev.turn_server
    if relay is None:
        return [f"{ev.callee} got no relayed address from {ev.turn}"]
    if server is None or relay.host == server.host:
        return [f"the relayed address {relay} is {ev.turn}'s own address (where {ev.callee} "
                "reached its TURN port)"]  # fmt: skip
    return [
        f"the relayed address {relay} (XOR-RELAYED-ADDRESS) is not the address {ev.callee} "
        f"reached {ev.turn}'s TURN port at ({server.host}): {ev.turn} advertises another "
        "address, a static NAT's public one; only a NAT or firewall that forwards it (and "
        "the relay port range) to Expressway-E makes it reachable"
    ]


def _is_av(a: Anomaly) -> bool:
    """An anomaly of the meeting's audio/video call (named ``A/V …`` by the evidence)."""
    return "A/V " in a.kind


_AV = On(lambda a, ev: _is_av(a), "of the meeting's audio/video call")
_AV_SETUP = On(
    lambda a, ev: a.kind == "A/V INVITE" or a.kind.endswith("(A/V INVITE)"),
    "the audio/video INVITE or an answer to it",
)


def _av_words(a: Anomaly, ev: Evidence) -> str:
    """The audio/video call that never got through, and what it meant for the share."""
    if a.what == "held":
        lead = (
            f"The meeting's audio/video call got through too late: {a.sender}'s {a.kind} was "
            f"held {a.how} s on {a.where}, longer than the call waited for it"
        )
    else:
        lead = (
            f"The meeting's audio/video call never got through: {a.sender}'s {a.kind} was "
            f"{_verb(a)} on {a.where}"
        )
    if ev.sharing:
        return f"{lead}; the sharing dialog is another one."
    return f"{lead}; the client shares only once it is in the call, so no sharing INVITE followed."


def _invite_lost_words(a: Anomaly, ev: Evidence) -> str:
    """The sharing INVITE's path, or the audio/video call's when no share followed it."""
    if not ev.sharing and ev.av_calls:
        noun = "The meeting's audio/video call never got through (so no sharing INVITE followed)"
        late = noun.replace("never got through", "got through too late")
        return _words(_lost_words(noun, late), a, ev)
    return _words(_lost_words("The sharing INVITE never got through",
                              "The sharing INVITE got through too late"), a, ev)  # fmt: skip


def _refused_sip(a: Anomaly, ev: Evidence) -> str:
    facts = a.facts
    diag = f" ({facts.diagnostics})" if isinstance(facts, SipFacts) and facts.diagnostics else ""
    what = "the sharing INVITE" if a.kind.endswith("(INVITE)") else "the sharing reINVITE"
    if _is_av(a):
        asked = a.kind.split("(A/V ")[-1].rstrip(")")
        what = f"the meeting's audio/video {asked}"
    return f"{a.sender} refused {what}: {a.kind.split(' (')[0]}{diag}."


def _sip_meaning(a: Anomaly, ev: Evidence) -> str:
    return SIP_STATUSES.get(a.code or 0, "the far end refused the session; the status and any "
                                         "ms-diagnostics say why")  # fmt: skip


def _stun_meaning(a: Anomaly, ev: Evidence) -> str:
    return f"{stun_phrase(a.code)}: {STUN_ERRORS.get(a.code or 0, ('', 'see RFC 5389 §15.6'))[1]}"


def _verb(a: Anomaly) -> str:
    """How a lost message ended on its hop: dropped (a rule took it), left unanswered by its
    receiver, else lost."""
    return {"dropped": "dropped", "unanswered": "left unanswered"}.get(a.how, "lost")


def _lost_words(noun: str, late: str = "") -> Words:
    """``noun`` when the message was lost; ``late`` (default the same) when a delay made it
    arrive after the call had moved on."""

    def words(a: Anomaly, ev: Evidence) -> str:
        if a.what == "held":
            return (
                f"{late or noun}: {a.sender}'s {a.kind} was held {a.how} s on {a.where}, "
                "longer than the call waited for it."
            )
        return f"{noun}: {a.sender}'s {a.kind} was {_verb(a)} on {a.where}."

    return words


#: Every verdict, in call order; the first whose predicate matches the first failure wins.
def _beyond_summary(a: Anomaly, ev: Evidence) -> str:
    return f"The call stopped past this capture point, in step {a.step}: {a.line}."


def _beyond_cause(a: Anomaly, ev: Evidence) -> str:
    path = " → ".join((ev.point or "?", *a.beyond))
    return (
        f"a hop of {path} lost it or its answer, or the far end never sent one: a capture at "
        f"{ev.point} shows what left it and that nothing came back, not where it stopped; a "
        f"capture at {a.beyond[0]} tells the next hop apart"
    )


RULES: tuple[Rule, ...] = (
    # -- what a capture point cannot see (a capture read back, never a run)
    Rule("beyond-capture", _is("beyond"), _beyond_summary, _beyond_cause,
         ("capture at the next actor on the path named (labsim run --capture-at shows what "
          "each point sees), then the one after, until the message is missing",
          "the logs of the far end for the message that never came back")),
    # -- the INVITE and its answer
    Rule("presenter-not-allowed", _is("error") & _DIAG_21002,
         "The Skype meeting refuses to let CMS share: attendees cannot share in this "
         "conference (ms-diagnostics 21002, component ASMCU).",
         "the Skype for Business meeting lets only presenters share, and CMS joined as an "
         "attendee",
         ("in the Skype meeting, right-click the CMS participant and choose Make Presenter",
          "or change the meeting options so that everyone can present",
          "CMS's logs show the same ms-diagnostics-public line")),
    Rule("call-rejected", _is("error", step="SIP answer"), _refused_sip, _sip_meaning,
         ("the logs of the end that answered, at that time",
          "the SIP status meaning (RFC 3261 §21) and any ms-diagnostics in the answer")),
    Rule("no-sip-path", _is("lost", "held", "connect-failed", "closed", step="SIP INVITE"),
         _invite_lost_words,
         "a SIP hop cannot forward it: a missing connection (the traversal zone between "
         "Expressway-C and Expressway-E), a routing rule, or a firewall on the SIP ports",
         ("the traversal zone status on Expressway-C and Expressway-E (Active)",
          "the search rules and dial plan that route the meeting's domain to CMS",
          "TCP 5060/5061 and the traversal port (7001) through the firewalls")),
    Rule("no-sip-path", _is("lost", "held", step="SIP answer") & _FINAL_ANSWER,
         _lost_words("The answer to the INVITE never got back",
                     "The answer to the INVITE came back too late"),
         "the answer is lost on the way back (Record-Route / Via handling on a hop, or a "
         "one-way SIP path)",
         ("SIP logs of each hop for the 200 OK", "the traversal zone in both directions")),
    Rule("ack-lost", _is("lost", "held", step="SIP answer", kinds=("ACK",)),
         "{callee}'s 200 OK was never acknowledged: the ACK was {how_lost} on {where}, so "
         "{callee} kept resending its 200 OK and, 64·T1 after it, ended the call (RFC 3261 "
         "§13.3.1.4).",
         "the ACK goes end to end through every proxy of the Record-Route; one hop does not "
         "forward it (a Record-Route/Route mismatch, a proxy that lost the dialog, a one-way "
         "SIP path)",
         ("the ACK on each hop of the SIP path (Expressway-C's and Expressway-E's logs)",
          "the Record-Route headers of the 200 OK and the Route headers of the ACK",
          "the traversal zone in both directions")),
    # -- TURN
    Rule("turn-port-refused", _is("connect-failed", step="TURN allocation", how=("refused",)),
         "{callee} cannot reach the TURN server: its TCP connect was refused (RST).",
         "nothing listens on the TURN port: the TURN service is off, or listens on another "
         "port or address",
         ("Expressway-E: Configuration > Traversal > TURN: TURN services On, TCP port 3478",
          "CMS /turnServers: serverAddress and tcpPortNumberOverride",
          "a firewall that rejects (RST) TCP 3478 from CMS")),
    Rule("turn-port-blocked",
         _is("connect-failed", step="TURN allocation", how=("timeout", "unreachable")),
         "{callee} cannot reach the TURN server: its TCP connect got no answer at all.",
         "a firewall between CMS and Expressway-E silently drops TCP to the TURN port "
         "(SYNs unanswered), or the address is wrong",
         ("the firewall between CMS and Expressway-E: TCP 3478 from CMS's address",
          "CMS /turnServers serverAddress (Expressway-E's internal address)")),
    Rule("no-turn-server", _is("missing", step="TURN allocation"),
         "{callee} never asked a TURN server for a relay, so its answer offers no relay "
         "candidate the Skype side can reach.",
         "CMS has no TURN server configured (or its TURN configuration is not applied to "
         "this call); the Skype side cannot reach CMS's own address",
         ("CMS API /turnServers: a TURN server of type expressway with serverAddress, "
          "clientAddress, username and password",
          "the 200 OK's SDP: a=candidate lines, is there one of typ relay?")),
    Rule("turn-auth-failed",
         _is("error", step="TURN allocation", methods=("Allocate",), codes=(401, 441)),
         "{turn} rejects {callee}'s TURN credentials: its authenticated Allocate is answered "
         "{phrase}.",
         "CMS's TURN username or password differs from the Expressway-E local "
         "authentication database entry (long-term credentials, RFC 5389 §10.2)",
         ("CMS /turnServers username and password",
          "Expressway-E: Configuration > Authentication > Devices > Local database",
          "the realm CMS uses matches Expressway-E's (TANDBERG by default)")),
    Rule("tcp-relay-unsupported", _is("error", methods=("Allocate",), codes=(442,)),
         "{turn} refuses TCP relays: Allocate answered {phrase}.",
         "Expressway-E before X8.9 has no TCP TURN (RFC 6062); CMS needs it for Skype "
         "content sharing",
         ("upgrade Expressway-E to X8.9 or later (TCP TURN for CMS-Skype content)",
          "Configuration > Traversal > TURN: TURN services on, TCP enabled")),
    Rule("turn-no-capacity", _is("error", methods=("Allocate",), codes=(486, 508)),
         "{turn} has no relay to give: Allocate answered {phrase}.",
         _stun_meaning,
         ("Expressway-E: Status > TURN relays in use, and the licensed relay count",
          "the relay port range (Configuration > Traversal > TURN) against the calls it must "
          "carry", "stale allocations of earlier calls (CMS should release them with a "
          "Refresh of lifetime 0)")),
    Rule("turn-error", _is("error", step="TURN allocation"),
         "{turn} refuses {callee}'s allocation: Allocate answered {phrase}.", _stun_meaning,
         ("Expressway-E's TURN logs at that time", "Expressway-E TURN status and policy")),
    # Before turn-no-answer: the same lost request, but the TURN server itself ended the
    # connection under it, so nothing between the two lost it.
    Rule("turn-connection-reset", _is("lost", step="TURN allocation") & _CLOSED_BY_TURN,
         "{turn} itself ended {callee}'s TURN connection before answering its {kind}, so the "
         "TURN allocation never completed.",
         "the TURN server dropped the connection on its own: a connection limit (more "
         "connections without an allocation than it keeps: a flood, or many clients "
         "connecting at once), its TURN service restarting, or a device in between resetting "
         "connections in its name",
         ("Expressway-E's TURN logs at that time: connections reset or refused",
          "how many TCP connections reach the TURN port at once (other CMS calls, other "
          "clients, scans)")),
    Rule("turn-no-answer", _is("lost", "held", step="TURN allocation"),
         _lost_words("The TURN allocation never completed",
                     "The TURN allocation did not complete in time"),
         "TURN requests or answers are lost between CMS and Expressway-E (TCP 3478)",
         ("captures on both sides of the firewall between CMS and Expressway-E, TCP 3478",)),
    # -- the relay connection
    Rule("relay-refused", _is("connect-failed", step="relay connection", how=("refused",)),
         "The Skype side's connect to {callee}'s relay candidate {relay} was refused (RST).",
         "nothing accepts on that relayed address: the allocation is gone, Expressway-E does "
         "not listen on that port, or a firewall rejects the connect",
         ("Expressway-E: TURN relays in use: is the allocation still there?",
          "a firewall in front of Expressway-E that rejects TCP to the relay range "
          "(default 24000-29999)"), context=lambda ev: _relay_address_lines(ev)),
    Rule("relay-unreachable", _is("connect-failed", step="relay connection"),
         "The Skype side cannot reach {callee}'s relay candidate {relay}: its TCP connect got "
         "no answer.",
         "a firewall drops TCP to the Expressway-E relay port range in front of the Skype "
         "Edge's address, or the advertised relay address is not reachable (a static NAT "
         "address not forwarded to Expressway-E)",
         ("the firewall between the Skype Edge and Expressway-E: TCP to the TURN relay range "
          "(default 24000-29999) on Expressway-E's public address",
          "Expressway-E's static NAT setting: the relayed address CMS advertises must be the "
          "public address the firewall forwards to Expressway-E",
          "which address CMS advertised as relay candidate (NAT / dual NIC)"),
         context=lambda ev: _relay_address_lines(ev)),
    Rule("permission-missing", _is("closed", step="relay connection", how=("reset",)),
         "{turn} rejects the peer's connection to the relay: there is no permission for its "
         "address.",
         "the TURN server enforces permissions for incoming TCP connections (RFC 6062 §5.3) "
         "and CMS installed none for the Skype Edge's address",
         ("whether CMS sends CreatePermission for the remote candidate's address",
          "the Expressway-E version and its permission handling for TCP relays")),
    Rule("permission-missing", _is("error", methods=("CreatePermission",)),
         "{turn} refused {callee}'s CreatePermission ({phrase}), so the peer's connection to "
         "the relay cannot be accepted.", _stun_meaning,
         ("Expressway-E's TURN logs for the CreatePermission",
          "the peer address CMS asks for (the Skype Edge's relay address)")),
    Rule("connection-bind-failed", _is("error", methods=("ConnectionBind", "Connect")),
         "{turn} refused {callee}'s ConnectionBind ({phrase}), so the peer's data never "
         "flowed.", _stun_meaning,
         ("Expressway-E's TURN logs for the ConnectionBind and the peer connection",
          "time between the ConnectionAttempt and the ConnectionBind (Expressway-E waits "
          "30 s, RFC 6062 §5.4)")),
    Rule("connection-bind-missing", _is("lost", "held", "missing", "closed",
                                        step="relay connection"),
         lambda a, ev: (
             f"The peer's connection to the relay was never bound: {a.sender}'s {a.kind} "
             f"was {'held' if a.what == 'held' else _verb(a)} on {a.where}."
             if a.what in ("lost", "held")
             else f"The peer's connection to the relay was never bound: {a.line}."
         ),
         "the ConnectionAttempt / ConnectionBind exchange of RFC 6062 §4.3-4.4 did not "
         "complete: CMS must open a new connection to Expressway-E's TURN port and bind the "
         "peer's connection on it, within 30 s",
         ("TCP 3478 from CMS to Expressway-E for a second (data) connection",
          "CMS's TURN logs for the ConnectionAttempt",
          "CMS software version (TCP TURN support for Skype content)")),
    # -- ICE
    Rule("ice-not-started", _is("missing", step="ICE checks"),
         "{sender} never sent a connectivity check on the relay path.",
         "that end did not start ICE on the candidate pair (no usable candidate, or its "
         "media connection failed)",
         ("the SDP candidates of both ends", "the end's logs for its media connection")),
    Rule("one-way-binding", _is("lost", "held", "error", step="ICE checks"),
         lambda a, ev: (
             f"The ICE checks fail one way: {a.sender}'s {a.kind}s are "
             f"{'held' if a.what == 'held' else _verb(a)} on {a.where}, so the candidate pair "
             "never becomes valid both ways and no reINVITE confirms the sharing."
         ),
         "STUN binding traffic is lost one way on the media path (a firewall or ALG that "
         "passes the TCP connection but drops framed STUN one way); the lab document's check: "
         "there must be a Binding Request and a Binding Success Response in each direction",
         ("capture on Expressway-E's relay port and CMS's data connection: look for "
          "00 6c 00 01 (Binding Request) and 01 01 (Binding Success Response) both ways",
          "firewall / ALG inspection between the Skype Edge and Expressway-E",
          "the Skype Edge's media relay logs")),
    # -- the reINVITE
    Rule("reinvite-missing", _is("missing", step="reINVITE"),
         "The checks succeeded both ways, but no reINVITE followed.",
         "the controlling ICE agent did not re-offer (RFC 5245 §8.1.2)",
         ("the ICE roles of both ends", "the logs of the controlling end")),
    Rule("call-rejected", _is("error", step="reINVITE"), _refused_sip, _sip_meaning,
         ("the logs of the end that answered the reINVITE",
          "the SIP status meaning (RFC 3261 §21)")),
    Rule("reinvite-lost", _is("lost", "held", step="reINVITE"),
         _lost_words("The sharing reINVITE never completed",
                     "The sharing reINVITE did not complete in time"),
         "a SIP hop does not carry the in-dialog request or its answer (Record-Route, a "
         "one-way SIP path)",
         ("the reINVITE, its 200 OK and its ACK on each hop of the SIP path",
          "the Record-Route of the first 200 OK")),
    # -- the call up
    Rule("allocation-expired", _EXPIRED, _expiry_summary, _expiry_cause,
         ("CMS's TURN logs for Refresh failures (438 Stale Nonce, 401)",
          "the allocation lifetime Expressway-E grants", "TCP 3478 between CMS and "
          "Expressway-E for the Refresh requests")),
    Rule("refresh-refused", _is("error", methods=("Refresh",)),
         "{turn} refused {callee}'s Refresh ({phrase}): the allocation is gone or will not "
         "be extended.", _stun_meaning,
         ("Expressway-E's TURN logs at that time (a restart loses every allocation)",
          "CMS's TURN logs for the Refresh")),
    Rule("sip-connection-lost", _is("closed", step="call up", kinds=("SIP connection",)),
         lambda a, ev: f"A SIP connection broke under the call: {a.line}.",
         "the TCP session of a SIP hop ended under the call (a firewall's idle timeout or "
         "state flush, a restart); in-dialog requests (reINVITE, BYE) need a new connection "
         "and whatever was on the wire is lost",
         ("firewall TCP idle timeouts on the SIP ports (5060/5061, the traversal zone 7001)",
          "the logs of the two ends of that hop at that time")),
    Rule("media-path-lost", _is("closed"),
         lambda a, ev: f"The media path broke under the call: {a.line}.",
         "the TCP session through the firewall or Expressway-E ended under the call (an idle "
         "timeout, a firewall state flush, a restart)",
         ("firewall TCP idle timeouts on the relay range (keepalives every few seconds must "
          "pass)", "Expressway-E TURN logs at that time")),
    # -- the hang-up
    Rule("hang-up-incomplete", _is("lost", "held", step="hang-up"),
         _lost_words("The hang-up did not complete", "The hang-up completed late"),
         "a SIP hop does not carry the BYE or its answer, so one end keeps a call the other "
         "ended (until its own timers run out)",
         ("the BYE and its 200 OK on each hop of the SIP path",)),
    # -- the meeting's audio/video call, before the share (its own dialog)
    Rule("no-sip-path", _is("lost", "held", step="A/V call") & _AV_SETUP, _av_words,
         "a SIP hop does not carry the meeting's call: a missing connection (the traversal "
         "zone between Expressway-C and Expressway-E), a routing rule, or a firewall on the SIP "
         "ports",
         ("the traversal zone status on Expressway-C and Expressway-E (Active)",
          "the search rules and dial plan that route the meeting's domain to CMS",
          "TCP 5060/5061 and the traversal port (7001) through the firewalls")),
    Rule("ack-lost", _is("lost", "held", step="A/V call", kinds=("A/V ACK",)),
         "{callee}'s 200 OK to the meeting's audio/video INVITE was not acknowledged in time: "
         "the A/V ACK was {how_lost} on {where}, so {callee} kept resending it and, 64·T1 "
         "after it, ended the audio/video call (RFC 3261 §13.3.1.4); the sharing dialog is "
         "another one.",
         "the ACK goes end to end through every proxy of the Record-Route; one hop does not "
         "forward it (a Record-Route/Route mismatch, a proxy that lost the dialog, a one-way "
         "SIP path)",
         ("the ACK on each hop of the SIP path (Expressway-C's and Expressway-E's logs)",
          "the Record-Route headers of the 200 OK and the Route headers of the ACK")),
    Rule("call-rejected", _is("error") & _AV, _refused_sip, _sip_meaning,
         ("the logs of the end that answered, at that time",
          "the SIP status meaning (RFC 3261 §21)")),
    # -- anything else
    Rule("message-lost", _is("lost"), _lost_words("A message was lost", "A message was held up"),
         "the hop shown does not carry that message", ("captures on both ends of that hop",)),
    Rule("message-delayed", _is("held"), _lost_words("A message was held up"),
         "the hop shown delays traffic longer than the timers that guard it",
         ("latency and queuing on that hop",)),
    Rule("call-rejected", _is("error"), _refused_sip, _sip_meaning, ()),
)  # fmt: skip


def _slots(a: Anomaly, ev: Evidence) -> dict[str, object]:
    return {
        "sender": a.sender, "kind": a.kind, "where": a.where, "code": a.code,
        "phrase": stun_phrase(a.code) if a.what == "error" and a.method not in (
            "INVITE", "BYE") else a.kind,
        "how_lost": "held" if a.what == "held" else ("dropped" if a.how == "dropped" else a.how),
        "caller": ev.caller, "callee": ev.callee, "turn": ev.turn, "relay": ev.relay or "?",
    }  # fmt: skip


def _words(words: Words, a: Anomaly, ev: Evidence) -> str:
    return words(a, ev) if callable(words) else words.format(**_slots(a, ev))


def rule_for(a: Anomaly, ev: Evidence) -> Rule | None:
    return next((r for r in RULES if r.when(a, ev)), None)


# -- the choice ------------------------------------------------------------------------------


def diagnose(
    trace: Trace, *, caller: str = "skype_client", callee: str = "cms",
    turn: str = "expressway_e", end: float | None = None, deadline: bool = False,
    result: Outcome | None = None, sip_caller: str | None = None,
    sip_callee: str | None = None, point: str | None = None,
) -> Diagnosis:  # fmt: skip
    """The verdict on one run, from its trace alone (``end``: when the run stopped;
    ``deadline``: whether the scenario's deadline stopped it; ``result``: the run's outcome,
    when the caller has it already), or on a capture read back (``sip_caller``, ``sip_callee``
    and ``point``: see :class:`~labsim.report.evidence.Evidence`)."""
    ev = gather(
        trace, caller=caller, callee=callee, turn=turn, end=end, deadline=deadline,
        sip_caller=sip_caller, sip_callee=sip_callee, point=point,
    )  # fmt: skip
    if result is None:
        result = outcome(
            trace, caller=caller, callee=callee, sip_caller=sip_caller, sip_callee=sip_callee
        )
    ending = ev.ending
    assert ending is not None
    ended = ending.line
    established = result.name == "sharing-established"
    ended_well = ending.planned or (ending.how == "deadline" and established)
    failing = unrecovered = [a for a in ev.anomalies if not a.recovered]
    if established and ended_well:
        # What broke nothing: a closed media path does break the call, whatever the end; so
        # does the meeting's audio/video call when it was not set up and hung up as planned.
        broke = [
            a for a in failing
            if a.what in ("closed", "error") or (_is_av(a) and not ev.av_planned)
        ]  # fmt: skip
        if not broke:
            return _working(ev, ended, failing)
        failing = broke
    recovered = tuple(lines(a for a in ev.anomalies if a.recovered))
    if not failing:
        slow = _slow(ev)
        if slow is not None:
            return _slow_diagnosis(ev, slow, ended, recovered, working=False)
        return Diagnosis(
            "unknown", _first_missing_step(ev, result.name),
            f"The call did not work ({result.name}: {result.reason}), and no lost message, "
            "error answer, failed connect or closed connection explains it.",
            tuple(lines(ev.anomalies)) or ("no anomaly found in the messages",),
            "not found from the messages alone", ("the logs of the end that gave up",),
            ended=ended, recovered=recovered,
        )  # fmt: skip
    first = failing[0]
    rule = rule_for(first, ev)
    assert rule is not None  # the table ends with a rule for every kind of anomaly
    # The verdict's evidence: every anomaly its rule explains (a lost Refresh belongs to an
    # expired allocation even where the call went on around it).
    ruled = {id(a): rule_for(a, ev) for a in unrecovered}
    same = sorted((a for a in unrecovered if ruled[id(a)] is rule), key=lambda a: a.t)
    also = tuple(
        f"[{other.verdict if other is not None else 'unknown'}] {a.line}"
        for a in failing
        if (other := ruled[id(a)]) is not rule
    )
    context = rule.context(ev) if rule.context is not None else []
    return Diagnosis(
        rule.verdict, first.step, _words(rule.summary, first, ev),
        (*(a.line for a in same), *context), _words(rule.cause, first, ev), rule.advice,
        ended=ended, also=also, recovered=recovered, failure=first,
    )  # fmt: skip


def _working(ev: Evidence, ended: str, tolerated: list[Anomaly]) -> Diagnosis:
    """The call reached sharing and ended as planned: healthy, or the name of what recovered."""
    recovered = [a for a in ev.anomalies if a.recovered]
    notes = lines(recovered) + [
        f"{a.line} — no consequence in this run: the call reached sharing and ended as planned"
        for a in tolerated
    ]
    glare = [a for a in recovered if a.glare]
    stale = [a for a in recovered if a.code == 438]
    setup = _setup(ev)
    if glare:
        return Diagnosis(
            "glare-recovered", "call up",
            "The sharing works; on the way both ends re-offered at the same moment (glare), "
            "one got 491 and retried after a random wait, as RFC 3261 §14.1 says.",
            (*notes, f"setup took {setup:.3f} s (INVITE to the reINVITE's ACK)"),
            "both user agents send the post-ICE reINVITE (RFC 5245 §8.1.2 gives it to the "
            "controlling agent alone)",
            ("which side sends the reINVITE on each end (ICE role); the retry wait (2.1-4 s "
             "for the side that chose the Call-ID, 0-2 s for the other) adds to setup",),
            ended=ended,
        )  # fmt: skip
    if stale:
        return Diagnosis(
            "stale-nonce-recovered", "call up",
            "The sharing works; on the way CMS's nonce went stale and it retried.",
            tuple(notes),
            "Expressway-E's nonce lifetime is shorter than the time between CMS's requests; "
            "CMS recovers as RFC 5389 §10.2.4 says (438 then a retry)",
            ("nothing to fix; if 438s are frequent, compare the nonce lifetime with CMS's "
             "refresh interval",),
            ended=ended,
        )  # fmt: skip
    held = [a for a in recovered + tolerated if a.what == "held"]
    if held and len(held) == len(recovered + tolerated):
        # Only delays, within every timer: a slow path, named message by message.
        links = _slow(ev) or []
        return Diagnosis(
            "slow-network", held[0].step,
            f"The sharing works, but setup took {setup:.3f} s: messages were held on the way "
            "(within every timer).",
            (*notes, *(f"round trip {a} ↔ {b}: {rtt * 1000:.0f} ms (a request and its 100 "
                       "Trying)" for (a, b), rtt in links)),
            "delay on the hops shown; ICE and TURN each add round trips over them",
            ("latency and queuing on the hops named",),
            ended=ended,
        )  # fmt: skip
    if notes:
        first = (recovered + tolerated)[0]
        return Diagnosis(
            "recovered", first.step,
            f"The sharing works, but not everything went right on the way: {len(notes)} "
            "departure(s) from the healthy call, none of which broke it.",
            tuple(notes),
            "a fault on the path that the protocols absorbed (a retransmission, a message "
            "nobody waited for, a delay within the timers)",
            ("the hop named in each line, before it costs more than a retransmission",),
            ended=ended,
        )  # fmt: skip
    slow = _slow(ev)
    if slow is not None:
        return _slow_diagnosis(ev, slow, ended, (), working=True)
    return Diagnosis(
        "healthy", "call up",
        f"The sharing call worked: relay, ConnectionBind, checks both ways and the reINVITE "
        f"(setup {setup * 1000:.1f} ms), and nothing departed from the healthy call.",
        ended=ended,
    )  # fmt: skip


def _slow_diagnosis(
    ev: Evidence, slow: list[tuple[tuple[str, str], float]], ended: str,
    recovered: tuple[str, ...], *, working: bool,
) -> Diagnosis:  # fmt: skip
    setup = _setup(ev)
    lead = (
        f"The sharing works, but setup took {setup:.3f} s (INVITE to the reINVITE's ACK)."
        if working
        else "Nothing was lost or refused, but the links are slow and the call did not work."
    )
    return Diagnosis(
        "slow-network", "call up", lead,
        tuple(f"round trip {a} ↔ {b}: {rtt * 1000:.0f} ms (a request and its 100 Trying)"
              for (a, b), rtt in slow),
        "latency on the links shown; ICE and TURN each add round trips over them",
        ("the network path between the actors with the slowest round trip",),
        ended=ended, recovered=recovered,
    )  # fmt: skip


def _setup(ev: Evidence) -> float:
    if ev.invite_record is None:
        return 0.0
    acks = [
        r for r, f in ev.sip
        if f.method == "ACK" and r.dst in (ev.sip_caller, ev.sip_callee) and r.delivered
    ]  # fmt: skip
    return (acks[-1].t - ev.invite_record.t) if acks else 0.0


def _slow(ev: Evidence) -> list[tuple[tuple[str, str], float]] | None:
    links = _link_round_trips(ev)
    slow = sorted(((k, v) for k, v in links.items() if v > SLOW_LINK), key=lambda kv: -kv[1])
    if slow or _setup(ev) > SLOW_SETUP:
        return slow
    return None


def _first_missing_step(ev: Evidence, outcome_name: str) -> str:
    return {
        "no-answer": "SIP INVITE", "call-rejected": "SIP answer", "turn-failed":
        "TURN allocation", "ice-failed": "ICE checks", "call-failed": "reINVITE",
    }.get(outcome_name, "call up")  # fmt: skip


def _link_round_trips(ev: Evidence) -> dict[tuple[str, str], float]:
    """Per SIP link: the time from a request sent on it to the 100 Trying coming back."""
    out: dict[tuple[str, str], float] = {}
    sent: dict[tuple[str, str, str], float] = {}
    for record, facts in ev.sip:
        if facts.method == "INVITE":
            sent.setdefault((record.src, record.dst, facts.branch), record.t)
        elif facts.status == 100:
            t0 = sent.get((record.dst, record.src, facts.branch))
            if t0 is not None:
                a, b = sorted((record.dst, record.src))
                out[(a, b)] = max(out.get((a, b), 0.0), record.t - t0)
    return out


def verdict_table() -> str:
    """The verdict table as Markdown, for docs/diagnosis.md (a test keeps it current):
    ``python -m labsim.report.diagnose``."""
    rows = ["| # | verdict | the first failure it explains | likely cause |", "|---|---|---|---|"]
    for n, rule in enumerate(RULES, start=1):
        cause = rule.cause if isinstance(rule.cause, str) else "(worked out from the evidence)"
        rows.append(f"| {n} | `{rule.verdict}` | {rule.when.words} | {cause} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(verdict_table(), end="")
