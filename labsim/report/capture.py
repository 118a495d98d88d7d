"""A capture file read back into a trace: what one capture point saw, as records the diagnosis
reads (DESIGN.md: "a capture is just another source of a trace").

The steps, each its own function:

1. :func:`read_packets` — pcap or pcapng (any byte order, micro- or nanosecond stamps), link
   layers Ethernet (VLAN tags too), Linux cooked (``tcpdump -i any``, v1 and v2), BSD loopback
   and raw IP; IPv4 and IPv6; TCP only (everything else is counted and left out). dpkt reads the
   file formats and headers; a file that is not a capture is a :class:`CaptureError`, one cut
   inside a frame keeps the frames before the cut (and says so).
2. :func:`reassemble` — each TCP connection's two byte streams (RFC 9293 §3.4: sequence
   numbers say where each segment's bytes belong): out-of-order segments wait for the gap
   before them, retransmitted bytes are taken once, a capture that starts mid-connection starts
   each stream at its first segment, and a hole the capture never filled is skipped and said.
   The other side's acknowledgement numbers say when bytes reached it; SYN, FIN and RST say
   when the connection opened and how it ended; a SYN never answered is a connect that failed
   (refused by RST, or unanswered).
3. :func:`cut_messages` — each stream cut into messages at message boundaries, the kind of
   each told by its first bytes, as Wireshark's heuristics do: a SIP start line (RFC 3261
   §7.1), a STUN header (RFC 5389 §6: top two bits zero, magic cookie at offset 4), an RFC 4571
   frame holding STUN (the cookie at offset 6, PROTOCOL.md §7.1), else opaque data. A stream
   that starts inside a message (a capture begun mid-call, a hole) resynchronises at the next
   message start.
4. :func:`name_hosts` — which lab actor each address is: given (``--actor 10.48.54.230=cms``),
   or inferred from the roles the messages show, each inference said in words.
5. :func:`read_capture` — the messages fed into a :class:`~labsim.trace.Trace` in capture
   order, with their fates (delivered once the receiver acknowledged them, or once they reached
   the capture point's own host; lost when their connection was reset first; in flight when the
   capture ended), so the evidence and the diagnosis read it as they read a run.
6. :func:`diagnose_capture` — the run's outcome and diagnosis on that trace, with the ends the
   capture point cannot see played by its neighbours, and what stopped past it said as such.

Written here rather than taken from a library: dpkt parses headers but does not reassemble
TCP; pyshark needs tshark at run time and hands back dissector strings, not bytes; scapy's
sessions reorder nothing and cost a dependency the size of labsim. The reassembly is the few
rules above (docs/architecture.md).
"""

from __future__ import annotations

import bisect
import io
import ipaddress
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import dpkt

from labsim.report.diagnose import Diagnosis, diagnose
from labsim.report.evidence import MEDIA_PATH, SIP_PATH, stand_ins
from labsim.report.outcome import Outcome, outcome
from labsim.trace import ConnectFailure, Trace
from labsim.vocabulary import WORKING
from labsim.wire import WireError, sip, stun
from labsim.wire.address import Address
from labsim.wire.facts import SipFacts, StunFacts, facts_of
from labsim.wire.framing import SipSplitter

#: The five actors of the call, in SIP path order (DESIGN.md's picture): the names a capture's
#: hosts are given.
LAB_CHAIN = SIP_PATH
#: Actors that may have two addresses: the edge boxes in the DMZ, with an inside and an outside
#: interface (Expressway-E's "dual network interfaces" option; the Skype Edge's internal and
#: external edge).
MULTI_HOMED = ("expressway_e", "skype_edge")


class CaptureError(Exception):
    """A file that cannot be read as a capture: not pcap or pcapng, cut short, or of a link
    layer labsim does not decode. The CLI prints it and exits 2."""


# -- 1. packets ------------------------------------------------------------------------------------

_TH_FIN, _TH_SYN, _TH_RST, _TH_ACK = 0x01, 0x02, 0x04, 0x10


@dataclass(frozen=True, slots=True)
class Segment:
    """One TCP segment as captured."""

    t: float
    """Seconds since the epoch."""
    src: Address
    dst: Address
    seq: int
    ack: int
    flags: int
    payload: bytes
    number: int
    """Its frame number in the file (1-based, as Wireshark counts)."""

    @property
    def syn(self) -> bool:
        return bool(self.flags & _TH_SYN)

    @property
    def fin(self) -> bool:
        return bool(self.flags & _TH_FIN)

    @property
    def rst(self) -> bool:
        return bool(self.flags & _TH_RST)

    @property
    def has_ack(self) -> bool:
        return bool(self.flags & _TH_ACK)


@dataclass
class Packets:
    """What :func:`read_packets` found."""

    segments: list[Segment] = field(default_factory=list)
    frames: int = 0
    """Every frame of the file."""
    other: int = 0
    """Frames that are not TCP over IP (UDP, ARP …): left out."""
    bad: int = 0
    """Frames whose headers did not parse (cut by a small snap length, corrupt)."""
    fmt: str = ""
    """``pcap`` or ``pcapng``."""
    interfaces: list[str] = field(default_factory=list)
    """pcapng interface names (labsim names its capture points' interfaces after the actor)."""
    comment: str = ""
    """The pcapng section comment (labsim puts its version and scenario there)."""
    cut: str = ""
    """Why reading stopped before the end of the file, if it did."""


#: Link layers decoded (pcap LINKTYPE numbers, tcpdump.org/linktypes.html).
_LINKTYPES = {0: "null", 1: "ethernet", 12: "raw", 14: "raw", 101: "raw", 108: "null",
              113: "sll", 228: "ipv4", 229: "ipv6", 276: "sll2"}  # fmt: skip


def read_packets(path: Path, data: bytes | None = None) -> Packets:
    """Every TCP segment of the capture file at ``path`` (or of ``data``, read from it
    already: standard input), in file order."""
    if data is None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CaptureError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) < 4:
        raise CaptureError(f"{path}: not a capture file (only {len(data)} bytes)")
    magic = data[:4]
    out = Packets()
    try:
        if magic == b"\x0a\x0d\x0d\x0a":
            reader: dpkt.pcapng.Reader | dpkt.pcap.Reader = dpkt.pcapng.Reader(io.BytesIO(data))
            out.fmt = "pcapng"
            out.interfaces, out.comment = _pcapng_names(data)
        elif magic in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1",
                       b"\xa1\xb2\x3c\x4d"):  # fmt: skip
            reader = dpkt.pcap.Reader(io.BytesIO(data))
            out.fmt = "pcap"
        else:
            raise CaptureError(
                f"{path}: not a pcap or pcapng file (it starts {magic.hex(' ')}; a capture "
                "saved by Wireshark, tcpdump or dumpcap starts 0a 0d 0d 0a or d4 c3 b2 a1)"
            )
        link = _LINKTYPES.get(reader.datalink())
        if link is None:
            raise CaptureError(
                f"{path}: link layer {reader.datalink()} is not one labsim decodes (Ethernet, "
                "Linux cooked, loopback, raw IP); save the capture from Wireshark as pcapng"
            )
        for number, (ts, buf) in enumerate(reader, start=1):
            out.frames = number
            segment = _segment(link, buf, float(ts), number)
            if segment is None:
                out.other += 1
            elif segment == "bad":
                out.bad += 1
            else:
                out.segments.append(segment)
    except CaptureError:
        raise
    except (dpkt.NeedData, dpkt.UnpackError, ValueError, struct.error, IndexError) as exc:
        if not out.segments:
            raise CaptureError(
                f"{path}: not a readable capture (cut short or corrupt: {exc})"
            ) from None
        # A capture stopped while writing (a full disk, a killed dumpcap) holds its frames up
        # to the cut: read those, and say so.
        out.cut = f"the file is cut short or corrupt after frame {out.frames} ({exc})"
    return out


def _pcapng_names(data: bytes) -> tuple[list[str], str]:
    """The interface names and section comment of a pcapng file (dpkt keeps only the first
    interface's block; these are for the reader's words, so a failure here costs nothing)."""
    names: list[str] = []
    comment = ""
    pos = 0
    endian = "<" if data[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
    while pos + 12 <= len(data) and len(names) < 64:
        kind, length = struct.unpack_from(endian + "II", data, pos)
        if length < 12 or pos + length > len(data):
            break
        body = data[pos + 8 : pos + length - 4]
        opts = b""
        if kind == 0x0A0D0D0A:
            opts = body[16:]
        elif kind == 1:
            opts = body[8:]
        name = ""
        at = 0
        while at + 4 <= len(opts):
            code, size = struct.unpack_from(endian + "HH", opts, at)
            value = opts[at + 4 : at + 4 + size]
            if code == 0:
                break
            if kind == 1 and code == 2:
                name = value.decode("utf-8", "replace")
            if kind == 0x0A0D0D0A and code == 1 and not comment:
                comment = value.decode("utf-8", "replace")
            at += 4 + size + (-size % 4)
        if kind == 1:
            names.append(name)
        pos += length
    return names, comment


def _segment(link: str, buf: bytes, t: float, number: int) -> Segment | Literal["bad"] | None:
    try:
        ip = _ip_of(link, buf)
    except (dpkt.UnpackError, dpkt.NeedData, struct.error, ValueError, IndexError):
        return "bad"
    if ip is None:
        return None
    tcp = ip.data
    if not isinstance(tcp, dpkt.tcp.TCP):
        return None
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    if isinstance(ip, dpkt.ip.IP):
        src, dst = ipaddress.IPv4Address(ip.src), ipaddress.IPv4Address(ip.dst)
        # A frame cut by the snap length holds fewer payload bytes than the IP length says.
        declared = ip.len - ip.hl * 4 - tcp.off * 4
    else:
        src, dst = ipaddress.IPv6Address(ip.src), ipaddress.IPv6Address(ip.dst)
        declared = ip.plen - tcp.off * 4
    payload = bytes(tcp.data)
    if declared >= 0 and len(payload) > declared:
        payload = payload[:declared]  # Ethernet padding of a short frame
    return Segment(
        t, Address(str(src), tcp.sport), Address(str(dst), tcp.dport), tcp.seq, tcp.ack,
        tcp.flags, payload, number,
    )  # fmt: skip


def _ip_of(link: str, buf: bytes) -> dpkt.ip.IP | dpkt.ip6.IP6 | None:
    if link == "ethernet":
        inner = dpkt.ethernet.Ethernet(buf).data
    elif link == "sll":
        inner = dpkt.sll.SLL(buf).data
    elif link == "sll2":
        inner = dpkt.sll2.SLL2(buf).data
    elif link == "null":
        inner = dpkt.loopback.Loopback(buf).data
    else:
        version = buf[0] >> 4 if buf else 0
        inner = dpkt.ip.IP(buf) if version == 4 else dpkt.ip6.IP6(buf) if version == 6 else None
    return inner if isinstance(inner, dpkt.ip.IP | dpkt.ip6.IP6) else None


# -- 2. TCP streams --------------------------------------------------------------------------------

_MOD = 1 << 32

#: When a segment was captured: (seconds since the epoch, frame number), which orders the
#: frames of one instant as the file does.
Stamp = tuple[float, int]


@dataclass
class Stream:
    """One direction of one connection, reassembled."""

    sender: Address
    receiver: Address
    base: int | None = None
    """The sequence number of its first byte (its SYN's plus one, or the first seen)."""
    chunks: list[tuple[Stamp, int, bytes]] = field(default_factory=list)
    """(when captured, offset, bytes) in stream order, each byte once."""
    acks: list[tuple[float, int]] = field(default_factory=list)
    """(time, offset up to which the receiver acknowledged), rising."""
    holes: list[tuple[int, int]] = field(default_factory=list)
    """(offset, length) of bytes the capture never showed (skipped)."""
    mid_start: bool = False
    """No SYN seen: the capture began after this stream started."""
    _next: int = 0
    _waiting: dict[int, tuple[Stamp, bytes]] = field(default_factory=dict)
    retransmitted: int = 0
    """Payload bytes seen again (retransmissions), taken once."""
    cuts: list[Cut] | None = field(default=None, repr=False)
    """Its messages, once cut (:func:`cut_messages`)."""

    @property
    def length(self) -> int:
        return self._next

    def offset(self, seq: int) -> int:
        assert self.base is not None
        return (seq - self.base) % _MOD

    def add(self, t: Stamp, seq: int, payload: bytes) -> None:
        if self.base is None:
            self.base, self.mid_start = seq, True
        at = self.offset(seq)
        if at > _MOD // 2:  # before the base: an old retransmission from before the capture
            at -= _MOD
        end = at + len(payload)
        if end <= self._next:
            self.retransmitted += len(payload)
            return
        if at < self._next:
            self.retransmitted += self._next - at
            payload, at = payload[self._next - at :], self._next
        if at > self._next:
            old = self._waiting.get(at)
            if old is None or len(old[1]) < len(payload):
                self._waiting[at] = (t, payload)
            return
        self._take(t, payload)

    def _take(self, t: Stamp, payload: bytes) -> None:
        self.chunks.append((t, self._next, payload))
        self._next += len(payload)
        while self._waiting:
            ready = [k for k in self._waiting if k <= self._next]
            if not ready:
                return
            for k in sorted(ready):
                t2, data = self._waiting.pop(k)
                if k + len(data) > self._next:
                    data = data[self._next - k :]
                    self.chunks.append((max(t, t2), self._next, data))
                    self._next += len(data)

    def close_holes(self) -> None:
        """The capture ended (or the connection did) with bytes still missing before some it
        holds: skip the holes, say so, and take what follows."""
        while self._waiting:
            k = min(self._waiting)
            self.holes.append((self._next, k - self._next))
            self._next = k
            t, data = self._waiting.pop(k)
            self._take(t, data)

    def ack(self, t: float, ack: int) -> None:
        if self.base is None:
            self.base, self.mid_start = ack, True
        at = self.offset(ack)
        if at > _MOD // 2:
            return
        if not self.acks or at > self.acks[-1][1]:
            self.acks.append((t, at))

    def acked_at(self, offset: int) -> float | None:
        """When the receiver first acknowledged every byte before ``offset``."""
        lo, hi = 0, len(self.acks)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.acks[mid][1] >= offset:
                hi = mid
            else:
                lo = mid + 1
        return self.acks[lo][0] if lo < len(self.acks) else None


@dataclass
class Connection:
    """One TCP connection of the capture."""

    id: int
    client: Address
    """The side that sent the SYN (or, mid-connection, the side whose port is the higher)."""
    server: Address
    opened: float
    up: Stream
    """Client to server."""
    down: Stream
    handshake: bool = False
    """SYN and SYN-ACK both seen."""
    answered: bool = False
    """The server answered the SYN (SYN-ACK), or the connection was already open."""
    closed: float | None = None
    reset: bool = False
    closed_by: Address | None = None
    syns: list[float] = field(default_factory=list)
    """Times of the client's SYNs (more than one: retransmitted)."""
    refused_at: float | None = None
    """An RST answered the SYN at this time."""

    def stream(self, sender: Address) -> Stream:
        return self.up if sender == self.client else self.down


def reassemble(segments: list[Segment]) -> list[Connection]:
    """Each TCP connection of ``segments``, its two streams put back in order."""
    conns: list[Connection] = []
    live: dict[tuple[Address, Address], Connection] = {}
    for seg in sorted(segments, key=lambda s: (s.t, s.number)):
        key = (seg.src, seg.dst)
        conn = live.get(key) or live.get((seg.dst, seg.src))
        if conn is not None and seg.syn and not seg.has_ack and conn.closed is not None:
            conn = None  # the same four-tuple used again after a close: a new connection
        if conn is None:
            if seg.syn and not seg.has_ack:
                client, server = seg.src, seg.dst
            elif seg.syn:
                client, server = seg.dst, seg.src
            else:
                # Mid-connection: the side on the well-known (lower) port is the server.
                client, server = (seg.src, seg.dst) if seg.src.port > seg.dst.port else (
                    seg.dst, seg.src)  # fmt: skip
            conn = Connection(len(conns) + 1, client, server, seg.t, Stream(client, server),
                              Stream(server, client), answered=not seg.syn)  # fmt: skip
            conns.append(conn)
            live[(client, server)] = conn
        me = conn.stream(seg.src)
        peer = conn.stream(seg.dst)
        if seg.syn:
            me.base, me.mid_start = (seg.seq + 1) % _MOD, False
            if seg.has_ack:
                conn.answered = conn.handshake = True
            else:
                conn.syns.append(seg.t)
        if seg.has_ack and not seg.rst:
            peer.ack(seg.t, seg.ack)
        if seg.payload:
            me.add((seg.t, seg.number), seg.seq, seg.payload)
        if seg.rst:
            if not conn.answered and seg.src == conn.server:
                conn.refused_at = seg.t
            if conn.closed is None or not conn.reset:
                conn.closed, conn.reset, conn.closed_by = seg.t, True, seg.src
        elif seg.fin and conn.closed is None:
            conn.closed, conn.closed_by = seg.t, seg.src
    for conn in conns:
        conn.up.close_holes()
        conn.down.close_holes()
    return conns


# -- 3. messages -----------------------------------------------------------------------------------

Kind = Literal["SIP", "STUN", "framed", "data"]


@dataclass(frozen=True, slots=True)
class Cut:
    """One message of a stream: its kind, its bytes as they crossed (an RFC 4571 frame with its
    length), where it starts and ends in the stream and when its last byte was captured."""

    kind: Kind
    data: bytes
    start: int
    end: int
    stamp: Stamp
    """When its last byte was captured."""
    note: str = ""

    @property
    def t(self) -> float:
        return self.stamp[0]


_SIP_START = re.compile(
    rb"(?:[A-Z]{2,16} [^\s]{1,2048} SIP/2\.0\r\n|SIP/2\.0 [1-6]\d\d [^\r\n]{0,256}\r\n)"
)
#: Bytes held back while deciding what a stream's next message is.
_SNIFF = 10
#: The largest message waited for: larger "lengths" mean the bytes are not what they seemed.
_MAX_MESSAGE = 1024 * 1024


def cut_messages(stream: Stream) -> list[Cut]:
    """The messages of one stream, in order (see step 3 of the module's docstring); cut once,
    kept on the stream."""
    if stream.cuts is None:
        stream.cuts = _cut(stream)
    return stream.cuts


def _cut(stream: Stream) -> list[Cut]:
    out: list[Cut] = []
    buf = bytearray()
    buf_start = 0  # stream offset of buf[0]
    ends: list[int] = []  # end offset of each chunk taken so far
    times: list[Stamp] = []  # and when it was captured
    resumes = {offset + length for offset, length in stream.holes}
    synced = not stream.mid_start

    def time_at(end: int) -> Stamp:
        """When the byte before ``end`` was captured."""
        i = bisect.bisect_left(ends, end)
        return times[min(i, len(times) - 1)]

    def emit(kind: Kind, size: int, *, note: str = "") -> None:
        nonlocal buf, buf_start
        data = bytes(buf[:size])
        out.append(Cut(kind, data, buf_start, buf_start + size, time_at(buf_start + size), note))
        del buf[:size]
        buf_start += size

    def drain(final: bool) -> None:
        nonlocal synced
        while buf:
            if not synced:
                at = _resync(bytes(buf))
                if at is None and not final:
                    if len(buf) <= _MAX_MESSAGE:
                        return
                    at = len(buf)
                synced = True
                if at is None:
                    at = len(buf)
                if at:
                    emit("data", at, note="the start of a message the capture does not hold")
                continue
            kind, size = _next_message(bytes(buf))
            if size is None:
                if final:
                    emit("data", len(buf), note="the capture ends inside a message")
                return
            if size == 0:  # CRLF keep-alives between SIP messages (RFC 5626 §3.5.1)
                emit("data", 2, note="keepalive")
                out.pop()
                continue
            if kind == "data":
                # Not a message start: opaque from here up to the next thing that is one.
                nxt = _resync(bytes(buf[1:]))
                emit("data", len(buf) if nxt is None else nxt + 1)
                continue
            emit(kind, size)

    for t, offset, data in stream.chunks:
        if offset in resumes:
            drain(final=True)
            buf_start = offset
            synced = False
        if not buf:
            buf_start = offset
        buf += data
        ends.append(offset + len(data))
        times.append(t)
        drain(final=False)
    drain(final=True)
    return out


def _next_message(buf: bytes) -> tuple[Kind, int | None]:
    """What the message at the start of ``buf`` is and its size (None: more bytes needed; 0: a
    CRLF keep-alive to skip)."""
    if buf[:2] == b"\r\n":
        return "SIP", 0
    if len(buf) < _SNIFF and (_could_be_sip(buf) or buf[0] < 0x40):
        return "data", None
    if _SIP_START.match(buf[:2100]) or (len(buf) < 2100 and _could_be_sip(buf)):
        splitter = SipSplitter()
        try:
            got = splitter.feed(buf, max_messages=1)
        except WireError:
            return "data", len(buf)
        if got:
            return "SIP", len(buf) - splitter.buffered
        return "SIP", None
    if buf[0] < 0x40 and buf[4:8] == stun.MAGIC_COOKIE_BYTES:
        size = 20 + int.from_bytes(buf[2:4], "big")
        return "STUN", size if len(buf) >= size else None
    if buf[2] < 0x40 and buf[6:10] == stun.MAGIC_COOKIE_BYTES:
        size = 2 + int.from_bytes(buf[:2], "big")
        if size < 22:
            return "data", len(buf)
        return "framed", size if len(buf) >= size else None
    return "data", len(buf)


def _could_be_sip(buf: bytes) -> bool:
    head = buf.split(b" ", 1)[0]
    return head.isalpha() and head.isupper() or b"SIP/2.0".startswith(buf[:7])


def _resync(buf: bytes) -> int | None:
    """Where the first message start in ``buf`` is (a SIP start line after a line end, a STUN
    header, a framed STUN message), or None."""
    best: int | None = None
    m = re.search(rb"(?:^|\r\n)(?=" + _SIP_START.pattern + rb")", buf)
    if m is not None:
        best = m.end()
    pos = buf.find(stun.MAGIC_COOKIE_BYTES)
    while pos >= 0 and (best is None or pos - 6 < best):
        for start, framed in ((pos - 4, False), (pos - 6, True)):
            if start < 0 or (best is not None and start >= best):
                continue
            head = start + 2 if framed else start
            if buf[head] >= 0x40:
                continue
            length = int.from_bytes(buf[head + 2 : head + 4], "big")
            if length % 4 or length > 8192:
                continue
            if framed and int.from_bytes(buf[start : start + 2], "big") != 20 + length:
                continue
            best = start
        pos = buf.find(stun.MAGIC_COOKIE_BYTES, pos + 1)
    return best


# -- 4. who is who ---------------------------------------------------------------------------------


@dataclass
class Naming:
    """The actor of each host, and why."""

    actors: dict[str, str] = field(default_factory=dict)
    """Host → actor."""
    why: dict[str, str] = field(default_factory=dict)
    """Host → how it was named, in words."""

    def name(self, host: str) -> str:
        return self.actors.get(host, host)


def parse_actor_options(values: list[str]) -> dict[str, str]:
    """``--actor 10.48.54.230=cms`` options → {host: actor}; a bad one is a ``ValueError``."""
    out: dict[str, str] = {}
    for value in values:
        host, sep, name = value.partition("=")
        host, name = host.strip(), name.strip()
        if not sep or not host or not name:
            raise ValueError(f"--actor {value!r}: write ADDRESS=ACTOR, e.g. 10.48.54.230=cms")
        try:
            host = str(ipaddress.ip_address(host))
        except ValueError:
            raise ValueError(f"--actor {value!r}: {host!r} is not an IP address") from None
        if name not in LAB_CHAIN:
            raise ValueError(f"--actor {value!r}: the actors are {', '.join(LAB_CHAIN)}")
        if name in out.values() and name not in MULTI_HOMED:
            raise ValueError(
                f"--actor {value!r}: {name} is named twice (only {' and '.join(MULTI_HOMED)}, "
                "the DMZ boxes, have an inside and an outside address)"
            )
        out[host] = name
    return out


def name_hosts(conns: list[Connection], given: Mapping[str, str] | None = None) -> Naming:
    """Which actor each host is: ``given`` first, then what the messages show (each said):

    * the host that answers Allocate requests is the TURN server, Expressway-E; the host that
      sends them is CMS (RFC 5766 §6: the client allocates);
    * a host that connects to the TURN server at the port of a relayed address it gave
      (XOR-RELAYED-ADDRESS, RFC 5766 §14.5) is the relay's peer: the Skype Edge in this call
      (RFC 6062 §5.2);
    * on the SIP path, each proxy adds one Via to a request (RFC 3261 §16.6 step 8), so the
      sender of an INVITE with *n* Via headers is the *n*-th actor from the Skype client
      (skype_client, skype_edge, expressway_e, expressway_c, cms) and its receiver the next.
    """
    naming = Naming()
    for host, actor in (given or {}).items():
        naming.actors[host] = actor
        naming.why[host] = "named on the command line"

    def claim(host: str, actor: str, why: str) -> None:
        if host in naming.actors:
            return
        if actor in naming.actors.values() and actor not in MULTI_HOMED:
            return
        naming.actors[host] = actor
        naming.why[host] = why

    turn_ports: set[Address] = set()
    relays: set[int] = set()
    for conn in conns:
        for stream in (conn.up, conn.down):
            for cut in cut_messages(stream)[:16]:
                if cut.kind != "STUN":
                    continue
                facts = facts_of("STUN", cut.data)
                if not isinstance(facts, StunFacts) or facts.method != "Allocate":
                    continue
                if facts.is_success and facts.relayed is not None:
                    relays.add(facts.relayed.port)
                if facts.is_request:
                    turn_ports.add(stream.receiver)
                    claim(stream.receiver.host, "expressway_e",
                          f"answers Allocate requests on port {stream.receiver.port} (the TURN "
                          "server)")  # fmt: skip
                    claim(stream.sender.host, "cms", "sends Allocate requests (the TURN client)")
    for conn in conns:
        for stream in (conn.up, conn.down):
            for cut in cut_messages(stream)[:4]:
                if cut.kind != "SIP":
                    continue
                facts = facts_of("SIP", cut.data)
                if not isinstance(facts, SipFacts) or facts.method != "INVITE" or facts.to_tag:
                    continue
                try:
                    vias = len(sip.vias(sip.parse_message(cut.data)))
                except (WireError, ValueError):
                    continue
                if 1 <= vias < len(LAB_CHAIN):
                    why = f"sends an INVITE with {vias} Via header{'s' * (vias > 1)}"
                    claim(stream.sender.host, LAB_CHAIN[vias - 1], why)
                    why = f"receives an INVITE with {vias} Via header{'s' * (vias > 1)}"
                    claim(stream.receiver.host, LAB_CHAIN[vias], why)
    turn_hosts = {a.host for a in turn_ports}
    for conn in conns:
        if conn.server.host in turn_hosts and conn.server.port in relays:
            claim(conn.client.host, "skype_edge",
                  f"connects to the TURN server's relay port {conn.server.port} (the relay's "
                  "peer)")  # fmt: skip
    return naming


# -- 5. the trace ----------------------------------------------------------------------------------


@dataclass
class Capture:
    """A capture read back: its trace, and what the reader knows of it."""

    path: Path
    trace: Trace
    packets: Packets
    connections: list[Connection]
    naming: Naming
    point: str | None
    """The actor at whose interfaces it was captured (the one actor on every connection);
    None when it shows several actors' connections that share no end (every leg)."""
    start: float
    """The capture time of its first frame (seconds since the epoch): trace time 0."""
    end: float
    """Trace time of its last frame."""
    notes: list[str] = field(default_factory=list)
    """What the reader had to skip or guess, in words."""

    @property
    def actors(self) -> list[str]:
        """The actors of its connections, in call order (the lab's, then unnamed hosts): the
        ladder's and the pictures' columns."""
        present = {c.client for c in self.trace.connections.values()}
        present |= {c.server for c in self.trace.connections.values()}
        return [a for a in LAB_CHAIN if a in present] + sorted(present - set(LAB_CHAIN))


def read_capture(
    path: Path, actors: Mapping[str, str] | None = None, at: str | None = None,
    data: bytes | None = None,
) -> Capture:  # fmt: skip
    """The capture at ``path`` as a trace (see the module's docstring). ``actors`` names hosts
    ({address: actor}); ``at`` says at which actor's interfaces it was captured (else: the
    one pcapng interface named after an actor, as labsim names its capture points, or the one
    host on every connection). ``data``: the file's bytes, when read already."""
    packets = read_packets(path, data)
    if not packets.segments:
        raise CaptureError(
            f"{path}: no TCP segment in {packets.frames} frame(s): the call runs over TCP "
            "(SIP, TURN, the framed checks); capture on the interface that carries it"
        )
    conns = reassemble(packets.segments)
    naming = name_hosts(conns, actors)
    notes: list[str] = []
    related = [c for c in conns if not _unrelated(c, naming)]
    if len(related) < len(conns):
        notes.append(
            f"{len(conns) - len(related)} TCP connection(s) between hosts not in the call, "
            "carrying no SIP or STUN, left out"
        )
    conns = related or conns
    point, point_hosts, why = _point_of(conns, naming, packets, at)
    notes += why + _stream_notes(conns)
    start = min(s.t for s in packets.segments)
    trace = _replay(_events(conns, naming, point_hosts), naming, start)
    end = max(s.t for s in packets.segments) - start
    if packets.cut:
        notes.append(packets.cut)
    if packets.bad:
        notes.append(f"{packets.bad} frame(s) whose headers did not parse were left out")
    return Capture(path, trace, packets, conns, naming, point, start, end, notes)


def _stream_notes(conns: list[Connection]) -> list[str]:
    """What the reader had to skip or take once, per stream, in words."""
    notes = []
    for conn in conns:
        if any(_is_tls(s) for s in (conn.up, conn.down)):
            notes.append(
                f"{conn.client} → {conn.server} carries TLS (SIP over TLS, port 5061?): its "
                "messages are encrypted and cannot be read; capture SIP over TCP, or decrypt"
            )
        for stream in (conn.up, conn.down):
            where = f"{stream.sender} → {stream.receiver}"
            if stream.retransmitted:
                notes.append(f"{where}: {stream.retransmitted} bytes retransmitted (taken once)")
            for offset, length in stream.holes:
                notes.append(
                    f"{where}: {length} bytes at offset {offset} never captured (skipped; the "
                    "message they held is shown as data)"
                )
            if stream.mid_start and stream.chunks:
                notes.append(f"{where}: the capture starts after this connection opened")
    return notes


_What = Literal["refused", "open", "send", "deliver", "close"]


@dataclass(frozen=True, slots=True)
class _Event:
    """One thing that happened, to be replayed into the trace in order (see :func:`_events`)."""

    t: float
    """Seconds since the epoch."""
    rank: int
    """At one instant: connects first, then what reaches the capture point and deliveries,
    then sends, then closes."""
    frame: int
    order: int
    what: _What
    conn: Connection
    from_client: bool = True
    cut: Cut | None = None
    relaying: bool = False
    delivered_now: bool = False
    """A send its receiver got at the same instant (the capture point's own host)."""

    def key(self) -> tuple[float, int, int, int]:
        return self.t, self.rank, self.frame, self.order


def _events(conns: list[Connection], naming: Naming, point_hosts: set[str]) -> list[_Event]:
    """Every connect, message, delivery and close of the capture, in the order to replay them:
    in time order; at one instant, deliveries before sends (a relay or proxy sends on what it
    was handed at the instant it got it, and its journey must see the delivery first), sends
    in the file's frame order (a direction's messages keep their stream order)."""
    out: list[_Event] = []

    def add(
        t: float, rank: int, what: _What, conn: Connection, *, frame: int = 0,
        from_client: bool = True, cut: Cut | None = None, relaying: bool = False,
        delivered_now: bool = False,
    ) -> None:  # fmt: skip
        out.append(_Event(t, rank, frame, len(out), what, conn, from_client, cut, relaying,
                          delivered_now))  # fmt: skip

    for conn in conns:
        if not conn.answered:
            failed = conn.refused_at or (conn.syns[-1] if conn.syns else conn.opened)
            add(failed, 0, "refused", conn)
            continue
        add(conn.opened, 0, "open", conn)
        for stream in (conn.up, conn.down):
            dst_is_point = stream.receiver.host in point_hosts
            relaying = _relays(stream, naming)
            for cut in cut_messages(stream):
                if cut.kind == "data" and cut.note == "keepalive":
                    continue
                # Delivered when it reached the capture point's own host, else once the
                # receiver acknowledged its last byte.
                got = cut.t if dst_is_point else stream.acked_at(cut.end)
                now = got is not None and got <= cut.t
                add(cut.t, 1 if dst_is_point else 2, "send", conn, from_client=stream is conn.up,
                    cut=cut, relaying=relaying, delivered_now=now, frame=cut.stamp[1])  # fmt: skip
                if got is not None and not now:
                    add(got, 1, "deliver", conn, from_client=stream is conn.up, cut=cut)
        if conn.closed is not None:
            add(conn.closed, 3, "close", conn)
    return sorted(out, key=_Event.key)


def _replay(events: list[_Event], naming: Naming, start: float) -> Trace:
    """A trace of ``events``, written through the calls the runtimes use (``opened``, ``sent``
    with the framing each message had, ``delivered``, ``lost``, ``closed``, ``refuse``), so
    journeys, fates and facts come out as in a run."""
    trace = Trace()
    sizes: dict[tuple[int, bool, int], int] = {}
    for e in events:
        t, conn = e.t - start, e.conn
        client = naming.name(conn.client.host)
        if e.what == "refused":
            started = conn.syns[0] if conn.syns else conn.opened
            how: ConnectFailure = "refused" if conn.refused_at is not None else "timeout"
            trace.refuse(t, client, conn.client.host, conn.server, how, started=started - start)
        elif e.what == "open":
            server = naming.name(conn.server.host)
            name = f"{client}/{conn.client.port}"
            trace.opened(t, conn.id, client, conn.client, server, conn.server, name)
        elif e.what == "send":
            assert e.cut is not None
            before = trace.wire_bytes(conn.id, e.from_client)
            trace.sent(t, conn.id, e.from_client, e.cut.data, _framing(e.cut, e.relaying))
            size = trace.wire_bytes(conn.id, e.from_client) - before
            if e.delivered_now:
                trace.delivered(t, conn.id, e.from_client, size)
            else:
                sizes[(conn.id, e.from_client, e.cut.end)] = size
        elif e.what == "deliver":
            assert e.cut is not None
            size = sizes.get((conn.id, e.from_client, e.cut.end), 0)
            trace.delivered(t, conn.id, e.from_client, size)
        else:
            by = naming.name(conn.closed_by.host) if conn.closed_by is not None else "network"
            if conn.reset:
                trace.lost(t, conn.id, True)
                trace.lost(t, conn.id, False)
            trace.closed(t, conn.id, by, reset=conn.reset)
    return trace


def _point_of(
    conns: list[Connection], naming: Naming, packets: Packets, at: str | None
) -> tuple[str | None, set[str], list[str]]:
    """(the capture point's actor, its addresses, notes): ``at`` when given; else a pcapng
    whose one interface is named after an actor (labsim's capture points); else the one actor
    on every connection, when there are two connections or more (with one, either end may
    have captured it). An actor may be on a connection by either of its addresses (a
    dual-homed Expressway-E)."""
    ends = [{naming.name(c.client.host), naming.name(c.server.host)} for c in conns]
    on_every = set.intersection(*ends) if ends else set()
    named = [n for n in packets.interfaces if n in LAB_CHAIN]
    if at is None and len(named) == 1 and len(packets.interfaces) == 1:
        at = named[0]
    if at is None:
        if len(on_every) == 1 and len(conns) > 1:
            at = next(iter(on_every))
            return at, _hosts_of(naming, conns, at), []
        if len(conns) == 1:
            return None, set(), ["one connection: either end may have captured it (say --at)"]
        return None, set(), []
    if at not in on_every:
        unnamed = [h for h in on_every if h not in naming.actors]
        if len(unnamed) == 1:
            host = unnamed[0]
            naming.why[host] = "the capture point, the one unnamed host on every connection"
        elif len(conns) == 1 and conns[0].server.host in unnamed:
            # One connection, neither end named by its messages: the point is taken as the
            # side that accepted it (CMS accepts SIP; Expressway-E accepts TURN and SIP).
            host = conns[0].server.host
            naming.why[host] = "the capture point, taken as the side that accepted the connection"
        else:
            note = f"{at} is not an end of every connection in the capture: read as every leg"
            return None, set(), [note]
        naming.actors[host] = at
    return at, _hosts_of(naming, conns, at), []


def _hosts_of(naming: Naming, conns: list[Connection], actor: str) -> set[str]:
    hosts = {c.client.host for c in conns} | {c.server.host for c in conns}
    return {h for h in hosts if naming.name(h) == actor}


def _unrelated(conn: Connection, naming: Naming) -> bool:
    """Neither end is an actor of the call and nothing on it is SIP or STUN: other traffic."""
    if conn.client.host in naming.actors or conn.server.host in naming.actors:
        return False
    return not any(
        cut.kind != "data" for stream in (conn.up, conn.down) for cut in cut_messages(stream)
    )


def _is_tls(stream: Stream) -> bool:
    """A TLS record header at the stream's start: handshake (22), version 3.x (RFC 8446 §5.1)."""
    if not stream.chunks:
        return False
    head = stream.chunks[0][2]
    return len(head) >= 3 and head[0] == 22 and head[1] == 3 and head[2] <= 4


def _relays(stream: Stream, naming: Naming) -> bool:
    """Whether the stream's sender relays the framed checks it sends, as raw bytes: the TURN
    server (RFC 6062 §5.3: a data connection is a pipe), and the Skype Edge, whose media relay
    carries the Skype client's checks to the relay port (its SIP and STUN are cut as such
    whatever this says)."""
    return naming.name(stream.sender.host) in ("expressway_e", "skype_edge")


def _framing(cut: Cut, relaying: bool) -> str:
    if cut.kind == "SIP":
        return "sip"
    if cut.kind == "STUN":
        return "stun"
    if cut.kind == "framed":
        return "raw" if relaying else "rfc4571"
    return "raw"


def describe_view(capture: Capture) -> list[str]:
    """What the capture is, where it was taken and who is who, in words."""
    p = capture.packets
    lines = [
        f"{capture.path}: {p.fmt}, {p.frames} frames, {len(p.segments)} TCP segments, "
        f"{len(capture.connections)} TCP connections"
        + (f", {p.other} other frames left out" if p.other else "")
    ]
    if capture.point is not None:
        lines.append(f"captured at {capture.point} (on every connection)")
    else:
        lines.append("captured on several hosts' legs (no one host is on every connection)")
    for host, actor in sorted(capture.naming.actors.items(), key=lambda kv: kv[1]):
        lines.append(f"{host} is {actor}: {capture.naming.why[host]}")
    return lines


# -- 6. the diagnosis ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptureDiagnosis:
    """The diagnosis of a capture, with what its point cannot see."""

    capture: Capture
    outcome: Outcome
    diagnosis: Diagnosis
    view: tuple[str, ...]
    """Where it was captured and who is who (:func:`describe_view`)."""
    blind: tuple[str, ...]
    """What the capture point cannot see, in words."""

    def text(self) -> str:
        lines = ["Capture:", *(f"  {line}" for line in self.view)]
        if self.capture.notes:
            lines += ["  Read with care:", *(f"    - {n}" for n in self.capture.notes)]
        if self.blind:
            where = self.capture.point or "this capture"
            lines += [f"What {where} cannot see:", *(f"  - {b}" for b in self.blind)]
        lines.append(f"Outcome as seen here: {self.outcome.name} - {self.outcome.reason}")
        lines.append(self.diagnosis.text())
        return "\n".join(lines)

    def as_dict(self) -> dict[str, object]:
        return {
            "file": str(self.capture.path), "point": self.capture.point,
            "actors": dict(self.capture.naming.actors), "view": list(self.view),
            "blind": list(self.blind), "notes": list(self.capture.notes),
            "outcome": self.outcome.name, "reason": self.outcome.reason,
            "diagnosis": self.diagnosis.as_dict(),
        }  # fmt: skip


def diagnose_capture(capture: Capture) -> CaptureDiagnosis:
    """The same outcome and diagnosis a run gets, from what the capture's point saw: the ends
    of the call it cannot see are played by its nearest neighbours toward them
    (:func:`~labsim.report.evidence.stand_ins`), and what stopped past them is said as such
    (the ``beyond-capture`` verdict) rather than guessed."""
    trace = capture.trace
    relays = {
        f.relayed.port for r in trace.messages
        if isinstance(f := r.facts, StunFacts) and f.relayed is not None and f.is_success
    }  # fmt: skip
    # Who connected to a relayed port: the relay's peer, the caller's end of the media path
    # as Expressway-E sees it.
    peer = next(
        (c.client for c in trace.connections.values()
         if c.server == "expressway_e" and c.server_addr.port in relays),
        None,
    )  # fmt: skip
    caller, sip_caller, sip_callee = stand_ins(capture.point, peer)
    result = outcome(
        capture.trace, caller=caller, callee="cms", sip_caller=sip_caller, sip_callee=sip_callee
    )
    diagnosis = diagnose(
        capture.trace, caller=caller, callee="cms", turn="expressway_e", end=capture.end,
        result=result, sip_caller=sip_caller, sip_callee=sip_callee, point=capture.point,
    )  # fmt: skip
    if capture.point is not None and diagnosis.verdict in WORKING:
        # A working call as one point saw it: what happened past it stays unknown.
        diagnosis = replace(
            diagnosis,
            summary=f"{diagnosis.summary} (As far as a capture at {capture.point} shows: "
            "see what it cannot see.)",
        )
    return CaptureDiagnosis(
        capture, result, diagnosis, tuple(describe_view(capture)), tuple(_blind(capture))
    )


def _blind(capture: Capture) -> list[str]:
    point = capture.point
    if point is None:
        missing = [a for a in LAB_CHAIN if a not in capture.naming.actors.values()]
        return (
            [f"{', '.join(missing)}: no connection of theirs is in the capture"] if missing else []
        )
    out = []
    for name, path in (("the SIP path", SIP_PATH), ("the media path", MEDIA_PATH)):
        if point not in path:
            out.append(f"{name} ({' → '.join(path)}): {point} is not on it")
            continue
        unseen = [f"{a} → {b}" for a, b in zip(path, path[1:], strict=False) if point not in (a, b)]
        if unseen:
            out.append(f"{name}: the hops {', '.join(unseen)}")
    out.append(
        f"a message that left {point} shows as delivered once its neighbour's TCP acknowledged "
        "it; whether it went further, and what answers the far ends sent that never came back, "
        "is not in this capture"
    )
    return out
