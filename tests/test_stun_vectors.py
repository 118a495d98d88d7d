"""RFC 5769 and TURN-TCP (PROTOCOL.md §8) vectors, byte for byte, both directions."""

from __future__ import annotations

import pytest

from labsim.wire import StunError
from labsim.wire.stun import (
    ChannelData,
    Class,
    ConnectionId,
    ErrorCode,
    Fingerprint,
    IceControlled,
    Lifetime,
    Message,
    MessageIntegrity,
    Method,
    Nonce,
    PasswordAlgorithm,
    Priority,
    Realm,
    RequestedTransport,
    Software,
    UnknownAttribute,
    Username,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
    decode,
    decode_control,
    is_stun,
    long_term_key,
    message_type,
    saslprep,
    short_term_key,
    split_type,
    with_padding,
)

from .conftest import load_hex

ICE_PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"
RFC5769_TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
TURN_KEY = long_term_key("cmsturn", "TANDBERG", "secret")
NONCE = "0123456789abcdef"


ALL_VECTORS = [
    "rfc5769-2.1-request.hex",
    "rfc5769-2.2-ipv4-response.hex",
    "rfc5769-2.3-ipv6-response.hex",
    "rfc5769-2.4-long-term-request.hex",
    "turn-allocate-request.hex",
    "turn-allocate-401.hex",
    "turn-allocate-authenticated.hex",
    "turn-connection-attempt.hex",
    "turn-connection-bind.hex",
]


@pytest.mark.parametrize("name", ALL_VECTORS)
def test_decoded_vector_reencodes_byte_identical(name: str) -> None:
    data = load_hex(f"stun/{name}")
    assert decode(data).encode() == data


def test_rfc5769_2_1_request() -> None:
    data = load_hex("stun/rfc5769-2.1-request.hex")
    msg = decode(data)
    assert (msg.method, msg.cls, msg.transaction_id) == (Method.BINDING, Class.REQUEST, RFC5769_TID)
    assert msg.attributes == [
        Software("STUN test client"),
        Priority(0x6E0001FF),
        IceControlled(0x932FF9B151263B36),
        Username("evtj:h6vY"),
        MessageIntegrity(bytes.fromhex("9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2")),
        Fingerprint(0xE57A3BCF),
    ]
    assert msg.verify_integrity(short_term_key(ICE_PASSWORD))
    assert not msg.verify_integrity(short_term_key("wrong"))
    assert msg.verify_fingerprint()
    # Built from typed values (USERNAME padded with spaces, as the RFC does), MI and FINGERPRINT
    # computed by us: the RFC's bytes.
    built = Message(
        Method.BINDING,
        Class.REQUEST,
        RFC5769_TID,
        [
            Software("STUN test client"),
            Priority(0x6E0001FF),
            IceControlled(0x932FF9B151263B36),
            with_padding(Username("evtj:h6vY"), b"   "),
            MessageIntegrity(),
            Fingerprint(),
        ],
    )
    assert built.encode(short_term_key(ICE_PASSWORD)) == data
    assert msg.summary() == "Binding Request user: evtj:h6vY"


@pytest.mark.parametrize(
    ("name", "address"),
    [
        ("rfc5769-2.2-ipv4-response.hex", "192.0.2.1"),
        ("rfc5769-2.3-ipv6-response.hex", "2001:db8:1234:5678:11:2233:4455:6677"),
    ],
)
def test_rfc5769_responses(name: str, address: str) -> None:
    data = load_hex(f"stun/{name}")
    msg = decode(data)
    assert msg.cls is Class.SUCCESS
    assert msg.get(XorMappedAddress) == XorMappedAddress(address, 32853)
    assert msg.get(Software) == Software("test vector")
    assert msg.verify_integrity(short_term_key(ICE_PASSWORD))
    assert msg.verify_fingerprint()
    built = Message(
        Method.BINDING,
        Class.SUCCESS,
        RFC5769_TID,
        [
            with_padding(Software("test vector"), b" "),
            XorMappedAddress(address, 32853),
            MessageIntegrity(),
            Fingerprint(),
        ],
    )
    assert built.encode(short_term_key(ICE_PASSWORD)) == data
    assert msg.summary() == f"Binding Success Response XOR-MAPPED-ADDRESS: {address}:32853"


def test_rfc5769_2_4_long_term_with_saslprep() -> None:
    data = load_hex("stun/rfc5769-2.4-long-term-request.hex")
    msg = decode(data)
    username = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
    assert msg.get(Username) == Username(username)
    assert msg.get(Nonce) == Nonce("f//499k954d6OL34oL9FSTvy64sA")
    assert msg.get(Realm) == Realm("example.org")
    password = "The\u00adM\u00aatr\u2168"
    assert saslprep(password) == "TheMatrIX"
    key = long_term_key(username, "example.org", password)
    assert msg.verify_integrity(key)
    built = Message(
        Method.BINDING,
        Class.REQUEST,
        bytes.fromhex("78ad3433c6ad72c029da412e"),
        [
            Username(username),
            Nonce("f//499k954d6OL34oL9FSTvy64sA"),
            Realm("example.org"),
            MessageIntegrity(),
        ],
    )
    assert built.encode(key) == data


def test_long_term_key_of_protocol_md() -> None:
    assert TURN_KEY.hex() == "a50e1be1d9960114e1e9a6599cedf08a"


TID1 = bytes(range(1, 13))


@pytest.mark.parametrize(
    ("name", "message", "summary"),
    [
        (
            "turn-allocate-request.hex",
            Message(Method.ALLOCATE, Class.REQUEST, TID1, [RequestedTransport(6), Lifetime(600)]),
            "Allocate Request TCP lifetime: 600",
        ),
        (
            "turn-allocate-401.hex",
            Message(
                Method.ALLOCATE,
                Class.ERROR,
                TID1,
                [ErrorCode(401, "Unauthorized"), Realm("TANDBERG"), Nonce(NONCE)],
            ),
            "Allocate Error Response error-code: 401 (Unauthenticated) Unauthorized"
            " realm: TANDBERG with nonce",
        ),
        (
            "turn-allocate-authenticated.hex",
            Message(
                Method.ALLOCATE,
                Class.REQUEST,
                bytes(range(0xA1, 0xAD)),
                [
                    RequestedTransport(6),
                    Lifetime(600),
                    Username("cmsturn"),
                    Realm("TANDBERG"),
                    Nonce(NONCE),
                    MessageIntegrity(),
                ],
            ),
            "Allocate Request TCP lifetime: 600 user: cmsturn realm: TANDBERG with nonce",
        ),
        (
            "turn-connection-attempt.hex",
            Message(
                Method.CONNECTION_ATTEMPT,
                Class.INDICATION,
                bytes(range(0xB1, 0xBD)),
                [XorPeerAddress("198.51.100.20", 50123), ConnectionId(0x1234ABCD)],
            ),
            "ConnectionAttempt Indication XOR-PEER-ADDRESS: 198.51.100.20:50123",
        ),
        (
            "turn-connection-bind.hex",
            Message(
                Method.CONNECTION_BIND,
                Class.REQUEST,
                bytes(range(0xC1, 0xCD)),
                [
                    ConnectionId(0x1234ABCD),
                    Username("cmsturn"),
                    Realm("TANDBERG"),
                    Nonce(NONCE),
                    MessageIntegrity(),
                ],
            ),
            "ConnectionBind Request user: cmsturn realm: TANDBERG with nonce",
        ),
    ],
)
def test_turn_tcp_vectors(name: str, message: Message, summary: str) -> None:
    data = load_hex(f"stun/{name}")
    assert message.encode(TURN_KEY) == data
    decoded = decode(data)
    assert decoded == message.__class__(
        message.method, message.cls, message.transaction_id, decoded.attributes
    )
    assert [type(a) for a in decoded.attributes] == [type(a) for a in message.attributes]
    assert decoded.summary() == summary
    if MessageIntegrity in decoded:
        assert decoded.verify_integrity(TURN_KEY)
        assert not decoded.verify_integrity(long_term_key("cmsturn", "TANDBERG", "wrong"))


def test_ipv6_xor_address_of_protocol_md() -> None:
    encoded = XorPeerAddress("2001:db8::1", 3478).encode_value(TID1)
    assert encoded.hex() == "00022c840113a9fa0102030405060708090a0b0d"
    assert XorPeerAddress.decode_value(encoded, TID1) == XorPeerAddress("2001:db8::1", 3478)


@pytest.mark.parametrize(
    ("method", "cls", "value"),
    [
        (Method.BINDING, Class.REQUEST, 0x0001),
        (Method.BINDING, Class.INDICATION, 0x0011),
        (Method.BINDING, Class.SUCCESS, 0x0101),
        (Method.BINDING, Class.ERROR, 0x0111),
        (Method.ALLOCATE, Class.ERROR, 0x0113),
        (Method.SEND, Class.INDICATION, 0x0016),
        (Method.DATA, Class.INDICATION, 0x0017),
        (Method.CREATE_PERMISSION, Class.SUCCESS, 0x0108),
        (Method.CHANNEL_BIND, Class.ERROR, 0x0119),
        (Method.CONNECT, Class.SUCCESS, 0x010A),
        (Method.CONNECTION_BIND, Class.ERROR, 0x011B),
        (Method.CONNECTION_ATTEMPT, Class.INDICATION, 0x001C),
        (0xFFF, Class.ERROR, 0x3FFF),
    ],
)
def test_type_interleaving(method: int, cls: Class, value: int) -> None:
    assert message_type(method, cls) == value
    assert split_type(value) == (method, cls)


def test_framed_vectors_carry_the_lab_prefix() -> None:
    framed = load_hex("stun/rfc4571-framed-request.hex")
    assert framed[:10].hex(" ") == "00 6c 00 01 00 58 21 12 a4 42"
    assert framed[2:] == load_hex("stun/rfc5769-2.1-request.hex")
    response = load_hex("stun/rfc4571-framed-response.hex")
    assert response[2:4] == b"\x01\x01"
    assert decode(response[2:]).cls is Class.SUCCESS


def test_error_reason_nul_padding_is_stripped_but_kept_on_the_wire() -> None:
    # coturn puts NULs inside the ERROR-CODE length (PROTOCOL.md §11).
    value = bytes([0, 0, 4, 1]) + b"Unauthorized\x00\x00\x00\x00"
    data = Message(Method.ALLOCATE, Class.ERROR, TID1, [ErrorCode(401, "x")]).encode()
    data = data[:2] + (4 + len(value)).to_bytes(2, "big") + data[4:20]
    data += b"\x00\x09" + len(value).to_bytes(2, "big") + value
    msg = decode(data)
    assert msg.get(ErrorCode) == ErrorCode(401, "Unauthorized")
    assert msg.encode() == data
    assert msg.summary() == "Allocate Error Response error-code: 401 (Unauthenticated) Unauthorized"


def test_unknown_attributes_are_kept_in_order_with_comprehension_flag() -> None:
    body = (
        b"\x00\x19\x00\x04\x06\x00\x00\x00"  # REQUESTED-TRANSPORT
        b"\x7f\x01\x00\x03abc\x99"  # unknown, comprehension-required, odd padding byte
        b"\xc0\x01\x00\x02hi\x00\x00"  # unknown, comprehension-optional
        b"\x00\x0d\x00\x04\x00\x00\x02\x58"  # LIFETIME
    )
    data = b"\x00\x03" + len(body).to_bytes(2, "big") + b"\x21\x12\xa4\x42" + TID1 + body
    msg = decode(data)
    kinds = [a.type for a in msg.attributes]
    assert kinds == [0x0019, 0x7F01, 0xC001, 0x000D]
    assert msg.attributes[1].comprehension_required
    assert not msg.attributes[2].comprehension_required
    assert msg.unknown_comprehension_required() == [0x7F01]
    assert msg.encode() == data
    assert msg.summary() == "Allocate Request TCP lifetime: 600"


def test_channel_data_round_trip_and_summary() -> None:
    frame = ChannelData(0x4001, b"hello").encode()
    assert frame == b"\x40\x01\x00\x05hello\x00\x00\x00"
    decoded = decode_control(frame)
    assert decoded == ChannelData(0x4001, b"hello")
    assert decoded.summary() == "ChannelData TURN Message"
    assert ChannelData(0x4001, b"hello").encode(stream=False) == frame[:9]
    with pytest.raises(StunError):
        ChannelData(0x3FFF, b"").encode()


def test_fingerprint_detects_corruption() -> None:
    data = bytearray(load_hex("stun/rfc5769-2.1-request.hex"))
    data[30] ^= 0x01  # inside SOFTWARE
    msg = decode(bytes(data))
    assert not msg.verify_fingerprint()
    assert not msg.verify_integrity(short_term_key(ICE_PASSWORD))


def test_integrity_ignores_attributes_after_it_except_fingerprint() -> None:
    msg = Message(
        Method.REFRESH,
        Class.REQUEST,
        TID1,
        [Lifetime(0), MessageIntegrity(), Software("after"), Fingerprint()],
    )
    decoded = decode(msg.encode(TURN_KEY))
    assert decoded.verify_integrity(TURN_KEY)
    assert decoded.verify_fingerprint()


def test_xor_relayed_and_mapped_in_success_summary() -> None:
    msg = Message(
        Method.ALLOCATE,
        Class.SUCCESS,
        TID1,
        [
            Lifetime(600),
            XorMappedAddress("10.48.54.230", 44340),
            XorRelayedAddress("10.48.54.229", 24000),
        ],
    )
    assert msg.summary() == (
        "Allocate Success Response lifetime: 600 XOR-MAPPED-ADDRESS: 10.48.54.230:44340"
        " XOR-RELAYED-ADDRESS: 10.48.54.229:24000"
    )


def test_error_helper_uses_rfc_reason_phrases() -> None:
    request = Message.request(Method.ALLOCATE, [RequestedTransport(6)], TID1)
    response = request.error(442)
    assert response.cls is Class.ERROR and response.transaction_id == TID1
    assert response.get(ErrorCode) == ErrorCode(442, "Unsupported Transport Protocol")
    assert response.summary() == (
        "Allocate Error Response error-code: 442 (Unsupported Transport Protocol)"
        " Unsupported Transport Protocol"
    )


@pytest.mark.parametrize(
    ("address", "shown"),
    [
        ("::ffff:10.48.54.229", "::ffff:10.48.54.229"),
        ("::a30:36e5", "::10.48.54.229"),
        ("::1", "::1"),
        ("::", "::"),
        ("2001:db8::1", "2001:db8::1"),
        ("10.48.54.229", "10.48.54.229"),
    ],
)
def test_summary_prints_addresses_as_wireshark_does(address: str, shown: str) -> None:
    msg = Message(Method.CONNECT, Class.REQUEST, TID1, [XorPeerAddress(address, 24000)])
    assert msg.summary() == f"Connect Request XOR-PEER-ADDRESS: {shown}:24000"
    assert decode(msg.encode()).get(XorPeerAddress) == XorPeerAddress(address, 24000)


def test_password_algorithm_layout() -> None:
    attr = PasswordAlgorithm(2, b"abcde")
    value = attr.encode_value(TID1)
    assert value == b"\x00\x02\x00\x05abcde\x00\x00\x00"
    assert PasswordAlgorithm.decode_value(value, TID1) == attr
    with pytest.raises(StunError):
        decode(
            Message(
                Method.BINDING, Class.REQUEST, TID1, [UnknownAttribute(0x001D, b"\x00\x01\x00\x09")]
            ).encode()
        )


def test_is_stun_demultiplexes_rfc4571_payloads() -> None:
    framed = load_hex("stun/rfc4571-framed-request.hex")
    assert is_stun(framed[2:])
    assert not is_stun(framed)  # the cookie is off by two: still framed
    assert not is_stun(b"\x80\x7f" + bytes(30))  # RTP (RFC 7983 demultiplexing)
    assert not is_stun(ChannelData(0x4000, b"x" * 20).encode())
