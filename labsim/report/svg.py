"""The run as SVG: the ladder (``labsim run --svg FILE``) and the topology the HTML page shows.

Drawn by hand from :mod:`labsim.report.pictures`' rows: a column per actor headed by its name
and lab addresses, time going down one row per event (the time and the message's number at the
left; a pause of a second or more gets a row of its own), one arrow per message with its whole
Wireshark-style summary, TCP connects and closes as dashed arrows with open heads, resets and
refused connects ending in a cross, the actors' notes in their columns. A message that never
arrived stops where it was lost: halfway for one a fault rule dropped on the hop, near its
receiver for one lost with its connection, a dashed stub for one still in flight; a cross and
the words (``dropped by fault rule 1``) mark the spot.

Every element a message draws is one ``<g class="msg …">`` (its classes: protocol, fate,
``relayed``, ``error``) with a ``<title>`` holding the whole text, so a viewer's tooltip shows
what a cut label leaves out and a test can count the arrows. Text is written in a monospaced
font so its width is known without measuring, and every piece of text is escaped: what came off
the wire (a SIP header, a user name) is data here, never markup.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape as _xml_escape

from labsim.report.pictures import (
    Column,
    Ladder,
    Link,
    Step,
    Topology,
    fmt_t,
    printable,
)

#: The widest a picture is drawn: the HTML page fits a 1280 px screen with its margins.
PAGE_WIDTH = 1244
#: Left of the first column: the message number and the time.
LEFT = 100
MIN_COLUMN = 150
MAX_COLUMN = 232
#: Monospaced text: a character's advance, as a fraction of the font size (DejaVu Sans Mono
#: and Liberation Mono: 0.6 em), rounded up so a label never runs past what was measured.
ADVANCE = 0.61
LABEL_SIZE = 12.0
NOTE_SIZE = 11.0
HEADER_H = 52
ROW_H = 26
NOTE_H = 18
GAP_H = 22
FONT = "DejaVu Sans Mono, Liberation Mono, Menlo, Consolas, monospace"

#: The pictures' colours, one rule per kind of row (also the HTML page's).
STYLE = """
.ladder, .topology { font-family: $FONT; font-size: 12px; }
.ladder text, .topology text { fill: #222; }
.ladder .lbl, .ladder .note text, .ladder .gap text, .topology .lbl {
  paint-order: stroke; stroke: #fff; stroke-width: 4px; stroke-linejoin: round; }
.ladder .life { stroke: #c8c8c8; stroke-width: 1; }
.ladder .actor rect, .topology .actor rect { fill: #f3f5f8; stroke: #7a8797; }
.ladder .actor .name, .topology .actor .name { font-weight: bold; font-size: 13px; }
.ladder .actor .addr, .topology .actor .addr { font-size: 11px; fill: #445; }
.ladder .actor.unknown rect, .topology .actor.unknown rect {
  stroke-dasharray: 4 3; fill: #fff; }
.ladder .time { font-size: 11px; fill: #777; }
.ladder .no { font-size: 10px; fill: #999; }
.ladder .ln { stroke-width: 1.6; fill: none; }
.ladder .dashed .ln, .ladder .dashed.ln { stroke-dasharray: 5 3; }
.ladder .hd { stroke-width: 1.6; }
.ladder .hit { fill: transparent; stroke: none; }
.ladder .sip .ln, .ladder .sip .hd { stroke: #0b6e99; fill: #0b6e99; }
.ladder .sip .lbl { fill: #0b5a7d; font-weight: bold; }
.ladder .stun .ln, .ladder .stun .hd { stroke: #2e7d32; fill: #2e7d32; }
.ladder .stun .lbl { fill: #1f5e23; }
.ladder .relayed .ln, .ladder .relayed .hd { stroke: #8e24aa; fill: #8e24aa; }
.ladder .relayed .lbl { fill: #6a1b80; }
.ladder .tcp .ln, .ladder .tcp .hd { stroke: #888; fill: #888; }
.ladder .tcp .lbl { fill: #666; }
.ladder .error .ln, .ladder .error .hd { stroke: #c62828; fill: #c62828; }
.ladder .error .lbl { fill: #b71c1c; }
.ladder .connect .ln, .ladder .close .ln { stroke: #1565c0; }
.ladder .connect .hd, .ladder .close .hd { stroke: #1565c0; fill: none; }
.ladder .connect .lbl, .ladder .close .lbl { fill: #1565c0; font-size: 11px; }
.ladder .reset .ln, .ladder .refused .ln, .ladder .reset .hd, .ladder .refused .hd {
  stroke: #c62828; fill: none; }
.ladder .reset .lbl, .ladder .refused .lbl { fill: #c62828; font-size: 11px; }
.ladder .x { stroke-width: 2.4; stroke: #c2185b; }
.ladder .dropped .lbl, .ladder .lost .lbl, .ladder .in-flight .lbl { fill: #ad1457; }
.ladder .fate { fill: #ad1457; font-weight: bold; }
.ladder .note circle { fill: #888; }
.ladder .note text { font-size: 11px; font-style: italic; fill: #555; }
.ladder .warning text { fill: #a15c00; }
.ladder .fault text { fill: #ad1457; font-weight: bold; }
.ladder .fault circle { fill: #ad1457; }
.ladder .gap line { stroke: #bbb; stroke-dasharray: 2 4; }
.ladder .gap text { font-size: 11px; fill: #777; }
.ladder a:focus .hit, .ladder .selected .hit { fill: #fff3c4; stroke: #e0a800; }
.topology .arc { fill: none; stroke-width: 1.8; }
.topology .sip .arc { stroke: #0b6e99; }
.topology .sip .hd { fill: #0b6e99; }
.topology .media .arc { stroke: #2e7d32; }
.topology .media .hd { fill: #2e7d32; }
.topology .none .arc { stroke: #999; stroke-dasharray: 2 3; }
.topology .none .hd { fill: #999; }
.topology .broken .arc, .topology .attempt .arc { stroke: #c62828; stroke-dasharray: 5 3; }
.topology .attempt .x { stroke: #c62828; stroke-width: 2.4; }
.topology .lbl { font-size: 10.5px; }
.topology .lbl.name { font-weight: bold; }
.topology .side { font-size: 11px; fill: #666; font-style: italic; }
""".replace("$FONT", FONT)


def esc(text: str) -> str:
    """Text for an XML or HTML text node or a double-quoted attribute: markup characters
    escaped, and characters XML cannot carry shown as escapes (:func:`printable`)."""
    return _xml_escape(printable(text), {'"': "&quot;", "'": "&#39;"})


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def text_width(text: str, size: float = LABEL_SIZE) -> float:
    return len(text) * size * ADVANCE


def fit(text: str, room: float, size: float = LABEL_SIZE) -> str:
    """``text`` cut with an ellipsis to fit ``room`` pixels."""
    chars = int(room // (size * ADVANCE))
    if len(text) <= chars:
        return text
    return text[: max(0, chars - 1)] + "…"


@dataclass(frozen=True)
class Geometry:
    """Where the columns are: shared by the ladder and the topology, so they line up."""

    columns: tuple[Column, ...]
    col_w: int
    width: int

    @classmethod
    def of(cls, columns: Sequence[Column]) -> Geometry:
        n = max(1, len(columns))
        col_w = max(MIN_COLUMN, min(MAX_COLUMN, (PAGE_WIDTH - LEFT - 8) // n))
        return cls(tuple(columns), col_w, LEFT + n * col_w + 8)

    def x(self, name: str) -> float:
        for i, column in enumerate(self.columns):
            if column.name == name:
                return LEFT + i * self.col_w + self.col_w / 2
        raise KeyError(name)


# -- the ladder -------------------------------------------------------------------------------


def _actor_box(column: Column, x: float, y: float, w: float, known: bool) -> list[str]:
    hosts = column.hosts or ("",)
    h = 22 + 13 * len(hosts)
    cls = "actor" if known else "actor unknown"
    out = [
        f'<g class="{cls}"><rect x="{_num(x - w / 2)}" y="{_num(y)}" width="{_num(w)}" '
        f'height="{h}" rx="5"/>',
        f'<text class="name" x="{_num(x)}" y="{_num(y + 16)}" text-anchor="middle">'
        f"{esc(fit(column.name, w - 8, 13))}</text>",
    ]
    for i, host in enumerate(hosts):
        if host:
            out.append(
                f'<text class="addr" x="{_num(x)}" y="{_num(y + 30 + 13 * i)}" '
                f'text-anchor="middle">{esc(fit(host, w - 8, 11))}</text>'
            )
    out.append("</g>")
    return out


def header_height(columns: Sequence[Column]) -> int:
    most = max((len(c.hosts) for c in columns), default=1)
    return max(HEADER_H, 30 + 13 * max(1, most))


def ladder_header(geo: Geometry) -> list[str]:
    """The column headings: each actor's name and the lab addresses the trace shows it on (a
    column named by an address no actor holds, dashed)."""
    out = [
        f'<text class="time" x="{LEFT - 8}" y="20" text-anchor="end">time (s)</text>',
        '<text class="no" x="6" y="20">No.</text>',
    ]
    for column in geo.columns:
        out += _actor_box(column, geo.x(column.name), 4, geo.col_w - 14, bool(column.hosts))
    return out


def _row_height(step: Step, geo: Geometry) -> int:
    if step.kind == "gap":
        return GAP_H
    if step.dst is None:
        return NOTE_H + NOTE_LINE * (len(_note_lines(step, geo)[0]) - 1)
    return ROW_H


def body_height(ladder: Ladder, geo: Geometry) -> int:
    return sum(_row_height(s, geo) for s in ladder.steps) + 10


def ladder_body(ladder: Ladder, geo: Geometry, *, links: bool = False) -> list[str]:
    """The rows, from y = 0. ``links``: each message is a link to ``#msg-N`` (the HTML page)."""
    height = body_height(ladder, geo)
    out = [
        f'<line class="life" x1="{_num(geo.x(c.name))}" y1="0" x2="{_num(geo.x(c.name))}" '
        f'y2="{height}"/>'
        for c in geo.columns
    ]
    y = 4.0
    for step in ladder.steps:
        out += _row(step, geo, y, links)
        y += _row_height(step, geo)
    return out


def _row(step: Step, geo: Geometry, y: float, links: bool) -> list[str]:
    if step.kind == "gap":
        mid = y + GAP_H / 2
        return [
            f'<g class="gap"><line x1="{LEFT - 90}" y1="{_num(mid)}" x2="{geo.width - 4}" '
            f'y2="{_num(mid)}"/><text x="{_num(LEFT + (geo.width - LEFT) / 2)}" '
            f'y="{_num(mid + 4)}" text-anchor="middle">… {esc(step.label)} …</text></g>'
        ]
    if step.dst is None:
        return _note(step, geo, y)
    return _arrow(step, geo, y, links)


#: A note longer than the room beside its actor is wrapped onto this many lines at most.
NOTE_LINES = 3
NOTE_LINE = 13


def _note_lines(step: Step, geo: Geometry) -> tuple[list[str], bool]:
    """The note's lines and whether they go right of the actor's lifeline: on one line where
    it fits (right first), else wrapped on the side with more room."""
    x = geo.x(step.src)
    per = NOTE_SIZE * ADVANCE
    right = int((geo.width - 4 - (x + 8)) // per)
    left = int((x - 8 - LEFT) // per)
    text = step.label
    if len(text) <= right:
        return [text], True
    if len(text) <= left:
        return [text], False
    room = max(right, left, 10)
    lines = textwrap.wrap(text, room, break_on_hyphens=False) or [""]
    if len(lines) > NOTE_LINES:
        lines = [*lines[: NOTE_LINES - 1], fit(" ".join(lines[NOTE_LINES - 1 :]), room * per,
                                                NOTE_SIZE)]  # fmt: skip
    return lines, right >= left


def _note(step: Step, geo: Geometry, y: float) -> list[str]:
    x = geo.x(step.src)
    base = y + 13
    lines, right = _note_lines(step, geo)
    place = f'x="{_num(x + 8)}"' if right else f'x="{_num(x - 8)}" text-anchor="end"'
    cls = " ".join(step.css)
    title = f"<title>{esc(fmt_t(step.t))} s · {esc(step.src)} · {esc(step.label)}</title>"
    texts = "".join(
        f'<text {place} y="{_num(base + NOTE_LINE * i)}">{esc(line)}</text>'
        for i, line in enumerate(lines)
    )
    return [
        f'<text class="time" x="{LEFT - 8}" y="{_num(base)}" text-anchor="end">'
        f"{fmt_t(step.t)}</text>",
        f'<g class="{cls}">{title}<circle cx="{_num(x)}" cy="{_num(y + 9)}" r="3"/>{texts}</g>',
    ]


def _head(kind: str, x: float, y: float, d: int) -> str:
    """An arrowhead whose tip is at (x, y), pointing in direction ``d`` (+1 right, -1 left)."""
    if kind == "arrow":
        return (f'<polygon class="hd" points="{_num(x)},{_num(y)} {_num(x - 9 * d)},'
                f'{_num(y - 4.5)} {_num(x - 9 * d)},{_num(y + 4.5)}"/>')  # fmt: skip
    if kind == "open":
        return (f'<polyline class="hd" points="{_num(x - 9 * d)},{_num(y - 5)} {_num(x)},'
                f'{_num(y)} {_num(x - 9 * d)},{_num(y + 5)}"/>')  # fmt: skip
    return _cross(x, y)


def _cross(x: float, y: float) -> str:
    return (f'<path class="x" d="M{_num(x - 5)},{_num(y - 5)} L{_num(x + 5)},{_num(y + 5)} '
            f'M{_num(x - 5)},{_num(y + 5)} L{_num(x + 5)},{_num(y - 5)}"/>')  # fmt: skip


def _label_place(text: str, lo: float, hi: float, geo: Geometry) -> tuple[str, str]:
    """(attributes, text) of a label for an arrow from ``lo`` to ``hi``: centred on the arrow
    when it fits there, else starting at its left end, else ending at its right end (it runs
    over other columns' lifelines, on a white halo); else cut to the page's width."""
    width = text_width(text)
    if width <= hi - lo - 24:
        return f'x="{_num((lo + hi) / 2)}" text-anchor="middle"', text
    if lo + 12 + width <= geo.width - 4:
        return f'x="{_num(lo + 12)}"', text
    if hi - 12 - width >= LEFT:
        return f'x="{_num(hi - 12)}" text-anchor="end"', text
    return f'x="{LEFT}"', fit(text, geo.width - 4 - LEFT)


def _arrow(step: Step, geo: Geometry, y: float, links: bool) -> list[str]:
    assert step.dst is not None
    xa, xb = geo.x(step.src), geo.x(step.dst)
    line_y = y + 18
    base = line_y + 3.5
    label = f"{step.label} ✕ {step.fate}" if step.fate else step.label
    cls = [step.kind if step.kind != "message" else "msg", *step.css]
    if step.line == "dashed":
        cls.append("dashed")
    parts: list[str] = []
    if xa == xb:
        # To itself (an actor connecting to its own address): a loop, the label beside it.
        parts.append(f'<path class="ln" d="M{_num(xa)},{_num(line_y - 6)} h26 v10 h-24"/>')
        parts.append(_head("arrow" if step.head == "arrow" else step.head, xa + 2, line_y + 4, -1))
        place, text = _label_place(label, xa + 30, xa + 30, geo)
    else:
        d = 1 if xb > xa else -1
        end = xa + (xb - xa) * step.reach
        tip = end - d * 1.5 if step.reach == 1 else end
        parts.append(f'<line class="ln" x1="{_num(xa + d * 1.5)}" y1="{_num(line_y)}" '
                     f'x2="{_num(tip - d * (2 if step.head == "arrow" else 0))}" '
                     f'y2="{_num(line_y)}"/>')  # fmt: skip
        if step.head == "both":
            parts += [_cross(xa + d * 7, line_y), _cross(xb - d * 7, line_y)]
        elif step.head == "cross":
            parts.append(_cross(tip - d * 5, line_y))
        elif step.head != "none":
            parts.append(_head(step.head, tip, line_y, d))
        lo, hi = min(xa, end), max(xa, end)
        place, text = _label_place(label, lo, hi, geo)
    title = f"{fmt_t(step.t)} s · {step.src} → {step.dst} · {label}"
    if step.why:
        title += f" ({step.why})"
    row_top, row_h = y + 2, ROW_H - 2
    hit = (f'<rect class="hit" x="{LEFT - 96}" y="{_num(row_top)}" width="{geo.width - LEFT + 92}"'
           f' height="{row_h}"/>')  # fmt: skip
    time = (f'<text class="time" x="{LEFT - 8}" y="{_num(base)}" text-anchor="end">'
            f"{fmt_t(step.t)}</text>")  # fmt: skip
    if step.kind != "message":
        return [
            f'<g class="{" ".join(cls)}"><title>{esc(title)}</title>{time}{"".join(parts)}'
            f'<text class="lbl" {place} y="{_num(line_y - 5)}">{esc(text)}</text></g>'
        ]
    n = step.number
    group = (
        f'<g class="{" ".join(cls)}" id="arrow-{n}" data-n="{n}">'
        f"<title>{n} · {esc(title)}</title>{hit}{time}"
        f'<text class="no" x="6" y="{_num(base)}">{n}</text>{"".join(parts)}'
        f'<text class="lbl" {place} y="{_num(line_y - 5)}">{esc(text)}</text></g>'
    )
    if links:
        words = f"message {n}: {label}, {step.src} to {step.dst}"
        group = f'<a href="#msg-{n}" aria-label="{esc(words)}">{group}</a>'
    return [group]


def ladder_svg(ladder: Ladder, *, title: str) -> str:
    """The ladder as one standalone SVG document (``labsim run --svg``)."""
    geo = Geometry.of(ladder.columns)
    head_h = header_height(ladder.columns)
    height = head_h + body_height(ladder, geo)
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" class="ladder" width="{geo.width}" '
        f'height="{height}" viewBox="0 0 {geo.width} {height}" role="img" '
        f'aria-labelledby="ladder-title">',
        f'<title id="ladder-title">{esc(title)}</title>',
        f"<style>{STYLE}</style>",
        '<rect width="100%" height="100%" fill="#fff"/>',
        '<g class="head">', *ladder_header(geo), "</g>",
        f'<g class="body" transform="translate(0,{head_h})">',
        *ladder_body(ladder, geo),
        "</g>",
        "</svg>",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


# -- the topology -----------------------------------------------------------------------------

LEVEL_H = 32
BOX_GAP = 26
LINK_SIZE = 10.5


@dataclass(frozen=True)
class _Arc:
    link: Link | None
    a: str
    b: str
    lines: tuple[str, str]
    css: str


def _arcs(topo: Topology) -> tuple[list[_Arc], list[_Arc]]:
    above: list[_Arc] = []
    below: list[_Arc] = []
    for link in topo.links:
        port = link.server_addr.rsplit(":", 1)[-1]
        css = link.path.lower() + (" broken" if link.broken else "")
        arc = _Arc(link, link.client, link.server, (link.name, f"→ :{port} · {link.carries}"), css)
        (above if link.path == "SIP" else below).append(arc)
    for attempt in topo.attempts:
        port = attempt.address.rsplit(":", 1)[-1]
        below.append(_Arc(None, attempt.client, attempt.target,
                          (f"connect to :{port}", f"✕ {attempt.how}"), "attempt"))  # fmt: skip
    return above, below


def _levels(arcs: list[_Arc], geo: Geometry) -> list[int]:
    """A level for each arc, lowest first, so that no two arcs on one level overlap (their
    spans and their labels): labels at the arcs' tops then never collide."""
    placed: list[tuple[int, float, float]] = []
    levels = [0] * len(arcs)
    order = sorted(range(len(arcs)), key=lambda i: abs(geo.x(arcs[i].a) - geo.x(arcs[i].b)))
    for i in order:
        arc = arcs[i]
        xa, xb = geo.x(arc.a), geo.x(arc.b)
        mid = (xa + xb) / 2
        half = max(text_width(line, LINK_SIZE) for line in arc.lines) / 2 + 4
        lo, hi = min(xa, xb, mid - half), max(xa, xb, mid + half)
        level = 0
        while any(lv == level and lo < b - 1 and a < hi - 1 for lv, a, b in placed):
            level += 1
        placed.append((level, lo, hi))
        levels[i] = level
    return levels


def _ends(arcs: list[_Arc], geo: Geometry) -> list[tuple[float, float]]:
    """Where each arc meets its two boxes: spread along a box's edge, ordered by where the
    other end is, so arcs that share a box do not start on one point."""
    at: dict[str, list[tuple[float, int, int]]] = {}
    for i, arc in enumerate(arcs):
        at.setdefault(arc.a, []).append((geo.x(arc.b), i, 0))
        at.setdefault(arc.b, []).append((geo.x(arc.a), i, 1))
    ends = [[0.0, 0.0] for _ in arcs]
    for name, items in at.items():
        items.sort()
        step = min(16.0, (geo.col_w - 40) / max(1, len(items)))
        for k, (_other, i, which) in enumerate(items):
            ends[i][which] = geo.x(name) + (k - (len(items) - 1) / 2) * step
    return [(a, b) for a, b in ends]


def _draw_arcs(arcs: list[_Arc], geo: Geometry, edge: float, up: bool) -> tuple[list[str], int]:
    if not arcs:
        return [], 0
    levels = _levels(arcs, geo)
    ends = _ends(arcs, geo)
    sign = -1 if up else 1
    arcs_out: list[str] = []
    labels: list[str] = []
    for arc, level, (xa, xb) in zip(arcs, levels, ends, strict=True):
        rise = 26 + level * LEVEL_H
        ctrl = rise / 0.75  # a cubic with both control points at ctrl reaches 3/4 of it
        cy = edge + sign * ctrl
        d = (f"M{_num(xa)},{_num(edge)} C{_num(xa)},{_num(cy)} {_num(xb)},{_num(cy)} "
             f"{_num(xb)},{_num(edge)}")  # fmt: skip
        tip = (
            _cross(xb, edge + sign * 6) if arc.css == "attempt"
            else f'<polygon class="hd" points="{_num(xb)},{_num(edge)} {_num(xb - 4.5)},'
            f'{_num(edge + sign * 9)} {_num(xb + 4.5)},{_num(edge + sign * 9)}"/>'
        )  # fmt: skip
        title = f"{arc.lines[0]} {arc.lines[1]}"
        if arc.link is not None:
            link = arc.link
            title = (f"{link.name}: {link.client} {link.client_addr} → {link.server} "
                     f"{link.server_addr}; {link.carries}, {link.messages} messages; "
                     f"{link.ended}")  # fmt: skip
        arcs_out.append(f'<g class="link {arc.css}"><title>{esc(title)}</title>'
                        f'<path class="arc" d="{d}"/>{tip}</g>')  # fmt: skip
        mid = (xa + xb) / 2
        top = edge + sign * rise
        width = max(text_width(line, LINK_SIZE) for line in arc.lines) + 8
        y1 = top - 13 if up else top - 1
        labels.append(
            f'<g class="link {arc.css}"><rect x="{_num(mid - width / 2)}" y="{_num(y1 - 1)}" '
            f'width="{_num(width)}" height="27" fill="#fff" fill-opacity="0.88" rx="3"/>'
            f'<text class="lbl name" x="{_num(mid)}" y="{_num(y1 + 10)}" text-anchor="middle">'
            f"{esc(arc.lines[0])}</text>"
            f'<text class="lbl" x="{_num(mid)}" y="{_num(y1 + 22)}" text-anchor="middle">'
            f"{esc(arc.lines[1])}</text></g>"
        )
    return arcs_out + labels, 26 + max(levels) * LEVEL_H + 16


def topology_svg(topo: Topology, *, standalone: bool = False) -> str:
    """The actors as boxes in call-path order, each with its lab addresses; above them the
    connections that carried SIP, below them those that carried STUN/TURN, ICE checks or
    relayed data (and connects that never opened), each an arrow from the actor that opened it
    to the one that accepted it, with its name, the port it went to and what crossed it."""
    geo = Geometry.of(topo.columns)
    above, below = _arcs(topo)
    # Each side is drawn from its edge of the boxes at y = 0 and moved into place.
    up, up_h = _draw_arcs(above, geo, 0, True)
    down, down_h = _draw_arcs(below, geo, 0, False)
    most = max((len(c.hosts) for c in topo.columns), default=1)
    box_h = 22 + 13 * max(1, most)
    box_top = 12 + up_h
    box_bottom = box_top + box_h
    height = int(box_bottom + down_h + 12)
    out = []
    if standalone:
        out.append('<?xml version="1.0" encoding="UTF-8"?>')
    xmlns = ' xmlns="http://www.w3.org/2000/svg"' if standalone else ""
    out += [
        f'<svg{xmlns} class="topology" width="{geo.width}" height="{height}" '
        f'viewBox="0 0 {geo.width} {height}" role="img" aria-labelledby="topology-title">',
        '<title id="topology-title">Who connected to whom: the SIP path above the actors, '
        "the media path below</title>",
    ]
    if standalone:
        out += [f"<style>{STYLE}</style>", '<rect width="100%" height="100%" fill="#fff"/>']
    if above:
        out.append(f'<text class="side" x="6" y="{_num(box_top - 8)}">SIP path ↑</text>')
    if below:
        out.append(f'<text class="side" x="6" y="{_num(box_bottom + 16)}">media path ↓</text>')
    out += [f'<g transform="translate(0,{box_top})">', *up, "</g>"]
    out += [f'<g transform="translate(0,{box_bottom})">', *down, "</g>"]
    for column in topo.columns:
        out += _actor_box(column, geo.x(column.name), box_top, geo.col_w - 40, bool(column.hosts))
    out.append("</svg>")
    return "\n".join(out) + "\n"
