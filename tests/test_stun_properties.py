"""Property tests of the STUN codec: round trips, and nothing but StunError on bad bytes."""

from __future__ import annotations

import hmac
import struct

from hypothesis import example, given, settings
from hypothesis import strategies as st

from labsim.wire import StunError, WireError, stun
from labsim.wire.stun import (
    Fingerprint,
    Message,
    MessageIntegrity,
    decode,
    decode_control,
    long_term_key,
)

from .conftest import load_hex
from .strategies import messages

VECTOR = load_hex("stun/turn-connection-bind.hex")
KEY = long_term_key("turn", "TANDBERG", "secret")


@settings(max_examples=400, deadline=None)
@given(messages)
def test_encode_decode_encode_is_identity(message: Message) -> None:
    data = message.encode()
    decoded = decode(data)
    assert decoded == message
    assert decoded.encode() == data
    assert decoded.summary() == message.summary()


@settings(max_examples=200, deadline=None)
@given(messages)
def test_signed_messages_verify(message: Message) -> None:
    message.attributes += [MessageIntegrity(), Fingerprint()]
    decoded = decode(message.encode(KEY))
    assert decoded.verify_integrity(KEY)
    assert decoded.verify_fingerprint()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=100), min_size=1, max_size=4), st.binary(max_size=200))
@example([b"", bytes(64), bytes(65), KEY, KEY], b"")
def test_hmac_from_cached_key_states_is_rfc2104(keys: list[bytes], data: bytes) -> None:
    # The per-key cache of padded-key SHA-1 states (stun._hmac_sha1_pads) must give the
    # stdlib's HMAC for every key length (<, =, > the 64-byte block), for a key seen before
    # and for several keys in turn; the cached states must not be consumed by a use.
    for key in keys + keys:
        assert stun._hmac_sha1(key, data) == hmac.digest(key, data, "sha1")


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=120))
@example(b"\x00\x01\x00\x04\x21\x12\xa4\x42" + bytes(12) + b"\x00\x0d\x00\x08")
@example(b"\x00\x01\x00\x08\x21\x12\xa4\x42" + bytes(12) + b"\x00\x20\x00\x04\x00\x07\x00\x00")
def test_random_bytes_raise_only_stun_errors(data: bytes) -> None:
    try:
        msg = decode_control(data)
    except StunError as exc:
        assert isinstance(exc, WireError) and exc.offset is not None
        return
    # Whatever parses must re-encode to the same bytes and summarise.
    assert msg.encode() == data
    assert isinstance(msg.summary(), str)


@settings(max_examples=1000, deadline=None)
@given(st.data())
def test_mutated_vectors_raise_only_stun_errors(data: st.DataObject) -> None:
    buf = bytearray(VECTOR)
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(buf) - 1))
        buf[index] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        buf = buf[: data.draw(st.integers(0, len(buf)))]
    try:
        msg = decode(bytes(buf))
    except StunError:
        return
    assert msg.encode() == bytes(buf)
    msg.summary()
    msg.verify_integrity(KEY)
    msg.verify_fingerprint()


@given(st.integers(0x4000, 0x7FFF), st.binary(max_size=40), st.booleans())
def test_channel_data_encodes_back_to_the_bytes_it_came_from(
    channel: int, data: bytes, padded: bool
) -> None:
    # RFC 5766 §11.5 pads ChannelData on TCP; a frame that came unpadded (from UDP, or a peer
    # that breaks the rule) is reproduced as it came, not mended.
    frame = struct.pack("!HH", channel, len(data)) + data
    if padded:
        frame += bytes(-len(data) % 4)
    assert stun.ChannelData.decode(frame).encode() == frame
    # A frame built here is padded on TCP and not on UDP.
    built = stun.ChannelData(channel, data)
    assert len(built.encode()) == 4 + len(data) + (-len(data) % 4)
    assert built.encode(stream=False) == struct.pack("!HH", channel, len(data)) + data
