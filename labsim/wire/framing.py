"""Incremental stream splitters: bytes in as TCP delivers them, whole messages out.

TCP hands a receiver bytes cut and coalesced anywhere; each connection of the call carries one of
three framings:

* a TURN **control** connection (and a data connection before ConnectionBind succeeds): STUN
  messages, self-delimiting by their header length (RFC 5389 §6), and ChannelData frames padded
  to 4 bytes (RFC 5766 §11.5) -> :class:`StunSplitter`;
* an ICE-TCP media connection: every STUN check and media packet behind a 2-byte length
  (RFC 4571 §2, RFC 6544 §3) -> :class:`Rfc4571Splitter`;
* SIP over TCP: a header block ended by an empty line, then ``Content-Length`` bytes of body
  (RFC 3261 §18.3) -> :class:`SipSplitter`.

Every splitter keeps a bounded buffer. A stream that cannot be split (garbage, a message larger
than the limit, a header block that never ends) raises :class:`FramingError` naming the stream
offset, and never grows memory without bound. :meth:`StreamSplitter.close` raises when the
stream ended inside a message, so no partial message is lost silently.
"""

from __future__ import annotations

import struct

from labsim.wire.errors import FramingError
from labsim.wire.stun import CHANNEL_MAX, CHANNEL_MIN, HEADER_LENGTH, MAGIC_COOKIE_BYTES


class StreamSplitter:
    """Base of the splitters: a buffer, a stream offset, and the feed/close protocol."""

    def __init__(self) -> None:
        self._buf = bytearray()
        #: Stream offset of the first buffered byte (bytes already yielded or skipped before it).
        self.offset = 0
        self._failed: FramingError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held, waiting for the rest of a message."""
        return len(self._buf)

    def feed(
        self, data: bytes | bytearray | memoryview, *, max_messages: int | None = None
    ) -> list[bytes]:
        """Add bytes; return every message they complete, in order.

        ``max_messages`` stops after that many messages and leaves the rest buffered, unparsed:
        for a connection that changes protocol after a known message (an RFC 6062 data
        connection turns into a raw pipe after the ConnectionBind response), the rest is then
        taken with :meth:`take_buffered`.

        A :class:`FramingError` carries in ``messages`` the whole messages this call completed
        before the fault: whatever the chunking, every message that precedes bad bytes is
        delivered (h11 likewise hands over each event before the one that fails). After it the
        stream is unusable: every later call raises it again, with no messages (the receiver
        should close the connection).
        """
        if self._failed is not None:
            raise self._failed
        self._buf += data
        out: list[bytes] = []
        pos = 0
        try:
            while max_messages is None or len(out) < max_messages:
                step = self._next_end(pos)
                if step is None:
                    break
                end, is_message = step
                if is_message:
                    out.append(self._payload(self._buf, pos, end))
                pos = end
        except FramingError as exc:
            self._failed = FramingError(exc.reason, offset=exc.offset)
            exc.messages = tuple(out)
            raise
        finally:
            if pos:
                del self._buf[:pos]
                self.offset += pos
        return out

    def take_buffered(self) -> bytes:
        """Hand over the bytes held and stop splitting: the stream has left this framing."""
        rest = bytes(self._buf)
        self.offset += len(rest)
        self._buf.clear()
        return rest

    def close(self) -> None:
        """The peer closed the stream: raise if it stopped inside a message."""
        if self._failed is not None:
            raise self._failed
        if self._buf:
            raise FramingError(
                f"stream ended inside a message: {len(self._buf)} bytes left over",
                offset=self.offset,
            )

    def _next_end(self, pos: int) -> tuple[int, bool] | None:
        """(end, is_message) of the next unit starting at ``pos``, ``end > pos``; None when
        more bytes are needed. ``is_message`` False skips bytes that are not a message (a SIP
        keep-alive)."""
        raise NotImplementedError

    def _payload(self, buf: bytearray, start: int, end: int) -> bytes:
        """What a message is handed over as: its bytes (a framing may strip a prefix)."""
        return bytes(buf[start:end])

    def _error(self, message: str, pos: int) -> FramingError:
        return FramingError(message, offset=self.offset + pos)


class StunSplitter(StreamSplitter):
    """STUN messages and ChannelData frames on a TURN control connection (RFC 5766 §11.5).

    ``max_message`` bounds one message (the 16-bit length fields allow up to 65 555 bytes).
    The magic cookie is checked as soon as 8 bytes are in, so garbage fails fast.
    ``allow_channel_data`` False rejects ChannelData: a connection with only TCP allocations
    never carries it (RFC 6062 §4.1), and so text sent to the TURN port (an HTTP request, whose
    first byte has the top bits 01) fails at once instead of waiting for a 16 KiB "frame".
    """

    def __init__(
        self, max_message: int = HEADER_LENGTH + 0xFFFF, *, allow_channel_data: bool = True
    ) -> None:
        super().__init__()
        self.max_message = max_message
        self.allow_channel_data = allow_channel_data

    def feed(
        self, data: bytes | bytearray | memoryview, *, max_messages: int | None = None
    ) -> list[bytes]:
        # The usual read on a TURN connection is one whole STUN message with nothing buffered
        # before it: hand it over without copying it through the buffer. The checks are those of
        # _next_end (top bits 00, cookie, length a multiple of 4, the limit); anything else
        # (a part, several, ChannelData, garbage) takes the general path.
        size = len(data)
        if (
            not self._buf
            and self._failed is None
            and max_messages != 0
            and HEADER_LENGTH <= size <= self.max_message
            and size % 4 == 0
            and data[0] < 0x40
            and data[4:8] == MAGIC_COOKIE_BYTES
            and size == HEADER_LENGTH + int.from_bytes(data[2:4], "big")
        ):
            self.offset += size
            return [bytes(data)]
        return super().feed(data, max_messages=max_messages)

    def _next_end(self, pos: int) -> tuple[int, bool] | None:
        buf = self._buf
        have = len(buf) - pos
        if have < 1:
            return None
        top = buf[pos] >> 6
        if top == 0b00:
            if have < 8:
                return None
            if buf[pos + 4 : pos + 8] != MAGIC_COOKIE_BYTES:
                raise self._error(
                    "no STUN magic cookie: the stream is not STUN (garbage or lost framing)",
                    pos + 4,
                )
            length = struct.unpack_from("!H", buf, pos + 2)[0]
            if length % 4:
                raise self._error(f"STUN message length {length} is not a multiple of 4", pos + 2)
            size = HEADER_LENGTH + length
        elif top == 0b01 and self.allow_channel_data:
            if have < 4:
                return None
            channel, length = struct.unpack_from("!HH", buf, pos)
            if not CHANNEL_MIN <= channel <= CHANNEL_MAX:  # pragma: no cover - top bits say so
                raise self._error(f"channel 0x{channel:04x} outside 0x4000-0x7FFF", pos)
            size = 4 + length + (-length % 4)
        else:
            raise self._error(
                f"byte 0x{buf[pos]:02x} starts neither STUN (00) nor ChannelData (01)", pos
            )
        if size > self.max_message:
            raise self._error(f"message of {size} bytes exceeds the {self.max_message} limit", pos)
        return (pos + size, True) if have >= size else None


class Rfc4571Splitter(StreamSplitter):
    """RFC 4571 §2 framing: a 16-bit length, then that many bytes (the length not counted).

    Yields the payloads, without the length prefix. ``max_frame`` may lower the 65 535 limit.
    """

    def __init__(self, max_frame: int = 0xFFFF) -> None:
        super().__init__()
        self.max_frame = max_frame

    def _payload(self, buf: bytearray, start: int, end: int) -> bytes:
        return bytes(buf[start + 2 : end])

    def _next_end(self, pos: int) -> tuple[int, bool] | None:
        buf = self._buf
        if len(buf) - pos < 2:
            return None
        length = struct.unpack_from("!H", buf, pos)[0]
        if length > self.max_frame:
            raise self._error(f"frame of {length} bytes exceeds the {self.max_frame} limit", pos)
        end = pos + 2 + length
        return (end, True) if len(buf) >= end else None


def frame_rfc4571(payload: bytes) -> bytes:
    """Prefix one packet with its RFC 4571 length."""
    if len(payload) > 0xFFFF:
        raise FramingError(f"packet of {len(payload)} bytes does not fit RFC 4571's 16-bit length")
    return struct.pack("!H", len(payload)) + payload


# RFC 3261 §7.3.1 / §20.14: the header name is case-insensitive, "l" is the compact form, and
# linear white space may surround the colon and the value (sipp pads the value with spaces).
_CONTENT_LENGTH_NAMES = (b"content-length", b"l")
#: A body length needs no more digits than this (max_body is far below 10**10); a longer run
#: of digits is refused before int() (whose own limit, 4,300 digits, raises ValueError).
_MAX_LENGTH_DIGITS = 10


def _content_length_values(head: bytes) -> list[bytes]:
    """The Content-Length values of a header block, line by line in one pass: linear in the
    block's size whatever it holds (a regex with overlapping white-space runs backtracks
    quadratically on a hostile line such as ``l:`` + spaces + ``\rX``)."""
    values = []
    for line in head.split(b"\n"):
        colon = line.find(b":")
        # "Content-Length" with white space around it fits in 32 bytes: a line whose colon
        # comes later holds another header, skipped without looking at its name.
        if colon < 0 or colon > 32:
            continue
        if line[:colon].strip(b" \t").lower() in _CONTENT_LENGTH_NAMES:
            value = line[colon + 1 :]
            if value.endswith(b"\r"):
                value = value[:-1]
            values.append(value.strip(b" \t"))
    return values


#: Bytes found to be exactly one SIP message (see SipSplitter.feed) -> the splitter limits
#: they were found under; messages up to _WHOLE_KEY bytes, _WHOLE_SIZE of them (8 MiB at
#: most), emptied when full.
_WHOLE: dict[bytes, tuple[int, int]] = {}
_WHOLE_SIZE = 512
_WHOLE_KEY = 16 * 1024


#: SipSplitter's limits unless told otherwise: a header block of 64 KiB, a body of 1 MiB.
SIP_MAX_HEADER = 64 * 1024
SIP_MAX_BODY = 1024 * 1024


def encoded_whole(data: bytes, header_bytes: int) -> None:
    """The SIP encoder's word that ``data`` is one message whose header block (its empty line
    included) is its first ``header_bytes``, with no CR or LF but the CRLFs ending its lines,
    exactly one Content-Length, equal to the body's length, and no empty line before the
    block's end: what a splitter with the default limits hands back whole, and remembers as
    such (see :meth:`SipSplitter.feed`), without looking for the Content-Length again."""
    if (
        header_bytes - 4 <= SIP_MAX_HEADER
        and len(data) - header_bytes <= SIP_MAX_BODY
        and len(data) <= _WHOLE_KEY
    ):
        if len(_WHOLE) >= _WHOLE_SIZE:
            _WHOLE.clear()
        _WHOLE[data] = (SIP_MAX_HEADER, SIP_MAX_BODY)


class SipSplitter(StreamSplitter):
    """SIP messages on a TCP stream (RFC 3261 §18.3): headers, empty line, Content-Length body.

    CRLF keep-alives between messages (RFC 5626 §3.5.1) are skipped and counted in
    ``keepalives``. A message without Content-Length is an error on a stream transport.
    """

    def __init__(self, max_header: int = SIP_MAX_HEADER, max_body: int = SIP_MAX_BODY) -> None:
        super().__init__()
        self.max_header = max_header
        self.max_body = max_body
        self.keepalives = 0
        # What is known of the message waiting at the start of the buffer, so that a message
        # arriving in many small reads is not searched again from its first byte on each:
        # how far its header block was searched for the empty line, and, once found, its
        # whole length. Both are offsets from the message's first byte (h11 likewise resumes
        # its search for the end of the headers where the last one stopped).
        self._searched = 0
        self._length: int | None = None

    def take_buffered(self) -> bytes:
        self._searched, self._length = 0, None
        return super().take_buffered()

    def feed(
        self, data: bytes | bytearray | memoryview, *, max_messages: int | None = None
    ) -> list[bytes]:
        # The usual read: one whole message with nothing buffered before it (an element sends
        # each message in one write). It is handed over as it is, without going through the
        # buffer, after the checks of _next_end; anything else (a part, several, a keep-alive,
        # a fault) takes the general path. The sender's trace and the receiver cut the same
        # bytes, so the answer is remembered by the bytes.
        if max_messages != 0 and isinstance(data, bytes) and self.takes_whole(data):
            self.offset += len(data)
            return [data]
        return super().feed(data, max_messages=max_messages)

    def takes_whole(self, data: bytes | bytearray | memoryview) -> bool:
        """Whether :meth:`feed` hands ``data`` back as it is: one whole message, with nothing
        buffered before it."""
        if self._buf or self._failed is not None or type(data) is not bytes:
            return False
        assert isinstance(data, bytes)
        limits = (self.max_header, self.max_body)
        known = _WHOLE.get(data)
        if known is None and self._whole(data):
            if len(data) <= _WHOLE_KEY:
                if len(_WHOLE) >= _WHOLE_SIZE:
                    _WHOLE.clear()
                _WHOLE[data] = limits
            return True
        return known == limits

    def _whole(self, data: bytes) -> bool:
        """Whether ``data`` is exactly one message that _next_end would accept at offset 0."""
        if data[:2] == b"\r\n":
            return False
        head_end = data.find(b"\r\n\r\n", 0, self.max_header + 4)
        if head_end < 0:
            return False
        head_end += 4
        try:
            length = self._content_length(data[:head_end], 0)
        except FramingError:
            return False  # the general path raises it, with the stream's state
        return head_end + length == len(data)

    def _next_end(self, pos: int) -> tuple[int, bool] | None:
        buf = self._buf
        if self._length is not None:
            # Only the message carried over from an earlier read can be waiting at pos: feed
            # starts at 0 and every message it completes resets this.
            end = pos + self._length
            if len(buf) < end:
                return None
            self._searched, self._length = 0, None
            return end, True
        # RFC 5626 §3.5.1: CRLF keep-alives may come between messages; they are not messages.
        if buf[pos : pos + 2] == b"\r\n":
            self.keepalives += 1
            return pos + 2, False
        if len(buf) - pos < 2:
            return None
        # Resume 3 bytes back: the empty line may straddle the two reads.
        start = pos + max(0, self._searched - 3)
        head_end = buf.find(b"\r\n\r\n", start, pos + self.max_header + 4)
        if head_end < 0:
            if len(buf) - pos > self.max_header:
                raise self._error(f"no end of SIP headers within {self.max_header} bytes", pos)
            self._searched = len(buf) - pos
            return None
        head_end += 4
        end = head_end + self._content_length(bytes(buf[pos:head_end]), pos)
        if len(buf) < end:
            self._length = end - pos
            return None
        self._searched = 0
        return end, True

    def _content_length(self, head: bytes, pos: int) -> int:
        values = _content_length_values(head)
        if not values:
            raise self._error("SIP message on TCP without Content-Length (RFC 3261 §18.3)", pos)
        numbers = set()
        for raw in values:
            text = raw.decode("latin-1")
            if not text.isdigit() or not text.isascii():
                raise self._error(f"Content-Length {text[:40]!r} is not a number", pos)
            if len(text.lstrip("0")) > _MAX_LENGTH_DIGITS:
                raise self._error(f"Content-Length of {len(text)} digits", pos)
            numbers.add(int(text))
        if len(numbers) > 1:
            raise self._error(f"conflicting Content-Length values {sorted(numbers)}", pos)
        length = numbers.pop()
        if length > self.max_body:
            raise self._error(f"SIP body of {length} bytes exceeds the {self.max_body} limit", pos)
        return length
