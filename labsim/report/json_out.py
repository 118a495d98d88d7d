"""The run as JSON, for tools and for comparing runs (DESIGN.md, "Contracts other tools rely
on": ``{"scenario", "outcome", "diagnosis", "messages": [{t, src, dst, protocol, summary,
connection, …}]}``).

Read only from the trace. Times are seconds from the start of the run, as the trace has them;
addresses are lab addresses as ``"ip:port"``; bytes are lower-case hex: every byte of a STUN or
SIP message, and for opaque TCP data the head the trace kept (``size`` is always the real size).
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from labsim.trace import Trace
from labsim.wire.address import Address

#: Keys the output always has; ``extra`` may not replace them.
CORE_KEYS = ("scenario", "outcome", "diagnosis", "connections", "messages", "refused", "logs")


def trace_to_json(
    trace: Trace,
    *,
    scenario: str,
    outcome: str,
    diagnosis: object | None = None,
    extra: Mapping[str, object] | None = None,
) -> dict[str, Any]:
    """The run as a JSON-serialisable dict.

    ``diagnosis`` may be anything JSON can hold, a dataclass, or an object with a
    ``model_dump()`` (pydantic) or ``to_json()`` method; ``extra`` adds top-level keys."""
    out: dict[str, Any] = {
        "scenario": scenario,
        "outcome": outcome,
        "diagnosis": _jsonable(diagnosis),
        "connections": [
            {
                "id": c.id,
                "client": c.client,
                "server": c.server,
                "client_addr": str(c.client_addr),
                "server_addr": str(c.server_addr),
                "opened": c.opened,
                "closed": c.closed,
                "reset": c.reset,
                "closed_by": c.closed_by,
            }
            for c in trace.connections.values()
        ],
        "messages": [
            {
                "t": m.t,
                "src": m.src,
                "dst": m.dst,
                "protocol": m.protocol,
                "summary": m.summary,
                "connection": m.connection,
                "src_addr": str(m.src_addr),
                "dst_addr": str(m.dst_addr),
                "framing": m.framing,
                "size": m.size,
                "relayed": m.relayed,
                "error": m.error,
                "hex": m.data.hex(),
            }
            for m in trace.messages
        ],
        "refused": [
            {
                "t": r.t,
                "client": r.client,
                "client_host": r.client_host,
                "server_addr": str(r.server_addr),
                "reason": r.reason,
            }
            for r in trace.refused
        ],
        "logs": [
            {"t": log.t, "actor": log.actor, "level": log.level, "text": log.text}
            for log in trace.logs
        ],
    }
    for key, value in (extra or {}).items():
        if key in CORE_KEYS:
            raise ValueError(f"extra key {key!r} would replace the trace's own")
        out[key] = _jsonable(value)
    return out


def write_json(
    trace: Trace,
    path: Path | str | TextIO,
    *,
    scenario: str,
    outcome: str,
    diagnosis: object | None = None,
    extra: Mapping[str, object] | None = None,
    indent: int | None = 2,
) -> None:
    """Write :func:`trace_to_json` to ``path`` (a file name or a text file), UTF-8."""
    data = trace_to_json(trace, scenario=scenario, outcome=outcome, diagnosis=diagnosis,
                         extra=extra)  # fmt: skip
    text = json.dumps(data, indent=indent, ensure_ascii=False) + "\n"
    if isinstance(path, (str, Path)):
        Path(path).write_text(text, encoding="utf-8")
    else:
        path.write(text)


def _jsonable(value: object) -> Any:
    """``value`` as plain JSON types; whatever has no JSON form becomes its ``str()``."""
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Address):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return [_jsonable(v) for v in items]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    for method in ("model_dump", "to_json"):
        dump = getattr(value, method, None)
        if callable(dump):
            return _jsonable(dump())
    return str(value)
