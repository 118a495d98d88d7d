"""The Wireshark plugin (labsim/wireshark/rfc4571_stun.lua; issue 14 §5), judged by tshark.

Without it, tshark shows the RFC 4571-framed ICE checks on the TURN data connection as plain
TCP: Wireshark's STUN dissector hands that connection to "data" after the ConnectionBind
Success Response (RFC 6062 §5.3; PROTOCOL.md §7.1), so the TechNote's `00 6c 00 01 …` is a
payload, not a row. With it, every STUN message of the run is a STUN row, with the trace's
transaction id, on the connection and in the direction the trace says: the framed checks on
the data connection and on the relay port's leg both ways, split across segments or sharing
one, and every plain STUN row as it was. It claims nothing else: SIP and other TCP data, and
near misses of its test, stay as they were.

What is expected is read from the run's trace (which messages are STUN, which were framed —
``MessageRecord.framed`` — on which connection), never written down here.
"""

from __future__ import annotations

import os
import random
import shlex
import shutil
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import dpkt
import pytest
from click.testing import CliRunner

from labsim.report.pcap import write_pcapng
from labsim.run import run_scenario
from labsim.scenario import load
from labsim.trace import ConnectionRecord, MessageRecord, Trace
from labsim.wire.framing import frame_rfc4571
from labsim.wire.stun import (
    Class,
    ConnectionId,
    Fingerprint,
    IceControlled,
    IceControlling,
    Message,
    MessageIntegrity,
    Method,
    Nonce,
    Priority,
    Realm,
    UseCandidate,
    Username,
    XorMappedAddress,
    long_term_key,
    short_term_key,
)
from labsim.wireshark import PERSONAL_PLUGINS, PLUGIN_NAME, plugin_path, tshark_arguments
from labsim.wireshark.command import wireshark_plugin

from .conftest import require_tool
from .pcapwriter import TcpConversation, write_pcap
from .test_call import LAB

ROOT = Path(__file__).parent.parent

#: One STUN message as a capture shows it: source, destination and transaction id (hex).
Seen = tuple[str, int, str, int, str]

FIELDS = (
    "frame.number",
    "ip.src",
    "tcp.srcport",
    "ip.dst",
    "tcp.dstport",
    "stun.id",
    "stun.type",
    "_ws.col.Protocol",
    "_ws.col.Info",
    "_ws.malformed",
)
PLUGIN_FIELDS = ("rfc4571stun.length",)


@dataclass(frozen=True)
class Row:
    """One frame tshark printed, with the STUN messages it decoded in it."""

    frame: int
    src: tuple[str, int]
    dst: tuple[str, int]
    ids: tuple[str, ...]
    types: tuple[int, ...]
    protocol: str
    info: str
    malformed: bool
    framing: tuple[int, ...] = ()
    """rfc4571stun.length of each message the plugin framed (with the plugin only)."""

    def seen(self) -> list[Seen]:
        return [(*self.src, *self.dst, tid) for tid in self.ids]


def _values(text: str) -> tuple[str, ...]:
    return tuple(v for v in text.split(",") if v)


@pytest.fixture(scope="module")
def isolated_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """tshark's environment with an empty home: no personal plugin (a copy of this one) and no
    personal preference changes what it shows."""
    home = tmp_path_factory.mktemp("home")
    return {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}


def tshark(
    env: dict[str, str],
    path: Path,
    *,
    plugin: bool,
    display_filter: str = "stun",
    options: Sequence[str] = (),
) -> list[Row]:
    fields = FIELDS + (PLUGIN_FIELDS if plugin else ())
    cmd = [require_tool("tshark"), "-n", "-r", str(path)]
    cmd += tshark_arguments() if plugin else []
    cmd += [*options, "-Y", display_filter, "-T", "fields", "-E", "separator=\t"]
    cmd += ["-E", "occurrence=a", "-E", "aggregator=,"]
    for name in fields:
        cmd += ["-e", name]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert done.returncode == 0, (shlex.join(cmd), done.stderr)
    assert "Lua" not in done.stderr, done.stderr  # a plugin that fails to load says so there
    rows = []
    for line in done.stdout.splitlines():
        value = dict(zip(fields, line.split("\t"), strict=True))
        rows.append(
            Row(
                frame=int(value["frame.number"]),
                src=(value["ip.src"], int(value["tcp.srcport"])),
                dst=(value["ip.dst"], int(value["tcp.dstport"])),
                ids=_values(value["stun.id"]),
                types=tuple(int(t, 16) for t in _values(value["stun.type"])),
                protocol=value["_ws.col.Protocol"],
                info=value["_ws.col.Info"],
                malformed=value["_ws.malformed"] != "",
                framing=tuple(int(n) for n in _values(value.get("rfc4571stun.length", ""))),
            )
        )
    return rows


def seen(rows: Iterable[Row]) -> Counter[Seen]:
    return Counter(s for row in rows for s in row.seen())


def seen_of(message: MessageRecord) -> Seen:
    facts = message.stun_facts
    assert facts is not None, message
    src, dst = message.src_addr, message.dst_addr
    return (src.host, src.port, dst.host, dst.port, facts.transaction_id)


def stun_messages(trace: Trace, point: str | None = None) -> list[MessageRecord]:
    """The STUN messages a capture of the run holds: every leg, or what ``point`` sent and was
    delivered on its own connections."""
    out = []
    for m in trace.messages:
        if m.protocol != "STUN" or not m.on_wire:
            continue
        conn = trace.connections[m.connection]
        if point is None or (
            point in (conn.client, conn.server) and (m.src == point or m.delivered)
        ):
            out.append(m)
    return out


# -- the default scenario's capture -----------------------------------------------------------


@dataclass
class LabCapture:
    trace: Trace
    every_leg: Path
    at_cms: Path

    def connection(self, message: MessageRecord) -> ConnectionRecord:
        return self.trace.connections[message.connection]

    def data_connection(self) -> ConnectionRecord:
        """The RFC 6062 data connection: the one CMS sent its ConnectionBind on."""
        (bind,) = [
            m
            for m in self.trace.messages
            if (facts := m.stun_facts) and facts.method == "ConnectionBind" and facts.is_request
        ]
        return self.connection(bind)

    def relay_leg(self) -> ConnectionRecord:
        """The peer leg: the connection to the relayed address Expressway-E allocated."""
        (relayed,) = {
            m.stun_facts.relayed
            for m in self.trace.messages
            if m.stun_facts is not None and m.stun_facts.relayed is not None
        }
        (leg,) = [c for c in self.trace.connections.values() if c.server_addr == relayed]
        return leg

    def framed_on(self, conn: ConnectionRecord) -> list[MessageRecord]:
        return [m for m in stun_messages(self.trace) if m.framed and m.connection == conn.id]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> LabCapture:
    result = run_scenario(load(LAB), "virtual")
    assert result.failures == []
    folder = tmp_path_factory.mktemp("lab")
    capture = LabCapture(result.trace, folder / "every-leg.pcapng", folder / "cms.pcapng")
    write_pcapng(result.trace, capture.every_leg, scenario="sharing-call")
    write_pcapng(result.trace, capture.at_cms, capture_at=["cms"], scenario="sharing-call")
    # Every STUN message reached its receiver, so every one is in either capture.
    assert all(m.delivered for m in stun_messages(result.trace))
    return capture


@pytest.mark.tshark
def test_without_the_plugin_the_checks_on_the_data_connection_are_plain_tcp(
    lab: LabCapture, isolated_home: dict[str, str]
) -> None:
    framed = lab.framed_on(lab.data_connection())
    assert {m.src for m in framed} == {"cms", "expressway_e"}  # the checks cross both ways
    rows = tshark(isolated_home, lab.every_leg, plugin=False)
    shown = seen(rows)
    assert [m for m in framed if shown[seen_of(m)]] == []
    # They are there as TCP data, each payload a frame: 2 bytes of length, then the message
    # (the TechNote's 00 6c 00 01 00 58 21 12 a4 42 ... for CMS's 108-byte check).
    payloads = tshark_data(isolated_home, lab.every_leg)
    for m in framed:
        assert any(p.startswith(frame_rfc4571(m.data)) for p in payloads), m


def tshark_data(env: dict[str, str], path: Path) -> list[bytes]:
    """The TCP payloads tshark left to the data dissector."""
    cmd = [require_tool("tshark"), "-n", "-r", str(path), "-Y", "data", "-T", "fields"]
    cmd += ["-e", "data.data"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, check=True)
    return [bytes.fromhex(line) for line in done.stdout.split()]


@pytest.mark.tshark
def test_with_the_plugin_every_stun_message_of_the_run_is_a_stun_row(
    lab: LabCapture, isolated_home: dict[str, str]
) -> None:
    rows = tshark(isolated_home, lab.every_leg, plugin=True)
    assert seen(rows) == Counter(seen_of(m) for m in stun_messages(lab.trace))
    assert not any(row.malformed for row in rows)
    # Every row tshark showed without the plugin is there unchanged: the plain STUN of the TURN
    # control connection and of the ConnectionBind, and the checks Wireshark found itself.
    before = tshark(isolated_home, lab.every_leg, plugin=False)
    after = {row.frame: row for row in rows}
    assert before, "tshark shows no STUN at all"
    for row in before:
        assert (after[row.frame].ids, after[row.frame].info) == (row.ids, row.info), row
    # Wireshark alone decodes every plain message (Allocate, Refresh, ConnectionAttempt,
    # ConnectionBind, the keepalive), so those rows are among the unchanged ones.
    plain = Counter(seen_of(m) for m in stun_messages(lab.trace) if not m.framed)
    assert plain <= seen(before)


@pytest.mark.tshark
@pytest.mark.parametrize("leg", ["data_connection", "relay_leg"])
def test_the_checks_show_on_the_leg_both_ways_with_the_trace_ids(
    lab: LabCapture, isolated_home: dict[str, str], leg: str
) -> None:
    conn: ConnectionRecord = getattr(lab, leg)()
    framed = lab.framed_on(conn)
    rows = tshark(isolated_home, lab.every_leg, plugin=True, display_filter="rfc4571stun")
    ends = {
        (conn.client_addr.host, conn.client_addr.port),
        (conn.server_addr.host, conn.server_addr.port),
    }
    on_leg = [row for row in rows if {row.src, row.dst} == ends]
    for sender in (conn.client, conn.server):
        sent = [m for m in framed if m.src == sender]
        facts = [m.stun_facts for m in sent]
        # RFC 5245 §7.2.5 / TechNote: a request and a success response each way.
        assert any(f is not None and f.is_request for f in facts), sender
        assert any(f is not None and f.is_success for f in facts), sender
        src = sent[0].src_addr
        shown = [row for row in on_leg if row.src == (src.host, src.port)]
        assert [i for row in shown for i in row.ids] == [
            f.transaction_id for f in facts if f is not None
        ]
        assert [n for row in shown for n in row.framing] == [m.size for m in sent]
        types = [t for row in shown for t in row.types]
        assert types == [0x0001 if f is not None and f.is_request else 0x0101 for f in facts]
        for row in shown:
            assert row.protocol == "STUN"
            assert row.info.startswith(("Binding Request", "Binding Success Response")), row


@pytest.mark.tshark
def test_at_the_cms_capture_point(lab: LabCapture, isolated_home: dict[str, str]) -> None:
    """The lab's capture was taken at CMS: there the plugin turns the data connection's four
    payloads into the checks, between ConnectionBind and the keepalive."""
    expected = Counter(seen_of(m) for m in stun_messages(lab.trace, "cms"))
    with_plugin = tshark(isolated_home, lab.at_cms, plugin=True)
    assert seen(with_plugin) == expected
    framed = [m for m in stun_messages(lab.trace, "cms") if m.framed]
    assert framed and {m.connection for m in framed} == {lab.data_connection().id}
    without = seen(tshark(isolated_home, lab.at_cms, plugin=False))
    assert without == expected - Counter(seen_of(m) for m in framed)


@pytest.mark.tshark
def test_the_preference_turns_it_off(lab: LabCapture, isolated_home: dict[str, str]) -> None:
    off = tshark(
        isolated_home, lab.every_leg, plugin=True, options=("-o", "rfc4571stun.enabled:FALSE")
    )
    without = tshark(isolated_home, lab.every_leg, plugin=False)
    assert [(r.frame, r.ids, r.info) for r in off] == [(r.frame, r.ids, r.info) for r in without]
    assert all(r.framing == () for r in off)


# -- a capture made by hand: split messages, shared segments -----------------------------------

CMS, EXPRESSWAY_E, EDGE = "10.48.54.230", "10.48.54.229", "192.168.1.252"
ICE_KEY = short_term_key("Hh3uY7pQ1wE5rT9iO2aS6dF0")
TURN_KEY = long_term_key("turn", "TANDBERG", "secret")


def check(n: int, controlling: bool) -> Message:
    """An ICE check (RFC 5245 §7.1.2): Binding Request, transaction id ``n``."""
    role = IceControlling(n) if controlling else IceControlled(n)
    attrs = [Priority(0x6E0001FF), role, Username("Xa3f:cM5k"), MessageIntegrity(), Fingerprint()]
    if controlling:
        attrs.insert(0, UseCandidate())
    return Message(Method.BINDING, Class.REQUEST, n.to_bytes(12, "big"), attrs)


def answer(n: int) -> Message:
    """Its Binding Success Response (RFC 5245 §7.2.2)."""
    attrs = [XorMappedAddress(EDGE, 53577), MessageIntegrity(), Fingerprint()]
    return Message(Method.BINDING, Class.SUCCESS, n.to_bytes(12, "big"), list(attrs))


def framed(message: Message) -> bytes:
    return frame_rfc4571(message.encode(ICE_KEY))


@dataclass
class Sent:
    """A message the hand-made capture holds, and which way it went."""

    message: Message
    from_client: bool


def cut_and_shared(conv: TcpConversation, sent: list[Sent], cuts: list[int]) -> None:
    """Write ``sent`` on ``conv``: each direction's frames back to back, cut into segments at
    ``cuts`` (offsets in that direction's bytes), so frames split across segments and several
    share one."""
    for from_client in (True, False):
        stream = b"".join(framed(s.message) for s in sent if s.from_client == from_client)
        edges = [0, *[c for c in cuts if 0 < c < len(stream)], len(stream)]
        for start, end in zip(edges, edges[1:], strict=False):
            conv.send(from_client, stream[start:end])


def split_capture(path: Path) -> tuple[list[tuple[TcpConversation, Sent]], int]:
    """The relay port's leg and a TURN data connection (plain ConnectionBind exchange first),
    their framed checks cut inside the length prefix, inside the STUN header, inside the
    attributes, and run together. Returns what was sent and the number of segments."""
    relay = TcpConversation((EDGE, 53577), (EXPRESSWAY_E, 24000))
    relay_sent = [Sent(check(1, False), True), Sent(check(2, False), True)]
    relay_sent += [Sent(answer(1), False), Sent(answer(2), False), Sent(check(3, True), False)]
    relay_sent += [Sent(answer(3), True)]
    # 1 byte of a prefix; 5 bytes (inside the header); 50 (inside the attributes)...
    cut_and_shared(relay, relay_sent, [1, 5, 50, 100, 101, 150, 170])
    data = TcpConversation((CMS, 44342), (EXPRESSWAY_E, 3478))
    bind = Message(
        Method.CONNECTION_BIND,
        Class.REQUEST,
        (50).to_bytes(12, "big"),
        [ConnectionId(7), Username("turn"), Realm("TANDBERG"), Nonce("n0nce"), MessageIntegrity()],
    )
    bound = Message(
        Method.CONNECTION_BIND,
        Class.SUCCESS,
        (51).to_bytes(12, "big"),
        [ConnectionId(7), MessageIntegrity(), Fingerprint()],
    )
    data.send(True, bind.encode(TURN_KEY)).send(False, bound.encode(TURN_KEY))
    data_sent = [Sent(check(11, False), False), Sent(check(12, False), False)]
    data_sent += [Sent(answer(11), True), Sent(check(13, True), True), Sent(answer(12), True)]
    data_sent += [Sent(answer(13), False)]
    cut_and_shared(data, data_sent, [7, 60, 92, 95, 140, 199, 230])
    write_pcap(path, [relay, data])
    sent = [(relay, s) for s in relay_sent] + [(data, s) for s in data_sent]
    return sent, len(relay.segments) + len(data.segments)


def seen_sent(conv: TcpConversation, s: Sent) -> Seen:
    src, dst = (conv.client, conv.server) if s.from_client else (conv.server, conv.client)
    return (*src, *dst, s.message.transaction_id.hex())


@pytest.mark.tshark
@pytest.mark.parametrize("passes", [(), ("-2",)], ids=["one-pass", "two-pass"])
def test_split_messages_and_shared_segments_are_all_found(
    tmp_path: Path, isolated_home: dict[str, str], passes: tuple[str, ...]
) -> None:
    path = tmp_path / "split.pcap"
    sent, segments = split_capture(path)
    assert segments > len(sent) + 2  # the cuts did cut
    rows = tshark(isolated_home, path, plugin=True, options=passes)
    framed_rows = Counter(s for row in rows if row.framing for s in row.seen())
    assert framed_rows == Counter(seen_sent(conv, s) for conv, s in sent)
    assert [r for r in rows if r.malformed] == []
    # Several in one segment: one Info after the other.
    for row in rows:
        if not row.framing:
            continue
        parts = row.info.split(" | ")
        assert len(parts) == len(row.ids), row
        assert all(part.startswith(("Binding Request", "Binding Success")) for part in parts), row
    assert any(len(row.ids) > 1 for row in rows if row.framing)
    # Each message once, complete: its framing length is its size.
    sizes = sorted(len(s.message.encode(ICE_KEY)) for _, s in sent)
    assert sorted(n for row in rows for n in row.framing) == sizes
    # The plain ConnectionBind exchange stays plain, and Wireshark alone decodes none of the
    # data connection's checks.
    plain = [row for row in rows if row.ids and not row.framing]
    assert [t for row in plain for t in row.types] == [0x000B, 0x010B]
    without = seen(tshark(isolated_home, path, plugin=False, options=passes))
    on_data_connection = [seen_sent(conv, s) for conv, s in sent if conv.server[1] == 3478]
    assert on_data_connection and [key for key in on_data_connection if without[key]] == []


def rtp(seq: int, size: int) -> bytes:
    """An RTP packet of payload type 127 (x-data, the sharing's media; RFC 3550 §5.1)."""
    return struct.pack("!BBHII", 0x80, 127, seq, seq * 3000, 0x5EED) + bytes(size)


def keepalive(n: int) -> Message:
    """A Binding Indication (RFC 5245 §10): FINGERPRINT only."""
    return Message(Method.BINDING, Class.INDICATION, n.to_bytes(12, "big"), [Fingerprint()])


@pytest.mark.tshark
@pytest.mark.parametrize("server_port", [24000, 3478], ids=["relay-leg", "data-connection"])
def test_media_between_the_checks_keeps_the_framing_in_step(
    tmp_path: Path, isolated_home: dict[str, str], server_port: int
) -> None:
    """After the checks the pipe carries RFC 4571-framed RTP (PROTOCOL.md §3), then framed
    Binding Indications as keepalives: a segment that begins with media, or inside a media
    frame, must not lose the keepalive behind it."""
    conv = TcpConversation(
        (EDGE if server_port != 3478 else CMS, 44000), (EXPRESSWAY_E, server_port)
    )
    if server_port == 3478:  # a data connection opens with the plain ConnectionBind exchange
        bound = Message(Method.CONNECTION_BIND, Class.SUCCESS, bytes(12), [ConnectionId(9)])
        conv.send(False, bound.encode())
    first, media = framed(check(21, False)), frame_rfc4571(rtp(1, 300))
    tail = frame_rfc4571(rtp(2, 200)) + frame_rfc4571(keepalive(22).encode())
    conv.send(True, first).send(True, media).send(True, tail[:90]).send(True, tail[90:])
    path = tmp_path / "media.pcap"
    write_pcap(path, [conv])
    rows = tshark(isolated_home, path, plugin=True, display_filter="rfc4571stun")
    assert [(row.ids, row.types) for row in rows if row.ids] == [
        (("00" * 11 + "15",), (0x0001,)),
        (("00" * 11 + "16",), (0x0011,)),
    ]
    kinds = tshark_fields(isolated_home, path, "rfc4571stun.payload")
    assert kinds == ["STUN", "RTP/RTCP", "RTP/RTCP,STUN"]


def tshark_fields(env: dict[str, str], path: Path, name: str) -> list[str]:
    """One field of every frame that has it, with the plugin."""
    cmd = [require_tool("tshark"), "-n", "-r", str(path), *tshark_arguments(), "-Y", name]
    cmd += ["-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,", "-e", name]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, check=True)
    return done.stdout.split()


def rewrite(path: Path, payload: bytes, copies: int) -> None:
    """Rewrite the capture at ``path`` with the segment carrying ``payload`` written ``copies``
    times: 0, a segment the capture missed; 2, a retransmission."""
    with path.open("rb") as fh:
        packets = list(dpkt.pcap.Reader(fh))
    with path.open("wb") as fh:
        writer = dpkt.pcap.Writer(fh, linktype=dpkt.pcap.DLT_EN10MB, snaplen=65535)
        for ts, frame in packets:
            n = copies if dpkt.ethernet.Ethernet(frame).data.data.data == payload else 1
            for i in range(n):
                writer.writepkt(frame, ts=ts + i * 0.0005)


def resend_from_earlier(path: Path, payload: bytes, earlier: bytes) -> None:
    """Rewrite the capture at ``path`` with the segment carrying ``payload`` starting
    ``len(earlier)`` bytes earlier in the stream, those bytes first: a sender that sends
    acknowledged-late bytes again together with new ones."""
    with path.open("rb") as fh:
        packets = list(dpkt.pcap.Reader(fh))
    with path.open("wb") as fh:
        writer = dpkt.pcap.Writer(fh, linktype=dpkt.pcap.DLT_EN10MB, snaplen=65535)
        for ts, frame in packets:
            eth = dpkt.ethernet.Ethernet(frame)
            ip, tcp = eth.data, eth.data.data
            if tcp.data == payload:
                tcp.seq -= len(earlier)
                tcp.data = earlier + payload
                tcp.sum = ip.sum = 0  # dpkt computes them again
                ip.len = 20 + 20 + len(tcp.data)
                frame = bytes(eth)
            writer.writepkt(frame, ts=ts)


@pytest.mark.tshark
@pytest.mark.parametrize("analysis", ["TRUE", "FALSE"], ids=["tcp-analysis", "no-tcp-analysis"])
def test_a_retransmitted_segment_is_not_a_second_message(
    tmp_path: Path, isolated_home: dict[str, str], analysis: str
) -> None:
    """TCP's analysis keeps a retransmission from its subdissectors; without it (the README's
    advice for a capture of several points) the retransmitted bytes reach "data" again."""
    conv = TcpConversation((CMS, 44000), (EXPRESSWAY_E, 3478))
    bound = Message(Method.CONNECTION_BIND, Class.SUCCESS, bytes(12), [ConnectionId(9)])
    first, second = framed(check(31, False)), framed(answer(32))
    conv.send(False, bound.encode()).send(True, first).send(True, second[:40])
    conv.send(True, second[40:])
    path = tmp_path / "again.pcap"
    write_pcap(path, [conv])
    rewrite(path, first, copies=2)
    rewrite(path, second[:40], copies=2)
    if analysis == "FALSE":
        # The last segment sent again from 10 bytes earlier, the new bytes after them. (TCP's
        # analysis calls such a segment a retransmission and gives "data" none of it.)
        resend_from_earlier(path, second[40:], second[30:40])
    option = ("-o", f"tcp.analyze_sequence_numbers:{analysis}")
    rows = tshark(isolated_home, path, plugin=True, display_filter="rfc4571stun", options=option)
    assert [row.ids for row in rows] == [("00" * 11 + "1f",), ("00" * 11 + "20",)]


@pytest.mark.tshark
def test_a_segment_the_capture_missed_costs_only_its_frame(
    tmp_path: Path, isolated_home: dict[str, str]
) -> None:
    """Bytes missing in the middle of a frame: that frame cannot be cut out; the next segment
    that begins with a framed STUN message puts the framing back in step."""
    conv = TcpConversation((CMS, 44000), (EXPRESSWAY_E, 3478))
    bound = Message(Method.CONNECTION_BIND, Class.SUCCESS, bytes(12), [ConnectionId(9)])
    first, second = framed(check(41, False)), framed(answer(42))
    conv.send(False, bound.encode()).send(True, first[:30]).send(True, first[30:])
    conv.send(True, second)
    path = tmp_path / "missed.pcap"
    write_pcap(path, [conv])
    rewrite(path, first[30:], copies=0)
    rows = tshark(isolated_home, path, plugin=True, display_filter="rfc4571stun")
    assert [row.ids for row in rows] == [("00" * 11 + "2a",)]


# -- what it must leave alone --------------------------------------------------------------------


def near_misses() -> list[bytes]:
    """Segments that almost start with a framed STUN message, each failing one part of the test
    (RFC 4571 §2 length, RFC 5389 §6 type bits, Message Length, magic cookie)."""
    good = framed(check(99, False))
    length, message_length = struct.unpack_from("!H2xH", good)

    def patch(offset: int, value: bytes) -> bytes:
        return good[:offset] + value + good[offset + len(value) :]

    return [
        patch(0, struct.pack("!H", length + 4)),  # prefix and Message Length disagree
        # Message Length not a multiple of 4, the prefix agreeing with it
        patch(0, struct.pack("!HHH", length + 2, 0x0001, message_length + 2)),
        patch(2, b"\x40\x01"),  # top bits of the type set (ChannelData, not STUN)
        patch(6, b"\x21\x12\xa4\x43"),  # not the magic cookie
        good[2:],  # the STUN message without its prefix: plain STUN
        bytes.fromhex("006c0001 0058") + bytes(104),  # the lab's first six bytes, no cookie
    ]


def sip(method: str) -> bytes:
    return (
        f"{method} sip:meeting@cms.lab SIP/2.0\r\n"
        "Via: SIP/2.0/TCP 10.48.54.228:5060;branch=z9hG4bK1\r\n"
        "From: <sip:alice@skype.lab>;tag=1\r\nTo: <sip:meeting@cms.lab>\r\nCall-ID: abc@x\r\n"
        f"CSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


@pytest.mark.tshark
def test_sip_and_other_tcp_data_are_not_claimed(
    tmp_path: Path, isolated_home: dict[str, str]
) -> None:
    rng = random.Random(4571)
    conversations = [
        TcpConversation(("10.48.54.228", 40001), (CMS, 5060)).send(True, sip("INVITE")),
        TcpConversation(("10.48.54.228", 40002), (CMS, 5070)).send(True, sip("OPTIONS")),
    ]
    for n in range(40):  # random bytes, either way, on random ports
        conv = TcpConversation(
            (f"10.9.{n}.1", rng.randrange(1024, 65536)), (f"10.8.{n}.1", 9000 + n)
        )
        for _ in range(3):
            conv.send(rng.random() < 0.5, rng.randbytes(rng.randrange(1, 400)))
        conversations.append(conv)
    for n, miss in enumerate(near_misses()):
        # Each near miss opens a connection of its own (the heuristic's first look), and
        # follows a plain ConnectionBind exchange on 3478 (where the post-dissector looks).
        conversations.append(
            TcpConversation((EDGE, 50000 + n), (EXPRESSWAY_E, 24000 + n)).send(True, miss)
        )
        bound = Message(Method.CONNECTION_BIND, Class.SUCCESS, bytes(12), [ConnectionId(n)])
        data = TcpConversation((CMS, 45000 + n), (EXPRESSWAY_E, 3478))
        conversations.append(data.send(False, bound.encode()).send(False, miss))
    path = tmp_path / "others.pcap"
    write_pcap(path, conversations)
    assert tshark(isolated_home, path, plugin=True, display_filter="rfc4571stun") == []
    every = "frame"
    with_plugin = tshark(isolated_home, path, plugin=True, display_filter=every)
    without = tshark(isolated_home, path, plugin=False, display_filter=every)
    assert [(r.frame, r.protocol, r.info, r.ids) for r in with_plugin] == [
        (r.frame, r.protocol, r.info, r.ids) for r in without
    ]
    # ... and the test is not simply blind: the same connections with the framed message
    # itself are claimed.
    good = framed(check(99, False))
    hit = [TcpConversation((EDGE, 50100), (EXPRESSWAY_E, 24100)).send(True, good)]
    write_pcap(tmp_path / "hit.pcap", hit)
    assert (
        len(tshark(isolated_home, tmp_path / "hit.pcap", plugin=True, display_filter="rfc4571stun"))
        == 1
    )


# -- the command and the package ---------------------------------------------------------------


def test_the_command_prints_the_path_and_how_to_load_it() -> None:
    result = CliRunner().invoke(wireshark_plugin, [])
    assert result.exit_code == 0, result.output
    first, *rest = result.output.splitlines()
    path = Path(first)
    assert path == plugin_path() and path.name == PLUGIN_NAME and path.is_file()
    assert path.read_text(encoding="utf-8").startswith(f"-- {PLUGIN_NAME}:")
    text = "\n".join(rest)
    assert f"tshark {shlex.join(tshark_arguments(path))} " in text
    assert f"cp {shlex.quote(str(path))} {PERSONAL_PLUGINS}" in text
    assert tshark_arguments(path) == ["-X", f"lua_script:{path}"]
    alone = CliRunner().invoke(wireshark_plugin, ["--path"])
    assert alone.exit_code == 0 and alone.output == f"{path}\n"


def test_the_plugin_ships_in_the_package(tmp_path: Path) -> None:
    """setuptools copies the plugin into a build of labsim (pyproject's package-data), so an
    installed labsim has the file the command points to."""
    source = tmp_path / "source"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "labsim", source / "labsim", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    build = tmp_path / "build"
    cmd = [sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py"]
    done = subprocess.run(
        [*cmd, "--build-lib", str(build)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    shipped = build / "labsim" / "wireshark" / PLUGIN_NAME
    assert shipped.read_bytes() == plugin_path().read_bytes()
