"""What departed from the healthy call, read from a trace: the evidence the diagnosis reasons on.

Every item is a fact about messages and connections, with its message, hop, count and time
(DESIGN.md: the trace is the truth). Nothing here reads the scenario, the fault rules' words or
the actors' log lines: what a record's ``fate`` says (dropped by rule N, lost with its
connection, still in flight) is what a capture on both sides of that hop would show.

An :class:`Anomaly` is one of:

* ``lost`` — messages whose journey ended before their destination, grouped by sender, kind
  and the hop where they ended (and how: dropped by a rule, lost with a connection, in flight
  at the end);
* ``held`` — messages a fault rule held on a hop before they went on the wire;
* ``error`` — an error answer: a STUN error response (not the first 401 of an unauthenticated
  request, the normal challenge of RFC 5389 §10.2), a SIP final response of 300 or more (not a
  401/407 challenge);
* ``connect-failed`` — a TCP connect that never opened: refused (RST) or unanswered (SYNs
  dropped) or unreachable;
* ``closed`` — a connection reset or closed under the call, before its hang-up;
* ``missing`` — a step the healthy call takes next that its actor never took (CMS got the
  ConnectionAttempt and sent no ConnectionBind): said only of what the actor's first hops
  show it never sent.

Each anomaly belongs to a :data:`Step` of the call, and says whether it *recovered* (a
retransmission got through, a 438 was retried, a 491 was retried) or why it had no
consequence, when that is so.

"The call" is the sharing dialog (:func:`~labsim.report.outcome.first_invite`). The meeting's
audio/video call before it (Cisco 212580: another dialog, another Call-ID) is named apart: its
messages are ``A/V INVITE``, ``200 OK (A/V INVITE)``, ``A/V ACK``, ``A/V BYE``…, its step is
``A/V call`` (its BYE's, ``hang-up``), after the share's steps and before the hang-up, so a
fault of the share is the verdict whenever there is one, and the audio/video call's faults
explain a run only when nothing of the share's does (the call failed, so no share followed).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

from labsim.report.outcome import first_invite, is_av_call
from labsim.trace import ConnectionRecord, Journey, MessageRecord, Trace
from labsim.wire.address import Address
from labsim.wire.facts import SipFacts, StunFacts

#: The call's steps, in call order (the TechNote's order; the diagnosis's verdict is the first
#: failure in this order).
Step = Literal[
    "SIP INVITE", "TURN allocation", "SIP answer", "relay connection", "ICE checks",
    "reINVITE", "call up", "A/V call", "hang-up",
]  # fmt: skip
STEPS: tuple[Step, ...] = get_args(Step)

AnomalyWhat = Literal["lost", "held", "error", "connect-failed", "closed", "missing", "beyond"]

#: The SIP path of the call, caller first (DESIGN.md's picture), and the media path the checks
#: take (the Skype client's through the Edge's media relay to Expressway-E's relay, CMS's
#: through its TURN data connection). A capture point sees the hops that touch it; what lies
#: past its neighbours is beyond it.
SIP_PATH = ("skype_client", "skype_edge", "expressway_e", "expressway_c", "cms")
MEDIA_PATH = ("skype_client", "skype_edge", "expressway_e", "cms")


def stand_ins(point: str | None, peer: str | None = None) -> tuple[str, str, str]:
    """(media caller, SIP caller, SIP callee) as a capture at ``point`` sees them: the nearest
    actor toward each end of the call (the end itself when the point is next to it, or is it).
    Every leg (``point`` None), or a point off the call's paths: the ends themselves. ``peer``:
    the actor seen connecting to the relay, when it is not the Edge (a Skype client that
    reaches the relay directly)."""
    caller, sip_caller, sip_callee = MEDIA_PATH[0], SIP_PATH[0], SIP_PATH[-1]
    if point in MEDIA_PATH[1:]:
        caller = MEDIA_PATH[MEDIA_PATH.index(point) - 1]
        if point == "expressway_e" and peer is not None:
            caller = peer
    if point in SIP_PATH:
        i = SIP_PATH.index(point)
        sip_caller = SIP_PATH[max(i - 1, 0)]
        sip_callee = SIP_PATH[min(i + 1, len(SIP_PATH) - 1)]
    return caller, sip_caller, sip_callee


@dataclass(frozen=True)
class Anomaly:
    what: AnomalyWhat
    step: Step
    t: float
    """When it first happened."""
    line: str
    """The fact, in words, with message, hop, count and time."""
    kind: str = ""
    """The message's name as people say it: ``ACK``, ``200 OK (INVITE)``, ``reINVITE``,
    ``Binding Request``, ``Allocate Error Response 401``."""
    method: str = ""
    """STUN method, or the SIP method of the transaction (``INVITE``, ``BYE``)."""
    sender: str = ""
    hop: tuple[str, str] | None = None
    """Where it happened: the hop a message was lost or held on, the two ends of a
    connection."""
    code: int | None = None
    """A STUN error code or a SIP status."""
    count: int = 1
    rule: int | None = None
    how: str = ""
    """``lost``: the fate; ``connect-failed``: :data:`labsim.trace.ConnectFailure`;
    ``closed``: reset or closed."""
    recovered: str = ""
    """Empty: it had consequences. Otherwise why it did not: what recovered it."""
    glare: bool = False
    beyond: tuple[str, ...] = ()
    """``beyond``: the path past the capture point where it happened, from the point's
    neighbour to the end of the call (``expressway_c``, ``expressway_e``, ``skype_edge``,
    ``skype_client``)."""
    """A 491 to a reINVITE that crossed one of the answerer's own (RFC 3261 §14.1)."""
    records: tuple[MessageRecord, ...] = field(default=(), repr=False, compare=False)
    facts: SipFacts | StunFacts | None = field(default=None, repr=False, compare=False)
    connection: ConnectionRecord | None = field(default=None, repr=False, compare=False)

    @property
    def where(self) -> str:
        return f"{self.hop[0]} → {self.hop[1]}" if self.hop else ""


@dataclass(frozen=True)
class Ending:
    """Who ended the call, when and why."""

    who: str | None
    """The actor that ended it; None when nobody did (the run's deadline, or the call never
    started)."""
    t: float
    how: Literal["BYE", "reset", "deadline", "finished"]
    why: str
    """In words."""
    planned: bool
    """The user's own hang-up (a BYE without a Reason, answered): the end of a healthy call."""
    record: MessageRecord | None = field(default=None, repr=False, compare=False)

    @property
    def line(self) -> str:
        if self.how == "BYE":
            return f"{self.who} ended the call with BYE at t={self.t:.3f} s: {self.why}"
        if self.how == "reset":
            return f"the call ended at t={self.t:.3f} s: {self.why}"
        if self.how == "deadline":
            return f"nobody ended the call: the run's deadline stopped it at t={self.t:.3f} s"
        return f"the call ended at t={self.t:.3f} s: {self.why}"


@dataclass(frozen=True)
class Expiry:
    """An allocation that ran out (RFC 5766 §5): the TURN server closed the callee's TURN
    connection once ``lifetime`` had passed since the last successful Allocate or Refresh."""

    connection: ConnectionRecord
    lifetime: int
    last: float
    """When the last lifetime was granted."""


@dataclass
class Evidence:
    """The trace, read once for the diagnosis: the call's messages named, and what departed
    from the healthy call."""

    trace: Trace
    caller: str
    """The caller's end of the media path (its connectivity checks)."""
    callee: str
    """The callee's end of the media path: the TURN client."""
    turn: str
    end: float
    """When the run stopped."""
    stopped_by_deadline: bool
    sip_caller: str = ""
    """The caller's end of the SIP dialog (``caller`` unless a capture point sees only the
    proxy next to it: then that proxy, the nearest actor it sees toward the caller)."""
    sip_callee: str = ""
    point: str | None = None
    """The actor whose interfaces the trace was captured at (a capture read back); None: every
    hop of the call is in the trace (a run)."""
    sip: list[tuple[MessageRecord, SipFacts]] = field(default_factory=list)
    stun: list[tuple[MessageRecord, StunFacts]] = field(default_factory=list)
    invite: SipFacts | None = None
    invite_record: MessageRecord | None = None
    av_calls: frozenset[str | None] = frozenset()
    """The Call-IDs of the meeting's audio/video calls: initial INVITEs offering audio or video
    and no application sharing."""
    relay: Address | None = None
    """The relayed address the TURN server gave the callee (XOR-RELAYED-ADDRESS)."""
    turn_server: Address | None = None
    """The address the callee reached the TURN server at."""
    anomalies: list[Anomaly] = field(default_factory=list)
    ending: Ending | None = None
    av_planned: bool = True
    """Every audio/video call of the trace was hung up as planned: a BYE without a Reason from
    one of its ends, answered (true when there is none)."""
    expiry: Expiry | None = None
    """The callee's allocation ran out, and the TURN server closed its connection."""

    # -- naming --------------------------------------------------------------------------------

    def is_av(self, facts: SipFacts) -> bool:
        """A message of the meeting's audio/video call, not of the share."""
        return facts.call_id in self.av_calls

    @property
    def sharing(self) -> bool:
        """The call's INVITE is the share's (an INVITE offering sharing, or one of a trace
        with no audio/video call), not the audio/video call's: no share followed it."""
        return self.invite is not None and not self.is_av(self.invite)

    def name(self, record: MessageRecord) -> str:
        """The message's name as people say it."""
        facts = record.facts
        if isinstance(facts, SipFacts):
            invite = self.invite
            if self.is_av(facts):
                if facts.method is not None:
                    return f"A/V {facts.method}"
                what = f"{facts.status} {facts.reason}".rstrip()
                return f"{what} (A/V {facts.cseq_method})"
            if facts.method is not None:
                if facts.method == "INVITE" and facts.to_tag is not None:
                    return "reINVITE"
                return facts.method
            what = f"{facts.status} {facts.reason}".rstrip()
            method = facts.cseq_method
            if method == "INVITE" and invite is not None and not facts.answers(invite):
                method = "reINVITE"
            return f"{what} ({method})"
        if isinstance(facts, StunFacts):
            base = f"{facts.method} {facts.cls}"
            return f"{base} {facts.error}" if facts.error is not None else base
        return "relayed data" if record.relayed else "TCP data"

    def step_of(self, record: MessageRecord) -> Step:
        facts = record.facts
        if isinstance(facts, SipFacts):
            method = facts.method or facts.cseq_method
            if method == "BYE":
                return "hang-up"
            if self.is_av(facts):
                return "A/V call"
            if method in ("INVITE", "ACK", "CANCEL") and self._in_reinvite(facts):
                return "reINVITE"
            if method == "ACK" or (facts.status is not None and facts.status >= 200):
                return "SIP answer"
            return "SIP INVITE"
        if isinstance(facts, StunFacts):
            method = facts.method
            if method == "Allocate":
                return "TURN allocation"
            if method == "Refresh":
                return "hang-up" if facts.lifetime == 0 else "call up"
            if method in ("CreatePermission", "ConnectionAttempt", "ConnectionBind", "Connect"):
                return "relay connection"
            if method == "Binding" and facts.cls != "Indication":
                return "ICE checks"
        return "call up"

    def _in_reinvite(self, facts: SipFacts) -> bool:
        """An INVITE transaction other than the call's first: a reINVITE, its answers, its
        ACK."""
        invite = self.invite
        if invite is None:
            return facts.to_tag is not None and facts.method == "INVITE"
        if facts.call_id != invite.call_id:
            return False
        return (facts.from_tag, facts.cseq) != (invite.from_tag, invite.cseq)


def gather(
    trace: Trace, *, caller: str = "skype_client", callee: str = "cms",
    turn: str = "expressway_e", end: float | None = None, deadline: bool = False,
    sip_caller: str | None = None, sip_callee: str | None = None, point: str | None = None,
) -> Evidence:  # fmt: skip
    """Read ``trace`` for the diagnosis: ``end`` is when the run stopped (default: its last
    event), ``deadline`` whether the scenario's deadline stopped it; ``sip_caller``,
    ``sip_callee`` and ``point`` as :class:`Evidence` says."""
    last = max([0.0, *(m.fate_t or m.t for m in trace.messages)])
    ev = Evidence(
        trace, caller, callee, turn, end if end is not None else last, deadline,
        sip_caller or caller, sip_callee or callee, point,
    )  # fmt: skip
    for record in trace.messages:
        facts = record.facts
        if isinstance(facts, SipFacts):
            ev.sip.append((record, facts))
        elif isinstance(facts, StunFacts):
            ev.stun.append((record, facts))
            if (
                ev.relay is None and facts.method == "Allocate" and facts.is_success
                and record.dst == callee and facts.relayed is not None
            ):  # fmt: skip
                ev.relay = facts.relayed
            if ev.turn_server is None and record.src == callee and record.dst == turn:
                ev.turn_server = record.dst_addr
    ev.av_calls = frozenset(
        f.call_id for _, f in ev.sip if f.method == "INVITE" and f.to_tag is None and is_av_call(f)
    )  # fmt: skip
    first = first_invite(ev.sip, ev.sip_caller)
    if first is not None:
        ev.invite_record, ev.invite = first
    ev.ending = _ending(ev)
    ev.av_planned = all(_hung_up(ev, call_id) for call_id in ev.av_calls)
    ev.expiry = _expiry(ev)
    found = [
        *_losses(ev), *_held(ev), *_stun_errors(ev), *_sip_errors(ev), *_connects(ev),
        *_closed(ev), *_missing(ev), *_past_the_point(ev),
    ]  # fmt: skip
    ev.anomalies = sorted(found, key=lambda a: (STEPS.index(a.step), a.t))
    return ev


def count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 or noun.endswith('s') else 's'}"


def _plural(n: int, noun: str) -> str:
    if n == 1:
        return f"{'an' if noun[:1] in 'AEIOU' else 'a'} {noun}"
    if noun.endswith(")"):
        head, _, tail = noun.partition(" (")
        return f"{n} {head}s ({tail}"
    return f"{n} {noun}s"


# -- lost and held messages -----------------------------------------------------------------------


def _identity(ev: Evidence, record: MessageRecord) -> tuple[object, ...]:
    """What makes a later message the same one sent again: a SIP message's transaction and
    kind; a STUN message's kind and its two ends (ICE and TURN send a new transaction when
    they try again)."""
    facts = record.facts
    if isinstance(facts, SipFacts):
        return (ev.name(record), facts.call_id, facts.from_tag, facts.cseq, facts.cseq_method)
    return (ev.name(record), record.src)


def _fate_words(last: MessageRecord) -> str:
    hop = f"{last.src} → {last.dst}"
    match last.fate:
        case "dropped":
            rule = f" (fault rule {last.rule})" if last.rule else ""
            return f"dropped on {hop}{rule}"
        case "lost":
            return f"lost on {hop} with its connection (reset, cut or closed by the receiver)"
        case "in-flight":
            return f"still in flight on {hop} when the run ended"
        case "outside":
            return f"handed to a peer outside the run on {hop}"
    return f"delivered on {hop}"


def _why_harmless(ev: Evidence, record: MessageRecord) -> str:
    """Why losing this message costs nothing, when that holds by what it is."""
    facts = record.facts
    if isinstance(facts, SipFacts) and facts.status is not None and facts.status < 200:
        return (
            "no consequence: on TCP nothing waits for a provisional answer (RFC 3261 "
            "§17.1.1.2: Timer A runs only on unreliable transports)"
        )
    if isinstance(facts, StunFacts) and facts.method == "Binding" and facts.cls == "Indication":
        return "no consequence: a keepalive (RFC 5245 §10); the next one follows"
    return ""


def _losses(ev: Evidence) -> list[Anomaly]:
    groups: dict[tuple[str, str, str, str, str, int | None], list[Journey]] = {}
    stopped = _unforwarded(ev)
    key: tuple[str, str, str, str, str, int | None]
    for journey in ev.trace.journeys:
        last = journey.last
        if last.fate == "outside" and last.dst == ev.turn:
            # The TURN server is a real one outside the run (expressway_e.turn.external): it
            # gets what is handed to it, and its answers say what it made of it.
            continue
        key = (journey.sender, ev.name(journey.first), last.src, last.dst, last.fate, last.rule)
        if last.fate == "delivered":
            onward = stopped.get(journey.id)
            if onward is None:
                continue
            key = (journey.sender, key[1], last.dst, onward, NOT_FORWARDED, None)
        groups.setdefault(key, []).append(journey)
    out = []
    for (sender, kind, src, dst, fate, rule), journeys in groups.items():
        first = journeys[0].first
        n = len(journeys)
        unforwarded = fate == NOT_FORWARDED
        hops = journeys[0].hops if unforwarded else journeys[0].hops[:-1]
        crossed = [f"{h.src} → {h.dst}" for h in hops]
        conn = ev.trace.connections.get(first.connection)
        on = f" on {conn.name}" if conn is not None and conn.name else ""
        lead = f"{sender} sent {_plural(n, kind)}{on}"
        lead += f" (first at t={first.sent_t:.3f} s)" if n > 1 else f" at t={first.sent_t:.3f} s"
        if unforwarded:
            # Every hop it crossed was delivered; the actor at the end of them kept it.
            them = "them" if n > 1 else "it"
            line = (f"{lead}; {'all ' if n > 1 else 'it '}crossed {', '.join(crossed)}, and "
                    f"{src} got {them} and never passed {them} on toward {dst}")  # fmt: skip
        else:
            via = f"crossed {', '.join(crossed)} and " if crossed else ""
            verb = ("all " if n > 1 else "") + via + ("were " if n > 1 else "was ")
            if n > 1 and not via:
                verb = "all were "
            line = f"{lead}; {'it ' if n == 1 else ''}{verb}{_fate_words(journeys[0].last)}"
        recovered = _why_harmless(ev, first)
        if not recovered:
            recovered = _resent_through(ev, journeys, (src, dst))
        out.append(Anomaly(
            "lost", ev.step_of(first), first.sent_t, line, kind=kind, method=_method(first),
            sender=sender, hop=(src, dst), count=n, rule=rule, how=fate,
            recovered=recovered, records=tuple(j.first for j in journeys),
            facts=_facts(first),
        ))  # fmt: skip
    return out


#: The ``how`` of a message a forwarding actor got and never sent on (see :func:`_unforwarded`).
NOT_FORWARDED = "not-forwarded"


def _unforwarded(ev: Evidence) -> dict[int, str]:
    """Journeys that ended delivered to an actor that forwards such messages and never sent
    this one on, each with the actor it should have gone to next: what a capture shows where a
    message vanished between an actor's two interfaces (or was dropped past the first, which a
    capture of the next hop cannot tell apart). The SIP proxies (RFC 3261 §16: a request goes
    on unless the proxy answers it; a response goes back, but ``100 Trying`` is hop by hop,
    §16.7; the ACK of an error answer too, §17.1.1.3) and the media relays (the Edge's, and
    Expressway-E's RFC 6062 pipe) on the call's paths. Said only where the trace shows both
    sides of that actor: every leg, or a capture at that actor."""
    finals: dict[tuple[object, ...], list[tuple[MessageRecord, SipFacts]]] = {}
    for r, f in ev.sip:
        if f.status is not None and f.status >= 200:
            finals.setdefault((f.call_id, f.from_tag, f.cseq), []).append((r, f))
    last_sent: dict[str, float] = {}
    for m in ev.trace.messages:
        last_sent[m.src] = max(last_sent.get(m.src, 0.0), m.t)
    out: dict[int, str] = {}
    for journey in ev.trace.journeys:
        last = journey.last
        at = last.dst
        if last.fate != "delivered" or (ev.point is not None and ev.point != at):
            continue
        facts = last.facts
        path: tuple[str, ...]
        if isinstance(facts, SipFacts) and last.framing == "sip":
            path = SIP_PATH
            if facts.status == 100 or facts.method == "CANCEL":
                continue
            answers = finals.get((facts.call_id, facts.from_tag, facts.cseq), [])
            if facts.method is not None and any(
                r.src == at and f.cseq_method == facts.method for r, f in answers
            ):
                continue  # the proxy answered it itself
            if facts.method == "ACK" and any((f.status or 0) >= 300 for _, f in answers):
                continue  # the ACK of an error answer ends at the next hop
        elif isinstance(facts, StunFacts) and last.framed and facts.method == "Binding":
            path = MEDIA_PATH
        else:
            continue
        if at not in path[1:-1] or last.src not in path:
            continue
        i = path.index(at)
        onward = path[i + 1] if path.index(last.src) < i else path[i - 1]
        when = last.fate_t or last.t
        # It may be on its way still: the actor did nothing after it, and the trace ends soon.
        if last_sent.get(at, 0.0) <= when and ev.end - when < 1.0:
            continue
        out[journey.id] = onward
    return out


def _resent_through(ev: Evidence, journeys: list[Journey], hop: tuple[str, str]) -> str:
    """Whether the same message, sent again later, crossed the hop where these ended."""
    ident = _identity(ev, journeys[0].first)
    after = max(j.last.t for j in journeys)
    for record in ev.trace.messages:
        if (
            record.t > after and (record.src, record.dst) == hop and record.delivered
            and _identity(ev, record.journey.first if record.journey else record) == ident
        ):  # fmt: skip
            return (
                f"recovered: sent again, it crossed {hop[0]} → {hop[1]} at "
                f"t={record.fate_t or record.t:.3f} s"
            )
    return ""


def _held(ev: Evidence) -> list[Anomaly]:
    """Messages a fault rule held, grouped by sender, kind, hop and rule; what waited behind
    them on the same connection (TCP order) is counted with them, not as faults of its own."""
    groups: dict[tuple[str, str, str, str, int], list[MessageRecord]] = {}
    behind: dict[int, list[MessageRecord]] = {}
    for record in ev.trace.messages:
        if record.delay <= 0 or record.rule is None:
            continue
        if record.rule == 0:
            behind.setdefault(record.connection, []).append(record)
            continue
        journey = record.journey
        first = journey.first if journey is not None else record
        key = (first.src, ev.name(first), record.src, record.dst, record.rule)
        groups.setdefault(key, []).append(record)
    out = []
    for (sender, kind, src, dst, rule), records in groups.items():
        r = records[0]
        arrived = (
            f"delivered at t={r.fate_t:.3f} s" if r.fate_t is not None and r.delivered
            else _fate_words(r)
        )  # fmt: skip
        n = len(records)
        what = f"{sender}'s {kind}" if n == 1 else f"{sender}'s {_plural(n, kind)}"
        line = (
            f"{what} {'was' if n == 1 else 'were'} held {max(x.delay for x in records):g} s on "
            f"{src} → {dst} (fault rule {rule}): sent at t={r.sent_t:.3f} s, {arrived}"
        )
        waited = [b for b in behind.get(r.connection, []) if (b.src, b.dst) == (src, dst)]
        if waited:
            line += (
                f"; {count(len(waited), 'more message')} on that connection waited behind it "
                "(TCP keeps order)"
            )
        out.append(Anomaly(
            "held", ev.step_of(r), r.sent_t, line, kind=kind, method=_method(r), sender=sender,
            hop=(src, dst), count=n, rule=rule, how=f"{r.delay:g}", records=tuple(records),
            facts=_facts(r),
        ))  # fmt: skip
    return out


def _method(record: MessageRecord) -> str:
    facts = record.facts
    if isinstance(facts, SipFacts):
        return facts.method or facts.cseq_method
    if isinstance(facts, StunFacts):
        return facts.method
    return ""


def _facts(record: MessageRecord) -> SipFacts | StunFacts | None:
    facts = record.facts
    return facts if isinstance(facts, SipFacts | StunFacts) else None


# -- error answers ----------------------------------------------------------------------------


def _stun_errors(ev: Evidence) -> list[Anomaly]:
    requests = {
        f.transaction_id: (r, f) for r, f in ev.stun if f.is_request and r.hop == 0
    }  # fmt: skip
    out = []
    for record, facts in ev.stun:
        if not facts.is_error or record.hop != 0 or facts.error is None:
            continue
        asked = requests.get(facts.transaction_id)
        if facts.error == 401 and asked is not None and not asked[1].username:
            continue  # the challenge (RFC 5389 §10.2.1): the client asks again with credentials
        where = f"{record.src} → {record.dst}"
        line = f"{record.src} answered {record.dst}'s {facts.method} Request with error "
        line += f"{facts.error} at t={record.t:.3f} s ({where}"
        line += ", delivered)" if record.delivered else f", then {_fate_words(record)})"
        recovered = ""
        if facts.error == 438:
            retry = next(
                (r for r, f in ev.stun
                 if f.method == facts.method and f.is_success and r.src == record.src
                 and r.dst == record.dst and r.t > record.t and r.delivered),
                None,
            )  # fmt: skip
            if retry is not None:
                recovered = (
                    f"recovered: {record.dst} asked again with the new nonce (RFC 5389 "
                    f"§10.2.4) and the {facts.method} succeeded at t={retry.t:.3f} s"
                )
        step: Step = ev.step_of(record)
        out.append(Anomaly(
            "error", step, record.t, line, kind=ev.name(record), method=facts.method,
            sender=record.src, hop=(record.src, record.dst), code=facts.error,
            recovered=recovered, records=(record,), facts=facts,
        ))  # fmt: skip
    return out


class _FirstAfter:
    """The first record, in trace order, sent after a given time: one bisection over the
    running maximum of the times (the first record whose time passes t is where that maximum
    first passes it), instead of a scan of the whole trace for each question."""

    def __init__(self, records: list[MessageRecord]) -> None:
        self.records = records
        self.peaks = list(itertools.accumulate((r.t for r in records), max))

    def first_after(self, t: float) -> MessageRecord | None:
        index = bisect.bisect_right(self.peaks, t)
        return self.records[index] if index < len(self.records) else None


def _sip_errors(ev: Evidence) -> list[Anomaly]:
    out = []
    # What every 491 asks of the whole call, worked out once (a glare loop holds thousands):
    # the reINVITE answers 2xx that reached an end, and when each end first sent a reINVITE.
    retries = _FirstAfter([
        r for r, f in ev.sip
        if f.status is not None and 200 <= f.status < 300 and f.cseq_method == "INVITE"
        and r.delivered and r.dst in (ev.sip_caller, ev.sip_callee) and ev._in_reinvite(f)
    ])  # fmt: skip
    first_reinvite: dict[str, float] = {}
    for r, f in ev.sip:
        if f.method == "INVITE" and f.to_tag is not None and r.hop == 0:
            first_reinvite[r.src] = min(r.t, first_reinvite.get(r.src, math.inf))
    for record, facts in ev.sip:
        status = facts.status
        if status is None or status < 300 or status in (401, 407):
            continue
        journey = record.journey
        if journey is not None and journey.first is not record:
            continue  # its first hop names it
        answered = journey.last.dst if journey is not None else record.dst
        kind = ev.name(record)
        diag = f" ({facts.diagnostics})" if facts.diagnostics else ""
        line = (
            f"{record.src} answered {answered}'s {kind.split(' (')[-1].rstrip(')')} with "
            f"{facts.status} {facts.reason}{diag} at t={record.t:.3f} s"
        )
        reached = journey.reached(answered) if journey is not None else record.delivered
        if not reached:
            line += (
                f" (it never reached the asker: {_fate_words(journey.last if journey else record)})"  # noqa: E501
            )
        recovered, crossed = "", False
        if status == 491:
            # Glare is over once either end's retry is answered 2xx (RFC 3261 §14.1).
            done = retries.first_after(record.t)
            # Glare is two reINVITEs crossing; a 491 with no reINVITE of the answerer's own
            # pending is a refusal the asker recovered from all the same.
            crossed = first_reinvite.get(record.src, math.inf) <= record.t
            if done is not None and not crossed:
                recovered = (
                    f"recovered: {record.src} answered 491 though no reINVITE of its own was "
                    f"pending (no glare); {answered} tried again after the random wait of RFC "
                    f"3261 §14.1 and the retry was answered at t={done.fate_t or done.t:.3f} s"
                )
            elif done is not None:
                recovered = (
                    f"recovered: glare (RFC 3261 §14.1); a retried reINVITE was answered "
                    f"{done.sip_facts.status if done.sip_facts else 200} at "
                    f"t={done.fate_t or done.t:.3f} s"
                )
        out.append(Anomaly(
            "error", ev.step_of(record), record.t, line, kind=kind,
            method=facts.cseq_method, sender=record.src, hop=(record.src, answered),
            code=status, recovered=recovered, glare=status == 491 and crossed,
            records=(record,), facts=facts,
        ))  # fmt: skip
    return out


# -- connections --------------------------------------------------------------------------------


def _connects(ev: Evidence) -> list[Anomaly]:
    out = []
    for refused in ev.trace.refused:
        how = refused.how
        target = refused.server_addr
        server = _actor_at(ev, target)
        if ev.relay is not None and target == ev.relay:
            step: Step = "relay connection"
            what = f"the relay address {target} ({ev.callee}'s relay candidate)"
        elif refused.client == ev.callee and (server == ev.turn or target.port == 3478):
            step = "TURN allocation"
            what = f"the TURN server {target}"
        elif refused.client == ev.callee:
            step = "TURN allocation"
            what = str(target)
        elif target.port in (5060, 5061, 7001):
            step = "SIP INVITE"
            what = str(target)
        else:
            step = "relay connection"
            owner = _host_of(ev, target.host)
            what = f"{target} ({owner}'s own address)" if owner else str(target)
        words = {
            "refused": "was refused: a TCP RST came back (nothing listens there, or a firewall "
            "rejects)",
            "timeout": "got no answer: its SYNs went unanswered until the connect timed out "
            "(a firewall drops them)",
            "unreachable": f"failed: {refused.reason}",
        }[how]
        started = refused.began
        line = f"{refused.client}'s TCP connect to {what} {words} (t={started:.3f} s"
        line += f" to {refused.t:.3f} s)" if refused.t != started else ")"
        out.append(Anomaly(
            "connect-failed", step, refused.t, line, kind="TCP connect",
            sender=refused.client, hop=(refused.client, server or str(target)), how=how,
        ))  # fmt: skip
    return out


def _host_of(ev: Evidence, host: str) -> str | None:
    """The actor whose address ``host`` is, from the connections it made or took."""
    for c in ev.trace.connections.values():
        if c.client_addr.host == host:
            return c.client
        if c.server_addr.host == host:
            return c.server
    return None


def _actor_at(ev: Evidence, address: Address) -> str | None:
    for c in ev.trace.connections.values():
        if c.server_addr == address:
            return c.server
    for r, _ in ev.sip:
        if r.dst_addr == address:
            return r.dst
    return None


def _hang_up_t(ev: Evidence) -> float:
    ending = ev.ending
    return ending.t if ending is not None and ending.how == "BYE" else ev.end


def _closed(ev: Evidence) -> list[Anomaly]:
    """Connections that ended under the call: reset, or closed by someone before the first
    BYE (a call's own teardown closes them after it)."""
    stop = _hang_up_t(ev)
    bound = next(
        (r.fate_t or r.t for r, f in ev.stun
         if f.method == "ConnectionBind" and f.is_success and r.dst == ev.callee and r.delivered),
        None,
    )  # fmt: skip
    # When the meeting's audio/video call was answered: a SIP connection that breaks after it
    # breaks under a call (the share's dialog is another one, still to come or going on).
    av_up = min(
        (r.fate_t or r.t for r, f in ev.sip
         if ev.is_av(f) and f.cseq_method == "INVITE" and 200 <= (f.status or 0) < 300
         and r.dst == ev.sip_caller and r.delivered),
        default=None,
    )  # fmt: skip
    out = []
    # When the peers closed their connections to the relay (RFC 6062 §5.5: the TURN server
    # then closes the data connection bound to each, a consequence, not a second event).
    peer_closed = [
        c.closed for c in ev.trace.connections.values()
        if ev.relay is not None and c.server_addr.port == ev.relay.port and c.server == ev.turn
        and c.closed is not None and not c.reset and c.closed_by == c.client
    ]  # fmt: skip
    for c in ev.trace.connections.values():
        if c.closed is None or c.closed >= stop:
            continue
        if (
            ev.expiry is None and not c.reset and c.closed_by == ev.turn
            and set((c.client, c.server)) == {ev.callee, ev.turn}
            and any(t <= c.closed <= t + 1.0 for t in peer_closed)
        ):  # fmt: skip
            continue
        if (
            not c.reset and c.closed_by in (ev.caller, ev.callee)
            and not (ev.expiry is not None and stands_in(ev, c.closed_by))
        ):  # fmt: skip
            # An end closing its own connection (its session is over); at a capture point,
            # the actor standing for it (the TURN server closes CMS's data connection when
            # the peer closes its own, RFC 6062 §5.5) — unless the allocation ran out.
            continue
        ends = (c.client, c.server)
        carried_sip = any(r.connection == c.id for r, _ in ev.sip)
        kind = "TCP connection"
        if carried_sip:
            # A SIP hop's connection: the call's signalling, whatever the step.
            kind = "SIP connection"
            up = [t for t in (bound, av_up) if t is not None]
            step: Step = "call up" if up and c.closed > min(up) else "SIP INVITE"
            what = f"the SIP connection {c.name or c.id} ({c.client} → {c.server})"
        elif bound is not None and c.closed > bound:
            step = "call up"  # the relay had carried the call by then
            what = f"the connection {c.name or c.id} ({c.client} → {c.server})"
            if ev.relay is not None and c.server_addr == ev.relay:
                what = f"the peer connection to the relay {c.server_addr} (from {c.client_addr})"
        elif ev.relay is not None and c.server_addr == ev.relay:
            step = "relay connection"
            what = f"the peer connection to the relay {c.server_addr} (from {c.client_addr})"
        elif set(ends) == {ev.callee, ev.turn}:
            step = "call up"
            what = f"{ev.callee}'s TURN connection {c.name or c.id}"
        else:
            step = "call up"
            what = f"the connection {c.name or c.id} ({c.client} → {c.server})"
        how = "reset (RST)" if c.reset else "closed (FIN)"
        # A fault rule's cut is the network's doing, not either end's.
        by = "the network (a cut on the path)" if c.closed_by == "network" else c.closed_by
        line = f"{what} was {how} by {by or '?'} at t={c.closed:.3f} s"
        out.append(Anomaly(
            "closed", step, c.closed, line, kind=kind, sender=c.closed_by or "",
            hop=(c.client, c.server), how="reset" if c.reset else "closed", connection=c,
        ))  # fmt: skip
    return out


def _expiry(ev: Evidence) -> Expiry | None:
    granted = [
        (r.fate_t or r.t, f.lifetime) for r, f in ev.stun
        if f.method in ("Allocate", "Refresh") and f.is_success and r.dst == ev.callee
        and r.delivered and f.lifetime
    ]  # fmt: skip
    if not granted:
        return None
    last, lifetime = max(granted)
    assert lifetime is not None
    for c in ev.trace.connections.values():
        if (
            {c.client, c.server} == {ev.callee, ev.turn} and c.closed_by == ev.turn
            and c.closed is not None and c.closed >= last + lifetime - 1.0
        ):  # fmt: skip
            return Expiry(c, lifetime, last)
    return None


# -- steps never taken ------------------------------------------------------------------------


def _never(step: Step, t: float, line: str, kind: str, sender: str = "") -> Anomaly:
    """A step never taken: ``kind`` is what its actor never sent."""
    method = "INVITE" if kind == "reINVITE" else kind.split()[0]
    return Anomaly("missing", step, t, line, kind=kind, method=method, sender=sender)


def _missing(ev: Evidence) -> list[Anomaly]:
    """Steps never taken (see :func:`_never_taken`); at a capture point, one that another
    actor never took is only what reached the point: it lies past the point."""
    found = _never_taken(ev)
    point = ev.point
    if point is None:
        return found
    out = []
    for a in found:
        # Who did not act: the actor that never took the step, or the end that never
        # answered the checks it got.
        actor = a.hop[1] if a.how == "unanswered" and a.hop is not None else a.sender
        if actor == point:
            out.append(a)
            continue
        if not actor and point in (SIP_PATH[0], SIP_PATH[-1]):
            out.append(a)  # neither end took it, and the point is one of them
            continue
        toward = actor or ev.sip_callee
        path = SIP_PATH if a.step in ("SIP INVITE", "SIP answer", "reINVITE") else MEDIA_PATH
        past = path_past(ev, neighbour(ev, toward, path), path)
        line = f"as {point} sees it, {a.line}: lost {beyond_words(ev, past)}, or never sent"
        out.append(replace(a, what="beyond", line=line, hop=(point, past[0]), beyond=past))
    return out


def neighbour(ev: Evidence, actor: str, path: tuple[str, ...]) -> str:
    """The point's neighbour on ``path`` toward ``actor``."""
    point = ev.point
    if point not in path or actor not in path or actor == point:
        return actor
    i = path.index(point)
    return path[i + 1] if path.index(actor) > i else path[i - 1]


def _never_taken(ev: Evidence) -> list[Anomaly]:
    out: list[Anomaly] = []
    cms, turn = ev.callee, ev.turn
    invite = ev.invite_record
    journey = invite.journey if invite is not None else None
    got_invite = next(
        (
            h
            for h in (journey.hops if journey is not None else [])
            if h.dst == ev.sip_callee and h.delivered
        ),
        None,
    )
    stun_from_cms = [r for r, f in ev.stun if r.src == cms and r.hop == 0 and f.method != "Binding"]
    tried_turn = any(r.client == cms for r in ev.trace.refused) or any(
        c.client == cms and c.server == turn for c in ev.trace.connections.values()
    )
    # Only a callee that accepted the INVITE owes a relay: one that refused it allocates none.
    accepted = ev.invite is not None and ev.sharing and any(
        r.src == ev.sip_callee and r.hop == 0 and f.status is not None and 200 <= f.status < 300
        and f.answers(ev.invite)
        for r, f in ev.sip
    )  # fmt: skip
    # Said only where the callee's own SIP is in the trace: a point that sees a proxy answer
    # for it cannot tell the callee never allocated from its allocation going elsewhere.
    sees_callee = ev.sip_callee == cms
    if sees_callee and got_invite is not None and accepted and not stun_from_cms and not tried_turn:
        out.append(
            _never(
                "TURN allocation",
                got_invite.fate_t or got_invite.t,
                f"{cms} got the INVITE at t={got_invite.fate_t or got_invite.t:.3f} s and never "
                f"asked {turn} for a relay: no TCP connection to a TURN server, no Allocate "
                "Request",
                "Allocate Request",
                cms,
            )
        )
    attempts = [r for r, f in ev.stun if f.method == "ConnectionAttempt" and r.dst == cms
                and r.delivered]  # fmt: skip
    binds = [r for r, f in ev.stun if f.method == "ConnectionBind" and f.is_request
             and r.src == cms and r.hop == 0]  # fmt: skip
    if attempts and not binds:
        a = attempts[0]
        out.append(
            _never(
                "relay connection",
                a.fate_t or a.t,
                f"{cms} got the ConnectionAttempt at t={a.fate_t or a.t:.3f} s and sent no "
                f"ConnectionBind Request (no new connection to {turn} for the peer's data, "
                "RFC 6062 §4.3)",
                "ConnectionBind Request",
                cms,
            )
        )
    bound = [r for r, f in ev.stun if f.method == "ConnectionBind" and f.is_success
             and r.dst == cms and r.delivered]  # fmt: skip
    if bound:
        t0 = bound[0].fate_t or bound[0].t
        for end in (ev.callee, ev.caller):
            checks = [r for r, f in ev.stun if f.method == "Binding" and f.is_request
                      and r.src == end and r.hop == 0]  # fmt: skip
            if not checks and not stands_in(ev, end):
                out.append(
                    _never(
                        "ICE checks",
                        t0,
                        f"{end} sent no connectivity check (Binding Request) after the relay "
                        f"connection was bound at t={t0:.3f} s",
                        "Binding Request",
                        end,
                    )
                )
    out += _checks_unanswered(ev)
    answered = _checks_answered(ev)
    if {ev.caller, ev.callee} <= set(answered):
        reinvites = [r for r, f in ev.sip if f.method == "INVITE" and f.to_tag is not None
                     and r.hop == 0]  # fmt: skip
        if not reinvites:
            t = max(answered.values())
            out.append(
                _never(
                    "reINVITE",
                    t,
                    f"the checks succeeded both ways (by t={t:.3f} s) and neither end sent the "
                    "reINVITE that confirms the media route (RFC 5245 §8.1.2, MS-ICE2)",
                    "reINVITE",
                )
            )
    return out


def _checks_unanswered(ev: Evidence) -> list[Anomaly]:
    """Checks that reached an end of the call, to which no answer exists on any hop: what a
    capture shows when the end never answered, or its answer was lost before the first point
    that could see it (a run records such an answer with its fate, and says where instead).
    RFC 5245 §7.2: an agent answers every check it gets."""
    answers = {f.transaction_id for _, f in ev.stun if f.method == "Binding" and not f.is_request}
    out = []
    for end in (ev.caller, ev.callee):
        if stands_in(ev, end):
            continue
        got = [(r, f) for r, f in ev.stun if r.dst == end and r.delivered and f.method == "Binding"
               and f.is_request and f.transaction_id not in answers]  # fmt: skip
        if not got:
            continue
        first = got[0][0]
        journey = first.journey
        sender = journey.sender if journey is not None else first.src
        out.append(Anomaly(
            "lost", "ICE checks", first.fate_t or first.t,
            f"{_plural(len(got), 'Binding Request')} from {sender} reached {end} (first at "
            f"t={first.fate_t or first.t:.3f} s, on {first.src} → {end}) and no answer to "
            f"{'them' if len(got) > 1 else 'it'} crossed any hop here: {end} did not answer, "
            "or its answers were lost as they left it", kind="Binding Request",
            method="Binding", sender=sender, hop=(first.src, end), count=len(got),
            how="unanswered", records=tuple(r for r, _ in got), facts=got[0][1],
        ))  # fmt: skip
    return out


def _checks_answered(ev: Evidence) -> dict[str, float]:
    """Who got a Binding Success Response back, and when first."""
    out: dict[str, float] = {}
    for r, f in ev.stun:
        if f.method == "Binding" and f.is_success and r.delivered and r.dst in (
            ev.caller, ev.callee
        ):  # fmt: skip
            out.setdefault(r.dst, r.fate_t or r.t)
    return out


# -- the end of the call --------------------------------------------------------------------


def _ending(ev: Evidence) -> Ending:
    invite = ev.invite
    byes = [
        (r, f) for r, f in ev.sip
        if f.method == "BYE" and r.hop == 0 and r.src in (ev.sip_caller, ev.sip_callee)
        and (invite is None or f.call_id == invite.call_id)
    ]  # fmt: skip
    if byes:
        record, facts = byes[0]
        answered = any(
            r.dst == record.src and r.delivered and f.status is not None and f.status >= 200
            and f.cseq_method == "BYE" and f.call_id == facts.call_id
            for r, f in ev.sip
        )  # fmt: skip
        if facts.cause:
            why = f"Reason: {facts.cause}"
        else:
            why = "a hang-up (no Reason header: the user's own)"
        if not answered:
            why += "; the BYE got no answer back"
        # When its sender sent it (a delay on the wire does not move the hang-up).
        return Ending(record.src, record.sent_t, "BYE", why, not facts.cause and answered, record)
    sip_conns = {r.connection for r, _ in ev.sip}
    resets = sorted(
        (c for c in ev.trace.connections.values()
         if c.id in sip_conns and c.closed is not None and c.reset),
        key=lambda c: c.closed or 0.0,
    )  # fmt: skip
    if resets:
        c = resets[0]
        return Ending(
            c.closed_by, c.closed or 0.0, "reset",
            f"the SIP connection {c.client} → {c.server} was reset by {c.closed_by}", False,
        )  # fmt: skip
    if ev.stopped_by_deadline:
        return Ending(None, ev.end, "deadline", "the run's deadline", False)
    return Ending(None, ev.end, "finished", "no dialog to end (no BYE was needed)", False)


def _hung_up(ev: Evidence, call_id: str | None) -> bool:
    """The dialog ``call_id`` ended as planned: its first BYE from an end has no Reason (RFC
    3326: the user's own hang-up) and its answer got back to its sender."""
    bye = next(
        ((r, f) for r, f in ev.sip
         if f.call_id == call_id and f.method == "BYE" and r.hop == 0
         and r.src in (ev.sip_caller, ev.sip_callee)),
        None,
    )  # fmt: skip
    if bye is None or bye[1].cause:
        return False
    return any(
        r.dst == bye[0].src and r.delivered and (f.status or 0) >= 200
        and f.cseq_method == "BYE" and f.call_id == call_id
        for r, f in ev.sip
    )  # fmt: skip


def lines(anomalies: Iterable[Anomaly]) -> list[str]:
    return [a.line + (f" — {a.recovered}" if a.recovered else "") for a in anomalies]


# -- what lies beyond a capture point -------------------------------------------------------------


def _past_the_point(ev: Evidence) -> list[Anomaly]:
    """What a capture at one point shows stopped past it (:mod:`labsim.report.beyond`; a run,
    which sees every hop, has none)."""
    if ev.point is None:
        return []
    from labsim.report.beyond import beyond  # it reads the evidence this module gathers

    return beyond(ev)


def stands_in(ev: Evidence, actor: str) -> bool:
    """Whether ``actor`` is a capture point's neighbour standing for an end it cannot see."""
    return (
        ev.point is not None
        and actor in (ev.caller, ev.sip_caller, ev.sip_callee)
        and (actor not in (MEDIA_PATH[0], SIP_PATH[-1]))
    )


def path_past(ev: Evidence, toward: str, path: tuple[str, ...]) -> tuple[str, ...]:
    """The actors past the capture point toward ``toward`` (a neighbour), to the end of
    ``path``."""
    assert ev.point is not None
    if ev.point not in path or toward not in path:
        return (toward,)
    i, j = path.index(ev.point), path.index(toward)
    return path[j::-1] if j < i else path[j:]


def beyond_words(ev: Evidence, past: tuple[str, ...]) -> str:
    hops = " → ".join((ev.point or "?", *past))
    return f"past {ev.point}'s interface ({hops}), which a capture at {ev.point} does not show"
