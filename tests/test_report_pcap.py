"""labsim.report.pcap: the pcapng rebuilt from a trace.

Hand-made traces pin the TCP details (sequence and acknowledgement numbers, FIN against RST,
zero padding of truncated data, time order, 54 bytes of headers), read back with dpkt; traces of
real TURN flows (virtual and live runtime) go to tshark, which must read the lab's rows with
their frame lengths, good checksums and FINGERPRINTs, and no TCP analysis warning.
"""

from __future__ import annotations

import io
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import dpkt
import pytest
from sipmessage import Parameters, Via

from labsim.net.live import LiveNetwork
from labsim.net.virtual import VirtualNetwork
from labsim.proto.events import Actor
from labsim.proto.turn_client import TurnClientSettings
from labsim.proto.turn_server import TurnServer, TurnServerSettings
from labsim.report.pcap import ACK_DELAY, LAB_CAPTURE_START, wire_payload, write_pcapng
from labsim.trace import RAW_KEEP, MessageRecord, Trace
from labsim.wire import sip, stun
from labsim.wire.address import Address
from labsim.wire.framing import frame_rfc4571

from .conftest import load_hex, require_tool
from .turn_actors import Board, CmsLike, SkypePeer

EXPE_IP, CMS_IP, EDGE_IP = "10.48.54.229", "10.48.54.230", "192.168.1.252"
CMS = Address(CMS_IP, 44342)
EXPE = Address(EXPE_IP, 3478)
# The lab's first Allocate (PROTOCOL.md §10): 44 bytes, a 98-byte frame.
ALLOCATE = stun.Message(
    stun.Method.ALLOCATE, stun.Class.REQUEST, bytes(range(12)),
    [stun.RequestedTransport(6), stun.Lifetime(600), stun.Fingerprint()],
).encode()  # fmt: skip
ERROR_401 = load_hex("stun/turn-allocate-401.hex")
CHECK = load_hex("stun/rfc5769-2.1-request.hex")

SYN, ACK, PSH = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH
FIN, RST = dpkt.tcp.TH_FIN, dpkt.tcp.TH_RST
# What tshark must never report on a capture of ours (RST packets are a warning of their own:
# the tests that write one say which).
PROBLEMS = "tcp.analysis.flags || _ws.malformed || _ws.expert.severity >= warning"
CHECKSUMS = ["-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE"]


# -- reading a capture back -------------------------------------------------------------------


@dataclass
class Seg:
    ts: float
    length: int
    src: Address
    dst: Address
    flags: int
    seq: int
    ack: int
    payload: bytes
    ip_len: int


def read(path: Path) -> list[Seg]:
    out = []
    with path.open("rb") as fh:
        reader = dpkt.pcapng.Reader(fh)
        assert reader.datalink() == dpkt.pcap.DLT_EN10MB
        assert reader.snaplen == 65535
        for ts, buf in reader:
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            tcp = ip.data
            out.append(Seg(
                ts, len(buf),
                Address(dpkt.utils.inet_to_str(ip.src), tcp.sport),
                Address(dpkt.utils.inet_to_str(ip.dst), tcp.dport),
                tcp.flags, tcp.seq, tcp.ack, bytes(tcp.data),
                ip.len if isinstance(ip, dpkt.ip.IP) else ip.plen,
            ))  # fmt: skip
    return out


def tshark(path: Path, *args: str) -> list[str]:
    exe = require_tool("tshark")
    out = subprocess.run(
        [exe, "-r", str(path), *CHECKSUMS, *args], capture_output=True, timeout=30, check=True
    )
    return out.stdout.decode().splitlines()


def problems(path: Path) -> list[str]:
    return tshark(path, "-Y", PROBLEMS)


def flags(segs: list[Seg]) -> list[tuple[Address, int]]:
    return [(s.src, s.flags) for s in segs]


def pcap_of(trace: Trace, tmp_path: Path, name: str = "run.pcapng") -> Path:
    path = tmp_path / name
    write_pcapng(trace, path)
    return path


def conversation() -> Trace:
    trace = Trace()
    trace.opened(0.5, 1, "cms", CMS, "expressway_e", EXPE)
    trace.sent(1.0, 1, True, ALLOCATE, "stun")
    trace.sent(1.25, 1, False, ERROR_401, "stun")
    return trace


# -- hand-made traces: exact TCP ----------------------------------------------------------------


def test_handshake_data_acks_and_fin_have_exact_numbers(tmp_path: Path) -> None:
    trace = conversation()
    trace.closed(2.0, 1, "cms")
    segs = read(pcap_of(trace, tmp_path))
    c, s = segs[0].seq, segs[1].seq  # the initial sequence numbers
    assert c != s and {c, s}.isdisjoint({0, 1})
    # RFC 793: SYN and FIN take one sequence number each; every ACK names the next byte.
    assert [(x.src, x.flags, x.seq, x.ack, len(x.payload)) for x in segs] == [
        (CMS, SYN, c, 0, 0),
        (EXPE, SYN | ACK, s, c + 1, 0),
        (CMS, ACK, c + 1, s + 1, 0),
        (CMS, PSH | ACK, c + 1, s + 1, 44),
        (EXPE, ACK, s + 1, c + 45, 0),
        (EXPE, PSH | ACK, s + 1, c + 45, 72),
        (CMS, ACK, c + 45, s + 73, 0),
        (CMS, FIN | ACK, c + 45, s + 73, 0),
        (EXPE, FIN | ACK, s + 73, c + 46, 0),
        (CMS, ACK, c + 46, s + 74, 0),
    ]
    assert segs[3].payload == ALLOCATE and segs[5].payload == ERROR_401
    # 54 bytes of headers: the lab's 44-byte Allocate is a 98-byte frame.
    assert len(ALLOCATE) == 44
    assert [x.length for x in segs] == [54, 54, 54, 98, 54, 126, 54, 54, 54, 54]
    assert all(x.ip_len == x.length - 14 for x in segs)
    # start + trace time; the receiver's ACK a moment after the data.
    start = datetime(2017, 8, 17, 8, 3, tzinfo=UTC).timestamp()
    assert LAB_CAPTURE_START == start
    assert [round(x.ts - start, 6) for x in segs] == [
        0.5, 0.5, 0.5, 1.0, 1.0 + ACK_DELAY, 1.25, 1.25 + ACK_DELAY,
        2.0, 2.0 + ACK_DELAY, 2.0 + 2 * ACK_DELAY,
    ]  # fmt: skip


def test_checksums_and_lengths_are_what_dpkt_recomputes(tmp_path: Path) -> None:
    path = pcap_of(conversation(), tmp_path)
    with path.open("rb") as fh:
        for _, buf in dpkt.pcapng.Reader(fh):
            ip = dpkt.ethernet.Ethernet(buf).data
            written_ip, written_tcp = ip.sum, ip.data.sum
            ip.sum = ip.data.sum = 0
            bytes(ip)  # recomputes both
            assert (ip.sum, ip.data.sum) == (written_ip, written_tcp)


def test_same_trace_same_bytes_and_isns_differ_between_connections(tmp_path: Path) -> None:
    trace = conversation()
    trace.opened(0.6, 2, "cms", Address(CMS_IP, 44343), "expressway_e", EXPE)
    first, second = io.BytesIO(), io.BytesIO()
    write_pcapng(trace, first)  # a file object works too
    write_pcapng(trace, second)
    assert first.getvalue() == second.getvalue()
    path = tmp_path / "a.pcapng"
    path.write_bytes(first.getvalue())
    syns = [x.seq for x in read(path) if x.flags & SYN]
    assert len(set(syns)) == 4


def test_reset_by_the_server_is_one_rst_and_no_fin(tmp_path: Path) -> None:
    trace = conversation()
    trace.closed(3.0, 1, "expressway_e", reset=True)
    trace.sent(3.5, 1, True, ALLOCATE, "stun")  # after a reset: TCP carries nothing more
    segs = read(pcap_of(trace, tmp_path))
    last = segs[-1]
    assert (last.src, last.flags) == (EXPE, RST | ACK)
    assert (last.seq, last.ack) == (segs[5].seq + 72, segs[4].ack)
    assert not any(x.flags & FIN for x in segs)
    assert len(segs) == 8


def test_closed_by_the_network_and_never_closed(tmp_path: Path) -> None:
    trace = conversation()
    trace.opened(1.5, 2, "cms", Address(CMS_IP, 44343), "expressway_e", EXPE)
    trace.closed(2.0, 2, "network", reset=True)
    segs = read(pcap_of(trace, tmp_path))
    by_conn = [x for x in segs if 44343 in (x.src.port, x.dst.port)]
    assert flags(by_conn)[-1] == (Address(CMS_IP, 44343), RST | ACK)  # one side: the client
    first = [x for x in segs if 44342 in (x.src.port, x.dst.port)]
    assert flags(first)[-2:] == [(EXPE, PSH | ACK), (CMS, ACK)]  # just ends, no FIN


def test_truncated_raw_data_is_padded_with_zeros_to_its_size(tmp_path: Path) -> None:
    trace = conversation()
    data = bytes(range(1, 256)) * 20  # 5100 bytes, no zero byte among them
    (record,) = trace.sent(1.5, 1, False, data, "raw")
    assert len(record.data) == RAW_KEEP and record.size == 5100
    trace.sent(1.75, 1, True, ALLOCATE, "stun")
    segs = read(pcap_of(trace, tmp_path))
    (seg,) = [x for x in segs if len(x.payload) > 1000]
    assert seg.payload == data[:RAW_KEEP] + bytes(5100 - RAW_KEEP)
    following = [x for x in segs if x.ts > seg.ts and x.payload]
    # The next data of that side would start 5100 bytes on; the client acknowledges all of it.
    assert following[0].ack == seg.seq + 5100


def test_rfc4571_frames_get_their_length_back_also_when_relayed(tmp_path: Path) -> None:
    trace = conversation()
    (framed,) = trace.sent(1.5, 1, True, frame_rfc4571(CHECK), "rfc4571")
    assert framed.data == CHECK and wire_payload(framed) == frame_rfc4571(CHECK)
    # A relay's write of two framed checks: two messages, one segment each, prefix and all.
    records = trace.sent(1.6, 1, False, frame_rfc4571(CHECK) * 2, "raw")
    assert [r.relayed for r in records] == [True, True]
    assert [wire_payload(r) for r in records] == [frame_rfc4571(CHECK)] * 2
    segs = read(pcap_of(trace, tmp_path))
    data = [x.payload for x in segs if x.payload]
    assert data == [ALLOCATE, ERROR_401, *[frame_rfc4571(CHECK)] * 3]


def test_a_dropped_message_adds_no_segment(tmp_path: Path) -> None:
    trace = conversation()
    [unit] = trace.cut(1.5, 1, True, ALLOCATE, "stun")
    trace.drop(unit, 1.5, rule=1)
    assert unit[0].fate == "dropped" and wire_payload(unit[0]) is None
    segs = read(pcap_of(trace, tmp_path))
    assert [x.payload for x in segs if x.payload] == [ALLOCATE, ERROR_401]


def test_large_payloads_are_cut_to_fit_the_snapshot_length(tmp_path: Path) -> None:
    trace = conversation()
    data = b"\x01" * 200_000
    trace.sent(1.5, 1, True, data, "raw")
    trace.sent(1.5, 1, True, frame_rfc4571(CHECK), "raw")
    trace.closed(1.5, 1, "cms")
    path = pcap_of(trace, tmp_path)
    segs = read(path)
    big = [x for x in segs if x.src == CMS and len(x.payload) > 1000]
    # The framed check right after it is bulk data too (sniffing stopped at the first
    # non-STUN frame) and joins the same record: 200 000 + 110 bytes.
    assert [len(x.payload) for x in big] == [65481, 65481, 65481, 3667]
    assert all(x.length <= 65535 for x in segs)
    assert b"".join(x.payload for x in big) == data[:RAW_KEEP] + bytes(200_110 - RAW_KEEP)
    for earlier, later in zip(big, big[1:], strict=False):
        assert later.seq == earlier.seq + len(earlier.payload)
    assert problems(path) == []


def test_frames_of_all_connections_in_time_order_and_acks_never_overtake(
    tmp_path: Path,
) -> None:
    trace = Trace()
    other = Address(CMS_IP, 44400)
    trace.opened(0.0, 1, "cms", CMS, "expressway_e", EXPE)
    trace.opened(0.0, 2, "cms", other, "expressway_e", EXPE)
    trace.sent(0.3, 2, True, ALLOCATE, "stun")
    trace.sent(0.1, 1, True, ALLOCATE, "stun")  # recorded later, happened earlier
    trace.sent(0.2, 1, False, ERROR_401, "stun")
    # The answer leaves 20 µs after the request: the request's ACK must come before it.
    trace.sent(0.20002, 1, True, ALLOCATE, "stun")
    trace.sent(0.3, 1, False, ERROR_401, "stun")
    segs = read(pcap_of(trace, tmp_path))
    times = [x.ts for x in segs]
    assert times == sorted(times)
    conn1 = [x for x in segs if CMS in (x.src, x.dst)]
    assert flags(conn1)[3:9] == [
        (CMS, PSH | ACK), (EXPE, ACK), (EXPE, PSH | ACK), (CMS, ACK),
        (CMS, PSH | ACK), (EXPE, ACK),
    ]  # fmt: skip
    assert conn1[6].ts - conn1[5].ts == pytest.approx(0.00002, abs=2e-6)
    # Equal times keep the trace's order: connection 2's data at 0.3 was recorded first.
    at_03 = [x for x in segs if round(x.ts - LAB_CAPTURE_START, 6) == 0.3 and x.payload]
    assert [x.src for x in at_03] == [other, EXPE]


def test_half_close_then_peer_data_then_its_fin(tmp_path: Path) -> None:
    trace = conversation()
    trace.closed(2.0, 1, "cms")
    trace.sent(2.5, 1, False, ERROR_401, "stun")  # the server still had something to say
    path = pcap_of(trace, tmp_path)
    segs = read(path)
    assert flags(segs)[7:] == [
        (CMS, FIN | ACK), (EXPE, ACK), (EXPE, PSH | ACK), (CMS, ACK),
        (EXPE, FIN | ACK), (CMS, ACK),
    ]  # fmt: skip
    assert problems(path) == []


def test_refused_and_timed_out_connects(tmp_path: Path) -> None:
    trace = Trace()
    trace.opened(0.0, 1, "skype_edge", Address(EDGE_IP, 60000), "expressway_e", EXPE)
    trace.refuse(1.0, "skype_edge", EDGE_IP, Address(EXPE_IP, 24000), "refused")
    trace.refuse(2.0, "skype_edge", EDGE_IP, Address(EXPE_IP, 24001), "timeout")
    segs = read(pcap_of(trace, tmp_path))[3:]
    syn, rst, lone = segs
    assert (syn.flags, syn.dst, rst.flags, rst.src) == (SYN, Address(EXPE_IP, 24000), RST | ACK,
                                                        Address(EXPE_IP, 24000))  # fmt: skip
    assert rst.ack == syn.seq + 1 and rst.seq == 0
    assert syn.src.port != 60000  # not the port the open connection of that host uses
    assert (lone.flags, lone.dst) == (SYN, Address(EXPE_IP, 24001))


def test_a_timed_out_connect_retransmits_its_syn_as_linux_does(tmp_path: Path) -> None:
    trace = Trace()
    # Started at 1 s, given up at 9 s: SYNs at 1, then 2, 4, 8 (1, 3, 7 s after the first;
    # the next would be 15 s after it, when the connect had already given up).
    trace.refuse(9.0, "skype_edge", EDGE_IP, Address(EXPE_IP, 24000), "timeout", started=1.0)
    # Given up at exactly 3 s after its start: the retransmission due then never left.
    trace.refuse(13.0, "cms", CMS_IP, Address(EXPE_IP, 3478), "timeout", started=10.0)
    trace.refuse(20.0, "skype_edge", EDGE_IP, Address(EXPE_IP, 24001), "refused", started=19.99)
    trace.refuse(21.0, "cms", CMS_IP, Address(EXPE_IP, 24002), "no route", how="unreachable")
    segs = read(pcap_of(trace, tmp_path))
    to = {
        a: [x for x in segs if a in (x.dst, x.src)] for a in {x.dst for x in segs if x.flags == SYN}
    }
    relay = to[Address(EXPE_IP, 24000)]
    assert [round(x.ts - LAB_CAPTURE_START, 6) for x in relay] == [1.0, 2.0, 4.0, 8.0]
    assert {(x.flags, x.seq, x.src) for x in relay} == {(SYN, relay[0].seq, relay[0].src)}
    assert [round(x.ts - LAB_CAPTURE_START, 6) for x in to[Address(EXPE_IP, 3478)]] == [
        10.0, 11.0
    ]  # fmt: skip
    syn, rst = to[Address(EXPE_IP, 24001)]
    assert (syn.flags, rst.flags, rst.ack) == (SYN, RST | ACK, syn.seq + 1)
    # The SYN when the connect started, the RST when it came back.
    assert (round(syn.ts - LAB_CAPTURE_START, 6), round(rst.ts - LAB_CAPTURE_START, 6)) == (
        19.99, 20.0
    )  # fmt: skip
    assert [x.flags for x in to[Address(EXPE_IP, 24002)]] == [SYN]


def test_a_refusal_needs_to_say_how_it_failed() -> None:
    with pytest.raises(ValueError, match="say how"):
        Trace().refuse(1.0, "cms", CMS_IP, Address(EXPE_IP, 3478), "Connection reset by peer")


# -- tshark on the captures of blocked connects ---------------------------------------------------

#: The Skype Edge's SYNs to Expressway-E's relay range (CMS's relay candidate).
RELAY_SYNS = "tcp.flags.syn == 1 && tcp.flags.ack == 0 && tcp.dstport in {24000..29999}"


def relay_blocked(how: str, clock: str, tmp_path: Path) -> Path:
    """``relay-ports-blocked.yaml``, with the firewall rejecting or dropping, as a capture."""
    from labsim.run import run_scenario
    from labsim.scenario import library_dir, loads

    library = library_dir() / "relay-ports-blocked.yaml"
    rule = "{block: {from: skype_edge, to: expressway_e, ports: [24000, 29999], how: %s}}"
    sc = loads(f"extends: {library}\nfaults: [{rule % how}]\n", source="blocked.yaml")
    result = run_scenario(sc, clock)  # type: ignore[arg-type]
    assert result.outcome.name == "ice-failed" and result.trace.unmatched_rules == []
    [refused] = result.trace.refused
    assert refused.how == ("refused" if how == "refuse" else "timeout")
    return pcap_of(result.trace, tmp_path)


@pytest.mark.tshark
@pytest.mark.parametrize("clock", ["virtual", "live"])
def test_tshark_sees_a_blackholed_connect_retransmit_its_syn(clock: str, tmp_path: Path) -> None:
    path = relay_blocked("blackhole", clock, tmp_path)
    fields = ["frame.time_epoch", "tcp.stream", "tcp.seq_raw", "tcp.analysis.retransmission"]
    out = tshark(path, "-Y", RELAY_SYNS, "-T", "fields", *(a for f in fields for a in ("-e", f)))
    rows = [r.split("\t") for r in out]
    # The Edge's connect gives up after 5 s: its SYN, then the retransmissions 1 and 3 s later.
    assert len(rows) >= 2
    assert len({(stream, seq) for _, stream, seq, _ in rows}) == 1  # one connect, one ISN
    assert [flag for *_, flag in rows] == ["", *["1"] * (len(rows) - 1)]
    first = float(rows[0][0])
    gaps = [round(float(t) - first, 3) for t, *_ in rows]
    assert gaps == [0.0, 1.0, 3.0, 7.0, 15.0][: len(rows)]
    # Nothing answers: no RST from the relay range.
    assert tshark(path, "-Y", "tcp.flags.reset == 1 && tcp.srcport in {24000..29999}") == []


@pytest.mark.tshark
@pytest.mark.parametrize("clock", ["virtual", "live"])
def test_tshark_sees_a_refused_connect_answered_by_a_reset(clock: str, tmp_path: Path) -> None:
    path = relay_blocked("refuse", clock, tmp_path)
    relay = "tcp.dstport in {24000..29999} || tcp.srcport in {24000..29999}"
    rows = tshark(path, "-Y", relay, "-T", "fields", "-e", "tcp.flags.str",
                  "-e", "tcp.analysis.retransmission")  # fmt: skip
    assert [r.split("\t") for r in rows] == [["··········S·", ""], ["·······A·R··", ""]]


# -- tshark on hand-made traces -------------------------------------------------------------------


@pytest.mark.tshark
def test_tshark_reads_a_clean_capture_and_sees_a_corrupted_one(tmp_path: Path) -> None:
    trace = conversation()
    trace.sent(1.5, 1, False, bytes(range(1, 256)) * 4, "raw")
    trace.closed(2.0, 1, "cms")
    path = pcap_of(trace, tmp_path)
    assert problems(path) == []
    rows = tshark(path, "-T", "fields", "-e", "frame.len", "-e", "ip.checksum.status",
                  "-e", "tcp.checksum.status", "-e", "stun.att.crc32.status")  # fmt: skip
    assert len(rows) == 12 and all(r.split("\t")[1:3] == ["1", "1"] for r in rows)
    assert [r.split("\t")[0] for r in rows if r.endswith("\t1")] == ["98"]  # the FINGERPRINT
    comments = tshark(path, "-Y", "frame.comment", "-T", "fields", "-e", "frame.comment")
    assert comments[0] == "cms → expressway_e [cms/1]: Allocate Request TCP lifetime: 600"
    assert "kept the first 256 of 1020 bytes; the rest is written as zeros" in comments[2]
    # The check is live: one flipped payload byte breaks the TCP checksum and tshark says so.
    raw = bytearray(path.read_bytes())
    raw[raw.index(ALLOCATE) + 30] ^= 0xFF
    bad = tmp_path / "bad.pcapng"
    bad.write_bytes(bytes(raw))
    assert len(problems(bad)) == 1


@pytest.mark.tshark
def test_tshark_names_a_reset_and_nothing_else(tmp_path: Path) -> None:
    trace = conversation()
    trace.closed(2.0, 1, "cms", reset=True)
    path = pcap_of(trace, tmp_path)
    rows = tshark(path, "-Y", "_ws.expert.severity >= warning", "-T", "fields",
                  "-e", "tcp.flags.str", "-e", "_ws.expert.message")  # fmt: skip
    assert [r.split("\t")[1] for r in rows] == ["Connection reset (RST)"]
    assert tshark(path, "-Y", "tcp.analysis.flags || _ws.malformed") == []


@pytest.mark.tshark
def test_tshark_decodes_a_sip_invite_on_5060(tmp_path: Path) -> None:
    invite = sip.encode(
        sip.build_request(
            "INVITE", "sip:meeting@cms.example.com;transport=tcp",
            via=Via("TCP", "10.1.1.50", 50322, Parameters(branch="z9hG4bKclient1")),
            from_addr="<sip:skypeuser@example.net>;tag=ft1",
            to_addr="<sip:meeting@cms.example.com>", call_id="call-1@example.net", cseq=1,
            content_type="application/sdp", body=b"v=0\r\n",
        )
    )  # fmt: skip
    trace = Trace()
    client, server = Address("10.1.1.50", 50322), Address("10.48.54.231", 5060)
    trace.opened(0.0, 1, "skype_client", client, "skype_edge", server)
    assert trace.sent(0.1, 1, True, invite[:40], "sip") == []
    (record,) = trace.sent(0.2, 1, True, invite[40:], "sip")  # one message, one segment
    assert record.summary == "INVITE"
    trace.closed(0.3, 1, "skype_client")
    path = pcap_of(trace, tmp_path)
    rows = tshark(path, "-Y", 'sip.Method == "INVITE"', "-T", "fields", "-e", "frame.len")
    assert rows == [str(54 + len(invite))]
    assert problems(path) == []


@pytest.mark.tshark
def test_ipv6_connections_have_74_bytes_of_headers(tmp_path: Path) -> None:
    trace = Trace()
    trace.opened(0.0, 1, "cms", Address("2001:db8::6", 44342), "expressway_e",
                 Address("2001:db8::5", 3478))  # fmt: skip
    trace.sent(0.1, 1, True, ALLOCATE, "stun")
    trace.closed(0.2, 1, "cms")
    path = pcap_of(trace, tmp_path)
    rows = tshark(path, "-Y", "stun", "-T", "fields", "-e", "frame.len", "-e", "ipv6.src",
                  "-e", "tcp.checksum.status", "-e", "_ws.col.Info")  # fmt: skip
    assert rows == ["118\t2001:db8::6\t1\tAllocate Request TCP lifetime: 600"]
    assert problems(path) == []


# -- real flows ---------------------------------------------------------------------------------


@dataclass
class CountingTrace(Trace):
    """A trace that also counts every byte handed to ``sent``: what went on the wire."""

    wire_bytes: Counter[tuple[int, bool]] = field(default_factory=Counter)

    def sent(
        self, t: float, conn: int, from_client: bool, data: bytes, framing: str = "raw"
    ) -> list[MessageRecord]:
        self.wire_bytes[(conn, from_client)] += len(data)
        return super().sent(t, conn, from_client, data, framing)


def run_lab(
    clock: str = "virtual", *, hangup_after: float = 6.0, turn_port: int = 3478,
    relays: tuple[int, int] = (24000, 24009),
) -> tuple[CountingTrace, Board]:  # fmt: skip
    """The passive RFC 6062 flow of the lab: Allocate (401, then authenticated), Refresh,
    ConnectionAttempt, ConnectionBind, RFC 4571-framed ICE checks both ways through the relay,
    the keepalive Binding Indication 5 s after allocating, release. Lab ports on the virtual
    runtime; live runs bind other ports (a system coturn may hold 3478)."""
    board = Board()
    actors: list[Actor] = [
        TurnServer("expressway_e", EXPE_IP,
                   TurnServerSettings(port=turn_port, relay_ports=relays)).actor(),
        CmsLike(CMS_IP, TurnClientSettings(), board, server=Address(EXPE_IP, turn_port),
                hangup_after=hangup_after, peer_host=EDGE_IP),
        SkypePeer(EDGE_IP, board),
    ]  # fmt: skip
    trace = CountingTrace()
    network = VirtualNetwork if clock == "virtual" else LiveNetwork
    network(actors, trace).run(until=20.0, stop=lambda _t: board.done)
    assert board.released and board.checks_answered == 1
    return trace, board


def payload_totals(path: Path) -> Counter[tuple[str, str]]:
    """Payload bytes per direction, as tshark counts them."""
    rows = tshark(path, "-T", "fields", "-E", "separator=,", "-e", "ip.src", "-e", "tcp.srcport",
                  "-e", "ip.dst", "-e", "tcp.dstport", "-e", "tcp.len")  # fmt: skip
    totals: Counter[tuple[str, str]] = Counter()
    for row in rows:
        src, sport, dst, dport, length = row.split(",")
        totals[(f"{src}:{sport}", f"{dst}:{dport}")] += int(length)
    return totals


def expected_totals(trace: CountingTrace) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for (conn, from_client), n in trace.wire_bytes.items():
        c = trace.connections[conn]
        a, b = (c.client_addr, c.server_addr) if from_client else (c.server_addr, c.client_addr)
        out[(str(a), str(b))] += n
    return out


LAB_ROWS = [  # PROTOCOL.md §10: direction, frame length, start of the Info column
    ("cms", 98, "Allocate Request"),
    ("expe", 230, "Allocate Error Response"),
    ("cms", 202, "Allocate Request user: turn realm: TANDBERG with nonce TCP"),
    ("expe", 166, "Allocate Success Response lifetime: 600 XOR-MAPPED-ADDRESS: 10.48."),
    ("cms", 190, "Refresh Request user: turn realm: TANDBERG with nonce lifetime: 6"),
    ("expe", 142, "Refresh Success Response lifetime: 600"),
    ("expe", 154, "ConnectionAttempt Indication XOR-PEER-ADDRESS: 192.168.1.252:"),
    ("cms", 190, "ConnectionBind Request user: turn realm: TANDBERG with nonce"),
    ("expe", 142, "ConnectionBind Success Response"),
    ("cms", 82, "Binding Indication"),
]


@pytest.mark.tshark
def test_virtual_lab_flow_reads_like_the_lab_capture(tmp_path: Path) -> None:
    trace, _ = run_lab()
    path = pcap_of(trace, tmp_path)
    assert problems(path) == []
    assert payload_totals(path) == expected_totals(trace)
    rows = [r.split("\t") for r in tshark(
        path, "-Y", "tcp.port == 3478 && stun", "-T", "fields", "-e", "ip.src", "-e",
        "frame.len", "-e", "stun.att.crc32.status", "-e", "_ws.col.Info")]  # fmt: skip
    who = {CMS_IP: "cms", EXPE_IP: "expe"}
    assert [(who[r[0]], int(r[1])) for r in rows[:10]] == [(d, n) for d, n, _ in LAB_ROWS]
    for row, (_, _, info) in zip(rows, LAB_ROWS, strict=False):
        assert row[3].startswith(info), row
    assert all(r[2] == "1" for r in rows)  # every FINGERPRINT good
    # tshark's Info is the trace's summary, message by message. (The RFC 4571-framed checks
    # CMS sends on its data connection after the bind are TCP data to tshark, as in the lab.)
    on_3478 = [
        m.summary for m in trace.messages
        if m.framing == "stun" and trace.connections[m.connection].server_addr.port == 3478
    ]  # fmt: skip
    assert [r[3] for r in rows] == on_3478
    # The checks crossing the relay: tshark finds the RFC 4571-framed STUN on the relay leg.
    relay = tshark(path, "-Y", "tcp.port == 24000 && stun.type == 0x0001", "-T", "fields",
                   "-e", "stun.att.username")  # fmt: skip
    assert relay and all(r.startswith("Xa3f:cM5k") for r in relay)


@pytest.mark.tshark
def test_live_lab_flow_gives_a_clean_capture_with_every_byte(tmp_path: Path) -> None:
    trace, _ = run_lab("live", hangup_after=0.3, turn_port=34791, relays=(44110, 44119))
    path = pcap_of(trace, tmp_path)
    assert problems(path) == []
    assert payload_totals(path) == expected_totals(trace)
    stun = tshark(path, "-Y", "stun", "-T", "fields", "-e", "stun.att.crc32.status")
    assert len(stun) >= 12 and all(set(r.split(",")) == {"1"} for r in stun)


def test_virtual_lab_flow_payload_totals_without_tshark(tmp_path: Path) -> None:
    trace, _ = run_lab()
    segs = read(pcap_of(trace, tmp_path))
    totals: Counter[tuple[str, str]] = Counter()
    for x in segs:
        totals[(str(x.src), str(x.dst))] += len(x.payload)
    assert +totals == expected_totals(trace)
    assert [x.ts for x in segs] == sorted(x.ts for x in segs)
    assert sum(1 for x in segs if x.flags & FIN) == 2 * len(trace.connections)
