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

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from labsim.wire import WireError, sip, stun
from labsim.wire.address import Address
from labsim.wire.errors import FramingError
from labsim.wire.facts import DataFacts, Facts, Kind, SipFacts, StunFacts, facts_of, parse_kind
from labsim.wire.framing import (
    Rfc4571Splitter,
    SipSplitter,
    StreamSplitter,
    StunSplitter,
    frame_rfc4571,
)


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
    name: str = ""
    """Its one name in the ladder, the notes, the JSON and the capture: the opener and the
    opener's own name for it (``cms/turn:data:1``); the accepting actor knows it by this name
    too (``#2`` added when an opener reuses a name)."""

    def __post_init__(self) -> None:
        if not self.name:
            self.name = f"{self.client}/{self.id}"


#: What became of a message on one hop (DESIGN.md, "The trace records journeys, typed").
Fate = Literal["delivered", "dropped", "lost", "in-flight", "outside"]
FATES: tuple[Fate, ...] = ("delivered", "dropped", "lost", "in-flight", "outside")
"""``delivered``: its last byte reached the receiving actor, which read it; ``dropped``: a
fault rule took it before it went on the wire; ``lost``: it was on the wire when its connection
was reset or cut, or its receiver had closed; ``in-flight``: still on the wire when the run
ended; ``outside``: handed to a peer outside the run (coturn, sipp), which the run cannot see
read it."""


class Journey:
    """One message's identity across the hops it crosses: the hop it was sent on first, then
    every hop a relay (a TURN server's pipe, the Edge's media relay) or a proxy forwarded it on.

    A relay's write is the same message when its bytes are the bytes the relay was handed
    (RFC 6062 §5.3: the data connection is a raw pipe); a proxy's is when it has the same
    Call-ID, CSeq, method or status and bottom Via branch (RFC 3261 §16.6: a proxy adds its own
    Via on top and removes it from the answer, the originator's branch stays). ``100 Trying`` is
    hop by hop (§16.7 step 3) and never forwarded."""

    __slots__ = ("id", "hops")

    def __init__(self, id: int) -> None:
        self.id = id
        self.hops: list[MessageRecord] = []

    @property
    def first(self) -> MessageRecord:
        return self.hops[0]

    @property
    def last(self) -> MessageRecord:
        return self.hops[-1]

    @property
    def sender(self) -> str:
        """The actor that sent it first."""
        return self.hops[0].src

    def reached(self, actor: str) -> bool:
        """Whether a hop of it was delivered to ``actor``."""
        return any(h.dst == actor and h.fate == "delivered" for h in self.hops)

    def __repr__(self) -> str:
        path = ", ".join(f"{h.src}->{h.dst}:{h.fate}" for h in self.hops)
        return f"Journey({self.id}, {path})"


class MessageRecord:
    """One message on one hop (one TCP connection), as the receiver's decoder sees it, with
    its fate on that hop and the :class:`Journey` it belongs to.

    ``t`` is when it went on the wire (or was dropped); ``sent_t`` when its sender sent it
    (earlier by a fault rule's delay). ``facts`` (typed fields), ``summary`` (for people) and
    ``error`` are worked out on first use: decoding every message while a run is going costs
    the runtime time it should spend moving bytes.
    """

    __slots__ = (
        "t", "connection", "src", "dst", "src_addr", "dst_addr", "protocol", "data", "framing",
        "relayed", "size", "_summary", "_error", "_facts", "sent_t", "fate", "fate_t", "rule",
        "delay", "_journey", "wire_end", "_dir", "_trace",
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
        #: The bytes, without an RFC 4571 length prefix; opaque data keeps only its first
        #: :data:`RAW_KEEP`.
        self.data = data
        #: The sender's declared framing: ``stun``, ``rfc4571``, ``sip`` or ``raw``.
        self.framing = framing
        #: Carried by a relay as opaque bytes (``raw`` framing): an ICE check crossing a TURN
        #: relay or the Edge's media relay.
        self.relayed = relayed
        #: Bytes of the message (the RFC 4571 prefix not counted).
        self.size = len(data) if size < 0 else size
        self._summary = summary
        self._error = error
        self._facts: Facts | None = None
        self.sent_t = t
        #: What became of it on this hop (:data:`Fate`) and when (None while in flight).
        self.fate: Fate = "in-flight"
        self.fate_t: float | None = None
        #: The number of the fault rule that dropped or delayed it.
        self.rule: int | None = None
        #: Seconds a fault rule held it before it went on the wire.
        self.delay = 0.0
        self._journey: Journey | None = None
        #: The trace that links journeys (lazily: see :meth:`Trace.link`).
        self._trace: Trace | None = None
        #: Offset of its last byte in the bytes written on this direction (delivery tracking).
        self.wire_end = -1
        self._dir: _Direction | None = None

    @property
    def summary(self) -> str:
        """Wireshark-style one-liner: ``Allocate Request TCP lifetime: 600``, ``INVITE``, …
        For people: code compares :attr:`facts`."""
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

    @property
    def facts(self) -> Facts:
        """The typed fields (:mod:`labsim.wire.facts`)."""
        facts = self._facts
        if facts is None:
            if self.protocol == "TCP":
                facts = DataFacts(framed=self.framing == "rfc4571", error=self._error)
            else:
                facts = facts_of(self.protocol, self.data)
            self._facts = facts
        return facts

    @property
    def sip_facts(self) -> SipFacts | None:
        facts = self.facts
        return facts if isinstance(facts, SipFacts) else None

    @property
    def stun_facts(self) -> StunFacts | None:
        facts = self.facts
        return facts if isinstance(facts, StunFacts) else None

    @property
    def framed(self) -> bool:
        """Whether it went on the wire as an RFC 4571 frame (its 2-byte length stripped from
        ``data``): a message of ``rfc4571`` framing, or framed STUN a relay carried. Opaque
        bytes after a framing fault carry no prefix."""
        if self.framing == "rfc4571":
            return not (self.protocol == "TCP" and self._error is not None)
        return self.framing == "raw" and self.protocol == "STUN"

    @property
    def wire_size(self) -> int:
        """Bytes it took on the wire: an RFC 4571 frame's 2-byte length counted."""
        return self.size + 2 if self.framed else self.size

    @property
    def delivered(self) -> bool:
        return self.fate == "delivered"

    @property
    def on_wire(self) -> bool:
        """It went on the wire (every fate but ``dropped``)."""
        return self.fate != "dropped"

    @property
    def journey(self) -> Journey | None:
        """The message's journey across hops (None for a record no trace holds)."""
        trace = self._trace
        if trace is not None and trace._log:
            trace.link()
        return self._journey

    @property
    def hop(self) -> int:
        """Its place in its journey (0: the hop its sender sent it on)."""
        return self.journey.hops.index(self) if self.journey is not None else 0

    def is_kind(self, kind: Kind | str) -> bool:
        """Whether it is this kind of message (``Binding Request``, ``INVITE``, ``200``)."""
        if isinstance(kind, str):
            kind = parse_kind(kind)
        return kind.matches(self.protocol, self.facts)

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
        return f"MessageRecord({self.t:.6f}, {self.src}->{self.dst}, {self.summary!r}, {self.fate})"


#: Opaque relayed data is kept only this far: a relay moving gigabytes must not grow the trace
#: by gigabytes. The size is always kept, so a capture still gets sequence numbers right.
RAW_KEEP = 256

#: Consecutive opaque writes on one direction of one connection, once nothing in them is framed
#: STUN any more and nothing else happened in between, are kept as one record up to this size.
RAW_MERGE = 16 * 1024 * 1024


#: How a connect that never opened failed (:attr:`RefusedRecord.how`):
#:
#: * ``refused``: a RST answered the SYN (nothing listens there, the service is off, or a
#:   firewall rejects; RFC 9293 §3.10.7.1);
#: * ``timeout``: the SYNs got no answer and the client gave up (a firewall that drops them);
#: * ``unreachable``: there is no route to the address, so no SYN could leave.
ConnectFailure = Literal["refused", "timeout", "unreachable"]
CONNECT_FAILURES: tuple[ConnectFailure, ...] = ("refused", "timeout", "unreachable")


@dataclass
class RefusedRecord:
    """A connection attempt that never opened (refused, timed out, blocked)."""

    t: float
    """When the connect failed: the RST came back, or the client gave up."""
    client: str
    client_host: str
    server_addr: Address
    reason: str
    """The failure in words, as the connecting actor was told."""
    how: ConnectFailure = "timeout"
    """How it failed, typed: ``refused`` (a RST came back), ``timeout`` (the SYNs got no
    answer) or ``unreachable`` (no route: no SYN could leave)."""
    started: float | None = None
    """When the connect started (its first SYN); None: not recorded (taken as ``t``)."""

    @property
    def began(self) -> float:
        """When the first SYN left."""
        return self.t if self.started is None else self.started


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
    number: int = 0
    """The rule's number in the scenario's ``faults:`` (1-based; 0: not known)."""


@dataclass
class FaultRuleRecord:
    """One rule of the scenario's ``faults:`` and how often it acted in the run. A rule that
    never acted is most often a mistake of the scenario (a hop whose two actors share no
    connection, a kind of message that never crosses that hop, a rule an earlier one
    shadows), and the run was then the healthy call: reports say so."""

    number: int
    """1-based, in the order of ``faults:``."""
    rule: str
    """The rule in words."""
    action: Literal["drop", "delay", "block", "cut"]
    acted: int = 0
    """How many messages it dropped or delayed, connects it blocked, connections it cut."""
    matched: int | None = None
    """Drop and delay rules: messages its hop, protocol, kind and connection matched, before
    ``nth`` and ``probability`` chose; cut rules: connections it was armed on (None for block
    rules: a block that matches a connect acts on it)."""
    probability: float = 1.0

    def unmatched(self) -> str:
        """Why it never acted, in words ("" when it did)."""
        if self.acted:
            return ""
        head = f"fault rule {self.number} ({self.rule})"
        if self.probability < 1.0 and self.matched:
            return (
                f"{head} acted on none of the {self.matched} messages it matched: with "
                f"probability {self.probability:g} a rule may act zero times (change the seed "
                "to draw again)"
            )
        if self.matched and self.action == "cut":
            return (
                f"{head} matched {self.matched} connections and cut none: each closed, or the "
                "run ended, first"
            )
        if self.matched:
            return f"{head} matched {self.matched} messages, none of the occurrences it names"
        if self.probability < 1.0:
            return f"{head} matched nothing (even before its probability {self.probability:g})"
        return f"{head} matched nothing"


TimelineRecord = (
    ConnectionRecord | ClosedRecord | MessageRecord | RefusedRecord | LogRecord | FaultRecord
)


class _Direction:
    """One direction of one connection: how its bytes are cut (one splitter, used for the
    trace and the fault rules alike), what went on the wire, what arrived."""

    __slots__ = ("framing", "splitter", "wire", "delivered", "pending",
                 "last_raw", "lost_framing", "last_end")  # fmt: skip

    def __init__(self) -> None:
        self.framing = ""
        self.splitter: StreamSplitter | None = None
        #: Bytes written on the wire in this direction so far.
        self.wire = 0
        #: Bytes the receiver has read so far.
        self.delivered = 0
        #: Records on the wire, not yet read by the receiver, in order (made on first use: a
        #: deque costs 600 bytes and a TURN server holds thousands of directions).
        self.pending: deque[MessageRecord] | None = None
        self.last_raw: MessageRecord | None = None
        self.lost_framing = False
        #: ``wire_end`` of the last record on the wire in this direction.
        self.last_end = 0

    def wait_for(self, record: MessageRecord) -> None:
        """``record`` is on the wire: delivered once the receiver reads its last byte."""
        pending = self.pending
        if pending is None:
            pending = self.pending = deque()
        pending.append(record)


#: A message cut out of a send, not yet on the wire: the record and the bytes to write for it.
Unit = tuple["MessageRecord", bytes]

#: How many messages an actor was handed and may still forward (per actor): a relay or proxy
#: forwards at once, so only the newest matter, and a run of many calls stays bounded.
FORWARDABLE_KEEP = 4096


@dataclass
class Trace:
    """Everything that happened in one run, in order."""

    connections: dict[int, ConnectionRecord] = field(default_factory=dict)
    #: Every message on every hop (dropped ones too), in the order they went on the wire.
    messages: list[MessageRecord] = field(default_factory=list)
    #: Every message once, with the hops it crossed.
    _journeys: list[Journey] = field(default_factory=list, repr=False)
    refused: list[RefusedRecord] = field(default_factory=list)
    logs: list[LogRecord] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    #: The scenario's fault rules and how often each acted (written when the run ends).
    fault_rules: list[FaultRuleRecord] = field(default_factory=list)
    #: Every record in the order it happened, for renderers that interleave them.
    timeline: list[TimelineRecord] = field(default_factory=list)
    _directions: dict[tuple[int, bool], _Direction] = field(default_factory=dict, repr=False)
    _last_on_conn: dict[int, MessageRecord] = field(default_factory=dict, repr=False)
    _forwardable: dict[str, dict[object, deque[MessageRecord]]] = field(
        default_factory=dict, repr=False
    )
    #: What happened to messages since journeys were last linked, in order (see
    #: ``_log_sent``). Linking waits until someone asks (:meth:`link`), so a run pays two
    #: appends per message, not a SIP parse.
    _log: list[MessageRecord] = field(default_factory=list, repr=False)
    #: For each entry of ``_log``: 1 it went on the wire (or was dropped), 0 it was delivered.
    _log_sent: bytearray = field(default_factory=bytearray, repr=False)

    @property
    def journeys(self) -> list[Journey]:
        """Every message once, with the hops it crossed."""
        if self._log:
            self.link()
        return self._journeys

    @property
    def unmatched_rules(self) -> list[FaultRuleRecord]:
        """The fault rules that never acted in the run (see :class:`FaultRuleRecord`)."""
        return [r for r in self.fault_rules if not r.acted]

    # -- written by the runtimes ---------------------------------------------------------------

    def opened(
        self,
        t: float,
        conn: int,
        client: str,
        client_addr: Address,
        server: str,
        server_addr: Address,
        name: str = "",
    ) -> ConnectionRecord:
        record = ConnectionRecord(conn, client, client_addr, server, server_addr, t, name=name)
        self.connections[conn] = record
        self.timeline.append(record)
        return record

    def closed(self, t: float, conn: int, by: str, reset: bool = False) -> None:
        record = self.connections[conn]
        if record.closed is not None:
            return
        record.closed, record.closed_by, record.reset = t, by, reset
        self.timeline.append(ClosedRecord(t, record))

    def refuse(
        self, t: float, client: str, client_host: str, server: Address, reason: str, *,
        how: ConnectFailure | None = None, started: float | None = None,
    ) -> None:  # fmt: skip
        """A connect failed at ``t`` (it started at ``started``). ``how`` may be left out only
        when ``reason`` is itself one of the typed words (``refused``, ``timeout``,
        ``unreachable``)."""
        if how is None:
            if reason not in CONNECT_FAILURES:
                raise ValueError(f"say how the connect to {server} failed ({reason!r})")
            how = CONNECT_FAILURES[CONNECT_FAILURES.index(reason)]
        record = RefusedRecord(t, client, client_host, server, reason, how, started)
        self.refused.append(record)
        self.timeline.append(record)

    def fault(self, record: FaultRecord) -> None:
        self.faults.append(record)
        self.timeline.append(record)

    def log(self, t: float, actor: str, text: str, level: str = "info") -> None:
        record = LogRecord(t, actor, text, level)
        self.logs.append(record)
        self.timeline.append(record)

    def _direction(self, conn: int, from_client: bool, framing: str) -> _Direction:
        direction = self._directions.get((conn, from_client))
        if direction is None:
            direction = self._directions[(conn, from_client)] = _Direction()
        if direction.framing != framing:
            direction.framing = framing
            if not direction.lost_framing:
                direction.splitter = splitter_for(framing)
        return direction

    def _ends(self, conn: int, from_client: bool) -> tuple[str, str, Address, Address]:
        record = self.connections[conn]
        if from_client:
            return record.client, record.server, record.client_addr, record.server_addr
        return record.server, record.client, record.server_addr, record.client_addr

    def cut(
        self, t: float, conn: int, from_client: bool, data: bytes, framing: str = "raw"
    ) -> list[Unit]:
        """Cut a send into the messages it completes, each with the bytes to write for it, not
        yet on the wire: the runtime puts each on the wire (:meth:`wire`), drops it
        (:meth:`drop`) or holds it first (:meth:`hold`). The one place bytes become messages,
        for the trace and the fault rules alike. An incomplete message stays buffered here
        until its last byte is sent, so a rule always decides on a whole message."""
        direction = self._direction(conn, from_client, framing)
        ends = self._ends(conn, from_client)
        units: list[Unit] = []
        splitter = direction.splitter

        def record(protocol: str, message: bytes, wire: bytes, *, summary: str | None = None,
                   error: str | None = None, relayed: bool = False) -> None:  # fmt: skip
            keep = message if protocol != "TCP" or len(message) <= RAW_KEEP else message[:RAW_KEEP]
            one = MessageRecord(
                t, conn, *ends, protocol, keep, framing, summary=summary, error=error,
                relayed=relayed, size=len(message),
            )  # fmt: skip
            one._dir = direction
            units.append((one, wire))

        if splitter is None:
            lost = direction.lost_framing or framing != "raw"
            why = "framing lost earlier" if lost else None
            record("TCP", data, data, summary=f"TCP data, {len(data)} bytes", error=why)
            return units
        if framing == "raw":
            # A relay's bytes: the RFC 4571-framed STUN messages they hold, while they hold
            # nothing else (the ICE checks crossing a relay, as Wireshark's heuristic finds
            # them on the peer leg, PROTOCOL.md §7.1); opaque data once they do not.
            pre = splitter.take_buffered() if splitter.buffered else b""
            stream = pre + data if pre else data
            if pre:
                splitter = direction.splitter = Rfc4571Splitter()
            try:
                frames, bad = splitter.feed(stream), False
            except FramingError as exc:
                frames, bad = list(exc.messages), True
            pos = 0
            for frame in frames:
                if not stun.is_stun(frame):
                    break
                record("STUN", frame, frame_rfc4571(frame), relayed=True)
                pos += 2 + len(frame)
            else:
                if not bad and _stun_frame_start(stream[len(stream) - splitter.buffered :]):
                    return units  # all framed STUN so far; a partial one waits for its end
            direction.splitter = None  # not framed STUN (any more): opaque from here
            rest = stream[pos:]
            if rest:
                record("TCP", rest, rest, summary=f"TCP data, {len(rest)} bytes")
            return units
        try:
            # One message at a time, so the messages before a fault are not lost with it (an
            # RFC 6062 data connection carries a response and then relayed bytes, often in
            # one segment).
            chunk: bytes = data
            while got := splitter.feed(chunk, max_messages=1):
                chunk = b""
                for frame in got:
                    if framing == "sip":
                        record("SIP", frame, frame)
                    elif framing == "rfc4571":
                        if stun.is_stun(frame):
                            record("STUN", frame, frame_rfc4571(frame))
                        else:
                            record("TCP", frame, frame_rfc4571(frame),
                                   summary=f"framed data, {len(frame)} bytes")  # fmt: skip
                    else:
                        record("STUN", frame, frame)
                if not splitter.buffered:
                    break
        except WireError as exc:
            rest = splitter.take_buffered()
            direction.splitter, direction.lost_framing = None, True
            if rest:
                record("TCP", rest, rest, summary=f"TCP data, {len(rest)} bytes", error=str(exc))
        return units

    def sent(
        self, t: float, conn: int, from_client: bool, data: bytes, framing: str = "raw"
    ) -> list[MessageRecord]:
        """Record bytes sent and written at once on a connection (no fault rule in the way);
        returns the messages they completed."""
        direction = self._directions.get((conn, from_client))
        if (
            framing == "stun"
            and direction is not None
            and direction.framing == "stun"
            and direction.splitter is not None
            and not direction.splitter.buffered
            and len(data) >= 20
            and data[0] < 0x40
            and len(data) == 20 + int.from_bytes(data[2:4], "big")
        ):
            # The common case, first: one whole STUN message per send (a TURN server answers
            # every request with one). The splitter would only copy it.
            direction.splitter.offset += len(data)
            direction.wire += len(data)
            one = MessageRecord(t, conn, *self._ends(conn, from_client), "STUN", data, framing)
            one.wire_end = direction.wire
            self._put(one, direction, t)
            return [one]
        if (
            framing == "sip"
            and direction is not None
            and direction.framing == "sip"
            and isinstance(direction.splitter, SipSplitter)
            and direction.splitter.takes_whole(data)
        ):
            # The common case of SIP: one whole message per send, as an element writes them.
            direction.splitter.feed(data)
            direction.wire += len(data)
            one = MessageRecord(t, conn, *self._ends(conn, from_client), "SIP", data, framing)
            one._dir = direction
            one.wire_end = direction.wire
            self._put(one, direction, t)
            return [one]
        if framing == "raw" and direction is not None and direction.splitter is None:
            last = direction.last_raw
            if (
                last is not None
                and not direction.lost_framing
                and self._last_on_conn.get(conn) is last
                and last.size < RAW_MERGE
                and last.fate in _GROWABLE
            ):
                # Bulk relayed data, sniffing over, nothing else recorded on this connection
                # since the previous write: grow that record instead of adding one per write (a
                # relay moving gigabytes in 64 KiB writes would otherwise keep one per write).
                direction.wire += len(data)
                last.size += len(data)
                last.wire_end = direction.last_end = direction.wire
                if last.fate == "delivered":
                    # Read up to here already: it is delivered again once its new last byte
                    # is (everything before it on this direction was read: nothing pends).
                    last.fate, last.fate_t = "in-flight", None
                    direction.wait_for(last)
                last._summary = f"TCP data, {last.size} bytes"
                if len(last.data) < RAW_KEEP:
                    last.data += data[: RAW_KEEP - len(last.data)]
                return []
        before = direction.splitter.buffered if direction and direction.splitter else 0
        units = self.cut(t, conn, from_client, data, framing)
        direction = self._directions[(conn, from_client)]
        # Every byte goes on the wire now; the start of a message sent earlier (``before``
        # bytes) already went, so the messages completed here end at these offsets.
        end = direction.wire - before
        for record, wire in units:
            end += len(wire)
            record.wire_end = end
            self._put(record, direction, t)
        direction.wire += len(data)
        return [record for record, _ in units]

    def wire(self, unit: Unit, t: float) -> None:
        """A unit of :meth:`cut` goes on the wire now (its bytes are written)."""
        record, wire = unit
        direction = record._dir
        assert direction is not None
        direction.wire += len(wire)
        record.wire_end = direction.wire
        self._put(record, direction, t)

    def drop(self, unit: Unit, t: float, rule: int) -> None:
        """A fault rule takes a unit of :meth:`cut`: it never goes on the wire."""
        record = unit[0]
        record.t = record.fate_t = t
        record.fate, record.rule = "dropped", rule
        self._add(record)

    def hold(self, unit: Unit, rule: int, seconds: float, t: float | None = None) -> None:
        """A fault rule delays a unit of :meth:`cut`; :meth:`wire` follows when it is let go,
        or :meth:`never_sent` when its connection or the run ends first."""
        record = unit[0]
        record.rule, record.delay = rule, seconds
        if t is not None:
            record.sent_t = t

    def never_sent(self, unit: Unit, t: float, fate: Fate) -> None:
        """A held unit that never went on the wire: its connection closed while it was held
        (``lost``), or the run ended first (``in-flight``). Its sender did send it: the record
        keeps it."""
        record = unit[0]
        record.t = record.sent_t
        record.fate = fate
        record.fate_t = t if fate != "in-flight" else None
        self._add(record)

    def _put(self, record: MessageRecord, direction: _Direction, t: float) -> None:
        record.t = t
        direction.last_end = record.wire_end
        if record.framing == "raw" and record.protocol == "TCP":
            direction.last_raw = record
        if record.dst == EXTERNAL_PEER:
            record.fate = "outside"
        else:
            direction.wait_for(record)
        self._add(record)

    def _add(self, record: MessageRecord) -> None:
        self._last_on_conn[record.connection] = record
        record._trace = self
        self._log.append(record)
        self._log_sent.append(1)
        self.messages.append(record)
        self.timeline.append(record)

    # -- journeys ------------------------------------------------------------------------------

    def link(self) -> None:
        """Link the messages recorded since the last call into journeys, in the order things
        happened (a message is forwarded only after it was delivered)."""
        log, self._log = self._log, []
        kinds, self._log_sent = self._log_sent, bytearray()
        for sent, record in zip(kinds, log, strict=True):
            if sent:
                self._link(record)
            else:
                self._forwardable_at(record)

    def _link(self, record: MessageRecord) -> None:
        """Join ``record`` to the journey of the message its sender was handed, when it is
        that message forwarded (see :class:`Journey`); else start a journey."""
        journey = None
        store = self._forwardable.get(record.src)
        if store:
            key = _forward_key(record)
            if key is not None:
                queue = store.get(key)
                if queue:
                    journey = queue.popleft()._journey
                    if not queue:
                        del store[key]
        if journey is None:
            journey = Journey(len(self._journeys) + 1)
            self._journeys.append(journey)
        record._journey = journey
        journey.hops.append(record)

    def _forwardable_at(self, record: MessageRecord) -> None:
        key = _forward_key(record)
        if key is None:
            return
        store = self._forwardable.setdefault(record.dst, {})
        queue = store.get(key)
        if queue is None:
            queue = store[key] = deque()
            if len(store) > FORWARDABLE_KEEP:
                del store[next(iter(store))]
        queue.append(record)

    def delivered(self, t: float, conn: int, from_client: bool, nbytes: int) -> None:
        """The receiver read ``nbytes`` more bytes sent in this direction: every message whose
        last byte is among them was delivered."""
        direction = self._directions.get((conn, from_client))
        if direction is None:
            return
        direction.delivered += nbytes
        pending = direction.pending
        if not pending:
            return
        upto = direction.delivered
        while pending and pending[0].wire_end <= upto:
            record = pending.popleft()
            record.fate, record.fate_t = "delivered", t
            self._log.append(record)
            self._log_sent.append(0)

    def lost(self, t: float, conn: int, from_client: bool) -> None:
        """The connection is gone for the receiver of this direction (reset, cut, or it closed
        its end): what was on the wire and not yet read never will be."""
        direction = self._directions.get((conn, from_client))
        if direction is None:
            return
        while direction.pending:
            record = direction.pending.popleft()
            record.fate, record.fate_t = "lost", t
        splitter = direction.splitter
        if splitter is not None and splitter.buffered and direction.wire > direction.last_end:
            # The start of a message went on the wire and its end never will: a record of
            # those bytes, so the hop shows what crossed (a cut after N bytes, a crash).
            rest = splitter.take_buffered()[: direction.wire - direction.last_end]
            sender, receiver, sender_addr, receiver_addr = self._ends(conn, from_client)
            record = MessageRecord(
                t, conn, sender, receiver, sender_addr, receiver_addr, "TCP", rest[:RAW_KEEP],
                direction.framing, summary=f"TCP data, {len(rest)} bytes", size=len(rest),
                error="the connection ended inside a message",
            )  # fmt: skip
            record._dir = direction
            record.wire_end = direction.wire
            self._put(record, direction, t)
            if direction.pending:
                direction.pending.remove(record)
            record.fate, record.fate_t = "lost", t

    def wire_bytes(self, conn: int, from_client: bool) -> int:
        """Bytes written on the wire so far in one direction of a connection."""
        direction = self._directions.get((conn, from_client))
        return direction.wire if direction is not None else 0

    # -- read by renderers and tests -----------------------------------------------------------

    def sequence(self, *, relayed: bool = True) -> list[tuple[str, str, str]]:
        """(summary, src, dst) of every decoded message, in order: what "the same flow" means
        when two runs are compared. Opaque TCP data is left out."""
        return [
            (m.summary, m.src, m.dst)
            for m in self.messages
            if m.protocol != "TCP" and (relayed or not m.relayed)
        ]

    def find(self, kind: str | Kind) -> list[MessageRecord]:
        """Every hop of every message of this kind (``Binding Request``, ``INVITE``, ``200``;
        see :func:`labsim.wire.facts.parse_kind`), dropped ones included."""
        wanted = parse_kind(kind) if isinstance(kind, str) else kind
        return [m for m in self.messages if wanted.matches(m.protocol, m.facts)]


def _stun_frame_start(partial: bytes) -> bool:
    """Whether the start of an RFC 4571 frame can still be a STUN message (RFC 5389 §6: the
    two top bits zero, the magic cookie at offset 4) of a check's size: a relay's opaque bytes
    that only look framed must not be held back waiting for a 64 KiB "frame"."""
    if not partial:
        return True
    if len(partial) >= 2 and int.from_bytes(partial[:2], "big") > MAX_SNIFFED_FRAME:
        return False
    if len(partial) >= 3 and partial[2] >= 0x40:
        return False
    return len(partial) < 10 or partial[6:10] == stun.MAGIC_COOKIE_BYTES


#: The largest RFC 4571 frame a relay's bytes are held back for while sniffing: an ICE check
#: is about 110 bytes, the largest STUN message a TCP TURN client sends well under 1,500.
MAX_SNIFFED_FRAME = 1500


def _forward_key(record: MessageRecord) -> object | None:
    """What a forwarded copy of ``record`` has in common with it (see :class:`Journey`)."""
    if record.protocol == "STUN":
        # Only bytes a relay carries: a TURN server or ICE agent never sends back the bytes
        # it was handed, so control-connection STUN is never a forwarded copy.
        return record.data if record.framing in ("raw", "rfc4571") else None
    if record.protocol == "SIP" and record.framing == "sip":
        facts = record.facts
        if not isinstance(facts, SipFacts) or facts.status == 100:
            return None
        return (facts.call_id, facts.cseq, facts.cseq_method, facts.method, facts.status,
                facts.origin)  # fmt: skip
    return None


#: Fates of an opaque record that later writes may still grow (not dropped, not lost).
_GROWABLE = frozenset(("in-flight", "delivered", "outside"))

#: The trace's name for a peer outside the run (``net.common.EXTERNAL``).
EXTERNAL_PEER = "external"


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
