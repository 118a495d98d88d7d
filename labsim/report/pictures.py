"""What the pictures of a run show, worked out once for the SVG ladder, the Mermaid sequence
diagram and the HTML page (:mod:`labsim.report.svg`, :mod:`labsim.report.mermaid`,
:mod:`labsim.report.html`).

Read from the trace alone (DESIGN.md: "the trace is the truth"): :func:`ladder` turns the
trace's timeline into :class:`Step` rows (one per message, TCP event, refused connect, fault
note and actor note, in the order they happened) under :class:`Column` headers that carry each
actor's lab addresses; :func:`topology` turns its connections into :class:`Link` lines (who
opened which connection to whom, on the SIP path or the media path, what it carried and how it
ended). The renderers only draw these: none of them decides what happened.

Not :mod:`labsim.report.ladder`'s rows: those are laid out in characters for a terminal (labels
cut to fit, opaque data rows merged), where a picture keeps every message as its own arrow with
its whole summary, so that each can be clicked and counted.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

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

#: A pause between two rows at least this long gets a row of its own (``4.986 s later``): rows
#: are evenly spaced, so without it CMS's keepalive 5 s later would look like the next event.
GAP = 1.0

StepKind = Literal["message", "connect", "close", "reset", "refused", "fault", "note", "gap"]
Line = Literal["solid", "dashed"]
Head = Literal["arrow", "open", "cross", "both", "none"]
Path = Literal["SIP", "media", "none"]


@dataclass(frozen=True)
class Column:
    """One actor of the ladder: its name and the lab addresses the trace shows it on."""

    name: str
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class Step:
    """One row of a ladder: an arrow from ``src`` to ``dst``, or a note in ``src``'s column
    (``dst`` None), or a pause (``gap``)."""

    t: float
    kind: StepKind
    src: str
    dst: str | None
    label: str
    """The whole text (a message's Wireshark-style summary, a TCP event with its addresses);
    never cut here: a renderer that must cut it keeps the whole in a tooltip."""
    css: tuple[str, ...]
    """What it is, as class names the renderers colour by: ``sip``, ``stun``, ``tcp``,
    ``relayed``, ``error``, ``connect``, ``close``, ``reset``, ``refused``, ``fault``, ``note``,
    ``warning``, and a message's fate (``delivered``, ``dropped``, ``lost``, ``in-flight``,
    ``outside``)."""
    line: Line = "solid"
    head: Head = "arrow"
    reach: float = 1.0
    """How far along from ``src`` to ``dst`` the arrow goes: 1 all the way; less for a message
    that never arrived (dropped on the hop, lost with its connection, still in flight)."""
    number: int = 0
    """A message's number, from 1 in the trace's order (``trace.messages[number - 1]``; the
    HTML page's ``#msg-N``); 0 for other rows."""
    fate: str = ""
    """Where a message that never arrived stopped, in words (``dropped by fault rule 1``);
    empty when it arrived."""
    why: str = ""
    """More words for the reader (the fault rule that dropped it, a connect's failure)."""


@dataclass(frozen=True)
class Ladder:
    columns: tuple[Column, ...]
    steps: tuple[Step, ...]

    @property
    def messages(self) -> list[Step]:
        return [s for s in self.steps if s.kind == "message"]


@dataclass(frozen=True)
class Link:
    """One TCP connection of the run, for the topology."""

    id: int
    name: str
    client: str
    server: str
    client_addr: str
    server_addr: str
    path: Path
    """``SIP`` when it carried SIP, ``media`` when it carried STUN/TURN, ICE checks or relayed
    data, ``none`` when nothing crossed it."""
    carries: str
    """What crossed it, in words (``SIP``, ``STUN/TURN``, ``ICE checks (RFC 4571)``, …)."""
    messages: int
    opened: float
    ended: str
    """How it ended, in words, or that it was open when the run ended."""
    broken: bool
    """Reset, or ended by the network."""


@dataclass(frozen=True)
class Attempt:
    """A connect that never opened."""

    t: float
    client: str
    target: str
    """The column it points at: the actor holding the address, else the address."""
    address: str
    how: str
    reason: str


@dataclass(frozen=True)
class Topology:
    columns: tuple[Column, ...]
    links: tuple[Link, ...]
    attempts: tuple[Attempt, ...]


# -- text -------------------------------------------------------------------------------------

#: Characters no picture may carry as they are: control and format characters (a bidi override
#: in a SIP header would reverse the text around it), line and paragraph separators, and what
#: XML 1.0 cannot hold at all (surrogates, U+FFFE/U+FFFF).
_UNSAFE_CATEGORIES = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp", "Co", "Cn"))


def printable(text: str) -> str:
    """``text`` with every character a picture must not carry as it is (see
    :data:`_UNSAFE_CATEGORIES`) shown as ``\\xNN``/``\\uNNNN``, the way Python prints it: what
    came off the wire stays visible, and cannot break the file it is written into."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char == " " or unicodedata.category(char) not in _UNSAFE_CATEGORIES:
            out.append(char)
        else:
            out.append(repr(char)[1:-1])
    return "".join(out)


def fmt_t(t: float) -> str:
    return f"{t:.6f}"


# -- the ladder -------------------------------------------------------------------------------


def columns(trace: Trace, actors: Iterable[str]) -> tuple[Column, ...]:
    """The ladder's columns: ``actors`` in order, then every other name the trace shows (in
    order of appearance; a refused connect to an address no actor holds gets a column named by
    the address), each with the hosts the trace shows it on."""
    hosts: dict[str, list[str]] = {}

    def seen(actor: str, host: str) -> None:
        known = hosts.setdefault(actor, [])
        if host not in known:
            known.append(host)

    order = list(dict.fromkeys(actors))
    owners = host_owners(trace)
    for record in trace.timeline:
        names: list[str] = []
        if isinstance(record, ConnectionRecord):
            seen(record.client, record.client_addr.host)
            seen(record.server, record.server_addr.host)
            names = [record.client, record.server]
        elif isinstance(record, MessageRecord):
            names = [record.src, record.dst]
        elif isinstance(record, RefusedRecord):
            seen(record.client, record.client_host)
            names = [record.client, owners.get(record.server_addr.host, str(record.server_addr))]
        elif isinstance(record, (LogRecord, FaultRecord)):
            names = [record.actor if isinstance(record, LogRecord) else record.src]
        for name in names:
            if name and name not in order:
                order.append(name)
    return tuple(Column(name, tuple(hosts.get(name, ()))) for name in order)


def host_owners(trace: Trace) -> dict[str, str]:
    """Which actor holds each host, from the connections (names a refused connect's target)."""
    owners: dict[str, str] = {}
    for conn in trace.connections.values():
        owners.setdefault(conn.server_addr.host, conn.server)
        owners.setdefault(conn.client_addr.host, conn.client)
    return owners


def rule_words(trace: Trace, number: int | None) -> str:
    """The scenario's fault rule ``number`` in words, as the trace recorded it."""
    for rule in trace.fault_rules:
        if rule.number == number:
            return rule.rule
    for fault in trace.faults:
        if fault.number == number and fault.rule:
            return fault.rule
    return ""


def _fate(trace: Trace, m: MessageRecord) -> tuple[str, str, float, Head, Line]:
    """(where it stopped, why, reach, head, line) of a message that never arrived."""
    at = f" at {fmt_t(m.fate_t)} s" if m.fate_t is not None else ""
    if m.fate == "dropped":
        return (f"dropped by fault rule {m.rule}", rule_words(trace, m.rule), 0.5, "cross",
                "solid")  # fmt: skip
    if m.fate == "lost":
        conn = trace.connections.get(m.connection)
        if conn is not None and conn.closed_by not in (None, conn.client, conn.server):
            why = f"its connection was cut by the {conn.closed_by}{at}"
        elif conn is not None and conn.reset:
            why = f"its connection was reset by {conn.closed_by}{at}"
        else:
            why = f"its connection ended before {m.dst} read it{at}"
        return "lost with its connection", why, 0.85, "cross", "solid"
    if m.fate == "in-flight":
        return ("still in flight when the run ended", "sent, never read by its receiver", 0.6,
                "none", "dashed")  # fmt: skip
    return "", "", 1.0, "arrow", "solid"


def _message(trace: Trace, m: MessageRecord, number: int) -> Step:
    css = [m.protocol.lower()]
    label = m.summary
    if m.delay:
        by = f"by fault rule {m.rule}" if m.rule else "behind a held message"
        label += f" (held {m.delay:g} s {by})"
    if m.error is not None:
        label += f" ({m.error})"
        css.append("error")
    if m.relayed:
        label = f"(relayed) {label}"
        css.append("relayed")
    css.append(m.fate)
    fate, why, reach, head, line = _fate(trace, m)
    if m.protocol == "TCP" and not fate:
        line = "dashed"  # opaque bytes: a pipe's data, drawn lighter than decoded messages
    return Step(m.t, "message", m.src, m.dst, printable(label), tuple(css), line, head, reach,
                number, fate, printable(why))  # fmt: skip


def _connection_step(record: ConnectionRecord) -> Step:
    return Step(
        record.opened, "connect", record.client, record.server,
        f"TCP connect {record.client_addr} → {record.server_addr} [{printable(record.name)}]",
        ("connect",), "dashed", "open",
    )  # fmt: skip


def _closed_step(record: ClosedRecord) -> Step:
    conn = record.connection
    how = "reset (RST)" if conn.reset else "close (FIN)"
    css = ("reset",) if conn.reset else ("close",)
    if conn.closed_by == conn.server and conn.server != conn.client:
        src, dst, a, b = conn.server, conn.client, conn.server_addr, conn.client_addr
    else:
        src, dst, a, b = conn.client, conn.server, conn.client_addr, conn.server_addr
    name = printable(conn.name)
    if conn.closed_by not in (conn.client, conn.server):
        # Ended by the network (a cut) or a peer outside the run: both ends lose it.
        return Step(record.t, "reset" if conn.reset else "close", src, dst,
                    f"TCP {how} by the {conn.closed_by}: {a} → {b} [{name}]", (*css, "broken"),
                    "dashed", "both")  # fmt: skip
    return Step(record.t, "reset" if conn.reset else "close", src, dst,
                f"TCP {how} {a} → {b} [{name}]", css, "dashed",
                "cross" if conn.reset else "open")  # fmt: skip


def _refused_step(record: RefusedRecord, owners: dict[str, str]) -> Step:
    target = owners.get(record.server_addr.host, str(record.server_addr))
    return Step(
        record.t, "refused", record.client, target,
        f"TCP connect {record.client_host} → {record.server_addr}: {printable(record.reason)}",
        ("refused",), "dashed", "cross", why=f"{record.how}: {printable(record.reason)}",
    )  # fmt: skip


def ladder(trace: Trace, actors: Iterable[str], *, logs: bool = True) -> Ladder:
    """The rows of the run's ladder, in the order things happened: every message of the trace
    (each its own row, numbered from 1 as ``trace.messages``), TCP connects, closes and resets,
    refused connects, what fault rules did besides dropping (a dropped message is its own
    row, stopped where it was dropped), the actors' notes (``logs=False`` leaves them out) and
    a row for each pause of :data:`GAP` seconds or more."""
    number = {id(m): i for i, m in enumerate(trace.messages, 1)}
    owners = host_owners(trace)
    steps: list[Step] = []
    last_t: float | None = None
    for record in trace.timeline:
        step = _step(trace, record, number, owners, logs)
        if step is None:
            continue
        if last_t is not None and step.t - last_t >= GAP:
            steps.append(Step(step.t, "gap", "", None, f"{step.t - last_t:.3f} s later", ("gap",)))
        last_t = step.t if last_t is None else max(last_t, step.t)
        steps.append(step)
    return Ladder(columns(trace, actors), tuple(steps))


def _step(
    trace: Trace, record: TimelineRecord, number: dict[int, int], owners: dict[str, str],
    logs: bool,
) -> Step | None:  # fmt: skip
    if isinstance(record, MessageRecord):
        return _message(trace, record, number[id(record)])
    if isinstance(record, ConnectionRecord):
        return _connection_step(record)
    if isinstance(record, ClosedRecord):
        return _closed_step(record)
    if isinstance(record, RefusedRecord):
        return _refused_step(record, owners)
    if isinstance(record, FaultRecord):
        if record.action == "dropped":
            return None  # the message's own row shows it, stopped where it was dropped
        what = f" {printable(record.summary)}" if record.summary else ""
        return Step(record.t, "fault", record.src, None,
                    f"{record.action}{what} ({printable(record.rule)})", ("fault",))  # fmt: skip
    if isinstance(record, LogRecord) and logs:
        level = "" if record.level == "info" else f"{record.level}: "
        css = ("note",) if record.level in ("info", "debug") else ("note", "warning")
        return Step(record.t, "note", record.actor, None, f"{level}{printable(record.text)}", css)
    return None


# -- the topology -----------------------------------------------------------------------------


def _carries(trace: Trace) -> dict[int, tuple[list[str], int]]:
    """What crossed each connection, in words, and how many messages."""
    found: dict[int, tuple[list[str], int]] = {}
    for m in trace.messages:
        kinds, count = found.get(m.connection, ([], 0))
        if m.protocol == "SIP":
            kind = "SIP"
        elif m.protocol == "STUN" and m.framed:
            kind = "ICE checks (RFC 4571)"
        elif m.protocol == "STUN":
            kind = "STUN/TURN"
        else:
            kind = "TCP data"
        if kind not in kinds:
            kinds.append(kind)
        found[m.connection] = (kinds, count + 1)
    return found


def _ended(conn: ConnectionRecord) -> tuple[str, bool]:
    if conn.closed is None:
        return "open when the run ended", False
    how = "reset (RST)" if conn.reset else "closed (FIN)"
    broken = conn.reset or conn.closed_by not in (conn.client, conn.server)
    by = f" by {conn.closed_by}" if conn.closed_by else ""
    return f"{how}{by} at {fmt_t(conn.closed)} s", broken


def topology(trace: Trace, actors: Iterable[str]) -> Topology:
    """Who connected to whom: every connection of the trace with its path (SIP or media), what
    it carried and how it ended, and every connect that never opened."""
    carried = _carries(trace)
    links = []
    for conn in trace.connections.values():
        kinds, count = carried.get(conn.id, ([], 0))
        path: Path = "SIP" if "SIP" in kinds else "media" if kinds else "none"
        ended, broken = _ended(conn)
        links.append(Link(
            conn.id, printable(conn.name), conn.client, conn.server, str(conn.client_addr),
            str(conn.server_addr), path, " + ".join(kinds) or "nothing", count, conn.opened,
            ended, broken,
        ))  # fmt: skip
    owners = host_owners(trace)
    attempts = tuple(
        Attempt(
            r.t,
            r.client,
            owners.get(r.server_addr.host, str(r.server_addr)),
            str(r.server_addr),
            r.how,
            printable(r.reason),
        )  # fmt: skip
        for r in trace.refused
    )
    return Topology(columns(trace, actors), tuple(links), attempts)


def slug(name: str) -> str:
    """A name as an identifier (Mermaid participant ids, CSS-safe ids)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)
