"""The meeting's audio/video call, which comes before the share (``call.av_call``).

Cisco 212580 shows only the sharing INVITE and says why: "the first invites for audio and video
calls, which have already been negotiated at this stage, are not shown"; the sharing INVITE "will
have a different SIP call-id than the initial audio/video call". labsim makes that call so that a
run shows both dialogs: the Skype client's INVITE with ``m=audio`` and ``m=video``
(:mod:`labsim.proto.avcall`), CMS's ``100 Trying`` and ``200 OK``, the ACK, hop by hop through
the Edge, Expressway-E and Expressway-C as the share's messages go, each proxy adding its Via
and Record-Route (RFC 3261 §16.6). No media flows: the SDP is the whole call.

Each end keeps this dialog apart from the share's, in its own state machine walked along its
own table (:data:`AV_CLIENT_TABLE`, :data:`AV_CMS_TABLE`, drawn in ``docs/state-*-av.md``): the
client is the UAC of the INVITE and the one that hangs up (it leaves the meeting once its
sharing dialog is over); CMS the UAS, resending its 2xx until the ACK and ending the call with
BYE after 64·T1 without one (§13.3.1.4). Its own Call-ID, tags, branches, CSeq and ICE
credentials come from a random generator of its own, so the sharing dialog's values are the
same with the audio/video call or without it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Protocol

from sipmessage import Request, Response, Via

from labsim.actors.common import UaTimer
from labsim.actors.lab import Lab
from labsim.proto import avcall
from labsim.proto.events import Address, ConnId, Effect, Log
from labsim.proto.sip_dialog import Dialog
from labsim.proto.sip_ua_state import (
    Machine,
    SipTimers,
    Table,
    UaEvent,
    UaState,
    from_every_state,
)
from labsim.wire import WireError, sip

_S, _E = UaState, UaEvent

#: What the audio/video pages say of the events their tables do not allow, where the sharing
#: dialog's words (:data:`labsim.proto.sip_ua_state.DISALLOWED`) do not fit.
_AV_DISALLOWED: Mapping[UaEvent, str] = {
    _E.SEND_INVITE: "not sent: one audio/video INVITE per run",
    _E.RECV_1XX: "ignored (a provisional answer after the final one)",
    _E.RECV_2XX: "a retransmitted 2xx: ACKed again (§13.3.1.4); a 2xx after Timer B ended "
    "the attempt: ignored",
    _E.RECV_ERROR: "a repeated error answer: the hop-by-hop ACK again (§17.1.1.3)",
    _E.BAD_2XX: "a repeat of the answer: ignored",
    _E.RECV_INVITE: "the same INVITE again: 100 Trying again while proceeding (§17.2.1), else "
    "absorbed; another audio/video call: 486 Busy Here",
    _E.RECV_ACK: "absorbed and logged: it acknowledges nothing pending (§17.2.1)",
    _E.SEND_BYE: "not sent: the call is not confirmed, or is already ending",
    _E.RECV_BYE: "481 Call/Transaction Does Not Exist (§15.1.2)",
}

#: The Skype client's audio/video call: the UAC of its INVITE (§13.2, §17.1.1), then BYE (§15)
#: when it leaves the meeting; a transport failure ends it from any state.
AV_CLIENT_TABLE: Table[UaState] = Table(
    "skype_client (audio/video call)",
    _S.IDLE,
    _S.TERMINATED,
    from_every_state(
        {
            _S.IDLE: {_E.SEND_INVITE: _S.CALLING},
            _S.CALLING: {
                _E.RECV_1XX: _S.CALLING,
                _E.RECV_2XX: _S.CONFIRMED,
                _E.RECV_ERROR: _S.TERMINATED,
                _E.BAD_2XX: _S.TERMINATED,
                _E.TIMER_B: _S.TERMINATED,
            },
            _S.CONFIRMED: {_E.SEND_BYE: _S.TERMINATING, _E.RECV_BYE: _S.TERMINATED},
            _S.TERMINATING: {
                _E.RECV_BYE_ANSWER: _S.TERMINATED,
                _E.TIMER_F: _S.TERMINATED,
                _E.RECV_BYE: _S.TERMINATED,
            },
            _S.TERMINATED: {},
        },
        _E.TRANSPORT_ERROR,
        _S.TERMINATED,
    ),
    {
        _S.IDLE: "not in the meeting yet",
        _S.CALLING: "audio/video INVITE sent, no final answer yet (Timer B until the first answer)",
        _S.CONFIRMED: "in the meeting's audio/video call (the share runs in its own dialog)",
        _S.TERMINATING: "BYE sent, waiting for its answer (Timer F)",
        _S.TERMINATED: "the audio/video call is over",
    },
    _AV_DISALLOWED,
)

#: CMS's side of the audio/video call: the UAS of the INVITE (§13.3), its 2xx resent until the
#: ACK (§13.3.1.4), then the client's BYE; 64·T1 without the ACK ends the call with BYE.
AV_CMS_TABLE: Table[UaState] = Table(
    "cms (audio/video call)",
    _S.IDLE,
    _S.TERMINATED,
    {
        _S.IDLE: {_E.RECV_INVITE: _S.PROCEEDING},
        _S.PROCEEDING: {_E.SEND_2XX: _S.ACCEPTED},
        _S.ACCEPTED: {
            _E.TIMER_2XX: _S.ACCEPTED,
            _E.RECV_ACK: _S.CONFIRMED,
            _E.ACK_TIMEOUT: _S.TERMINATING,
            _E.RECV_BYE: _S.TERMINATED,
        },
        _S.CONFIRMED: {_E.SEND_BYE: _S.TERMINATING, _E.RECV_BYE: _S.TERMINATED},
        _S.TERMINATING: {
            _E.RECV_BYE_ANSWER: _S.TERMINATED,
            _E.TIMER_F: _S.TERMINATED,
            _E.RECV_BYE: _S.TERMINATED,
        },
        _S.TERMINATED: {},
    },
    {
        _S.IDLE: "the meeting, nobody in its audio/video call yet",
        _S.PROCEEDING: "audio/video INVITE answered 100 (no TURN request: CMS allocates only "
        "for the share)",
        _S.ACCEPTED: "200 OK sent, resent at T1 doubling to T2 until its ACK (64·T1 at most)",
        _S.CONFIRMED: "the client is in the meeting's audio/video call",
        _S.TERMINATING: "BYE sent (no ACK within 64·T1), waiting for its answer (Timer F)",
        _S.TERMINATED: "the audio/video call is over",
    },
    _AV_DISALLOWED,
)


class AvHost(Protocol):
    """What the audio/video call needs of the user agent it lives in: its SIP transport and
    its timers (the UA routes the :class:`UaTimer` ``AV_*`` timers back here)."""

    def send_sip(self, message: sip.SipMessage, to: Address) -> list[Effect]: ...
    def reply(self, conn: ConnId, message: sip.SipMessage) -> list[Effect]: ...
    def start_timer(self, timer: UaTimer, delay: float) -> Effect: ...
    def stop_timer(self, timer: UaTimer) -> Effect: ...


#: Told when the call is up (the client: its ACK is out) and when it is over (with the reason,
#: and a log level), each returning what the UA does next.
OnUp = Callable[[float], list[Effect]]
OnOver = Callable[[str, float, str], list[Effect]]

_TIMERS = (UaTimer.AV_TIMER_B, UaTimer.AV_RETRANSMIT_2XX, UaTimer.AV_ACK_WAIT, UaTimer.AV_TIMER_F)


class AvCall:
    """One end of the audio/video call: its dialog, its state machine, its own Call-ID, tag,
    branches and SDP; SIP goes out through :class:`AvHost`."""

    def __init__(
        self, host: AvHost, table: Table[UaState], seed: int, timers: SipTimers, address: str,
        port: int, contact: str, on_up: OnUp, on_over: OnOver,
    ) -> None:  # fmt: skip
        self.host = host
        #: The UA's own SIP timers (RFC 3261 §17.1.1.1): the same for both its dialogs.
        self.timers = timers
        self.machine: Machine[UaState] = Machine(table)
        # Its own generator: the sharing dialog's random values do not move (see above).
        self.rng = random.Random(f"{seed}/audio-video")
        self.address, self.port, self.contact = address, port, contact
        self.on_up, self.on_over = on_up, on_over
        self.tag = f"{self.rng.getrandbits(32):08x}"
        self.call_id = ""
        self.dialog: Dialog | None = None
        self.ufrag, self.pwd = avcall.credentials(self.rng)
        self._branches = 0
        self._bye: Request | None = None

    @property
    def state(self) -> UaState:
        return self.machine.state

    @property
    def active(self) -> bool:
        """Begun and not over."""
        return self.state not in (UaState.IDLE, UaState.TERMINATED)

    @property
    def up(self) -> bool:
        """Confirmed: both ends are in the call and nobody is ending it."""
        return self.state is UaState.CONFIRMED

    def owns(self, message: sip.SipMessage) -> bool:
        """The message belongs to this call (its Call-ID, RFC 3261 §12.2)."""
        return bool(self.call_id) and sip.call_id(message) == self.call_id

    def branch(self) -> str:
        """A new §8.1.1.7 branch of this call's transactions."""
        self._branches += 1
        return f"{sip.MAGIC_COOKIE}av{self._branches:x}{self.rng.getrandbits(24):06x}"

    def _over(self, why: str, now: float, level: str = "info") -> list[Effect]:
        assert self.machine.ended
        return [*(self.host.stop_timer(t) for t in _TIMERS), *self.on_over(why, now, level)]

    def transport_error(self) -> list[Effect]:
        """The UA's SIP transport failed: nothing more can be sent in this call either."""
        if self.machine.allows(UaEvent.TRANSPORT_ERROR):
            self.machine.fire(UaEvent.TRANSPORT_ERROR)
            return [self.host.stop_timer(t) for t in _TIMERS]
        return []

    # -- BYE (§15), either end -----------------------------------------------------------------

    def hang_up(self, why: str, cause: int | None = None) -> list[Effect]:
        """End the call with BYE (RFC 3326 Reason when ``cause``: not the user's hang-up)."""
        dialog = self.dialog
        if dialog is None or not self.machine.allows(UaEvent.SEND_BYE):
            return []
        self.machine.fire(UaEvent.SEND_BYE)
        extra = () if cause is None else (("Reason", sip.reason_header(cause, why)),)
        self._bye = dialog.request("BYE", self.branch(), extra_headers=extra)
        return [Log(f"audio/video call: {why}: BYE"),
                *self.host.send_sip(self._bye, dialog.next_hop()),
                self.host.start_timer(UaTimer.AV_TIMER_F, self.timers.timer_f)]  # fmt: skip

    def on_bye(self, conn: ConnId, request: Request, now: float) -> list[Effect]:
        dialog = self.dialog
        if (
            dialog is None or sip.to_tag(request) != self.tag
            or not self.machine.allows(UaEvent.RECV_BYE)
        ):  # fmt: skip
            return self.host.reply(conn, sip.build_response(request, 481))
        self.machine.fire(UaEvent.RECV_BYE)
        return [*self.host.reply(conn, sip.build_response(request, 200)),
                *self._over("audio/video call ended by the peer's BYE", now)]  # fmt: skip

    def on_bye_answer(self, response: Response, now: float) -> list[Effect]:
        if response.code < 200 or not self.machine.allows(UaEvent.RECV_BYE_ANSWER):
            return []
        self.machine.fire(UaEvent.RECV_BYE_ANSWER)
        return self._over(f"audio/video call over: our BYE was answered {sip.summary(response)}",
                          now)  # fmt: skip

    def timer_f(self, now: float) -> list[Effect]:
        if not self.machine.allows(UaEvent.TIMER_F):
            return [Log("audio/video call: Timer F fired with no BYE waiting: ignored", "warning")]
        self.machine.fire(UaEvent.TIMER_F)
        return self._over("audio/video call: no answer to our BYE within 64·T1 (Timer F, RFC "
                          "3261 §17.1.2.2): over all the same", now, "warning")  # fmt: skip

    def is_bye_answer(self, response: Response) -> bool:
        bye = self._bye
        return bye is not None and sip.cseq(response).method == "BYE" and (
            sip.cseq(response).sequence == sip.cseq(bye).sequence
        )  # fmt: skip


class AvCaller(AvCall):
    """The Skype client's end: it sends the INVITE to its Edge (the outbound proxy), ACKs the
    2xx, and hangs up when the UA says so."""

    def __init__(self, host: AvHost, lab: Lab, on_up: OnUp, on_over: OnOver) -> None:
        s = lab.skype_client
        contact = f"<sip:alice@{s.address}:{s.sip_port};transport=tcp>"
        super().__init__(host, AV_CLIENT_TABLE, s.seed, s.sip_timers, s.address, s.sip_port,
                         contact, on_up, on_over)  # fmt: skip
        self.user, self.target = s.user, lab.cms.user
        edge = lab.skype_edge
        self.edge = lab.sip("skype_edge")
        self.edge_address = edge.address
        self.call_id = f"{self.rng.getrandbits(64):016x}@{s.address}"
        self.invite: Request | None = None
        self._ack: tuple[Request, Address] | None = None

    def start(self) -> list[Effect]:
        """The audio/video INVITE (RFC 3261 §13.2.1): a new Call-ID and From tag, CSeq 1."""
        if not self.machine.allows(UaEvent.SEND_INVITE):
            return [Log(f"no audio/video INVITE in state {self.state.name}", "warning")]
        self.machine.fire(UaEvent.SEND_INVITE)
        side = avcall.AvSide(self.address, avcall.CLIENT_PORTS, self.ufrag, self.pwd,
                             self.rng.randbytes(30), relay=self.edge_address)  # fmt: skip
        self.invite = sip.build_request(
            "INVITE",
            self.target,
            via=Via.parse(f"SIP/2.0/TCP {self.address}:{self.port};branch={self.branch()};rport"),
            from_addr=f"<{self.user}>;tag={self.tag}",
            to_addr=f"<{self.target}>",
            call_id=self.call_id,
            cseq=1,
            contact=self.contact,
            content_type=avcall.CONTENT_TYPE,
            body=avcall.build(side),
        )
        return [Log("joining the meeting: audio/video INVITE (m=audio, m=video)"),
                *self.host.send_sip(self.invite, self.edge),
                self.host.start_timer(UaTimer.AV_TIMER_B, self.timers.timer_b)]  # fmt: skip

    def on_response(self, response: Response, now: float) -> list[Effect]:
        if sip.from_tag(response) != self.tag:
            return [Log(f"stray {sip.summary(response)} dropped", "warning")]
        if self.is_bye_answer(response):
            return self.on_bye_answer(response, now)
        invite = self.invite
        if invite is None or sip.cseq(response).sequence != sip.cseq(invite).sequence:
            return [] if response.code < 200 else [
                Log(f"{sip.summary(response)} answers nothing of the audio/video call's: "
                    "dropped", "warning")]  # fmt: skip
        if response.code < 200:
            if not self.machine.allows(UaEvent.RECV_1XX):
                return []
            self.machine.fire(UaEvent.RECV_1XX)
            return [self.host.stop_timer(UaTimer.AV_TIMER_B)]  # §17.1.1.2
        if response.code >= 300:
            # §17.1.1.3: the ACK of an error answer goes hop by hop, with the INVITE's branch.
            ack = sip.build_failure_ack(invite, response)
            if not self.machine.allows(UaEvent.RECV_ERROR):
                return self.host.send_sip(ack, self.edge)
            self.machine.fire(UaEvent.RECV_ERROR)
            why = f"the meeting refused the audio/video call: {sip.summary(response)}"
            return [*self.host.send_sip(ack, self.edge), *self._over(why, now, "warning")]
        if not self.machine.allows(UaEvent.RECV_2XX):
            # §13.3.1.4: the UAS resends its 2xx until an ACK reaches it: ACK it again.
            if self._ack is None:
                return [Log(f"late {sip.summary(response)} to the audio/video INVITE (its "
                            "attempt is over): ignored", "warning")]  # fmt: skip
            return self.host.send_sip(*self._ack)
        try:
            dialog = Dialog.as_uac(invite, response, self.contact)
        except WireError as exc:
            self.machine.fire(UaEvent.BAD_2XX)
            return self._over(f"audio/video call: unusable 2xx: {exc}", now, "warning")
        self.machine.fire(UaEvent.RECV_2XX)
        self.dialog = dialog
        ack = dialog.request("ACK", self.branch(), cseq=sip.cseq(invite).sequence)
        self._ack = (ack, dialog.next_hop())
        return [self.host.stop_timer(UaTimer.AV_TIMER_B), *self.host.send_sip(*self._ack),
                *self.on_up(now)]  # fmt: skip

    def on_request(self, conn: ConnId, request: Request, now: float) -> list[Effect]:
        if request.method == "BYE":
            return self.on_bye(conn, request, now)
        if request.method == "ACK":
            return []  # the client answers no INVITE in this call: nothing to acknowledge
        # No reINVITE in this call: the lab's CMS never sends one (§14.2 would let the client
        # refuse it; 488 says it does not take a new offer here).
        code = 488 if request.method == "INVITE" else 405
        return self.host.reply(conn, sip.build_response(request, code))

    def on_timer(self, timer: UaTimer, now: float) -> list[Effect]:
        if timer is UaTimer.AV_TIMER_B:
            if not self.machine.allows(UaEvent.TIMER_B):
                return [Log("audio/video Timer B fired with no INVITE waiting: ignored",
                            "warning")]  # fmt: skip
            self.machine.fire(UaEvent.TIMER_B)
            why = (
                f"no response to the audio/video INVITE within {self.timers.timer_b:g} s (Timer B, "
                "64·T1, RFC 3261 §17.1.1.2)"
            )
            return self._over(why, now, "warning")
        if timer is UaTimer.AV_TIMER_F:
            return self.timer_f(now)
        return []


class AvCallee(AvCall):
    """CMS's end: it answers the INVITE at once (no TURN request for audio and video), resends
    its 2xx until the ACK, and takes the client's BYE."""

    def __init__(self, host: AvHost, lab: Lab, on_up: OnUp, on_over: OnOver) -> None:
        s = lab.cms
        contact = f"<sip:meeting@{s.address}:{s.sip_port};transport=tcp>"
        super().__init__(host, AV_CMS_TABLE, s.seed, s.sip_timers, s.address, s.sip_port,
                         contact, on_up, on_over)  # fmt: skip
        self.invite: Request | None = None
        self._ok: tuple[ConnId, Response] | None = None
        """Our 2xx and the connection it goes back on, until its ACK (§13.3.1.4)."""
        self._sent = 0.0
        self._interval = self.timers.next_interval(None)

    def on_invite(self, conn: ConnId, invite: Request, now: float) -> list[Effect]:
        if not self.machine.allows(UaEvent.RECV_INVITE):
            if self.owns(invite):
                if self.state is UaState.PROCEEDING:
                    return self.host.reply(conn, sip.build_response(invite, 100))
                return [Log("the audio/video INVITE again: absorbed, it is answered (RFC 3261 "
                            "§17.2.1)")]  # fmt: skip
            busy = sip.build_response(invite, 486, to_tag=self.tag)
            return [Log("a second audio/video call: 486 Busy Here"), *self.host.reply(conn, busy)]
        effects = self.host.reply(conn, sip.build_response(invite, 100))
        if not sip.contact(invite):
            # §8.1.1.8: no Contact, no dialog: refused, and no state changes.
            bad = sip.build_response(invite, 400, "Missing Contact", to_tag=self.tag)
            return [*effects, *self.host.reply(conn, bad)]
        self.machine.fire(UaEvent.RECV_INVITE)
        self.invite, self.call_id = invite, sip.call_id(invite)
        side = avcall.AvSide(self.address, avcall.CMS_PORTS, self.ufrag, self.pwd,
                             self.rng.randbytes(30), session_id=4242)  # fmt: skip
        ok = sip.build_response(
            invite, 200, to_tag=self.tag, contact=self.contact,
            content_type=avcall.CONTENT_TYPE, body=avcall.build(side, answer=True),
        )  # fmt: skip
        local = sip.format_address(sip.to_address(ok))
        self.dialog = Dialog.as_uas(invite, local, self.address, self.port, self.contact)
        self.machine.fire(UaEvent.SEND_2XX)
        self._ok, self._sent = (conn, ok), now
        self._interval = self.timers.next_interval(None)
        return [*effects,
                Log("audio/video call: answered with host candidates (no TURN request: CMS "
                    "allocates its relay for the share only)"),
                *self.host.reply(conn, ok),
                self.host.start_timer(UaTimer.AV_RETRANSMIT_2XX, self._interval),
                self.host.start_timer(UaTimer.AV_ACK_WAIT, self.timers.ack_wait)]  # fmt: skip

    def on_request(self, conn: ConnId, request: Request, now: float) -> list[Effect]:
        if request.method == "ACK":
            return self._ack(request, now)
        if request.method == "BYE":
            return self.on_bye(conn, request, now)
        # No reINVITE in this call (the client never sends one): 488, it takes no new offer
        # here; a CANCEL comes too late, the INVITE is answered (§9.2).
        code = {"INVITE": 488, "CANCEL": 481}.get(request.method, 405)
        return self.host.reply(conn, sip.build_response(request, code))

    def _ack(self, request: Request, now: float) -> list[Effect]:
        invite = self.invite
        if (
            invite is None or sip.cseq(request).sequence != sip.cseq(invite).sequence
            or not self.machine.allows(UaEvent.RECV_ACK)
        ):  # fmt: skip
            return []  # a repeated ACK (the client ACKs every 2xx it gets): absorbed, §17.2.1
        self.machine.fire(UaEvent.RECV_ACK)
        self._ok = None
        return [self.host.stop_timer(UaTimer.AV_RETRANSMIT_2XX),
                self.host.stop_timer(UaTimer.AV_ACK_WAIT), *self.on_up(now)]  # fmt: skip

    def on_response(self, response: Response, now: float) -> list[Effect]:
        if self.is_bye_answer(response):
            return self.on_bye_answer(response, now)
        return []

    def on_timer(self, timer: UaTimer, now: float) -> list[Effect]:
        ok = self._ok
        if timer is UaTimer.AV_RETRANSMIT_2XX and ok is not None:
            if not self.machine.allows(UaEvent.TIMER_2XX):
                return []
            self.machine.fire(UaEvent.TIMER_2XX)
            self._interval = self.timers.next_interval(self._interval)
            effects = self.host.reply(*ok)
            if now + self._interval < self._sent + self.timers.ack_wait:
                effects.append(self.host.start_timer(UaTimer.AV_RETRANSMIT_2XX, self._interval))
            return [Log("audio/video call: no ACK yet: 200 OK sent again (RFC 3261 "
                        "§13.3.1.4)"), *effects]  # fmt: skip
        if timer is UaTimer.AV_ACK_WAIT and ok is not None:
            if not self.machine.allows(UaEvent.ACK_TIMEOUT):
                return []
            self.machine.fire(UaEvent.ACK_TIMEOUT)
            self._ok = None
            why = (
                f"no ACK for the 200 OK to the audio/video INVITE after {self.timers.ack_wait:g} s "
                "(64·T1, RFC 3261 §13.3.1.4)"
            )
            dialog = self.dialog
            assert dialog is not None  # the table allows ACK_TIMEOUT only once answered
            self._bye = dialog.request(
                "BYE", self.branch(), extra_headers=(("Reason", sip.reason_header(408, why)),)
            )
            return [self.host.stop_timer(UaTimer.AV_RETRANSMIT_2XX),
                    Log(f"{why}: ending the audio/video call with BYE", "warning"),
                    *self.host.send_sip(self._bye, dialog.next_hop()),
                    self.host.start_timer(UaTimer.AV_TIMER_F, self.timers.timer_f)]  # fmt: skip
        if timer is UaTimer.AV_TIMER_F:
            return self.timer_f(now)
        return []
