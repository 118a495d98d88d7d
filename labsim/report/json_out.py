"""The run as JSON, for tools and for comparing runs (DESIGN.md, "Contracts other tools rely on":
``{"scenario", "outcome", "diagnosis", "messages": [{t, src, dst, protocol, summary, connection,
…}]}``).

The layout is the pydantic model :class:`RunJson`: the output is built through it, and the JSON
Schema shipped with the package (``labsim/report/run.schema.json``) is generated from it
(``labsim schema run``; a test fails when the file is stale).
``docs/json.md`` explains every field. Read only from the trace. Times are seconds from the
start of the run, as the trace has them; addresses are lab addresses as ``"ip:port"``; bytes are
lower-case hex: every byte of a STUN or SIP message, and for opaque TCP data the head the trace
kept (``size`` is always the real size).
"""

from __future__ import annotations

import dataclasses
import enum
import io
import json
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, Literal, TextIO, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from labsim.trace import MessageRecord, Trace
from labsim.wire.address import Address
from labsim.wire.facts import SipFacts, StunFacts

#: The version of the JSON layout: raised when a field changes meaning or goes away (a field
#: added keeps it). 2: messages carry their fate per hop and typed facts; ``journeys``.
VERSION: Literal[2] = 2

#: Keys the output always has; ``extra`` may not replace them.
CORE_KEYS = (
    "version", "scenario", "outcome", "diagnosis", "connections", "messages", "journeys",
    "refused", "logs", "faults", "fault_rules",
)  # fmt: skip


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SipFactsJson(_Out):
    """Typed fields of a SIP message (``labsim.wire.facts.SipFacts``)."""

    kind: Literal["sip"] = "sip"
    method: str | None = Field(description="Request method; null for a response.")
    status: int | None = Field(description="Response code; null for a request.")
    reason: str
    call_id: str
    cseq: int
    cseq_method: str
    from_tag: str | None
    to_tag: str | None = Field(description="null in a request outside a dialog.")
    branch: str = Field(description="Topmost Via branch: the transaction on this hop.")
    origin: str = Field(description="Bottommost Via branch: the originating UA's transaction.")
    has_sdp: bool
    media: list[str] = Field(description="The SDP's m= media kinds, in order.")
    diagnostics: str = Field(description="ms-diagnostics-public (else ms-diagnostics) text.")
    diagnostics_code: int | None
    cause: str = Field(
        default="", description="The Reason header (RFC 3326): why a BYE ends the call."
    )


class StunFactsJson(_Out):
    """Typed fields of a STUN/TURN message (``labsim.wire.facts.StunFacts``)."""

    kind: Literal["stun"] = "stun"
    method: str = Field(description="Wireshark's method name: Binding, Allocate, …")
    cls: str = Field(description="Request, Indication, Success Response or Error Response.")
    transaction_id: str = Field(description="Hex.")
    error: int | None = Field(description="ERROR-CODE of an error response.")
    lifetime: int | None
    relayed: str | None = Field(description="XOR-RELAYED-ADDRESS, ip:port.")
    mapped: str | None = Field(description="XOR-MAPPED-ADDRESS, ip:port.")
    peer: str | None = Field(description="XOR-PEER-ADDRESS, ip:port.")
    connection_id: int | None
    username: str | None
    realm: str | None
    nonce: bool
    integrity: bool
    use_candidate: bool
    channel: int | None = Field(description="Channel number of ChannelData.")


class DataFactsJson(_Out):
    """Opaque bytes: relayed media, a non-STUN RFC 4571 frame, or bytes that did not parse."""

    kind: Literal["data"] = "data"
    framed: bool
    error: str | None


class ConnectionJson(_Out):
    id: int = Field(description="The number messages and hops refer to in 'connection'.")
    name: str = Field(description="Its one name (ladder, actors' notes, capture): cms/turn:ctl.")
    client: str = Field(description="Actor that opened it.")
    server: str = Field(description="Actor that accepted it.")
    client_addr: str
    server_addr: str
    opened: float
    closed: float | None = Field(description="null: still open when the run ended.")
    reset: bool
    closed_by: str | None = Field(description="Actor, 'network' or 'external'.")


class MessageJson(_Out):
    """One message on one hop (one TCP connection)."""

    t: float = Field(description="When it went on the wire, or was dropped (s from start).")
    src: str
    dst: str
    protocol: Literal["SIP", "STUN", "TCP"]
    summary: str = Field(description="Wireshark-style one-liner, for people.")
    connection: int
    src_addr: str
    dst_addr: str
    framing: Literal["stun", "rfc4571", "sip", "raw", ""]
    size: int = Field(description="Bytes of the message (an RFC 4571 prefix not counted).")
    wire_size: int = Field(description="Bytes it took on the wire.")
    relayed: bool = Field(description="Carried by a relay as opaque bytes.")
    error: str | None = Field(description="Why the bytes did not decode.")
    hex: str = Field(description="The bytes (opaque data: the first 256).")
    journey: int = Field(description="Id of the message's journey (see journeys).")
    hop: int = Field(description="Its place in the journey, 0 for the hop it was sent on.")
    sent_t: float = Field(description="When its sender sent it (earlier than t when held).")
    fate: Literal["delivered", "dropped", "lost", "in-flight", "outside"]
    fate_t: float | None = Field(description="When delivered, dropped or lost.")
    rule: int | None = Field(description="The fault rule that dropped or delayed it.")
    delay: float = Field(description="Seconds a fault rule held it.")
    facts: SipFactsJson | StunFactsJson | DataFactsJson = Field(discriminator="kind")


class HopJson(_Out):
    message: int = Field(description="Index into messages.")
    connection: int
    src: str
    dst: str
    fate: Literal["delivered", "dropped", "lost", "in-flight", "outside"]
    fate_t: float | None
    rule: int | None


class JourneyJson(_Out):
    """One message across every hop it crossed (forwarded by a proxy or relay)."""

    id: int
    protocol: Literal["SIP", "STUN", "TCP"]
    summary: str = Field(description="Its summary on the first hop.")
    sender: str
    received_by: list[str] = Field(description="Actors a hop of it was delivered to.")
    hops: list[HopJson]


class RefusedJson(_Out):
    """A connect that never opened."""

    t: float = Field(description="When it failed: the RST came back, or the client gave up.")
    started: float = Field(description="When it started (its first SYN).")
    client: str
    client_host: str
    server_addr: str
    how: Literal["refused", "timeout", "unreachable"] = Field(
        description="refused: a RST answered (nothing listens, a firewall rejects); timeout: "
        "the SYNs got no answer (a firewall drops them); unreachable: no route."
    )
    reason: str = Field(description="The failure in words, as the connecting actor was told.")


class LogJson(_Out):
    t: float
    actor: str
    level: str
    text: str


class FaultJson(_Out):
    t: float
    action: str = Field(description="dropped, delayed, blocked or cut.")
    rule: str
    number: int = Field(description="The rule's number in the scenario's faults: (1-based).")
    src: str
    dst: str
    connection: int | None
    summary: str


class FaultRuleJson(_Out):
    """One rule of the scenario's faults: and how often it acted."""

    number: int = Field(description="1-based, in the order of faults:.")
    rule: str = Field(description="The rule in words.")
    action: Literal["drop", "delay", "block", "cut"]
    acted: int = Field(description="Messages dropped or delayed, connects blocked, cuts.")
    matched: int | None = Field(
        description="drop and delay: messages the rule matched before nth and probability "
        "chose; cut: connections it was armed on; null for block."
    )
    probability: float
    warning: str | None = Field(description="Why it never acted, in words; null: it acted.")


class RunJson(_Out):
    """A run as ``labsim run --json`` writes it (DESIGN.md, "Contracts other tools rely on").
    Times are seconds from the start of the run; addresses lab addresses as ip:port."""

    model_config = ConfigDict(extra="allow", frozen=True, title="labsim run")

    version: Literal[2] = Field(description="The layout's version (raised on a change).")
    scenario: str
    outcome: str
    diagnosis: Any = Field(description="The diagnosis (verdict, step, evidence, …) or null.")
    connections: list[ConnectionJson]
    messages: list[MessageJson]
    journeys: list[JourneyJson]
    refused: list[RefusedJson]
    logs: list[LogJson]
    faults: list[FaultJson] = Field(description="What each injected fault rule did.")
    fault_rules: list[FaultRuleJson] = Field(
        description="Every rule of the scenario's faults: with how often it acted."
    )
    # Written by `labsim run --json` (absent when a tool calls trace_to_json without them):
    clock: Literal["live", "virtual"] | None = Field(default=None, description="The clock.")
    reason: str | None = Field(default=None, description="The outcome, in one sentence.")
    expected: str | None = Field(default=None, description="The scenario's expected outcome.")
    failures: list[str] | None = Field(
        default=None, description="Expectations not met (empty: the run passed)."
    )


#: Keys of :class:`RunJson` that only ``labsim run`` fills in.
_RUN_EXTRAS = ("clock", "reason", "expected", "failures")


M = TypeVar("M", bound=_Out)


def _copy(model: type[M], record: object, **given: object) -> M:
    """``model`` filled from the trace record's attributes of the same names (addresses as
    ``ip:port``), and ``given``."""
    values = {
        name: str(value) if isinstance(value := getattr(record, name), Address) else value
        for name in model.model_fields
        if name not in given
    }
    return model(**values, **given)


def _facts(record: MessageRecord) -> SipFactsJson | StunFactsJson | DataFactsJson:
    facts = record.facts
    if isinstance(facts, SipFacts):
        values = {f.name: getattr(facts, f.name) for f in dataclasses.fields(facts)}
        values["media"] = list(facts.media)
        return SipFactsJson(**values)
    if isinstance(facts, StunFacts):
        values = {
            f.name: (str(v) if isinstance(v := getattr(facts, f.name), Address) else v)
            for f in dataclasses.fields(facts)
        }
        return StunFactsJson(**values)
    return DataFactsJson(framed=facts.framed, error=facts.error)


def trace_to_json(
    trace: Trace,
    *,
    scenario: str,
    outcome: str,
    diagnosis: object | None = None,
    extra: Mapping[str, object] | None = None,
) -> dict[str, Any]:
    """The run as a JSON-serialisable dict (the layout of :class:`RunJson`).

    ``diagnosis`` may be anything JSON can hold, a dataclass, or an object with a
    ``model_dump()`` (pydantic) or ``to_json()`` method; ``extra`` adds top-level keys."""
    index = {id(m): i for i, m in enumerate(trace.messages)}
    messages = [
        _copy(
            MessageJson,
            m,
            hex=m.data.hex(),
            journey=m.journey.id if m.journey else 0,
            facts=_facts(m),
        )  # fmt: skip
        for m in trace.messages
    ]
    known: dict[str, Any] = {}
    for key, value in (extra or {}).items():
        if key in CORE_KEYS:
            raise ValueError(f"extra key {key!r} would replace the trace's own")
        if key in RunJson.model_fields:
            known[key] = _jsonable(value)  # documented: validated with the rest
    run = RunJson(
        **known,
        version=VERSION,
        scenario=scenario,
        outcome=outcome,
        diagnosis=_jsonable(diagnosis),
        connections=[_copy(ConnectionJson, c) for c in trace.connections.values()],
        messages=messages,
        journeys=[
            JourneyJson(
                id=j.id,
                protocol=j.first.protocol,  # type: ignore[arg-type]
                summary=j.first.summary,
                sender=j.sender,
                received_by=list(dict.fromkeys(h.dst for h in j.hops if h.delivered)),
                hops=[_copy(HopJson, h, message=index[id(h)]) for h in j.hops],
            )
            for j in trace.journeys
        ],
        refused=[_copy(RefusedJson, r, started=r.began) for r in trace.refused],
        logs=[_copy(LogJson, g) for g in trace.logs],
        faults=[_copy(FaultJson, f) for f in trace.faults],
        fault_rules=[
            _copy(FaultRuleJson, r, warning=r.unmatched() or None) for r in trace.fault_rules
        ],
    )
    out: dict[str, Any] = run.model_dump(mode="json")
    for key in _RUN_EXTRAS:
        if key not in known:
            del out[key]
    for key, value in (extra or {}).items():
        if key not in out:
            out[key] = _jsonable(value)
    return out


def json_schema() -> dict[str, Any]:
    """The JSON Schema of :func:`trace_to_json`'s output, generated from :class:`RunJson`."""
    schema = RunJson.model_json_schema(mode="serialization")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


#: Where the schema ships, inside the package (``labsim schema run`` prints it).
SCHEMA_PATH = Path(__file__).with_name("run.schema.json")


def json_text(
    trace: Trace,
    *,
    scenario: str,
    outcome: str,
    diagnosis: object | None = None,
    extra: Mapping[str, object] | None = None,
    indent: int | None = 2,
) -> str:
    """:func:`trace_to_json` as text, ending with a newline (non-ASCII characters as they are:
    write it as UTF-8, as JSON's RFC 8259 says)."""
    data = trace_to_json(trace, scenario=scenario, outcome=outcome, diagnosis=diagnosis,
                         extra=extra)  # fmt: skip
    return json.dumps(data, indent=indent, ensure_ascii=False) + "\n"


def write_json(
    trace: Trace,
    path: Path | str | TextIO | BinaryIO,
    *,
    scenario: str,
    outcome: str,
    diagnosis: object | None = None,
    extra: Mapping[str, object] | None = None,
    indent: int | None = 2,
) -> None:
    """Write :func:`json_text` to ``path``: a file name, or an open file. A binary file (such as
    ``sys.stdout.buffer``) gets UTF-8 whatever the terminal's encoding; a text file gets the
    text as it is."""
    text = json_text(trace, scenario=scenario, outcome=outcome, diagnosis=diagnosis,
                     extra=extra, indent=indent)  # fmt: skip
    if isinstance(path, (str, Path)):
        Path(path).write_text(text, encoding="utf-8")
    elif isinstance(path, io.TextIOBase):
        path.write(text)
    else:
        typing.cast(BinaryIO, path).write(text.encode("utf-8"))


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
