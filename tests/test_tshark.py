"""tshark as the independent judge of our bytes.

Every message type of the call (every RFC 6062 message among them) is encoded by labsim, written
into a capture, one TCP segment each, and read back by tshark: its Info column must equal our
summary line, with no malformed packet and a FINGERPRINT tshark checks as good. The ten rows of
the lab capture (PROTOCOL.md §10) are rebuilt with their inferred layouts and must also come out
with the lab's frame lengths.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from labsim.wire.framing import frame_rfc4571
from labsim.wire.stun import (
    AlternateServer,
    ChannelData,
    ChannelNumber,
    Class,
    ConnectionId,
    Data,
    DontFragment,
    ErrorCode,
    Fingerprint,
    IceControlled,
    IceControlling,
    Lifetime,
    MappedAddress,
    Message,
    MessageIntegrity,
    Method,
    MsCandidateIdentifier,
    MsImplementationVersion,
    MsServiceQuality,
    MsVersion,
    Nonce,
    Priority,
    Realm,
    RequestedAddressFamily,
    RequestedTransport,
    Software,
    UnknownAttribute,
    UnknownAttributes,
    UseCandidate,
    Username,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
    long_term_key,
    short_term_key,
)

from .conftest import require_tool
from .pcapwriter import TcpConversation, write_pcap
from .strategies import printable_messages

pytestmark = pytest.mark.tshark

CMS, EXPE, PEER = "10.48.54.230", "10.48.54.229", "192.168.1.252"
KEY = long_term_key("turn", "TANDBERG", "secret")
ICE_KEY = short_term_key("Hh3uY7pQ1wE5rT9iO2aS6dF0")
NONCE = "b3bba8fe2c3b4df9a2a0a0a1b4c5d6e7f8091a2b3c4d5e6f7081"  # 52 characters, as in the lab
EXPE_SOFTWARE = "TANDBERG/4120 (X8.9.0)  "  # 24 characters
CMS_SOFTWARE = "CMS 2.2 "  # 8 characters


def tid(n: int) -> bytes:
    return n.to_bytes(12, "big")


def auth(*attrs: object) -> list[object]:
    return [
        *attrs,
        Username("turn"),
        Realm("TANDBERG"),
        Nonce(NONCE),
        MessageIntegrity(),
        Fingerprint(),
    ]


def msg(method: int, cls: Class, n: int, attrs: list[object]) -> Message:
    return Message(method, cls, tid(n), list(attrs))  # type: ignore[arg-type]


R, IND, S, E = Class.REQUEST, Class.INDICATION, Class.SUCCESS, Class.ERROR
M = Method

# Every method in every class it has, with the attributes each carries in this call.
CATALOGUE: list[Message] = [
    msg(M.ALLOCATE, R, 1, [RequestedTransport(6), Lifetime(600), Fingerprint()]),
    msg(M.ALLOCATE, R, 2, [RequestedTransport(17), DontFragment(), RequestedAddressFamily(1)]),
    msg(
        M.ALLOCATE,
        E,
        3,
        [
            ErrorCode(401, "Unauthorized"),
            Nonce(NONCE),
            Realm("TANDBERG"),
            Software(EXPE_SOFTWARE),
            Fingerprint(),
        ],
    ),
    msg(M.ALLOCATE, R, 4, auth(RequestedTransport(6))),
    msg(
        M.ALLOCATE,
        S,
        5,
        [
            XorRelayedAddress(EXPE, 24000),
            XorMappedAddress(CMS, 44340),
            Lifetime(600),
            MessageIntegrity(),
            Fingerprint(),
        ],
    ),
    msg(
        M.ALLOCATE,
        S,
        6,
        [
            XorRelayedAddress("2001:db8::5", 24001),
            XorMappedAddress("2001:db8::6", 44341),
            Lifetime(600),
        ],
    ),
    msg(M.ALLOCATE, E, 7, [ErrorCode(438, "Stale Nonce"), Realm("TANDBERG"), Nonce("fresh")]),
    msg(M.ALLOCATE, E, 8, [ErrorCode(437, "Allocation Mismatch"), MessageIntegrity()]),
    msg(M.ALLOCATE, E, 9, [ErrorCode(442, "Unsupported Transport Protocol")]),
    msg(M.ALLOCATE, E, 10, [ErrorCode(486, "Allocation Quota Reached")]),
    msg(M.ALLOCATE, E, 11, [ErrorCode(508, "Insufficient Capacity")]),
    msg(M.ALLOCATE, E, 12, [ErrorCode(431, "Integrity Check Failure"), Fingerprint()]),
    msg(M.ALLOCATE, E, 13, [ErrorCode(420, "Unknown Attribute"), UnknownAttributes((0x7F01,))]),
    msg(
        M.ALLOCATE, E, 14, [ErrorCode(300, "Try Alternate"), AlternateServer("10.48.54.231", 3478)]
    ),
    msg(M.ALLOCATE, E, 15, [ErrorCode(441, "Wrong Credentials"), Software("x")]),
    msg(M.ALLOCATE, E, 16, [ErrorCode(400, "Bad Request")]),
    msg(M.REFRESH, R, 17, auth(Lifetime(600))),
    msg(M.REFRESH, R, 18, auth(Lifetime(0))),
    msg(M.REFRESH, S, 19, [Lifetime(0), MessageIntegrity(), Fingerprint()]),
    msg(M.REFRESH, E, 20, [ErrorCode(438, "Stale Nonce"), Nonce("n2"), Realm("TANDBERG")]),
    msg(M.CREATE_PERMISSION, R, 21, auth(XorPeerAddress(PEER, 0))),
    msg(M.CREATE_PERMISSION, S, 22, [MessageIntegrity(), Fingerprint()]),
    msg(M.CREATE_PERMISSION, E, 23, [ErrorCode(403, "Forbidden")]),
    msg(M.CHANNEL_BIND, R, 24, auth(ChannelNumber(0x4001), XorPeerAddress(PEER, 53577))),
    msg(M.CHANNEL_BIND, S, 25, [MessageIntegrity()]),
    msg(M.CHANNEL_BIND, E, 26, [ErrorCode(400, "Bad Request")]),
    msg(M.SEND, IND, 27, [XorPeerAddress(PEER, 53577), Data(b"payload")]),
    msg(M.DATA, IND, 28, [XorPeerAddress(PEER, 53577), Data(b"payload!")]),
    msg(M.CONNECT, R, 29, auth(XorPeerAddress(PEER, 53577))),
    msg(M.CONNECT, S, 30, [ConnectionId(0x1234ABCD), MessageIntegrity()]),
    msg(M.CONNECT, E, 31, [ErrorCode(446, "Connection Already Exists")]),
    msg(M.CONNECT, E, 32, [ErrorCode(447, "Connection Timeout or Failure"), Fingerprint()]),
    msg(
        M.CONNECTION_ATTEMPT,
        IND,
        33,
        [
            XorPeerAddress(PEER, 53577),
            ConnectionId(0x1234ABCD),
            Software(EXPE_SOFTWARE),
            Fingerprint(),
        ],
    ),
    msg(M.CONNECTION_BIND, R, 34, [ConnectionId(0x1234ABCD), *auth()]),
    msg(M.CONNECTION_BIND, E, 35, [ErrorCode(400, "Bad Request"), Fingerprint()]),
    msg(M.CONNECTION_BIND, S, 36, [ConnectionId(0x1234ABCD), MessageIntegrity(), Fingerprint()]),
    msg(M.BINDING, R, 37, [MappedAddress(CMS, 1)]),
    msg(M.BINDING, IND, 38, [Fingerprint()]),
    msg(M.BINDING, E, 39, [ErrorCode(487, "Role Conflict"), MessageIntegrity(), Fingerprint()]),
    msg(
        M.BINDING,
        R,
        40,
        [
            UnknownAttribute(0xC0DE, b"opaque"),
            MsVersion(2),
            MsServiceQuality(4, 1),
            MsCandidateIdentifier(b"abcd"),
            Fingerprint(),
        ],
    ),
]

# ICE checks, RFC 4571-framed, as on the relay leg (not port 3478: tshark's heuristic finds them).
ICE_CHECKS: list[Message] = [
    msg(
        M.BINDING,
        R,
        41,
        [
            UseCandidate(),
            Priority(0x6E0001FF),
            IceControlling(7),
            Username("Xa3f:cM5k"),
            MsImplementationVersion(3),
            MessageIntegrity(),
            Fingerprint(),
        ],
    ),
    msg(M.BINDING, S, 42, [XorMappedAddress(PEER, 53577), MessageIntegrity(), Fingerprint()]),
    msg(
        M.BINDING,
        R,
        43,
        [Priority(1), IceControlled(9), Username("cM5k:Xa3f"), MessageIntegrity(), Fingerprint()],
    ),
]

# PROTOCOL.md §10: the ten lab rows, with the lab's frame lengths and Info phrases.
LAB_ROWS: list[tuple[Message, int, list[str]]] = [
    (
        msg(M.ALLOCATE, R, 101, [RequestedTransport(6), Lifetime(600), Fingerprint()]),
        98,
        ["Allocate Request", "TCP", "lifetime: 600"],
    ),
    (
        msg(
            M.ALLOCATE,
            E,
            102,
            [
                ErrorCode(401, "Unauthorized"),
                Nonce(NONCE),
                Realm("TANDBERG"),
                Lifetime(600),
                Software(EXPE_SOFTWARE),
                MessageIntegrity(),
                Fingerprint(),
            ],
        ),
        230,
        ["Allocate Error Response", "with nonce", "realm: TANDBERG", "lifetime: 600"],
    ),
    (
        msg(
            M.ALLOCATE,
            R,
            103,
            [
                Username("turn"),
                Realm("TANDBERG"),
                Nonce(NONCE),
                RequestedTransport(6),
                Software(CMS_SOFTWARE),
                MessageIntegrity(),
                Fingerprint(),
            ],
        ),
        202,
        ["Allocate Request", "user: turn", "realm: TANDBERG", "with nonce", "TCP"],
    ),
    (
        msg(
            M.ALLOCATE,
            S,
            104,
            [
                Lifetime(600),
                XorMappedAddress(CMS, 44340),
                XorRelayedAddress(EXPE, 24000),
                Software(EXPE_SOFTWARE),
                MessageIntegrity(),
                Fingerprint(),
            ],
        ),
        166,
        ["Allocate Success Response", "lifetime: 600", "XOR-MAPPED-ADDRESS: 10.48."],
    ),
    (
        msg(
            M.REFRESH,
            R,
            105,
            [
                Username("turn"),
                Realm("TANDBERG"),
                Nonce(NONCE),
                Lifetime(600),
                MessageIntegrity(),
                Fingerprint(),
            ],
        ),
        190,
        ["Refresh Request", "user: turn", "realm: TANDBERG", "with nonce", "lifetime: 6"],
    ),
    (
        msg(
            M.REFRESH,
            S,
            106,
            [Lifetime(600), Software(EXPE_SOFTWARE), MessageIntegrity(), Fingerprint()],
        ),
        142,
        ["Refresh Success Response", "lifetime: 600"],
    ),
    (
        msg(
            M.CONNECTION_ATTEMPT,
            IND,
            107,
            [
                XorPeerAddress(PEER, 53577),
                ConnectionId(0x5A),
                Software(EXPE_SOFTWARE),
                MessageIntegrity(),
                Fingerprint(),
            ],
        ),
        154,
        ["ConnectionAttempt Indication", "XOR-PEER-ADDRESS: 192.168.1.252:53577"],
    ),
    (
        msg(
            M.CONNECTION_BIND,
            R,
            108,
            [
                ConnectionId(0x5A),
                Username("turn"),
                Realm("TANDBERG"),
                Nonce(NONCE),
                MessageIntegrity(),
                Fingerprint(),
            ],
        ),
        190,
        ["ConnectionBind Request", "user: turn", "realm: TANDBERG", "with nonce"],
    ),
    (
        msg(
            M.CONNECTION_BIND,
            S,
            109,
            [ConnectionId(0x5A), Software(EXPE_SOFTWARE), MessageIntegrity(), Fingerprint()],
        ),
        142,
        ["ConnectionBind Success Response"],
    ),
    (msg(M.BINDING, IND, 110, [Fingerprint()]), 82, ["Binding Indication"]),
]


def run_tshark(path: Path) -> list[dict[str, str]]:
    fields = [
        "frame.len",
        "tcp.srcport",
        "tcp.dstport",
        "_ws.col.Info",
        "_ws.malformed",
        "stun.att.crc32.status",
        "tcp.analysis.flags",
        "_ws.expert.severity",
    ]
    cmd = [
        require_tool("tshark"),
        "-n",
        "-r",
        str(path),
        "-Y",
        "tcp.len > 0",
        "-T",
        "fields",
        "-E",
        "separator=\t",
        "-E",
        "occurrence=a",
    ]
    for name in fields:
        cmd += ["-e", name]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    return [dict(zip(fields, line.split("\t"), strict=True)) for line in result.stdout.splitlines()]


def encoded(message: Message, key: bytes = KEY) -> bytes:
    return message.encode(key)


def sent_by_cms(message: Message) -> bool:
    """CMS sends the requests and its Binding Indication keepalive; Expressway-E the rest."""
    return message.cls is Class.REQUEST or message.method == M.BINDING


def conversation(n: int, server_port: int = 3478) -> TcpConversation:
    return TcpConversation((CMS, 40000 + n), (EXPE, server_port))


@pytest.fixture(scope="module")
def decoded(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    conversations = []
    for n, message in enumerate(CATALOGUE):
        conversations.append(conversation(n).send(sent_by_cms(message), encoded(message)))
    conversations.append(conversation(90).send(True, ChannelData(0x4001, b"abcde").encode()))
    ice = TcpConversation((PEER, 53577), (EXPE, 24000))
    for message in ICE_CHECKS:
        ice.send(message.cls is Class.REQUEST, frame_rfc4571(encoded(message, ICE_KEY)))
    conversations.append(ice)
    control = TcpConversation((CMS, 44340), (EXPE, 3478))
    data = TcpConversation((CMS, 44342), (EXPE, 3478))
    for message, _, _ in LAB_ROWS:
        target = data if message.method == M.CONNECTION_BIND else control
        target.send(sent_by_cms(message), encoded(message))
    conversations += [control, data]
    path = tmp_path_factory.mktemp("tshark") / "catalogue.pcap"
    write_pcap(path, conversations)
    return run_tshark(path)


def expected_messages() -> list[tuple[str, bytes]]:
    out = [(m.summary(), encoded(m)) for m in CATALOGUE]
    out.append(("ChannelData TURN Message", b""))
    out += [(m.summary(), encoded(m, ICE_KEY)) for m in ICE_CHECKS]
    lab = [m for m, _, _ in LAB_ROWS]
    ordered = [m for m in lab if m.method != M.CONNECTION_BIND] + [
        m for m in lab if m.method == M.CONNECTION_BIND
    ]
    out += [(m.summary(), encoded(m)) for m in ordered]
    return out


def test_tshark_info_equals_our_summary(decoded: list[dict[str, str]]) -> None:
    expected = expected_messages()
    assert len(decoded) == len(expected)
    for row, (summary, _) in zip(decoded, expected, strict=True):
        assert row["_ws.col.Info"] == summary


def test_no_malformed_and_good_fingerprints(decoded: list[dict[str, str]]) -> None:
    for row, (summary, data) in zip(decoded, expected_messages(), strict=True):
        assert row["_ws.malformed"] == "", summary
        assert row["tcp.analysis.flags"] == "", summary  # our seq/ack are right too
        has_fingerprint = data[-8:-6] == b"\x80\x28"
        # Wireshark's checksum status: 1 = good (0 would be bad, 2 unverified).
        assert row["stun.att.crc32.status"] == ("1" if has_fingerprint else ""), summary


def test_lab_rows_have_the_lab_frame_lengths_and_phrases() -> None:
    for message, frame_length, phrases in LAB_ROWS:
        assert 54 + len(encoded(message)) == frame_length, phrases[0]
        summary = message.summary()
        position = 0
        for phrase in phrases:
            found = summary.find(phrase, position)
            assert found >= 0, (phrase, summary)
            position = found + len(phrase)


def test_tshark_sees_the_lab_frame_lengths(decoded: list[dict[str, str]]) -> None:
    lab_rows = decoded[-len(LAB_ROWS) :]
    ordered = [r for r in LAB_ROWS if r[0].method != M.CONNECTION_BIND] + [
        r for r in LAB_ROWS if r[0].method == M.CONNECTION_BIND
    ]
    assert [int(r["frame.len"]) for r in lab_rows] == [length for _, length, _ in ordered]


def test_framed_checks_decode_as_stun_on_the_relay_leg(decoded: list[dict[str, str]]) -> None:
    start = len(CATALOGUE) + 1
    rows = decoded[start : start + len(ICE_CHECKS)]
    assert [r["_ws.col.Info"] for r in rows] == [m.summary() for m in ICE_CHECKS]
    assert rows[0]["_ws.col.Info"] == "Binding Request user: Xa3f:cM5k"


# No shrinking: each example runs tshark once; a failure reports the first batch as is.
@settings(
    max_examples=6,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
@given(st.lists(printable_messages, min_size=40, max_size=40))
def test_tshark_agrees_on_generated_messages(batch: list[Message]) -> None:
    """Hypothesis-built messages of every method and class, with every typed attribute: tshark's
    Info equals our summary for each, and none is malformed."""
    import tempfile

    # One address pair per message: Wireshark keeps state across conversations (a CHANNEL-NUMBER
    # with a peer address can make it read later frames between the same hosts as ChannelData),
    # and unrelated generated messages must not influence each other.
    conversations = [
        TcpConversation((f"10.99.{n}.1", 40000), (f"10.98.{n}.1", 3478)).send(True, m.encode())
        for n, m in enumerate(batch)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "generated.pcap"
        write_pcap(path, conversations)
        rows = run_tshark(path)
    assert len(rows) == len(batch)
    for row, message in zip(rows, batch, strict=True):
        assert row["_ws.col.Info"] == message.summary(), message.encode().hex()
        assert row["_ws.malformed"] == "", message.encode().hex()
