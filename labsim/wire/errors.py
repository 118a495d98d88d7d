"""The one error family every decoder in :mod:`labsim.wire` raises.

Whatever bytes arrive, a decoder either returns a value or raises a :class:`WireError`; no other
exception type escapes. Each error says what was wrong and where: a byte offset for binary
codecs (STUN, framing), a line number for text codecs (SIP, SDP).
"""

from __future__ import annotations


class WireError(ValueError):
    """Bytes on the wire that a codec cannot accept.

    ``offset`` is the byte offset (binary codecs) and ``line`` the 1-based line number (text
    codecs) of the fault, when known. The message always names the place.
    """

    def __init__(self, message: str, *, offset: int | None = None, line: int | None = None) -> None:
        self.reason = message
        self.offset = offset
        self.line = line
        where = []
        if line is not None:
            where.append(f"line {line}")
        if offset is not None:
            where.append(f"byte {offset}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class StunError(WireError):
    """A malformed STUN/TURN message or ChannelData frame (RFC 5389, 5766, 6062)."""


class FramingError(WireError):
    """A byte stream that cannot be split into messages (garbage, oversize, truncated at EOF).

    ``messages`` holds the whole messages the same call completed before the fault, in order:
    they arrived intact and the receiver handles them before it closes the stream, so one read
    or two make no difference to what is delivered.
    """

    def __init__(
        self,
        message: str,
        *,
        offset: int | None = None,
        line: int | None = None,
        messages: tuple[bytes, ...] = (),
    ) -> None:
        super().__init__(message, offset=offset, line=line)
        self.messages = messages


class SipError(WireError):
    """A malformed SIP message (RFC 3261)."""


class SdpError(WireError):
    """A malformed SDP body (RFC 4566, MS-SDPEXT)."""
