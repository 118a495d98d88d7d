"""SDP bodies (RFC 4566) with the ICE and Microsoft extensions a SfB screen share carries.

The model is a list of lines, not a tree of fields: a :class:`SessionDescription` holds the
session-level lines, one :class:`MediaDescription` per ``m=`` section, and any trailing empty
lines. Each :class:`Line` keeps its type letter, its value and its own terminator, so
``bytes(SessionDescription.parse(data)) == data`` for every body that parses, whatever the line
endings (CRLF, LF or mixed), the attribute order, a missing final terminator, unknown line types
or unknown attributes. A lab tool shows what was on the wire, so nothing is normalised away.

Typed views (:class:`Origin`, :class:`Connection`, :class:`Media`, :class:`Candidate`,
:class:`RemoteCandidates`, :class:`Crypto`, :class:`RtpMap`, :class:`Rtcp`,
:class:`ApplicationSharing`) are frozen dataclasses parsed on demand from a line's value; their
``str()`` is the canonical value text. Builders append or replace lines and check the result the
same way :meth:`SessionDescription.parse` checks input, so a body this module writes is a body it
accepts. New lines end in CRLF by default (RFC 4566 §5).

Validation, done line by line so the first fault in document order is the one reported:

- the text is UTF-8 (RFC 4566 §5 default charset; ``a=charset`` is not supported) with no NUL
  and no bare CR;
- the first line is ``v=0``; every line is ``<letter>=<value>``; empty lines are allowed only at
  the very end (kept verbatim in :attr:`SessionDescription.trailer`);
- ``o=``, ``s=`` and ``t=`` are present at session level (``o=``, ``s=`` exactly once); session-only
  types (``v o s u e p t r z``) do not appear in a media section; each ``m=`` opens a section;
- every known line (``o c m t b s``) and known attribute (``candidate``, ``crypto``, ``rtpmap``,
  ``setup`` …) parses with its typed view, and single-valued attributes appear at most once
  per section. Unknown letters and attributes are kept without checks (beyond the line syntax).

Every fault raises :class:`~labsim.wire.errors.SdpError` with the 1-based line number; no other
exception escapes from a parse function. This module does no IO and reads no clock.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Generic, NamedTuple, Self, TypeVar, overload

from labsim.wire.errors import SdpError

__all__ = [
    "CRLF",
    "ApplicationSharing",
    "Candidate",
    "Connection",
    "Crypto",
    "CryptoKey",
    "Line",
    "Media",
    "MediaDescription",
    "Mki",
    "Origin",
    "RemoteCandidate",
    "RemoteCandidates",
    "Rtcp",
    "RtpMap",
    "SessionDescription",
]

CRLF = "\r\n"
"""The line terminator RFC 4566 §5 prescribes; parsers must also accept a bare LF."""

_EOLS = ("\r\n", "\n", "")

# RFC 4566 §9: token-char = %x21 / %x23-27 / %x2A-2B / %x2D-2E / %x30-39 / %x41-5A / %x5E-7E.
_TOKEN = r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+"
_TOKEN_RE = re.compile(_TOKEN)
# RFC 4566 §5.14: proto = token *("/" token), e.g. TCP/RTP/SAVP.
_PROTO_RE = re.compile(rf"{_TOKEN}(?:/{_TOKEN})*")
# RFC 4566 §9: non-ws-string = 1*(VCHAR / %x80-FF); addresses and user names.
_NON_WS_RE = re.compile(r"[^\x00-\x20\x7f]+")
_VCHARS_RE = re.compile(r"[!-~]+")
_DIGITS_RE = re.compile(r"[0-9]+")
# RFC 5245 §15.1: foundation = 1*32ice-char; ice-char = ALPHA / DIGIT / "+" / "/".
_FOUNDATION_RE = re.compile(r"[A-Za-z0-9+/]{1,32}")
_ICE_CHARS_RE = re.compile(r"[A-Za-z0-9+/]+")
# RFC 4568 §9.2: crypto-suite = 1*(ALPHA / DIGIT / "_").
_SUITE_RE = re.compile(r"[A-Za-z0-9_]+")
# RFC 4648 §4 base64 with padding, as RFC 4568 §9.2 key-salt requires.
_BASE64_RE = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")

# Longer digit strings are refused before int() sees them: no SDP number needs more, and Python
# refuses int() of more than 4300 digits with a ValueError that must not escape.
_MAX_DIGITS = 20
_NO_LIMIT = 10**_MAX_DIGITS - 1

# RFC 4566 §5: these types belong to the session part only.
_SESSION_ONLY = frozenset("vosuepzrt")
# RFC 4566 §5 line order; builders insert new lines where this order puts them.
_SESSION_ORDER = "vosiuepcbtrzka"
_MEDIA_ORDER = "micbka"


def _show(text: str) -> str:
    """Quote a piece of input for an error message, cut short so a huge field stays readable."""
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _check_text(value: str, what: str) -> None:
    # RFC 4566 §9: byte-string = 1*(%x01-09/%x0B-0C/%x0E-FF), so no NUL, CR or LF in a value.
    for char, name in (("\x00", "NUL character"), ("\r", "bare CR"), ("\n", "LF")):
        if char in value:
            raise SdpError(f"{what}: {name} in {_show(value)}")


def _fields(value: str, what: str) -> list[str]:
    """Split a value on single spaces (RFC 4566 §5: fields are separated by one SP)."""
    _check_text(value, what)
    fields = value.split(" ")
    if "" in fields:
        raise SdpError(f"{what}: empty field in {_show(value)} (fields are separated by one space)")
    return fields


def _uint(text: str, what: str, low: int = 0, high: int = _NO_LIMIT) -> int:
    if not _DIGITS_RE.fullmatch(text):
        raise SdpError(f"{what} {_show(text)} is not an integer")
    if len(text) > _MAX_DIGITS:
        raise SdpError(f"{what} {_show(text)} is too large")
    value = int(text)
    if not low <= value <= high:
        raise SdpError(f"{what} {value} is out of range {low}..{high}")
    return value


def _match(regex: re.Pattern[str], text: str, what: str, kind: str) -> str:
    if not regex.fullmatch(text):
        raise SdpError(f"{what} {_show(text)} is not a valid {kind}")
    return text


def _check_network(nettype: str, addrtype: str, what: str) -> None:
    # RFC 4566 §5.2/§5.7: the lab is IPv4 over the Internet ("IN"); IP6 is accepted too.
    if nettype != "IN":
        raise SdpError(f"{what}: network type {_show(nettype)} is not IN")
    if addrtype not in ("IP4", "IP6"):
        raise SdpError(f"{what}: address type {_show(addrtype)} is not IP4 or IP6")


# --------------------------------------------------------------------------------------------
# Typed views of line values
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """``o=<username> <sess-id> <sess-version> <nettype> <addrtype> <address>`` (RFC 4566 §5.2)."""

    username: str
    """``-`` when the user is unknown (SIPE and CMS both send ``-``)."""
    session_id: int
    session_version: int
    """Bumped by one in every new offer of the same session (RFC 3264 §8), e.g. a reINVITE."""
    address: str
    nettype: str = "IN"
    addrtype: str = "IP4"

    @classmethod
    def parse(cls, value: str) -> Origin:
        """Parse the text after ``o=``."""
        fields = _fields(value, "origin")
        if len(fields) != 6:
            raise SdpError(
                "origin: expected 6 fields '<username> <sess-id> <sess-version> IN IP4 <address>',"
                f" got {len(fields)}"
            )
        username, session_id, version, nettype, addrtype, address = fields
        _match(_NON_WS_RE, username, "origin: username", "username")
        _check_network(nettype, addrtype, "origin")
        return cls(
            username=username,
            session_id=_uint(session_id, "origin: session id"),
            session_version=_uint(version, "origin: session version"),
            address=_match(_NON_WS_RE, address, "origin: address", "address"),
            nettype=nettype,
            addrtype=addrtype,
        )

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.session_version}"
            f" {self.nettype} {self.addrtype} {self.address}"
        )


@dataclass(frozen=True)
class Connection:
    """``c=IN IP4 <address>`` (RFC 4566 §5.7); a multicast ``/ttl`` stays part of the address."""

    address: str
    nettype: str = "IN"
    addrtype: str = "IP4"

    @classmethod
    def parse(cls, value: str) -> Connection:
        """Parse the text after ``c=``."""
        fields = _fields(value, "connection")
        if len(fields) != 3:
            raise SdpError(f"connection: expected 3 fields 'IN IP4 <address>', got {len(fields)}")
        nettype, addrtype, address = fields
        _check_network(nettype, addrtype, "connection")
        _match(_NON_WS_RE, address, "connection: address", "address")
        return cls(address=address, nettype=nettype, addrtype=addrtype)

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"


@dataclass(frozen=True)
class Media:
    """``m=<media> <port>[/<count>] <proto> <fmt> ...`` (RFC 4566 §5.14).

    Screen sharing runs MS-ICE2 over TCP (MS-SDPEXT 3.1.5.9, 3.1.5.22.2), so its line is
    ``m=applicationsharing <port> TCP/RTP/SAVP 127`` when the active address is TCP and SRTP is
    on (SIPE builds ``<TCP/>RTP/<S>AVP`` the same way).
    """

    media: str
    """``audio``, ``video``, ``applicationsharing`` …"""
    port: int
    proto: str
    """Transport protocol, e.g. ``TCP/RTP/SAVP`` or ``RTP/AVP``."""
    formats: tuple[str, ...]
    """Payload types (or other format tokens) in offer order."""
    port_count: int | None = None

    @classmethod
    def parse(cls, value: str) -> Media:
        """Parse the text after ``m=``."""
        fields = _fields(value, "media")
        if len(fields) < 4:
            raise SdpError(
                f"media: expected '<media> <port> <proto> <fmt> ...', got {len(fields)} fields"
            )
        media, port_text, proto, *formats = fields
        _match(_TOKEN_RE, media, "media: media type", "token")
        port_text, slash, count_text = port_text.partition("/")
        port = _uint(port_text, "media: port", 0, 65535)
        port_count = _uint(count_text, "media: port count", 1, 65535) if slash else None
        _match(_PROTO_RE, proto, "media: protocol", "protocol")
        for fmt in formats:
            _match(_TOKEN_RE, fmt, "media: format", "token")
        return cls(media, port, proto, tuple(formats), port_count)

    def __str__(self) -> str:
        port = f"{self.port}" if self.port_count is None else f"{self.port}/{self.port_count}"
        return " ".join([self.media, port, self.proto, *self.formats])


# MS-ICE2 (PROTOCOL.md §5.1) folds the RFC 6544 tcptype into the transport token.
_MS_ICE2_TCP = {"TCP-PASS": "passive", "TCP-ACT": "active", "TCP-SO": "so"}
_TRANSPORTS = frozenset({"UDP", "TCP", *_MS_ICE2_TCP})
_TCP_TYPES = ("active", "passive", "so")
_CANDIDATE_TYPES = ("host", "srflx", "prflx", "relay")


@dataclass(frozen=True)
class Candidate:
    """One ICE candidate: the value of ``a=candidate:`` (RFC 5245 §15.1).

    Three spellings of a TCP candidate are accepted:

    - RFC 6544 §4.5: transport ``TCP`` and an extension pair ``tcptype active|passive|so``;
    - MS-ICE2 (Lync/SfB): transport ``TCP-PASS`` / ``TCP-ACT`` (``TCP-SO`` is known to SIPE),
      no tcptype pair;
    - newer Teams: the same tokens in lower case (``tcp-pass``).

    The transport is matched case-insensitively but kept as written, so ``str()`` re-prints it;
    :attr:`tcptype` is the normalised direction whichever spelling carried it.
    """

    foundation: str
    component: int
    """1 = RTP, 2 = RTCP."""
    transport: str
    """As written: ``UDP``, ``TCP``, ``TCP-PASS``, ``TCP-ACT``, ``tcp-pass`` …"""
    priority: int
    address: str
    port: int
    type: str
    """``host``, ``srflx``, ``prflx`` or ``relay``."""
    related_address: str | None = None
    related_port: int | None = None
    tcptype: str | None = None
    """``passive``, ``active``, ``so`` or None (UDP, or a TCP candidate without tcptype)."""
    extensions: tuple[tuple[str, str], ...] = ()
    """Other extension name/value pairs after rport, in order (e.g. ``generation 0``)."""

    def __post_init__(self) -> None:
        # An MS-ICE2 token already says the direction; fill tcptype so both spellings compare.
        derived = _MS_ICE2_TCP.get(self.transport.upper())
        if derived is not None:
            if self.tcptype is None:
                object.__setattr__(self, "tcptype", derived)
            elif self.tcptype != derived:
                raise SdpError(
                    f"candidate: tcptype {self.tcptype!r} contradicts transport {self.transport!r}"
                )

    @property
    def protocol(self) -> str:
        """``udp`` or ``tcp``, whichever spelling the transport used."""
        return "udp" if self.transport.upper() == "UDP" else "tcp"

    @classmethod
    def parse(cls, value: str) -> Candidate:
        """Parse the text after ``a=candidate:``."""
        fields = _fields(value, "candidate")
        if len(fields) < 8:
            raise SdpError(
                "candidate: expected '<foundation> <component> <transport> <priority> <address>"
                f" <port> typ <type> ...', got {len(fields)} fields"
            )
        foundation, component, transport, priority, address, port, typ, kind = fields[:8]
        _match(_FOUNDATION_RE, foundation, "candidate: foundation", "foundation")
        # RFC 5245 §15.1: component-id 1..256, priority 1..2^31-1 (§4.1.2.1).
        component_id = _uint(component, "candidate: component", 1, 256)
        if transport.upper() not in _TRANSPORTS:
            raise SdpError(
                f"candidate: transport {_show(transport)} is not UDP, TCP, TCP-PASS, TCP-ACT"
                " or TCP-SO"
            )
        priority_value = _uint(priority, "candidate: priority", 1, 2**31 - 1)
        _match(_NON_WS_RE, address, "candidate: address", "address")
        port_value = _uint(port, "candidate: port", 0, 65535)
        if typ != "typ":
            raise SdpError(f"candidate: expected 'typ' before the type, got {_show(typ)}")
        if kind not in _CANDIDATE_TYPES:
            raise SdpError(
                f"candidate: type {_show(kind)} is not one of {', '.join(_CANDIDATE_TYPES)}"
            )
        rest = fields[8:]
        related_address = related_port = None
        if rest[:1] == ["raddr"]:
            if len(rest) < 2:
                raise SdpError("candidate: raddr has no value")
            related_address = _match(_NON_WS_RE, rest[1], "candidate: raddr", "address")
            rest = rest[2:]
        if rest[:1] == ["rport"]:
            if len(rest) < 2:
                raise SdpError("candidate: rport has no value")
            related_port = _uint(rest[1], "candidate: rport", 0, 65535)
            rest = rest[2:]
        if len(rest) % 2:
            raise SdpError(f"candidate: extension {_show(rest[-1])} has no value")
        tcptype = None
        extensions = []
        for name, ext_value in zip(rest[::2], rest[1::2], strict=True):
            if name == "tcptype":
                # RFC 6544 §4.5: tcptype goes with transport TCP; an MS-ICE2 token already
                # carries the direction, so a second one would be ambiguous.
                if transport.upper() != "TCP":
                    raise SdpError(
                        f"candidate: tcptype with transport {_show(transport)} (only TCP takes it)"
                    )
                if tcptype is not None:
                    raise SdpError("candidate: duplicate tcptype")
                if ext_value not in _TCP_TYPES:
                    raise SdpError(
                        f"candidate: tcptype {_show(ext_value)} is not active, passive or so"
                    )
                tcptype = ext_value
            elif name in ("raddr", "rport"):
                raise SdpError(f"candidate: {name} out of place (raddr, then rport, follow typ)")
            else:
                extensions.append((name, ext_value))
        return cls(
            foundation=foundation,
            component=component_id,
            transport=transport,
            priority=priority_value,
            address=address,
            port=port_value,
            type=kind,
            related_address=related_address,
            related_port=related_port,
            tcptype=tcptype,
            extensions=tuple(extensions),
        )

    def __str__(self) -> str:
        parts = [
            self.foundation,
            str(self.component),
            self.transport,
            str(self.priority),
            self.address,
            str(self.port),
            "typ",
            self.type,
        ]
        if self.related_address is not None:
            parts += ["raddr", self.related_address]
        if self.related_port is not None:
            parts += ["rport", str(self.related_port)]
        if self.tcptype is not None and self.transport.upper() == "TCP":
            parts += ["tcptype", self.tcptype]
        for name, value in self.extensions:
            parts += [name, value]
        return " ".join(parts)


class RemoteCandidate(NamedTuple):
    """One ``<component> <address> <port>`` triple of ``a=remote-candidates``."""

    component: int
    address: str
    port: int


@dataclass(frozen=True)
class RemoteCandidates:
    """``a=remote-candidates:<comp> <ip> <port> ...`` (RFC 5245 §15.2; MS-ICE2 uses the same form).

    Sent by the controlling agent in the offer after ICE completes (RFC 5245 §9.1.2.2): the
    selected remote candidate for each component.
    """

    candidates: tuple[RemoteCandidate, ...]

    @classmethod
    def parse(cls, value: str) -> RemoteCandidates:
        """Parse the text after ``a=remote-candidates:``."""
        fields = _fields(value, "remote-candidates")
        if len(fields) % 3:
            raise SdpError(
                "remote-candidates: expected '<component> <address> <port>' triples,"
                f" got {len(fields)} fields"
            )
        triples = []
        for i in range(0, len(fields), 3):
            component, address, port = fields[i : i + 3]
            triples.append(
                RemoteCandidate(
                    _uint(component, "remote-candidates: component", 1, 256),
                    _match(_NON_WS_RE, address, "remote-candidates: address", "address"),
                    _uint(port, "remote-candidates: port", 0, 65535),
                )
            )
        return cls(tuple(triples))

    def __str__(self) -> str:
        return " ".join(f"{c.component} {c.address} {c.port}" for c in self.candidates)


class Mki(NamedTuple):
    """The master key identifier of an inline SRTP key: ``<value>:<length in bytes>``."""

    value: int
    length: int


# RFC 4568 §6.2 and RFC 6188 §2: master key + salt length of the inline key, per suite.
_KEY_SALT_LENGTHS = {
    "AES_CM_128_HMAC_SHA1_80": 30,
    "AES_CM_128_HMAC_SHA1_32": 30,
    "F8_128_HMAC_SHA1_80": 30,
    "AES_192_CM_HMAC_SHA1_80": 38,
    "AES_192_CM_HMAC_SHA1_32": 38,
    "AES_256_CM_HMAC_SHA1_80": 46,
    "AES_256_CM_HMAC_SHA1_32": 46,
}


def _parse_inline(info: str) -> tuple[bytes, int | None, Mki | None]:
    """RFC 4568 §9.2 ``key-salt ["|" lifetime] ["|" mki]`` → key+salt, lifetime, MKI."""
    parts = info.split("|")
    if len(parts) > 3:
        raise SdpError(f"crypto: too many '|' fields in {_show(info)}")
    key_text = parts[0]
    if not key_text or not _BASE64_RE.fullmatch(key_text):
        raise SdpError(f"crypto: key-salt {_show(key_text)} is not base64")
    try:
        key_salt = base64.b64decode(key_text, validate=True)
    except (binascii.Error, ValueError):  # pragma: no cover - the regex already admits only base64
        raise SdpError(f"crypto: key-salt {_show(key_text)} is not base64") from None
    rest = parts[1:]
    lifetime = None
    # The lifetime may be left out while an MKI is given; the MKI is the one with a colon.
    if rest and ":" not in rest[0]:
        text = rest.pop(0)
        if text.startswith("2^"):
            # RFC 4568 §6.1: "2^n"; SRTP lifetimes never exceed 2^48, so cap the exponent.
            lifetime = 2 ** _uint(text[2:], "crypto: lifetime exponent", 0, 64)
        else:
            lifetime = _uint(text, "crypto: lifetime")
    mki = None
    if rest:
        text = rest.pop(0)
        value, colon, length = text.partition(":")
        if not colon:
            raise SdpError(f"crypto: MKI {_show(text)} is not '<value>:<length>'")
        mki_length = _uint(length, "crypto: MKI length", 1, 128)
        mki_value = _uint(value, "crypto: MKI value")
        if mki_value >= 256**mki_length:
            raise SdpError(f"crypto: MKI value {mki_value} does not fit in {mki_length} bytes")
        mki = Mki(mki_value, mki_length)
    if rest:
        raise SdpError(f"crypto: unexpected {_show(rest[0])} after the MKI")
    return key_salt, lifetime, mki


@dataclass(frozen=True)
class CryptoKey:
    """One key-param of ``a=crypto``: ``<method>:<info>``, e.g. ``inline:<base64>|2^31|1:1``.

    The info text is kept as written (the base64 and ``2^31`` spellings survive a round trip);
    the properties decode it for the ``inline`` method.
    """

    method: str
    info: str

    @classmethod
    def parse(cls, value: str) -> CryptoKey:
        """Parse one ``<method>:<info>`` key parameter."""
        _check_text(value, "crypto")
        method, colon, info = value.partition(":")
        if not colon:
            raise SdpError(f"crypto: key parameter {_show(value)} is not '<method>:<info>'")
        _match(_SUITE_RE, method, "crypto: key method", "key method")
        _match(_VCHARS_RE, info, "crypto: key info", "key info")
        key = cls(method, info)
        if key.is_inline:
            _parse_inline(info)
        return key

    @classmethod
    def inline(
        cls, key_salt: bytes, *, lifetime: str | None = "2^31", mki: tuple[int, int] | None = None
    ) -> CryptoKey:
        """An ``inline:`` key; ``lifetime`` as it should be written (``2^31`` or digits)."""
        info = base64.b64encode(key_salt).decode("ascii")
        if lifetime is not None:
            info += f"|{lifetime}"
        if mki is not None:
            info += f"|{mki[0]}:{mki[1]}"
        return cls("inline", info)

    @property
    def is_inline(self) -> bool:
        return self.method.lower() == "inline"

    @property
    def key_salt(self) -> bytes | None:
        """The master key and salt, concatenated (None for other methods than inline)."""
        return _parse_inline(self.info)[0] if self.is_inline else None

    @property
    def lifetime(self) -> int | None:
        """The key lifetime in packets (``2^31`` → 2147483648), when given."""
        return _parse_inline(self.info)[1] if self.is_inline else None

    @property
    def mki(self) -> Mki | None:
        """The master key identifier, when given (Lync sends ``|1:1``)."""
        return _parse_inline(self.info)[2] if self.is_inline else None

    def __str__(self) -> str:
        return f"{self.method}:{self.info}"


@dataclass(frozen=True)
class Crypto:
    """``a=crypto:<tag> <suite> <key-params> [<session-params>]`` (RFC 4568 §9.1, SDES-SRTP)."""

    tag: int
    suite: str
    """e.g. ``AES_CM_128_HMAC_SHA1_80``, the suite SIPE and Lync offer."""
    keys: tuple[CryptoKey, ...]
    session_params: tuple[str, ...] = ()

    @classmethod
    def parse(cls, value: str) -> Crypto:
        """Parse the text after ``a=crypto:``."""
        fields = _fields(value, "crypto")
        if len(fields) < 3:
            raise SdpError(
                f"crypto: expected '<tag> <suite> <key-params> ...', got {len(fields)} fields"
            )
        tag, suite, key_params, *session_params = fields
        # RFC 4568 §9.1: tag = 1*9DIGIT.
        tag_value = _uint(tag, "crypto: tag", 0, 999_999_999)
        _match(_SUITE_RE, suite, "crypto: suite", "crypto suite")
        keys = tuple(CryptoKey.parse(k) for k in key_params.split(";"))
        expected = _KEY_SALT_LENGTHS.get(suite)
        for key in keys:
            key_salt = key.key_salt
            if expected is not None and key_salt is not None and len(key_salt) != expected:
                raise SdpError(
                    f"crypto: {suite} needs a {expected}-byte key+salt, got {len(key_salt)}"
                )
        for param in session_params:
            _match(_VCHARS_RE, param, "crypto: session parameter", "session parameter")
        return cls(tag_value, suite, keys, tuple(session_params))

    @classmethod
    def inline(
        cls,
        tag: int,
        suite: str,
        key_salt: bytes,
        *,
        lifetime: str | None = "2^31",
        mki: tuple[int, int] | None = None,
    ) -> Crypto:
        """A one-key crypto line: ``Crypto.inline(1, "AES_CM_128_HMAC_SHA1_80", k, mki=(1, 1))``."""
        return cls(tag, suite, (CryptoKey.inline(key_salt, lifetime=lifetime, mki=mki),))

    @property
    def key_salt(self) -> bytes | None:
        """The first key's master key + salt."""
        return self.keys[0].key_salt

    @property
    def lifetime(self) -> int | None:
        """The first key's lifetime."""
        return self.keys[0].lifetime

    @property
    def mki(self) -> Mki | None:
        """The first key's MKI."""
        return self.keys[0].mki

    def __str__(self) -> str:
        keys = ";".join(str(k) for k in self.keys)
        return " ".join([str(self.tag), self.suite, keys, *self.session_params])


@dataclass(frozen=True)
class RtpMap:
    """``a=rtpmap:<pt> <encoding>/<clock rate>[/<channels>]`` (RFC 4566 §6).

    Application sharing maps ``127 x-data/90000`` (MS-SDPEXT bandwidth table; PT 127 by
    convention).
    """

    payload_type: int
    encoding: str
    clock_rate: int
    channels: int | None = None

    @classmethod
    def parse(cls, value: str) -> RtpMap:
        """Parse the text after ``a=rtpmap:``."""
        fields = _fields(value, "rtpmap")
        if len(fields) != 2:
            raise SdpError(f"rtpmap: expected '<pt> <encoding>/<rate>', got {len(fields)} fields")
        payload_type = _uint(fields[0], "rtpmap: payload type", 0, 127)
        parts = fields[1].split("/")
        if len(parts) not in (2, 3):
            raise SdpError(f"rtpmap: {_show(fields[1])} is not '<encoding>/<rate>[/<channels>]'")
        encoding = _match(_TOKEN_RE, parts[0], "rtpmap: encoding", "encoding name")
        clock_rate = _uint(parts[1], "rtpmap: clock rate", 1, 2**32 - 1)
        channels = _uint(parts[2], "rtpmap: channels", 1, 255) if len(parts) == 3 else None
        return cls(payload_type, encoding, clock_rate, channels)

    def __str__(self) -> str:
        text = f"{self.payload_type} {self.encoding}/{self.clock_rate}"
        return text if self.channels is None else f"{text}/{self.channels}"


@dataclass(frozen=True)
class Rtcp:
    """``a=rtcp:<port> [IN IP4 <address>]`` (RFC 3605)."""

    port: int
    connection: Connection | None = None

    @classmethod
    def parse(cls, value: str) -> Rtcp:
        """Parse the text after ``a=rtcp:``."""
        fields = _fields(value, "rtcp")
        if len(fields) not in (1, 4):
            raise SdpError(f"rtcp: expected '<port> [IN IP4 <address>]', got {len(fields)} fields")
        port = _uint(fields[0], "rtcp: port", 0, 65535)
        connection = None
        if len(fields) == 4:
            try:
                connection = Connection.parse(" ".join(fields[1:]))
            except SdpError as exc:
                raise SdpError(f"rtcp: {exc.reason}") from None
        return cls(port, connection)

    def __str__(self) -> str:
        return str(self.port) if self.connection is None else f"{self.port} {self.connection}"


@dataclass(frozen=True)
class ApplicationSharing:
    """The ``a=x-applicationsharing-*`` attributes of a screen-share section (MS-SDPEXT).

    SIPE always sends session-id, role and media-type; contentflow is optional, and MS-SDPEXT
    3.1.5.18.5 says which answers each offered value allows.
    """

    session_id: str | None = None
    role: str | None = None
    """``sharer`` or ``viewer``."""
    media_type: str | None = None
    """``rdp``."""
    contentflow: str | None = None
    """``sendonly``, ``recvonly``, ``inactive`` (MS-SDPEXT 3.1.5.18.5) or ``sendrecv``."""


def _enum(name: str, allowed: Sequence[str]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in allowed:
            raise SdpError(f"{name}: {_show(value)} is not one of {', '.join(allowed)}")
        return value

    return check


def _token(name: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        return _match(_TOKEN_RE, value, f"{name}:", "token")

    return check


def _ice_chars(name: str, low: int, high: int) -> Callable[[str], str]:
    # RFC 5245 §15.4: ice-ufrag = 4*256ice-char, ice-pwd = 22*256ice-char.
    def check(value: str) -> str:
        _match(_ICE_CHARS_RE, value, f"{name}:", "ice-char string")
        if not low <= len(value) <= high:
            raise SdpError(f"{name}: length {len(value)} is out of range {low}..{high}")
        return value

    return check


_SESSION_ID = "x-applicationsharing-session-id"
_ROLE = "x-applicationsharing-role"
_MEDIA_TYPE = "x-applicationsharing-media-type"
_CONTENTFLOW = "x-applicationsharing-contentflow"

# Known attributes: name → value parser. Each is checked on input and on every builder call.
_ATTRIBUTES: dict[str, Callable[[str], object]] = {
    "candidate": Candidate.parse,
    "remote-candidates": RemoteCandidates.parse,
    "crypto": Crypto.parse,
    "rtpmap": RtpMap.parse,
    "rtcp": Rtcp.parse,
    "ice-ufrag": _ice_chars("ice-ufrag", 4, 256),
    "ice-pwd": _ice_chars("ice-pwd", 22, 256),
    # RFC 4145 §4 and §5 (TCP-based media transport).
    "setup": _enum("setup", ("active", "passive", "actpass", "holdconn")),
    # MS-SDPEXT 3.1.5.10.2: "new" only for applicationsharing over TCP, else "existing".
    "connection": _enum("connection", ("new", "existing")),
    "mid": _token("mid"),  # RFC 5888: identification-tag = token
    _SESSION_ID: _token(_SESSION_ID),
    _ROLE: _enum(_ROLE, ("sharer", "viewer")),
    _MEDIA_TYPE: _token(_MEDIA_TYPE),
    _CONTENTFLOW: _enum(_CONTENTFLOW, ("sendonly", "recvonly", "inactive", "sendrecv")),
}
# Attributes that may appear at most once per section (the others are lists).
_SINGLE_ATTRIBUTES = frozenset(_ATTRIBUTES) - {"candidate", "crypto", "rtpmap"}


def _split_attribute(value: str) -> tuple[str, str | None]:
    """``name:value`` → (name, value); a property attribute (``a=name``) has value None."""
    name, colon, rest = value.partition(":")
    # RFC 4566 §5.13: att-field = token.
    _match(_TOKEN_RE, name, "attribute name", "token")
    return name, rest if colon else None


def _check_timing(value: str) -> None:
    # RFC 4566 §5.9: t=<start-time> <stop-time>, NTP seconds; "0 0" for a permanent session.
    fields = _fields(value, "timing")
    if len(fields) != 2:
        raise SdpError(f"timing: expected '<start> <stop>', got {len(fields)} fields")
    for field in fields:
        _uint(field, "timing: time")


def _check_bandwidth(value: str) -> None:
    # RFC 4566 §5.8: b=<bwtype>:<bandwidth>, e.g. SIPE's b=CT:99980.
    bwtype, colon, amount = value.partition(":")
    if not colon:
        raise SdpError(f"bandwidth: {_show(value)} is not '<bwtype>:<bandwidth>'")
    _match(_TOKEN_RE, bwtype, "bandwidth: type", "token")
    _uint(amount, "bandwidth: value")


# --------------------------------------------------------------------------------------------
# Lines and sections
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One SDP line: ``<type>=<value><eol>``."""

    type: str
    """The type letter: ``v``, ``o``, ``a`` …"""
    value: str
    """Everything after ``=``, as written."""
    eol: str = CRLF
    """The terminator as received: ``\\r\\n``, ``\\n``, or ``""`` for a last line without one."""

    def __str__(self) -> str:
        return f"{self.type}={self.value}"


class _Checker:
    """Validates one section line by line, so a parse reports the first fault in document order."""

    def __init__(self, session: bool) -> None:
        self.session = session
        self.index = 0
        self.counts: dict[str, int] = {}
        self.single_attributes: set[str] = set()

    def feed(self, line: Line, number: int | None) -> None:
        try:
            self._check(line)
        except SdpError as exc:
            raise SdpError(exc.reason, line=number) from None
        self.index += 1

    def finish(self, number: int | None) -> None:
        if self.index == 0:
            what = "session description" if self.session else "media section"
            raise SdpError(f"empty {what}", line=number)
        if not self.session:
            return
        for kind in "ost":
            if not self.counts.get(kind):
                raise SdpError(
                    f"missing {kind}= line (RFC 4566 §5: v=, o=, s= and t= are required)",
                    line=number,
                )

    def _check(self, line: Line) -> None:
        kind, value = line.type, line.value
        if len(kind) != 1 or not kind.isascii() or not kind.isalpha():
            raise SdpError(f"line type {_show(kind)} is not a letter (RFC 4566 §5: <type>=<value>)")
        # The checks that depend on the line alone (its text and the value's grammar) passed
        # before when the line is remembered; the section's own checks still run, in order.
        key = kind + value
        known = _CHECKED.get(key, _UNSEEN)
        if known is _UNSEEN:
            _check_text(value, f"{kind}= line")
        if line.eol not in _EOLS:
            raise SdpError(f"line terminator {line.eol!r} is not CRLF or LF")
        first = self.index == 0
        count = self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.session:
            if first and kind != "v":
                raise SdpError(f"first line must be v=0, got {_show(str(line))}")
        else:
            if first and kind != "m":
                raise SdpError(f"a media section must start with m=, got {_show(str(line))}")
            if kind in _SESSION_ONLY:
                raise SdpError(f"{kind}= is not allowed in a media section (RFC 4566 §5)")
        if kind == "v":
            if not first:
                raise SdpError("v= is only allowed as the first line")
            if value != "0":
                raise SdpError(f"unsupported SDP version {_show(value)} (expected v=0)")
        elif kind == "m":
            if not first:
                raise SdpError("m= may only open a media section")
            if known is _UNSEEN:
                Media.parse(value)
                _remember(key, None)
        elif kind == "o":
            if count > 1:
                raise SdpError("duplicate o= line")
            if known is _UNSEEN:
                Origin.parse(value)
                _remember(key, None)
        elif kind == "s":
            if count > 1:
                raise SdpError("duplicate s= line")
            if not value:
                raise SdpError("empty s= line (RFC 4566 §5.3: use 's=-' or 's= ')")
        elif kind == "c":
            # RFC 4566 §5.7: one c= at session level; a media section may list several.
            if self.session and count > 1:
                raise SdpError("duplicate c= line at session level")
            if known is _UNSEEN:
                Connection.parse(value)
                _remember(key, None)
        elif kind == "t":
            if known is _UNSEEN:
                _check_timing(value)
                _remember(key, None)
        elif kind == "b":
            if known is _UNSEEN:
                _check_bandwidth(value)
                _remember(key, None)
        elif kind == "a":
            if known is _UNSEEN:
                known = self._attribute_name(value)
                _remember(key, known)
            if known in _SINGLE_ATTRIBUTES:
                if known in self.single_attributes:
                    level = "session" if self.session else "media"
                    raise SdpError(f"duplicate a={known} in one {level} section")
                self.single_attributes.add(known)

    @staticmethod
    def _attribute_name(text: str) -> str | None:
        """The name of an attribute whose value checks (None when labsim does not read that
        attribute); raises for a bad one."""
        name, value = _split_attribute(text)
        parse = _ATTRIBUTES.get(name)
        if parse is None:
            return None
        if value is None:
            raise SdpError(f"{name}: missing value (expected a={name}:<value>)")
        parse(value)
        return name


#: Lines whose own checks passed (the line's type letter and value, concatenated) -> for an
#: ``a=`` line the name of an attribute labsim reads (None otherwise). The same candidates,
#: crypto and rtpmap lines come back in every offer and answer of a call, and their grammar
#: costs a few regular expressions each. Bounded like the codec caches (labsim.wire.cache):
#: lines up to _CHECKED_KEY characters, _CHECKED_SIZE of them, emptied when full.
_CHECKED: dict[str, str | None] = {}
_CHECKED_SIZE = 4096
_CHECKED_KEY = 1024
_UNSEEN = "\x00unseen"  # never a key's value: a NUL fails _check_text


def _remember(key: str, value: str | None) -> None:
    if len(key) <= _CHECKED_KEY:
        if len(_CHECKED) >= _CHECKED_SIZE:
            _CHECKED.clear()
        _CHECKED[key] = value


def _check_lines(lines: Sequence[Line], session: bool) -> None:
    """Check a whole section built in code (errors carry no line number)."""
    checker = _Checker(session)
    for line in lines:
        checker.feed(line, None)
    checker.finish(None)


def _attribute_text(name: str, value: object) -> str:
    return name if value is None else f"{name}:{value}"


_T = TypeVar("_T")


class _Attribute(Generic[_T]):
    """A read-only property: a section's first ``a=<name>`` value, parsed, or None when absent
    (one line per attribute the sections expose instead of a getter each)."""

    def __init__(self, name: str, parse: Callable[[str], _T]) -> None:
        self.name, self.parse = name, parse

    @overload
    def __get__(self, section: None, owner: type[_Section]) -> Self: ...
    @overload
    def __get__(self, section: _Section, owner: type[_Section]) -> _T | None: ...
    def __get__(self, section: _Section | None, owner: type[_Section]) -> _T | None | Self:
        if section is None:
            return self
        value = section.attribute(self.name)
        return None if value is None else self.parse(value)


class _EveryAttribute(Generic[_T]):
    """A read-only property: every ``a=<name>`` value of a section, parsed, in order."""

    def __init__(self, name: str, parse: Callable[[str], _T]) -> None:
        self.name, self.parse = name, parse

    @overload
    def __get__(self, section: None, owner: type[_Section]) -> Self: ...
    @overload
    def __get__(self, section: _Section, owner: type[_Section]) -> list[_T]: ...
    def __get__(self, section: _Section | None, owner: type[_Section]) -> list[_T] | Self:
        if section is None:
            return self
        return [self.parse(value) for value in section.attributes(self.name)]


class _Section:
    """Shared by the session part and the media sections: ordered lines plus accessors."""

    _SESSION: ClassVar[bool]
    _ORDER: ClassVar[str]

    lines: list[Line]
    """The section's lines in order; mutate through the builders to keep them valid."""
    eol: str
    """The terminator given to lines the builders add."""

    def __init__(self, lines: Iterable[Line], *, eol: str = CRLF) -> None:
        """Take ready-made lines and check them (use ``parse`` or ``build`` normally)."""
        checked = list(lines)
        _check_lines(checked, self._SESSION)
        if eol not in ("\r\n", "\n"):
            raise SdpError(f"line terminator {eol!r} is not CRLF or LF")
        self.lines = checked
        self.eol = eol

    @classmethod
    def _trusted(cls, lines: list[Line], eol: str) -> Self:
        """A section from lines the parser has already checked with their line numbers."""
        section = cls.__new__(cls)
        section.lines = lines
        section.eol = eol
        return section

    # -- generic accessors -------------------------------------------------------------------

    def values(self, type: str) -> list[str]:
        """Raw values of every line of one type, e.g. ``values("b")`` → ``["CT:99980"]``."""
        return [line.value for line in self.lines if line.type == type]

    def attributes(self, name: str) -> list[str]:
        """Raw values of every ``a=<name>`` line in order; ``""`` for ``a=<name>`` alone."""
        found = []
        for line in self.lines:
            if line.type == "a":
                key, _, value = line.value.partition(":")
                if key == name:
                    found.append(value)
        return found

    def attribute(self, name: str) -> str | None:
        """The first ``a=<name>`` value, or None when absent (names are case-sensitive)."""
        values = self.attributes(name)
        return values[0] if values else None

    @property
    def connection(self) -> Connection | None:
        """The (first) ``c=`` line of this section."""
        values = self.values("c")
        return Connection.parse(values[0]) if values else None

    # -- builders -----------------------------------------------------------------------------

    def _replace_lines(self, lines: list[Line]) -> Self:
        _check_lines(lines, self._SESSION)
        self.lines = lines
        return self

    def _position(self, type: str) -> int:
        """Where RFC 4566 §5's order puts a new line of this type (unknown types go last)."""
        if type not in self._ORDER:
            return len(self.lines)
        rank = self._ORDER.index(type)
        position = 0
        for i, line in enumerate(self.lines):
            if line.type in self._ORDER and self._ORDER.index(line.type) <= rank:
                position = i + 1
        return position

    def add_line(self, type: str, value: object) -> Self:
        """Insert ``<type>=<value>`` where RFC 4566 §5's line order puts it."""
        position = self._position(type)
        new = Line(type, str(value), self.eol)
        return self._replace_lines([*self.lines[:position], new, *self.lines[position:]])

    def set_line(self, type: str, value: object) -> Self:
        """Replace the first line of this type in place (dropping later ones), or add it."""
        for i, line in enumerate(self.lines):
            if line.type == type:
                rest = [other for other in self.lines[i + 1 :] if other.type != type]
                new = Line(type, str(value), line.eol)
                return self._replace_lines([*self.lines[:i], new, *rest])
        return self.add_line(type, value)

    def add_attribute(self, name: str, value: object = None) -> Self:
        """Append ``a=<name>:<value>`` (``a=<name>`` when value is None).

        ``value`` is anything whose ``str()`` is the attribute value: a string, a number, or a
        typed view such as :class:`Candidate` or :class:`Crypto`. Known attributes are checked.
        """
        return self.add_line("a", _attribute_text(name, value))

    def set_attribute(self, name: str, value: object = None) -> Self:
        """Replace the first ``a=<name>`` in place and drop any others, or append one."""
        text = _attribute_text(name, value)
        lines: list[Line] = []
        replaced = False
        for line in self.lines:
            if line.type == "a" and line.value.partition(":")[0] == name:
                if not replaced:
                    lines.append(Line("a", text, line.eol))
                    replaced = True
                continue
            lines.append(line)
        if not replaced:
            return self.add_attribute(name, value)
        return self._replace_lines(lines)

    def remove_attribute(self, name: str) -> Self:
        """Drop every ``a=<name>`` line (nothing happens when there is none)."""
        return self._replace_lines(
            [
                line
                for line in self.lines
                if not (line.type == "a" and line.value.partition(":")[0] == name)
            ]
        )

    def set_connection(self, connection: Connection) -> Self:
        """Replace (or add) the section's ``c=`` line."""
        return self.set_line("c", connection)

    def _text(self, last: bool) -> str:
        parts = []
        for i, line in enumerate(self.lines):
            eol = line.eol
            # Only the very last line of a body may lack its terminator.
            if not eol and not (last and i == len(self.lines) - 1):
                eol = self.eol
            parts.append(f"{line.type}={line.value}{eol}")
        return "".join(parts)


class MediaDescription(_Section):
    """One media section: the ``m=`` line and the lines up to the next ``m=`` (RFC 4566 §5.14)."""

    _SESSION = False
    _ORDER = _MEDIA_ORDER

    @classmethod
    def build(
        cls,
        media: Media,
        *,
        connection: Connection | None = None,
        attributes: Iterable[tuple[str, object]] = (),
        eol: str = CRLF,
    ) -> Self:
        """A new section: ``m=``, an optional ``c=``, then ``a=`` lines in the order given.

        ``attributes`` pairs are ``(name, value)``; a None value makes ``a=<name>`` alone.
        """
        section = cls([Line("m", str(media), eol)], eol=eol)
        if connection is not None:
            section.set_connection(connection)
        for name, value in attributes:
            section.add_attribute(name, value)
        return section

    @property
    def media(self) -> Media:
        """The ``m=`` line."""
        return Media.parse(self.lines[0].value)

    def set_media(self, media: Media) -> Self:
        """Replace the ``m=`` line (e.g. with the selected candidate's port in a reINVITE)."""
        return self.set_line("m", media)

    #: Every ``a=candidate`` in order.
    candidates = _EveryAttribute("candidate", Candidate.parse)
    #: ``a=remote-candidates``, present in the offer after ICE completes (RFC 5245 §9.1.2.2).
    remote_candidates = _Attribute("remote-candidates", RemoteCandidates.parse)
    #: Every ``a=crypto`` in order (RFC 4568: one per offered suite/key).
    crypto = _EveryAttribute("crypto", Crypto.parse)
    #: Every ``a=rtpmap`` in order.
    rtpmaps = _EveryAttribute("rtpmap", RtpMap.parse)
    rtcp = _Attribute("rtcp", Rtcp.parse)
    #: Media-level ``a=ice-ufrag`` and ``a=ice-pwd`` (MS-ICE2 puts the credentials on each
    #: media line).
    ice_ufrag = _Attribute("ice-ufrag", str)
    ice_pwd = _Attribute("ice-pwd", str)
    #: ``a=setup`` (RFC 4145 §4): active, passive, actpass or holdconn.
    setup = _Attribute("setup", str)
    #: ``a=connection`` (RFC 4145 §5): new or existing.
    connection_mode = _Attribute("connection", str)
    mid = _Attribute("mid", str)

    @property
    def applicationsharing(self) -> ApplicationSharing | None:
        """The x-applicationsharing-* attributes, or None when the section has none of them."""
        info = ApplicationSharing(
            session_id=self.attribute(_SESSION_ID),
            role=self.attribute(_ROLE),
            media_type=self.attribute(_MEDIA_TYPE),
            contentflow=self.attribute(_CONTENTFLOW),
        )
        return None if info == ApplicationSharing() else info

    def __str__(self) -> str:
        return self._text(last=True)


def _decode(data: bytes | str) -> str:
    if isinstance(data, str):
        try:
            data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise SdpError(
                f"character {data[exc.start]!r} cannot be encoded in UTF-8",
                line=data.count("\n", 0, exc.start) + 1,
            ) from None
        return data
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SdpError(
                "invalid UTF-8 (RFC 4566 §5: the default charset is UTF-8)",
                line=raw.count(b"\n", 0, exc.start) + 1,
                offset=exc.start,
            ) from None
    raise TypeError(f"SDP must be bytes or str, not {type(data).__name__}")


def _split_lines(text: str) -> tuple[list[tuple[str, str]], str]:
    """Split into (content, terminator) pairs and the trailing run of empty lines."""
    chunks = text.split("\n")
    raw: list[tuple[str, str]] = []
    for i, chunk in enumerate(chunks):
        if i == len(chunks) - 1:
            if chunk:  # a last line without terminator
                raw.append((chunk, ""))
        elif chunk.endswith("\r"):
            raw.append((chunk[:-1], "\r\n"))
        else:
            raw.append((chunk, "\n"))
    end = len(raw)
    while end and raw[end - 1][0] == "":
        end -= 1
    # Empty lines at the very end (e.g. an extra CRLF after the body in a SIP message) are kept
    # verbatim; an empty line anywhere else is an error.
    return raw[:end], "".join(eol for _, eol in raw[end:])


def _make_line(content: str, eol: str) -> Line:
    if eol == CRLF:
        # Lines are immutable: the same text gives the same Line, in every body of the call.
        line = _LINES.get(content)
        if line is None:
            line = _new_line(content, eol)
            if len(content) <= _CHECKED_KEY:
                if len(_LINES) >= _CHECKED_SIZE:
                    _LINES.clear()
                _LINES[content] = line
        return line
    return _new_line(content, eol)


#: Lines ended by CRLF, by their text (bounded as _CHECKED is).
_LINES: dict[str, Line] = {}


def _new_line(content: str, eol: str) -> Line:
    if not content:
        raise SdpError("empty line (only trailing empty lines are allowed)")
    _check_text(content, "line")
    if len(content) < 2 or content[1] != "=":
        raise SdpError(f"expected '<type>=<value>', got {_show(content)}")
    return Line(content[0], content[2:], eol)


class SessionDescription(_Section):
    """A whole SDP body: session-level lines, media sections, trailing empty lines."""

    _SESSION = True
    _ORDER = _SESSION_ORDER

    media: list[MediaDescription]
    """The media sections in order."""
    trailer: str
    """Terminators of empty lines after the last line (``""`` normally), kept for round trips."""

    def __init__(
        self,
        lines: Iterable[Line],
        media: Iterable[MediaDescription] = (),
        *,
        eol: str = CRLF,
        trailer: str = "",
    ) -> None:
        super().__init__(lines, eol=eol)
        if not re.fullmatch(r"(?:\r?\n)*", trailer):
            raise SdpError(f"trailer {trailer!r} is not a run of line terminators")
        self.media = list(media)
        self.trailer = trailer

    @classmethod
    def parse(cls, data: bytes | str) -> Self:
        """Parse a body; raises :class:`SdpError` with the line number of the first fault."""
        text = _decode(data)
        raw, trailer = _split_lines(text)
        if not raw:
            raise SdpError("empty SDP body (expected v=0)", line=1)
        session: list[Line] = []
        sections: list[list[Line]] = []
        checker = _Checker(session=True)
        for number, (content, line_eol) in enumerate(raw, start=1):
            try:
                line = _make_line(content, line_eol)
            except SdpError as exc:
                raise SdpError(exc.reason, line=number) from None
            if line.type == "m" and number > 1:
                checker.finish(number)
                checker = _Checker(session=False)
                sections.append([])
            checker.feed(line, number)
            (sections[-1] if sections else session).append(line)
        checker.finish(len(raw))
        # New lines follow the body's own convention (that of its v= line).
        eol = raw[0][1] or CRLF
        description = cls._trusted(session, eol)
        description.media = [MediaDescription._trusted(lines, eol) for lines in sections]
        description.trailer = trailer
        return description

    @classmethod
    def build(
        cls,
        origin: Origin,
        *,
        session_name: str = "-",
        connection: Connection | None = None,
        bandwidth: str | None = None,
        timing: str = "0 0",
        attributes: Iterable[tuple[str, object]] = (),
        media: Iterable[MediaDescription] = (),
        eol: str = CRLF,
    ) -> Self:
        """``v=0``, ``o=``, ``s=``, [``c=``], [``b=``], ``t=``, session ``a=`` lines, then media.

        SIPE writes ``s=session``, ``b=CT:99980`` and ``t=0 0``; CMS writes ``s=-``.
        """
        lines = [Line("v", "0", eol), Line("o", str(origin), eol), Line("s", session_name, eol)]
        if connection is not None:
            lines.append(Line("c", str(connection), eol))
        if bandwidth is not None:
            lines.append(Line("b", bandwidth, eol))
        lines.append(Line("t", timing, eol))
        description = cls(lines, media, eol=eol)
        for name, value in attributes:
            description.add_attribute(name, value)
        return description

    @property
    def origin(self) -> Origin:
        """The ``o=`` line."""
        values = self.values("o")
        if not values:
            raise SdpError("missing o= line")
        return Origin.parse(values[0])

    def set_origin(self, origin: Origin) -> Self:
        """Replace ``o=``, e.g. with ``session_version + 1`` for a new offer (RFC 3264 §8)."""
        return self.set_line("o", origin)

    @property
    def session_name(self) -> str:
        """The ``s=`` text."""
        values = self.values("s")
        if not values:
            raise SdpError("missing s= line")
        return values[0]

    def add_media(self, media: MediaDescription) -> Self:
        """Append a media section."""
        self.media.append(media)
        return self

    def text(self) -> str:
        """The body as text; :meth:`encode` is its UTF-8 bytes."""
        parts = [self._text(last=not self.media and not self.trailer)]
        for i, section in enumerate(self.media):
            parts.append(section._text(last=i == len(self.media) - 1 and not self.trailer))
        parts.append(self.trailer)
        return "".join(parts)

    def encode(self) -> bytes:
        """The body's bytes: exactly the parsed input when nothing was changed."""
        return self.text().encode("utf-8")

    def __bytes__(self) -> bytes:
        return self.encode()

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:
        return f"SessionDescription.parse({self.text()!r})"
