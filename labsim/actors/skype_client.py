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
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sipmessage import Request, Response, Via

from labsim.actors.common import Refusal, UserAgent, check_step, diag_suffix
from labsim.proto import appsharing
from labsim.proto.events import (
    Address,
    Close,
    Closed,
    Connect,
    Connected,
    ConnectFailed,
    Effect,
    Event,
    Log,
    Received,
    Send,
    Started,
    StartTimer,
    StopTimer,
    TimerFired,
)
from labsim.proto.ice import (
    CheckSettings,
    CheckStream,
    IceCredentials,
)
from labsim.proto.sip_dialog import Dialog
from labsim.proto.sip_transport import ConnectionLost, SendFailed
from labsim.wire import WireError, sip
from labsim.wire.sdp import Candidate

MEDIA = "media"


@dataclass(frozen=True)
class SkypeClientSettings:
    host: str = "192.168.1.100"
    sip_port: int = 5060
    user: str = "sip:alice@skype.lab"
    target: str = "sip:meeting@cms.lab"
    edge: Address = Address("192.168.1.252", 5060)
    """Outbound proxy: every request goes there first."""
    edge_media: Address = Address("192.168.1.252", 3478)
    edge_relay: Address = Address("192.168.1.252", 53577)
    """The relay candidate the Edge gives the client (what CMS will see connecting)."""
    media_port: int = 50040
    ice: IceCredentials = IceCredentials("Xa3f", "Tq9sLmN2vB7xYc4ZkP1rW8dE")
    check_layout: tuple[str, ...] = (
        "USE-CANDIDATE", "USERNAME", "PRIORITY", "ICE-CONTROLLED", "MESSAGE-INTEGRITY",
        "FINGERPRINT",
    )  # fmt: skip
    controlling: bool = False
    sends_reinvite: bool = False
    direct_path: bool = False
    start_delay: float = 0.0
    hold: float = 6.0
    sends_bye: bool = True
    reinvite_connection: str = "existing"
    """``a=connection`` in the post-ICE reINVITE and its answer (UNSURE, PROTOCOL.md §5.3)."""
    refuse_reinvite: Refusal | None = None
    """The meeting's policy refuses CMS's sharing reINVITE (an attendee may not share:
    ``403`` with ms-diagnostics-public 21002, PROTOCOL.md §5.4); None: answered 200."""
    ice_timeout: float = 10.0
    """Seconds from the answer to a valid pair (or the reINVITE) before the client gives the
    sharing session up with BYE, as a client whose connectivity checks fail does."""
    linger: float = 0.05
    """Seconds between the last act and ``finished`` (lets closes reach the trace)."""
    seed: int = 5061


class SkypeClient(UserAgent):
    branch_tag = "sc"

    def __init__(self, settings: SkypeClientSettings, name: str = "skype_client") -> None:
        super().__init__(settings.host, settings.sip_port, random.Random(settings.seed))
        self.name = name
        self.settings = settings
        self.linger = settings.linger
        self.call_id = f"{self.rng.getrandbits(64):016x}@{settings.host}"
        self.contact = f"<sip:alice@{settings.host}:{settings.sip_port};transport=tcp>"
        self.invite: Request | None = None
        self.remote: appsharing.RemoteShare | None = None
        self.checks: CheckStream | None = None
        self._held_reinvite: tuple[str, Request] | None = None
        self._relay = Address("0.0.0.0", 0)
        self._ack: tuple[Request, Address] | None = None
        """The ACK of the first INVITE and where it went (sent again for a repeated 2xx)."""
        self._media_open = False
        """The media connection is open or opening."""
        self._bye_sent = False

    # -- helpers -------------------------------------------------------------------------------

    def _side(self, version: int) -> appsharing.ShareSide:
        s = self.settings
        host = Address(s.host, s.media_port)
        relay = s.edge_relay
        candidates: tuple[Candidate, ...] = (
            appsharing.candidate(1, "TCP-PASS", "host", host),
            appsharing.candidate(2, "TCP-ACT", "host", host),
            appsharing.candidate(3, "TCP-PASS", "relay", relay, host),
            appsharing.candidate(4, "TCP-ACT", "relay", relay, host),
        )
        if version > 1:  # the reINVITE lists the selected candidate only (RFC 5245 §9.1.2.2)
            candidates = candidates[3:]
        return appsharing.ShareSide(
            s.host, relay, s.ice.ufrag, s.ice.pwd, candidates, "sharer", "sendonly",
            self.rng.randbytes(30), version=version,
        )  # fmt: skip

    # -- events --------------------------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Effect]:
        if isinstance(event, Started):
            # The client's connection to its Edge exists before it shares: it is registered and
            # already in the meeting's audio/video call (the new INVITE has its own Call-ID).
            return [
                *self.transport.start(),
                *self.transport.open(self.settings.edge),
                StartTimer("call", self.settings.start_delay),
            ]
        if self.transport.wants(event):
            return self.sip_event(event, now)
        match event:
            case TimerFired(timer="call"):
                return self._call()
            case TimerFired(timer="hold"):
                return self._bye()
            case TimerFired(timer="timer-b"):
                return self.done("no final answer to the INVITE within 32 s (RFC 3261 Timer B)")
            case TimerFired(timer="finish"):
                self.finished = True
                return []
            case Connected(conn=conn) if conn == MEDIA:
                return self._media_up(event.remote)
            case ConnectFailed(conn=conn, reason=reason) if conn == MEDIA:
                self._media_open = False
                return self._give_up(f"media connection failed: {reason}")
            case TimerFired(timer="ice"):
                if self.shared:
                    return []
                return self._give_up(
                    f"no valid candidate pair within {self.settings.ice_timeout} s"
                )
            case Received(conn=conn, data=data) if conn == MEDIA:
                return self._media(data)
            case Closed(conn=conn) if conn == MEDIA:
                self.checks, self._media_open = None, False
                return [Log("media connection closed")]
        return []

    def _call(self) -> list[Effect]:
        s = self.settings
        body = appsharing.build(self._side(1))
        self.invite = sip.build_request(
            "INVITE",
            s.target,
            via=Via.parse(f"SIP/2.0/TCP {s.host}:{s.sip_port};branch={self.branch()};rport"),
            from_addr=f"<{s.user}>;tag={self.tag}",
            to_addr=f"<{s.target}>",
            call_id=self.call_id,
            cseq=1,
            contact=self.contact,
            content_type=appsharing.CONTENT_TYPE,
            body=body,
        )
        # RFC 3261 §17.1.1.2 Timer B (64*T1): an INVITE nobody answers ends the attempt.
        return [Log("sharing: new INVITE with m=applicationsharing"),
                *self.transport.send(self.invite, s.edge), StartTimer("timer-b", 32.0)]  # fmt: skip

    # -- SIP -----------------------------------------------------------------------------------

    def on_send_failed(self, notice: SendFailed) -> list[Effect]:
        return self.done(f"cannot reach {notice.to}: {notice.reason}")

    def on_connection_lost(self, notice: ConnectionLost) -> list[Effect]:
        return [] if self.dialog else [Log(f"SIP connection to {notice.remote} lost")]

    def on_sip(self, conn: str, message: sip.SipMessage, now: float) -> list[Effect]:
        if isinstance(message, Response):
            return self._response(message)
        return self._request(conn, message)

    def _response(self, response: Response) -> list[Effect]:
        # Only answers to what this client sent count: its Call-ID and its From tag (RFC 3261
        # §8.1.3.3, §17.1.3). Anything else is a stray and is dropped.
        if sip.call_id(response) != self.call_id or sip.from_tag(response) != self.tag:
            return [Log(f"stray {sip.summary(response)} dropped", "warn")]
        method, seq = sip.cseq(response).method, sip.cseq(response).sequence
        if response.code < 200:
            return []
        if method == "INVITE" and self.invite is not None and seq == 1:
            if self._ack is not None:
                # A repeated final answer (§13.3.1.4: the UAS resends a 2xx until the ACK):
                # acknowledge it again, nothing more.
                return self.transport.send(self._ack[0], self._ack[1])
            return [StopTimer("timer-b"), *self._invite_answered(response)]
        if self.is_reoffer_answer(response):
            was_shared = self.shared
            effects, refused = self.reoffer_answered(response)
            if refused is not None:
                return [*effects, *self._give_up(refused)]
            return effects + self._shared() if self.shared and not was_shared else effects
        if method == "BYE":
            return [*self._close_media(), *self.done("call ended")]
        return []

    def _invite_answered(self, response: Response) -> list[Effect]:
        assert self.invite is not None  # checked by the caller
        s = self.settings
        if response.code >= 300:
            # §17.1.1.3: the ACK for a non-2xx goes hop by hop, with the INVITE's branch.
            ack = sip.build_failure_ack(self.invite, response)
            self._ack = (ack, s.edge)
            why = f"sharing refused: {sip.summary(response)}{diag_suffix(response)}"
            return [*self.transport.send(ack, s.edge), *self.done(why)]
        try:
            self.dialog = Dialog.as_uac(self.invite, response, self.contact)
        except WireError as exc:
            # No remote target: nothing can be sent in this dialog, not even the ACK.
            return self.done(f"unusable 2xx: {exc}")
        ack = self.dialog.request("ACK", self.branch(), cseq=1)
        self._ack = (ack, self.dialog.next_hop())
        effects = self.transport.send(ack, self.dialog.next_hop())
        try:
            self.remote = appsharing.parse(response.body)
        except WireError as exc:
            return [*effects, *self._give_up(f"answer without usable SDP: {exc}")]
        relay = self.remote.relay()
        if relay is None:
            return [*effects, *self._give_up("CMS offers no relay candidate: no media path")]
        target = Address(relay.address, relay.port) if s.direct_path else s.edge_media
        self._relay = Address(relay.address, relay.port)
        return [*effects, Log(f"media via {target} to CMS's relay {self._relay}"),
                *self._open_media(target), StartTimer("ice", s.ice_timeout)]  # fmt: skip

    def _request(self, conn: str, request: Request) -> list[Effect]:
        if request.method == "ACK":
            return self._shared() if self.ack_establishes(request) else []
        if not self.in_dialog(request):
            return self.transport.send_on(conn, sip.build_response(request, 481))
        if request.method == "BYE":
            return [*self.transport.send_on(conn, sip.build_response(request, 200)),
                    StopTimer("ice"), *self._close_media(),
                    *self.done("call ended by CMS")]  # fmt: skip
        if request.method == "INVITE":
            if self.checks is None or not self.checks.valid:
                # RFC 5245 §9.2.2.3 / MS-ICE2: the controlled agent takes the pair the
                # controlling one nominated only once its own checks of it succeeded; until
                # then the reINVITE waits (a one-way binding leaves it unanswered, and the
                # ICE timer ends the session).
                self._held_reinvite = (conn, request)
                return [Log("reINVITE held: our own check has not succeeded yet")]
            return self._answer_reinvite(conn, request)
        return self.transport.send_on(conn, sip.build_response(request, 405, "Method Not Allowed"))

    def _answer_reinvite(self, conn: str, request: Request) -> list[Effect]:
        body = appsharing.build(
            self._side(2), connection=self.settings.reinvite_connection, remote=self._relay
        )
        return self.answer_reoffer(conn, request, body, self.contact, self.settings.refuse_reinvite)

    def _shared(self) -> list[Effect]:
        effects: list[Effect] = [Log("sharing established: the reINVITE is acknowledged")]
        if self.settings.sends_bye:
            effects.append(StartTimer("hold", self.settings.hold))
        return effects

    def _open_media(self, target: Address) -> list[Effect]:
        self._media_open = True
        return [Connect(MEDIA, target)]

    def _close_media(self) -> list[Effect]:
        if not self._media_open:
            return []
        self._media_open = False
        return [Close(MEDIA)]

    def _give_up(self, why: str) -> list[Effect]:
        """The sharing session cannot get media: hang up (BYE) rather than hold a dead call."""
        effects: list[Effect] = [Log(why, "warn"), *self._close_media()]
        if self.dialog is not None and not self._bye_sent:
            return effects + self._bye()
        return effects + self.done("gave up")

    def _bye(self) -> list[Effect]:
        if self.dialog is None or self._bye_sent:
            return []
        self._bye_sent = True
        bye = self.dialog.request("BYE", self.branch())
        return self.transport.send(bye, self.dialog.next_hop())

    # -- media ---------------------------------------------------------------------------------

    def _media_up(self, remote: Address) -> list[Effect]:
        assert self.remote is not None
        s = self.settings
        self.checks = CheckStream(
            CheckSettings(s.ice, s.controlling, appsharing.PRIORITIES[("relay", "TCP-ACT")],
                          s.check_layout),
            IceCredentials(self.remote.ufrag, self.remote.pwd),
            self._relay,
            self.rng,
        )  # fmt: skip
        return [Send(MEDIA, self.checks.request(), "rfc4571")]

    def _media(self, data: bytes) -> list[Effect]:
        if self.checks is None:
            return []
        effects, valid = check_step(self.checks, MEDIA, data, "CMS")
        if valid and self.settings.sends_reinvite:
            effects += self._reinvite()
        if valid and self._held_reinvite is not None:
            conn, request = self._held_reinvite
            self._held_reinvite = None
            effects += self._answer_reinvite(conn, request)
        return effects

    def _reinvite(self) -> list[Effect]:
        body = appsharing.build(
            self._side(2), connection=self.settings.reinvite_connection, remote=self._relay
        )
        return self.send_reoffer(body)
