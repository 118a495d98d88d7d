"""labsim's pcap against a real kernel capture of the same live run (issue 13, part 2).

``dumpcap -i lo`` captures a live run of the lab call, filtered on the run's own loopback block
(``net 127.A.B.0/24``: other tests' runs, in other blocks, stay out). The run's map
(``LiveNetwork.loopback_of``) turns the block's addresses back into lab hosts; ports need no
mapping, since an actor listens on the lab's port and every connection the trace records names
the real ports its socket had (``ConnectionRecord.client_addr``/``server_addr``). Both captures
are read back with dpkt and every TCP connection is reassembled by sequence numbers, from its
SYN's initial sequence number on (retransmitted and out-of-order segments are placed where they
belong; an overlap that disagrees or a hole is an error). Then, for every connection:

* its byte stream in each direction in the kernel's capture equals the one in labsim's pcap;
* the set of connections is the same: matched by (client, server) lab endpoints, and by order
  of their SYNs when one pair of endpoints carried more than one connection;
* the kernel shows every SYN, FIN and RST labsim's pcap shows, sent by the same side.

Not compared: connects that never opened. labsim's pcap draws their SYNs as a capture in the
lab would show them, but the live runtime decides those the scenario's firewall refuses or
black-holes (its blocked pairs, ``block`` faults) without putting a packet on the wire. The
kernel may also show more than labsim's pcap around a connection's end: the run's shutdown
aborts (RST) sockets the actors left open, which the trace does not record as closes.

dumpcap says "Capturing on" before it really captures, so UDP probes to an address of the
block no lab host gets say when it does. Runs: the lab call, and the TURN data connection cut
by the network (RST) 0.3 s in, and a cut after 100 bytes, inside a message (the part that
crossed shows before the RST in both).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dpkt
import pytest

from labsim.net.live import LiveNetwork
from labsim.report.pcap import write_pcapng
from labsim.run import build, network
from labsim.scenario import Scenario
from labsim.trace import Trace
from labsim.wire.address import Address

from .conftest import require_tool
from .labs import variant

#: Seconds dumpcap may take to open lo and print "Capturing on"; to exit after SIGTERM.
DUMPCAP_START = 10.0
DUMPCAP_STOP = 10.0
#: Seconds after the run before dumpcap is stopped: the last segments reach its buffer.
SETTLE = 0.3
#: Where the UDP probes go that tell dumpcap's capture has begun: the block's last address.
PROBE_HOST, PROBE_PORT = 254, 9
_SEQ_MOD = 1 << 32
_FLAGS = {"SYN": dpkt.tcp.TH_SYN, "FIN": dpkt.tcp.TH_FIN, "RST": dpkt.tcp.TH_RST}


# -- reading and reassembling a capture ----------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """One TCP segment as a capture shows it."""

    us: int
    src: Address
    dst: Address
    seq: int
    flags: int
    payload: bytes


def segments(path: Path) -> Iterator[Segment]:
    """The TCP segments of a pcap or pcapng file with Ethernet frames (what labsim writes and
    what dumpcap captures on lo, whose frames carry an Ethernet header of zero addresses)."""
    with path.open("rb") as fh:
        head = fh.read(4)
        fh.seek(0)
        reader = dpkt.pcapng.Reader(fh) if head == b"\x0a\x0d\x0d\x0a" else dpkt.pcap.Reader(fh)
        assert reader.datalink() == dpkt.pcap.DLT_EN10MB, reader.datalink()
        for ts, buf in reader:
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if not isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6) or not isinstance(
                ip.data, dpkt.tcp.TCP
            ):
                continue
            tcp = ip.data
            src = ipaddress.ip_address(ip.src).compressed
            dst = ipaddress.ip_address(ip.dst).compressed
            yield Segment(
                round(float(ts) * 1_000_000), Address(src, tcp.sport), Address(dst, tcp.dport),
                tcp.seq, tcp.flags, bytes(tcp.data),
            )  # fmt: skip


@dataclass
class Half:
    """One direction of a connection: its segments placed by sequence number."""

    isn: int | None = None
    """The sequence number of this side's SYN; None: no SYN seen (the first byte's is used)."""
    pieces: dict[int, bytes] = field(default_factory=dict)
    """Offset (from the first byte after the SYN) -> payload; a retransmission adds nothing new."""
    flags: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    _first_seq: int | None = None

    def add(self, seg: Segment) -> None:
        for name, bit in _FLAGS.items():
            if seg.flags & bit:
                self.flags.add(name)
        if seg.flags & dpkt.tcp.TH_SYN:
            if self.isn is not None and self.isn != seg.seq:
                self.errors.append(f"SYN with sequence {seg.seq}, the first had {self.isn}")
            self.isn = seg.seq
        if not seg.payload:
            return
        if self._first_seq is None:
            self._first_seq = seg.seq
        base = (self.isn + 1) if self.isn is not None else self._first_seq
        offset = (seg.seq - base) % _SEQ_MOD
        if seg.flags & dpkt.tcp.TH_SYN:
            offset = 0  # data on a SYN starts after it (RFC 9293 §3.4)
        known = self.pieces.get(offset)
        if known is None or len(seg.payload) > len(known):
            if known is not None and not seg.payload.startswith(known):
                self.errors.append(f"retransmission at offset {offset} differs")
            self.pieces[offset] = seg.payload
        elif not known.startswith(seg.payload):
            self.errors.append(f"retransmission at offset {offset} differs")

    def stream(self) -> bytes:
        """The bytes in sequence order; holes and disagreeing overlaps go to ``errors``."""
        out = bytearray()
        for offset in sorted(self.pieces):
            piece = self.pieces[offset]
            if offset > len(out):
                self.errors.append(f"{offset - len(out)} bytes missing at offset {len(out)}")
                out.extend(bytes(offset - len(out)))
            overlap = out[offset : offset + len(piece)]
            if overlap != piece[: len(overlap)]:
                self.errors.append(f"overlapping segments at offset {offset} disagree")
            out[offset : offset + len(piece)] = piece
        return bytes(out)


@dataclass
class Conn:
    """One TCP connection: its client (the side that sent the SYN) and server, both halves."""

    client: Address
    server: Address
    first_us: int
    halves: dict[bool, Half] = field(default_factory=lambda: {True: Half(), False: Half()})
    """True: what the client sent; False: what the server sent."""

    @property
    def opened(self) -> bool:
        """The three-way handshake's first two segments are there: SYN and SYN|ACK."""
        return "SYN" in self.halves[True].flags and "SYN" in self.halves[False].flags

    def key(self) -> tuple[Address, Address]:
        return self.client, self.server


def connections(segs: Iterable[Segment]) -> list[Conn]:
    """The TCP connections of a capture, in the order their first segment appears. A SYN
    without ACK with a new initial sequence number on a pair of endpoints already seen starts a
    new connection (the four-tuple reused)."""
    out: list[Conn] = []
    current: dict[frozenset[Address], Conn] = {}
    for seg in segs:
        pair = frozenset((seg.src, seg.dst))
        conn = current.get(pair)
        syn = seg.flags & dpkt.tcp.TH_SYN and not seg.flags & dpkt.tcp.TH_ACK
        if syn and (conn is None or (conn.client, conn.halves[True].isn) != (seg.src, seg.seq)):
            conn = None
        if conn is None:
            # Without a SYN the first sender is taken as the client.
            conn = Conn(seg.src, seg.dst, seg.us)
            current[pair] = conn
            out.append(conn)
        conn.halves[seg.src == conn.client].add(seg)
    return out


# -- comparing -----------------------------------------------------------------------------------


def _name(key: tuple[Address, Address], n: int) -> str:
    client, server = key
    return f"{client.host}:{client.port} → {server.host}:{server.port}" + (
        f" #{n + 1}" if n else ""
    )


def _by_key(conns: Iterable[Conn]) -> dict[tuple[tuple[Address, Address], int], Conn]:
    seen: dict[tuple[Address, Address], int] = {}
    out = {}
    for conn in sorted(conns, key=lambda c: c.first_us):
        n = seen.get(conn.key(), 0)
        seen[conn.key()] = n + 1
        out[(conn.key(), n)] = conn
    return out


def compare(kernel: Iterable[Conn], ours: Iterable[Conn]) -> list[str]:
    """Every way the kernel's opened connections differ from labsim's, in words (empty: none).

    Connections are matched by (client, server) endpoints and, for one pair, by the order of
    their first segment. Checked: the same connections; each direction's bytes equal; every
    SYN, FIN and RST labsim's pcap shows is in the kernel's, from the same side; no
    reassembly error on either side."""
    theirs = _by_key(c for c in kernel if c.opened)
    mine = _by_key(c for c in ours if c.opened)
    problems: list[str] = []
    for key in theirs.keys() - mine.keys():
        problems.append(f"{_name(*key)}: in the kernel's capture, not in labsim's pcap")
    for key in mine.keys() - theirs.keys():
        problems.append(f"{_name(*key)}: in labsim's pcap, not in the kernel's capture")
    for key in sorted(theirs.keys() & mine.keys(), key=lambda k: mine[k].first_us):
        name = _name(*key)
        for from_client in (True, False):
            side = "client" if from_client else "server"
            k, m = theirs[key].halves[from_client], mine[key].halves[from_client]
            k_bytes, m_bytes = k.stream(), m.stream()
            problems += [f"{name}: kernel, {side}'s bytes: {e}" for e in k.errors]
            problems += [f"{name}: labsim, {side}'s bytes: {e}" for e in m.errors]
            if k_bytes != m_bytes:
                at = next(
                    (i for i, (a, b) in enumerate(zip(k_bytes, m_bytes, strict=False)) if a != b),
                    min(len(k_bytes), len(m_bytes)),
                )
                problems.append(
                    f"{name}: the {side}'s bytes differ from byte {at} on (kernel "
                    f"{len(k_bytes)} bytes: {k_bytes[at : at + 16]!r}, labsim {len(m_bytes)}: "
                    f"{m_bytes[at : at + 16]!r})"
                )
            for flag in sorted(m.flags - k.flags):
                problems.append(
                    f"{name}: labsim's pcap shows a {flag} from the {side}, the kernel's not"
                )
    return problems


def to_lab(conns: Iterable[Conn], lab_of: dict[str, str]) -> list[Conn]:
    """The connections with loopback addresses mapped back to lab hosts (ports stay)."""

    def lab(a: Address) -> Address:
        return Address(lab_of.get(a.host, a.host), a.port)

    out = []
    for c in conns:
        mapped = Conn(lab(c.client), lab(c.server), c.first_us)
        mapped.halves = c.halves
        out.append(mapped)
    return out


# -- capturing a live run ------------------------------------------------------------------------


@dataclass
class Capture:
    trace: Trace
    lab_of: dict[str, str]
    """Loopback address -> lab host, for every host of the run."""
    kernel: Path
    ours: Path
    stats: str
    """dumpcap's closing lines: packets captured, received and dropped."""

    def packets(self) -> tuple[int, int]:
        """(captured, dropped) as dumpcap counted them."""
        got = re.search(r"received/dropped on interface '[^']*': (\d+)/(\d+)", self.stats)
        assert got is not None, self.stats
        return int(got[1]), int(got[2])


def _start_dumpcap(dumpcap: str, prefix: str, out: Path, log: Path) -> subprocess.Popen[bytes]:
    """dumpcap on lo, filtered on ``prefix``.0/24, once it really captures; skips (or fails
    under CI=true) when this user may not capture."""
    cmd = [dumpcap, "-i", "lo", "-w", str(out), "-f", f"net {prefix}.0/24"]
    with log.open("wb") as err:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
        )
    # dumpcap prints "Capturing on 'Loopback: lo'" before it has opened lo (and before it
    # fails for want of the right), so the capture has begun once it counts a packet: UDP
    # probes go to the block's last address (no lab host gets it; nothing listens) meanwhile.
    deadline = time.monotonic() + DUMPCAP_START
    next_probe = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if proc.poll() is not None:
                said = " ".join(text.split())[:300]
                message = f"dumpcap cannot capture on lo (root or CAP_NET_RAW is needed): {said}"
                if os.environ.get("CI", "").lower() == "true":
                    pytest.fail(message)
                pytest.skip(message)
            if re.search(r"Packets: [1-9]", text):
                return proc
            if "Capturing on" in text and time.monotonic() >= next_probe:
                probe.sendto(b"labsim dumpcap probe", (f"{prefix}.{PROBE_HOST}", PROBE_PORT))
                next_probe = time.monotonic() + 0.1  # about dumpcap's update interval
            time.sleep(0.02)
    _stop(proc)
    pytest.fail(f"dumpcap did not start capturing within {DUMPCAP_START} s: {log.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to dumpcap's pid (it writes its last packets and exits); SIGKILL after a while."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=DUMPCAP_STOP)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=DUMPCAP_STOP)
        pytest.fail("dumpcap did not exit on SIGTERM")


def capture(sc: Scenario, tmp: Path) -> Capture:
    """Run ``sc`` live while dumpcap captures the run's block; write labsim's own pcapng."""
    dumpcap = require_tool("dumpcap")
    cast = build(sc)
    net = network(sc, cast, Trace(), "live")
    assert isinstance(net, LiveNetwork)
    hosts = [actor.host for actor in cast.all()]
    net.loopback_of(hosts[0])  # claims the run's block before dumpcap is aimed at it
    assert net.block is not None
    kernel, log = tmp / "kernel.pcapng", tmp / "dumpcap.log"
    proc = _start_dumpcap(dumpcap, net.block.prefix, kernel, log)
    try:
        asyncio.run(asyncio.wait_for(net.arun(sc.deadline, stop=lambda _t: cast.finished()),
                                     timeout=sc.deadline + 10))  # fmt: skip
        time.sleep(SETTLE)
    finally:
        _stop(proc)
    trace = net.trace
    # Every host the trace names has a loopback address in the run: actors and the hosts
    # actors connected to.
    named = {c.client_addr.host for c in trace.connections.values()}
    named |= {c.server_addr.host for c in trace.connections.values()}
    named |= {r.server_addr.host for r in trace.refused}
    lab_of = {}
    for host in sorted(named | set(hosts)):
        try:
            lab_of[net.loopback_of(host)] = host
        except KeyError:
            pass  # a host only a black-holed connect aimed at: it never got an address
    assert f"{net.block.prefix}.{PROBE_HOST}" not in lab_of
    ours = tmp / "labsim.pcapng"
    write_pcapng(trace, ours)
    return Capture(trace, lab_of, kernel, ours, log.read_text(errors="replace"))


# -- the tests -----------------------------------------------------------------------------------

LAB_CALL = ""
#: The TURN data connection (CMS's second to Expressway-E) reset by the network 0.3 s in.
CUT = "faults: [{cut: {from: cms, to: expressway_e, connection: 2, after: 0.3}}]\n"
#: The same connection reset after Expressway-E's first 100 bytes: inside its second message.
CUT_BYTES = (
    "actors: {skype_client: {ice_timeout: 2.0}}\n"
    "faults: [{cut: {from: expressway_e, to: cms, connection: 2, after_bytes: 100}}]\n"
)


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(LAB_CALL, id="lab-call"),
        pytest.param(CUT, id="cut-after-0.3s"),
        # The cut ends inside a message: the part that crossed shows before the RST.
        pytest.param(CUT_BYTES, id="cut-after-100-bytes"),
    ],
)  # fmt: skip
def test_labsims_pcap_shows_what_crossed_the_sockets(
    tmp_path: Path, extra: str, record_property: Callable[[str, object], None]
) -> None:
    cap = capture(variant(extra, hold=1), tmp_path)
    captured, dropped = cap.packets()
    assert captured > 0 and dropped == 0, cap.stats
    kernel_segments = list(segments(cap.kernel))
    kernel = to_lab(connections(kernel_segments), cap.lab_of)
    ours = connections(segments(cap.ours))
    assert compare(kernel, ours) == []
    opened = [c for c in kernel if c.opened]
    assert len(opened) == len(cap.trace.connections) >= 8
    # A connection the trace says was reset shows an RST in the kernel's capture.
    by_key = _by_key(opened)
    for record in cap.trace.connections.values():
        conn = by_key[((record.client_addr, record.server_addr), 0)]
        flags = conn.halves[True].flags | conn.halves[False].flags
        assert not record.reset or "RST" in flags, record
    if extra == CUT:
        assert any(r.reset and r.closed_by == "network" for r in cap.trace.connections.values())
    compared = sum(len(h.stream()) for c in opened for h in c.halves.values())
    record_property(
        "dumpcap",
        {
            "connections": len(opened),
            "bytes": compared,
            "packets": captured,
            "dropped": dropped,
            "segments": len(kernel_segments),
        },
    )
    print(
        f"dumpcap: {len(opened)} connections, {compared} bytes equal, "
        f"{captured} packets captured ({len(kernel_segments)} TCP segments), {dropped} dropped"
    )


# -- the comparison itself -----------------------------------------------------------------------

A, B = Address("10.48.54.230", 40001), Address("10.48.54.229", 3478)
_S, _SA, _A = dpkt.tcp.TH_SYN, dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK, dpkt.tcp.TH_ACK
_PA, _FA = dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK


def _conn(
    client_data: Sequence[tuple[int, bytes]], server_data: Sequence[tuple[int, bytes]] = (), *,
    isn: int = 1000, close: int = _FA,
) -> list[Conn]:  # fmt: skip
    """A connection's segments: handshake, the data (offset, bytes) in the order given, close."""
    segs = [Segment(0, A, B, isn, _S, b""), Segment(1, B, A, 7, _SA, b""),
            Segment(2, A, B, isn + 1, _A, b"")]  # fmt: skip
    segs += [Segment(3, A, B, (isn + 1 + o) % _SEQ_MOD, _PA, d) for o, d in client_data]
    segs += [Segment(4, B, A, 8 + o, _PA, d) for o, d in server_data]
    end = sum(len(d) for _, d in client_data)
    segs.append(Segment(5, A, B, (isn + 1 + end) % _SEQ_MOD, close, b""))
    return connections(segs)


def test_a_one_byte_difference_is_found() -> None:
    ours = _conn([(0, b"hello"), (5, b"world")], [(0, b"ok")])
    assert compare(ours, _conn([(0, b"hello"), (5, b"world")], [(0, b"ok")])) == []
    [problem] = compare(_conn([(0, b"hello"), (5, b"worle")], [(0, b"ok")]), ours)
    assert "client's bytes differ from byte 9" in problem
    [problem] = compare(_conn([(0, b"hello"), (5, b"world")], [(0, b"oK")]), ours)
    assert "server's bytes differ from byte 1" in problem
    [problem] = compare(_conn([(0, b"hello"), (5, b"world!")], [(0, b"ok")]), ours)
    assert "kernel 11 bytes" in problem and "labsim 10" in problem


def test_reordered_and_retransmitted_segments_are_placed_by_sequence_number() -> None:
    # Across the sequence number wrap, out of order, one segment sent twice, one overlapping.
    kernel = _conn([(5, b"world"), (0, b"hello"), (5, b"world"), (3, b"lowo")], isn=_SEQ_MOD - 4)
    assert kernel[0].halves[True].stream() == b"helloworld"
    assert compare(kernel, _conn([(0, b"hello"), (5, b"world")])) == []


def test_holes_conflicts_and_missing_closes_and_connections_are_found() -> None:
    ours = _conn([(0, b"hello"), (5, b"world")])
    hole = compare(_conn([(0, b"hello"), (7, b"rld")]), ours)
    assert any("2 bytes missing at offset 5" in p for p in hole), hole
    conflict = compare(_conn([(0, b"hello"), (5, b"world"), (3, b"LO")]), ours)
    assert any("segments at offset 3 disagree" in p for p in conflict), conflict
    no_fin = compare(_conn([(0, b"hello"), (5, b"world")], close=_A), ours)
    assert no_fin == [
        f"{_name((A, B), 0)}: labsim's pcap shows a FIN from the client, the kernel's not"
    ]
    assert compare([], ours) == [
        f"{_name((A, B), 0)}: in labsim's pcap, not in the kernel's capture"
    ]
    assert compare(ours + _conn([], isn=5), ours) == [
        f"{_name((A, B), 1)}: in the kernel's capture, not in labsim's pcap"
    ]


# -- labsim diagnose on the kernel's capture (issue 13, part 3) ----------------------------------

#: Faulted live runs: CMS's answers to the Skype client's checks dropped as they leave CMS (the
#: client's checks never succeed), and CMS's TURN password wrong (the second Allocate is
#: answered 401 again).
FAULTED = {
    "one-way-binding": "actors: {skype_client: {ice_timeout: 2.0}}\n"
    "faults: [{drop: {from: cms, to: expressway_e, stun: Binding Success Response}}]\n",
    "turn-auth-failed": "actors: {cms: {turn: {password: not-the-secret}}, "
    "skype_client: {ice_timeout: 2.0}}\n",
}


@pytest.mark.parametrize("verdict", sorted(FAULTED))
def test_labsim_diagnose_reads_the_kernels_capture_of_a_faulted_run(
    tmp_path: Path, verdict: str, record_property: Callable[[str, object], None]
) -> None:
    from labsim.report.capture import diagnose_capture, read_capture
    from labsim.report.diagnose import diagnose

    cap = capture(variant(FAULTED[verdict], hold=1), tmp_path)
    run = diagnose(cap.trace)
    assert run.verdict == verdict, run.text()
    # The kernel's capture, with loopback addresses and no --actor: every actor is named
    # from the roles its messages show, and the diagnosis is the run's.
    read = read_capture(cap.kernel)
    assert set(read.naming.actors) == set(cap.lab_of), read.naming.why
    for loopback, actor in read.naming.actors.items():
        host = cap.lab_of[loopback]
        assert any(
            (c.client == actor and c.client_addr.host == host)
            or (c.server == actor and c.server_addr.host == host)
            for c in cap.trace.connections.values()
        ), (loopback, actor, host)
    got = diagnose_capture(read)
    assert got.diagnosis.verdict == verdict, got.text()
    assert read.point is None  # dumpcap on lo sees every leg
    record_property("diagnose_kernel_capture", {verdict: got.diagnosis.verdict})
