"""STUN, TURN and RFC 6062 messages: encode, decode, authenticate, summarise.

Covers every message of the call (PROTOCOL.md §1-3): Binding, Allocate, Refresh, Send, Data,
CreatePermission, ChannelBind, Connect, ConnectionBind and ConnectionAttempt, in all four classes,
plus TURN ChannelData frames.

Design rules, each because a lab tool must show exactly what was on the wire:

* Attributes are kept **in wire order**; unknown ones are kept as raw bytes with their
  comprehension-required flag (RFC 5389 §15), never dropped.
* A decoded attribute remembers its value and padding bytes as received, so a decoded message
  re-encodes byte-identical even when the sender used non-zero padding (RFC 5769 pads with
  spaces) or NUL-padded reason phrases (coturn does). Building a changed copy with
  :func:`dataclasses.replace` drops that memory and encodes canonically.
* MESSAGE-INTEGRITY and FINGERPRINT are verified over the bytes actually received
  (RFC 5389 §15.4, §15.5), not over a re-encoding.
* :meth:`Message.summary` prints the line Wireshark shows in its Info column (PROTOCOL.md §7.2),
  so a ladder and a capture read the same.

Decoding never raises anything but :class:`~labsim.wire.errors.StunError`, whose message names
the byte offset of the fault.
"""

from __future__ import annotations

import binascii
import builtins
import functools
import hashlib
import hmac
import ipaddress
import secrets
import stringprep
import struct
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from enum import IntEnum
from typing import ClassVar, Self, TypeVar

from labsim.wire.cache import cached
from labsim.wire.errors import StunError

MAGIC_COOKIE = 0x2112A442
MAGIC_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)
HEADER_LENGTH = 20
TRANSACTION_ID_LENGTH = 12
#: RFC 5389 §15.5: the CRC-32 is XOR'ed with this so that FINGERPRINT differs from other CRCs.
FINGERPRINT_XOR = 0x5354554E
#: RFC 5766 §11: ChannelData channel numbers live in 0x4000-0x7FFF.
CHANNEL_MIN, CHANNEL_MAX = 0x4000, 0x7FFF


class Method(IntEnum):
    """STUN/TURN methods (RFC 5389 §18.1, RFC 5766 §13, RFC 6062 §6.1)."""

    BINDING = 0x001
    SHARED_SECRET = 0x002
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009
    CONNECT = 0x00A
    CONNECTION_BIND = 0x00B
    CONNECTION_ATTEMPT = 0x00C


class Class(IntEnum):
    """The two class bits C1 C0 of the message type (RFC 5389 §6)."""

    REQUEST = 0
    INDICATION = 1
    SUCCESS = 2
    ERROR = 3


# The names Wireshark prints (packet-stun.c `methods[]`, `classes[]`); note "Channel-Bind".
METHOD_NAMES: dict[int, str] = {
    0x001: "Binding",
    0x002: "SharedSecret",
    0x003: "Allocate",
    0x004: "Refresh",
    0x006: "Send",
    0x007: "Data",
    0x008: "CreatePermission",
    0x009: "Channel-Bind",
    0x00A: "Connect",
    0x00B: "ConnectionBind",
    0x00C: "ConnectionAttempt",
    0x080: "GooglePing",
}
CLASS_NAMES: dict[int, str] = {
    Class.REQUEST: "Request",
    Class.INDICATION: "Indication",
    Class.SUCCESS: "Success Response",
    Class.ERROR: "Error Response",
}

#: Error code names as Wireshark 4.x prints them in parentheses (packet-stun.c `error_code[]`).
ERROR_NAMES: dict[int, str] = {
    274: "Disable Candidate",
    275: "Disable Candidate Pair",
    300: "Try Alternate",
    400: "Bad Request",
    401: "Unauthenticated",
    403: "Forbidden",
    405: "Mobility Forbidden",
    420: "Unknown Attribute",
    430: "Stale Credentials (legacy)",
    431: "Integrity Check Failure (legacy)",
    432: "Missing Username (legacy)",
    433: "Use TLS (legacy)",
    434: "Missing Realm (legacy)",
    435: "Missing Nonce (legacy)",
    436: "Unknown User (legacy)",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    439: "Wrong Credentials (legacy)",
    440: "Address Family not Supported",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    443: "Peer Address Family Mismatch",
    446: "Connection Already Exists",
    447: "Connection Timeout or Failure",
    481: "Connection does not exist (legacy)",
    486: "Allocation Quota Reached",
    487: "Role Conflict",
    500: "Server Error",
    503: "Service Unavailable (legacy)",
    507: "Insufficient Bandwidth Capacity (legacy)",
    508: "Insufficient Port Capacity",
    600: "Global Failure",
}

#: The reason phrases servers send (RFC 5389 §15.6, RFC 5766 §15, RFC 6062 §6.3; 431 is the
#: RFC 3489 code Expressway-E still uses for an integrity failure, PROTOCOL.md §1.6).
DEFAULT_REASONS: dict[int, str] = {
    300: "Try Alternate",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    420: "Unknown Attribute",
    431: "Integrity Check Failure",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    440: "Address Family not Supported",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    443: "Peer Address Family Mismatch",
    446: "Connection Already Exists",
    447: "Connection Timeout or Failure",
    486: "Allocation Quota Reached",
    487: "Role Conflict",
    500: "Server Error",
    508: "Insufficient Capacity",
}

#: Transport protocol numbers of REQUESTED-TRANSPORT (RFC 5766 §14.7, RFC 6062 §6.1).
TRANSPORT_UDP = 17
TRANSPORT_TCP = 6
TRANSPORT_NAMES = {TRANSPORT_UDP: "UDP", TRANSPORT_TCP: "TCP"}


@functools.cache
def message_type(method: int, cls: int) -> int:
    """Interleave a 12-bit method and the 2 class bits into the 14-bit type (RFC 5389 §6).

    Cached (at most 4096 methods x 4 classes; a run sees a dozen): every encode needs it."""
    if not 0 <= method <= 0xFFF:
        raise StunError(f"method 0x{method:x} does not fit in 12 bits")
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((cls & 1) << 4)
        | ((cls & 2) << 7)
    )


@functools.cache
def split_type(msg_type: int) -> tuple[int, Class]:
    """The inverse of :func:`message_type`: (method, class), as Wireshark decodes it.

    Cached (14-bit input; a run sees a dozen): every decode needs it."""
    cls = ((msg_type & 0x0010) >> 4) | ((msg_type & 0x0100) >> 7)
    method = (msg_type & 0x000F) | ((msg_type & 0x00E0) >> 1) | ((msg_type & 0x3E00) >> 2)
    return method, _CLASSES[cls]


_CLASSES = tuple(Class)


def random_transaction_id() -> bytes:
    """96 random bits (RFC 5389 §6: cryptographically random)."""
    return secrets.token_bytes(TRANSACTION_ID_LENGTH)


class _BadValue(Exception):
    """Raised by attribute value decoders; the message decoder adds the byte offset."""


def _pad_length(n: int) -> int:
    return (4 - n % 4) % 4


def _int32(value: int) -> int:
    """Wireshark prints LIFETIME and BANDWIDTH with %d: as signed 32-bit numbers."""
    signed: int = struct.unpack("!i", struct.pack("!I", value))[0]
    return signed


def _c_string(raw: bytes) -> str:
    """What Wireshark shows for a string attribute: UTF-8, cut at the first NUL."""
    return raw.split(b"\x00", 1)[0].decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------
# Attributes
# ---------------------------------------------------------------------------------------------

A = TypeVar("A", bound="Attribute")


@dataclass(frozen=True)
class Attribute:
    """Base of every attribute. Subclasses set ``TYPE`` and ``NAME`` (Wireshark's name).

    ``_wire_value`` and ``_wire_padding`` hold the bytes as received, so that a decoded
    attribute re-encodes identically; :func:`dataclasses.replace` yields a canonically encoded
    copy.
    """

    TYPE: ClassVar[int] = -1
    NAME: ClassVar[str] = ""

    # Class-level defaults, set per instance only by decode() / with_padding(): not dataclass
    # fields, so they stay out of __init__, ==, repr and dataclasses.replace().
    _wire_value: ClassVar[bytes | None] = None
    _wire_padding: ClassVar[bytes | None] = None

    @property
    def type(self) -> int:
        return self.TYPE

    @property
    def name(self) -> str:
        return self.NAME

    @property
    def comprehension_required(self) -> bool:
        """RFC 5389 §15: types 0x0000-0x7FFF must be understood by the receiver."""
        return self.type < 0x8000

    def encode_value(self, transaction_id: bytes) -> bytes:
        """The value bytes, without the TLV header and padding."""
        raise NotImplementedError

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        raise NotImplementedError

    def info(self) -> str:
        """Text Wireshark appends to the Info column for this attribute ('' for most)."""
        return ""

    def wire_value(self, transaction_id: bytes) -> bytes:
        if self._wire_value is not None:
            return self._wire_value
        return self.encode_value(transaction_id)

    def wire_padding(self, value_length: int) -> bytes:
        if self._wire_padding is not None and len(self._wire_padding) == _pad_length(value_length):
            return self._wire_padding
        return bytes(_pad_length(value_length))


@dataclass(frozen=True)
class UnknownAttribute(Attribute):
    """An attribute this codec has no type for, kept as raw bytes in wire order."""

    attr_type: int = 0
    value: bytes = b""

    @property
    def type(self) -> int:
        return self.attr_type

    @property
    def name(self) -> str:
        return ATTRIBUTE_NAMES.get(self.attr_type, f"0x{self.attr_type:04x}")

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.value


def with_padding(attr: A, padding: bytes) -> A:
    """A copy of ``attr`` that pads its value with ``padding`` instead of zeros.

    RFC 5389 §15 lets padding hold any value (RFC 5769 pads with spaces) and the integrity and
    fingerprint cover it as sent, so reproducing a given sender needs this.
    """
    copy = replace(attr)
    object.__setattr__(copy, "_wire_padding", bytes(padding))
    return copy


# --- building blocks ---------------------------------------------------------------------------


# Field names per _Packed class, in order; kept because encoding a TURN response packs several
# fixed-size attributes, and fields() per encode costs more than the packing.
_FIELD_NAMES: dict[type[Attribute], tuple[str, ...]] = {}


def _field_names(kind: type[Attribute]) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(kind)
    if names is None:
        names = _FIELD_NAMES[kind] = tuple(f.name for f in fields(kind))
    return names


@dataclass(frozen=True)
class _Packed(Attribute):
    """A fixed-size value: the dataclass fields, in order, packed with ``FORMAT``.

    Pad bytes (``x``) in the format are the RFFU bits of RFC 5766 and friends: written as
    zeros, ignored when read. One table row per attribute instead of a codec each.
    """

    FORMAT: ClassVar[struct.Struct]

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.FORMAT.pack(*[getattr(self, name) for name in _field_names(type(self))])

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        size: int = cls.FORMAT.size
        if len(value) != size:
            unit = "byte" if size == 1 else "bytes"
            raise _BadValue(f"{cls.NAME} must be {size} {unit}, got {len(value)}")
        return cls(*cls.FORMAT.unpack(value))


@dataclass(frozen=True)
class _U32(_Packed):
    FORMAT = struct.Struct("!I")
    value: int = 0


@dataclass(frozen=True)
class _U64(_Packed):
    FORMAT = struct.Struct("!Q")
    value: int = 0


@dataclass(frozen=True)
class _Empty(Attribute):
    def encode_value(self, transaction_id: bytes) -> bytes:
        return b""

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        if value:
            raise _BadValue(f"{cls.NAME} must be empty, got {len(value)} bytes")
        return cls()


@dataclass(frozen=True)
class _Bytes(Attribute):
    """Opaque bytes; ``LENGTHS`` lists the allowed lengths (empty: any)."""

    LENGTHS: ClassVar[tuple[int, ...]] = ()
    value: bytes = b""

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.value

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        lengths: tuple[int, ...] = cls.LENGTHS
        if lengths and len(value) not in lengths:
            raise _BadValue(f"{cls.NAME} must be {' or '.join(map(str, lengths))} bytes")
        return cls(bytes(value))


@dataclass(frozen=True)
class _Text(Attribute):
    """UTF-8 text (RFC 5389 §15.3, §15.7, §15.8, §15.10)."""

    MAX_BYTES: ClassVar[int] = 763
    value: str = ""

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.value.encode("utf-8")

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        max_bytes: int = cls.MAX_BYTES
        if len(value) > max_bytes:
            raise _BadValue(f"{cls.NAME} is {len(value)} bytes, the limit is {max_bytes}")
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _BadValue(f"{cls.NAME} is not UTF-8 ({exc.reason} at {exc.start})") from None
        return cls(text)


@cached(maxsize=4096, max_key=64)
def _canonical_ip(address: str) -> str:
    """Python's canonical text of an address (cached: a server sees the same few addresses);
    a bad address is kept as given and reported by encode_value, where it matters."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


def _display_ip(address: str) -> str:
    """An address as Wireshark prints it (glibc inet_ntop): like Python's compressed form, but
    IPv4-compatible (::a.b.c.d) and IPv4-mapped (::ffff:a.b.c.d) IPv6 addresses end in a
    dotted quad."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 4:
        return str(ip)
    packed = ip.packed
    tail = str(ipaddress.IPv4Address(packed[12:]))
    if packed[:12] == bytes(12) and packed[12:14] != b"\x00\x00":
        return f"::{tail}"
    if packed[:12] == bytes(10) + b"\xff\xff":
        return f"::ffff:{tail}"
    return str(ip)


@cached(maxsize=4096, max_key=64)
def _family_and_bytes(address: str) -> tuple[int, bytes] | None:
    # Cached: parsing text addresses dominated encoding a TURN response; a run sees few.
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return (1 if ip.version == 4 else 2), ip.packed


@cached(maxsize=4096, max_key=16)
def _ip_text(packed: bytes) -> str:
    return str(ipaddress.ip_address(packed))


def _xor(data: bytes, mask: bytes) -> bytes:
    size = len(data)
    return (int.from_bytes(data, "big") ^ int.from_bytes(mask, "big")).to_bytes(size, "big")


def _pack_address(address: str, port: int, name: str) -> tuple[int, bytes]:
    packed = _family_and_bytes(address)
    if packed is None:
        raise StunError(f"{name}: {address!r} is not an IP address")
    if not 0 <= port <= 0xFFFF:
        raise StunError(f"{name}: port {port} out of range")
    return packed


def _unpack_address(value: bytes, name: str) -> tuple[int, int, bytes]:
    """(family, port, address bytes) of an address value (RFC 5389 §15.1)."""
    if len(value) < 4:
        raise _BadValue(f"{name} needs at least 4 bytes, got {len(value)}")
    family, port = value[1], struct.unpack("!H", value[2:4])[0]
    want = {1: 8, 2: 20}.get(family)
    if want is None:
        raise _BadValue(f"{name} has unknown address family 0x{family:02x}")
    if len(value) != want:
        raise _BadValue(f"{name} with family {family} must be {want} bytes, got {len(value)}")
    return family, port, value[4:]


@dataclass(frozen=True)
class _Address(Attribute):
    """A plain transport address (MAPPED-ADDRESS and friends, RFC 5389 §15.1).

    ``address`` is kept in Python's canonical text form, so equal addresses compare equal
    whatever spelling built them.
    """

    address: str = "0.0.0.0"
    port: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", _canonical_ip(self.address))

    def encode_value(self, transaction_id: bytes) -> bytes:
        family, packed = _pack_address(self.address, self.port, self.NAME)
        return struct.pack("!BBH", 0, family, self.port) + packed

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        _family, port, packed = _unpack_address(value, cls.NAME)
        return cls(_ip_text(packed), port)

    def info(self) -> str:
        return f" {self.NAME}: {_display_ip(self.address)}:{self.port}"


class _XorAddress(_Address):
    """An XOR'ed transport address (RFC 5389 §15.2): port ^ 0x2112, IPv4 ^ cookie,
    IPv6 ^ (cookie || transaction ID)."""

    @staticmethod
    def _mask(family: int, transaction_id: bytes) -> bytes:
        return MAGIC_COOKIE_BYTES + (transaction_id if family == 2 else b"")

    def encode_value(self, transaction_id: bytes) -> bytes:
        family, packed = _pack_address(self.address, self.port, self.NAME)
        mask = self._mask(family, transaction_id)
        xored = _xor(packed, mask)
        return struct.pack("!BBH", 0, family, self.port ^ (MAGIC_COOKIE >> 16)) + xored

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        family, xport, xaddr = _unpack_address(value, cls.NAME)
        mask = _XorAddress._mask(family, transaction_id)
        packed = _xor(xaddr, mask)
        port = xport ^ (MAGIC_COOKIE >> 16)
        return cls(_ip_text(packed), port)


# --- RFC 5389 ----------------------------------------------------------------------------------


class MappedAddress(_Address):
    TYPE, NAME = 0x0001, "MAPPED-ADDRESS"


class Username(_Text):
    """RFC 5389 §15.3: less than 513 bytes."""

    TYPE, NAME, MAX_BYTES = 0x0006, "USERNAME", 512

    def info(self) -> str:
        return f" user: {_c_string(self.wire_value(b''))}"


@dataclass(frozen=True)
class MessageIntegrity(_Packed):
    """HMAC-SHA1 over the message up to this attribute (RFC 5389 §15.4).

    ``hmac`` None means "compute it at encode time with the key given to
    :meth:`Message.encode`".
    """

    TYPE, NAME, FORMAT = 0x0008, "MESSAGE-INTEGRITY", struct.Struct("!20s")
    hmac: bytes | None = None

    def encode_value(self, transaction_id: bytes) -> bytes:
        if self.hmac is None:
            raise StunError("MESSAGE-INTEGRITY has no value: encode the message with a key")
        return self.hmac  # as given: packing would pad or cut a wrong-sized value


@dataclass(frozen=True)
class ErrorCode(Attribute):
    """RFC 5389 §15.6: class (3-6) * 100 + number (0-99), then a UTF-8 reason phrase.

    Some servers (coturn) NUL-pad the reason inside the attribute length; the NULs are stripped
    here and kept only in the remembered wire bytes.
    """

    TYPE: ClassVar[int] = 0x0009
    NAME: ClassVar[str] = "ERROR-CODE"
    code: int = 400
    reason: str = ""

    def encode_value(self, transaction_id: bytes) -> bytes:
        if not 300 <= self.code <= 699 and not 200 <= self.code <= 299:
            raise StunError(f"ERROR-CODE {self.code} out of range")
        return struct.pack("!HBB", 0, self.code // 100, self.code % 100) + self.reason.encode(
            "utf-8"
        )

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        if len(value) < 4:
            raise _BadValue(f"ERROR-CODE needs at least 4 bytes, got {len(value)}")
        # Wireshark masks the class with 0x07 and so do we: reserved bits are ignored.
        klass, number = value[2] & 0x07, value[3]
        if number > 99:
            raise _BadValue(f"ERROR-CODE number {number} is over 99")
        try:
            reason = value[4:].decode("utf-8").rstrip("\x00")
        except UnicodeDecodeError as exc:
            raise _BadValue(f"ERROR-CODE reason is not UTF-8 (at {exc.start})") from None
        return cls(klass * 100 + number, reason)

    def info(self) -> str:
        name = ERROR_NAMES.get(self.code, "*Unknown error code*")
        text = f" error-code: {self.code} ({name})"
        raw = self.wire_value(b"")
        if len(raw) > 4:
            text += f" {_c_string(raw[4:])}"
        return text


@dataclass(frozen=True)
class UnknownAttributes(Attribute):
    """RFC 5389 §15.9: the comprehension-required types a 420 response did not understand."""

    TYPE: ClassVar[int] = 0x000A
    NAME: ClassVar[str] = "UNKNOWN-ATTRIBUTES"
    types: tuple[int, ...] = ()

    def encode_value(self, transaction_id: bytes) -> bytes:
        return b"".join(struct.pack("!H", t) for t in self.types)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        if len(value) % 2:
            raise _BadValue(f"UNKNOWN-ATTRIBUTES length {len(value)} is odd")
        return cls(tuple(struct.unpack(f"!{len(value) // 2}H", value)))


class Realm(_Text):
    """RFC 5389 §15.7: fewer than 128 characters (up to 763 bytes)."""

    TYPE, NAME = 0x0014, "REALM"

    def info(self) -> str:
        return f" realm: {_c_string(self.wire_value(b''))}"


class Nonce(_Text):
    """RFC 5389 §15.8: Wireshark prints only " with nonce"."""

    TYPE, NAME = 0x0015, "NONCE"

    def info(self) -> str:
        return " with nonce"


class XorMappedAddress(_XorAddress):
    TYPE, NAME = 0x0020, "XOR-MAPPED-ADDRESS"


class Software(_Text):
    TYPE, NAME = 0x8022, "SOFTWARE"


class AlternateServer(_Address):
    TYPE, NAME = 0x8023, "ALTERNATE-SERVER"


@dataclass(frozen=True)
class Fingerprint(_Packed):
    """CRC-32 of the message up to this attribute, XOR 0x5354554E (RFC 5389 §15.5).

    ``crc`` None means "compute it at encode time".
    """

    TYPE, NAME, FORMAT = 0x8028, "FINGERPRINT", struct.Struct("!I")
    crc: int | None = None

    def encode_value(self, transaction_id: bytes) -> bytes:
        if self.crc is None:
            raise StunError("FINGERPRINT has no value: encode the message to compute it")
        return super().encode_value(transaction_id)


class ResponseOrigin(_Address):
    TYPE, NAME = 0x802B, "RESPONSE-ORIGIN"


class OtherAddress(_Address):
    TYPE, NAME = 0x802C, "OTHER-ADDRESS"


# --- RFC 8489 additions (carried, not used by this call) ---------------------------------------


class MessageIntegritySha256(_Bytes):
    """RFC 8489 §14.6: 16 to 32 bytes, a multiple of 4."""

    TYPE, NAME, LENGTHS = 0x001C, "MESSAGE-INTEGRITY-SHA256", (16, 20, 24, 28, 32)


@dataclass(frozen=True)
class PasswordAlgorithm(Attribute):
    """RFC 8489 §14.5: a 16-bit algorithm (1 MD5, 2 SHA-256), a 16-bit parameter length, the
    parameters, padded to 4 bytes inside the value."""

    TYPE: ClassVar[int] = 0x001D
    NAME: ClassVar[str] = "PASSWORD-ALGORITHM"
    algorithm: int = 1
    parameters: bytes = b""

    def encode_value(self, transaction_id: bytes) -> bytes:
        params = self.parameters + bytes(_pad_length(len(self.parameters)))
        return struct.pack("!HH", self.algorithm, len(self.parameters)) + params

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        if len(value) < 4:
            raise _BadValue(f"PASSWORD-ALGORITHM needs at least 4 bytes, got {len(value)}")
        algorithm, length = struct.unpack("!HH", value[:4])
        if len(value) != 4 + length + _pad_length(length):
            raise _BadValue(f"PASSWORD-ALGORITHM parameter length {length} does not fit")
        return cls(algorithm, bytes(value[4 : 4 + length]))


class Userhash(_Bytes):
    TYPE, NAME, LENGTHS = 0x001E, "USERHASH", (32,)


# --- TURN, RFC 5766 / RFC 6156 -----------------------------------------------------------------


@dataclass(frozen=True)
class ChannelNumber(_Packed):
    """RFC 5766 §14.1: 16-bit channel number, then 16 bits RFFU."""

    TYPE, NAME, FORMAT = 0x000C, "CHANNEL-NUMBER", struct.Struct("!H2x")
    value: int = CHANNEL_MIN

    def info(self) -> str:
        return f" ChannelNumber=0x{self.value:x}"


class Lifetime(_U32):
    """RFC 5766 §14.2: seconds; 0 in a Refresh deletes the allocation."""

    TYPE, NAME = 0x000D, "LIFETIME"

    def info(self) -> str:
        return f" lifetime: {_int32(self.value)}"


class XorPeerAddress(_XorAddress):
    TYPE, NAME = 0x0012, "XOR-PEER-ADDRESS"


class Data(_Bytes):
    """RFC 5766 §14.4: the application data of a Send or Data indication."""

    TYPE, NAME = 0x0013, "DATA"


class XorRelayedAddress(_XorAddress):
    TYPE, NAME = 0x0016, "XOR-RELAYED-ADDRESS"


@dataclass(frozen=True)
class RequestedAddressFamily(_Packed):
    """RFC 6156 §4.1.1: family byte (1 IPv4, 2 IPv6) and 3 bytes RFFU."""

    TYPE, NAME, FORMAT = 0x0017, "REQUESTED-ADDRESS-FAMILY", struct.Struct("!B3x")
    family: int = 1


@dataclass(frozen=True)
class EvenPort(Attribute):
    """RFC 5766 §14.6: one byte, R bit 0x80 asks to reserve the next port."""

    TYPE: ClassVar[int] = 0x0018
    NAME: ClassVar[str] = "EVEN-PORT"
    reserve_next: bool = False

    def encode_value(self, transaction_id: bytes) -> bytes:
        return bytes([0x80 if self.reserve_next else 0])

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Self:
        if len(value) != 1:
            raise _BadValue(f"EVEN-PORT must be 1 byte, got {len(value)}")
        return cls(bool(value[0] & 0x80))


@dataclass(frozen=True)
class RequestedTransport(_Packed):
    """RFC 5766 §14.7: protocol number (17 UDP; 6 TCP per RFC 6062 §6.1) and 3 bytes RFFU."""

    TYPE, NAME, FORMAT = 0x0019, "REQUESTED-TRANSPORT", struct.Struct("!B3x")
    protocol: int = TRANSPORT_UDP

    def info(self) -> str:
        return " " + TRANSPORT_NAMES.get(self.protocol, f"Unknown (0x{self.protocol:8x})")


class DontFragment(_Empty):
    TYPE, NAME = 0x001A, "DONT-FRAGMENT"


class ReservationToken(_Bytes):
    TYPE, NAME, LENGTHS = 0x0022, "RESERVATION-TOKEN", (8,)


# --- TURN-TCP, RFC 6062 ------------------------------------------------------------------------


class ConnectionId(_U32):
    """RFC 6062 §6.2.1: identifies a peer connection between ConnectionAttempt/Connect and
    ConnectionBind. Wireshark prints nothing for it."""

    TYPE, NAME = 0x002A, "CONNECTION-ID"


# --- ICE, RFC 5245 ----------------------------------------------------------------------------


class Priority(_U32):
    TYPE, NAME = 0x0024, "PRIORITY"


class UseCandidate(_Empty):
    TYPE, NAME = 0x0025, "USE-CANDIDATE"


class IceControlled(_U64):
    """RFC 5245 §19.1: the 64-bit tie-breaker."""

    TYPE, NAME = 0x8029, "ICE-CONTROLLED"


class IceControlling(_U64):
    TYPE, NAME = 0x802A, "ICE-CONTROLLING"


# --- Microsoft: MS-TURN, MS-ICE2 -----------------------------------------------------------------


class MsAlternateServer(_Address):
    TYPE, NAME = 0x000E, "MS-ALTERNATE-SERVER"


class MagicCookieAttribute(_U32):
    """MS-TURN §2.2.2.6: 0x72C64BC6, the first attribute of every MS-TURN message."""

    TYPE, NAME = 0x000F, "MAGIC-COOKIE"


class Bandwidth(_U32):
    """MS-TURN §2.2.2.7: kilobits per second."""

    TYPE, NAME = 0x0010, "BANDWIDTH"

    def info(self) -> str:
        return f" bandwidth: {_int32(self.value)}"


class DestinationAddress(_Address):
    """MS-TURN §2.2.2.8 (Wireshark prints no Info text for it)."""

    TYPE, NAME = 0x0011, "DESTINATION-ADDRESS"

    def info(self) -> str:
        return ""


class MsVersion(_U32):
    """MS-TURN §2.2.2.13: 1 ICE, 2 MS-ICE2, 3 with SHA256, 4 with SHA256 and IPv6, ..."""

    TYPE, NAME = 0x8008, "MS-VERSION"


class MsXorMappedAddress(_XorAddress):
    """MS-TURN §2.2.2.14 uses 0x8020; Wireshark names it plain XOR-MAPPED-ADDRESS."""

    TYPE, NAME = 0x8020, "XOR-MAPPED-ADDRESS"


@dataclass(frozen=True)
class MsSequenceNumber(_Packed):
    """MS-TURN §2.2.2.16: a 20-byte connection id and a 32-bit sequence number."""

    TYPE, NAME, FORMAT = 0x8050, "MS-SEQUENCE-NUMBER", struct.Struct("!20sI")
    connection_id: bytes = bytes(20)
    sequence: int = 0

    def encode_value(self, transaction_id: bytes) -> bytes:
        if len(self.connection_id) != 20:  # packing would pad or cut it
            raise StunError("MS-SEQUENCE-NUMBER connection id must be 20 bytes")
        return super().encode_value(transaction_id)


class MsCandidateIdentifier(_Bytes):
    """MS-ICE2 §2.2.2.3: the candidate's 4-byte foundation."""

    TYPE, NAME, LENGTHS = 0x8054, "MS-CANDIDATE-IDENTIFIER", (4,)


@dataclass(frozen=True)
class MsServiceQuality(_Packed):
    """MS-TURN §2.2.2.17: stream type (1 audio, 2 video, 3 supplemental video, 4 data) and
    service quality (0 best effort, 1 reliable)."""

    TYPE, NAME, FORMAT = 0x8055, "MS-SERVICE-QUALITY", struct.Struct("!HH")
    stream_type: int = 4
    quality: int = 0


class MsImplementationVersion(_U32):
    """MS-ICE2 §2.2.2.2."""

    TYPE, NAME = 0x8070, "MS-IMPLEMENTATION-VERSION"


class MsAltMappedAddress(_Address):
    TYPE, NAME = 0x8090, "MS-ALT-MAPPED-ADDRESS"


class MsMultiplexedTurnSessionId(_Bytes):
    TYPE, NAME, LENGTHS = 0x8095, "MS-MULTIPLEXED-TURN-SESSION-ID", (8,)


#: The typed attribute registry: wire type -> class.
ATTRIBUTE_TYPES: dict[int, type[Attribute]] = {
    cls.TYPE: cls
    for cls in (
        MappedAddress,
        Username,
        MessageIntegrity,
        ErrorCode,
        UnknownAttributes,
        ChannelNumber,
        Lifetime,
        MsAlternateServer,
        MagicCookieAttribute,
        Bandwidth,
        DestinationAddress,
        XorPeerAddress,
        Data,
        Realm,
        Nonce,
        XorRelayedAddress,
        RequestedAddressFamily,
        EvenPort,
        RequestedTransport,
        DontFragment,
        MessageIntegritySha256,
        PasswordAlgorithm,
        Userhash,
        XorMappedAddress,
        ReservationToken,
        Priority,
        UseCandidate,
        ConnectionId,
        MsVersion,
        MsXorMappedAddress,
        Software,
        AlternateServer,
        Fingerprint,
        IceControlled,
        IceControlling,
        ResponseOrigin,
        OtherAddress,
        MsSequenceNumber,
        MsCandidateIdentifier,
        MsServiceQuality,
        MsImplementationVersion,
        MsAltMappedAddress,
        MsMultiplexedTurnSessionId,
    )
}

#: Names of attribute types we keep raw, for display (Wireshark's `attributes[]` names).
ATTRIBUTE_NAMES: dict[int, str] = {
    0x0002: "RESPONSE_ADDRESS",
    0x0003: "CHANGE_REQUEST",
    0x0004: "SOURCE_ADDRESS",
    0x0005: "CHANGED_ADDRESS",
    0x0007: "PASSWORD",
    0x000B: "REFLECTED-FROM",
    0x001B: "ACCESS-TOKEN",
    0x0026: "PADDING",
    0x0027: "XOR-RESPONSE-TARGET",
    0x0030: "LEGACY-ICMP",
    0x8000: "ADDITIONAL-ADDRESS-FAMILY",
    0x8001: "ADDRESS-ERROR-CODE",
    0x8002: "PASSWORD-ALGORITHMS",
    0x8003: "ALTERNATE-DOMAIN",
    0x8004: "ICMP",
    0x8025: "TRANSACTION-TRANSMIT-COUNTER",
    0x8027: "CACHE-TIMEOUT",
    0x802D: "ECN-CHECK-STUN",
    0x802E: "THIRD-PARTY-AUTHORIZATION",
    0x8030: "MOBILITY-TICKET",
    **{t: c.NAME for t, c in ATTRIBUTE_TYPES.items()},
}


# ---------------------------------------------------------------------------------------------
# Credentials (RFC 5389 §15.4, RFC 4013 SASLprep)
# ---------------------------------------------------------------------------------------------

_SASLPREP_PROHIBITED = (
    stringprep.in_table_c12,
    stringprep.in_table_c21,
    stringprep.in_table_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
)


def saslprep(text: str) -> str:
    """RFC 4013 SASLprep, as a query (unassigned code points allowed).

    No library on PyPI we can rely on does this; the stdlib ``stringprep`` tables do the work.
    """
    # RFC 4013 §2.1: non-ASCII space -> SPACE; "commonly mapped to nothing" -> removed.
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch for ch in text if not stringprep.in_table_b1(ch)
    )
    # §2.2: Unicode normalization form KC.
    normalized = unicodedata.normalize("NFKC", mapped)
    # §2.3: prohibited output.
    for index, ch in enumerate(normalized):
        if any(check(ch) for check in _SASLPREP_PROHIBITED):
            raise StunError(f"SASLprep: prohibited character U+{ord(ch):04X} at {index}")
    # §2.4 / RFC 3454 §6: bidirectional rules.
    if any(stringprep.in_table_d1(ch) for ch in normalized):
        if any(stringprep.in_table_d2(ch) for ch in normalized):
            raise StunError("SASLprep: mixes right-to-left and left-to-right characters")
        if not (stringprep.in_table_d1(normalized[0]) and stringprep.in_table_d1(normalized[-1])):
            raise StunError("SASLprep: right-to-left text must start and end with RandALCat")
    return normalized


@cached(maxsize=1024, max_key=1024)
def long_term_key(username: str, realm: str, password: str) -> bytes:
    """RFC 5389 §15.4: key = MD5(username ":" realm ":" SASLprep(password)).

    Cached: a TURN server derives the same key for every request of a user.
    """
    material = f"{username}:{realm}:{saslprep(password)}".encode()
    return hashlib.md5(material, usedforsecurity=False).digest()


@cached(maxsize=1024, max_key=256)
def short_term_key(password: str) -> bytes:
    """RFC 5389 §15.4: key = SASLprep(password); for ICE the remote peer's ice-pwd."""
    return saslprep(password).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------


_TL = struct.Struct("!HH")
_HEAD = struct.Struct("!HHI")
_ZEROS = [b"", b"\x00", b"\x00\x00", b"\x00\x00\x00"]


def _header(msg_type: int, length: int, transaction_id: bytes) -> bytes:
    # RFC 5389 §6: the length is 16 bits; more attributes than that is a StunError, not the
    # struct.error packing it would raise.
    if length > 0xFFFF:
        raise StunError(f"{length} bytes of attributes do not fit the 16-bit message length")
    return _HEAD.pack(msg_type, length, MAGIC_COOKIE) + transaction_id


#: HMAC's block size for SHA-1 (RFC 2104 §2: B = 64).
_SHA1_BLOCK = 64
_IPAD = bytes.maketrans(bytes(range(256)), bytes(b ^ 0x36 for b in range(256)))
_OPAD = bytes.maketrans(bytes(range(256)), bytes(b ^ 0x5C for b in range(256)))


@cached(maxsize=1024, max_key=128)
def _hmac_sha1_pads(key: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """SHA-1 states that have absorbed ``key XOR ipad`` and ``key XOR opad`` (RFC 2104 §2).

    Cached per key: a TURN server or client uses one long-term key per user for every message,
    and starting each HMAC from these states skips hashing the two padded key blocks again
    (about a quarter of the cost of one one-shot ``hmac.digest``). Callers only ``copy()`` them.
    """
    if len(key) > _SHA1_BLOCK:  # RFC 2104 §2: a longer key is hashed first
        key = hashlib.sha1(key).digest()
    block = key.ljust(_SHA1_BLOCK, b"\x00")
    return hashlib.sha1(block.translate(_IPAD)), hashlib.sha1(block.translate(_OPAD))


def _hmac_sha1(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA1 (RFC 2104): H(K ^ opad, H(K ^ ipad, data)), from the cached key states."""
    inner_start, outer_start = _hmac_sha1_pads(key)
    inner = inner_start.copy()
    inner.update(data)
    outer = outer_start.copy()
    outer.update(inner.digest())
    return outer.digest()


def _crc(data: bytes) -> int:
    return (binascii.crc32(data) ^ FINGERPRINT_XOR) & 0xFFFFFFFF


@dataclass
class Message:
    """One STUN/TURN message. ``attributes`` are in wire order.

    After :meth:`decode`, ``raw`` holds the bytes received and ``offsets`` the byte offset of
    each attribute's TLV header; verification works on those bytes.
    """

    method: int
    cls: Class
    transaction_id: bytes
    attributes: list[Attribute] = field(default_factory=list)
    raw: bytes | None = field(default=None, compare=False, repr=False)
    offsets: list[int] = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.transaction_id) != TRANSACTION_ID_LENGTH:
            raise StunError(
                f"transaction ID must be {TRANSACTION_ID_LENGTH} bytes, "
                f"got {len(self.transaction_id)}"
            )
        if type(self.cls) is not Class:
            self.cls = Class(self.cls)

    # -- convenience constructors --------------------------------------------------------------

    @classmethod
    def request(
        cls, method: int, attributes: Iterable[Attribute] = (), transaction_id: bytes | None = None
    ) -> Message:
        return cls(method, Class.REQUEST, transaction_id or random_transaction_id(), [*attributes])

    @classmethod
    def indication(
        cls, method: int, attributes: Iterable[Attribute] = (), transaction_id: bytes | None = None
    ) -> Message:
        tid = transaction_id or random_transaction_id()
        return cls(method, Class.INDICATION, tid, [*attributes])

    def success(self, attributes: Iterable[Attribute] = ()) -> Message:
        """A success response to this request: same method and transaction ID."""
        return Message(self.method, Class.SUCCESS, self.transaction_id, [*attributes])

    def error(self, code: int, attributes: Iterable[Attribute] = (), reason: str = "") -> Message:
        """An error response to this request, ERROR-CODE first."""
        phrase = reason or DEFAULT_REASONS.get(code, ERROR_NAMES.get(code, ""))
        return Message(
            self.method, Class.ERROR, self.transaction_id, [ErrorCode(code, phrase), *attributes]
        )

    # -- access --------------------------------------------------------------------------------

    @property
    def type(self) -> int:
        return message_type(self.method, self.cls)

    @property
    def method_name(self) -> str:
        return METHOD_NAMES.get(self.method, "Unknown")

    # The lookups below compare exact types (a subclass is another attribute type on the wire)
    # with plain loops: a server asks a message for several attributes per request, and a
    # generator or an isinstance() per attribute was a visible share of handling one.

    def get(self, kind: builtins.type[A]) -> A | None:
        """The first attribute of this class, or None."""
        for attr in self.attributes:
            if builtins.type(attr) is kind:
                return attr
        return None

    def get_all(self, kind: builtins.type[A]) -> list[A]:
        return [a for a in self.attributes if builtins.type(a) is kind]

    def __contains__(self, kind: object) -> bool:
        for attr in self.attributes:
            if builtins.type(attr) is kind:
                return True
        return False

    def unknown_comprehension_required(self) -> list[int]:
        """Types a server must list in a 420 answer (RFC 5389 §7.3.1)."""
        return [
            a.type
            for a in self.attributes
            if isinstance(a, UnknownAttribute) and a.comprehension_required
        ]

    def summary(self) -> str:
        """The Info column Wireshark prints for this message (PROTOCOL.md §7.2)."""
        text = f"{self.method_name} {CLASS_NAMES[self.cls]}"
        return text + "".join(a.info() for a in self.attributes)

    # -- encoding ------------------------------------------------------------------------------

    def encode(self, key: bytes | None = None) -> bytes:
        """The wire bytes.

        With ``key``, MESSAGE-INTEGRITY is computed (RFC 5389 §15.4) and any FINGERPRINT after
        it is recomputed; without, stored values are written as they are. A FINGERPRINT or
        MESSAGE-INTEGRITY whose value is None is always computed.
        """
        msg_type = message_type(self.method, self.cls)
        tid = self.transaction_id
        body = bytearray()
        pack_tl = _TL.pack
        recompute_fingerprint = False
        for attr in self.attributes:
            kind = type(attr)
            if kind is MessageIntegrity and (key is not None or attr.hmac is None):  # type: ignore[attr-defined]
                if key is None:
                    raise StunError("MESSAGE-INTEGRITY needs a key to be computed")
                # §15.4: the length covers the attributes up to and including MI.
                digest = _hmac_sha1(key, _header(msg_type, len(body) + 24, tid) + body)
                body += pack_tl(0x0008, 20) + digest
                recompute_fingerprint = True
                continue
            if kind is Fingerprint and (attr.crc is None or recompute_fingerprint):  # type: ignore[attr-defined]
                # §15.5: the length covers the attributes up to and including FINGERPRINT.
                crc = _crc(_header(msg_type, len(body) + 8, tid) + body)
                body += _HEAD.pack(0x8028, 4, crc)
                continue
            value = attr._wire_value
            if value is None:
                value = attr.encode_value(tid)
                if len(value) > 0xFFFF:
                    raise StunError(f"{attr.name} value of {len(value)} bytes does not fit")
            size = len(value)
            body += pack_tl(attr.attr_type if kind is UnknownAttribute else attr.TYPE, size)  # type: ignore[attr-defined]
            body += value
            if size & 3:
                padding = attr._wire_padding
                pad = 4 - (size & 3)
                body += padding if padding is not None and len(padding) == pad else _ZEROS[pad]
        return _header(msg_type, len(body), tid) + body  # bytes + bytearray is bytes

    def __bytes__(self) -> bytes:
        return self.encode()

    # -- verification --------------------------------------------------------------------------

    def _wire(self) -> tuple[bytes, list[int]]:
        if self.raw is not None:
            return self.raw, self.offsets
        decoded = decode(self.encode())
        return decoded.raw or b"", decoded.offsets

    def verify_integrity(self, key: bytes) -> bool:
        """Check MESSAGE-INTEGRITY over the bytes received (RFC 5389 §15.4).

        False when the attribute is absent or does not match.
        """
        raw, offsets = self._wire()
        for attr, offset in zip(self.attributes, offsets, strict=True):
            if isinstance(attr, MessageIntegrity):
                patched = raw[:2] + struct.pack("!H", offset - HEADER_LENGTH + 24) + raw[4:offset]
                expected = _hmac_sha1(key, patched)
                return hmac.compare_digest(expected, raw[offset + 4 : offset + 24])
        return False

    def verify_fingerprint(self) -> bool:
        """Check FINGERPRINT (RFC 5389 §15.5); False when absent, not last, or wrong."""
        raw, offsets = self._wire()
        if not self.attributes or not isinstance(self.attributes[-1], Fingerprint):
            return False
        offset = offsets[-1]
        patched = raw[:2] + struct.pack("!H", offset - HEADER_LENGTH + 8) + raw[4:offset]
        received: int = struct.unpack("!I", raw[offset + 4 : offset + 8])[0]
        return _crc(patched) == received


def decode(data: bytes | bytearray | memoryview, *, base_offset: int = 0) -> Message:
    """Decode exactly one STUN message (RFC 5389 §6, §15).

    ``base_offset`` is added to the offsets in error messages, for callers decoding a message
    found inside a larger buffer (a framed stream, a capture).
    """
    buf = bytes(data)

    def fail(message: str, offset: int) -> StunError:
        return StunError(message, offset=base_offset + offset)

    if len(buf) < HEADER_LENGTH:
        raise fail(f"STUN header needs {HEADER_LENGTH} bytes, got {len(buf)}", 0)
    msg_type, length, cookie = _HEAD.unpack_from(buf)
    if msg_type & 0xC000:
        raise fail(
            f"first two bits are {msg_type >> 14:02b}, not 00: not a STUN message (RFC 5389 §6)",
            0,
        )
    if cookie != MAGIC_COOKIE:
        raise fail(f"magic cookie is 0x{cookie:08x}, expected 0x{MAGIC_COOKIE:08x}", 4)
    if length % 4:
        raise fail(f"message length {length} is not a multiple of 4", 2)
    if len(buf) != HEADER_LENGTH + length:
        raise fail(
            f"message length says {length} attribute bytes, "
            f"but {len(buf) - HEADER_LENGTH} follow the header",
            2,
        )
    method, cls = split_type(msg_type)
    tid = buf[8:HEADER_LENGTH]
    attributes: list[Attribute] = []
    offsets: list[int] = []
    offset = HEADER_LENGTH
    size = len(buf)
    unpack_tl = _TL.unpack_from
    registry = ATTRIBUTE_TYPES
    while offset < size:
        if size - offset < 4:
            raise fail("attribute header cut short", offset)
        attr_type, attr_len = unpack_tl(buf, offset)
        end = offset + 4 + attr_len
        padded_end = (end + 3) & ~3
        if padded_end > size:
            raise fail(
                f"attribute 0x{attr_type:04x} length {attr_len} runs past the message end",
                offset + 2,
            )
        value = buf[offset + 4 : end]
        kind = registry.get(attr_type)
        attr: Attribute
        if kind is None:
            attr = UnknownAttribute(attr_type, value)
        else:
            try:
                attr = kind.decode_value(value, tid)
            except (_BadValue, StunError) as exc:
                raise fail(str(exc), offset + 4) from None
        # Remember the bytes as sent; zero padding is what encoding writes anyway.
        object.__setattr__(attr, "_wire_value", value)
        if padded_end != end and buf[end:padded_end].strip(b"\x00"):
            object.__setattr__(attr, "_wire_padding", buf[end:padded_end])
        attributes.append(attr)
        offsets.append(offset)
        offset = padded_end
    return Message(method, cls, tid, attributes, raw=buf, offsets=offsets)


def is_stun(data: bytes | bytearray | memoryview) -> bool:
    """Quick demultiplexing test (RFC 5389 §7.3, RFC 7983): top bits 00 and the magic cookie."""
    return len(data) >= HEADER_LENGTH and data[0] < 0x40 and bytes(data[4:8]) == MAGIC_COOKIE_BYTES


# ---------------------------------------------------------------------------------------------
# ChannelData (RFC 5766 §11.4)
# ---------------------------------------------------------------------------------------------


@dataclass
class ChannelData:
    """A TURN ChannelData frame: channel number, length, data; padded to 4 bytes on TCP
    (RFC 5766 §11.5)."""

    channel: int
    data: bytes
    padding: bytes | None = field(default=None, compare=False, repr=False)
    """The padding as it came on the wire (b"": none came), so a decoded frame encodes back
    to its own bytes; None for a frame built here, padded with zeros on TCP."""

    def encode(self, *, stream: bool = True) -> bytes:
        if not CHANNEL_MIN <= self.channel <= CHANNEL_MAX:
            raise StunError(f"channel 0x{self.channel:04x} outside 0x4000-0x7FFF")
        if len(self.data) > 0xFFFF:
            raise StunError(f"ChannelData of {len(self.data)} bytes does not fit")
        frame = struct.pack("!HH", self.channel, len(self.data)) + self.data
        if stream:
            pad = _pad_length(len(self.data))
            # A frame that came unpadded (a peer breaking RFC 5766 §11.5's MUST, or one copied
            # from UDP) goes out as it came: labsim reproduces bytes, it does not mend them.
            keep = self.padding is not None and len(self.padding) in (pad, 0)
            frame += self.padding if keep and self.padding is not None else bytes(pad)
        return frame

    def __bytes__(self) -> bytes:
        return self.encode()

    def summary(self) -> str:
        return "ChannelData TURN Message"

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview, *, base_offset: int = 0) -> ChannelData:
        """Decode one frame; trailing bytes may only be the TCP padding."""
        buf = bytes(data)
        if len(buf) < 4:
            raise StunError(f"ChannelData header needs 4 bytes, got {len(buf)}", offset=base_offset)
        channel, length = struct.unpack("!HH", buf[:4])
        if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
            raise StunError(
                f"channel number 0x{channel:04x} outside 0x4000-0x7FFF", offset=base_offset
            )
        if len(buf) < 4 + length:
            raise StunError(
                f"ChannelData length {length} but only {len(buf) - 4} bytes follow",
                offset=base_offset + 2,
            )
        extra = buf[4 + length :]
        if len(extra) not in (0, _pad_length(length)):
            raise StunError(
                f"{len(extra)} bytes after ChannelData of length {length}",
                offset=base_offset + 4 + length,
            )
        return cls(channel, buf[4 : 4 + length], extra)


def decode_control(data: bytes | bytearray | memoryview) -> Message | ChannelData:
    """Decode one frame from a TURN control connection: a STUN message or ChannelData
    (the first two bits tell them apart, RFC 5766 §11)."""
    if len(data) and data[0] & 0xC0 == 0x40:
        return ChannelData.decode(data)
    return decode(data)
