"""A pcapng capture of a run, rebuilt from its trace alone.

DESIGN.md asks for a capture that reads like the lab's: lab addresses, and real TCP semantics so
``tshark -r FILE -Y "tcp and stun"`` shows the call as the lab capture does. The trace holds
connections and messages, not segments, so the segments are rebuilt here:

* every connection opens with SYN, SYN-ACK, ACK at ``ConnectionRecord.opened`` (RFC 793 §3.4,
  the three-way handshake) and ends with FIN, FIN, ACK — or a single RST when the trace says it
  was reset — at ``closed``, sent by the side that closed it (the client when the network did).
  A connection the run never closed just stops;
* every message of a direction is one PSH|ACK segment at its trace time, acknowledged by the
  receiver a moment later (:data:`ACK_DELAY`, never later than the connection's next event).
  Sequence and acknowledgement numbers are absolute and exact (RFC 793 §3.3), starting from
  initial sequence numbers that look random but derive from the connection id, so a run gives
  the same file every time. A message larger than one frame (:data:`SNAPLEN`) is cut over
  several segments;
* Ethernet, IPv4 and TCP headers carry no options: 54 bytes of headers per frame (74 over IPv6),
  as in the lab capture, where a 44-byte STUN message is a 98-byte frame. IP lengths and the IP
  and TCP checksums are computed (dpkt fills them in when the frame is built). MAC addresses
  derive from the IP addresses;
* a connect that never opened starts with its SYN at ``RefusedRecord.started``. A ``refused``
  one is answered by RST|ACK when it failed; one that timed out (a firewall that drops SYNs) is
  followed by the SYN's retransmissions, as Linux sends them: the same sequence number after
  1, 3, 7, 15 … s (an initial RTO of 1 s, doubled each time: RFC 6298 §2.1 and §5.5; at most
  ``tcp_syn_retries`` = 6), as many as left before the connect gave up, so Wireshark flags
  them ``tcp.analysis.retransmission``; an ``unreachable`` one is a lone SYN.

What the payload bytes are, per message record (see :func:`wire_payload`):

* a message a fault rule dropped never reached the wire past the rule: no segment in the
  every-leg capture, one at its sender's capture point only (see :func:`point_frames`);
* an RFC 4571 frame, also one a relay carried (``relayed=True``), gets back the 2-byte length
  prefix the trace strips;
* **opaque data the trace truncated** (it keeps only the first :data:`labsim.trace.RAW_KEEP`
  bytes of relayed data, and its size) **is written as the kept head followed by zero bytes up
  to the real size**, so sequence numbers stay right; the segment's comment says so.

Bytes the trace never recorded as a message cannot appear: a message still incomplete when the
run ended, and CRLF keep-alives between SIP messages (the SIP splitter skips them). Data sent
after a reset, or by a side after its own FIN, is left out: TCP would not carry it.

Each frame is timestamped ``start`` + its trace time (microseconds, the pcapng default
resolution), frames of all connections merged into one time order; the default ``start`` is the
lab capture's date, 2017-08-17 08:03:00 UTC. Every frame that carries a message has a pcapng
packet comment (``opt_comment``, pcapng §3.5) naming the message as the trace decoded it.

A capture point (``capture_at``) is that same layout filtered and restamped as one actor's
interface saw it, one pcapng interface per actor (:func:`point_frames`, docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import ipaddress
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import dpkt

from labsim import __version__
from labsim.trace import (
    ClosedRecord,
    ConnectionRecord,
    MessageRecord,
    RefusedRecord,
    Trace,
)
from labsim.wire.address import Address
from labsim.wire.framing import frame_rfc4571

#: 2017-08-17 08:03:00 UTC, the date of the lab capture (seconds since the epoch).
LAB_CAPTURE_START = 1_502_956_980.0
#: Ethernet (14) + IPv4 (20) + TCP (20) without options: what the lab capture shows.
HEADER_BYTES = 54
HEADER_BYTES_V6 = 74
#: Frames are never cut: the interface's snapshot length holds the largest one we write.
SNAPLEN = 65535
#: The receive window every segment advertises. Larger than any segment we write, so Wireshark
#: never sees a segment fill the window (each one is acknowledged before the next).
WINDOW = 65535
#: How long after a segment its receiver's ACK is stamped (seconds).
ACK_DELAY = 0.0001
#: The first SYN's retransmission timeout: 1 s (RFC 6298 §2.1; Linux's TCP_TIMEOUT_INIT),
#: doubled after each retransmission (RFC 6298 §5.5, Linux's exponential backoff).
SYN_RTO = 1.0
#: How many times Linux retransmits an unanswered SYN before connect() fails on its own
#: (``net.ipv4.tcp_syn_retries``, default 6: the last at 63 s, the failure at 127 s).
SYN_RETRIES = 6

_SYN, _ACK, _PSH = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH
_FIN, _RST = dpkt.tcp.TH_FIN, dpkt.tcp.TH_RST
_SEQ_MOD = 1 << 32
_NEVER = float("inf")


def wire_payload(message: MessageRecord, *, dropped: bool = False) -> bytes | None:
    """The TCP payload bytes a message record stands for, or None for one a fault rule
    dropped (it never reached the wire past the rule), unless ``dropped``: the bytes its sender
    sent all the same.

    RFC 4571 frames get their length prefix back; opaque data the trace truncated is padded
    with zero bytes to its recorded size."""
    if message.fate == "dropped" and not dropped:
        return None  # a fault rule took it before it reached the wire
    if message.framed:
        return frame_rfc4571(message.data)  # the length prefix the trace strips
    data = message.data
    if len(data) < message.size:
        data = data + bytes(message.size - len(data))
    return data


def syn_times(started: float, failed: float) -> list[float]:
    """When a connect that got no answer sent its SYNs: the first at ``started``, then Linux's
    retransmissions at 1, 3, 7, 15 … s after it (:data:`SYN_RTO`, doubled each time, at most
    :data:`SYN_RETRIES`), those before the connect gave up at ``failed``."""
    times = [started]
    at, rto = started, SYN_RTO
    for _ in range(SYN_RETRIES):
        at += rto
        rto *= 2
        if at >= failed:
            break
        times.append(at)
    return times


def write_pcapng(
    trace: Trace,
    path: Path | str | BinaryIO,
    *,
    start: float = LAB_CAPTURE_START,
    capture_at: Sequence[str] = (),
    scenario: str = "",
) -> None:
    """Write the trace as a pcapng capture to ``path`` (a file name or a writable binary file).

    ``capture_at``: the actors whose interfaces are captured, one pcapng interface each (see
    :func:`point_frames`); empty: every leg on one interface. ``scenario`` is named in the
    section header."""
    frames = _Builder(trace, start).build()
    hosts = _actor_hosts(trace)
    if capture_at:
        interfaces = [
            (name, f"{name} ({hosts.get(name, 'no connection')}): what {name} sent and received")
            for name in capture_at
        ]
        out = [
            _Out(us, frame.order, iface, data, frame.comments)
            for iface, name in enumerate(capture_at)
            for frame, us, data in point_frames(frames, name, start)
        ]
        out.sort(key=lambda o: (o.us, o.order, o.iface))
    else:
        interfaces = [("all-legs", "every leg of the run: all actors' connections")]
        out = [_Out(f.us, f.order, 0, f.data, f.comments) for f in frames if f.on_wire]
    header = f"labsim {__version__}"
    comment = f"scenario: {scenario}" if scenario else ""
    if isinstance(path, (str, Path)):
        with Path(path).open("wb") as fh:
            _write(fh, out, interfaces, header, comment)
    else:
        _write(path, out, interfaces, header, comment)


# -- frames --------------------------------------------------------------------------------------


@dataclass
class _Segment:
    """One TCP segment's headers and payload, built into bytes per capture point (a point at
    the end of a hop where a fault rule dropped bytes numbers that side's stream its own way)."""

    src: Address
    dst: Address
    seq: int
    ack: int
    flags: int
    payload: bytes
    ip_id: int


@dataclass
class _Frame:
    us: int
    """Timestamp, microseconds since the epoch (every leg: when it was on the wire)."""
    order: tuple[int, int]
    """(timeline index of the record that made it, position among that record's frames): keeps
    frames of equal time in the order the trace has them."""
    segment: _Segment
    comments: list[str] = field(default_factory=list)
    t: float = 0.0
    """The trace time the every-leg capture stamps it with."""
    conn: ConnectionRecord | None = None
    """The connection it belongs to (None: a connect that never opened)."""
    from_client: bool = True
    message: MessageRecord | None = None
    """The message it carries (a data segment) ..."""
    acks: MessageRecord | None = None
    """... or the message it acknowledges (the receiver's ACK of it)."""
    connector: str = ""
    """For a connect that never opened: the actor that tried, whose capture point alone shows
    it (the server's side is unknown: a firewall on the way may have answered or dropped)."""
    dropped: tuple[int, int] = (0, 0)
    """Bytes a fault rule had dropped from the client's and the server's direction before it:
    their sender counts them in its sequence numbers, their receiver never saw them."""
    undelivered: tuple[int, int] = (0, 0)
    """Bytes of the client's and the server's direction that went on the wire and never reached
    the other end (lost with the connection, in flight at the end): that end's own segments
    never acknowledge them."""
    on_wire: bool = True
    """False for a dropped message's segment: only its sender's capture point shows it."""

    @property
    def data(self) -> bytes:
        """The frame as the every-leg capture (and the receiving end) numbers it."""
        return _packet(self.segment)


def _mac(host: str) -> bytes:
    """A locally administered unicast MAC (first octet 0x02) carrying the IP address."""
    packed = ipaddress.ip_address(host).packed
    return b"\x02\x00" + packed[-4:] if len(packed) == 4 else b"\x02" + packed[-5:]


def _isn(*key: object) -> int:
    """A random-looking, repeatable initial sequence number (RFC 793 §3.3 wants it unguessable
    on a real host; a capture of a simulation wants it stable from run to run)."""
    digest = hashlib.sha256(":".join(map(str, ("labsim-isn", *key))).encode()).digest()
    return int.from_bytes(digest[:4], "big")


class _Hosts:
    """Per-host IP identification counters (the IPv4 ID field, RFC 791)."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}

    def next_id(self, host: str) -> int:
        value = self._ids.get(host)
        if value is None:
            value = _isn("ip-id", host) & 0xFFFF
        self._ids[host] = (value + 1) & 0xFFFF
        return value


def _packet(segment: _Segment, seq_shift: int = 0, ack_shift: int = 0) -> bytes:
    src, dst, flags, payload = segment.src, segment.dst, segment.flags, segment.payload
    seq = (segment.seq + seq_shift) % _SEQ_MOD
    ack = (segment.ack + ack_shift) % _SEQ_MOD if flags & _ACK else segment.ack
    tcp = dpkt.tcp.TCP(
        sport=src.port, dport=dst.port, seq=seq, ack=ack, flags=flags, win=WINDOW, data=payload
    )
    tcp.off = 5  # no options: a 20-byte TCP header, as in the lab capture
    src_ip, dst_ip = ipaddress.ip_address(src.host), ipaddress.ip_address(dst.host)
    ip: Any
    if src_ip.version == 4:
        ip = dpkt.ip.IP(
            src=src_ip.packed, dst=dst_ip.packed, p=dpkt.ip.IP_PROTO_TCP, ttl=64,
            id=segment.ip_id, data=tcp,
        )  # fmt: skip
        ip.df = 1  # Linux sets DF on TCP (path MTU discovery)
        ip.len = 20 + 20 + len(payload)
        eth_type = dpkt.ethernet.ETH_TYPE_IP
    else:
        ip = dpkt.ip6.IP6(
            src=src_ip.packed, dst=dst_ip.packed, nxt=dpkt.ip.IP_PROTO_TCP, hlim=64, data=tcp
        )
        ip.plen = 20 + len(payload)
        eth_type = dpkt.ethernet.ETH_TYPE_IP6
    eth = dpkt.ethernet.Ethernet(src=_mac(src.host), dst=_mac(dst.host), type=eth_type, data=ip)
    # bytes() computes the IP header checksum and the TCP checksum over the pseudo-header.
    return bytes(eth)


def _max_segment(address: Address) -> int:
    header = HEADER_BYTES if ipaddress.ip_address(address.host).version == 4 else HEADER_BYTES_V6
    return SNAPLEN - header


@dataclass
class _End:
    address: Address
    seq: int
    """Next sequence number this side sends."""
    fin: bool = False


class _Tcp:
    """One connection's sequence space, turning trace records into segments."""

    def __init__(self, builder: _Builder, record: ConnectionRecord) -> None:
        self.builder = builder
        self.record = record
        self.ends = {
            True: _End(record.client_addr, _isn(record.id, "client")),
            False: _End(record.server_addr, _isn(record.id, "server")),
        }
        self.last_t = record.opened
        self.dropped = {True: 0, False: 0}
        self.undelivered = {True: 0, False: 0}
        self.reset = False
        self.closer: bool | None = None
        """The side that sent the first FIN (True: the client)."""

    def emit(
        self,
        t: float,
        from_client: bool,
        flags: int,
        payload: bytes = b"",
        *,
        message: MessageRecord | None = None,
        acks: MessageRecord | None = None,
    ) -> _Frame:
        me, peer = self.ends[from_client], self.ends[not from_client]
        ack = peer.seq if flags & _ACK else 0
        ip_id = self.builder.hosts.next_id(me.address.host)
        segment = _Segment(me.address, peer.address, me.seq, ack, flags, payload, ip_id)
        # SYN and FIN each take one sequence number (RFC 793 §3.3).
        me.seq = (me.seq + len(payload) + (1 if flags & (_SYN | _FIN) else 0)) % _SEQ_MOD
        self.last_t = max(self.last_t, t)
        frame = self.builder.add(self.last_t, segment)
        frame.conn, frame.from_client = self.record, from_client
        frame.message, frame.acks = message, acks
        frame.dropped = (self.dropped[True], self.dropped[False])
        frame.undelivered = (self.undelivered[True], self.undelivered[False])
        return frame

    def dropped_data(self, message: MessageRecord) -> None:
        """A message a fault rule dropped after it left its sender: a segment only the sender's
        capture point shows. Its bytes are counted in the sender's sequence space from here on
        (:attr:`_Frame.dropped`), never in the receiver's: the fault sits between the two ends
        and keeps each end's numbering whole, as a middlebox that removes a message from a TCP
        stream must (SIP ALGs translate sequence numbers so)."""
        from_client = _from_client(message, self.record)
        if self.reset or self.ends[from_client].fin:
            return
        me, peer = self.ends[from_client], self.ends[not from_client]
        payload = wire_payload(message, dropped=True)
        assert payload is not None
        step = _max_segment(me.address)
        for offset in range(0, len(payload), step):
            chunk = payload[offset : offset + step]
            # An IP ID of its own: counting it would renumber every later frame of the host in
            # the every-leg capture, which does not show it.
            ip_id = _isn("ip-id-dropped", message.connection, message.t, offset) & 0xFFFF
            segment = _Segment(
                me.address, peer.address, me.seq, peer.seq, _PSH | _ACK, chunk, ip_id
            )
            frame = self.builder.add(max(message.t, self.last_t), segment)
            frame.conn, frame.from_client, frame.message = self.record, from_client, message
            frame.dropped = (self.dropped[True], self.dropped[False])
            frame.on_wire = False
            if offset == 0:
                rule = f" {message.rule}" if message.rule is not None else ""
                text = f" (dropped by fault rule{rule} after it left the sender)"
                frame.comments.append(_comment(message, self.record.name) + text)
            self.dropped[from_client] += len(chunk)

    def open(self) -> None:
        t = self.record.opened
        self.emit(t, True, _SYN)
        self.emit(t, False, _SYN | _ACK)
        self.emit(t, True, _ACK)

    def data(
        self, message: MessageRecord, payload: bytes, next_t: float, last: bool
    ) -> _Frame | None:
        """Segments for one message; ``last``: no later message in its direction."""
        from_client = _from_client(message, self.record)
        if self.reset or self.ends[from_client].fin:
            return None  # nothing leaves a side after its FIN or after a reset
        t = max(message.t, self.last_t)
        step = _max_segment(self.ends[from_client].address)
        first: _Frame | None = None
        for offset in range(0, len(payload), step):
            final = offset + step >= len(payload)
            chunk = payload[offset : offset + step]
            frame = self.emit(t, from_client, _PSH | _ACK, chunk, message=message)
            first = first or frame
            ack_t = min(t + ACK_DELAY, next_t) if final else t
            self.emit(ack_t, not from_client, _ACK, acks=message)
        if message.fate != "delivered":
            # Lost with its connection or still in flight: its receiver never acknowledges it.
            self.undelivered[from_client] += len(payload)
        if self.closer is not None and from_client != self.closer and last:
            # The peer finished sending after the other side's FIN: now it closes its half.
            self._second_fin(self.last_t, next_t)
        return first

    def close(self, t: float, reset: bool, peer_sends_more: bool, next_t: float) -> None:
        from_client = _closed_by_client(self.record)
        t = max(t, self.last_t)
        if reset:
            self.emit(t, from_client, _RST | _ACK)
            self.reset = True
            return
        self.closer = from_client
        self.emit(t, from_client, _FIN | _ACK)
        self.ends[from_client].fin = True
        if peer_sends_more:
            # A half-close (RFC 793 §3.5): the peer acknowledges the FIN and goes on sending.
            self.emit(min(t + ACK_DELAY, next_t), not from_client, _ACK)
        else:
            self._second_fin(t, next_t)

    def _second_fin(self, t: float, next_t: float) -> None:
        other = not self.closer
        self.emit(min(t + ACK_DELAY, next_t), other, _FIN | _ACK)
        self.ends[other].fin = True
        self.emit(min(t + 2 * ACK_DELAY, next_t), not other, _ACK)


def _from_client(message: MessageRecord, record: ConnectionRecord) -> bool:
    # By address, not name: an actor may connect to itself.
    return message.src_addr == record.client_addr


def _closed_by_client(record: ConnectionRecord) -> bool:
    """Which side's segments close it: the server's only when the server closed it; when the
    network did (``closed_by`` names neither actor), the client's, as good as any."""
    return not (record.closed_by == record.server and record.closed_by != record.client)


class _Builder:
    def __init__(self, trace: Trace, start: float) -> None:
        self.trace = trace
        self.start_us = round(start * 1_000_000)
        self.hosts = _Hosts()
        self.frames: list[_Frame] = []
        self._index = 0
        self._sub = 0

    def add(self, t: float, segment: _Segment) -> _Frame:
        frame = _Frame(self.start_us + round(t * 1_000_000), (self._index, self._sub), segment)
        frame.t = t
        self._sub += 1
        self.frames.append(frame)
        return frame

    def build(self) -> list[_Frame]:
        timeline = self.trace.timeline
        next_t = self._next_times()
        last_data = self._last_data()
        conns: dict[int, _Tcp] = {}
        refused_ports = _RefusedPorts(self.trace)
        for index, record in enumerate(timeline):
            self._index, self._sub = index, 0
            if isinstance(record, ConnectionRecord):
                conns[record.id] = tcp = _Tcp(self, record)
                tcp.open()
            elif isinstance(record, MessageRecord):
                tcp_or_none = conns.get(record.connection)
                if tcp_or_none is None:
                    continue
                key = (record.connection, _from_client(record, tcp_or_none.record))
                payload = wire_payload(record)
                if payload is None:
                    tcp_or_none.dropped_data(record)
                    continue
                frame = tcp_or_none.data(record, payload, next_t[index], last_data[key] == index)
                if frame is None:
                    continue
                frame.comments.append(_comment(record, tcp_or_none.record.name))
            elif isinstance(record, ClosedRecord):
                conn = record.connection
                tcp_or_none = conns.get(conn.id)
                if tcp_or_none is None or conn.closed_by is None:
                    continue
                peer_is_client = not _closed_by_client(conn)
                more = last_data.get((conn.id, peer_is_client), -1) > index
                tcp_or_none.close(record.t, conn.reset, more, next_t[index])
            elif isinstance(record, RefusedRecord):
                self._refused(record, refused_ports.take(record.client_host), index)
        self.frames.sort(key=lambda f: (f.us, f.order))
        return self.frames

    def _refused(self, record: RefusedRecord, port: int, index: int) -> None:
        client = Address(record.client_host, port)
        isn = _isn("refused", index)
        began = record.began
        times = syn_times(began, record.t) if record.how == "timeout" else [began]
        for t in times:
            # Every retransmission repeats the first SYN, sequence number included.
            ip_id = self.hosts.next_id(client.host)
            syn = _Segment(client, record.server_addr, isn, 0, _SYN, b"", ip_id)
            self.add(t, syn).connector = record.client
        if record.how == "refused":
            # Nothing listens, or a firewall rejects: the SYN is answered with RST|ACK
            # (RFC 9293 §3.10.7.1), which the client got when the connect failed.
            ip_id = self.hosts.next_id(record.server_addr.host)
            rst = _Segment(
                record.server_addr, client, 0, (isn + 1) % _SEQ_MOD, _RST | _ACK, b"", ip_id
            )
            self.add(max(record.t, began + ACK_DELAY), rst).connector = record.client

    def _next_times(self) -> list[float]:
        """For each timeline record of a connection, the time of that connection's next record:
        the latest a receiver's ACK may be stamped without overtaking it."""
        out = [_NEVER] * len(self.trace.timeline)
        upcoming: dict[int, float] = {}
        for index in range(len(self.trace.timeline) - 1, -1, -1):
            record = self.trace.timeline[index]
            conn = _conn_of(record)
            if conn is None:
                continue
            out[index] = upcoming.get(conn, _NEVER)
            upcoming[conn] = _time_of(record)
        return out

    def _last_data(self) -> dict[tuple[int, bool], int]:
        """Timeline index of the last segment-carrying message per (connection, from client)."""
        out: dict[tuple[int, bool], int] = {}
        for index, record in enumerate(self.trace.timeline):
            if isinstance(record, MessageRecord) and record.on_wire:
                conn = self.trace.connections.get(record.connection)
                if conn is not None:
                    out[(record.connection, _from_client(record, conn))] = index
        return out


def _conn_of(record: object) -> int | None:
    if isinstance(record, ConnectionRecord):
        return record.id
    if isinstance(record, MessageRecord):
        return record.connection if record.on_wire else None
    if isinstance(record, ClosedRecord):
        return record.connection.id
    return None


def _time_of(record: object) -> float:
    if isinstance(record, ConnectionRecord):
        return record.opened
    assert isinstance(record, (MessageRecord, ClosedRecord))
    return record.t


def _comment(message: MessageRecord, name: str) -> str:
    text = f"{message.src} → {message.dst} [{name}]: {message.summary}"
    if message.protocol == "TCP" and len(message.data) < message.size:
        text += (
            f" (the trace kept the first {len(message.data)} of {message.size} bytes;"
            " the rest is written as zeros)"
        )
    return text


class _RefusedPorts:
    """Source ports for connects that never opened: the trace does not record them, so each
    gets one no connection of its host uses."""

    FIRST = 60000

    def __init__(self, trace: Trace) -> None:
        self.used = {(c.client_addr.host, c.client_addr.port) for c in trace.connections.values()}
        self.next: dict[str, int] = {}

    def take(self, host: str) -> int:
        port = self.next.get(host, self.FIRST)
        while (host, port) in self.used:
            port = port + 1 if port < 65535 else 1024
        self.used.add((host, port))
        self.next[host] = port + 1 if port < 65535 else 1024
        return port


# -- capture points ------------------------------------------------------------------------------


def _point_time(frame: _Frame, actor: str) -> float | None:
    """When ``actor``'s interface saw the frame (trace seconds), or None when it never did.

    Only the connections the actor is an end of cross its interface. A message's segment is
    there at its ``sent_t`` on the sender's side (a fault rule's hold and drop happen after it
    left: on the hop, between the two ends) and at its delivery (``fate_t``) on the receiver's,
    which never sees a message that was dropped, lost with its connection or still in flight.
    The receiver's ACK of a message exists only once it was delivered; the trace records no ACK
    times, so both ends see it at the delivery. Handshakes, FINs and RSTs keep their trace time
    at both ends (the trace has no per-end times for them)."""
    conn = frame.conn
    if conn is None:
        return frame.t if frame.connector == actor else None
    if actor not in (conn.client, conn.server):
        return None
    sender = conn.client if frame.from_client else conn.server
    message = frame.message
    if message is not None:
        if sender == actor:
            return message.sent_t
        return message.fate_t if message.fate == "delivered" else None
    acked = frame.acks
    if acked is not None:
        return acked.fate_t if acked.fate == "delivered" else None
    return frame.t


def point_frames(
    frames: list[_Frame], actor: str, start: float = LAB_CAPTURE_START
) -> list[tuple[_Frame, int, bytes]]:
    """The frames ``actor``'s interface saw, each with its timestamp (µs since the epoch) and
    bytes, in time order: the every-leg frames filtered and restamped (:func:`_point_time`),
    numbered as that end numbers its connections (:attr:`_Frame.dropped`,
    :attr:`_Frame.undelivered`).

    A frame is never stamped before an earlier frame of its connection at this point: the
    segments of a connection are built in an order whose sequence and acknowledgement numbers
    agree, and kept in it, so tshark flags nothing (a held message whose sender had heard back
    on the connection meanwhile moves to that moment)."""
    start_us = round(start * 1_000_000)
    last: dict[int, float] = {}
    out: list[tuple[_Frame, int, bytes]] = []
    for frame in sorted(frames, key=lambda f: f.order):
        t = _point_time(frame, actor)
        if t is None:
            continue
        conn = frame.conn
        data = frame.data
        if conn is not None:
            t = last[conn.id] = max(t, last.get(conn.id, t))
            # This end's own stream counts the bytes a fault dropped after they left it.
            mine = conn.client == actor
            dropped = frame.dropped[0 if mine else 1]
            if frame.from_client == mine:
                unseen = frame.undelivered[1 if mine else 0]
                seq_shift, ack_shift = dropped, -unseen
            else:
                seq_shift, ack_shift = 0, dropped
            if seq_shift or ack_shift:
                data = _packet(frame.segment, seq_shift=seq_shift, ack_shift=ack_shift)
        out.append((frame, start_us + round(t * 1_000_000), data))
    out.sort(key=lambda item: (item[1], item[0].order))
    return out


def frame_numbers(trace: Trace, actor: str) -> tuple[dict[int, int], dict[int, int]]:
    """The frame numbers of a capture at ``actor`` (as :func:`write_pcapng` with
    ``capture_at=[actor]`` numbers them, from 1): each message record's first data segment (by
    the record's ``id``) and each connection's opening SYN (by connection id). For readers that
    point at frames (``labsim explain``) without a second numbering that could drift."""
    by_message: dict[int, int] = {}
    by_syn: dict[int, int] = {}
    frames = _Builder(trace, LAB_CAPTURE_START).build()
    for number, (frame, _us, _data) in enumerate(point_frames(frames, actor), start=1):
        segment = frame.segment
        if frame.message is not None and segment.payload:
            by_message.setdefault(id(frame.message), number)
        elif frame.conn is not None and segment.flags & _SYN and not segment.flags & _ACK:
            by_syn.setdefault(frame.conn.id, number)
    return by_message, by_syn


def _actor_hosts(trace: Trace) -> dict[str, str]:
    """Each actor's address, as its connections show it."""
    hosts: dict[str, str] = {}
    for conn in trace.connections.values():
        hosts.setdefault(conn.client, conn.client_addr.host)
        hosts.setdefault(conn.server, conn.server_addr.host)
    return hosts


@dataclass
class _Out:
    us: int
    order: tuple[int, int]
    iface: int
    data: bytes
    comments: list[str]


# -- pcapng blocks -------------------------------------------------------------------------------


def _write(
    fh: BinaryIO, frames: list[_Out], interfaces: list[tuple[str, str]], appl: str, comment: str
) -> None:
    # dpkt wants blocks in the machine's byte order (pcapng §4.1: readers handle either).
    le = sys.byteorder == "little"
    pcapng = dpkt.pcapng
    option = pcapng.PcapngOptionLE if le else pcapng.PcapngOption
    shb_class = pcapng.SectionHeaderBlockLE if le else pcapng.SectionHeaderBlock
    idb_class = pcapng.InterfaceDescriptionBlockLE if le else pcapng.InterfaceDescriptionBlock
    epb_class = pcapng.EnhancedPacketBlockLE if le else pcapng.EnhancedPacketBlock
    end = option(code=pcapng.PCAPNG_OPT_ENDOFOPT)
    shb_opts = [option(code=pcapng.PCAPNG_OPT_SHB_USERAPPL, data=appl.encode())]
    if comment:
        shb_opts.append(option(code=pcapng.PCAPNG_OPT_COMMENT, text=comment))
    shb = shb_class(opts=[*shb_opts, end])
    idbs = [
        idb_class(
            snaplen=SNAPLEN,
            linktype=dpkt.pcapng.DLT_EN10MB,
            opts=[
                option(code=pcapng.PCAPNG_OPT_IF_NAME, data=name.encode()),
                option(code=pcapng.PCAPNG_OPT_IF_DESCRIPTION, data=description.encode()),
                end,
            ],
        )
        for name, description in interfaces
    ]
    # The writer puts out the section header and the interface descriptions, in order: an
    # interface's id is its description's place in the section (pcapng §4.2).
    pcapng.Writer(fh, snaplen=SNAPLEN, linktype=pcapng.DLT_EN10MB, shb=shb, idb=idbs)
    for frame in frames:
        opts = []
        if frame.comments:
            text = "\n".join(frame.comments)
            opts = [option(code=pcapng.PCAPNG_OPT_COMMENT, text=text), end]
        epb = epb_class(pkt_data=frame.data, opts=opts, iface_id=frame.iface)
        # Our own integer microseconds: Writer.writepkt goes through float seconds and stamps a
        # zero timestamp with the current time.
        epb.ts_high, epb.ts_low = frame.us >> 32, frame.us & 0xFFFFFFFF
        fh.write(bytes(epb))
