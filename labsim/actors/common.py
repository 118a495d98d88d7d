"""What the actors of the call share: the three SIP proxies (:class:`ProxyElement`: a
:class:`SipProxy` and its transport behind a router) and the two user agents
(:class:`UserAgent`: a transport, the UA's own timers, the dialog's transactions, walked along
each UA's state table; :class:`UaTimer`, the UAs' timer names).

Every actor is machines (:mod:`labsim.proto.machine`) wired into one
:class:`~labsim.proto.router.Router`: the actor's ``handle`` is the router's, which gives each
event to the machine that owns its connection, address or timer and hands the machines'
notices to the functions the actor registered for them. The actors route nothing themselves."""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Generic, TypeVar

from sipmessage import Request, Response

from labsim.actors.lab import CallSettings, CmsSettings, SipRefusal, SkypeClientSettings, UaSide
from labsim.proto import appsharing
from labsim.proto.events import Address, ConnId, Effect, Event, Log
from labsim.proto.machine import Timers
from labsim.proto.router import Router
from labsim.proto.sip_dialog import Dialog
from labsim.proto.sip_proxy import ProxySettings, ResponseForwarded, SipProxy
from labsim.proto.sip_transport import ConnectionLost, Incoming, Notice, SendFailed, SipTransport
from labsim.proto.sip_ua_state import Machine, Table, UaEvent, glare_delay
from labsim.wire import WireError, sip

#: MS-SIPRE ms-diagnostics-public of a Skype meeting whose policy lets only presenters share,
#: as CMS logs it (PROTOCOL.md §5.4; Cisco document 212580, "User cannot share").
ATTENDEES_CANNOT_SHARE = sip.MsDiagnostics(
    21002, "Attendees cannot share in this conference", (("component", "ASMCU"),)
)


@dataclass(frozen=True)
class Refusal:
    """How an end refuses the peer's INVITE or reINVITE: a final error response, with an
    ``ms-diagnostics-public`` header (the public variant crosses the Edge, MS-SIPRE) or a
    Retry-After (RFC 3261 §20.33) when it has one. The default is the Skype meeting's refusal
    of an attendee's sharing."""

    code: int = 403
    reason: str = "Forbidden"
    diagnostics: sip.MsDiagnostics | None = ATTENDEES_CANNOT_SHARE
    retry_after: int | None = None

    @classmethod
    def of(cls, setting: SipRefusal) -> Refusal:
        """The refusal a ``refuse_invite`` / ``refuse_reinvite`` setting asks for."""
        return cls(setting.status, setting.phrase, None, setting.retry_after)

    def response(self, request: Request, to_tag: str | None = None) -> Response:
        extra: list[tuple[str, str]] = []
        if self.diagnostics is not None:
            extra.append(("ms-diagnostics-public", str(self.diagnostics)))
        if self.retry_after is not None:
            extra.append(("Retry-After", str(self.retry_after)))
        return sip.build_response(request, self.code, self.reason, to_tag=to_tag,
                                  extra_headers=extra)  # fmt: skip


def diag_suffix(response: Response) -> str:
    """`` (ms-diagnostics text)`` for a log line, or ""."""
    text = sip.diagnostics_text(response)
    return f" ({text})" if text else ""


class ProxyElement:
    """An actor whose SIP side is a :class:`SipProxy`; subclasses add their other machines to
    :attr:`router` (after the proxy, so ``Started`` reaches the proxy first) and may override
    :meth:`start` (their own first effects) and :meth:`on_forwarded`."""

    def __init__(self, name: str, settings: ProxySettings) -> None:
        self.name = name
        self.host = settings.host
        # It listens on every port its Via and Record-Route name, so Route values lead back to it.
        self.transport = SipTransport(settings.host, (settings.port, *settings.other_ports))
        self.proxy = SipProxy(name, settings, self.transport)
        self.router = Router(on_started=self.start)
        self.router.add(self.proxy, self.on_forwarded)

    def handle(self, event: Event, now: float) -> list[Effect]:
        return self.router.handle(event, now)

    def start(self, now: float) -> list[Effect]:
        """What the actor does at ``Started``, after its machines (the proxy listens)."""
        return []

    def on_forwarded(self, notice: ResponseForwarded, now: float) -> list[Effect]:
        return []

    def open(self, to: Address) -> list[Effect]:
        """Open a SIP connection to ``to`` ahead of any message."""
        return self.router.run(self.proxy, self.proxy.open(to))


class UaTimer(Enum):
    """The timers of the two user agents: typed timer names (:mod:`labsim.proto.machine`),
    kept by the UA's :class:`~labsim.proto.machine.Timers` machine."""

    CALL = "call"
    """The Skype client: when to send the sharing INVITE."""
    ICE = "ice"
    """The Skype client: how long media may take to work (``ice_timeout``)."""
    HOLD = "hold"
    """How long the sharing lasts before the UA that hangs up sends BYE."""
    FINISH = "finish"
    """The linger between the last act and ``finished``."""
    TIMER_B = "timer-b"
    """RFC 3261 §17.1.1.2: no answer at all to our INVITE or reINVITE within 64·T1."""
    RETRANSMIT_2XX = "2xx-retransmit"
    """RFC 3261 §13.3.1.4: send our unacknowledged 2xx again (T1, doubling up to T2)."""
    ACK_WAIT = "ack-wait"
    """RFC 3261 §13.3.1.4: 64·T1 without the ACK of our 2xx ends the session."""
    GLARE = "491-retry"
    """RFC 3261 §14.1: the randomized wait before a reINVITE refused with 491 is retried."""
    TIMER_F = "timer-f"
    """RFC 3261 §17.1.2.2: no answer to our BYE within 64·T1."""
    RETRY_AFTER = "retry-after"
    """The Skype client: RFC 3261 §21.5.4, the wait a 503's Retry-After asked for before the
    INVITE goes again (``retry_after_503``)."""
    SHARE = "share"
    """The Skype client: when to send the sharing INVITE once the meeting's audio/video call
    is up (``share_after``)."""
    AV_TIMER_B = "av-timer-b"
    """Timer B of the audio/video INVITE (RFC 3261 §17.1.1.2)."""
    AV_RETRANSMIT_2XX = "av-2xx-retransmit"
    """CMS: its 2xx to the audio/video INVITE again until the ACK (RFC 3261 §13.3.1.4)."""
    AV_ACK_WAIT = "av-ack-wait"
    """CMS: 64·T1 without the ACK of that 2xx ends the audio/video call (§13.3.1.4)."""
    AV_TIMER_F = "av-timer-f"
    """Timer F of a BYE in the audio/video call (§17.1.2.2)."""


#: The timers of the dialog's transactions, all stopped when the dialog ends.
SIP_TIMERS = (UaTimer.TIMER_B, UaTimer.RETRANSMIT_2XX, UaTimer.ACK_WAIT, UaTimer.GLARE,
              UaTimer.TIMER_F, UaTimer.RETRY_AFTER)  # fmt: skip

S = TypeVar("S", bound=StrEnum)


@dataclass
class _Accepted:
    """Our 2xx to an INVITE or reINVITE, waiting for its ACK (RFC 3261 §13.3.1.4)."""

    conn: ConnId
    """The connection the request came in on: the 2xx and its retransmissions go back there
    (§18.2.2)."""
    response: Response
    cseq: int
    """The INVITE's CSeq number, which its ACK carries."""
    sent: float
    """When the 2xx was first sent."""
    interval: float
    """The current retransmission interval."""
    initial: bool
    """The 2xx to the dialog-creating INVITE (else to a reINVITE)."""


class UserAgent(Generic[S]):
    """What the two ends of the call (the Skype client and CMS) share: a SIP transport, branch
    numbering, the linger before ``finished``, the dispatch of the transport's notices, and the
    dialog's transactions after it exists: our reINVITE (Timer B, 491 glare), the peer's
    reINVITE (our 2xx retransmitted until its ACK), BYE in both directions (Timer F).

    The state lives in :attr:`machine`, walked along the subclass's table
    (:mod:`labsim.proto.sip_ua_state`). This class never names a state: it fires events and
    asks the table which are allowed, so it cannot apply different rules to the two ends
    (h11's rule 2).

    Subclasses implement :meth:`on_sip`, :meth:`reoffer_body`, :meth:`on_peer_reoffer` and
    :meth:`on_ended`, and may override :meth:`on_reoffer_refused`, :meth:`session_over`,
    :meth:`on_send_failed` and :meth:`on_connection_lost`.
    """

    name: str
    host: str
    finished: bool
    branch_tag: str = "ua"
    #: This end generated the dialog's Call-ID (it sent the INVITE): its 491 retry waits
    #: 2.1-4 s, the other end's 0-2 s (RFC 3261 §14.1).
    owns_call_id: bool = False

    def __init__(
        self,
        side: UaSide,
        settings: SkypeClientSettings | CmsSettings,
        call: CallSettings,
        table: Table[S],
    ) -> None:
        self.host = settings.address
        self.rng = random.Random(settings.seed)
        self.transport = SipTransport(settings.address, (settings.sip_port,))
        #: The UA's own timers (:class:`UaTimer`).
        self.clock: Timers[UaTimer] = Timers()
        self.router = Router(on_started=self.start)
        self.router.add(self.transport, self.on_transport)
        self.router.add(self.clock, self.on_timer)
        #: Seconds between the last act and ``finished`` (lets closes reach the trace).
        self.linger = settings.linger
        # This end's part in the call (labsim.actors.lab.CallSettings).
        self.controlling = call.controlling(side)
        self.sends_reinvite = call.sends_reinvite(side)
        #: Whether this end hangs up ``hold`` seconds after sharing is on.
        self.sends_bye = call.sends_bye(side)
        self.hold = call.hold
        self.check_layout = call.check_layout(side)
        self.reinvite_connection = call.reinvite_connection
        self.finished = False
        self._branches = 0
        #: This end's tag in the call's dialog (From for the caller, To for the callee).
        self.tag = f"{self.rng.getrandbits(32):08x}"
        self.dialog: Dialog | None = None
        self.machine: Machine[S] = Machine(table)
        self.timers = settings.sip_timers
        #: The post-ICE reINVITE is answered 200 and acknowledged: sharing is on. (What the
        #: session carries, beside the dialog's state: a later reINVITE does not undo it.)
        self.shared = False
        self._reoffer: Request | None = None
        """Our latest reINVITE (its answers are matched by CSeq)."""
        self._reoffer_ack: Request | None = None
        """The ACK of its 2xx, sent again for a repeated 2xx (§13.3.1.4)."""
        self._reoffer_held = False
        """A reINVITE is wanted but the table does not allow one yet (§14.1)."""
        self._glare_carried = False
        """A 491 wait the peer's own reINVITE came into: its timer still decides when ours is
        sent again (on_reinvite, _glare_over)."""
        self._accepted: _Accepted | None = None
        self._refused_cseq = -1
        """CSeq of the last INVITE we answered with an error (its hop-by-hop ACK is quiet)."""
        self._refusal_setting = settings.refuse_reinvite
        self._reinvites_taken = 0
        """The peer's reINVITEs taken on so far (``refuse_reinvite.nth`` counts them)."""
        self._bye: Request | None = None

    @property
    def state(self) -> S:
        return self.machine.state

    def allows(self, event: UaEvent) -> bool:
        return self.machine.allows(event)

    def fire(self, event: UaEvent) -> None:
        self.machine.fire(event)

    def fire_timer(self, event: UaEvent, stale: str, waiting: object = True) -> list[Effect] | None:
        """A dialog timer fired: take its transition and return None, or, when the table has
        moved on (the answer came, or the call ended, before the timer was stopped), the log
        line that says the timer was stale. ``waiting`` is what the timer guards (None: gone)."""
        if waiting is None or not self.allows(event):
            return [Log(f"{stale}: ignored", "warning")]
        self.fire(event)
        return None

    def branch(self) -> str:
        """A new RFC 3261 §8.1.1.7 branch: magic cookie, a counter, random bits."""
        self._branches += 1
        tail = f"{self._branches:x}{self.rng.getrandbits(24):06x}"
        return f"{sip.MAGIC_COOKIE}{self.branch_tag}{tail}"

    def done(self, why: str, level: str = "info") -> list[Effect]:
        return [Log(why, level), self.start_timer(UaTimer.FINISH, self.linger)]

    # -- the machines: events in through the router, commands through it too ------------------

    def handle(self, event: Event, now: float) -> list[Effect]:
        return self.router.handle(event, now)

    def start(self, now: float) -> list[Effect]:
        """What the UA does at ``Started``, after its machines (the transport listens)."""
        return []

    def start_timer(self, timer: UaTimer, delay: float) -> Effect:
        (effect,) = self.router.run(self.clock, self.clock.start(timer, delay))
        return effect

    def stop_timer(self, timer: UaTimer) -> Effect:
        (effect,) = self.router.run(self.clock, self.clock.stop(timer))
        return effect

    def send_sip(self, message: sip.SipMessage, to: Address) -> list[Effect]:
        """Send ``message`` to ``to`` (opening a connection when none goes there)."""
        return self.router.run(self.transport, self.transport.send(message, to))

    def reply(self, conn: ConnId, message: sip.SipMessage) -> list[Effect]:
        """Send ``message`` on ``conn`` (a response goes back the way its request came)."""
        return self.router.run(self.transport, self.transport.send_on(conn, message))

    def on_timer(self, timer: UaTimer, now: float) -> list[Effect]:
        """One of the UA's timers fired."""
        if timer is UaTimer.FINISH:
            self.finished = True
            return []
        return self.on_sip_timer(timer, now) or []

    # -- what the subclasses provide -------------------------------------------------------------

    def on_sip(self, conn: ConnId, message: sip.SipMessage, now: float) -> list[Effect]:
        raise NotImplementedError

    def reoffer_body(self) -> bytes:
        """The SDP of our post-ICE reINVITE."""
        raise NotImplementedError

    def on_peer_reoffer(self, conn: ConnId, request: Request, now: float) -> list[Effect]:
        """The peer's reINVITE, taken on (the state allows it): answer it with
        :meth:`answer_reoffer`, now or later."""
        raise NotImplementedError

    def on_ended(self, why: str, now: float, level: str = "info") -> list[Effect]:
        """The dialog is over (the final state): release what the call holds, then finish;
        ``why`` is the sentence for the record."""
        raise NotImplementedError

    def on_reoffer_refused(self, why: str, now: float, cause: int) -> list[Effect]:
        """Our reINVITE was refused: without its new media route the sharing cannot work, so
        the lab's UAs end the dialog."""
        return self.hang_up(why, now, "warning", cause)

    def session_over(self) -> list[Effect]:
        """This end has sent BYE (RFC 3261 §15.1.1: the session is over from then on)."""
        return []

    def on_send_failed(self, notice: SendFailed, now: float) -> list[Effect]:
        return [Log(f"cannot reach {notice.to}: {notice.reason}", "warning")]

    def on_connection_lost(self, notice: ConnectionLost) -> list[Effect]:
        return []

    # -- timers --------------------------------------------------------------------------------

    def on_sip_timer(self, timer: UaTimer, now: float) -> list[Effect] | None:
        """A timer of the dialog's transactions; None when ``timer`` is not one of them."""
        match timer:
            case UaTimer.TIMER_B:
                return self._timer_b(now)
            case UaTimer.RETRANSMIT_2XX:
                return self._retransmit_2xx(now)
            case UaTimer.ACK_WAIT:
                return self._ack_timeout(now)
            case UaTimer.GLARE:
                return self._glare_over(now)
            case UaTimer.TIMER_F:
                return self._timer_f(now)
            case UaTimer.HOLD:
                return self.hang_up(f"hold time over ({self.hold:g} s)", now,
                                    ending="ending the call with BYE")  # fmt: skip
        return None

    def _timer_b(self, now: float) -> list[Effect]:
        """Timer B of our reINVITE (the Skype client handles its INVITE's itself)."""
        if stale := self.fire_timer(UaEvent.TIMER_B, "Timer B fired with no INVITE waiting"):
            return stale
        why = (
            f"no response to our reINVITE within {self.timers.timer_b:g} s (Timer B, 64·T1, "
            "RFC 3261 §17.1.1.2)"
        )
        return [Log(f"{why}; §14.1: the UAC terminates the dialog: ending it with BYE",
                    "warning"), *self._send_bye(408, why)]  # fmt: skip

    # -- our 2xx until its ACK (RFC 3261 §13.3.1.4) ---------------------------------------------

    def send_2xx(
        self, conn: ConnId, request: Request, ok: Response, now: float, *, initial: bool
    ) -> list[Effect]:
        """Accept an INVITE or reINVITE: send ``ok`` and keep sending it, at T1 doubling up to
        T2, until the ACK arrives or 64·T1 passes. The 2xx goes end to end, through proxies
        that may use unreliable hops, so even a UAS on TCP retransmits it (§13.3.1.4)."""
        self.fire(UaEvent.SEND_2XX)
        interval = self.timers.next_interval(None)
        seq = sip.cseq(request).sequence
        self._accepted = _Accepted(conn, ok, seq, now, interval, initial)
        return [*self.reply(conn, ok),
                self.start_timer(UaTimer.RETRANSMIT_2XX, interval),
                self.start_timer(UaTimer.ACK_WAIT, self.timers.ack_wait)]  # fmt: skip

    def _retransmit_2xx(self, now: float) -> list[Effect]:
        accepted = self._accepted
        stale = self.fire_timer(
            UaEvent.TIMER_2XX, "2xx retransmission timer fired with no 2xx waiting", accepted
        )
        if stale is not None:
            return stale
        assert accepted is not None  # fire_timer said it is waiting
        what = sip.summary(accepted.response)
        effects = self.reply(accepted.conn, accepted.response)
        interval = self.timers.next_interval(accepted.interval)
        end = accepted.sent + self.timers.ack_wait
        if now + interval < end:
            accepted.interval = interval
            effects.append(self.start_timer(UaTimer.RETRANSMIT_2XX, interval))
            note = f"next in {interval:g} s"
        else:
            note = f"the last one: the 64·T1 wait ends at t={end:g} s"
        return [Log(f"no ACK yet: {what} sent again (RFC 3261 §13.3.1.4), {note}"), *effects]

    def _ack_timeout(self, now: float) -> list[Effect]:
        accepted = self._accepted
        stale = self.fire_timer(
            UaEvent.ACK_TIMEOUT, "ACK wait timer fired with no 2xx waiting", accepted
        )
        if stale is not None:
            return stale
        assert accepted is not None  # fire_timer said it is waiting
        self._accepted = None
        what = "INVITE" if accepted.initial else "reINVITE"
        why = (
            f"no ACK for the {sip.summary(accepted.response)} to the {what} after "
            f"{self.timers.ack_wait:g} s (64·T1, RFC 3261 §13.3.1.4)"
        )
        return [self.stop_timer(UaTimer.RETRANSMIT_2XX),
                Log(f"{why}: ending the dialog with BYE", "warning"),
                *self._send_bye(408, why)]  # fmt: skip

    def on_ack(self, request: Request, now: float) -> list[Effect]:
        """An ACK: of our pending 2xx (the table moves on), of an error answer of ours
        (§17.2.1: it just ends that transaction) or of nothing pending (absorbed, logged)."""
        accepted, seq = self._accepted, sip.cseq(request).sequence
        if (
            accepted is not None and seq == accepted.cseq and self.in_dialog(request)
            and self.allows(UaEvent.RECV_ACK)
        ):  # fmt: skip
            self.fire(UaEvent.RECV_ACK)
            self._accepted = None
            effects: list[Effect] = [self.stop_timer(UaTimer.RETRANSMIT_2XX),
                                     self.stop_timer(UaTimer.ACK_WAIT)]  # fmt: skip
            if not accepted.initial:
                effects += self._sharing_on()
            return effects + self.release_held()
        if seq == self._refused_cseq:
            return []
        return [Log(f"ACK (CSeq {seq}) acknowledges nothing pending: absorbed "
                    "(RFC 3261 §17.2.1)")]  # fmt: skip

    # -- the dialog and its reINVITE (RFC 3261 §12, §14; RFC 5245 §9.1.2.2) ---------------------

    def in_dialog(self, request: Request) -> bool:
        """§12.2.2: the request belongs to the call's dialog (Call-ID and both tags)."""
        dialog = self.dialog
        return (
            dialog is not None
            and sip.call_id(request) == dialog.call_id
            and sip.to_tag(request) == self.tag
            and sip.format_address(sip.from_address(request)) == dialog.remote
        )

    def send_reoffer(self) -> list[Effect]:
        """The post-ICE reINVITE, unless sharing is already on. §14.1: no new INVITE
        transaction while another is in progress in either direction (our 2xx not yet
        acknowledged, the peer's reINVITE not yet answered): then it waits for the table."""
        if self.shared or self.dialog is None or self._reoffer_held:
            return []
        if self.allows(UaEvent.SEND_REINVITE):
            return self._send_reinvite(UaEvent.SEND_REINVITE)
        if self.allows(UaEvent.TIMER_491) or self.machine.ended or self._bye is not None:
            return []  # a retry is already due, or the dialog is ending
        if self._accepted is not None:
            busy = f"our {sip.summary(self._accepted.response)} is not acknowledged yet"
        else:
            busy = "an INVITE transaction is in progress"
        self._reoffer_held = True
        return [Log(f"reINVITE held: {busy} (RFC 3261 §14.1: one INVITE transaction at a "
                    "time in a dialog)")]  # fmt: skip

    def release_held(self) -> list[Effect]:
        """The held reINVITE, now that the table allows it."""
        if not self._reoffer_held or not self.allows(UaEvent.SEND_REINVITE):
            return []
        self._reoffer_held = False
        if self.shared:
            return []  # the peer's reINVITE did it
        return [Log("no INVITE transaction in progress any more: sending the held reINVITE"),
                *self._send_reinvite(UaEvent.SEND_REINVITE)]  # fmt: skip

    def _send_reinvite(self, event: UaEvent) -> list[Effect]:
        dialog = self.dialog
        assert dialog is not None  # the table allows a reINVITE only in a dialog
        self.fire(event)
        self._reoffer = dialog.request(
            "INVITE", self.branch(), body=self.reoffer_body(), content_type=appsharing.CONTENT_TYPE
        )
        self._reoffer_ack = None
        # §17.1.1.2: Timer B until the first answer; the first proxy's 100 Trying stops it.
        return [*self.send_sip(self._reoffer, dialog.next_hop()),
                self.start_timer(UaTimer.TIMER_B, self.timers.timer_b)]  # fmt: skip

    def _glare_over(self, now: float) -> list[Effect]:
        if self.allows(UaEvent.TIMER_491):
            return [Log("491 wait over: sending the reINVITE again (RFC 3261 §14.1)"),
                    *self._send_reinvite(UaEvent.TIMER_491)]  # fmt: skip
        if self._glare_carried:
            # The peer's reINVITE came during the wait (on_reinvite): ours goes now if sharing
            # is still off, or waits for the peer's transaction to end.
            self._glare_carried = False
            if self.shared:
                return [Log("491 wait over: the peer's reINVITE set sharing up meanwhile, "
                            "ours is not needed")]  # fmt: skip
            return [Log("491 wait over (the peer's reINVITE came meanwhile): our reINVITE "
                        "again (RFC 3261 §14.1)"), *self.send_reoffer()]  # fmt: skip
        return [Log("491 retry timer fired, no retry due: ignored", "warning")]

    @staticmethod
    def answers(response: Response, request: Request | None) -> bool:
        """``response`` answers ``request`` of ours: same CSeq method and number (§8.1.3.3;
        Call-ID and From tag are checked where the response comes in)."""
        if request is None:
            return False
        sent, got = sip.cseq(request), sip.cseq(response)
        return got.method == sent.method and got.sequence == sent.sequence

    def is_reoffer_answer(self, response: Response) -> bool:
        return self.answers(response, self._reoffer)

    def reoffer_answered(self, response: Response, now: float) -> list[Effect]:
        """An answer to our reINVITE (:meth:`is_reoffer_answer` holds)."""
        dialog, reoffer = self.dialog, self._reoffer
        assert dialog is not None and reoffer is not None
        if response.code < 200:
            if self.allows(UaEvent.RECV_1XX):
                self.fire(UaEvent.RECV_1XX)
                return [self.stop_timer(UaTimer.TIMER_B)]
            return []
        code = response.code
        event = (
            UaEvent.RECV_2XX if code < 300
            else UaEvent.RECV_491 if code == 491
            else UaEvent.RECV_481 if code == 481
            else UaEvent.RECV_408 if code == 408
            else UaEvent.RECV_ERROR
        )  # fmt: skip
        if not self.allows(event):
            # A repeated final answer (§13.3.1.4: the UAS resends its 2xx until the ACK):
            # acknowledge it again, nothing more.
            if code < 300:
                ack = self._reoffer_ack
                return [] if ack is None else self.send_sip(ack, dialog.next_hop())
            return self.send_sip(sip.build_failure_ack(reoffer, response),
                                       dialog.next_hop())  # fmt: skip
        self.fire(event)
        effects: list[Effect] = [self.stop_timer(UaTimer.TIMER_B)]
        if event is UaEvent.RECV_2XX:
            # §12.2.1.2: a 2xx to a target refresh request updates the remote target.
            dialog.refresh_target(response)
            self._reoffer_ack = dialog.request("ACK", self.branch(),
                                               cseq=sip.cseq(reoffer).sequence)  # fmt: skip
            effects += self.send_sip(self._reoffer_ack, dialog.next_hop())
            return effects + self._sharing_on()
        # §17.1.1.3: the ACK of an error answer goes hop by hop, with the INVITE's branch.
        effects += self.send_sip(sip.build_failure_ack(reoffer, response),
                                       dialog.next_hop())  # fmt: skip
        if event is UaEvent.RECV_491:
            delay = glare_delay(self.rng, self.owns_call_id)
            owner = "we" if self.owns_call_id else "the peer"
            return [*effects,
                    Log(f"reINVITE answered 491 Request Pending (glare): trying again in "
                        f"{delay:.2f} s ({owner} chose the Call-ID, RFC 3261 §14.1)"),
                    self.start_timer(UaTimer.GLARE, delay)]  # fmt: skip
        why = f"reINVITE refused: {sip.summary(response)}{diag_suffix(response)}"
        if event is UaEvent.RECV_481:
            # §12.2.1.2, §14.1: the peer has no such dialog; ours ends here, without BYE.
            return effects + self.end(f"{why}: the peer has no such dialog, so ours is over "
                                      "(RFC 3261 §12.2.1.2)", now, "warning")  # fmt: skip
        if event is UaEvent.RECV_408:
            # §14.1: a 408 is treated as a timeout of the reINVITE: the UAC terminates the
            # dialog, with BYE as after Timer B.
            return [*effects, Log(f"{why}: RFC 3261 §14.1, the UAC terminates the dialog: "
                                  "ending it with BYE", "warning"),
                    *self._send_bye(408, why)]  # fmt: skip
        # §14.1: any other error leaves the session as it was before the reINVITE; the lab's
        # UAs cannot share without the new media route and end the dialog (Reason: the status).
        return effects + self.on_reoffer_refused(why, now, code)

    def on_reinvite(self, conn: ConnId, request: Request, now: float) -> list[Effect]:
        """The peer's reINVITE in our dialog: taken on when the table allows, else answered
        as RFC 3261 §14.2 says."""
        if not self.allows(UaEvent.RECV_REINVITE):
            return self._refuse_reinvite(conn, request)
        effects: list[Effect] = []
        if self.allows(UaEvent.TIMER_491):
            # We were waiting to retry after a 491 and the peer retried first: its transaction
            # goes ahead, and ours still waits for our §14.1 timer ("when the timer fires,
            # the UAC SHOULD attempt the re-INVITE once more, if it still desires"), not for
            # the peer's transaction to end: two ends that each refuse the other's reINVITE
            # would otherwise answer each other's refusal with a new reINVITE at once, a storm.
            self._glare_carried = True
        self.fire(UaEvent.RECV_REINVITE)
        self._reinvites_taken += 1
        assert self.dialog is not None  # in_dialog() held
        self.dialog.refresh_target(request)  # §12.2.2: a target refresh request
        return effects + self.on_peer_reoffer(conn, request, now)

    def _refuse_reinvite(self, conn: ConnId, request: Request) -> list[Effect]:
        extra: list[tuple[str, str]] = []
        if self.allows(UaEvent.RECV_2XX) or self.allows(UaEvent.RECV_ACK):
            # §14.2: an INVITE of ours is in progress (its answer, or the ACK of our 2xx, is
            # still due): 491, and the peer retries after its §14.1 delay. (§14.2 names no
            # code for an INVITE that overtakes the ACK of our 2xx; our INVITE transaction is
            # not over, so it is answered the same way.)
            code, reason = 491, "Request Pending"
            why = "our own INVITE transaction is in progress (RFC 3261 §14.2)"
        elif self.allows(UaEvent.SEND_2XX):
            # §14.2: a second INVITE before our final answer to the first: 500 with a
            # Retry-After of 0-10 s.
            code, reason = 500, "Server Internal Error"
            extra.append(("Retry-After", str(self.rng.randint(0, 10))))
            why = "the peer's previous reINVITE is not answered yet (RFC 3261 §14.2)"
        else:
            code, reason = 481, "Call/Transaction Does Not Exist"
            why = "the dialog is over (RFC 3261 §12.2.2)"
        self._refused_cseq = sip.cseq(request).sequence
        no = sip.build_response(request, code, reason, extra_headers=extra)
        return [Log(f"reINVITE answered {code} {reason}: {why}"),
                *self.reply(conn, no)]  # fmt: skip

    def reinvite_refusal(self) -> Refusal | None:
        """How to answer the peer's reINVITE just taken on: the ``refuse_reinvite`` setting
        when it names this one, else None (200)."""
        setting = self._refusal_setting
        if setting is not None and setting.applies(self._reinvites_taken):
            return Refusal.of(setting)
        return None

    def answer_reoffer(
        self, conn: ConnId, request: Request, body: bytes, contact: str, now: float
    ) -> list[Effect]:
        """Answer the peer's reINVITE we took on: an error when :meth:`reinvite_refusal` says
        so (§14.2: the session stays as it was; 481: this end has no dialog any more), else
        200 with ``body``."""
        refusal = self.reinvite_refusal()
        if refusal is not None:
            no = refusal.response(request)
            self._refused_cseq = sip.cseq(request).sequence
            said = f"refusing the reINVITE: {sip.summary(no)}{diag_suffix(no)}"
            if refusal.code == 481:
                # §12.2.2: 481 says this end has no such dialog; so it is over here too.
                self.fire(UaEvent.SEND_481)
                return [Log(said), *self.reply(conn, no),
                        *self.end("the dialog is dropped: reINVITE answered 481", now)]  # fmt: skip
            self.fire(UaEvent.SEND_ERROR)
            return [Log(said), *self.reply(conn, no), *self.release_held()]
        ok = sip.build_response(
            request, 200, record_route=(), contact=contact,
            content_type=appsharing.CONTENT_TYPE, body=body,
        )  # fmt: skip
        return self.send_2xx(conn, request, ok, now, initial=False)

    def _sharing_on(self) -> list[Effect]:
        if self.shared:
            return []
        self.shared = True
        effects: list[Effect] = [Log("sharing established: the reINVITE is acknowledged")]
        if self.sends_bye:
            effects.append(self.start_timer(UaTimer.HOLD, self.hold))
        return effects

    # -- BYE (RFC 3261 §15) ----------------------------------------------------------------------

    def hang_up(
        self, why: str, now: float, level: str = "info", cause: int | None = None,
        ending: str = "ending the dialog with BYE",
    ) -> list[Effect]:  # fmt: skip
        """End the dialog with BYE when the table allows it, logging ``why: ending``.
        ``cause``: the BYE ends the call for a reason other than the user's hang-up, said on
        the wire in a Reason header (RFC 3326) whose text is ``why``."""
        if self.allows(UaEvent.SEND_BYE):
            self.fire(UaEvent.SEND_BYE)
            return [Log(f"{why}: {ending}", level), *self._send_bye(cause, why)]
        if self.machine.ended or self._bye is not None:
            return []  # already over, or our BYE is out
        return [Log(f"{why}; no BYE in state {self.state.name} (RFC 3261 §15: none before the "
                    "dialog exists, nor from the callee before the ACK of its 2xx)",
                    "warning")]  # fmt: skip

    def _send_bye(self, cause: int | None = None, why: str = "") -> list[Effect]:
        dialog = self.dialog
        assert dialog is not None  # the table allows BYE only in a dialog
        # RFC 3326 §2: a BYE may say why the session ends; a capture then shows whose timer
        # or which refusal ended the call. The user's own hang-up carries none (the lab's).
        extra = () if cause is None else (("Reason", sip.reason_header(cause, why)),)
        self._bye = dialog.request("BYE", self.branch(), extra_headers=extra)
        return [*self.session_over(), *self.send_sip(self._bye, dialog.next_hop()),
                self.start_timer(UaTimer.TIMER_F, self.timers.timer_f)]  # fmt: skip

    def _timer_f(self, now: float) -> list[Effect]:
        if stale := self.fire_timer(UaEvent.TIMER_F, "Timer F fired with no BYE waiting"):
            return stale
        why = (
            f"no answer to our BYE within {self.timers.timer_f:g} s (Timer F, RFC 3261 "
            "§17.1.2.2): the dialog is over all the same"
        )
        return self.end(why, now, "warning")

    def on_bye(self, conn: ConnId, request: Request, now: float) -> list[Effect]:
        """The peer's BYE in our dialog: 200, and the dialog is over (§15.1.2)."""
        if not self.allows(UaEvent.RECV_BYE):
            no = sip.build_response(request, 481)
            return [Log(f"BYE in state {self.state.name}: 481 (RFC 3261 §15.1.2)", "warning"),
                    *self.reply(conn, no)]  # fmt: skip
        self.fire(UaEvent.RECV_BYE)
        effects = self.reply(conn, sip.build_response(request, 200))
        return effects + self.end("call ended by the peer's BYE", now)

    def bye_answered(self, response: Response, now: float) -> list[Effect]:
        if response.code < 200 or not self.allows(UaEvent.RECV_BYE_ANSWER):
            return []
        self.fire(UaEvent.RECV_BYE_ANSWER)
        return self.end(f"call ended: our BYE was answered {sip.summary(response)}", now)

    def end(self, why: str, now: float, level: str = "info") -> list[Effect]:
        """The table has reached its final state: stop the dialog's timers, then let the
        subclass release the rest."""
        assert self.machine.ended
        self._accepted, self._reoffer_held, self._glare_carried = None, False, False
        return [*(self.stop_timer(t) for t in SIP_TIMERS), *self.on_ended(why, now, level)]

    # -- requests and responses inside the dialog ------------------------------------------------

    def on_dialog_request(self, conn: ConnId, request: Request, now: float) -> list[Effect]:
        """ACK, or a request that must belong to the dialog (reINVITE, BYE)."""
        if request.method == "ACK":
            return self.on_ack(request, now)
        dialog = self.dialog
        if dialog is None or not self.in_dialog(request):
            return self.reply(conn, sip.build_response(request, 481))
        if not dialog.accept_remote_cseq(request):
            # §12.2.2: a CSeq lower than the last one seen is out of order.
            return self.reply(conn, sip.build_response(request, 500))
        if request.method == "INVITE":
            return self.on_reinvite(conn, request, now)
        if request.method == "BYE":
            return self.on_bye(conn, request, now)
        return self.reply(conn, sip.build_response(request, 405, "Method Not Allowed"))

    def on_dialog_response(self, response: Response, now: float) -> list[Effect]:
        """An answer to our reINVITE or BYE; anything else is logged and dropped."""
        if self.is_reoffer_answer(response):
            return self.reoffer_answered(response, now)
        if self.answers(response, self._bye):
            return self.bye_answered(response, now)
        if response.code < 200:
            return []
        return [Log(f"{sip.summary(response)} ({sip.cseq(response).method}) answers nothing "
                    "of ours: dropped", "warning")]  # fmt: skip

    def on_transport(self, notice: Notice, now: float) -> list[Effect]:
        """What the SIP transport reports: a message, a send that failed, a lost connection."""
        if isinstance(notice, Incoming):
            try:
                return self.on_sip(notice.conn, notice.message, now)
            except WireError as exc:
                return [Log(f"cannot use {sip.summary(notice.message)}: {exc}", "warning")]
        if isinstance(notice, SendFailed):
            return self.on_send_failed(notice, now)
        return self.on_connection_lost(notice)
