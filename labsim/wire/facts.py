"""Typed facts of one message: what code compares, where people read a summary.

A message's summary (``Allocate Request TCP lifetime: 600``, ``200 OK``) is for printing. Fault
rules, the outcome, the diagnosis, the JSON output and the tests compare the fields here:
protocol, SIP method / status / Call-ID / CSeq / branches, STUN method / class / error code /
transaction id and the attributes the call's reasoning needs (DESIGN.md: "Summaries are for
people; code compares typed fields").

:class:`Kind` is the part of a message a person names in a fault rule (``stun: Binding
Request``, ``sip: 200 OK``, ``sip: INVITE``): :func:`parse_kind` turns that text into a
:class:`Kind` once, when the scenario loads, and rules match it against each message's facts,
never against its summary text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Literal

from sipmessage import Request

from labsim.wire import WireError, sip, stun
from labsim.wire.address import Address
from labsim.wire.cache import cached

#: What a message is on the wire: SIP, STUN (or ChannelData, decoded by the STUN codec), an
#: RFC 4571 frame that is not STUN (``framed``), or opaque TCP data.
Protocol = Literal["SIP", "STUN", "TCP"]


@dataclass(frozen=True, slots=True)
class SipFacts:
    """A SIP message's identity and the fields the call's reasoning reads (RFC 3261 §8.1.1)."""

    method: str | None
    """The request method (``INVITE``, ``ACK``, ``BYE`` …); None for a response."""
    status: int | None
    """The response code; None for a request."""
    reason: str
    """The reason phrase of a response (empty for a request)."""
    call_id: str
    cseq: int
    cseq_method: str
    from_tag: str | None
    to_tag: str | None
    """None in a request outside a dialog (the initial INVITE); set in a reINVITE."""
    branch: str
    """The topmost Via's branch: the transaction on this hop (RFC 3261 §17.2.3)."""
    origin: str
    """The bottommost Via's branch: the transaction of the UA that started it. A proxy pushes
    its own Via on a request and pops it from the answer, so this one names the same
    end-to-end message on every hop (how a forwarded message keeps its identity)."""
    has_sdp: bool
    media: tuple[str, ...]
    """The SDP's ``m=`` media kinds, in order (``applicationsharing`` for the share)."""
    diagnostics: str
    """ms-diagnostics-public (else ms-diagnostics) text (``21002;reason=…``), empty without."""
    diagnostics_code: int | None = None
    """Its code (21002: attendees cannot share), when it parses."""
    cause: str = ""
    """The Reason header (RFC 3326), empty without: why a BYE ends the call (``SIP ;cause=408
    ;text="..."``); a user's hang-up has none."""

    def answers(self, request: SipFacts) -> bool:
        """Whether this response answers ``request`` (same Call-ID, From tag and CSeq; CSeq
        numbers count per direction, RFC 3261 §12.2.1.1)."""
        return (
            self.status is not None and self.call_id == request.call_id
            and self.from_tag == request.from_tag and self.cseq == request.cseq
            and self.cseq_method == request.method
        )  # fmt: skip

    @property
    def is_request(self) -> bool:
        return self.method is not None


@dataclass(frozen=True, slots=True)
class StunFacts:
    """A STUN/TURN message's identity and the attributes the call's reasoning reads."""

    method: str
    """Wireshark's method name: ``Binding``, ``Allocate``, ``ConnectionBind`` …"""
    cls: str
    """``Request``, ``Indication``, ``Success Response`` or ``Error Response``."""
    transaction_id: str
    """Hex."""
    error: int | None = None
    """ERROR-CODE (RFC 5389 §15.6) of an error response."""
    lifetime: int | None = None
    relayed: Address | None = None
    """XOR-RELAYED-ADDRESS (RFC 5766 §14.5)."""
    mapped: Address | None = None
    """XOR-MAPPED-ADDRESS (RFC 5389 §15.2)."""
    peer: Address | None = None
    """XOR-PEER-ADDRESS (RFC 5766 §14.3)."""
    connection_id: int | None = None
    """CONNECTION-ID (RFC 6062 §6.2.1)."""
    username: str | None = None
    realm: str | None = None
    nonce: bool = False
    integrity: bool = False
    use_candidate: bool = False
    channel: int | None = None
    """The channel number of ChannelData (RFC 5766 §11.4); method is ``ChannelData`` then."""

    @property
    def is_request(self) -> bool:
        return self.cls == "Request"

    @property
    def is_success(self) -> bool:
        return self.cls == "Success Response"

    @property
    def is_error(self) -> bool:
        return self.cls == "Error Response"


@dataclass(frozen=True, slots=True)
class DataFacts:
    """Opaque bytes: relayed media, an RFC 4571 frame that is not STUN, or bytes that did not
    parse (``error`` says why)."""

    framed: bool = False
    """An RFC 4571 frame (length-prefixed) rather than unframed TCP data."""
    error: str | None = None


Facts = SipFacts | StunFacts | DataFacts

#: The fact names of each protocol's messages (what a scenario's expectations may name).
FACT_FIELDS: dict[str, tuple[str, ...]] = {
    protocol: tuple(f.name for f in fields(kind))
    for protocol, kind in (("SIP", SipFacts), ("STUN", StunFacts), ("TCP", DataFacts))
}


def has_facts(facts: Facts, wanted: Mapping[str, object]) -> bool:
    """Whether ``facts`` has every value in ``wanted`` (compared as text; an address without a
    port matches that host on any port)."""
    for name, value in wanted.items():
        have = getattr(facts, name, None)
        if isinstance(have, Address) and isinstance(value, str) and ":" not in value:
            if have.host != value:
                return False
        elif isinstance(have, tuple):
            if str(value) not in have:
                return False
        elif have != value and str(have) != str(value):
            return False
    return True


def sip_facts(msg: sip.SipMessage) -> SipFacts:
    """The facts of a parsed SIP message; headers that do not parse leave their field empty
    (a peer's malformed header must not hide the rest of the message)."""
    headers = msg.headers
    try:
        vias = sip.vias(msg)
    except WireError:
        vias = []
    branch = str(vias[0].parameters.get("branch", "")) if vias else ""
    origin = str(vias[-1].parameters.get("branch", "")) if vias else ""
    try:
        cseq = sip.cseq(msg)
        number, cseq_method = cseq.sequence, cseq.method
    except WireError:
        number, cseq_method = 0, ""
    from_tag = _safe(sip.from_tag, msg)
    to_tag = _safe(sip.to_tag, msg)
    media: tuple[str, ...] = ()
    body = msg.body or b""
    if body:
        media = tuple(
            line[2:].split(" ", 1)[0]
            for line in body.decode("utf-8", "replace").splitlines()
            if line.startswith("m=")
        )
    code = None
    try:
        found = sip.ms_diagnostics_public(msg) or sip.ms_diagnostics(msg)
        code = found.code if found is not None else None
    except WireError:
        pass
    if isinstance(msg, Request):
        method: str | None = msg.method
        status: int | None = None
        reason = ""
    else:
        method, status, reason = None, msg.code, msg.phrase
    return SipFacts(
        method=method,
        status=status,
        reason=reason,
        call_id=str(headers.get("Call-ID") or "").strip(),
        cseq=number,
        cseq_method=cseq_method,
        from_tag=from_tag,
        to_tag=to_tag,
        branch=branch,
        origin=origin,
        has_sdp=bool(body),
        media=media,
        diagnostics=sip.diagnostics_text(msg),
        diagnostics_code=code,
        cause=sip.reason_text(msg),
    )


def _safe(get: Callable[[sip.SipMessage], str | None], msg: sip.SipMessage) -> str | None:
    try:
        return get(msg)
    except WireError:
        return None


def _address(attr: object) -> Address | None:
    if attr is None:
        return None
    return Address(str(attr.address), attr.port)  # type: ignore[attr-defined]


def stun_facts(msg: stun.Message | stun.ChannelData) -> StunFacts:
    if isinstance(msg, stun.ChannelData):
        return StunFacts("ChannelData", "Data", "", channel=msg.channel)
    error = msg.get(stun.ErrorCode)
    lifetime = msg.get(stun.Lifetime)
    connection = msg.get(stun.ConnectionId)
    username = msg.get(stun.Username)
    realm = msg.get(stun.Realm)
    return StunFacts(
        method=msg.method_name,
        cls=stun.CLASS_NAMES[msg.cls],
        transaction_id=msg.transaction_id.hex(),
        error=error.code if error is not None else None,
        lifetime=lifetime.value if lifetime is not None else None,
        relayed=_address(msg.get(stun.XorRelayedAddress)),
        mapped=_address(msg.get(stun.XorMappedAddress)),
        peer=_address(msg.get(stun.XorPeerAddress)),
        connection_id=connection.value if connection is not None else None,
        username=username.value if username is not None else None,
        realm=realm.value if realm is not None else None,
        nonce=stun.Nonce in msg,
        integrity=stun.MessageIntegrity in msg,
        use_candidate=stun.UseCandidate in msg,
    )


def facts_of(protocol: str, data: bytes, *, framed: bool = False) -> Facts:
    """The facts of one message's bytes (without an RFC 4571 length prefix). Never raises:
    bytes that do not decode are :class:`DataFacts` with the error."""
    if protocol == "TCP":
        return DataFacts(framed=framed)
    try:
        if protocol == "SIP":
            return sip_facts(sip.parse_message(data))
        return stun_facts(stun.decode_control(data))
    except WireError as exc:
        return DataFacts(framed=framed, error=str(exc))


# ---------------------------------------------------------------------------------------------
# Kinds: what a person names in a fault rule
# ---------------------------------------------------------------------------------------------

#: STUN method names as people write them (Wireshark's, PROTOCOL.md §7.2), by lower case.
STUN_METHODS: dict[str, str] = {name.lower(): name for name in stun.METHOD_NAMES.values()} | {
    "channelbind": "Channel-Bind",
    "channeldata": "ChannelData",
}
#: STUN class words, longest first so ``Success Response`` wins over ``Response``.
STUN_CLASSES: tuple[tuple[str, str], ...] = (
    ("success response", "Success Response"),
    ("error response", "Error Response"),
    ("success", "Success Response"),
    ("error", "Error Response"),
    ("request", "Request"),
    ("indication", "Indication"),
)


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of message as a rule names it; None fields match anything.

    SIP: a method (``INVITE``) or a status (``200``, ``200 OK``: the phrase is not compared, a
    proxy may word it otherwise). STUN: a method with an optional class and error code
    (``Binding Request``, ``Allocate Error Response 401``, ``ConnectionAttempt``). Opaque data:
    ``TCP data`` or ``framed data``."""

    protocol: Protocol
    method: str | None = None
    cls: str | None = None
    status: int | None = None
    error: int | None = None
    framed: bool | None = None
    text: str = ""
    """What the person wrote, for messages about the rule."""

    def matches(self, protocol: str, facts: Facts) -> bool:
        if protocol != self.protocol:
            return False
        if isinstance(facts, SipFacts):
            if self.method is not None and facts.method != self.method:
                return False
            return self.status is None or facts.status == self.status
        if isinstance(facts, StunFacts):
            if self.method is not None and facts.method != self.method:
                return False
            if self.cls is not None and facts.cls != self.cls:
                return False
            return self.error is None or facts.error == self.error
        if self.method is not None or self.status is not None or self.cls is not None:
            return False
        return self.framed is None or facts.framed == self.framed


class KindError(ValueError):
    """The text names no kind of message labsim knows; the message says what would."""


_SIP_TOKEN = frozenset("!%'*+-.0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_`abcdefghijklmnopqrstuvwxyz~")


@cached(maxsize=256, max_key=256)
def parse_kind(text: str, protocol: str | None = None) -> Kind:
    """The :class:`Kind` a fault rule's text names. ``protocol`` narrows it (``SIP``, ``STUN``,
    ``TCP``); without it the text decides. Raises :class:`KindError` with a suggestion.
    Cached: reports and tests ask for the same few kinds over every message."""
    words = text.split()
    if not words:
        raise KindError("an empty message kind: name one, e.g. 'Binding Request' or 'INVITE'")
    head = words[0]
    lower = " ".join(words).lower()
    if protocol in (None, "TCP") and lower in ("tcp data", "data", "framed data"):
        framed = None if lower == "data" else lower == "framed data"
        return Kind("TCP", framed=framed, text=text)
    if protocol in (None, "STUN") and head.lower() in STUN_METHODS:
        method = STUN_METHODS[head.lower()]
        rest = " ".join(words[1:]).lower()
        cls = None
        error = None
        for word, name in STUN_CLASSES:
            if rest.startswith(word):
                cls, rest = name, rest[len(word) :].strip()
                break
        if rest:
            code = rest.split()[0]
            if cls in (None, "Error Response") and code.isdigit() and len(code) == 3:
                cls, error = "Error Response", int(code)
            else:
                raise KindError(
                    f"{text!r}: after the STUN method {method!r} expected Request, Success "
                    "Response, Error Response [code] or Indication"
                )
        return Kind("STUN", method=method, cls=cls, error=error, text=text)
    if protocol in (None, "SIP"):
        if head.isdigit() and len(head) == 3 and 100 <= int(head) <= 699:
            return Kind("SIP", status=int(head), text=text)
        if len(words) == 1 and head.isupper() and set(head) <= _SIP_TOKEN:
            return Kind("SIP", method=head, text=text)
    raise KindError(_kind_hint(text, protocol))


def _kind_hint(text: str, protocol: str | None) -> str:
    import difflib

    head = text.split()[0].lower()
    close = difflib.get_close_matches(head, list(STUN_METHODS), n=1)
    sip_hint = "a SIP method in capitals (INVITE, ACK, BYE) or a status code (200, 403)"
    stun_hint = "a STUN method with an optional class (Binding Request, Allocate Error Response)"
    hints = {"SIP": sip_hint, "STUN": stun_hint, "TCP": "'TCP data' or 'framed data'"}
    wanted = hints.get(protocol or "", f"{stun_hint}, {sip_hint}, or 'TCP data'")
    did = f"; did you mean {STUN_METHODS[close[0]]!r}?" if close and protocol != "SIP" else ""
    return f"{text!r} names no {protocol or ''} message kind: expected {wanted}{did}".replace(
        "no  ", "no "
    )
