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

Actors that appear in the trace but are not in ``actors`` get columns at the right, in order
of appearance; a refused connect to an address no actor holds gets a column named by it.
"""

from __future__ import annotations

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
}


@dataclass
class _Row:
    """One line of the diagram: its characters and the styled spans over them."""

    chars: list[str]
    spans: list[tuple[int, int, str]] = field(default_factory=list)

    def put(self, pos: int, text: str, style: str | None = None) -> None:
        end = min(len(self.chars), pos + len(text))
        if pos >= end:
            return
        self.chars[pos:end] = list(text[: end - pos])
        if style:
            self.spans.append((pos, end, style))

    def text(self) -> str:
        return "".join(self.chars).rstrip()


class LadderOptions(TypedDict, total=False):
    """What the ladder shows, the same for :func:`render_ladder` and :func:`render_ladder_rich`:
    no line longer than ``width`` (None: 120); ``relayed=False`` leaves out the messages decoded
    from relayed bytes, ``show_data=False`` the opaque TCP data rows, ``logs=False`` the actors'
    log notes; ``ascii=True`` draws with ASCII characters only."""

    width: int | None
    relayed: bool
    show_data: bool
    logs: bool
    ascii: bool


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
    """``text`` in at most ``room`` characters, ending with an ellipsis when cut."""
    if room <= 0:
        return ""
    if len(text) <= room:
        return text
    if room <= len(ellipsis):
        return text[:room]
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
    ) -> None:
        self.trace = trace
        self.width = DEFAULT_WIDTH if width is None else width
        self.relayed, self.show_data, self.logs = relayed, show_data, logs
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
                record.src, record.dst, STYLES["fault"], "dashed", "cross",
            )  # fmt: skip
        if record.protocol == "TCP":
            error = record.error
            if error is None and record.framing != "rfc4571":
                if not self.show_data:
                    return None
                return _Item(
                    record.t, "data", record.summary, record.src, record.dst, STYLES["TCP"],
                    collapse_key=(record.connection, record.src, record.dst), size=record.size,
                )  # fmt: skip
            label = record.summary if error is None else f"{record.summary} ({error})"
            style = STYLES["TCP"] if error is None else STYLES["error"]
            if error is None and not self.show_data:
                return None
            return _Item(record.t, "data", label, record.src, record.dst, style)
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
        return _Item(record.t, "message", label, record.src, record.dst, style)

    # -- drawing -------------------------------------------------------------------------------

    def _blank(self) -> _Row:
        row = _Row([" "] * self.width)
        for centre in self.centre.values():
            if centre < self.width:
                row.chars[centre] = self.g.lifeline
        return row

    def rows(self) -> list[_Row]:
        header = _Row([" "] * self.width)
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
        return out

    def _note(self, row: _Row, item: _Item) -> None:
        """The note starts at its actor's lifeline, or ends there when the left has more
        room (the rightmost column)."""
        centre = self.centre[item.src]
        right_room = self.width - centre
        left_room = centre + 1 - (self.time_w + 1)
        text = f"{self.g.note} {item.label}"
        if len(text) <= right_room or right_room >= left_room:
            row.put(centre, _cut(text, right_room, self.g.ellipsis), item.style)
        else:
            text = _cut(f"{item.label} {self.g.note}", left_room, self.g.ellipsis)
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
            row.put(hi + 1, _cut(item.label, right_room, self.g.ellipsis), item.style)
        else:
            text = _cut(item.label, left_room, self.g.ellipsis)
            row.put(lo - 1 - len(text), text, item.style)
