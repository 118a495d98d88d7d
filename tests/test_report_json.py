"""labsim.report.json_out: the JSON other tools read (DESIGN.md, "Contracts other tools rely
on")."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import ValidationError

from labsim.report.json_out import SCHEMA_PATH, RunJson, json_schema, trace_to_json, write_json
from labsim.trace import Trace
from labsim.wire.address import Address
from labsim.wire.framing import frame_rfc4571

from .test_report_pcap import ALLOCATE, CHECK, ERROR_401, run_lab

CMS = Address("10.48.54.230", 44342)
EXPE = Address("10.48.54.229", 3478)


def small_trace() -> Trace:
    trace = Trace()
    trace.opened(0.25, 1, "cms", CMS, "expressway_e", EXPE)
    trace.sent(0.5, 1, True, ALLOCATE, "stun")
    trace.sent(0.75, 1, False, ERROR_401, "stun")
    trace.sent(1.0, 1, False, frame_rfc4571(CHECK) + bytes(400), "raw")
    trace.log(1.1, "cms", "giving up", "warning")
    trace.refuse(1.2, "cms", CMS.host, Address(EXPE.host, 24000), "refused", started=1.1)
    trace.closed(1.5, 1, "expressway_e", reset=True)
    return trace


def test_shape_and_values() -> None:
    data = trace_to_json(small_trace(), scenario="sharing-call", outcome="sharing-failed")
    assert list(data) == [
        "version", "scenario", "outcome", "diagnosis", "connections", "messages", "journeys",
        "refused", "logs", "faults", "fault_rules",
    ]  # fmt: skip
    assert (data["version"], data["scenario"], data["outcome"], data["diagnosis"]) == (
        2, "sharing-call", "sharing-failed", None
    )  # fmt: skip
    assert data["connections"] == [{
        "id": 1, "name": "cms/1", "client": "cms", "server": "expressway_e",
        "client_addr": "10.48.54.230:44342", "server_addr": "10.48.54.229:3478",
        "opened": 0.25, "closed": 1.5, "reset": True, "closed_by": "expressway_e",
    }]  # fmt: skip
    first, second, relayed, raw = data["messages"]
    facts = first["facts"]
    assert {k: v for k, v in first.items() if k != "facts"} == {
        "t": 0.5, "src": "cms", "dst": "expressway_e", "protocol": "STUN",
        "summary": "Allocate Request TCP lifetime: 600", "connection": 1,
        "src_addr": "10.48.54.230:44342", "dst_addr": "10.48.54.229:3478", "framing": "stun",
        "size": 44, "wire_size": 44, "relayed": False, "error": None, "hex": ALLOCATE.hex(),
        "journey": 1, "hop": 0, "sent_t": 0.5, "fate": "in-flight", "fate_t": None,
        "rule": None, "delay": 0.0,
    }  # fmt: skip
    assert (facts["kind"], facts["method"], facts["cls"], facts["lifetime"]) == (
        "stun", "Allocate", "Request", 600
    )  # fmt: skip
    assert second["src"] == "expressway_e" and second["facts"]["error"] == 401
    # A relay's write: the framed check is a message of its own, the rest opaque data.
    assert relayed["relayed"] is True and relayed["facts"]["method"] == "Binding"
    assert relayed["hex"] == CHECK.hex() and relayed["wire_size"] == len(CHECK) + 2
    assert raw["protocol"] == "TCP" and raw["size"] == 400 and raw["hex"] == bytes(256).hex()
    assert raw["facts"] == {"kind": "data", "framed": False, "error": None}
    assert [j["hops"][0]["message"] for j in data["journeys"]] == [0, 1, 2, 3]
    assert data["refused"] == [{
        "t": 1.2, "started": 1.1, "client": "cms", "client_host": "10.48.54.230",
        "server_addr": "10.48.54.229:24000", "how": "refused", "reason": "refused",
    }]  # fmt: skip
    assert data["logs"] == [{"t": 1.1, "actor": "cms", "level": "warning", "text": "giving up"}]
    RunJson.model_validate(data)


def test_the_shipped_schema_is_generated_from_the_model() -> None:
    assert json.loads(SCHEMA_PATH.read_text(encoding="utf-8")) == json_schema(), (
        "labsim/report/run.schema.json is stale: labsim schema run > labsim/report/run.schema.json"
    )


def test_the_schema_rejects_what_the_layout_does_not_allow() -> None:
    data = trace_to_json(small_trace(), scenario="s", outcome="o")
    data["messages"][0]["fate"] = "vanished"
    with pytest.raises(ValidationError, match="fate"):
        RunJson.model_validate(data)


def test_errors_are_reported() -> None:
    trace = Trace()
    trace.opened(0.0, 1, "cms", CMS, "expressway_e", EXPE)
    trace.sent(0.1, 1, True, b"GET / HTTP/1.1\r\n\r\n", "stun")
    (message,) = trace_to_json(trace, scenario="s", outcome="o")["messages"]
    assert message["protocol"] == "TCP" and message["error"]


@dataclass
class Diagnosis:
    code: str
    peer: Address
    evidence: list[int]


class PydanticLike:
    def model_dump(self) -> dict[str, object]:
        return {"code": "one-way-binding", "raw": b"\x01\x02"}


@pytest.mark.parametrize(
    ("diagnosis", "expected"),
    [
        ("one-way-binding", "one-way-binding"),
        (Diagnosis("no-relay", Address("10.48.54.229", 24000), [3, 4]),
         {"code": "no-relay", "peer": "10.48.54.229:24000", "evidence": [3, 4]}),
        (PydanticLike(), {"code": "one-way-binding", "raw": "0102"}),
        (object, str(object)),
    ],
)  # fmt: skip
def test_diagnosis_of_any_kind_becomes_json(diagnosis: object, expected: object) -> None:
    data = trace_to_json(Trace(), scenario="s", outcome="o", diagnosis=diagnosis)
    assert data["diagnosis"] == expected
    assert json.loads(json.dumps(data)) == data


def test_extra_keys_are_added_but_never_replace_the_trace() -> None:
    data = trace_to_json(Trace(), scenario="s", outcome="o", extra={"clock": "virtual"})
    assert data["clock"] == "virtual"
    with pytest.raises(ValueError, match="messages"):
        trace_to_json(Trace(), scenario="s", outcome="o", extra={"messages": []})


def test_real_flow_round_trips_through_json(tmp_path: Path) -> None:
    trace, _ = run_lab()
    path = tmp_path / "run.json"
    write_json(trace, path, scenario="sharing-call", outcome="sharing-established",
               diagnosis=None, extra={"clock": "virtual"})  # fmt: skip
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data == trace_to_json(
        trace, scenario="sharing-call", outcome="sharing-established", extra={"clock": "virtual"}
    )
    messages = data["messages"]
    decoded = [(m["summary"], m["src"], m["dst"]) for m in messages if m["protocol"] != "TCP"]
    assert decoded == trace.sequence()
    assert {m["protocol"] for m in messages} == {"STUN"}  # the relays carry only checks
    assert all(m["fate"] == "delivered" for m in messages)
    RunJson.model_validate(data)
    assert all(m["connection"] in {c["id"] for c in data["connections"]} for m in messages)
    times = [m["t"] for m in messages]
    assert times == sorted(times) and times[0] > 0
    binds = [
        m
        for m in messages
        if (m["facts"]["method"], m["facts"]["cls"]) == ("ConnectionBind", "Request")
    ]
    assert len(binds) == 1 and bytes.fromhex(binds[0]["hex"])[:2] == b"\x00\x0b"
    assert sum(m["relayed"] for m in messages) >= 4
    buffer = io.StringIO()  # a text file object works too
    write_json(trace, buffer, scenario="sharing-call", outcome="sharing-established",
               extra={"clock": "virtual"}, indent=None)  # fmt: skip
    assert json.loads(buffer.getvalue()) == data


def test_renderers_read_only_the_trace() -> None:
    """DESIGN.md: the report layer imports ``trace`` (and the ``wire`` codecs it is made of),
    never the runtimes, protocol machines or actors."""
    from .test_layers import ROOT, imports

    modules = sorted((ROOT / "report").glob("*.py"))
    names = {"__init__.py", "pcap.py", "ladder.py", "json_out.py"}
    assert names <= {p.name for p in modules}
    for path in modules:
        for lineno, module in imports(path):
            parts = module.split(".")
            if parts[0] == "labsim" and len(parts) > 1:
                assert parts[1] in {"trace", "wire", "report", "vocabulary"}, (
                    f"{path}:{lineno}: {module}"
                )
