"""The run as a Mermaid ``sequenceDiagram`` (``labsim run --mermaid FILE``): text that GitHub,
GitLab, Notion and the Mermaid live editor draw, for pasting into a ticket or a page.

The same rows as the SVG ladder (:mod:`labsim.report.pictures`): one participant per actor,
named with its lab addresses; one line per message, numbered as the trace numbers them
(``[12] INVITE (t=0.001000)``); TCP connects and closes as dotted open arrows, resets and
refused connects as dotted arrows ending in a cross; a message that never arrived as an arrow
ending in a cross (Mermaid cannot stop an arrow halfway, so the words say where: ``✕ dropped by
fault rule 1``); notes over their actor; a pause of a second or more as a note across all.

Mermaid's grammar ends a message's text at ``;``, ``#`` or a line break, and reads ``#…;`` as
an entity code; labels may carry HTML. So every character outside letters, digits, spaces and
a few punctuation marks is written as Mermaid's numeric entity code (``#59;`` for ``;``,
``#60;`` for ``<``), and so is anything from the wire: a SIP header cannot end a line, open a
tag or start a new statement. Other characters (``→``, ``✕``, accented letters) are kept.
"""

from __future__ import annotations

import re

from labsim.report.pictures import Column, Ladder, Step, fmt_t, printable

#: ASCII characters Mermaid takes as they are in a label (everything else ASCII is escaped).
_SAFE_ASCII = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:_-+=/()[]'@!?*|~^$"
)

#: Words Mermaid's sequence grammar reads as statements: no participant id may be one.
_KEYWORDS = frozenset((
    "participant", "actor", "as", "note", "over", "left", "right", "of", "loop", "alt",
    "else", "opt", "par", "and", "end", "rect", "critical", "break", "activate", "deactivate",
    "autonumber", "title", "box", "create", "destroy", "links", "link", "properties",
    "details", "sequencediagram",
))  # fmt: skip

#: Arrows, by what a row is: (line, head) → Mermaid's arrow.
_ARROWS = {
    ("solid", "arrow"): "->>",
    ("dashed", "arrow"): "-->>",
    ("solid", "open"): "-)",
    ("dashed", "open"): "--)",
    ("solid", "cross"): "-x",
    ("dashed", "cross"): "--x",
    ("solid", "both"): "-x",
    ("dashed", "both"): "--x",
    ("solid", "none"): "-)",
    ("dashed", "none"): "--)",
}


def text(value: str) -> str:
    """``value`` as Mermaid label text (see the module's note): never a line break, ``;``,
    ``#`` (but in entity codes), ``<``, ``>``, ``&`` or ``"``."""
    out = []
    for char in printable(value):
        if char in _SAFE_ASCII or (ord(char) > 0x7F and char.isprintable()):
            out.append(char)
        else:
            out.append(f"#{ord(char)};")
    escaped = "".join(out).strip()
    # A label that starts with "wrap:" or "nowrap:" is read as a directive.
    return f"#32;{escaped}" if escaped.lower().startswith(("wrap:", "nowrap:")) else escaped


def participant_ids(columns: tuple[Column, ...]) -> dict[str, str]:
    """A Mermaid id for each column: the actor's own name when the grammar takes it, else
    ``p1``, ``p2`` … (an address such as ``10.48.54.229:24000``, a keyword)."""
    ids: dict[str, str] = {}
    for i, column in enumerate(columns, 1):
        name = column.name
        ok = re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name) and name.lower() not in _KEYWORDS
        ident = name if ok and name not in ids.values() else f"p{i}"
        while ident in ids.values():
            ident = f"{ident}_"
        ids[name] = ident
    return ids


def _message_text(step: Step) -> str:
    fate = f" ✕ {step.fate}" if step.fate else ""
    why = f" ({step.why})" if step.why else ""
    return text(f"[{step.number}] {step.label}{fate}{why} (t={fmt_t(step.t)})")


def render_mermaid(ladder: Ladder, *, title: str) -> str:
    """The ladder as a Mermaid ``sequenceDiagram``."""
    ids = participant_ids(ladder.columns)
    names = [ids[c.name] for c in ladder.columns] or [""]  # no columns: no rows either
    first, last = names[0], names[-1]
    # The comment follows the diagram's type: some Mermaid versions look for the type on the
    # first line.
    lines = [
        "sequenceDiagram",
        f"    %% {text(title)}: {len(ladder.messages)} messages, written by labsim",
    ]
    for column in ladder.columns:
        alias = text(column.name)
        if column.hosts:
            alias += "<br/>" + "<br/>".join(text(h) for h in column.hosts)
        lines.append(f"    participant {ids[column.name]} as {alias}")
    for step in ladder.steps:
        if step.kind == "gap":
            span = first if first == last else f"{first},{last}"
            lines.append(f"    Note over {span}: {text('… ' + step.label + ' …')}")
        elif step.dst is None:
            lines.append(f"    Note over {ids[step.src]}: {text(fmt_t(step.t) + ' ' + step.label)}")
        else:
            arrow = _ARROWS[(step.line, step.head)]
            if step.kind == "message":
                words = _message_text(step)
            else:
                why = f" ({step.why})" if step.why and step.why not in step.label else ""
                words = text(f"{step.label}{why} (t={fmt_t(step.t)})")
            lines.append(f"    {ids[step.src]}{arrow}{ids[step.dst]}: {words}")
    return "\n".join(lines) + "\n"
