"""Stream splitters: every way of cutting a stream yields the same messages; bad streams fail
with FramingError and bounded memory."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labsim.wire import FramingError, WireError
from labsim.wire.framing import (
    Rfc4571Splitter,
    SipSplitter,
    StreamSplitter,
    StunSplitter,
    frame_rfc4571,
)
from labsim.wire.stun import ChannelData, decode_control

from .conftest import load_hex
from .fuzz import cut
from .strategies import messages

STUN_VECTORS = [
    load_hex(f"stun/{name}")
    for name in (
        "turn-allocate-request.hex",
        "turn-allocate-401.hex",
        "turn-allocate-authenticated.hex",
        "turn-connection-attempt.hex",
        "turn-connection-bind.hex",
        "rfc5769-2.1-request.hex",
    )
]

SIP_INVITE = (
    b"INVITE sip:cms@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 10.48.54.1:5061;branch=z9hG4bK1\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length:   12\r\n"
    b"\r\n"
    b"v=0\r\no=- 0 0"
)
SIP_ACK = b"ACK sip:cms@example.com SIP/2.0\r\nl: 0\r\n\r\n"
SIP_200 = b"SIP/2.0 200 OK\r\ncontent-length :0\r\n\r\n"


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at ``cuts`` (taken modulo its length, in any order, repeats allowed)."""
    return cut(data, sorted({c % (len(data) + 1) for c in cuts}))


def run(splitter: StreamSplitter, pieces: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for piece in pieces:
        out += splitter.feed(piece)
    splitter.close()
    return out


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            messages.map(lambda m: m.encode()),
            st.sampled_from(STUN_VECTORS),
            st.builds(
                lambda c, d: ChannelData(c, d).encode(),
                st.integers(0x4000, 0x7FFF),
                st.binary(max_size=30),
            ),
        ),
        max_size=6,
    ),
    st.lists(st.integers(0, 10_000), max_size=12),
)
def test_stun_splitter_any_cut(frames: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frames)
    assert run(StunSplitter(), split_at(stream, cuts)) == frames
    for frame in frames:
        decode_control(frame)  # each yielded frame decodes on its own


def test_stun_splitter_byte_by_byte() -> None:
    stream = b"".join(STUN_VECTORS)
    assert run(StunSplitter(), [bytes([b]) for b in stream]) == STUN_VECTORS


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=6), st.lists(st.integers(0, 5000), max_size=12))
def test_rfc4571_splitter_any_cut(packets: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frame_rfc4571(p) for p in packets)
    assert run(Rfc4571Splitter(), split_at(stream, cuts)) == packets


def test_rfc4571_lab_bytes() -> None:
    framed = load_hex("stun/rfc4571-framed-request.hex") + load_hex(
        "stun/rfc4571-framed-response.hex"
    )
    request, response = run(Rfc4571Splitter(), [framed[:5], framed[5:111], framed[111:]])
    assert len(request) == 108 and request[:2] == b"\x00\x01"
    assert response[:2] == b"\x01\x01"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([SIP_INVITE, SIP_ACK, SIP_200, b"\r\n\r\n"]), max_size=6),
    st.lists(st.integers(0, 1000), max_size=12),
)
def test_sip_splitter_any_cut(parts: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(parts)
    expected = [p for p in parts if p != b"\r\n\r\n"]
    splitter = SipSplitter()
    assert run(splitter, split_at(stream, cuts)) == expected
    assert splitter.keepalives == 2 * parts.count(b"\r\n\r\n")


def test_sip_content_length_with_lws_and_compact_form() -> None:
    assert SipSplitter().feed(SIP_INVITE + SIP_ACK + SIP_200) == [SIP_INVITE, SIP_ACK, SIP_200]


@pytest.mark.parametrize(
    ("head", "body_length"),
    [
        (b"Content-Length: 3\r\nA: b\r\n\r\n", 3),  # on the first line of the block
        (b"A\r\nX-Content-Length: 9\r\nL: 2\r\n\r\n", 2),  # another header's name ends so
        (b"A\r\nSubject: l: 9\r\ncONTENT-lENGTH\t:\t4 \t\r\n\r\n", 4),  # inside a value
        (b"A\nl:1\n\r\n\r\n", 1),  # bare LF line ends
        (b"A\r\nContent-Length: 2\r\nl : 2\r\n\r\n", 2),  # the same value twice
    ],
)
def test_sip_content_length_is_found_only_at_a_line_start(head: bytes, body_length: int) -> None:
    message = head + b"x" * body_length
    assert SipSplitter().feed(message + b"next") == [message]


@pytest.mark.parametrize(
    ("splitter", "stream", "needle"),
    [
        (StunSplitter(allow_channel_data=False), b"GET / HTTP/1.1\r\n\r\n", "neither"),
        (StunSplitter(), b"\x80\x00\x00\x00", "neither"),
        (StunSplitter(), b"\x16\x03\x01\x02\x00\x01\x00\x00", "magic cookie"),
        (StunSplitter(), b"\x00\x01\x00\x00\xde\xad\xbe\xef", "magic cookie"),
        (StunSplitter(), b"\x00\x01\x00\x05\x21\x12\xa4\x42", "multiple of 4"),
        (StunSplitter(max_message=100), b"\x00\x01\x01\x00\x21\x12\xa4\x42", "limit"),
        (Rfc4571Splitter(max_frame=10), b"\x00\x0b", "limit"),
        (SipSplitter(), b"INVITE sip:a SIP/2.0\r\nVia: x\r\n\r\n", "without Content-Length"),
        (SipSplitter(), b"INVITE sip:a SIP/2.0\r\nContent-Length: 1x\r\n\r\n", "not a number"),
        (SipSplitter(), b"A\r\nContent-Length: 1\r\nl: 2\r\n\r\n", "conflicting"),
        (SipSplitter(max_body=10), b"A\r\nContent-Length: 11\r\n\r\n", "limit"),
        (SipSplitter(max_header=64), b"INVITE " + b"x" * 100, "no end of SIP headers"),
    ],
)
def test_bad_streams_fail_with_framing_error(
    splitter: StreamSplitter, stream: bytes, needle: str
) -> None:
    with pytest.raises(FramingError, match=needle) as info:
        splitter.feed(stream)
    assert info.value.offset is not None
    # The stream stays failed: no later call silently resynchronises on garbage.
    with pytest.raises(FramingError):
        splitter.feed(b"")


def test_error_offset_is_a_stream_offset() -> None:
    splitter = StunSplitter()
    good = STUN_VECTORS[0]
    assert splitter.feed(good) == [good]
    with pytest.raises(FramingError) as info:
        splitter.feed(b"\x00\x01\x00\x00garbage!")
    assert info.value.offset == len(good) + 4


def test_whole_messages_in_one_read_keep_every_check() -> None:
    # One whole STUN message per read skips the buffer (StunSplitter.feed); it must still
    # honour the size limit, max_messages and a failed stream, and count the stream offset.
    big = STUN_VECTORS[2]
    with pytest.raises(FramingError, match="limit"):
        StunSplitter(max_message=len(big) - 4).feed(big)
    splitter = StunSplitter()
    assert splitter.feed(big, max_messages=0) == [] and splitter.buffered == len(big)
    assert splitter.feed(b"") == [big] and splitter.offset == len(big)
    assert splitter.feed(bytearray(big)) == [big] and splitter.offset == 2 * len(big)
    with pytest.raises(FramingError):
        splitter.feed(b"\x00\x01\x00\x00garbage!")
    with pytest.raises(FramingError):
        splitter.feed(big)


def test_a_whole_sip_message_in_one_read_keeps_every_check() -> None:
    # One whole SIP message with nothing buffered skips the buffer (SipSplitter.feed) and is
    # remembered by its bytes for the next splitter; the limits, a keep-alive, a failed
    # stream and the stream offset must come out as on the general path.
    with pytest.raises(FramingError, match="limit"):
        SipSplitter(max_body=11).feed(SIP_INVITE)
    assert SipSplitter().feed(SIP_INVITE) == [SIP_INVITE]
    with pytest.raises(FramingError, match="limit"):
        SipSplitter(max_body=11).feed(SIP_INVITE)  # remembered for the default limits only
    splitter = SipSplitter()
    assert splitter.takes_whole(SIP_INVITE) and not splitter.takes_whole(SIP_INVITE[:-1])
    assert splitter.feed(b"\r\n" + SIP_INVITE) == [SIP_INVITE] and splitter.keepalives == 1
    assert splitter.feed(SIP_INVITE) == [SIP_INVITE] and splitter.offset == 2 + 2 * len(SIP_INVITE)
    assert splitter.feed(SIP_INVITE[:10]) == [] and not splitter.takes_whole(SIP_INVITE)
    assert splitter.feed(SIP_INVITE[10:] + SIP_INVITE) == [SIP_INVITE, SIP_INVITE]
    with pytest.raises(FramingError):
        splitter.feed(b"garbage\r\n\r\n")
    with pytest.raises(FramingError):
        splitter.feed(SIP_INVITE)


_HEADER_NAMES = st.sampled_from(
    ["Via", "l", "L", "Content-Length", "content-length", "Subject", "s", "X-Lab", "i"]
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_HEADER_NAMES, st.text(max_size=12)), max_size=6),
    st.binary(max_size=40),
    st.lists(st.integers(0, 400), max_size=6),
)
def test_what_the_sip_encoder_calls_whole_the_splitter_finds_whole(
    headers: list[tuple[str, str]], body: bytes, cuts: list[int]
) -> None:
    # sip.encode tells the splitters its message is whole (framing.encoded_whole): that must
    # be what a splitter finds on its own, fed at once or in pieces.
    from labsim.wire import sip
    from labsim.wire.framing import _WHOLE

    msg = sip.build_request(
        "MESSAGE", "sip:a@lab", via=sip.Via.parse("SIP/2.0/TCP 10.0.0.1;branch=z9hG4bK1"),
        from_addr="<sip:b@lab>;tag=1", to_addr="<sip:a@lab>", call_id="c1", cseq=1,
        content_type="text/plain" if body else None, body=body,
    )  # fmt: skip
    for name, value in headers:
        msg.headers.add(name, value)
    _WHOLE.clear()
    try:
        data = sip.encode(msg)
    except WireError:
        return
    if data in _WHOLE:
        del _WHOLE[data]
        assert SipSplitter()._whole(data)
        splitter = SipSplitter()
        pieces = [splitter.feed(piece) for piece in cut(data, sorted(cuts))]
        assert [m for got in pieces for m in got] == [data] and not splitter.buffered


def test_close_inside_a_message_is_an_error() -> None:
    splitter = Rfc4571Splitter()
    splitter.feed(b"\x00\x05abc")
    with pytest.raises(FramingError, match="3 bytes|5 bytes left"):
        splitter.close()


def test_garbage_never_grows_the_buffer_beyond_the_limit() -> None:
    splitter = SipSplitter(max_header=1024)
    with pytest.raises(FramingError):
        for _ in range(100):
            splitter.feed(b"y" * 100)
    assert splitter.buffered <= 1024 + 100


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(0, 300), max_size=6))
def test_random_bytes_raise_only_framing_errors(data: bytes, cuts: list[int]) -> None:
    for splitter in (StunSplitter(), Rfc4571Splitter(), SipSplitter()):
        try:
            run(splitter, split_at(data, cuts))
        except FramingError as exc:
            assert isinstance(exc, WireError)


def test_frame_rfc4571_rejects_oversize() -> None:
    with pytest.raises(FramingError):
        frame_rfc4571(bytes(0x10000))


def test_protocol_switch_after_a_known_message() -> None:
    """An RFC 6062 data connection: one STUN response, then raw bytes in the same segment."""
    response = STUN_VECTORS[0]
    raw = b"\x00\x6c\x00\x01 raw relay bytes, not STUN"
    splitter = StunSplitter()
    assert splitter.feed(response + raw, max_messages=1) == [response]
    assert splitter.take_buffered() == raw
    assert splitter.buffered == 0 and splitter.offset == len(response) + len(raw)
    # Without the limit the same bytes are (rightly) garbage for a STUN splitter.
    with pytest.raises(FramingError):
        StunSplitter().feed(response + raw)


def run_until_error(splitter: StreamSplitter, pieces: list[bytes]) -> tuple[list[bytes], bool]:
    """Every message the splitter delivers, whether it returned them or handed them over with
    its FramingError, and whether it failed."""
    out: list[bytes] = []
    for piece in pieces:
        try:
            out += splitter.feed(piece)
        except FramingError as exc:
            out += exc.messages
            return out, True
    return out, False


# Bytes that each splitter refuses at once, and a splitter for them.
GARBAGE_CASES = {
    # Top bits 11: neither STUN nor ChannelData (RFC 5766 §11).
    "stun": (StunSplitter, b"\xc0\x00\x00\x00"),
    # A frame longer than the limit (RFC 4571 §2's 16-bit length, lowered to 1,000).
    "rfc4571": (lambda: Rfc4571Splitter(max_frame=1000), b"\xff\xff"),
    # A header block with no Content-Length (RFC 3261 §18.3).
    "sip": (SipSplitter, b"INVITE sip:a SIP/2.0\r\nVia: x\r\n\r\n"),
}


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(GARBAGE_CASES)),
    st.lists(st.integers(0, 5), max_size=6),
    st.lists(st.integers(0, 10_000), max_size=12),
    st.booleans(),
)
def test_every_message_before_garbage_is_delivered_whatever_the_chunking(
    kind: str, picks: list[int], cuts: list[int], garbage: bool
) -> None:
    make, bad = GARBAGE_CASES[kind]
    if kind == "stun":
        pool = STUN_VECTORS
    elif kind == "rfc4571":
        pool = [bytes([i]) * (i * 37) for i in range(6)]
    else:
        pool = [SIP_INVITE, SIP_ACK, SIP_200]
    wanted = [pool[i % len(pool)] for i in picks]
    framed = [frame_rfc4571(m) for m in wanted] if kind == "rfc4571" else wanted
    stream = b"".join(framed) + (bad if garbage else b"")
    # One read and any chunking deliver the same messages, then fail the same way.
    whole, failed_whole = run_until_error(make(), [stream])
    cut, failed_cut = run_until_error(make(), split_at(stream, cuts))
    assert whole == cut == wanted
    assert failed_whole == failed_cut == garbage


def test_the_messages_of_a_failed_read_are_handed_over_once() -> None:
    splitter = StunSplitter()
    good = STUN_VECTORS[0]
    with pytest.raises(FramingError) as info:
        splitter.feed(good + good + b"\xc0\x00\x00\x00")
    assert info.value.messages == (good, good)
    # Later calls raise again but deliver nothing twice.
    with pytest.raises(FramingError) as again:
        splitter.feed(good)
    assert again.value.messages == ()
