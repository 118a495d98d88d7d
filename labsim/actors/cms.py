"""Cisco Meeting Server: the SIP UAS of the sharing call and Expressway-E's TURN client.

On the INVITE (PROTOCOL.md §6.2, Cisco 212580): ``100 Trying``, then a TCP relay from
Expressway-E (:mod:`labsim.proto.turn_client`: Allocate, 401, Allocate, Refresh, keepalive),
then ``200 OK`` whose SDP carries the relay candidate (``typ relay`` at the relayed address).
When the Skype side connects to the relay, the TURN client binds a data connection
(ConnectionAttempt → ConnectionBind) and hands the pipe over; CMS runs the ICE-TCP checks on
it, RFC 4571-framed, its request carrying USE-CANDIDATE when it is the controlling agent (as
in the lab's frame 2597). Once the pair is valid both ways it sends the reINVITE when it is the
side that does (the default: the controlling side, RFC 5245 §8.1.2), or answers the Skype
client's. On BYE it answers and gives the allocation back (Refresh LIFETIME 0).

Order on the data connection: the lab shows CMS's framed Binding Request (110 bytes) right
after the Skype side's request reached it, so CMS sends its own check before its answer.

Its SIP state is :data:`CMS_TABLE` (drawn in ``docs/state-cms.md``): the UAS of the
dialog-creating INVITE, then either end of reINVITEs and BYE (the shared part is
:class:`~labsim.actors.common.UserAgent`). Its 200 OK is sent again at T1, 2·T1 … T2 until the
ACK arrives, and 64·T1 without one ends the call with BYE (RFC 3261 §13.3.1.4); until that ACK
its post-ICE reINVITE waits (§14.1).
"""

from __future__ import annotations

import random

from sipmessage import Request, Response

from labsim.actors.av_call import AvCallee
from labsim.actors.common import Refusal, UaTimer, UserAgent
from labsim.actors.lab import Lab
from labsim.proto import appsharing, avcall
from labsim.proto.events import Address, Close, ConnId, Effect, Log
from labsim.proto.ice import (
    CheckLink,
    CheckSettings,
    CheckStream,
    IceCredentials,
    LinkClosed,
    LinkNotice,
    PairValid,
)
from labsim.proto.sip_dialog import Dialog
from labsim.proto.sip_ua_state import Table, UaEvent, UaState, dialog_transitions
from labsim.proto.turn_client import (
    Allocated,
    AllocationFailed,
    Expired,
    Notification,
    PeerBindFailed,
    PeerConnected,
    Released,
    TurnClient,
)
from labsim.wire import WireError, sip
from labsim.wire.sdp import Candidate

_S, _E = UaState, UaEvent

#: Every transition of CMS (rule 1 of :mod:`labsim.proto.sip_ua_state`). ACCEPTED is RFC 6026's
#: name for an INVITE server transaction whose 2xx waits for its ACK; CMS sends no reINVITE and
#: no BYE from there (§14.1, §15) but takes the caller's BYE. An INVITE it refuses
#: (``refuse_invite``) makes no dialog (§13.3.1), so CMS is back in IDLE, ready for another.
CMS_TABLE: Table[UaState] = Table(
    "cms",
    _S.IDLE,
    _S.TERMINATED,
    {
        _S.IDLE: {
            _E.RECV_INVITE: _S.PROCEEDING,
        },
        _S.PROCEEDING: {
            _E.SEND_2XX: _S.ACCEPTED,
            _E.SEND_ERROR: _S.IDLE,
            _E.RECV_CANCEL: _S.TERMINATED,
        },
        _S.ACCEPTED: {
            _E.TIMER_2XX: _S.ACCEPTED,
            _E.RECV_ACK: _S.CONFIRMED,
            _E.ACK_TIMEOUT: _S.TERMINATING,
            _E.RECV_BYE: _S.TERMINATED,
        },
        **dialog_transitions(),
    },
    {
        _S.IDLE: "in the meeting, no sharing call",
        _S.PROCEEDING: "INVITE answered 100, asking Expressway-E for a TCP relay (or refusing "
        "it: refuse_invite)",
        _S.ACCEPTED: "200 OK sent, resent at T1 doubling to T2 until its ACK (64·T1 at most)",
        _S.CONFIRMED: "dialog up, no INVITE transaction in progress",
        _S.REINVITING: "our post-ICE reINVITE waits for its final answer",
        _S.GLARE_WAIT: "our reINVITE got 491: retry in 0-2 s (the client owns the Call-ID)",
        _S.REINVITE_RECEIVED: "the client's reINVITE, being answered",
        _S.REINVITE_ACCEPTED: "our 200 to the client's reINVITE, resent until its ACK",
        _S.TERMINATING: "BYE sent, waiting for its answer (Timer F)",
        _S.TERMINATED: "the dialog is over; the relay is given back",
    },
)


class Cms(UserAgent[UaState]):
    branch_tag = "cms"

    def __init__(self, lab: Lab, name: str = "cms") -> None:
        settings = lab.cms
        super().__init__("cms", settings, lab.call, CMS_TABLE)
        self.name = name
        self.settings = settings
        expe, client = lab.expressway_e, lab.skype_client
        # The host that will connect to the relay: the Edge, or the client when it has its
        # own path to Expressway-E.
        peer = client.address if client.direct_path else lab.skype_edge.address
        #: None when no TURN server is configured.
        self.turn: TurnClient | None = None
        if settings.turn is not None:
            self.turn = TurnClient(
                settings.turn, random.Random(settings.seed + 1),
                server=Address(expe.address, expe.turn.port),
                permission_peers=(peer,) if settings.turn.create_permission else (),
            )  # fmt: skip
        self.contact = f"<sip:meeting@{settings.address}:{settings.sip_port};transport=tcp>"
        self.invite: Request | None = None
        self.invite_conn: ConnId | None = None
        self._invites_taken = 0
        """INVITEs taken on so far (``refuse_invite.nth`` counts them)."""
        self._refused: Response | None = None
        """Our error answer to the last INVITE refused (sent again for a repeat, §17.2.1)."""
        self.offer: appsharing.RemoteShare | None = None
        #: The ICE checks on the RFC 6062 data connection the TURN client hands over.
        self.link = CheckLink("the Skype side")
        self.relayed: Address | None = None
        if self.turn is not None:
            self.router.add(self.turn, self._turn_news)
        self.router.add(self.link, self._on_link)
        #: The meeting's audio/video call (call.av_call): answered in its own dialog, with no
        #: TURN request (CMS allocates only for the share, Cisco 212580).
        self.av = AvCallee(self, lab, self._av_up, self._av_over) if lab.call.av_call else None
        self._share_done = False
        """The sharing side is done (its dialog over, the relay given back): CMS finishes once
        the audio/video call is over too."""

    @property
    def pipe(self) -> ConnId | None:
        """The bound data connection carrying the checks, while it is open."""
        return self.link.conn

    @property
    def checks(self) -> CheckStream | None:
        return self.link.checks

    # -- SIP -----------------------------------------------------------------------------------

    def on_sip(self, conn: ConnId, message: sip.SipMessage, now: float) -> list[Effect]:
        av = self.av
        if av is not None and av.owns(message):
            # The audio/video call's dialog (its own Call-ID, RFC 3261 §12.2).
            if isinstance(message, Response):
                return av.on_response(message, now)
            if message.method == "INVITE" and sip.to_tag(message) is None:
                return av.on_invite(conn, message, now)
            return av.on_request(conn, message, now)
        if isinstance(message, Response):
            return self._response(message, now)
        request = message
        if request.method == "INVITE" and sip.to_tag(request) is None:
            if av is not None and avcall.is_av_offer(request.body):
                # m=audio / m=video and no m=applicationsharing: the meeting's call, not a
                # share (MS-SDPEXT §3.1.5: the share is a new INVITE of its own).
                return av.on_invite(conn, request, now)
            return self._new_call(conn, request, now)
        if request.method == "CANCEL":
            return self._cancel(conn, request, now)
        return self.on_dialog_request(conn, request, now)

    def _cancel(self, conn: ConnId, cancel: Request, now: float) -> list[Effect]:
        """RFC 3261 §9.2: 200 to the CANCEL; if the INVITE is still unanswered, 487 to it, and
        the relay asked for it is given back."""
        invite = self.invite
        if invite is None or sip.call_id(cancel) != sip.call_id(invite):
            return self.reply(conn, sip.build_response(cancel, 481, to_tag=self.tag))
        effects = self.reply(conn, sip.build_response(cancel, 200, to_tag=self.tag))
        if not self.allows(UaEvent.RECV_CANCEL) or self.invite_conn is None:
            return effects  # too late: the final answer is out (§9.2), the call goes on
        self.fire(UaEvent.RECV_CANCEL)
        terminated = sip.build_response(invite, 487, to_tag=self.tag)
        self._refused_cseq = sip.cseq(invite).sequence
        return [*effects, *self.reply(self.invite_conn, terminated),
                *self.end("the INVITE was cancelled: 487 (RFC 3261 §9.2)", now)]  # fmt: skip

    def _new_call(self, conn: ConnId, invite: Request, now: float) -> list[Effect]:
        refused = self._refused
        if refused is not None and (sip.call_id(refused), sip.cseq(refused).sequence) == (
            sip.call_id(invite),
            sip.cseq(invite).sequence,
        ):
            # §17.2.1: the INVITE again after our final error answer: that answer again.
            return self.reply(conn, refused)
        if not self.allows(UaEvent.RECV_INVITE):
            if self.invite is not None and sip.call_id(invite) == sip.call_id(self.invite):
                # The same INVITE again. §17.2.1: while proceeding, the last provisional answer
                # goes out again; once answered, the transaction absorbs it.
                if self.state is UaState.PROCEEDING:
                    return self.reply(conn, sip.build_response(invite, 100))
                return [Log("the INVITE again: absorbed, it is answered (RFC 3261 §17.2.1)")]
            busy = sip.build_response(invite, 486, to_tag=self.tag)
            return [Log("a second call while one is up: 486 Busy Here"),
                    *self.reply(conn, busy)]  # fmt: skip
        effects = self.reply(conn, sip.build_response(invite, 100))
        if not sip.contact(invite):
            # §8.1.1.8: an INVITE must carry Contact; without it no dialog can exist. The
            # INVITE is refused outright and no dialog state changes.
            bad = sip.build_response(invite, 400, "Missing Contact", to_tag=self.tag)
            return [*effects, *self.reply(conn, bad)]
        try:
            self.offer = appsharing.parse(invite.body)
        except WireError as exc:
            bad = sip.build_response(invite, 488, to_tag=self.tag)
            return [*effects, Log(f"offer not usable: {exc}", "warning"),
                    *self.reply(conn, bad)]  # fmt: skip
        self.fire(UaEvent.RECV_INVITE)
        self.invite, self.invite_conn = invite, conn
        self._invites_taken += 1
        setting = self.settings.refuse_invite
        if setting is not None and setting.applies(self._invites_taken):
            return [*effects, *self._refuse_call(conn, invite, Refusal.of(setting))]
        if self._refused is not None:
            # A call after a refused one: CMS has work again until this one ends.
            self.finished = self._share_done = False
            effects.append(self.stop_timer(UaTimer.FINISH))
        if self.turn is None:
            # No TURN server to ask: the answer carries the host candidates alone, a private
            # address the Skype side has no route to.
            return [*effects, Log("applicationsharing offer: no TURN server configured, "
                                  "answering with host candidates only", "warning"),
                    *self._answer(now)]  # fmt: skip
        return [*effects, Log("applicationsharing offer: asking Expressway-E for a TCP relay"),
                *self.router.run(self.turn, self.turn.start(now))]  # fmt: skip

    def _refuse_call(self, conn: ConnId, invite: Request, refusal: Refusal) -> list[Effect]:
        """The final error answer the ``refuse_invite`` setting asks for, before any TURN
        request: no dialog is made (RFC 3261 §13.3.1), the caller's ACK ends the server
        transaction (§17.2.1) and CMS is back in IDLE. It finishes unless another INVITE
        comes (a caller may try again after a 503's Retry-After, §21.5.4)."""
        self.fire(UaEvent.SEND_ERROR)
        no = refusal.response(invite, to_tag=self.tag)
        self._refused = no
        self._refused_cseq = sip.cseq(invite).sequence
        self.invite = self.invite_conn = None
        why = f"sharing INVITE refused: {sip.summary(no)} (refuse_invite)"
        return [*self.reply(conn, no), *self.done(why)]

    def _body(self, *, version: int, remote: Address | None = None) -> bytes:
        s = self.settings
        host = Address(s.address, s.media_port)
        candidates: list[Candidate] = []
        active = host
        if self.relayed is not None:
            active = self.relayed
        if version == 2 or self.relayed is None:
            candidates += [appsharing.candidate(1, "TCP-PASS", "host", host),
                           appsharing.candidate(2, "TCP-ACT", "host", host)]  # fmt: skip
        if self.relayed is not None:
            mapped = self._mapped or host
            candidates.append(appsharing.candidate(3, "TCP-PASS", "relay", self.relayed, mapped))
        side = appsharing.ShareSide(
            s.address, active, s.ice_ufrag, s.ice_pwd, tuple(candidates), "viewer", "recvonly",
            self.rng.randbytes(30), session_name="-", session_id=7842, version=version,
        )  # fmt: skip
        connection = "new" if version == 2 else self.reinvite_connection
        return appsharing.build(side, connection=connection, remote=remote)

    def _answer(self, now: float) -> list[Effect]:
        """The 200 OK to the INVITE, once the relay question is settled."""
        invite, conn = self.invite, self.invite_conn
        if invite is None or conn is None or self.dialog is not None:
            return []
        if not self.allows(UaEvent.SEND_2XX):
            return []  # cancelled meanwhile (§9.2): no 200 after the 487
        body = self._body(version=2)
        ok = sip.build_response(
            invite, 200, to_tag=self.tag, contact=self.contact,
            content_type=appsharing.CONTENT_TYPE, body=body,
        )  # fmt: skip
        local = sip.format_address(sip.to_address(ok))
        self.dialog = Dialog.as_uas(invite, local, self.settings.address, self.settings.sip_port,
                                    self.contact)  # fmt: skip
        return self.send_2xx(conn, invite, ok, now, initial=True)

    def _response(self, response: Response, now: float) -> list[Effect]:
        dialog = self.dialog
        if dialog is None or sip.call_id(response) != dialog.call_id:
            if response.code < 200:
                return []
            return [Log(f"stray {sip.summary(response)} dropped", "warning")]
        return self.on_dialog_response(response, now)

    def on_peer_reoffer(self, conn: ConnId, request: Request, now: float) -> list[Effect]:
        """The Skype client's reINVITE (when it is the side that sends one): answered at once."""
        body = self._body(version=3, remote=self._peer_candidate())
        return self.answer_reoffer(conn, request, body, self.contact, now)

    def reoffer_body(self) -> bytes:
        return self._body(version=3, remote=self._peer_candidate())

    def on_reoffer_refused(self, why: str, now: float, cause: int) -> list[Effect]:
        # The content session cannot be used: CMS logs the refusal (with its
        # ms-diagnostics-public, where engineers look for 21002) and hangs it up.
        return self.hang_up(why, now, "warning", cause, "ending the content session with BYE")

    def on_ended(self, why: str, now: float, level: str = "info") -> list[Effect]:
        effects: list[Effect] = [Log(why, level), *self.router.run(self.link, self.link.close())]
        if self.invite is None or self.turn is None:  # no allocation was ever asked for
            return [*effects, *self.done("call ended")]
        # Released ends this side (_turn_news).
        return [*effects, *self.router.run(self.turn, self.turn.release(now))]

    # -- the meeting's audio/video call (labsim.actors.av_call) --------------------------------

    def on_timer(self, timer: UaTimer, now: float) -> list[Effect]:
        if self.av is not None and timer in (UaTimer.AV_RETRANSMIT_2XX, UaTimer.AV_ACK_WAIT,
                                             UaTimer.AV_TIMER_F):  # fmt: skip
            return self.av.on_timer(timer, now)
        return super().on_timer(timer, now)

    def done(self, why: str, level: str = "info") -> list[Effect]:
        """The sharing side is done; CMS finishes when the audio/video call is over too."""
        self._share_done = True
        if self.av is not None and self.av.active:
            return [Log(why, level)]
        return super().done(why, level)

    def _av_up(self, now: float) -> list[Effect]:
        return [Log("the client is in the meeting's audio/video call")]

    def _av_over(self, why: str, now: float, level: str) -> list[Effect]:
        if self._share_done:
            return super().done(why, level)
        return [Log(why, level)]

    # -- TURN ----------------------------------------------------------------------------------

    _mapped: Address | None = None

    def _turn_news(self, note: Notification, now: float) -> list[Effect]:
        """What the TURN client reports."""
        if isinstance(note, Allocated):
            self.relayed, self._mapped = note.relayed, note.mapped
            return [Log(f"relay candidate {note.relayed}"), *self._answer(now)]
        if isinstance(note, AllocationFailed):
            # CMS still answers, with its host candidates only: the call is up, sharing
            # has no media path (what "ICE failure 4" in CMS's log leads to).
            return [Log(f"no TURN relay: {note.reason}", "warning"), *self._answer(now)]
        if isinstance(note, PeerConnected):
            return self._pipe_up(note)
        if isinstance(note, PeerBindFailed):
            return [Log(f"peer connection not bound: {note.reason}", "warning")]
        if isinstance(note, Released):
            return self.done("allocation released")
        if isinstance(note, Expired):
            return [Log(f"allocation gone: {note.reason}", "warning")]
        return []

    def _peer_candidate(self) -> Address | None:
        if self.checks is not None:
            return self.checks.peer
        return None

    # -- ICE over the data connection ----------------------------------------------------------

    def _pipe_up(self, note: PeerConnected) -> list[Effect]:
        if self.pipe is not None or self.offer is None:
            # One media path per sharing session: a second peer on the relay (any host may
            # connect under the lab policy) gets its data connection closed.
            self.router.give(note.conn, None)
            return [Log(f"second peer {note.peer} on the relay: its data connection closed",
                        "warning"), Close(note.conn)]  # fmt: skip
        s = self.settings
        peer = note.peer or Address("0.0.0.0", 0)
        checks = CheckStream(
            CheckSettings(s.ice, self.controlling, appsharing.PRIORITIES[("relay", "TCP-PASS")],
                          self.check_layout),
            IceCredentials(self.offer.ufrag, self.offer.pwd),
            peer,
            self.rng,
        )  # fmt: skip
        # The data connection is the check link's from now on (RFC 6062 §4.5: a raw pipe).
        self.router.give(note.conn, self.link)
        return [
            Log(f"media pipe to {peer} up: ICE checks"),
            *self.router.run(self.link, self.link.begin(note.conn, checks, note.early_data)),
        ]

    def _on_link(self, notice: LinkNotice, now: float) -> list[Effect]:
        if isinstance(notice, LinkClosed):
            return [Log("media pipe closed")]
        if isinstance(notice, PairValid) and self.sends_reinvite:
            # The post-ICE reINVITE (RFC 5245 §8.1.2); held while our 200 OK waits for its
            # ACK (RFC 3261 §14.1).
            return self.send_reoffer()
        return []
