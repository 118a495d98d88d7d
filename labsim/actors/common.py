"""What the actors of the call share: the three SIP proxies (a transport, a proxy and the
dispatch of runtime events), the two user agents (:class:`UserAgent`), and the ICE check step
both ends run (:func:`check_step`)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from sipmessage import Request, Response

from labsim.proto import appsharing
from labsim.proto.events import ConnId, Effect, Event, Log, Send, Started, StartTimer
from labsim.proto.ice import CheckAnswered, CheckFailed, CheckReceived, CheckStream
from labsim.proto.sip_dialog import Dialog
from labsim.proto.sip_proxy import ProxySettings, SipProxy
from labsim.proto.sip_transport import ConnectionLost, Incoming, SendFailed, SipTransport
from labsim.wire import WireError, sip

#: MS-SIPRE ms-diagnostics-public of a Skype meeting whose policy lets only presenters share,
#: as CMS logs it (PROTOCOL.md §5.4; Cisco document 212580, "User cannot share").
ATTENDEES_CANNOT_SHARE = sip.MsDiagnostics(
    21002, "Attendees cannot share in this conference", (("component", "ASMCU"),)
)


@dataclass(frozen=True)
class Refusal:
    """How an end refuses the peer's sharing reINVITE: a final error response with an
    ``ms-diagnostics-public`` header (the public variant crosses the Edge, MS-SIPRE)."""

    code: int = 403
    reason: str = "Forbidden"
    diagnostics: sip.MsDiagnostics | None = ATTENDEES_CANNOT_SHARE


def diag_suffix(response: Response) -> str:
    """`` (ms-diagnostics text)`` for a log line, or ""."""
    text = sip.diagnostics_text(response)
    return f" ({text})" if text else ""


class ProxyElement:
    """An actor whose SIP side is a :class:`SipProxy`; subclasses add their other machines by
    overriding :meth:`other` (return None when the event is not theirs)."""

    def __init__(self, name: str, host: str, settings: ProxySettings, ports: tuple[int, ...]):
        self.name = name
        self.host = host
        self.transport = SipTransport(host, ports)
        self.proxy = SipProxy(name, settings, self.transport)

    def start(self, now: float) -> list[Effect]:
        return self.transport.start()

    def other(self, event: Event, now: float) -> list[Effect] | None:
        return None

    def handle(self, event: Event, now: float) -> list[Effect]:
        if isinstance(event, Started):
            return self.start(now)
        if self.transport.wants(event):
            effects, notices = self.transport.handle(event, now)
            for notice in notices:
                effects += self.proxy.on_notice(notice, now)
            return effects
        return self.other(event, now) or []


class UserAgent:
    """What the two ends of the call (the Skype client and CMS) share: a SIP transport, branch
    numbering, the linger before ``finished``, and the dispatch of the transport's notices.

    Subclasses implement :meth:`on_sip` (a parsed message) and may override
    :meth:`on_send_failed` / :meth:`on_connection_lost`.
    """

    name: str
    host: str
    finished: bool
    #: Seconds between the last act and ``finished`` (lets closes reach the trace).
    linger: float = 0.05
    branch_tag: str = "ua"

    def __init__(self, host: str, sip_port: int, rng: random.Random) -> None:
        self.host = host
        self.rng = rng
        self.transport = SipTransport(host, (sip_port,))
        self.finished = False
        self._branches = 0
        #: This end's tag in the call's dialog (From for the caller, To for the callee).
        self.tag = f"{rng.getrandbits(32):08x}"
        self.dialog: Dialog | None = None
        #: The post-ICE reINVITE is answered 200 and acknowledged: sharing is on.
        self.shared = False
        self._reoffer: Request | None = None
        self._reoffer_done = False
        self._reoffer_ack: Request | None = None
        #: CSeq of the peer's reINVITE this end answered 200 (its ACK establishes sharing).
        self._answered_cseq = -1

    def branch(self) -> str:
        """A new RFC 3261 §8.1.1.7 branch: magic cookie, a counter, random bits."""
        self._branches += 1
        tail = f"{self._branches:x}{self.rng.getrandbits(24):06x}"
        return f"{sip.MAGIC_COOKIE}{self.branch_tag}{tail}"

    def done(self, why: str) -> list[Effect]:
        return [Log(why), StartTimer("finish", self.linger)]

    def on_sip(self, conn: ConnId, message: sip.SipMessage, now: float) -> list[Effect]:
        raise NotImplementedError

    # -- the dialog and its reINVITE (RFC 3261 §12, §14; RFC 5245 §9.1.2.2) ---------------------

    @property
    def reinvite_sent(self) -> bool:
        return self._reoffer is not None

    def in_dialog(self, request: Request) -> bool:
        """§12.2.2: the request belongs to the call's dialog (Call-ID and both tags)."""
        dialog = self.dialog
        return (
            dialog is not None
            and sip.call_id(request) == dialog.call_id
            and sip.to_tag(request) == self.tag
            and sip.format_address(sip.from_address(request)) == dialog.remote
        )

    def send_reoffer(self, body: bytes) -> list[Effect]:
        """Send the post-ICE reINVITE, once, unless sharing is already on."""
        dialog = self.dialog
        if dialog is None or self._reoffer is not None or self.shared:
            return []
        self._reoffer = dialog.request(
            "INVITE", self.branch(), body=body, content_type=appsharing.CONTENT_TYPE
        )
        return self.transport.send(self._reoffer, dialog.next_hop())

    def is_reoffer_answer(self, response: Response) -> bool:
        reoffer = self._reoffer
        return (
            reoffer is not None
            and sip.cseq(response).method == "INVITE"
            and sip.cseq(response).sequence == sip.cseq(reoffer).sequence
        )

    def reoffer_answered(self, response: Response) -> tuple[list[Effect], str | None]:
        """A final answer to our reINVITE: the ACK to send, and None when sharing is now on
        (or the answer was a repeat), else why it was refused."""
        dialog, reoffer = self.dialog, self._reoffer
        assert dialog is not None and reoffer is not None  # is_reoffer_answer() held
        if self._reoffer_done:  # a repeated final answer (§13.3.1.4): ACK a 2xx again
            if response.code < 300 and self._reoffer_ack is not None:
                return self.transport.send(self._reoffer_ack, dialog.next_hop()), None
            return [], None
        self._reoffer_done = True
        if response.code >= 300:
            ack = sip.build_failure_ack(reoffer, response)
            why = f"reINVITE refused: {sip.summary(response)}{diag_suffix(response)}"
            return self.transport.send(ack, dialog.next_hop()), why
        self._reoffer_ack = dialog.request("ACK", self.branch(), cseq=sip.cseq(reoffer).sequence)
        self.shared = True
        return self.transport.send(self._reoffer_ack, dialog.next_hop()), None

    def answer_reoffer(
        self,
        conn: ConnId,
        request: Request,
        body: bytes,
        contact: str,
        refusal: Refusal | None = None,
    ) -> list[Effect]:
        """The peer's reINVITE in our dialog: 491 during our own (§14.2), ``refusal`` when the
        policy says no (§14.2: the session stays as it was), else 200 with ``body``."""
        if self._reoffer is not None and not self._reoffer_done:
            return self.transport.send_on(conn, sip.build_response(request, 491, "Request Pending"))
        if refusal is not None:
            extra = []
            if refusal.diagnostics is not None:
                extra.append(("ms-diagnostics-public", str(refusal.diagnostics)))
            no = sip.build_response(request, refusal.code, refusal.reason, extra_headers=extra)
            return [
                Log(f"refusing the reINVITE: {refusal.code} {refusal.reason}{diag_suffix(no)}"),
                *self.transport.send_on(conn, no),
            ]
        ok = sip.build_response(
            request, 200, record_route=(), contact=contact,
            content_type=appsharing.CONTENT_TYPE, body=body,
        )  # fmt: skip
        self._answered_cseq = sip.cseq(request).sequence
        return self.transport.send_on(conn, ok)

    def ack_establishes(self, request: Request) -> bool:
        """An ACK for our 200 to the peer's reINVITE: sharing is on (True the first time)."""
        if self.shared or not self.in_dialog(request):
            return False
        if sip.cseq(request).sequence != self._answered_cseq:
            return False
        self.shared = True
        return True

    def on_send_failed(self, notice: SendFailed) -> list[Effect]:
        return [Log(f"cannot reach {notice.to}: {notice.reason}", "warn")]

    def on_connection_lost(self, notice: ConnectionLost) -> list[Effect]:
        return []

    def sip_event(self, event: Event, now: float) -> list[Effect]:
        """An event :meth:`SipTransport.wants`: carry it through and act on what it reports."""
        effects, notices = self.transport.handle(event, now)
        for notice in notices:
            if isinstance(notice, Incoming):
                try:
                    effects += self.on_sip(notice.conn, notice.message, now)
                except WireError as exc:
                    effects.append(Log(f"cannot use {sip.summary(notice.message)}: {exc}", "warn"))
            elif isinstance(notice, SendFailed):
                effects += self.on_send_failed(notice)
            elif isinstance(notice, ConnectionLost):
                effects += self.on_connection_lost(notice)
        return effects


def check_step(
    checks: CheckStream, conn: ConnId, data: bytes, peer: str
) -> tuple[list[Effect], bool]:
    """Feed the ICE check stream on ``conn``: the framed answers to send and notes on what
    happened; True when the pair has just become valid in both directions."""
    was_valid = checks.valid
    out, notices = checks.feed(data)
    effects: list[Effect] = [Send(conn, frame, "rfc4571") for frame in out]
    for notice in notices:
        if isinstance(notice, CheckFailed):
            effects.append(Log(f"ICE: {notice.reason}", "warn"))
        elif isinstance(notice, CheckAnswered):
            effects.append(Log("ICE: our check answered"))
        elif isinstance(notice, CheckReceived):
            effects.append(Log(f"ICE: {peer}'s check answered"))
    became_valid = checks.valid and not was_valid
    if became_valid:
        effects.append(Log("ICE: candidate pair valid in both directions"))
    return effects, became_valid
