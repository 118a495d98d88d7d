"""SIP messages (RFC 3261) on top of :mod:`sipmessage`: strict parsing, typed headers, builders.

``sipmessage`` is the codec: its :class:`~sipmessage.Request`, :class:`~sipmessage.Response`,
:class:`~sipmessage.Via`, :class:`~sipmessage.Address`, :class:`~sipmessage.URI`,
:class:`~sipmessage.CSeq` and :class:`~sipmessage.MediaType` are the values this module hands out.
This module adds what it lacks for a lab tool that must reject bad bytes precisely:

* :func:`parse_message` unfolds continuation lines (RFC 3261 §7.3.1), checks the start line,
  every header line and the UTF-8 encoding, requires the mandatory headers (§8.1.1), a CSeq
  method equal to the request method (§8.1.1.5), a ``branch`` on the top Via (§8.1.1.7) and a
  Content-Length equal to the body length (§20.14), and raises :class:`SipError` with the 1-based
  line number of the fault. No other exception type escapes it, whatever the input.
* Typed accessors (:func:`from_tag`, :func:`top_via`, :func:`record_route`, ...) and the
  Microsoft ``ms-diagnostics`` / ``ms-diagnostics-public`` headers (:class:`MsDiagnostics`,
  PROTOCOL.md §5.4, MS-SIPRE).
* Sans-IO builders (:func:`build_request`, :func:`build_response`), :func:`encode`, the one-line
  :func:`summary` and :func:`wireshark_info`, and the proxy steps of RFC 3261 §16.6/§16.7
  (:func:`push_via`, :func:`pop_via`, :func:`add_record_route`, :func:`pop_route_if_self`,
  :func:`decrement_max_forwards`, :func:`stamp_received`). Ids, tags and branches are always
  arguments: nothing here reads a clock or draws a random number.

Why the formatters (:func:`format_uri`, :func:`format_address`, :func:`format_via`): sipmessage
percent-encodes every parameter value with ``urllib.parse.quote``, which turns the SfB GRUU
``opaque=user:epid:...`` into ``opaque=user%3Aepid%3A...`` (a different URI, RFC 3261 §19.1.4:
``:`` is reserved) and a quoted ``+sip.instance="<urn:...>"`` into ``%22%3Curn...``. Header
values received are therefore kept as received, and values this module writes go through
formatters that quote only what the grammar requires.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final, Generic, NamedTuple, TypeVar

from sipmessage import URI, Address, CSeq, MediaType, Request, Response, Via, grammar
from sipmessage.message import COMPACT_FORMS, Headers

from labsim.wire.cache import cached, memo
from labsim.wire.errors import SipError
from labsim.wire.framing import encoded_whole

__all__ = [
    "DEFAULT_REASONS",
    "MAGIC_COOKIE",
    "HeaderStore",
    "MsDiagnostics",
    "SipMessage",
    "add_record_route",
    "build_request",
    "build_failure_ack",
    "build_response",
    "call_id",
    "contact",
    "content_length",
    "content_type",
    "cseq",
    "decrement_max_forwards",
    "diagnostics_text",
    "encode",
    "format_address",
    "format_uri",
    "format_via",
    "from_address",
    "from_tag",
    "is_rfc3261_branch",
    "max_forwards",
    "ms_diagnostics",
    "ms_diagnostics_public",
    "parse_address",
    "parse_message",
    "pop_route_if_self",
    "pop_via",
    "push_via",
    "record_route",
    "route",
    "stamp_received",
    "summary",
    "to_address",
    "to_tag",
    "top_via",
    "via_branch",
    "via_received",
    "via_rport",
    "vias",
    "wireshark_info",
    "with_tag",
]

SipMessage = Request | Response
"""A parsed or built SIP message (the sipmessage types)."""

MAGIC_COOKIE: Final = "z9hG4bK"
"""RFC 3261 §8.1.1.7: branches of RFC 3261 elements start with this; RFC 2543 ones do not."""

DEFAULT_REASONS: Final[Mapping[int, str]] = {
    # RFC 3261 §21: the reason phrase of every status code it defines (a UA may be told to
    # answer with any of them: the actors' refusal settings).
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    493: "Undecipherable",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}

_T = TypeVar("_T")
_K = TypeVar("_K")
_A = TypeVar("_A")

# RFC 3261 §25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_DIGITS = re.compile(r"[0-9]{1,10}")  # ASCII only: str.isdigit() and \d accept other scripts
_CSEQ = re.compile(r"([0-9]{1,10})[ \t]+([A-Za-z0-9\-.!%*_+`'~]+)")
_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs except HTAB, which is LWS
_SPACE = re.compile(r"\s")  # for str patterns, what str.isspace() accepts (Unicode too)
_CTL_BYTES = bytes([*range(0x09), *range(0x0A, 0x20), 0x7F])  # the same, as UTF-8 bytes
_GENERIC_VALUE = re.compile(f"(?:{grammar.TOKEN}|{grammar.HOST}|{grammar.QUOTED_STRING})")
# RFC 3261 §25.1 paramchar = param-unreserved / unreserved / escaped; quote() keeps alnum "_.-~".
_URI_PARAM_SAFE = "!*'()[]/:&+$"

# The headers RFC 3261 §8.1.1 makes mandatory; Max-Forwards only in requests (§8.1.1.6).
_MANDATORY: Final = ("via", "from", "to", "call-id", "cseq")
# Headers that hold one or more values, never none (§20).
_LISTS: Final = frozenset({"via", "route", "record-route", "contact"})
# Headers whose grammar has no comma list, so a second occurrence is an error (§7.3.1).
_SINGLE: Final = frozenset(
    {"from", "to", "call-id", "cseq", "max-forwards", "content-length", "content-type"}
)
_CANONICAL: Final = {
    "via": "Via",
    "from": "From",
    "to": "To",
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "max-forwards": "Max-Forwards",
    "content-length": "Content-Length",
    "content-type": "Content-Type",
}


# --------------------------------------------------------------------------------------------
# The header store


class HeaderStore(Headers):
    """sipmessage's :class:`~sipmessage.message.Headers` with a dict index (hand-written).

    Same behaviour as sipmessage's: names are case-insensitive, a name keeps the spelling of
    its first occurrence, ``add`` appends to that name's values, ``set``/``setlist`` replace
    them in place (the header keeps its position), ``getlist`` returns the stored list itself,
    ``get`` of a header set to ``[]`` raises IndexError, ``str()`` prints one ``Name: value``
    line per value in insertion order and the empty line. Why not sipmessage's: it keeps a list
    of (name, values) and lowers every name on every lookup, O(n) per call and O(n²) per
    parsed message; a proxy hop reads and writes a dozen headers, so that was a quarter of the
    call's CPU. A dict keyed by the lower-case name keeps insertion order (Python 3.7+), which
    is all the list gave.

    Every message this module parses or builds carries one; messages built with sipmessage's
    own constructors keep theirs, and every function here accepts both.
    """

    def __init__(self, entries: Iterable[tuple[str, str]] = ()) -> None:
        # sipmessage's __init__ only creates the list this class replaces; not called.
        self._index: dict[str, tuple[str, list[str]]] = {}
        #: The index is shared with a copy (or the store it was copied from): it is copied
        #: before either changes it (see :meth:`copy`).
        self._shared = False
        for name, value in entries:
            self.add(name, value)

    def copy(self) -> HeaderStore:
        """An independent copy: changing one never changes the other.

        The two share their entries until either is about to change them, or hands out a
        list it could change (``getlist``, ``items``): most messages are read and never
        changed (a user agent's answer, the trace's facts), and a parsed message is copied
        out of the parse cache every time."""
        new = HeaderStore.__new__(HeaderStore)
        new._index = self._index
        new._shared = self._shared = True
        return new

    def _own(self) -> dict[str, tuple[str, list[str]]]:
        """The index, this store's alone (copied first when shared)."""
        if self._shared:
            self._index = {key: (name, list(values)) for key, (name, values) in self._index.items()}
            self._shared = False
        return self._index

    def add(self, key: str, value: str) -> None:
        ikey = key.lower()
        index = self._own()
        entry = index.get(ikey)
        if entry is None:
            index[ikey] = (key, [value])
        else:
            entry[1].append(value)

    def get(self, key: str, default: str | None = None) -> str | None:
        entry = self._index.get(key.lower())
        return default if entry is None else entry[1][0]

    def getlist(self, key: str) -> list[str]:
        entry = self._own().get(key.lower())
        return [] if entry is None else entry[1]

    def peek(self, key: str) -> Sequence[str]:
        """The values of ``key``, to read only: the stored list, as :meth:`getlist` gives it,
        but without copying a shared index first (so it must not be changed)."""
        entry = self._index.get(key.lower())
        return () if entry is None else entry[1]

    def keys(self) -> list[str]:
        return [name for name, _values in self._index.values()]

    def items(self) -> list[tuple[str, list[str]]]:
        """(name, values) of every header, in order; the value lists are the stored ones."""
        return list(self._own().values())

    def remove(self, key: str) -> None:
        ikey = key.lower()
        if ikey in self._index:
            self._own().pop(ikey, None)

    def set(self, key: str, value: str) -> None:
        self.setlist(key, [value])

    def setlist(self, key: str, values: list[str]) -> None:
        ikey = key.lower()
        index = self._own()
        entry = index.get(ikey)
        # Assigning to an existing dict key keeps its position: the header stays where it was.
        index[ikey] = (key if entry is None else entry[0], values)

    def __getitem__(self, key: str) -> str:
        entry = self._index.get(key.lower())
        if entry is None:
            raise KeyError(key)
        return entry[1][0]

    def __str__(self) -> str:
        out = [f"{name}: {value}\r\n" for name, values in self._index.values() for value in values]
        return "".join(out) + "\r\n"

    def __repr__(self) -> str:
        return f"HeaderStore({[(n, v) for n, values in self._index.values() for v in values]!r})"


def _values(headers: Headers, key: str) -> Sequence[str]:
    """The values of a header, to read only (a :class:`HeaderStore` copies nothing)."""
    return headers.peek(key) if isinstance(headers, HeaderStore) else headers.getlist(key)


# --------------------------------------------------------------------------------------------
# Parsing


class _Field(NamedTuple):
    line: int  # 1-based line number of the header's first line
    name: str  # as received (compact forms too)
    key: str  # lower-case full name (compact form expanded)
    value: str  # unfolded, without the surrounding white space


@cached(maxsize=256, max_key=64)
def _name_key(name: str) -> str | None:
    """The lower-case full name of a header name (compact form expanded), None when the name
    is not a token. Cached: a call uses a few dozen names."""
    if not _TOKEN.fullmatch(name):
        return None
    return COMPACT_FORMS.get(name.lower(), name).lower()


#: The longest header value or Request-URI handed to sipmessage's grammar. Real ones are a few
#: hundred characters (the lab's longest, a Via list, under 300); the bound keeps the worst
#: case of its backtracking URI patterns near a tenth of a second.
MAX_PARSED_VALUE: Final = 4096


def _translate(
    what: str, line: int | None, parse: Callable[..., _T], value: _A, *more: object
) -> _T:
    """Run one of sipmessage's parsers on ``value``; its failures become a SipError. A value
    longer than :data:`MAX_PARSED_VALUE` is refused first: sipmessage's URI grammar backtracks
    quadratically on hostile input (``tel:+`` and 32,000 digits took 19 s)."""
    if isinstance(value, str) and len(value) > MAX_PARSED_VALUE:
        raise SipError(
            f"{what}: {len(value)} characters, over the {MAX_PARSED_VALUE} a value may have",
            line=line,
        )
    try:
        return parse(value, *more)
    except SipError:
        raise
    # sipmessage raises ValueError, but also KeyError/IndexError/TypeError on some inputs, and
    # int() raises ValueError past 4300 digits; none of that may escape a codec of this package.
    except Exception as exc:
        raise SipError(f"{what}: {exc}", line=line) from exc


def _decode_line(raw: bytes, line: int) -> str:
    if b"\r" in raw or b"\n" in raw:
        raise SipError("bare CR or LF inside a line (lines end with CRLF, RFC 3261 §7)", line=line)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SipError(f"invalid UTF-8 at column {exc.start + 1}", line=line) from None
    return text


def _check_start_line(text: str, line: int, has_ctl: bool = True) -> tuple[str, str | None]:
    """Return the start line sipmessage will read, and the request method (None: response)."""
    if (has_ctl and _CTL.search(text)) or text[:1].isspace():
        raise SipError(f"bad start line {text[:80]!r}", line=line)
    # RFC 3261 §7.1: the SIP-Version string is case-insensitive, but we send upper case.
    if text[:4].upper() == "SIP/":
        # §7.2: Status-Line = SIP-Version SP Status-Code SP Reason-Phrase CRLF
        parts = text.split(" ", 2)
        if len(parts) != 3 or parts[0].upper() != "SIP/2.0":
            raise SipError(
                f"bad status line {text[:80]!r}: expected 'SIP/2.0 SP 3DIGIT SP Reason-Phrase'",
                line=line,
            )
        code = parts[1]
        if not (len(code) == 3 and code.isascii() and code.isdigit() and "1" <= code[0] <= "6"):
            raise SipError(f"bad status code {code[:20]!r}: expected 100-699", line=line)
        return f"SIP/2.0 {code} {parts[2]}", None
    # §7.1: Request-Line = Method SP Request-URI SP SIP-Version CRLF
    parts = text.split(" ")
    if len(parts) != 3 or parts[2].upper() != "SIP/2.0" or not parts[1]:
        raise SipError(
            f"bad request line {text[:80]!r}: expected 'METHOD SP Request-URI SP SIP/2.0'",
            line=line,
        )
    method, uri = parts[0], parts[1]
    if not _TOKEN.fullmatch(method):
        raise SipError(f"bad request method {method[:40]!r}", line=line)
    if uri not in _parse_uri:
        _translate(f"Request-URI {uri[:80]!r}", line, _parse_uri, uri)
    return f"{method} {uri} SIP/2.0", method


@cached(maxsize=1024, max_key=1024)
def _header_line(text: str) -> tuple[str, str, str] | None:
    """(name, key, value) of a line holding one whole header (the usual case); None for a
    continuation line or a line that is not a header (the caller names the fault).
    Cached: a message crosses four hops with most of its lines unchanged."""
    if text[:1] in (" ", "\t"):
        return None
    name, colon, value = text.partition(":")
    name = name.rstrip(" \t")
    key = _name_key(name)
    if not colon or key is None:
        return None
    return name, key, value.strip(" \t")


def _split_fields(lines: list[str], first: int, has_ctl: bool = True) -> list[_Field]:
    """Unfold header lines (RFC 3261 §7.3.1) into fields; ``first`` is the first line's number.

    ``has_ctl`` False says the caller has checked that no line holds a control character.
    """
    fields: list[_Field] = []
    # The header being read: its line number, name, key and value parts.
    lineno_0, name_0, key_0 = 0, "", ""
    parts: list[str] | None = None
    for i, text in enumerate(lines):
        lineno = first + i
        if not has_ctl and (known := _header_line(text)) is not None:
            # A whole header line seen before: the same name, key and value as below.
            if parts is not None:
                joined = parts[0] if len(parts) == 1 else " ".join(parts).strip(" \t")
                fields.append(_Field(lineno_0, name_0, key_0, joined))
            lineno_0, (name_0, key_0, value_0) = lineno, known
            parts = [value_0]
            continue
        if has_ctl and _CTL.search(text):
            raise SipError("control character in header line", line=lineno)
        if text[:1] in (" ", "\t"):
            # §7.3.1: a line starting with white space continues the previous header; the CRLF
            # and the leading white space are equivalent to one SP.
            if parts is None:
                raise SipError("continuation line with no header before it", line=lineno)
            parts.append(text.strip(" \t"))
            continue
        # §7.3.1: name HCOLON value, HCOLON = *( SP / HTAB ) ":" SWS.
        name, colon, value = text.partition(":")
        if not colon:
            raise SipError(f"header line without a colon: {text[:80]!r}", line=lineno)
        name = name.rstrip(" \t")
        key = _name_key(name)
        if key is None:
            raise SipError(f"bad header name {name[:40]!r}", line=lineno)
        if parts is not None:
            joined = parts[0] if len(parts) == 1 else " ".join(parts).strip(" \t")
            fields.append(_Field(lineno_0, name_0, key_0, joined))
        lineno_0, name_0, key_0, parts = lineno, name, key, [value.strip(" \t")]
    if parts is not None:
        joined = parts[0] if len(parts) == 1 else " ".join(parts).strip(" \t")
        fields.append(_Field(lineno_0, name_0, key_0, joined))
    return fields


# The typed checks of header values, cached by value: a message crosses four hops, and on each
# the receiver, the trace and the outcome read it, so the same From, To, Contact, Route and
# lower Via values come back dozens of times per call. sipmessage's parsers take ~20 us each.
# sipmessage's values are frozen dataclasses, so one parsed value can serve every message
# that carries the same text (proxies and user agents read the same headers on every hop).
@memo(maxsize=4096, max_key=512)
def _parse_vias(value: str) -> tuple[Via, ...]:
    return tuple(Via.parse_many(value))


@memo(maxsize=4096, max_key=512)
def _parse_addresses(value: str) -> tuple[Address, ...]:
    return tuple(Address.parse_many(value))


@memo(maxsize=4096, max_key=512)
def _parse_address(value: str) -> Address:
    return Address.parse(value)


@memo(maxsize=1024, max_key=512)
def _parse_cseq(value: str) -> CSeq:
    return CSeq.parse(value)


def _address_ok(value: str, many: bool) -> bool:
    if many:
        _parse_addresses(value)
    else:
        _parse_address(value)
    return True


@cached(maxsize=1024, max_key=512)
def _media_type_ok(value: str) -> bool:
    MediaType.parse(value)
    return True


@memo(maxsize=1024, max_key=512)
def _parse_uri(value: str) -> URI:
    return URI.parse(value)


# The headers _value_ok checks.
_TYPED: Final = frozenset(
    {"via", "from", "to", "route", "record-route", "contact", "call-id", "cseq",
     "max-forwards", "content-type", "content-length"}
)  # fmt: skip


@cached(maxsize=4096, max_key=512)
def _value_ok(key: str, name: str, value: str) -> bool:
    """The checks of one header value that depend on nothing else in the message.

    Raises SipError without a line number (the caller adds it). Cached: most values come back
    unchanged on every hop (the cache keeps successes only).
    """
    what = f"{name} header"
    if key in _LISTS and not value.strip():
        # §20: each of these holds at least one value; sipmessage, which strips any Unicode
        # white space, would return [] instead.
        raise SipError(f"{what}: empty value")
    if key == "via":
        for v in _translate(what, None, _parse_vias, value):
            if v.port is not None and not 0 < v.port < 65536:
                raise SipError(f"Via: port {v.port} out of range")
    elif key in ("from", "to"):
        _translate(what, None, _address_ok, value, False)
    elif key in ("route", "record-route"):
        _translate(what, None, _address_ok, value, True)
    elif key == "contact":
        if value != "*":  # §10.2.2: "Contact: *" removes all bindings
            _translate(what, None, _address_ok, value, True)
    elif key == "call-id":
        # §25.1: callid = word [ "@" word ]; no white space inside.
        if not value or _SPACE.search(value):
            raise SipError(f"Call-ID: bad value {value[:80]!r}")
    elif key == "cseq":
        m = _CSEQ.fullmatch(value)
        if m is None:
            raise SipError(f"CSeq: bad value {value[:80]!r}: expected 'number SP method'")
        # §8.1.1.5: the sequence number is a 32-bit unsigned integer.
        if int(m.group(1)) > 0xFFFFFFFF:
            raise SipError(f"CSeq: number {m.group(1)} exceeds 2**32-1")
    elif key == "max-forwards":
        if not _DIGITS.fullmatch(value):
            raise SipError(f"Max-Forwards: not a number: {value[:40]!r}")
    elif key == "content-type":
        _translate(what, None, _media_type_ok, value)
    elif key == "content-length":
        # §20.14 (and §7.3.1 for the LWS sipp puts before the number).
        if not _DIGITS.fullmatch(value):
            raise SipError(f"Content-Length: not a number: {value[:40]!r}")
    return True


def _check_fields(fields: list[_Field], method: str | None, body: bytes) -> None:
    """Typed checks of the headers this package reads, each failure naming its line."""
    seen: dict[str, _Field] = {}
    for f in fields:
        if f.key in _SINGLE and f.key in seen:
            raise SipError(
                f"{_CANONICAL[f.key]}: header appears twice (first on line {seen[f.key].line})",
                line=f.line,
            )
        seen.setdefault(f.key, f)

    mandatory = _MANDATORY + (("max-forwards",) if method is not None else ())
    for key in mandatory:
        if key not in seen:
            kind = f"{method} request" if method is not None else "response"
            raise SipError(
                f"missing mandatory {_CANONICAL[key]} header in {kind} (RFC 3261 §8.1.1)"
            )

    first_via = True
    for f in fields:
        key = f.key
        if key in _TYPED:
            try:
                _value_ok(key, f.name, f.value)
            except SipError as exc:
                raise SipError(exc.reason, line=f.line) from exc.__cause__
        # What depends on the rest of the message, after each value's own checks.
        if key == "via" and first_via:
            # RFC 3261 §8.1.1.7: the top Via carries the transaction's branch. Both RFC 3261
            # (magic cookie) and older branches are accepted; see is_rfc3261_branch().
            first_via = False
            if not _parse_vias(f.value)[0].parameters.get("branch"):
                raise SipError("top Via has no branch parameter (RFC 3261 §8.1.1.7)", line=f.line)
        elif key == "cseq" and method is not None:
            m = _CSEQ.fullmatch(f.value)
            assert m is not None  # _value_ok checked it
            if (cseq_method := m.group(2)) != method:
                raise SipError(
                    f"CSeq: method {cseq_method!r} does not match request method {method!r}",
                    line=f.line,
                )
        elif key == "content-length" and int(f.value) != len(body):
            raise SipError(
                f"Content-Length: header says {int(f.value)} bytes "
                f"but the body has {len(body)} bytes",
                line=f.line,
            )

    if body and "content-type" not in seen:
        raise SipError(
            f"a body of {len(body)} bytes without Content-Type (RFC 3261 §20.15)",
            line=seen["content-length"].line if "content-length" in seen else None,
        )


class _Line(NamedTuple):
    """What one whole header line says, in whichever message holds it."""

    key: str  # lower-case full name (compact form expanded)
    stored_name: str  # the name a HeaderStore keeps (compact form expanded, spelling kept)
    stored_value: str  # the value a HeaderStore keeps (str.strip(), as Message.parse does)
    single: bool  # the header may appear once (_SINGLE)
    branch: bool  # a Via line whose first value has a branch (§8.1.1.7)
    cseq_method: str  # a CSeq line's method ("" for other lines)
    length: int  # a Content-Length line's number (-1 for other lines)


#: Header lines seen before: the text of a whole line (no folding) -> its :class:`_Line`, or
#: None when it is not a whole header line or its value fails :func:`_value_ok` (the general
#: path then names the fault and its line). A message crosses four hops with most of its
#: lines unchanged, so most lines are found here with one dict lookup. Bounded like the
#: codec caches (labsim.wire.cache): lines up to _LINE_KEY characters, _LINES_SIZE of them
#: (4 MiB of text at most), emptied when full.
_LINES: dict[str, _Line | None] = {}
_LINES_SIZE: Final = 4096
_LINE_KEY: Final = 1024
_UNKNOWN: Final = _Line("", "", "", False, False, "", -1)


def _learn_line(text: str) -> _Line | None:
    """The :class:`_Line` of ``text``, remembered when short enough."""
    line: _Line | None = None
    found = _header_line(text)
    if found is not None:
        name, key, value = found
        try:
            if key in _TYPED:
                _value_ok(key, name, value)
        except SipError:
            pass
        else:
            branch, cseq_method, length = False, "", -1
            if key == "via":
                first = _parse_vias(value)
                branch = bool(first and first[0].parameters.get("branch"))
            elif key == "cseq":
                m = _CSEQ.fullmatch(value)
                assert m is not None  # _value_ok checked it
                cseq_method = m.group(2)
            elif key == "content-length":
                length = int(value)
            line = _Line(
                key, COMPACT_FORMS.get(name.lower(), name), value.strip(), key in _SINGLE,
                branch, cseq_method, length,
            )  # fmt: skip
    if len(text) <= _LINE_KEY:
        if len(_LINES) >= _LINES_SIZE:
            _LINES.clear()
        _LINES[text] = line
    return line


def _known_lines(lines: list[str]) -> list[_Line] | None:
    """The :class:`_Line` of every header line (``lines[0]`` is the start line), or None when
    one is not a whole header line with a good value (folding, a bad value: the general path
    handles those)."""
    known: list[_Line] = []
    get = _LINES.get
    for text in lines[1:]:
        line = get(text, _UNKNOWN)
        if line is _UNKNOWN:
            line = _learn_line(text)
        if line is None:
            return None
        known.append(line)
    return known


def _known_ok(known: list[_Line], method: str | None, body: bytes) -> bool:
    """Whether a message of good header lines passes what :func:`_check_fields` checks
    across them; False sends it down the general path, which names the fault."""
    seen: set[str] = set()
    first_via = True
    for line in known:
        key = line.key
        if line.single and key in seen:
            return False
        seen.add(key)
        if key == "via" and first_via:
            first_via = False
            if not line.branch:
                return False
        elif key == "cseq" and method is not None:
            if line.cseq_method != method:
                return False
        elif key == "content-length" and line.length != len(body):
            return False
    if not seen.issuperset(_MANDATORY):
        return False
    if method is not None and "max-forwards" not in seen:
        return False
    return not body or "content-type" in seen


def parse_message(data: bytes | bytearray | memoryview) -> Request | Response:
    """Parse one whole SIP message; raise :class:`SipError` (with ``line``) on any fault.

    ``data`` is one message as a stream splitter cut it (header block, empty line, body).
    A message without Content-Length is accepted (its body is everything after the empty line,
    as on UDP, RFC 3261 §18.3); with one, the body must have exactly that length.

    Each call returns a new message object with its own :class:`HeaderStore` (callers change
    them: a proxy pushes its Via); the checks and the parse of bytes seen before are not
    repeated.
    """
    if isinstance(data, bytearray | memoryview):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise SipError(f"a SIP message is bytes, not {type(data).__name__}")
    return (_parsed.get(data) or _parsed(data)).message()


@dataclasses.dataclass(frozen=True, slots=True)
class _Parsed:
    """A checked and parsed message, shared by every parse of the same bytes. Its header
    store is never handed out: :meth:`message` gives each caller a copy."""

    method: str | None  # None: a response
    uri: URI | None
    code: int
    phrase: str
    headers: HeaderStore
    body: bytes

    def message(self) -> Request | Response:
        msg: Request | Response
        if self.method is not None:
            assert self.uri is not None
            msg = Request(self.method, self.uri, self.body)
        else:
            msg = Response(self.code, self.phrase, self.body)
        msg.headers = self.headers.copy()
        return msg


# A message crosses four hops and is parsed by each receiver, the trace and the outcome: the
# same bytes come back several times, and every object cached here is immutable or copied out.
@memo(maxsize=512, max_key=16 * 1024)
def _parsed(data: bytes) -> _Parsed:
    # RFC 3261 §7.5: ignore CRLFs before the start line (stream keep-alives); line numbers still
    # count them, so they match the bytes the caller holds.
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2
    skipped, data = start // 2, data[start:]
    if not data:
        raise SipError("empty message")
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise SipError(
            "header block not ended by an empty line (CRLF CRLF)",
            line=skipped + data.count(b"\r\n") + 1,
        )
    head, body = data[:end], data[end + 4 :]
    raw_lines = head.split(b"\r\n")
    # The whole block at once, line by line only to name a fault: the CRLFs that end its lines
    # are then its only CTL bytes (UTF-8 puts none inside a character), and a sequence that
    # cannot span a CRLF decodes as a whole exactly when every line does.
    has_ctl = len(head) - len(head.translate(None, _CTL_BYTES)) != 2 * (len(raw_lines) - 1)
    try:
        if has_ctl:
            raise UnicodeError  # bare CR or LF first, as the line by line checks do
        lines = head.decode("utf-8").split("\r\n")
    except UnicodeError:
        lines = [_decode_line(raw, skipped + i + 1) for i, raw in enumerate(raw_lines)]

    start_line, method = _check_start_line(lines[0], skipped + 1, has_ctl)
    known = None if has_ctl else _known_lines(lines)
    if known is not None and _known_ok(known, method, body):
        headers = HeaderStore()
        index = headers._index
        for line in known:
            entry = index.get(line.key)
            if entry is None:
                index[line.key] = (line.stored_name, [line.stored_value])
            else:
                entry[1].append(line.stored_value)
        return _parsed_from(start_line, headers, body)
    fields = _split_fields(lines[1:], skipped + 2, has_ctl)
    _check_fields(fields, method, body)

    # What sipmessage's Message.parse makes of the normalized message (start line, one
    # "Name: value" line per unfolded field), done here instead of printing that text and
    # having sipmessage read it back: its header list costs O(n) per header added.
    headers = HeaderStore()
    index = headers._index
    for f in fields:
        # Message.parse: compact forms become full names (RFC 3261 §7.3.3), kept as spelled
        # first; values lose surrounding white space (str.strip(): Unicode white space too).
        entry = index.get(f.key)
        if entry is None:
            index[f.key] = (COMPACT_FORMS.get(f.name.lower(), f.name), [f.value.strip()])
        else:
            entry[1].append(f.value.strip())
    return _parsed_from(start_line, headers, body)


def _parsed_from(start_line: str, headers: HeaderStore, body: bytes) -> _Parsed:
    # The normalized start line always splits in three; as in Message.parse, a third part
    # "SIP/2.0" makes a request (a status line whose reason phrase is "SIP/2.0" then fails).
    bits = start_line.split(" ", 2)
    if bits[2] == "SIP/2.0":
        uri = _parse_uri.get(bits[1]) or _translate(
            "sipmessage rejected the message", None, _parse_uri, bits[1]
        )
        return _Parsed(bits[0], uri, 0, "", headers, body)
    return _Parsed(None, None, int(bits[1]), bits[2], headers, body)


# --------------------------------------------------------------------------------------------
# Typed accessors. On a message from parse_message they never raise; on a message changed by
# hand they raise SipError, never sipmessage's own exceptions.


def _required(msg: SipMessage, name: str) -> str:
    value = msg.headers.get(name)
    if value is None:
        raise SipError(f"no {name} header")
    return value


def vias(msg: SipMessage) -> list[Via]:
    """All Via values, top first (RFC 3261 §20.42)."""
    found: list[Via] = []
    for value in _values(msg.headers, "Via"):
        known = _parse_vias.get(value)
        found += known if known is not None else _translate("Via header", None, _parse_vias, value)
    return found


def top_via(msg: SipMessage) -> Via:
    """The topmost Via: the previous hop of a request, the next hop of a response."""
    found = vias(msg)
    if not found:
        raise SipError("no Via header")
    return found[0]


def via_branch(via: Via) -> str | None:
    """The ``branch`` parameter (RFC 3261 §8.1.1.7), or None."""
    return via.parameters.get("branch")


def is_rfc3261_branch(branch: str | None) -> bool:
    """Whether ``branch`` carries the RFC 3261 magic cookie, so it alone names a transaction
    (§17.2.3); otherwise the RFC 2543 matching rules would apply."""
    return branch is not None and branch.startswith(MAGIC_COOKIE) and len(branch) > 7


def via_received(via: Via) -> str | None:
    """The ``received`` parameter a server added (RFC 3261 §18.2.1), or None."""
    return via.parameters.get("received")


def via_rport(via: Via) -> int | None:
    """The port filled in by a server in ``rport`` (RFC 3581 §4); None if absent or still empty.

    ``"rport" in via.parameters`` tells whether the client asked for it.
    """
    value = via.parameters.get("rport")
    return int(value) if value is not None and _DIGITS.fullmatch(value) else None


def parse_address(value: str) -> Address:
    """A name-addr or addr-spec given as text (a Route value kept by a dialog, say); cached."""
    return _translate("address", None, _parse_address, value)


def from_address(msg: SipMessage) -> Address:
    """The From value (RFC 3261 §20.20)."""
    value = _required(msg, "From")
    return _parse_address.get(value) or _translate("From header", None, _parse_address, value)


def to_address(msg: SipMessage) -> Address:
    """The To value (RFC 3261 §20.39)."""
    value = _required(msg, "To")
    return _parse_address.get(value) or _translate("To header", None, _parse_address, value)


#: From and To values -> (their tag,): every element reads the tags of every message, and
#: the parsed address's parameters are a Mapping whose get() is slow. Bounded like the codec
#: caches (labsim.wire.cache): values up to 512 characters, 4096 of them, emptied when full.
_TAGS: dict[str, tuple[str | None]] = {}


def _tag(value: str, what: str) -> str | None:
    found = _TAGS.get(value)
    if found is None:
        address = _parse_address.get(value) or _translate(what, None, _parse_address, value)
        found = (address.parameters.get("tag"),)
        if len(value) <= 512:
            if len(_TAGS) >= 4096:
                _TAGS.clear()
            _TAGS[value] = found
    return found[0]


def from_tag(msg: SipMessage) -> str | None:
    """The From tag (RFC 3261 §19.3), or None."""
    return _tag(_required(msg, "From"), "From header")


def to_tag(msg: SipMessage) -> str | None:
    """The To tag (RFC 3261 §19.3); None in a request outside a dialog."""
    return _tag(_required(msg, "To"), "To header")


def with_tag(address: Address, tag: str) -> Address:
    """``address`` with its ``tag`` parameter set (for From/To, RFC 3261 §19.3)."""
    return dataclasses.replace(address, parameters=address.parameters.replace(tag=tag))


def call_id(msg: SipMessage) -> str:
    """The Call-ID (RFC 3261 §20.8)."""
    return _required(msg, "Call-ID")


def cseq(msg: SipMessage) -> CSeq:
    """The CSeq number and method (RFC 3261 §20.16)."""
    value = _required(msg, "CSeq")
    return _parse_cseq.get(value) or _translate("CSeq header", None, _parse_cseq, value)


def _address_list(msg: SipMessage, name: str) -> list[Address]:
    found: list[Address] = []
    for value in _values(msg.headers, name):
        if name == "Contact" and value.strip() == "*":
            continue
        known = _parse_addresses.get(value)
        found += (
            known if known is not None
            else _translate(f"{name} header", None, _parse_addresses, value)
        )  # fmt: skip
    return found


def contact(msg: SipMessage) -> list[Address]:
    """The Contact values (RFC 3261 §20.10); ``Contact: *`` gives an empty list."""
    return _address_list(msg, "Contact")


def record_route(msg: SipMessage) -> list[Address]:
    """The Record-Route values, top (last proxy) first (RFC 3261 §20.30)."""
    return _address_list(msg, "Record-Route")


def route(msg: SipMessage) -> list[Address]:
    """The Route values, next hop first (RFC 3261 §20.34)."""
    return _address_list(msg, "Route")


def content_type(msg: SipMessage) -> MediaType | None:
    """The Content-Type (RFC 3261 §20.15), or None."""
    value: MediaType | None = _translate("Content-Type header", None, lambda m: m.content_type, msg)
    return value


def content_length(msg: SipMessage) -> int | None:
    """The Content-Length header's value (RFC 3261 §20.14), or None when absent."""
    return _number_header(msg, "Content-Length")


def max_forwards(msg: SipMessage) -> int | None:
    """The Max-Forwards value (RFC 3261 §20.22), or None when absent."""
    return _number_header(msg, "Max-Forwards")


def _number_header(msg: SipMessage, name: str) -> int | None:
    """A header whose value is a decimal number (1*DIGIT, RFC 3261 §25.1), or None when absent."""
    value = msg.headers.get(name)
    if value is None:
        return None
    if not _DIGITS.fullmatch(value.strip()):
        raise SipError(f"{name}: not a number: {value[:40]!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# ms-diagnostics (MS-SIPRE; PROTOCOL.md §5.4)

_DIAG_CODE = re.compile(r"[ \t]*([0-9]{1,10})[ \t]*")
_DIAG_PARAM = re.compile(
    r";[ \t]*([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*=[ \t]*"
    r"(?:\"((?:[^\"\\]|\\.)*)\"|([A-Za-z0-9\-.!%*_+`'~]+))[ \t]*"
)
_QUOTED_PAIR = re.compile(r"\\(.)")


def _quote_string(value: str) -> str:
    # RFC 3261 §25.1 quoted-string: '\' and '"' travel as quoted-pairs.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclasses.dataclass(frozen=True)
class MsDiagnostics:
    """An ``ms-diagnostics`` or ``ms-diagnostics-public`` value: a Lync/SfB component error.

    ``21002;reason="Attendees cannot share in this conference";component="ASMCU"`` is
    ``MsDiagnostics(21002, "Attendees cannot share in this conference", (("component",
    "ASMCU"),))``. :meth:`parse` accepts any ``;name="value"`` and ``;name=token`` pairs in any
    order; ``str()`` writes the form Lync sends: the code, the reason, then the other pairs in
    their order, every value quoted.
    """

    code: int
    """The diagnostic code, e.g. 21002."""
    reason: str | None
    """The ``reason`` text, unquoted; None when absent."""
    params: tuple[tuple[str, str], ...] = ()
    """The other parameters (``source``, ``component``, ...), unquoted, in order."""

    @classmethod
    def parse(cls, value: str) -> MsDiagnostics:
        """Parse a header value; raise :class:`SipError` naming the fault."""
        m = _DIAG_CODE.match(value)
        if m is None:
            raise SipError(f"ms-diagnostics: expected a numeric code, got {value[:40]!r}")
        code = int(m.group(1))
        pos = m.end()
        reason: str | None = None
        params: list[tuple[str, str]] = []
        while pos < len(value):
            p = _DIAG_PARAM.match(value, pos)
            if p is None:
                raise SipError(
                    f"ms-diagnostics: expected ';name=\"value\"' at column {pos + 1}, "
                    f"got {value[pos : pos + 40]!r}"
                )
            name, quoted, token = p.group(1), p.group(2), p.group(3)
            text = _QUOTED_PAIR.sub(r"\1", quoted) if quoted is not None else token
            if name.lower() == "reason":
                if reason is not None:
                    raise SipError("ms-diagnostics: reason given twice")
                reason = text
            else:
                params.append((name, text))
            pos = p.end()
        return cls(code, reason, tuple(params))

    def get(self, name: str) -> str | None:
        """The first parameter called ``name`` (case-insensitive), or None."""
        if name.lower() == "reason":
            return self.reason
        for key, value in self.params:
            if key.lower() == name.lower():
                return value
        return None

    def __str__(self) -> str:
        out = str(self.code)
        if self.reason is not None:
            out += ";reason=" + _quote_string(self.reason)
        for name, value in self.params:
            out += f";{name}={_quote_string(value)}"
        return out


def _diagnostics(msg: SipMessage, name: str) -> MsDiagnostics | None:
    value = msg.headers.get(name)
    return None if value is None else MsDiagnostics.parse(value)


def ms_diagnostics(msg: SipMessage) -> MsDiagnostics | None:
    """The first ``ms-diagnostics`` value (MS-SIPRE), or None; SipError if it is garbage.

    parse_message does not check this header: a malformed extension header should not cost
    the whole response, so the error comes only when the value is asked for.
    """
    return _diagnostics(msg, "ms-diagnostics")


def ms_diagnostics_public(msg: SipMessage) -> MsDiagnostics | None:
    """The first ``ms-diagnostics-public`` value (the variant that crosses the Edge), or None."""
    return _diagnostics(msg, "ms-diagnostics-public")


def diagnostics_text(msg: SipMessage) -> str:
    """``ms-diagnostics-public`` (else ``ms-diagnostics``) for a log line or a verdict: the
    parsed value, or the raw text when it does not parse (a peer's malformed header must not
    hide the answer it came with); "" when there is none."""
    try:
        found = ms_diagnostics_public(msg) or ms_diagnostics(msg)
    except SipError:
        raw = msg.headers.get("ms-diagnostics-public") or msg.headers.get("ms-diagnostics")
        return f"unparsable ms-diagnostics {(raw or '')[:120]!r}"
    return str(found) if found else ""


def reason_header(cause: int, text: str) -> str:
    """A Reason header value (RFC 3326 §2): ``SIP ;cause=408 ;text="..."``. The text is made
    safe for a quoted-string of plain ASCII (RFC 3261 §25.1): ``·`` and ``§`` are spelled out,
    other characters, quotes and backslashes are left out."""
    text = text.replace("·", "*").replace("§", "s").replace("→", "->")
    safe = "".join(c for c in text if " " <= c <= "~" and c not in '"\\')
    return f'SIP ;cause={cause} ;text="{safe[:200]}"'


def reason_text(msg: SipMessage) -> str:
    """The Reason header (RFC 3326) as it stands, "" without one: why a BYE ended a call."""
    return (msg.headers.get("Reason") or "").strip()


# --------------------------------------------------------------------------------------------
# Formatting (see the module docstring for why not str() of the sipmessage values)


def _format_uri_params(params: Mapping[str, str | None]) -> str:
    out = ""
    for key, value in params.items():
        out += ";" + urllib.parse.quote(key, safe=_URI_PARAM_SAFE)
        if value is not None:
            out += "=" + urllib.parse.quote(value, safe=_URI_PARAM_SAFE)
    return out


def _format_header_params(params: Mapping[str, str | None]) -> str:
    # RFC 3261 §25.1 generic-param = token [ EQUAL gen-value ]; gen-value = token / host /
    # quoted-string. A value that is none of those is written as a quoted-string.
    out = ""
    for key, value in params.items():
        out += ";" + key
        if value is not None:
            out += "=" + (value if _GENERIC_VALUE.fullmatch(value) else _quote_string(value))
    return out


class _ByIdentity(Generic[_K, _T]):
    """A pure function of frozen but unhashable values, remembered by identity.

    sipmessage's URI and Address are frozen dataclasses, but their ``parameters`` is a
    ``Mapping``, which has no hash, so ``functools.lru_cache`` cannot key on them. The parsers
    above are cached, so the same object comes back for the same text on every hop; each entry
    keeps its value alive, so an ``id`` in the table is never one of a newer object.
    """

    def __init__(self, fn: Callable[[_K], _T], size: int = 512) -> None:
        self._fn = fn
        self._size = size
        self._table: dict[int, tuple[_K, _T]] = {}

    def __call__(self, value: _K) -> _T:
        entry = self._table.get(id(value))
        if entry is not None and entry[0] is value:
            return entry[1]
        result = self._fn(value)
        if len(self._table) >= self._size:
            self._table.clear()
        self._table[id(value)] = (value, result)
        return result


def _format_uri(uri: URI) -> str:
    if uri.scheme == "tel":
        return f"tel:{uri.user or ''}{_format_uri_params(uri.parameters)}"
    out = uri.scheme + ":"
    if uri.user is not None:
        out += urllib.parse.quote(uri.user, safe=grammar.C_USER_SAFE)
        if uri.password is not None:
            out += ":" + urllib.parse.quote(uri.password, safe=grammar.C_PASSWORD_SAFE)
        out += "@"
    out += uri.host
    if uri.port is not None:
        out += f":{uri.port}"
    return out + _format_uri_params(uri.parameters)


def _format_address(address: Address) -> str:
    out = _quote_string(address.name) + " " if address.name else ""
    return f"{out}<{format_uri(address.uri)}>{_format_header_params(address.parameters)}"


_uri_text = _ByIdentity(_format_uri)
_address_text_of = _ByIdentity(_format_address)


def format_uri(uri: URI) -> str:
    """``uri`` as it goes on the wire, parameters escaped only as RFC 3261 §25.1 requires."""
    return _uri_text(uri)


def format_address(address: Address) -> str:
    """A name-addr (always with ``<>``, as §20.10 requires when the URI has parameters)."""
    return _address_text_of(address)


def format_via(via: Via) -> str:
    """A Via value (RFC 3261 §20.42)."""
    out = f"SIP/2.0/{via.transport} {via.host}"
    if via.port is not None:
        out += f":{via.port}"
    return out + _format_header_params(via.parameters)


def _format_media_type(media_type: MediaType) -> str:
    return media_type.mime_type + _format_header_params(media_type.parameters)


def _address_text(value: Address | str, what: str) -> str:
    """Validated header text for an Address given as a value or as text (kept as given)."""
    if isinstance(value, str):
        _translate(what, None, _parse_address, value)
        _check_header_value(what, value)
        return value.strip()
    return format_address(value)


def _check_header_value(name: str, value: str) -> None:
    # A CR or LF in a value would end the header early: header injection, or a broken message.
    if _CTL.search(value):
        raise SipError(f"{name}: control character in header value {value[:80]!r}")


def _check_header_name(name: str) -> None:
    if not _TOKEN.fullmatch(name):
        raise SipError(f"bad header name {name[:40]!r}")


# --------------------------------------------------------------------------------------------
# Builders (sans-IO: ids, tags and branches are arguments)


def _add_tail(
    msg: SipMessage,
    contact_value: Address | str | None,
    extra_headers: Iterable[tuple[str, str]],
    content_type_value: MediaType | str | None,
    body: bytes,
) -> None:
    """The headers requests and responses end with, in this order: Contact, extras, body."""
    if contact_value is not None:
        msg.headers.add("Contact", _address_text(contact_value, "Contact"))
    for name, value in extra_headers:
        _check_header_name(name)
        _check_header_value(name, value)
        msg.headers.add(name, value)
    if content_type_value is not None:
        if isinstance(content_type_value, str):
            text = content_type_value
            _translate("Content-Type", None, _media_type_ok, text)
            _check_header_value("Content-Type", text)
        else:
            text = _format_media_type(content_type_value)
        msg.headers.add("Content-Type", text)
    elif body:
        raise SipError(f"a body of {len(body)} bytes needs a Content-Type (RFC 3261 §20.15)")
    msg.headers.add("Content-Length", str(len(body)))


def build_request(
    method: str,
    uri: URI | str,
    *,
    via: Sequence[Via] | Via,
    from_addr: Address | str,
    to_addr: Address | str,
    call_id: str,
    cseq: int,
    contact: Address | str | None = None,
    route: Sequence[Address | str] = (),
    max_forwards: int = 70,
    content_type: MediaType | str | None = None,
    body: bytes = b"",
    extra_headers: Iterable[tuple[str, str]] = (),
) -> Request:
    """A request as RFC 3261 §8.1.1 lays it out; Content-Length is always set (0 when no body).

    The top Via must carry the branch the caller chose (§8.1.1.7); the From tag is part of
    ``from_addr`` (see :func:`with_tag`).
    """
    if not _TOKEN.fullmatch(method):
        raise SipError(f"bad request method {method[:40]!r}")
    target = uri if isinstance(uri, URI) else _translate("Request-URI", None, _parse_uri, uri)
    via_list = [via] if isinstance(via, Via) else list(via)
    if not via_list or not via_branch(via_list[0]):
        raise SipError("the top Via needs a branch parameter (RFC 3261 §8.1.1.7)")
    if not call_id or _SPACE.search(call_id) or _CTL.search(call_id):
        raise SipError(f"bad Call-ID {call_id[:80]!r}")
    # §8.1.1.5: a 32-bit number, below 2**31 in a new request.
    if not 0 <= cseq <= 0xFFFFFFFF:
        raise SipError(f"CSeq number {cseq} out of range")
    if max_forwards < 0:
        raise SipError(f"Max-Forwards {max_forwards} is negative")

    msg = Request(method, target, body=bytes(body))
    msg.headers = HeaderStore()
    msg.headers.setlist("Via", [format_via(v) for v in via_list])
    msg.headers.add("Max-Forwards", str(max_forwards))
    for r in route:
        msg.headers.add("Route", _address_text(r, "Route"))
    msg.headers.add("From", _address_text(from_addr, "From"))
    msg.headers.add("To", _address_text(to_addr, "To"))
    msg.headers.add("Call-ID", call_id)
    msg.headers.add("CSeq", f"{cseq} {method}")
    _add_tail(msg, contact, extra_headers, content_type, bytes(body))
    return msg


def build_response(
    request: Request,
    code: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    contact: Address | str | None = None,
    record_route: Sequence[Address | str] | None = None,
    content_type: MediaType | str | None = None,
    body: bytes = b"",
    extra_headers: Iterable[tuple[str, str]] = (),
) -> Response:
    """A response to ``request`` as RFC 3261 §8.2.6.2 requires.

    Via (all values, same order), From, Call-ID and CSeq are copied as received; To too, with
    ``;tag=to_tag`` added when the request's To has no tag (§8.2.6.2: MAY be left out of a 100).
    ``record_route=None`` copies the request's Record-Route values (§12.1.1); pass ``()`` to
    send none. ``reason`` defaults to the RFC 3261 §21 phrase for ``code``.
    """
    if not 100 <= code <= 699:
        raise SipError(f"status code {code} out of range 100-699")
    if reason is None:
        if code not in DEFAULT_REASONS:
            raise SipError(f"no default reason phrase for {code}; pass one")
        reason = DEFAULT_REASONS[code]
    _check_header_value("Reason-Phrase", reason)

    to_text = _required(request, "To")
    existing = to_address(request).parameters.get("tag")
    if to_tag is not None:
        if not _TOKEN.fullmatch(to_tag):
            raise SipError(f"bad To tag {to_tag[:40]!r}")
        if existing is None:
            # Appended to the text as received: the To value must otherwise stay unchanged.
            to_text = f"{to_text};tag={to_tag}"
        elif existing != to_tag:
            raise SipError(f"request To already has tag {existing!r}, not {to_tag!r}")

    msg = Response(code, reason, body=bytes(body))
    msg.headers = HeaderStore()
    msg.headers.setlist("Via", list(_values(request.headers, "Via")))
    rr = (
        list(_values(request.headers, "Record-Route"))
        if record_route is None
        else [_address_text(a, "Record-Route") for a in record_route]
    )
    if rr:
        msg.headers.setlist("Record-Route", rr)
    msg.headers.add("From", _required(request, "From"))
    msg.headers.add("To", to_text)
    msg.headers.add("Call-ID", _required(request, "Call-ID"))
    msg.headers.add("CSeq", _required(request, "CSeq"))
    _add_tail(msg, contact, extra_headers, content_type, bytes(body))
    return msg


def build_failure_ack(invite: Request, response: Response) -> Request:
    """RFC 3261 §17.1.1.3: the ACK for a non-2xx final answer to ``invite``: its Request-URI,
    top Via (so its branch), Call-ID, From, CSeq number and Route, and the To of the answer.
    It goes hop by hop, where the INVITE went (user agents and proxies alike)."""
    return build_request(
        "ACK",
        invite.uri,
        via=top_via(invite),
        from_addr=from_address(invite),
        to_addr=to_address(response),
        call_id=call_id(invite),
        cseq=cseq(invite).sequence,
        route=list(_values(invite.headers, "Route")),
    )


def encode(msg: SipMessage) -> bytes:
    """The bytes of ``msg``: ``bytes(msg)``, except that the Request-URI goes through
    :func:`format_uri` (see the module docstring).

    Sets the message's Content-Length to the body length first (RFC 3261 §18.3: required on
    TCP), and refuses header text that would break the framing (CR, LF, other CTLs).
    """
    headers = msg.headers
    length = str(len(msg.body))
    if isinstance(headers, HeaderStore):
        # Changed only when it must be: a message forwarded as it came keeps sharing its
        # header index with the parse cache's copy.
        headers.remove("l")
        entry = headers._index.get("content-length")
        if entry is None or entry[1] != [length]:
            headers.set("Content-Length", length)
    else:
        headers.remove("l")
        headers.set("Content-Length", length)
    if isinstance(msg, Request):
        if not _TOKEN.fullmatch(msg.method):
            raise SipError(f"bad request method {msg.method[:40]!r}")
        start = f"{msg.method} {format_uri(msg.uri)} SIP/2.0"
    else:
        if not 100 <= msg.code <= 699:
            raise SipError(f"status code {msg.code} out of range 100-699")
        _check_header_value("Reason-Phrase", msg.phrase)
        start = f"SIP/2.0 {msg.code} {msg.phrase}"
    entries = (
        list(headers._index.values())
        if isinstance(headers, HeaderStore)
        else [(name, headers.getlist(name)) for name in headers.keys()]
    )
    head = (start + "\r\n" + str(headers)).encode("utf-8")
    # One pass instead of a regex per header: the header block holds exactly the CRLFs of its
    # lines (start line, one per value, the empty line) and no other CTL when no value holds
    # one (UTF-8 never puts a byte below 0x80 inside a multi-byte character), and every name
    # is a non-empty token when their concatenation is a token. Only when that fails are the
    # headers checked one by one, to name the first bad one (a CTL on the start line, which a
    # hand-made URI could carry, is let through there as before).
    lines = 2 + sum([len(values) for _name, values in entries])
    names = [name for name, _values in entries]
    if (
        len(head) - len(head.translate(None, _CTL_BYTES)) != 2 * lines
        or not all(names)
        or not _TOKEN.fullmatch("".join(names))
    ):
        for name, values in entries:
            _check_header_name(name)
            for value in values:
                _check_header_value(name, value)
        return head + msg.body
    # Checked whole: the only CR and LF are the CRLFs of its lines, none of them empty before
    # the last, and its one Content-Length was set above. The splitters of the sender's
    # trace and of the receiver need not look for the Content-Length again.
    data = head + msg.body
    encoded_whole(data, len(head))
    return data


def summary(msg: SipMessage) -> str:
    """The one-line name ladders and JSON use: ``INVITE``, ``ACK``, ``100 Trying``, ``200 OK``."""
    if isinstance(msg, Request):
        return msg.method
    return f"{msg.code} {msg.phrase}".rstrip()


# Methods Wireshark's packet-sip.c knows (sip_methods[]); others print as "Unknown request".
_WIRESHARK_METHODS: Final = frozenset(
    {
        "ACK", "BYE", "CANCEL", "DO", "INFO", "INVITE", "MESSAGE", "NOTIFY", "OPTIONS",
        "PRACK", "QAUTH", "REFER", "REGISTER", "SPRACK", "SUBSCRIBE", "UPDATE", "PUBLISH",
    }
)  # fmt: skip


def wireshark_info(msg: SipMessage) -> str:
    """What Wireshark's SIP dissector puts in the Info column for ``msg``, exactly.

    packet-sip.c writes ``Request: `` (``Unknown request: `` for a method it does not know) and
    the request line without `` SIP/2.0``, or ``Status: `` and the status line without
    ``SIP/2.0 ``; a 200 gets the CSeq method in parentheses; then `` | `` (with its trailing
    space) closes the SIP part. Checked against tshark 4.0.17 (Debian 12), which prints
    ``Status: 200 OK (INVITE) | `` and no longer adds ``, with session description`` for SDP.
    Not included: what a body dissector may append after the bar (tshark adds
    `` (text/plain)`` for a body type it has no dissector for).
    """
    if isinstance(msg, Request):
        descr = "Request" if msg.method in _WIRESHARK_METHODS else "Unknown request"
        info = f"{descr}: {msg.method} {format_uri(msg.uri)}"
    else:
        info = f"Status: {msg.code} {msg.phrase}"
        if msg.code == 200:
            info += f" ({cseq(msg).method})"
    return info + " | "


# --------------------------------------------------------------------------------------------
# Proxy steps (RFC 3261 §16.6 request forwarding, §16.7 response processing)


def _rewrite_first(
    msg: SipMessage,
    name: str,
    parse: Callable[[str], Sequence[_T]],
    fmt: Callable[[_T], str],
    new_first: _T | None,
) -> _T | None:
    """Replace (or, with ``new_first=None``, remove) the first value of a list header.

    Values on other lines keep their received text; values sharing the first line are
    re-formatted only when that line has to change.
    """
    lines = list(_values(msg.headers, name))
    if not lines:
        return None
    first_line = _translate(f"{name} header", None, parse, lines[0])
    old = first_line[0]
    rest = first_line[1:] if new_first is None else [new_first, *first_line[1:]]
    if rest:
        lines[0] = ", ".join(fmt(v) for v in rest)
    else:
        del lines[0]
    if lines:
        msg.headers.setlist(name, lines)
    else:
        msg.headers.remove(name)  # an empty list would make Headers.get() raise IndexError
    return old


def push_via(msg: Request, via: Via) -> None:
    """§16.6 step 8: put this proxy's Via (with its own branch) on top."""
    if not via_branch(via):
        raise SipError("a proxy's Via needs a branch parameter (RFC 3261 §16.6 step 8)")
    msg.headers.setlist("Via", [format_via(via), *_values(msg.headers, "Via")])


def pop_via(msg: SipMessage) -> Via:
    """§16.7 step 3: remove the topmost Via (this proxy's) and return it.

    When no Via remains afterwards, the response was meant for this element and is not
    forwarded. On a request it undoes :func:`push_via` (a proxy answering a request it could
    not forward answers it as it received it).
    """
    old = _rewrite_first(msg, "Via", _parse_vias, format_via, None)
    if old is None:
        raise SipError("no Via header to remove")
    return old


def add_record_route(msg: Request, address: Address | str) -> None:
    """§16.6 step 4: put this proxy's Record-Route value above any existing ones.

    The URI should carry ``lr`` (loose routing, §16.6 step 4 and §19.1.1).
    """
    text = _address_text(address, "Record-Route")
    msg.headers.setlist("Record-Route", [text, *_values(msg.headers, "Record-Route")])


def pop_route_if_self(msg: Request, is_self: Callable[[URI], bool]) -> Address | None:
    """§16.4: if the first Route value names this proxy (``is_self(uri)``), remove and return
    it; otherwise leave the request alone and return None."""
    routes = route(msg)
    if not routes or not is_self(routes[0].uri):
        return None
    return _rewrite_first(msg, "Route", _parse_addresses, format_address, None)


def decrement_max_forwards(msg: Request) -> bool:
    """§16.6 step 3: decrement Max-Forwards (add it as 70 when absent) and return True.

    Return False, changing nothing, when it is already 0: the caller answers 483 Too Many Hops
    (§16.3 step 3) instead of forwarding.
    """
    value = max_forwards(msg)
    if value is None:
        msg.headers.set("Max-Forwards", "70")
        return True
    if value == 0:
        return False
    msg.headers.set("Max-Forwards", str(value - 1))
    return True


def stamp_received(msg: Request, host: str, port: int) -> None:
    """What a server does with the top Via of a request that came from ``host``:``port``.

    RFC 3261 §18.2.1: add ``received=host`` when the sent-by host differs from the source.
    RFC 3581 §4: when the client sent an empty ``rport``, fill in the source port and add
    ``received`` even if the host is the same. Responses then go back where the request came
    from, which is what lets them through NAT and the Edge.
    """
    top = top_via(msg)
    changes: dict[str, str | None] = {}
    wants_rport = "rport" in top.parameters and top.parameters["rport"] is None
    if top.host != host or wants_rport:
        changes["received"] = host
    if wants_rport:
        changes["rport"] = str(port)
    if changes:
        new = dataclasses.replace(top, parameters=top.parameters.replace(**changes))
        _rewrite_first(msg, "Via", _parse_vias, format_via, new)
