"""The one record of a run: every connection and every message, decoded and timed.

Both runtimes write into a :class:`Trace` as they carry effects out; the ladder, the pcapng, the
JSON output, the diagnosis and the tests all read it, and nothing else (DESIGN.md: "the trace is
the truth").

Messages are cut out of each direction of each connection by the framing the sender declared on
its :class:`~labsim.proto.events.Send` (``stun``, ``rfc4571``, ``sip`` or ``raw``), with the
stream splitters of :mod:`labsim.wire.framing`, so a message split over several sends is
recorded once, whole, at the time its last byte was sent. ``raw`` bytes (what a TURN server
relays) are recorded as TCP data, and additionally decoded when they are RFC 4571-framed STUN —
the ICE checks crossing the relay, as Wireshark does on the peer leg (PROTOCOL.md §7.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from labsim.wire import WireError, sip, stun
from labsim.wire.address import Address
from labsim.wire.framing import Rfc4571Splitter, SipSplitter, StreamSplitter, StunSplitter


@dataclass
class ConnectionRecord:
    """One TCP connection of the run."""

    id: int
    client: str
    """Actor that opened it."""
    client_addr: Address
    server: str
    """Actor that accepted it."""
    server_addr: Address
    opened: float
    closed: float | None = None
    reset: bool = False
    """Ended by a reset (RST) rather than FIN."""
    closed_by: str | None = None
    """Actor that closed it, or ``"network"``."""


class MessageRecord:
    """One message on a connection, as the receiver's decoder sees it.

    ``summary`` and ``error`` are worked out on first use: decoding every message while a run
    is going costs the runtime time it should spend moving bytes.
    """

    __slots__ = (
        "t", "connection", "src", "dst", "src_addr", "dst_addr", "protocol", "data", "framing",
        "relayed", "size", "_summary", "_error",
    )  # fmt: skip

    def __init__(
        self,
        t: float,
        connection: int,
        src: str,
        dst: str,
        src_addr: Address,
        dst_addr: Address,
        protocol: str,
        data: bytes,
        framing: str,
        *,
        summary: str | None = None,
        error: str | None = None,
        relayed: bool = False,
        size: int = -1,
    ) -> None:
        self.t = t
        self.connection = connection
        self.src, self.dst = src, dst
        self.src_addr, self.dst_addr = src_addr, dst_addr
        #: ``"STUN"``, ``"SIP"`` or ``"TCP"`` (opaque data).
        self.protocol = protocol
        #: The bytes; opaque data keeps only its first :data:`RAW_KEEP`.
        self.data = data
        #: The sender's declared framing: ``stun``, ``rfc4571``, ``sip`` or ``raw``.
        self.framing = framing
        #: Decoded out of bytes a relay forwarded (``raw`` framing).
        self.relayed = relayed
        #: Bytes on the wire.
        self.size = len(data) if size < 0 else size
        self._summary = summary
        self._error = error

    @property
    def summary(self) -> str:
        """Wireshark-style one-liner: ``Allocate Request TCP lifetime: 600``, ``INVITE``, …"""
        if self._summary is None:
            self._decode()
        assert self._summary is not None
        return self._summary

    @property
    def error(self) -> str | None:
        """Why the bytes did not decode, if they did not."""
        if self._summary is None:
            self._decode()
        return self._error

    def _decode(self) -> None:
        self._summary, self._error = describe(self.protocol, self.data)

    def decoded(self) -> stun.Message | stun.ChannelData | sip.SipMessage | None:
        """The decoded message, or None for opaque data and decode errors."""
        if self.error is not None or self.protocol == "TCP":
            return None
        if self.protocol == "SIP":
            return sip.parse_message(self.data)
        return stun.decode_control(self.data)

    def __repr__(self) -> str:
        return f"MessageRecord({self.t:.6f}, {self.src}->{self.dst}, {self.summary!r})"


#: Opaque relayed data is kept only this far: a relay moving gigabytes must not grow the trace
#: by gigabytes. The size is always kept, so a capture still gets sequence numbers right.
RAW_KEEP = 256

#: Consecutive opaque writes on one direction of one connection, once nothing in them is framed
#: STUN any more and nothing else happened in between, are kept as one record up to this size.
RAW_MERGE = 16 * 1024 * 1024


@dataclass
class RefusedRecord:
    """A connection attempt that never opened (refused, timed out, blocked)."""

    t: float
    client: str
    client_host: str
    server_addr: Address
    reason: str


@dataclass
class LogRecord:
    t: float
    actor: str
    text: str
    level: str = "info"


@dataclass
class ClosedRecord:
    """The moment a connection ended (its :class:`ConnectionRecord` holds how)."""

    t: float
    connection: ConnectionRecord


@dataclass
class FaultRecord:
    """What an injected network fault did (a scenario's ``faults:``), for the reader: the
    ladder shows it. The diagnosis never reads these; it must find the fault from the
    messages alone, as an engineer with a real capture would."""

    t: float
    action: str
    """``dropped``, ``delayed``, ``blocked`` or ``cut``."""
    rule: str
    """The rule, in words, with its number in the scenario."""
    src: str
    dst: str
    connection: int | None = None
    summary: str = ""
    """The message dropped or delayed (empty for connects and cuts)."""


TimelineRecord = (
    ConnectionRecord | ClosedRecord | MessageRecord | RefusedRecord | LogRecord | FaultRecord
)


@dataclass
class _Direction:
    framing: str = ""
    splitter: StreamSplitter | None = None
    sent: int = 0
    last_raw: MessageRecord | None = None


@dataclass
class Trace:
    """Everything that happened in one run, in order."""

    connections: dict[int, ConnectionRecord] = field(default_factory=dict)
    messages: list[MessageRecord] = field(default_factory=list)
    refused: list[RefusedRecord] = field(default_factory=list)
    logs: list[LogRecord] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    #: Every record in the order it happened, for renderers that interleave them.
    timeline: list[TimelineRecord] = field(default_factory=list)
    _directions: dict[tuple[int, bool], _Direction] = field(default_factory=dict, repr=False)
    _last_on_conn: dict[int, MessageRecord] = field(default_factory=dict, repr=False)

    # -- written by the runtimes ---------------------------------------------------------------

    def opened(
        self,
        t: float,
        conn: int,
        client: str,
        client_addr: Address,
        server: str,
        server_addr: Address,
    ) -> ConnectionRecord:
        record = ConnectionRecord(conn, client, client_addr, server, server_addr, t)
        self.connections[conn] = record
        self.timeline.append(record)
        return record

    def closed(self, t: float, conn: int, by: str, reset: bool = False) -> None:
        record = self.connections[conn]
        if record.closed is not None:
            return
        record.closed, record.closed_by, record.reset = t, by, reset
        self.timeline.append(ClosedRecord(t, record))

    def refuse(self, t: float, client: str, client_host: str, server: Address, reason: str) -> None:
        record = RefusedRecord(t, client, client_host, server, reason)
        self.refused.append(record)
        self.timeline.append(record)

    def fault(self, record: FaultRecord) -> None:
        self.faults.append(record)
        self.timeline.append(record)

    def log(self, t: float, actor: str, text: str, level: str = "info") -> None:
        record = LogRecord(t, actor, text, level)
        self.logs.append(record)
        self.timeline.append(record)

    def sent(
        self, t: float, conn: int, from_client: bool, data: bytes, framing: str = "raw"
    ) -> list[MessageRecord]:
        """Record bytes sent on a connection; returns the messages they completed."""
        record = self.connections[conn]
        if from_client:
            src, dst, src_addr, dst_addr = (
                record.client, record.server, record.client_addr, record.server_addr
            )  # fmt: skip
        else:
            src, dst, src_addr, dst_addr = (
                record.server, record.client, record.server_addr, record.client_addr
            )  # fmt: skip
        direction = self._directions.get((conn, from_client))
        if direction is None:
            direction = self._directions[(conn, from_client)] = _Direction()
        if direction.framing != framing:
            direction.framing = framing
            direction.splitter = splitter_for(framing)
        direction.sent += len(data)
        splitter = direction.splitter
        if (
            framing == "stun"
            and splitter is not None
            and not splitter.buffered
            and len(data) >= 20
            and data[0] < 0x40
            and len(data) == 20 + int.from_bytes(data[2:4], "big")
        ):
            # The common case, first: one whole STUN message per send (a TURN server answers
            # every request with one). The splitter would only copy it.
            splitter.offset += len(data)
            one = MessageRecord(t, conn, src, dst, src_addr, dst_addr, "STUN", data, framing)
            self._last_on_conn[conn] = one
            self.messages.append(one)
            self.timeline.append(one)
            return [one]

        out: list[MessageRecord] = []

        def add(protocol: str, summary: str | None, raw: bytes, error: str | None = None,
                relayed: bool = False, size: int = -1) -> None:  # fmt: skip
            out.append(MessageRecord(
                t, conn, src, dst, src_addr, dst_addr, protocol, raw, framing, summary=summary,
                error=error, relayed=relayed, size=size,
            ))  # fmt: skip

        if framing == "raw":
            last = direction.last_raw
            if (
                direction.splitter is None
                and last is not None
                and self._last_on_conn.get(conn) is last
                and last.size < RAW_MERGE
            ):
                # Bulk relayed data, sniffing over, nothing else recorded on this connection
                # since the previous write: grow that record instead of adding one per write (a
                # relay moving gigabytes in 64 KiB writes would otherwise keep one per write).
                last.size += len(data)
                last._summary = f"TCP data, {last.size} bytes"
                if len(last.data) < RAW_KEEP:
                    last.data += data[: RAW_KEEP - len(last.data)]
                return []
            add("TCP", f"TCP data, {len(data)} bytes", data[:RAW_KEEP], size=len(data))
            direction.last_raw = out[-1]
            if direction.splitter is not None:
                # Sniff for RFC 4571-framed STUN (the ICE checks crossing a relay) until the
                # first frame that is not STUN: after the checks come media, or the bytes were
                # never framed at all; either way sniffing further only costs.
                try:
                    frames = direction.splitter.feed(data)
                except WireError:
                    frames = []
                    direction.splitter = None
                for frame in frames:
                    if not stun.is_stun(frame):
                        direction.splitter = None
                        break
                    add("STUN", None, frame, relayed=True)
        elif direction.splitter is None:
            add("TCP", f"TCP data, {len(data)} bytes", data[:RAW_KEEP], "framing lost earlier",
                size=len(data))  # fmt: skip
        else:
            splitter = direction.splitter
            parts: list[bytes] = []
            rest: bytes | None = None
            error = ""
            try:
                # One message at a time, so the messages before a fault are not lost with it
                # (an RFC 6062 data connection carries a response and then relayed bytes, often
                # in one segment).
                chunk: bytes = data
                while got := splitter.feed(chunk, max_messages=1):
                    parts += got
                    if not splitter.buffered:
                        break  # the usual case, one whole message per send: nothing left
                    chunk = b""
            except WireError as exc:
                rest, error = splitter.take_buffered(), str(exc)
                direction.splitter = None
            for frame in parts:
                if framing == "sip":
                    add("SIP", None, frame)
                elif framing == "rfc4571" and not stun.is_stun(frame):
                    add("TCP", f"framed data, {len(frame)} bytes", frame)
                else:
                    add("STUN", None, frame)
            if rest is not None:
                add("TCP", f"TCP data, {len(rest)} bytes", rest[:RAW_KEEP], error, size=len(rest))
        if out:
            self._last_on_conn[conn] = out[-1]
        self.messages.extend(out)
        self.timeline.extend(out)
        return out

    # -- read by renderers and tests -----------------------------------------------------------

    def sequence(self, *, relayed: bool = True) -> list[tuple[str, str, str]]:
        """(summary, src, dst) of every decoded message, in order: what "the same flow" means
        when two runs are compared. Opaque TCP data is left out."""
        return [
            (m.summary, m.src, m.dst)
            for m in self.messages
            if m.protocol != "TCP" and (relayed or not m.relayed)
        ]

    def find(self, summary_prefix: str) -> list[MessageRecord]:
        return [m for m in self.messages if m.summary.startswith(summary_prefix)]


def describe(protocol: str, data: bytes) -> tuple[str, str | None]:
    """(summary, why it did not decode) of one SIP or STUN message, as the ladder prints it;
    fault rules match on the same summary."""
    try:
        if protocol == "SIP":
            return sip.summary(sip.parse_message(data)), None
        return stun.decode_control(data).summary(), None
    except WireError as exc:
        return f"Malformed {protocol}", str(exc)


def splitter_for(framing: str) -> StreamSplitter:
    """The stream splitter that cuts a connection's bytes sent with ``framing`` into messages
    (fault rules cut sends the same way, so they see the messages the trace shows)."""
    if framing == "stun":
        # TCP allocations (RFC 6062 §4.1) never carry ChannelData, and refusing it makes text
        # sent to a TURN port show up as garbage at once.
        return StunSplitter(allow_channel_data=False)
    if framing in ("rfc4571", "raw"):
        return Rfc4571Splitter()
    if framing == "sip":
        return SipSplitter()
    raise ValueError(f"unknown framing {framing!r}")
