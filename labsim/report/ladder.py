"""The ladder diagram of a run, as a voice engineer draws one: a column per actor, time going
down, one row per event, each message an arrow from sender to receiver with its summary.

Read only from the trace (DESIGN.md: "the trace is the truth"). :func:`render_ladder` gives
plain text (no escape codes: it goes into files, diffs and test asserts);
:func:`render_ladder_rich` gives the same rows coloured by kind, for a terminal, as a
``rich.text.Text``.

What each row shows:

* a message: ``│── Allocate Request TCP lifetime: 600 ──▶│``; its summary sits on the arrow when
  it fits, else beside it (right if it fits there, else on the side with more room), else
  wherever most of it shows, cut with ``…``: no line is longer than the width;
* a message the trace decoded out of relayed bytes (the ICE checks crossing a TURN relay):
  ``(relayed)`` before the summary;
* opaque TCP data (a relay pipe): ``TCP data, N bytes``; consecutive data on the same
  connection in the same direction collapses into one row, ``TCP data ×3, N bytes``;
* TCP connect and close (FIN): dashed arrows (``╌╌▷``) between the two ends, with the
  addresses; a reset (RST) and a connect that never opened (with the reason): dashed arrows
  ending in ``✕``; a connection the network ended: ``✕`` at both ends;
* a log line: a note (``•``) in its actor's column.

Nothing is cut silently: a label cut to fit the width ends in ``…`` (``...`` in ASCII), and the
last line then says so and how to see it whole. With ``full=True`` (``labsim run --full``, the
expanded ladder) each row is followed by the fields of its message on lines of their own, never
cut (they may run past the width): a SIP message's start line, Call-ID, CSeq, From, To, Via,
Record-Route/Route, Contact, Reason, ms-diagnostics and the SDP lines that carry the media and
its candidates (``m=``, ``c=``, ``a=ice-ufrag``, ``a=candidate``, ``a=remote-candidates``,
``a=connection``); a STUN message's transaction ID and every attribute with its value
(XOR-RELAYED-ADDRESS, XOR-PEER-ADDRESS, CONNECTION-ID, USERNAME, NONCE, MESSAGE-INTEGRITY …);
opaque data's first bytes in hex; and the whole text of any label the row had to cut.

Actors that appear in the trace but are not in ``actors`` get columns at the right, in order
of appearance; a refused connect to an address no actor holds gets a column named by it.
"""

from __future__ import annotations

import dataclasses
import textwrap
from dataclasses import dataclass, field
from typing import TypedDict, Unpack

from rich.text import Text

from labsim.trace import (
    ClosedRecord,
    ConnectionRecord,
    FaultRecord,
    LogRecord,
    MessageRecord,
    RefusedRecord,
    TimelineRecord,
    Trace,
)
from labsim.wire import WireError, stun

DEFAULT_WIDTH = 120
_ELLIPSIS = "…"


@dataclass(frozen=True)
class _Glyphs:
    lifeline: str
    line: str
    dashed: str
    right: str
    left: str
    open_right: str
    open_left: str
    cross: str
    note: str
    ellipsis: str
    arrow: str  # in labels: "a → b"


UNICODE = _Glyphs("│", "─", "╌", "▶", "◀", "▷", "◁", "✕", "•", "…", "→")
ASCII = _Glyphs("|", "-", ".", ">", "<", ">", "<", "x", "*", "...", "->")

# Styles (rich markup names) of the coloured variant, by row kind.
STYLES = {
    "SIP": "bold cyan",
    "STUN": "green",
    "TCP": "dim",
    "relayed": "magenta",
    "error": "bold red",
    "connect": "blue",
    "close": "blue",
    "reset": "red",
    "refused": "bold red",
    "log": "dim italic",
    "warning": "yellow",
    "fault": "bold magenta",
    "time": "dim",
    "header": "bold",
    "detail": "dim",
}


@dataclass
class _Row:
    """One line of the diagram: its characters and the styled spans over them."""

    chars: list[str]
    spans: list[tuple[int, int, str]] = field(default_factory=list)
    ellipsis: str = _ELLIPSIS
    cut: bool = False
    """Something put on this row was cut to fit it (and marked with the ellipsis)."""

    def put(self, pos: int, text: str, style: str | None = None) -> None:
        end = min(len(self.chars), pos + len(text))
        if pos >= end:
            if text and self.chars:
                # Nothing of it fits: the ellipsis at the row's end says something is missing.
                mark = self.ellipsis[: len(self.chars)]
                self.chars[-len(mark) :] = list(mark)
                self.cut = True
            return
        if end < pos + len(text):
            # The row ends inside the text: mark the cut rather than drop the tail unseen.
            text = _cut(text, end - pos, self.ellipsis)
            self.cut = True
        self.chars[pos:end] = list(text[: end - pos])
        if style:
            self.spans.append((pos, end, style))

    def widen(self, width: int) -> None:
        """Room for ``width`` characters (a detail line of the expanded ladder)."""
        self.chars += [" "] * (width - len(self.chars))

    def text(self) -> str:
        return "".join(self.chars).rstrip()


class LadderOptions(TypedDict, total=False):
    """What the ladder shows, the same for :func:`render_ladder` and :func:`render_ladder_rich`:
    no line longer than ``width`` (None: 120); ``relayed=False`` leaves out the messages decoded
    from relayed bytes, ``show_data=False`` the opaque TCP data rows, ``logs=False`` the actors'
    log notes; ``ascii=True`` draws with ASCII characters only; ``full=True`` adds each
    message's fields in full under its row (the expanded ladder: nothing cut)."""

    width: int | None
    relayed: bool
    show_data: bool
    logs: bool
    ascii: bool
    full: bool


def render_ladder(trace: Trace, actors: list[str], **options: Unpack[LadderOptions]) -> str:
    """The ladder as plain text, one line per row (:class:`LadderOptions` say what it shows)."""
    rows = _Ladder(trace, actors, **options).rows()
    return "\n".join(row.text() for row in rows) + "\n"


def render_ladder_rich(trace: Trace, actors: list[str], **options: Unpack[LadderOptions]) -> Text:
    """The same rows as :func:`render_ladder`, coloured by kind (SIP, STUN, errors, TCP
    events …), for ``rich.console.Console.print``; ``.plain`` equals the plain ladder."""
    out = Text()
    for row in _Ladder(trace, actors, **options).rows():
        line = row.text()
        text = Text(line)
        for start, end, style in row.spans:
            if start < len(line):
                text.stylize(style, start, min(end, len(line)))
        out.append_text(text)
        out.append("\n")
    return out


# -- layout ----------------------------------------------------------------------------------------


def _cut(text: str, room: int, ellipsis: str) -> str:
    """``text`` in at most ``room`` characters, ending with an ellipsis when cut (with no room
    for a character of the text, as much of the ellipsis as fits: a cut is always seen)."""
    if room <= 0:
        return ""
    if len(text) <= room:
        return text
    if room <= len(ellipsis):
        return ellipsis[:room]
    return text[: room - len(ellipsis)] + ellipsis


@dataclass
class _Item:
    """A row before drawing: a message, TCP event, refused connect or note."""

    t: float
    kind: str
    label: str
    src: str
    dst: str | None = None
    """None for a note in ``src``'s column."""
    style: str = ""
    line: str = "solid"
    """``solid`` (messages), ``dashed`` (TCP events)."""
    head: str = "arrow"
    """``arrow``, ``open`` (TCP), ``cross`` (refused, reset), ``both`` (a cross at each end:
    ended by the network)."""
    collapse_key: tuple[int, str, str] | None = None
    count: int = 1
    size: int = 0
    record: MessageRecord | None = None
    """The message the row draws (its fields, in the expanded ladder)."""


class _Ladder:
    def __init__(
        self,
        trace: Trace,
        actors: list[str],
        *,
        width: int | None = None,
        relayed: bool = True,
        show_data: bool = True,
        logs: bool = True,
        ascii: bool = False,
        full: bool = False,
    ) -> None:
        self.trace = trace
        self.width = DEFAULT_WIDTH if width is None else width
        self.relayed, self.show_data, self.logs = relayed, show_data, logs
        self.full = full
        self.g = ASCII if ascii else UNICODE
        self.items = self._items()
        self.columns = list(dict.fromkeys(actors))
        for item in self.items:
            for name in (item.src, item.dst):
                if name is not None and name not in self.columns:
                    self.columns.append(name)
        latest = max((item.t for item in self.items), default=0.0)
        self.time_w = max(10, len(f"{latest:.6f}"))
        left = self.time_w + 1
        self.col_w = max(3, (self.width - left) // max(1, len(self.columns)))
        self.centre = {
            name: left + i * self.col_w + self.col_w // 2 for i, name in enumerate(self.columns)
        }

    # -- from the trace to items ---------------------------------------------------------------

    def _items(self) -> list[_Item]:
        hosts = self._host_owners()
        items: list[_Item] = []
        for record in self.trace.timeline:
            item = self._item(record, hosts)
            if item is None:
                continue
            last = items[-1] if items else None
            if (
                last is not None
                and item.collapse_key is not None
                and item.collapse_key == last.collapse_key
            ):
                last.count += 1
                last.size += item.size
                last.label = f"TCP data {self._times()}{last.count}, {last.size} bytes"
                continue
            items.append(item)
        return items

    def _times(self) -> str:
        return "x" if self.g is ASCII else "×"

    def _host_owners(self) -> dict[str, str]:
        """Which actor holds each host, from the connections: names the target of a refused
        connect."""
        owners: dict[str, str] = {}
        for conn in self.trace.connections.values():
            owners.setdefault(conn.server_addr.host, conn.server)
            owners.setdefault(conn.client_addr.host, conn.client)
        return owners

    def _item(self, record: TimelineRecord, hosts: dict[str, str]) -> _Item | None:
        arrow = self.g.arrow
        if isinstance(record, MessageRecord):
            return self._message(record)
        if isinstance(record, ConnectionRecord):
            return _Item(
                record.opened, "connect",
                f"TCP connect {record.client_addr} {arrow} {record.server_addr} [{record.name}]",
                record.client, record.server, STYLES["connect"], "dashed", "open",
            )  # fmt: skip
        if isinstance(record, ClosedRecord):
            conn = record.connection
            how = "reset (RST)" if conn.reset else "close (FIN)"
            style = STYLES["reset" if conn.reset else "close"]
            head = "cross" if conn.reset else "open"
            if conn.closed_by == conn.server and conn.server != conn.client:
                src, dst, a, b = conn.server, conn.client, conn.server_addr, conn.client_addr
            else:
                src, dst, a, b = conn.client, conn.server, conn.client_addr, conn.server_addr
            if conn.closed_by not in (conn.client, conn.server):
                return _Item(
                    record.t, "close", f"TCP {how} by {conn.closed_by}: {a} {arrow} {b}",
                    src, dst, style, "dashed", "both",
                )  # fmt: skip
            return _Item(
                record.t, "close", f"TCP {how} {a} {arrow} {b}", src, dst, style, "dashed", head
            )
        if isinstance(record, RefusedRecord):
            target = hosts.get(record.server_addr.host, str(record.server_addr))
            return _Item(
                record.t, "refused",
                f"TCP connect {record.client_host} {arrow} {record.server_addr}: {record.reason}",
                record.client, target, STYLES["refused"], "dashed", "cross",
            )  # fmt: skip
        if isinstance(record, FaultRecord):
            return self._fault(record)
        if isinstance(record, LogRecord):
            if not self.logs:
                return None
            style = STYLES["log"] if record.level in ("info", "debug") else STYLES["warning"]
            level = "" if record.level == "info" else f"{record.level}: "
            return _Item(record.t, "log", f"{level}{record.text}", record.actor, None, style)
        return None

    def _fault(self, record: FaultRecord) -> _Item | None:
        """An injected fault: a dropped message is an arrow that never arrives (a cross
        where its receiver would be); the others are notes in the sender's column."""
        if record.action == "dropped":
            return None  # the message's own record draws it: an arrow ending in a cross
        style = STYLES["fault"]
        what = f" {record.summary}" if record.summary else ""
        return _Item(record.t, "fault", f"{record.action}{what} ({record.rule})", record.src,
                     None, style)  # fmt: skip

    def _message(self, record: MessageRecord) -> _Item | None:
        if record.relayed and not self.relayed:
            return None
        if record.fate == "dropped":
            # An arrow that never arrives: a cross where its receiver would be.
            return _Item(
                record.t, "fault", f"{record.summary}: DROPPED by fault rule {record.rule}",
                record.src, record.dst, STYLES["fault"], "dashed", "cross", record=record,
            )  # fmt: skip
        if record.protocol == "TCP":
            error = record.error
            if error is None and record.framing != "rfc4571":
                if not self.show_data:
                    return None
                return _Item(
                    record.t, "data", record.summary, record.src, record.dst, STYLES["TCP"],
                    collapse_key=(record.connection, record.src, record.dst), size=record.size,
                    record=record,
                )  # fmt: skip
            label = record.summary if error is None else f"{record.summary} ({error})"
            style = STYLES["TCP"] if error is None else STYLES["error"]
            if error is None and not self.show_data:
                return None
            return _Item(record.t, "data", label, record.src, record.dst, style, record=record)
        label = record.summary
        if record.delay:
            label += f" (held {record.delay:g} s" + (
                f" by fault rule {record.rule})" if record.rule else ", behind a held message)"
            )
        style = STYLES.get(record.protocol, "")
        if record.error is not None:
            label, style = f"{label} ({record.error})", STYLES["error"]
        if record.relayed:
            label = f"(relayed) {label}"
            style = style if record.error is not None else STYLES["relayed"]
        return _Item(record.t, "message", label, record.src, record.dst, style, record=record)

    # -- drawing -------------------------------------------------------------------------------

    def _blank(self) -> _Row:
        row = _Row([" "] * self.width, ellipsis=self.g.ellipsis)
        for centre in self.centre.values():
            if centre < self.width:
                row.chars[centre] = self.g.lifeline
        return row

    def rows(self) -> list[_Row]:
        header = _Row([" "] * self.width, ellipsis=self.g.ellipsis)
        header.put(0, "time (s)".rjust(self.time_w), STYLES["time"])
        for name in self.columns:
            label = _cut(name, self.col_w - 1, self.g.ellipsis)
            start = self.centre[name] - len(label) // 2
            header.put(max(start, self.time_w + 1), label, STYLES["header"])
        out = [header, self._blank()]
        for item in self.items:
            row = self._blank()
            row.put(0, f"{item.t:.6f}".rjust(self.time_w), STYLES["time"])
            if item.dst is None:
                self._note(row, item)
            else:
                self._arrow(row, item)
            out.append(row)
            if self.full:
                out += self._details(item, row.cut)
        if not self.full and any(row.cut for row in out):
            # No silent cut: say that labels were cut, and where they are whole.
            note = (
                f"{self.g.ellipsis} = cut to fit {self.width} columns; the expanded ladder "
                "(labsim run --full) shows every field whole"
            )
            for line in textwrap.wrap(note, self.width, break_long_words=True):
                last = _Row([" "] * self.width, ellipsis=self.g.ellipsis)
                last.put(0, line, STYLES["detail"])
                out.append(last)
        return out

    def _details(self, item: _Item, cut: bool) -> list[_Row]:
        """The expanded ladder's lines under a row: the whole label when the row cut it, then
        the fields of its message, each whole (a line may run past the width). They start
        right of the leftmost lifeline the row touches, so the lifelines to their left stay."""
        lines = [item.label] if cut else []
        if item.record is not None:
            lines += fields(item.record)
        ends = [self.centre[item.src]] + ([self.centre[item.dst]] if item.dst else [])
        start = min(ends) + 2
        out = []
        for text in lines:
            row = self._blank()
            row.widen(start + len(text))
            row.put(start, text, STYLES["detail"])
            out.append(row)
        return out

    def _note(self, row: _Row, item: _Item) -> None:
        """The note starts at its actor's lifeline, or ends there when the left has more
        room (the rightmost column)."""
        centre = self.centre[item.src]
        right_room = self.width - centre
        left_room = centre + 1 - (self.time_w + 1)
        text = f"{self.g.note} {item.label}"
        if len(text) <= right_room or right_room >= left_room:
            row.cut |= len(text) > right_room
            row.put(centre, _cut(text, right_room, self.g.ellipsis), item.style)
        else:
            text = f"{item.label} {self.g.note}"
            row.cut |= len(text) > left_room
            text = _cut(text, left_room, self.g.ellipsis)
            row.put(centre + 1 - len(text), text, item.style)

    def _arrow(self, row: _Row, item: _Item) -> None:
        assert item.dst is not None
        a, b = self.centre[item.src], self.centre[item.dst]
        g = self.g
        line = g.line if item.line == "solid" else g.dashed
        if a == b:
            # To itself (an actor connecting to its own address): a stub and the label beside.
            row.put(a + 1, line + (g.left if item.head == "arrow" else g.open_left), item.style)
            self._label_beside(row, item, a, a + 2)
            return
        lo, hi = min(a, b), max(a, b)
        body = [line] * (hi - lo - 1)
        if body:
            rightward = b > a
            if item.head in ("cross", "both"):
                head = g.cross
            elif item.head == "open":
                head = g.open_right if rightward else g.open_left
            else:
                head = g.right if rightward else g.left
            body[-1 if rightward else 0] = head
            if item.head == "both":
                body[0 if rightward else -1] = g.cross  # ended by the network: both ends cut
        row.put(lo + 1, "".join(body), item.style)
        # The label goes on the arrow (two line characters and a space kept at each end) when
        # it fits there, else beside it where it fits; failing both, wherever most of it shows.
        inside = hi - lo - 1 - 6
        left_room, right_room = self._rooms(lo, hi + 1)
        if len(item.label) <= inside or inside >= max(left_room, right_room):
            row.cut |= len(item.label) > inside
            text = f" {_cut(item.label, inside, g.ellipsis)} "
            row.put(lo + 1 + (hi - lo - 1 - len(text)) // 2, text, item.style)
        else:
            self._label_beside(row, item, lo, hi + 1)

    def _rooms(self, lo: int, hi: int) -> tuple[int, int]:
        """Characters free for a label left of column ``lo`` and right from ``hi``."""
        return lo - 1 - (self.time_w + 1), self.width - hi - 1

    def _label_beside(self, row: _Row, item: _Item, lo: int, hi: int) -> None:
        """The label left of column ``lo`` or right from ``hi``: right when it fits there,
        else on the side with more room."""
        left_room, right_room = self._rooms(lo, hi)
        if right_room >= len(item.label) or right_room >= left_room:
            row.cut |= len(item.label) > right_room
            row.put(hi + 1, _cut(item.label, right_room, self.g.ellipsis), item.style)
        else:
            row.cut |= len(item.label) > left_room
            text = _cut(item.label, left_room, self.g.ellipsis)
            row.put(lo - 1 - len(text), text, item.style)


# -- the expanded ladder's fields ---------------------------------------------------------------

#: SIP headers the expanded ladder shows, by lower-case name (compact forms, RFC 3261 §7.3.3).
_SIP_HEADERS = {
    "call-id": "Call-ID", "i": "Call-ID", "cseq": "CSeq", "from": "From", "f": "From",
    "to": "To", "t": "To", "via": "Via", "v": "Via", "record-route": "Record-Route",
    "route": "Route", "contact": "Contact", "m": "Contact", "reason": "Reason",
    "ms-diagnostics": "ms-diagnostics", "ms-diagnostics-public": "ms-diagnostics-public",
    "retry-after": "Retry-After",
}  # fmt: skip
#: SDP lines that say what is offered and where (MS-SDPEXT, MS-ICE2, RFC 5245 §15).
_SDP_PREFIXES = (
    "m=", "c=", "a=ice-ufrag:", "a=candidate:", "a=remote-candidates:", "a=connection:",
)  # fmt: skip
#: Opaque bytes the expanded ladder shows, in hex.
_HEX_BYTES = 16


def fields(record: MessageRecord) -> list[str]:
    """A message's key fields, each whole, one per line, for the expanded ladder."""
    if record.protocol == "SIP":
        return _sip_fields(record.data)
    if record.protocol == "STUN":
        return _stun_fields(record.data, framed=record.framing == "rfc4571" or record.relayed)
    head = " ".join(f"{b:02x}" for b in record.data[:_HEX_BYTES])
    more = f" (the first {_HEX_BYTES})" if record.size > _HEX_BYTES else ""
    return [f"{record.size} bytes{more}: {head}"] if record.data else []


def _sip_fields(data: bytes) -> list[str]:
    text = data.decode("utf-8", "replace")
    head, _, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    out = [lines[0]]
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        label = _SIP_HEADERS.get(name.strip().lower())
        if colon and label is not None:
            out.append(f"{label}: {value.strip()}")
    out += [line for line in body.splitlines() if line.startswith(_SDP_PREFIXES)]
    return out


def _stun_fields(data: bytes, *, framed: bool) -> list[str]:
    try:
        message = stun.decode(data)
    except WireError as exc:
        return [f"not STUN: {exc}"]
    out = [f"transaction ID {message.transaction_id.hex()}"]
    if framed:
        # What Wireshark shows as the TCP payload (Cisco 212580: "00 6c 00 01"): the RFC 4571
        # length, then the STUN header.
        wire = len(data).to_bytes(2, "big") + data[: _HEX_BYTES - 2]
        head = " ".join(f"{b:02x}" for b in wire)
        out.insert(0, f"RFC 4571 frame, {len(data) + 2} bytes, the first {len(wire)}: {head}")
    for attr in message.attributes:
        value = _attribute_value(attr)
        out.append(f"{attr.name}: {value}" if value else attr.name)
    return out


def _attribute_value(attr: stun.Attribute) -> str:
    """An attribute's value as text: an address ``a.b.c.d:port``, an error ``code reason``,
    a number (CONNECTION-ID also in hex), text, or bytes in hex."""
    if isinstance(attr, stun.ErrorCode):
        return f"{attr.code} {attr.reason}"
    if isinstance(attr, stun.ConnectionId):
        return f"0x{attr.value:08x} ({attr.value})"
    if isinstance(attr, stun.Fingerprint) and attr.crc is not None:
        return f"0x{attr.crc:08x}"
    if isinstance(attr, stun.IceControlling | stun.IceControlled):
        return f"tie-breaker 0x{attr.value:016x}"
    values = {f.name: getattr(attr, f.name) for f in dataclasses.fields(attr)}
    if {"address", "port"} <= values.keys():
        return f"{values['address']}:{values['port']}"
    parts = []
    for value in values.values():
        if isinstance(value, bytes | bytearray):
            parts.append(value.hex())
        elif isinstance(value, tuple):
            parts.append(", ".join(f"0x{v:04x}" if isinstance(v, int) else str(v) for v in value))
        elif value is not None:
            parts.append(str(value))
    return " ".join(parts)
