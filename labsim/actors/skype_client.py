"""The Skype for Business client that shares its screen.

It sends a new INVITE (its own Call-ID, apart from the audio/video call, as Cisco 212580 notes)
with ``m=applicationsharing`` and MS-ICE2 TCP candidates: its host candidates and the relay
candidates its Edge gives it. From the 200 OK it takes CMS's relay candidate; having no IP
path to Expressway-E, it reaches that candidate through its Edge's media relay (or directly
when ``direct_path`` is set, the lab's missing path present). On that connection it runs the
ICE-TCP checks, RFC 4571-framed, and answers CMS's. Then the reINVITE: it sends it when it is
the side that does (a setting), or answers CMS's. After ``hold`` seconds it hangs up with BYE.

Every outbound SIP request goes to the Edge, its outbound proxy; requests inside the dialog
carry the route set the proxies recorded (:mod:`labsim.proto.sip_dialog`).

Its SIP state is :data:`CLIENT_TABLE` (drawn in ``docs/state-skype_client.md``): the UAC of
the dialog-creating INVITE, then either end of reINVITEs and BYE (the shared part is
:class:`~labsim.actors.common.UserAgent`).
"""

from __future__ import annotations

from sipmessage import Request, Response, Via

from labsim.actors.av_call import AvCaller
from labsim.actors.common import Refusal, UaTimer, UserAgent, diag_suffix
from labsim.actors.lab import Lab
from labsim.proto import appsharing
from labsim.proto.events import Address, ConnId, Effect, Log
from labsim.proto.ice import (
    CheckLink,
    CheckSettings,
    CheckStream,
    IceCredentials,
    LinkClosed,
    LinkFailed,
    LinkNotice,
    LinkUp,
    PairValid,
)
from labsim.proto.sip_dialog import Dialog
from labsim.proto.sip_transport import ConnectionLost, SendFailed
from labsim.proto.sip_ua_state import (
    Table,
    UaEvent,
    UaState,
    dialog_transitions,
    from_every_state,
)
from labsim.wire import WireError, sip
from labsim.wire.sdp import Candidate

MEDIA = "media"


_C, _E = UaState, UaEvent

#: Every transition of the Skype client (rule 1 of :mod:`labsim.proto.sip_ua_state`). A
#: failure of the transport ends the dialog from any state: nothing more can be sent.
CLIENT_TABLE: Table[UaState] = Table(
    "skype_client",
    _C.IDLE,
    _C.TERMINATED,
    from_every_state(
        {
            _C.IDLE: {
                _E.SEND_INVITE: _C.CALLING,
            },
            _C.CALLING: {
                _E.RECV_1XX: _C.CALLING,
                _E.RECV_2XX: _C.CONFIRMED,
                _E.RECV_ERROR: _C.TERMINATED,
                _E.RECV_503_RETRY: _C.RETRY_WAIT,
                _E.BAD_2XX: _C.TERMINATED,
                _E.TIMER_B: _C.TERMINATED,
            },
            _C.RETRY_WAIT: {
                _E.TIMER_RETRY_AFTER: _C.CALLING,
            },
            **dialog_transitions(),
        },
        _E.TRANSPORT_ERROR,
        _C.TERMINATED,
    ),
    {
        _C.IDLE: "in the meeting's A/V call, not sharing yet",
        _C.CALLING: "sharing INVITE sent, no final answer yet (Timer B until the first answer)",
        _C.RETRY_WAIT: "503 with Retry-After: the INVITE goes again after it, once "
        "(retry_after_503)",
        _C.CONFIRMED: "dialog up, no INVITE transaction in progress",
        _C.REINVITING: "our reINVITE waits for its final answer",
        _C.GLARE_WAIT: "our reINVITE got 491: retry in 2.1-4 s (we own the Call-ID)",
        _C.REINVITE_RECEIVED: "CMS's reINVITE held until our own ICE check succeeds",
        _C.REINVITE_ACCEPTED: "our 200 to CMS's reINVITE, resent until its ACK",
        _C.TERMINATING: "BYE sent, waiting for its answer (Timer F)",
        _C.TERMINATED: "the dialog is over",
    },
)


class SkypeClient(UserAgent[UaState]):
    branch_tag = "sc"
    #: The client generated the Call-ID (RFC 3261 §14.1: its 491 retry waits 2.1-4 s).
    owns_call_id = True

    def __init__(self, lab: Lab, name: str = "skype_client") -> None:
        settings = lab.skype_client
        super().__init__("skype_client", settings, lab.call, CLIENT_TABLE)
        self.name = name
        self.settings = settings
        edge = lab.skype_edge
        #: The Edge is the outbound proxy: every request goes there first.
        self.edge = lab.sip("skype_edge")
        self.edge_media = Address(edge.address, edge.media_port)
        #: The relay candidate the Edge gives the client (what CMS will see connecting).
        self.edge_relay = Address(edge.address, edge.relay_port)
        self.target = lab.cms.user
        #: The meeting's policy refuses CMS's sharing reINVITE (an attendee may not share:
        #: 403 with ms-diagnostics-public 21002, PROTOCOL.md §5.4); None: answered 200.
        self.meeting_policy = Refusal() if settings.cms_role == "attendee" else None
        self.call_id = f"{self.rng.getrandbits(64):016x}@{settings.address}"
        self.contact = f"<sip:alice@{settings.address}:{settings.sip_port};transport=tcp>"
        self.invite: Request | None = None
        self.remote: appsharing.RemoteShare | None = None
        #: The media connection (through the Edge) and the ICE checks on it.
        self.media = CheckLink("CMS")
        self.router.add(self.media, self._on_media)
        self._held_reinvite: tuple[ConnId, Request] | None = None
        """CMS's reINVITE, waiting for our own check to succeed (REINVITE_RECEIVED)."""
        self._relay = Address("0.0.0.0", 0)
        self._retried = False
        """The INVITE went again after a 503 (once only, retry_after_503)."""
        self._ack: tuple[Request, Address] | None = None
        """The ACK of the first INVITE's final answer and where it went (sent again for a
        repeated answer)."""
        #: The meeting's audio/video call before the share (call.av_call), in its own dialog.
        self.av = AvCaller(self, lab, self._av_up, self._av_over) if lab.call.av_call else None
        self._in_meeting = False
        """The audio/video call was answered: the share goes ahead whatever becomes of it."""
        self._share_over = False
        """The sharing dialog is over (or was refused): what is left is leaving the meeting."""

    @property
    def checks(self) -> CheckStream | None:
        """The checks of the media connection, while it is open."""
        return self.media.checks if self.media.conn is not None else None

    # -- helpers -------------------------------------------------------------------------------

    def _side(self, version: int) -> appsharing.ShareSide:
        s = self.settings
        host = Address(s.address, s.media_port)
        relay = self.edge_relay
        candidates: tuple[Candidate, ...] = (
            appsharing.candidate(1, "TCP-PASS", "host", host),
            appsharing.candidate(2, "TCP-ACT", "host", host),
            appsharing.candidate(3, "TCP-PASS", "relay", relay, host),
            appsharing.candidate(4, "TCP-ACT", "relay", relay, host),
        )
        if version > 1:  # the reINVITE lists the selected candidate only (RFC 5245 §9.1.2.2)
            candidates = candidates[3:]
        return appsharing.ShareSide(
            s.address, relay, s.ice_ufrag, s.ice_pwd, candidates, "sharer", "sendonly",
            self.rng.randbytes(30), version=version,
        )  # fmt: skip

    # -- events --------------------------------------------------------------------------------

    def start(self, now: float) -> list[Effect]:
        # The client's connection to its Edge exists before it shares: it is registered and
        # already in the meeting's audio/video call (the new INVITE has its own Call-ID).
        return [
            *self.router.run(self.transport, self.transport.open(self.edge)),
            self.start_timer(UaTimer.CALL, self.settings.start_delay),
        ]

    def on_timer(self, timer: UaTimer, now: float) -> list[Effect]:
        match timer:
            case UaTimer.CALL:
                # The first INVITE: the meeting's audio/video call when there is one (the
                # share follows it, share_after after its ACK), else the sharing INVITE.
                return self.av.start() if self.av is not None else self._call()
            case UaTimer.SHARE:
                return self._call()
            case UaTimer.AV_TIMER_B | UaTimer.AV_TIMER_F if self.av is not None:
                return self.av.on_timer(timer, now)
            case UaTimer.FINISH:
                self.finished = True
                return []
            case UaTimer.ICE:
                if self.shared:
                    return []
                wait = self.settings.ice_timeout
                if self.checks is not None and self.checks.valid:
                    why = f"the pair is valid, but no reINVITE completed within {wait:g} s"
                else:
                    why = f"no valid candidate pair within {wait:g} s"
                return self._give_up(why, now)
            case UaTimer.TIMER_B if self.invite_pending:
                return self._invite_timer_b(now)
            case UaTimer.RETRY_AFTER:
                return self._call()
        return self.on_sip_timer(timer, now) or []

    @property
    def invite_pending(self) -> bool:
        """The sharing INVITE waits for its final answer."""
        return self.state is UaState.CALLING

    def _call(self) -> list[Effect]:
        """The sharing INVITE, or its one retry after a 503's Retry-After (§21.5.4): the
        same Call-ID and From tag, the next CSeq, a new branch (a new transaction)."""
        if self.allows(UaEvent.TIMER_RETRY_AFTER):
            self.fire(UaEvent.TIMER_RETRY_AFTER)
            self._retried = True
        elif self.allows(UaEvent.SEND_INVITE):
            self.fire(UaEvent.SEND_INVITE)
        else:
            return [Log(f"no sharing INVITE in state {self.state.name}", "warning")]
        s = self.settings
        cseq = 2 if self._retried else 1
        body = appsharing.build(self._side(1))
        self.invite = sip.build_request(
            "INVITE",
            self.target,
            via=Via.parse(f"SIP/2.0/TCP {s.address}:{s.sip_port};branch={self.branch()};rport"),
            from_addr=f"<{s.user}>;tag={self.tag}",
            to_addr=f"<{self.target}>",
            call_id=self.call_id,
            cseq=cseq,
            contact=self.contact,
            content_type=appsharing.CONTENT_TYPE,
            body=body,
        )
        # RFC 3261 §17.1.1.2: Timer B (64·T1) until the first answer; the Edge's 100 Trying
        # normally stops it within a round trip.
        what = (
            "again, after the 503's Retry-After" if self._retried else "with m=applicationsharing"
        )
        return [Log(f"sharing: new INVITE {what}"),
                *self.send_sip(self.invite, self.edge),
                self.start_timer(UaTimer.TIMER_B, self.timers.timer_b)]  # fmt: skip

    def _invite_timer_b(self, now: float) -> list[Effect]:
        self.fire(UaEvent.TIMER_B)
        why = (
            f"no response to the sharing INVITE within {self.timers.timer_b:g} s (Timer B, "
            "64·T1, RFC 3261 §17.1.1.2): the call attempt fails (§13.2.2: as a 408)"
        )
        return self.end(why, now, "warning")

    # -- SIP -----------------------------------------------------------------------------------

    def on_send_failed(self, notice: SendFailed, now: float) -> list[Effect]:
        why = f"cannot reach {notice.to}: {notice.reason}"
        if not self.allows(UaEvent.TRANSPORT_ERROR):
            return [Log(why, "warning")]
        # RFC 3261 §8.1.3.1: a transport error is a 503 for what was sent; with no way to the
        # outbound proxy nothing else can be sent either, in either dialog.
        effects = self.av.transport_error() if self.av is not None else []
        self.fire(UaEvent.TRANSPORT_ERROR)
        return effects + self.end(why, now, "warning")

    def on_connection_lost(self, notice: ConnectionLost) -> list[Effect]:
        return [] if self.dialog else [Log(f"SIP connection to {notice.remote} lost")]

    def on_sip(self, conn: ConnId, message: sip.SipMessage, now: float) -> list[Effect]:
        if self.av is not None and self.av.owns(message):
            # The audio/video call's dialog (its own Call-ID, RFC 3261 §12.2).
            if isinstance(message, Response):
                return self.av.on_response(message, now)
            return self.av.on_request(conn, message, now)
        if isinstance(message, Response):
            return self._response(message, now)
        if message.method == "CANCEL":
            return self._cancel(conn, message, now)
        if message.method == "INVITE" and self.dialog is None:
            # A client that shares does not take calls here (it is no UAS for a new INVITE).
            return self.reply(conn, sip.build_response(message, 481))
        return self.on_dialog_request(conn, message, now)

    def _cancel(self, conn: ConnId, cancel: Request, now: float) -> list[Effect]:
        """RFC 3261 §9.2: a CANCEL of CMS's reINVITE while we hold it: 200 to the CANCEL, 487
        to the reINVITE (the session stays as it was, §14.2). Any other CANCEL matches no
        transaction waiting here: 481."""
        held = self._held_reinvite
        same = held is not None and (
            sip.call_id(cancel) == sip.call_id(held[1])
            and sip.via_branch(sip.top_via(cancel)) == sip.via_branch(sip.top_via(held[1]))
        )
        if held is None or not same or not self.allows(UaEvent.SEND_ERROR):
            return self.reply(conn, sip.build_response(cancel, 481))
        self._held_reinvite = None
        self.fire(UaEvent.SEND_ERROR)
        self._refused_cseq = sip.cseq(held[1]).sequence
        return [*self.reply(conn, sip.build_response(cancel, 200)),
                *self.reply(held[0], sip.build_response(held[1], 487)),
                *self.release_held()]  # fmt: skip

    def _response(self, response: Response, now: float) -> list[Effect]:
        # Only answers to what this client sent count: its Call-ID and its From tag (RFC 3261
        # §8.1.3.3, §17.1.3). Anything else is a stray and is dropped.
        if sip.call_id(response) != self.call_id or sip.from_tag(response) != self.tag:
            return [Log(f"stray {sip.summary(response)} dropped", "warning")]
        method, seq = sip.cseq(response).method, sip.cseq(response).sequence
        if method == "INVITE" and self.invite is not None and seq == sip.cseq(self.invite).sequence:
            return self._invite_answer(response, now)
        return self.on_dialog_response(response, now)

    def _invite_answer(self, response: Response, now: float) -> list[Effect]:
        assert self.invite is not None  # checked by the caller
        if response.code < 200:
            if not self.allows(UaEvent.RECV_1XX):
                return []  # a provisional answer after the final one
            self.fire(UaEvent.RECV_1XX)
            return [self.stop_timer(UaTimer.TIMER_B)]  # §17.1.1.2: Calling -> Proceeding
        if not self.invite_pending:
            # A repeated final answer (§13.3.1.4: the UAS resends a 2xx until the ACK;
            # §17.1.1.3: an error answer is ACKed again): acknowledge it again, nothing more.
            return [] if self._ack is None else self.send_sip(*self._ack)
        return [self.stop_timer(UaTimer.TIMER_B), *self._invite_answered(response, now)]

    def _invite_answered(self, response: Response, now: float) -> list[Effect]:
        assert self.invite is not None  # checked by the caller
        s = self.settings
        if response.code >= 300:
            # §17.1.1.3: the ACK for a non-2xx goes hop by hop, with the INVITE's branch.
            ack = sip.build_failure_ack(self.invite, response)
            self._ack = (ack, self.edge)
            why = f"sharing refused: {sip.summary(response)}{diag_suffix(response)}"
            wait = self._retry_after(response)
            if wait is not None:
                self.fire(UaEvent.RECV_503_RETRY)
                return [*self.send_sip(ack, self.edge),
                        Log(f"{why}: trying once more in {wait} s (Retry-After, RFC 3261 "
                            "§21.5.4)"),
                        self.start_timer(UaTimer.RETRY_AFTER, wait)]  # fmt: skip
            self.fire(UaEvent.RECV_ERROR)
            return [*self.send_sip(ack, self.edge), *self.end(why, now)]
        try:
            dialog = Dialog.as_uac(self.invite, response, self.contact)
        except WireError as exc:
            # No remote target: nothing can be sent in this dialog, not even the ACK.
            self.fire(UaEvent.BAD_2XX)
            return self.end(f"unusable 2xx: {exc}", now, "warning")
        self.fire(UaEvent.RECV_2XX)
        self.dialog = dialog
        ack = dialog.request("ACK", self.branch(), cseq=sip.cseq(self.invite).sequence)
        self._ack = (ack, dialog.next_hop())
        effects = self.send_sip(ack, dialog.next_hop())
        try:
            self.remote = appsharing.parse(response.body)
        except WireError as exc:
            return [*effects, *self._give_up(f"answer without usable SDP: {exc}", now)]
        # The relay candidate, or without one what else CMS offers to connect to (its host
        # address): tried as offered, so a candidate nobody can reach fails visibly.
        relay = self.remote.passive()
        if relay is None:
            why = "CMS offers no candidate to connect to: no media path"
            return [*effects, *self._give_up(why, now)]
        target = Address(relay.address, relay.port) if s.direct_path else self.edge_media
        self._relay = Address(relay.address, relay.port)
        return [*effects, Log(f"media via {target} to CMS's {relay.type} candidate {self._relay}"),
                *self._open_media(target),
                self.start_timer(UaTimer.ICE, s.ice_timeout)]  # fmt: skip

    def _retry_after(self, response: Response) -> int | None:
        """Seconds to wait before the one retry a 503 with Retry-After allows (§20.33:
        delta-seconds, an optional comment and parameters after it), or None: no retry."""
        if response.code != 503 or not self.settings.retry_after_503 or self._retried:
            return None
        value = (response.headers.get("Retry-After") or "").strip()
        digits = value.split(";", 1)[0].split("(", 1)[0].strip()
        return int(digits) if digits.isascii() and digits.isdigit() else None

    def on_peer_reoffer(self, conn: ConnId, request: Request, now: float) -> list[Effect]:
        if self.checks is None or not self.checks.valid:
            # RFC 5245 §9.2.2.3 / MS-ICE2: the controlled agent takes the pair the
            # controlling one nominated only once its own checks of it succeeded; until
            # then the reINVITE waits (a one-way binding leaves it unanswered, and the
            # ICE timer ends the session).
            self._held_reinvite = (conn, request)
            return [Log("reINVITE held: our own check has not succeeded yet")]
        return self._answer_reinvite(conn, request, now)

    def _answer_reinvite(self, conn: ConnId, request: Request, now: float) -> list[Effect]:
        body = appsharing.build(
            self._side(2), connection=self.reinvite_connection, remote=self._relay
        )
        return self.answer_reoffer(conn, request, body, self.contact, now)

    def reinvite_refusal(self) -> Refusal | None:
        # The refuse_reinvite setting first, for the reINVITEs it names; then the meeting.
        return super().reinvite_refusal() or self.meeting_policy

    def reoffer_body(self) -> bytes:
        return appsharing.build(
            self._side(2), connection=self.reinvite_connection, remote=self._relay
        )

    def on_reoffer_refused(self, why: str, now: float, cause: int) -> list[Effect]:
        return self._give_up(why, now, cause)

    def on_ended(self, why: str, now: float, level: str = "info") -> list[Effect]:
        self._held_reinvite = None
        return [self.stop_timer(UaTimer.ICE), *self._close_media(), *self._leave(why, level)]

    # -- the meeting's audio/video call (labsim.actors.av_call) --------------------------------

    def _av_up(self, now: float) -> list[Effect]:
        """The audio/video call is answered and ACKed: the user shares ``share_after`` on, in
        a new INVITE of its own (Cisco 212580)."""
        self._in_meeting = True
        wait = self.settings.share_after
        return [Log(f"in the meeting's audio/video call; sharing in {wait:g} s, in a new "
                    "dialog (its own Call-ID)"), self.start_timer(UaTimer.SHARE, wait)]  # fmt: skip

    def _av_over(self, why: str, now: float, level: str) -> list[Effect]:
        """The audio/video call is over: before it was ever answered, the client cannot share
        (it is not in the meeting); once the sharing dialog is over too, the client is done.
        Otherwise the share goes on in its own dialog."""
        if not self._in_meeting:
            return self.done(f"{why}: not in the meeting, so no sharing", level)
        if self._share_over:
            return self.done(why, level)
        return [Log(f"{why}; the sharing dialog goes on", level)]

    def _leave(self, why: str, level: str) -> list[Effect]:
        """The sharing dialog is over: leave the meeting, hanging the audio/video call up
        (RFC 3261 §15.1.1) when it is still up; done when nothing is left."""
        self._share_over = True
        if self.av is not None and self.av.up:
            return [Log(why, level), *self.av.hang_up("leaving the meeting")]
        return self.done(why, level)

    def session_over(self) -> list[Effect]:
        return [self.stop_timer(UaTimer.ICE), *self._close_media()]

    def _open_media(self, target: Address) -> list[Effect]:
        return self.router.run(self.media, self.media.connect(MEDIA, target))

    def _close_media(self) -> list[Effect]:
        return self.router.run(self.media, self.media.close())

    def _give_up(self, why: str, now: float, cause: int = 408) -> list[Effect]:
        """The sharing session cannot get media: hang up (BYE) rather than hold a dead call.
        The BYE says why (RFC 3326 Reason; 408: a wait ran out, else the refusal's status)."""
        return self.hang_up(why, now, "warning", cause, "giving the sharing session up with BYE")

    # -- media ---------------------------------------------------------------------------------

    def _on_media(self, notice: LinkNotice, now: float) -> list[Effect]:
        match notice:
            case LinkUp():
                return self._media_up()
            case LinkFailed(reason=reason):
                return self._give_up(f"media connection failed: {reason}", now)
            case LinkClosed():
                return [Log("media connection closed")]
            case PairValid():
                return self._pair_valid(now)
        return []  # pragma: no cover - the match is exhaustive

    def _media_up(self) -> list[Effect]:
        assert self.remote is not None
        s = self.settings
        checks = CheckStream(
            CheckSettings(s.ice, self.controlling, appsharing.PRIORITIES[("relay", "TCP-ACT")],
                          self.check_layout),
            IceCredentials(self.remote.ufrag, self.remote.pwd),
            self._relay,
            self.rng,
        )  # fmt: skip
        return self.router.run(self.media, self.media.begin(MEDIA, checks))

    def _pair_valid(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        held, self._held_reinvite = self._held_reinvite, None
        if held is not None and self.allows(UaEvent.SEND_2XX):
            effects += self._answer_reinvite(*held, now)
        if self.sends_reinvite:
            effects += self.send_reoffer()
        return effects
