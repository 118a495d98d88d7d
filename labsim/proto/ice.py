"""ICE-TCP connectivity checks on one RFC 4571-framed stream (RFC 6544 §3 and §7.1, RFC 5245
§7, MS-ICE2).

A :class:`CheckStream` is one end of a candidate pair whose TCP connection is already up
(for CMS: the RFC 6062 data connection after ConnectionBind; for the Skype client: its media
connection through the Edge). It sends one Binding Request, answers the peer's, and reports
when the pair is valid in both directions, which is what Cisco's note 212580 requires before
the reINVITE: "Bidirectional Binding Requests and Binding Success Responses are required for
this candidate pair to be considered valid".

Credentials are short-term (RFC 5245 §7.1.2.3): a request carries USERNAME
``<remote ufrag>:<local ufrag>`` and MESSAGE-INTEGRITY keyed with the remote ``ice-pwd``; the
answer is keyed with the answerer's own ``ice-pwd``. A request whose USERNAME or integrity is
wrong gets ``401`` (RFC 5389 §10.1.2), one without is answered ``400``.

The attribute order of the request is a setting (``layout``): the lab shows only that CMS's
check is 88 bytes long and starts with USE-CANDIDATE (PROTOCOL.md §10, UNSURE 2). The call's
default layouts (:class:`labsim.actors.lab.CallSettings`) reproduce both lab sizes: CMS's
108-byte framed request (``00 6c 00 01 00 58 …``) and the Skype side's 90-byte frame.

Two layers, on purpose. :class:`CheckStream` works on the bytes of one stream and knows
nothing of connections: the stream's connection changes hands before the first check (CMS's
RFC 6062 data connection is opened and bound by the TURN client, then handed over with the
bytes that followed the ConnectionBind response), and the codec-level tests drive two streams
into each other byte for byte (``tests/test_appsharing.py``). :class:`CheckLink` is the
protocol machine (:mod:`labsim.proto.machine`) that owns one such connection for an actor:
it opens it or takes it over, feeds its bytes to the stream, sends the answers, logs what
happened and tells its owner :class:`LinkUp`, :class:`LinkFailed`, :class:`PairValid` and
:class:`LinkClosed`.

Not modelled: role conflicts (487, RFC 5245 §7.2.1.1; the roles are settings and never clash
in the call) and check retransmission (none over TCP, RFC 6544 §7.1).
"""

from __future__ import annotations

import difflib
import random
from dataclasses import dataclass, field
from typing import Annotated

from labsim.proto import events as ev
from labsim.proto.events import Address, ConnId, Effect, Event
from labsim.proto.machine import Step
from labsim.proto.settings import SettingError, TextForm
from labsim.wire import WireError, stun
from labsim.wire.errors import FramingError
from labsim.wire.framing import Rfc4571Splitter, frame_rfc4571

#: Names a check layout may use, the attributes :class:`CheckStream` knows how to fill in;
#: ICE-CONTROLLING and ICE-CONTROLLED both mean "the role attribute", written as the agent's
#: actual role. The scenario's check layouts are checked against this list (written once).
LAYOUT_NAMES: tuple[str, ...] = (
    "FINGERPRINT", "ICE-CONTROLLED", "ICE-CONTROLLING", "MESSAGE-INTEGRITY",
    "MS-CANDIDATE-IDENTIFIER", "MS-IMPLEMENTATION-VERSION", "PRIORITY", "SOFTWARE",
    "USE-CANDIDATE", "USERNAME",
)  # fmt: skip


def _known_check_attribute(name: str) -> None:
    if name not in LAYOUT_NAMES:
        close = difflib.get_close_matches(name.upper(), LAYOUT_NAMES, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise SettingError((), f"{name!r} is not a STUN attribute labsim knows{hint}")


CheckAttribute = Annotated[str, TextForm(_known_check_attribute, (("enum", list(LAYOUT_NAMES)),))]
"""One entry of a check layout: a name of :data:`LAYOUT_NAMES`."""

# RFC 5245 §15.4: ice-char is ALPHA / DIGIT / "+" / "/"; ufrag 4-256, pwd 22-256 characters.
_ICE_CHARS = "ice-chars (letters, digits, + and /; RFC 5245 §15.4)"
IceUfrag = Annotated[str, TextForm.pattern(r"[A-Za-z0-9+/]{4,256}", f"4-256 {_ICE_CHARS}")]
"""``a=ice-ufrag``."""
IcePwd = Annotated[str, TextForm.pattern(r"[A-Za-z0-9+/]{22,256}", f"22-256 {_ICE_CHARS}")]
"""``a=ice-pwd``."""


@dataclass(frozen=True)
class IceCredentials:
    ufrag: str
    pwd: str


@dataclass(frozen=True)
class CheckSettings:
    local: IceCredentials
    controlling: bool
    priority: int
    """PRIORITY of the check (RFC 5245 §7.1.2.1: the prflx priority of the local candidate)."""
    layout: tuple[str, ...]
    foundation: bytes = b"3\x00\x00\x00"
    """MS-CANDIDATE-IDENTIFIER value (MS-ICE2 §2.2.2.3): the local candidate's foundation as
    text, NUL-padded to 4 bytes (Wireshark reads it as a string; leading NULs would show as
    "trailing stray characters")."""
    software: str = ""
    ms_version: int = 2
    """MS-IMPLEMENTATION-VERSION value (2 = MS-ICE2)."""


@dataclass(frozen=True)
class CheckAnswered:
    """Our Binding Request got a Binding Success Response that verifies."""


@dataclass(frozen=True)
class CheckReceived:
    """The peer's Binding Request verified and was answered."""

    nominated: bool
    """It carried USE-CANDIDATE."""


@dataclass(frozen=True)
class CheckFailed:
    reason: str


@dataclass(frozen=True)
class MediaFrame:
    """A frame that is not STUN (RTP/RTCP of the shared screen)."""

    data: bytes


IceNotice = CheckAnswered | CheckReceived | CheckFailed | MediaFrame


@dataclass
class CheckStream:
    """Checks over one framed stream; feed it the bytes that arrive, send what it returns."""

    settings: CheckSettings
    remote: IceCredentials
    peer: Address
    """The peer's address as this end sees it: written in XOR-MAPPED-ADDRESS of answers."""
    rng: random.Random
    tie_breaker: int = 0
    answered: bool = False
    received: bool = False
    nominated: bool = False
    _pending: set[bytes] = field(default_factory=set)
    _splitter: Rfc4571Splitter = field(default_factory=Rfc4571Splitter)

    def __post_init__(self) -> None:
        if not self.tie_breaker:
            self.tie_breaker = self.rng.getrandbits(64)

    @property
    def valid(self) -> bool:
        """Checked in both directions (Cisco 212580; RFC 5245 §7.1.3.2.2 for each side)."""
        return self.answered and self.received

    def request(self) -> bytes:
        """A framed Binding Request in the configured layout."""
        tid = self.rng.randbytes(stun.TRANSACTION_ID_LENGTH)
        self._pending.add(tid)
        message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, tid, self._attributes())
        return frame_rfc4571(message.encode(stun.short_term_key(self.remote.pwd)))

    def _attributes(self) -> list[stun.Attribute]:
        s = self.settings
        attrs: list[stun.Attribute] = []
        for name in s.layout:
            if name == "USE-CANDIDATE":
                if s.controlling:  # RFC 5245 §7.1.2.1: only the controlling agent nominates
                    attrs.append(stun.UseCandidate())
            elif name == "PRIORITY":
                attrs.append(stun.Priority(s.priority))
            elif name in ("ICE-CONTROLLING", "ICE-CONTROLLED"):
                role = stun.IceControlling if s.controlling else stun.IceControlled
                attrs.append(role(self.tie_breaker))
            elif name == "USERNAME":
                attrs.append(stun.Username(f"{self.remote.ufrag}:{s.local.ufrag}"))
            elif name == "MS-IMPLEMENTATION-VERSION":
                attrs.append(stun.MsImplementationVersion(s.ms_version))
            elif name == "MS-CANDIDATE-IDENTIFIER":
                attrs.append(stun.MsCandidateIdentifier(s.foundation))
            elif name == "SOFTWARE":
                attrs.append(stun.Software(s.software))
            elif name == "MESSAGE-INTEGRITY":
                attrs.append(stun.MessageIntegrity())
            elif name == "FINGERPRINT":
                attrs.append(stun.Fingerprint())
            else:
                raise ValueError(f"unknown check attribute {name!r}")
        return attrs

    def feed(self, data: bytes) -> tuple[list[bytes], list[IceNotice]]:
        """Take bytes from the stream; return framed answers to send and what happened."""
        out: list[bytes] = []
        notices: list[IceNotice] = []
        lost: FramingError | None = None
        try:
            frames = self._splitter.feed(data)
        except FramingError as exc:
            # The checks before the bad bytes arrived whole: answer them, then report the loss.
            frames, lost = list(exc.messages), exc
        for frame in frames:
            if not stun.is_stun(frame):
                notices.append(MediaFrame(frame))
                continue
            try:
                message = stun.decode(frame)
            except WireError as exc:
                notices.append(CheckFailed(f"malformed STUN: {exc}"))
                continue
            if stun.Fingerprint in message and not message.verify_fingerprint():
                # RFC 5245 §7.2 / RFC 5389 §7.3: a bad FINGERPRINT means it is not a check for
                # us; it is dropped unanswered.
                notices.append(CheckFailed(f"{message.summary()} with a bad FINGERPRINT dropped"))
                continue
            self._message(message, out, notices)
        if lost is not None:
            notices.append(CheckFailed(f"framing lost: {lost}"))
        return out, notices

    def _message(self, message: stun.Message, out: list[bytes], notices: list[IceNotice]) -> None:
        if message.method != stun.Method.BINDING:
            notices.append(CheckFailed(f"unexpected {message.summary()}"))
            return
        if message.cls is stun.Class.INDICATION:
            return  # a keepalive (RFC 5245 §10): nothing to answer
        if message.cls is stun.Class.REQUEST:
            self._answer(message, out, notices)
            return
        if message.transaction_id not in self._pending:
            notices.append(CheckFailed(f"{message.summary()} for no check of ours"))
            return
        self._pending.discard(message.transaction_id)
        if message.cls is stun.Class.ERROR:
            code = message.get(stun.ErrorCode)
            notices.append(CheckFailed(f"check refused: {code.code if code else '?'}"))
        elif not message.verify_integrity(stun.short_term_key(self.remote.pwd)):
            notices.append(CheckFailed("answer fails MESSAGE-INTEGRITY (wrong ice-pwd?)"))
        else:
            self.answered = True
            notices.append(CheckAnswered())

    def _answer(self, request: stun.Message, out: list[bytes], notices: list[IceNotice]) -> None:
        key = stun.short_term_key(self.settings.local.pwd)
        username = request.get(stun.Username)
        if username is None or stun.MessageIntegrity not in request:
            out.append(frame_rfc4571(request.error(400).encode()))
            notices.append(CheckFailed("peer's check carries no credentials"))
            return
        if not username.value.startswith(f"{self.settings.local.ufrag}:") or not (
            request.verify_integrity(key)
        ):
            out.append(frame_rfc4571(request.error(401).encode()))
            notices.append(
                CheckFailed(f"peer's check fails authentication (user {username.value})")
            )
            return
        response = request.success(
            [stun.XorMappedAddress(self.peer.host, self.peer.port), stun.MessageIntegrity(),
             stun.Fingerprint()]
        )  # fmt: skip
        out.append(frame_rfc4571(response.encode(key)))
        nominated = stun.UseCandidate in request
        self.nominated = self.nominated or nominated
        self.received = True
        notices.append(CheckReceived(nominated))


# ---------------------------------------------------------------------------------------------
# The machine: one connection carrying the checks
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkUp:
    """The connection :meth:`CheckLink.connect` opened is up: the owner starts the checks."""

    remote: Address


@dataclass(frozen=True)
class LinkFailed:
    """The connection could not be opened."""

    reason: str


@dataclass(frozen=True)
class PairValid:
    """The candidate pair has just become valid in both directions (Cisco 212580)."""


@dataclass(frozen=True)
class LinkClosed:
    """The peer closed or reset the connection."""

    reset: bool


LinkNotice = LinkUp | LinkFailed | PairValid | LinkClosed


class CheckLink:
    """The ICE checks of one connection, as a machine; ``peer`` names the far end in logs."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.conn: ConnId | None = None
        """The connection, while this link has one."""
        self.checks: CheckStream | None = None
        """The checks, once begun."""

    def connect(self, conn: ConnId, remote: Address) -> Step[LinkNotice]:
        """Open the connection (the Skype client's media connection); :class:`LinkUp` follows."""
        self.conn, self.checks = conn, None
        return Step((ev.Connect(conn, remote),))

    def begin(self, conn: ConnId, checks: CheckStream, early: bytes = b"") -> Step[LinkNotice]:
        """Run ``checks`` on ``conn`` (opened here, or handed over with the ``early`` bytes that
        came with it): our check first, RFC 5245 §7.1.2 has each agent send its own."""
        self.conn, self.checks = conn, checks
        effects: list[Effect] = [ev.Send(conn, checks.request(), "rfc4571")]
        if not early:
            return Step(tuple(effects))
        more = self._feed(conn, checks, early)
        return Step((*effects, *more.effects), more.notices)

    def close(self) -> Step[LinkNotice]:
        """Close the connection, if there is one."""
        conn, self.conn = self.conn, None
        return Step() if conn is None else Step((ev.Close(conn),))

    def handle(self, event: Event, now: float) -> Step[LinkNotice]:
        match event:
            case ev.Connected(remote=remote):
                return Step((), (LinkUp(remote),))
            case ev.ConnectFailed(reason=reason):
                self.conn = None
                return Step((), (LinkFailed(reason),))
            case ev.Received(conn=conn, data=data) if self.checks is not None:
                return self._feed(conn, self.checks, data)
            case ev.Closed(reset=reset):
                # The checks stay readable (the pair CMS names in its reINVITE).
                self.conn = None
                return Step((), (LinkClosed(reset),))
        return Step()

    def _feed(self, conn: ConnId, checks: CheckStream, data: bytes) -> Step[LinkNotice]:
        was_valid = checks.valid
        out, notices = checks.feed(data)
        effects: list[Effect] = [ev.Send(conn, frame, "rfc4571") for frame in out]
        for notice in notices:
            if isinstance(notice, CheckFailed):
                effects.append(ev.Log(f"ICE: {notice.reason}", "warning"))
            elif isinstance(notice, CheckAnswered):
                effects.append(ev.Log("ICE: our check answered"))
            elif isinstance(notice, CheckReceived):
                effects.append(ev.Log(f"ICE: {self.peer}'s check answered"))
        if not checks.valid or was_valid:
            return Step(tuple(effects))
        effects.append(ev.Log("ICE: candidate pair valid in both directions"))
        return Step(tuple(effects), (PairValid(),))
