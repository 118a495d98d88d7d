"""Scenarios: the bundled lab file, extends, and every mistake reported as file:line."""

from __future__ import annotations

import ast
import dataclasses
import json
import textwrap
import types
import typing
from pathlib import Path
from typing import Annotated, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel, TypeAdapter

from labsim.actors.lab import (
    CallSettings,
    CmsSettings,
    ExpresswayCSettings,
    ExpresswayESettings,
    Lab,
    SkypeClientSettings,
    SkypeEdgeSettings,
)
from labsim.proto.settings import SETTINGS_CONFIG
from labsim.proto.sip_ua_state import SipTimers
from labsim.proto.turn_client import TurnClientSettings
from labsim.proto.turn_server import TurnServerSettings
from labsim.run import build
from labsim.scenario import (
    ACTOR_NAMES,
    LAB_REACHABILITY,
    Actors,
    Scenario,
    ScenarioError,
    first_sentence,
    json_schema,
    library_dir,
    list_scenarios,
    load,
    loads,
)

SHARING_CALL = library_dir() / "sharing-call.yaml"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def error_of(path: Path) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        load(path)
    return info.value


# --- the bundled lab -------------------------------------------------------------------------


def test_the_lab_file_restates_the_defaults() -> None:
    lab = load(SHARING_CALL)
    defaults = Scenario()
    assert lab.name == "sharing-call"
    assert lab.extends is None
    assert (lab.clock, lab.deadline, lab.latency) == ("live", 20.0, 0.0005)
    assert lab.actors == Actors() == defaults.actors
    assert lab.call == CallSettings() == defaults.call
    assert lab.reachability == list(LAB_REACHABILITY) == defaults.reachability
    assert lab.faults == [] and lab.links == []
    assert lab.actors.expressway_e.address == "10.48.54.229"
    assert lab.actors.expressway_e.turn.realm == "TANDBERG"
    assert lab.actors.skype_edge.relay_port == 53577
    assert lab.actors.cms.turn == TurnClientSettings()
    assert lab.actors.cms.turn is not None and lab.actors.cms.turn.lifetime == 600


def test_the_lab_file_expects_the_lab_capture() -> None:
    expect = load(SHARING_CALL).expect
    assert expect.outcome == "sharing-established"
    seen = [(m.kind, m.src, m.dst, m.present) for m in expect.messages]
    assert seen == [
        ("Allocate Request", "cms", "expressway_e", True),
        ("ConnectionAttempt Indication", "expressway_e", "cms", True),
        ("ConnectionBind Success Response", "expressway_e", "cms", True),
        ("Binding Indication", "cms", "expressway_e", True),
        ("CreatePermission Request", None, None, False),
    ]


def test_the_lab_file_names_its_schema() -> None:
    first = SHARING_CALL.read_text(encoding="utf-8").splitlines()[0]
    assert first == "# yaml-language-server: $schema=schema.json"


def test_list_scenarios_finds_the_lab_with_its_first_sentence() -> None:
    found = {path.name: scenario for path, scenario in list_scenarios()}
    assert "schema.json" not in found
    lab = found["sharing-call.yaml"]
    assert first_sentence(lab.description) == (
        "The lab of Cisco TAC document 212580: a Skype for Business client shares its screen "
        "into a Cisco Meeting Server meeting through the Skype Edge, Expressway-E and "
        "Expressway-C."
    )


def test_list_scenarios_of_another_folder(tmp_path: Path) -> None:
    write(tmp_path, "b.yaml", "description: Second.\n")
    write(tmp_path, "a.yaml", "description: First one. More.\n")
    (tmp_path / "notes.txt").write_text("not a scenario")
    listed = [(p.name, s.name, first_sentence(s.description)) for p, s in list_scenarios(tmp_path)]
    assert listed == [("a.yaml", "a", "First one."), ("b.yaml", "b", "Second.")]


@pytest.mark.parametrize(
    ("text", "sentence"),
    [
        ("One. Two.", "One."),
        ("Folded\n  over lines. Next.", "Folded over lines."),
        ("Uses e.g. a relay on X8.9 at 10.48.54.229. Then more.", None),
        ("No full stop", "No full stop"),
        ("Why? Because.", "Why?"),
        ("", ""),
    ],
)
def test_first_sentence(text: str, sentence: str | None) -> None:
    expected = "Uses e.g. a relay on X8.9 at 10.48.54.229." if sentence is None else sentence
    assert first_sentence(text) == expected


# --- extends ---------------------------------------------------------------------------------


def test_a_child_overrides_one_nested_value(tmp_path: Path) -> None:
    write(
        tmp_path,
        "parent.yaml",
        """
        name: parent
        description: The parent. It sets a deadline.
        deadline: 9
        actors:
          cms:
            turn: {username: turn, password: secret, lifetime: 300}
        faults:
          - drop: {from: cms}
        expect:
          outcome: sharing-established
          messages: [{summary: Allocate Request}]
        """,
    )
    child = write(
        tmp_path,
        "wrong-password.yaml",
        """
        extends: parent.yaml
        actors:
          cms:
            turn:
              password: wrong
        """,
    )
    scenario = load(child)
    assert scenario.actors.cms.turn is not None
    assert scenario.actors.cms.turn.password == "wrong"
    # Everything else comes from the parent, siblings of the overridden key included ...
    assert scenario.actors.cms.turn.username == "turn"
    assert scenario.actors.cms.turn.lifetime == 300
    assert scenario.deadline == 9
    assert [f.model_dump(exclude_defaults=True, by_alias=True) for f in scenario.faults] == [
        {"drop": {"from": "cms"}}
    ]
    assert [m.summary for m in scenario.expect.messages] == ["Allocate Request"]
    # ... except its identity.
    assert scenario.name == "wrong-password"
    assert scenario.description == ""
    assert scenario.extends == "parent.yaml"


def test_lists_and_expect_are_replaced_whole(tmp_path: Path) -> None:
    write(
        tmp_path,
        "parent.yaml",
        """
        faults: [{drop: {from: cms}}, {drop: {from: skype_edge}}]
        expect:
          outcome: sharing-established
          messages: [{summary: ConnectionBind Success Response}]
        """,
    )
    child = write(
        tmp_path,
        "child.yaml",
        """
        extends: parent.yaml
        faults: [{block: {from: cms, to: expressway_e}}]
        expect: {outcome: turn-failed}
        """,
    )
    scenario = load(child)
    assert [f.model_dump(exclude_defaults=True, by_alias=True) for f in scenario.faults] == [
        {"block": {"from": "cms", "to": "expressway_e"}}
    ]
    assert scenario.expect.outcome == "turn-failed"
    assert scenario.expect.messages == []


def test_extends_chains_and_reaches_the_bundled_lab_by_name(tmp_path: Path) -> None:
    # Not in tmp_path: found in the bundled library.
    write(tmp_path, "middle.yaml", "extends: sharing-call.yaml\nclock: virtual\n")
    leaf = write(tmp_path, "leaf.yaml", "extends: middle.yaml\ncall: {hold: 1.5}\n")
    scenario = load(leaf)
    assert (scenario.clock, scenario.call.hold, scenario.name) == ("virtual", 1.5, "leaf")
    assert scenario.actors.skype_edge.address == "192.168.1.252"
    assert scenario.expect == load(SHARING_CALL).expect


def test_loads_resolves_extends_against_base(tmp_path: Path) -> None:
    write(tmp_path, "p.yaml", "deadline: 3\n")
    scenario = loads("extends: p.yaml\n", base=tmp_path)
    assert scenario.deadline == 3
    assert scenario.name == "scenario"
    named = loads("extends: p.yaml\n", source=str(tmp_path / "from-text.yaml"))
    assert named.name == "from-text" and named.deadline == 3


# --- errors: file:line -----------------------------------------------------------------------


def test_yaml_syntax_error_has_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "syntax.yaml", "name: x\ncall:\n  hold: [1, 2\nclock: live\n")
    error = error_of(path)
    assert (error.path, error.line) == (str(path), 4)
    assert str(error).startswith(f"{path}:4: YAML: ")


def test_unknown_key_is_reported_at_the_key_with_a_suggestion(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "typo.yaml",
        """
        actors:
          cms:
            turn:
              lifetime: 600
              lifetme: 60
        """,
    )
    error = error_of(path)
    assert error.line == 5
    assert str(error) == (
        f"{path}:5: unknown key 'lifetme' in actors.cms.turn; did you mean 'lifetime'?"
    )


def test_unknown_key_with_a_block_value_is_reported_at_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "block.yaml", "actors:\n  cmss:\n    address: 10.0.0.1\n")
    assert str(error_of(path)) == (f"{path}:2: unknown key 'cmss' in actors; did you mean 'cms'?")


def test_unknown_top_level_key_lists_what_is_known(tmp_path: Path) -> None:
    path = write(tmp_path, "top.yaml", "name: x\n\nzzz: 1\n")
    error = error_of(path)
    assert error.line == 3
    assert "unknown key 'zzz' in the scenario; known keys: name, description, extends" in str(error)


@pytest.mark.parametrize(
    ("yaml_text", "line", "message"),
    [
        ("clock: lve\n", 1, "clock: Input should be 'live' or 'virtual' (got 'lve')"),
        (
            "name: x\ndeadline: 0\n",
            2,
            "deadline: Input should be greater than or equal to 0.001 (got 0)",
        ),
        # Quoted numbers are strings: YAML typed them, nothing is coerced.
        ("deadline: '20'\n", 1, "deadline: Input should be a valid number (got '20')"),
        (
            "actors:\n  cms:\n    address: 10.48.54.300\n",
            3,
            "actors.cms.address: not an IPv4 address in dotted form",
        ),
        (
            "actors:\n  skype_edge:\n    sip_port: 70000\n",
            3,
            "actors.skype_edge.sip_port: Input should be less than or equal to 65535",
        ),
        (
            "actors:\n  expressway_e:\n    turn:\n      relay_ports:\n"
            "        - 3000\n        - 2000\n",
            6,
            "actors.expressway_e.turn.relay_ports[1]: the range ends (2000) below its start",
        ),
        ("latency: -1\n", 1, "latency: Input should be greater than or equal to 0"),
        (
            "links:\n  - between: [cms, expressway_e]\n    latency: 0.1\n"
            "  - between: [expressway_e, cms]\n    latency: 0.2\n",
            4,
            "links[1].between: links[0] already sets the latency between these actors",
        ),
        ("links:\n  - between: [cms, nobody]\n    latency: 1\n", 2, "links[0].between[1]: Input"),
        ("links:\n  - between: [cms, skype_edge]\n", 2, "links[0]: missing latency"),
        (
            "reachability:\n  - [cms, expressway_e]\n  - [skype_client, expressway]\n",
            3,
            "reachability[1][1]: Input should be 'skype_client'",
        ),
        (
            "expect:\n  messages:\n    - summary: INVITE\n      from: cms\n      to: somebody\n",
            5,
            "expect.messages[0].to: Input should be",
        ),
        (
            "expect:\n  messages:\n    - summary: INVITE\n      present: false\n      count: 2\n",
            5,
            "expect.messages[0].count: present: false contradicts count: 2",
        ),
        ("expect:\n  outcome: fine\n", 2, "expect.outcome: Input should be 'sharing-established'"),
        (
            "call:\n  check_layout_skype:\n    - USERNAME\n    - PRIORTY\n",
            4,
            "call.check_layout_skype[1]: 'PRIORTY' is not a STUN attribute labsim knows; "
            "did you mean PRIORITY?",
        ),
        (
            "call:\n  check_layout_cms: [USERNAME, USERNAME]\n",
            2,
            "call.check_layout_cms[1]: USERNAME is listed twice",
        ),
        (
            "actors:\n  cms:\n    address: 10.48.54.229\n",
            3,
            "actors.cms.address: 10.48.54.229 is already expressway_e's address",
        ),
        (
            "actors:\n  expressway_e:\n    traversal_port: 3478\n",
            3,  # at the port written, not at turn.port, a default
            "actors.expressway_e.traversal_port: traversal_port and turn.port are both port 3478",
        ),
        (
            "actors:\n  expressway_e:\n    turn:\n      relay_ports: [5100, 6000]\n"
            "    sip_port: 5060\n    traversal_port: 5500\n",
            4,
            "actors.expressway_e.turn.relay_ports: the relay range 5100-6000 holds "
            "traversal_port 5500",
        ),
        (
            "actors:\n  cms:\n    ice_pwd: short\n",
            3,
            "actors.cms.ice_pwd: 'short' is not 22-256 ice-chars (letters, digits, + and /; RFC",
        ),
        (
            "actors:\n  skype_client:\n    direct_path: 1\n",
            3,
            "actors.skype_client.direct_path: Input should be a valid boolean (got 1)",
        ),
        ("faults: {drop: x}\n", 1, "faults: Input should be a valid list"),
        (
            "faults:\n  - drop: {from: cms, to: expressway_e,\n           stun: Bindng Request}\n",
            3,
            "faults[0].drop.stun: 'Bindng Request' names no STUN message kind: expected a STUN "
            "method with an optional class (Binding Request, Allocate Error Response); did you "
            "mean 'Binding'?",
        ),
        (
            "expect:\n  messages:\n    - kind: Allocate Request\n      facts: {lifetim: 600}\n",
            4,
            "expect.messages[0].facts.lifetim: STUN messages have no fact 'lifetim'; did you "
            "mean lifetime?",
        ),
        (
            "expect:\n  messages:\n    - {summary: 'Allocate Request TCP lifetime: 600'}\n",
            3,
            "expect.messages[0].summary: 'Allocate Request TCP lifetime: 600': after the STUN "
            "method 'Allocate' expected",
        ),
        (
            "faults:\n  - delay: {sip: 99 Trying, by: 1}\n",
            2,
            "faults[0].delay.sip: '99 Trying' names no SIP message kind",
        ),
        (
            "faults:\n  - drop: {stun: Allocate Answer}\n",
            2,
            "faults[0].drop.stun: 'Allocate Answer': after the STUN method 'Allocate' expected",
        ),
    ],
)
def test_wrong_values_are_reported_at_their_line(
    tmp_path: Path, yaml_text: str, line: int, message: str
) -> None:
    path = write(tmp_path, "bad.yaml", yaml_text)
    error = error_of(path)
    assert (error.path, error.line) == (str(path), line), str(error)
    assert str(error).startswith(f"{path}:{line}: {message}"), str(error)


def test_several_mistakes_are_all_reported_in_line_order(tmp_path: Path) -> None:
    path = write(tmp_path, "many.yaml", "deadline: -1\nclock: x\ncall: {hold: no}\n")
    error = error_of(path)
    assert [line.split(": ")[0] for line in str(error).splitlines()] == [
        f"{path}:1",
        f"{path}:2",
        f"{path}:3",
    ]
    assert [other.line for other in error.others] == [2, 3]


def test_duplicate_keys_are_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "dup.yaml", "call:\n  hold: 1\n  bye_from: cms\n  hold: 2\n")
    assert str(error_of(path)) == f"{path}:4: duplicate key 'hold' (first at line 2)"


def test_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "merge.yaml",
        """
        x-defaults: &turn {username: turn, password: secret}
        """,
    )
    # Unknown top-level keys stay errors, even as anchors' homes ...
    assert error_of(path).line == 1
    merged = write(
        tmp_path,
        "merged.yaml",
        """
        actors:
          cms:
            turn: &t {username: turn, password: secret}
          skype_client: {user: "sip:bob@skype.lab"}
        faults:
          - drop: &hop {from: cms, to: expressway_e, stun: Binding Request}
          - delay: {<<: *hop, stun: Binding Success Response, by: 0.5}
        """,
    )
    # ... while a << merge and a key overriding it are fine.
    delay = load(merged).faults[1].delay
    assert delay is not None
    assert (delay.src, delay.dst, delay.stun, delay.by) == (
        "cms",
        "expressway_e",
        "Binding Success Response",
        0.5,
    )


def test_a_key_that_yaml_reads_as_a_boolean(tmp_path: Path) -> None:
    path = write(tmp_path, "on.yaml", "faults:\n  - on: cms\n")
    assert str(error_of(path)) == f"{path}:2: key True is not a string (quote it)"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("", 1, "the file is empty"),
        ("# only a comment\n", 1, "the file is empty"),
        ("- a\n- b\n", 1, "a scenario is a mapping of keys (name, actors, call, ...), not a list"),
        (
            "# a comment\n\njust text\n",
            3,
            "a scenario is a mapping of keys (name, actors, call, ...), not",
        ),
    ],
)
def test_a_file_that_is_not_a_mapping(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path, "odd.yaml", text)
    assert str(error_of(path)).startswith(f"{path}:{line}: {message}")


def test_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    assert str(error_of(path)).startswith(f"{path}:1: cannot read {path}: ")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: x\ndescription: caf\xe9\n")
    assert str(error_of(path)).startswith(f"{path}:2: not UTF-8 text")


def test_a_missing_extends_file(tmp_path: Path) -> None:
    path = write(tmp_path, "child.yaml", "name: child\nextends: nowhere.yaml\n")
    error = error_of(path)
    assert (error.path, error.line) == (str(path), 2)
    assert "extends: no scenario file nowhere.yaml" in error.message


def test_extends_must_be_a_path(tmp_path: Path) -> None:
    path = write(tmp_path, "child.yaml", "extends: [a.yaml]\n")
    assert str(error_of(path)) == f"{path}:1: extends: expected the path of a scenario file"


def test_an_extends_cycle(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", "extends: b.yaml\n")
    b = write(tmp_path, "b.yaml", "name: b\n\nextends: a.yaml\n")
    error = error_of(a)
    # The loop closes in b.yaml, at its extends line.
    assert (error.path, error.line) == (str(b), 3)
    assert error.message == "extends: cycle a.yaml -> b.yaml -> a.yaml"
    self_loop = write(tmp_path, "self.yaml", "extends: self.yaml\n")
    assert str(error_of(self_loop)) == f"{self_loop}:1: extends: cycle self.yaml -> self.yaml"


def test_an_error_in_the_parent_is_reported_in_the_parent(tmp_path: Path) -> None:
    parent = write(
        tmp_path,
        "parent.yaml",
        """
        name: parent
        actors:
          cms:
            turn:
              lifetime: soon
              keepalive_frist: 5
        """,
    )
    child = write(tmp_path, "child.yaml", "extends: parent.yaml\ncall: {hold: x}\n")
    error = error_of(child)
    # The child's own mistake first, then the parent's, each in its own file.
    assert [str(e).split(": ")[0] for e in (error, *error.others)] == [
        f"{child}:2",
        f"{parent}:5",
        f"{parent}:6",
    ]
    assert "actors.cms.turn.lifetime: Input should be a valid integer" in str(error.others[0])
    assert "did you mean 'keepalive_first'?" in str(error.others[1])


def test_an_overridden_bad_value_in_the_parent_is_no_error(tmp_path: Path) -> None:
    write(tmp_path, "parent.yaml", "actors:\n  cms:\n    address: 300.1.1.1\n")
    child = write(
        tmp_path, "child.yaml", "extends: parent.yaml\nactors: {cms: {address: 10.0.0.9}}\n"
    )
    assert load(child).actors.cms.address == "10.0.0.9"


def test_a_yaml_error_in_the_parent(tmp_path: Path) -> None:
    parent = write(tmp_path, "parent.yaml", "call:\n  hold: 1\n bye_from: cms\n")
    child = write(tmp_path, "child.yaml", "extends: parent.yaml\n")
    error = error_of(child)
    assert (error.path, error.line) == (str(parent), 3)
    assert error.message.startswith("YAML: ")


def test_loads_names_its_source() -> None:
    with pytest.raises(ScenarioError) as info:
        loads("clock: never\n", source="inline.yaml")
    assert str(info.value).startswith("inline.yaml:1: clock:")
    with pytest.raises(ScenarioError) as info:
        loads("a: [\n")
    assert str(info.value).startswith("<string>:2: YAML: ")


def test_scenario_error_is_a_value_error() -> None:
    error = ScenarioError("f.yaml", 7, "bad")
    assert isinstance(error, ValueError)
    assert (str(error), error.path, error.line, error.message) == (
        "f.yaml:7: bad",
        "f.yaml",
        7,
        "bad",
    )


# --- the model -------------------------------------------------------------------------------


def test_network_helpers() -> None:
    scenario = loads(
        "latency: 0.001\nlinks: [{between: [skype_edge, expressway_e], latency: 0.04}]\n"
    )
    assert scenario.link_latency("expressway_e", "skype_edge") == 0.04
    assert scenario.link_latency("cms", "expressway_c") == 0.001
    assert scenario.can_connect("cms", "expressway_e")
    assert not scenario.can_connect("expressway_e", "cms")
    assert not scenario.can_connect("skype_client", "expressway_e")
    direct = loads("actors: {skype_client: {direct_path: true}}\n")
    assert direct.can_connect("skype_client", "expressway_e")


def test_actor_names_are_the_five() -> None:
    assert ACTOR_NAMES == ("skype_client", "skype_edge", "expressway_e", "expressway_c", "cms")
    assert set(Actors.model_fields) == set(ACTOR_NAMES)


def test_every_field_has_a_description() -> None:
    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            if "properties" in node:
                for key, prop in node["properties"].items():
                    assert prop.get("description"), f"{where}.{key} has no description"
            for key, value in node.items():
                walk(value, f"{where}.{key}")

    walk(json_schema(), "schema")


# --- the JSON Schema -------------------------------------------------------------------------


def test_the_schema_file_is_up_to_date() -> None:
    committed = (library_dir() / "schema.json").read_text(encoding="utf-8")
    assert committed == json.dumps(json_schema(), indent=2) + "\n", (
        "scenarios/schema.json is stale; regenerate it with "
        "`.venv/bin/labsim schema > scenarios/schema.json`"
    )


def test_the_schema_uses_yaml_keys_and_forbids_unknown_ones() -> None:
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "labsim scenario"
    assert schema["additionalProperties"] is False
    assert "default" not in schema["properties"]["name"]
    message = schema["$defs"]["MessageExpect"]["properties"]
    assert {"from", "to"} <= set(message)
    layout = schema["$defs"]["CallSettings"]["properties"]["check_layout_cms"]["items"]
    assert "MS-IMPLEMENTATION-VERSION" in layout["enum"]


# --- one settings model ------------------------------------------------------------------------
#
# The scenario's actors: and call: sections ARE the settings types the actors and protocol
# machines own (labsim.actors.lab, labsim.proto.settings): a default is written once, in the
# dataclass, and these tests fail when a second copy appears.

SECTIONS = {
    "skype_client": SkypeClientSettings,
    "skype_edge": SkypeEdgeSettings,
    "expressway_e": ExpresswayESettings,
    "expressway_c": ExpresswayCSettings,
    "cms": CmsSettings,
}


def settings_types() -> list[type]:
    """Every settings type the scenario reaches under actors: and call:, nested ones too."""
    found: list[type] = []
    todo: list[object] = [*SECTIONS.values(), CallSettings]
    while todo:
        tp = todo.pop()
        if get_origin(tp) is Annotated:
            todo.append(get_args(tp)[0])
        elif get_origin(tp) is not None or isinstance(tp, types.UnionType):
            todo += get_args(tp)
        elif dataclasses.is_dataclass(tp) and isinstance(tp, type) and tp not in found:
            found.append(tp)
            hints = typing.get_type_hints(tp, include_extras=True)
            todo += [hints[f.name] for f in dataclasses.fields(tp)]
    return found


def test_the_sections_are_the_actors_own_settings_types() -> None:
    for name, cls in SECTIONS.items():
        field = Actors.model_fields[name]  # (pydantic keeps a validator in field.metadata)
        assert (field.annotation, field.default_factory) == (cls, cls), f"actors.{name}"
    call = Scenario.model_fields["call"]
    assert (call.annotation, call.default_factory) == (CallSettings, CallSettings)
    assert Scenario().lab() == Lab()
    assert {f.name for f in dataclasses.fields(Lab)} == {*ACTOR_NAMES, "call"}
    # Every type under them is a stdlib dataclass of the lower layers, never a pydantic model
    # written again in labsim.scenario.
    types_ = settings_types()
    assert {TurnServerSettings, TurnClientSettings, SipTimers} <= set(types_)
    for tp in types_:
        assert not issubclass(tp, BaseModel) and tp.__module__.startswith(
            ("labsim.actors.", "labsim.proto.")
        ), tp
        assert tp.__pydantic_config__ is SETTINGS_CONFIG, tp  # type: ignore[attr-defined]


def test_every_default_the_scenario_shows_is_the_dataclass_default() -> None:
    defs = json_schema()["$defs"]
    for tp in settings_types():
        props = defs[tp.__name__]["properties"]
        for field in dataclasses.fields(tp):
            assert field.name in props, f"{tp.__name__}.{field.name} is not a scenario key"
            if "default" in props[field.name]:
                default = json.loads(json.dumps(field.default, default=list))
                assert props[field.name]["default"] == default, f"{tp.__name__}.{field.name}"
    # And the default scenario builds exactly the defaults.
    lab = Scenario().lab()
    for name, cls in SECTIONS.items():
        assert getattr(lab, name) == cls()


def test_no_settings_default_is_written_again_in_the_scenario_or_run() -> None:
    """A default copied into scenario.py or run.py (a second model, a translation) is a
    second place to keep equal; the distinctive ones (text: addresses, URIs, credentials)
    must not appear there at all."""
    fields = [field for tp in settings_types() for field in dataclasses.fields(tp)]
    hints = [hint for tp in settings_types() for hint in typing.get_type_hints(tp).values()]
    # Key names and the words of a choice (bye_from: skype_client) are vocabulary, not values.
    words = {field.name for field in fields} | {
        arg for hint in hints for arg in get_args(hint) if isinstance(arg, str)
    }
    defaults = {field.default for field in fields if isinstance(field.default, str)} - words - {""}
    assert {"10.48.54.229", "TANDBERG", "sip:meeting@cms.lab", "secret"} <= defaults
    labsim = Path(__file__).parent.parent / "labsim"
    for module in ("scenario.py", "run.py"):
        tree = ast.parse((labsim / module).read_text(encoding="utf-8"))
        constants = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
        assert not constants & defaults, f"{module} repeats {sorted(constants & defaults)}"


def written(data: object, settings: object, where: str) -> None:
    """Every value written in ``data`` (a scenario file's mapping) is in ``settings``."""
    if isinstance(data, dict) and dataclasses.is_dataclass(settings):
        for key, value in data.items():
            written(value, getattr(settings, key), f"{where}.{key}")
    elif isinstance(data, list):
        items = list(settings)  # type: ignore[call-overload]
        assert len(items) == len(data), where
        for index, (item, value) in enumerate(zip(data, items, strict=True)):
            written(item, value, f"{where}[{index}]")
    else:
        assert settings == data, where


@pytest.mark.parametrize("path", sorted(library_dir().glob("*.yaml")), ids=lambda p: p.stem)
def test_library_scenario_round_trips_through_the_settings(path: Path) -> None:
    scenario = load(path)
    lab = scenario.lab()
    # What the file writes is what the actors get (sections the file does not write come from
    # the scenario it extends, itself a library scenario).
    own = yaml.safe_load(path.read_text(encoding="utf-8"))
    written(own.get("actors", {}), lab, "actors")
    written(own.get("call", {}), lab.call, "call")
    # The settings, written back as YAML, load as the same settings.
    dumped = {
        "actors": {name: TypeAdapter(cls).dump_python(getattr(lab, name), mode="json")
                   for name, cls in SECTIONS.items()},
        "call": TypeAdapter(CallSettings).dump_python(lab.call, mode="json"),
    }  # fmt: skip
    again = loads(yaml.safe_dump(dumped, sort_keys=False), source=f"<{path.stem} dumped>")
    assert again.lab() == lab


def test_sip_timers_reach_the_user_agents() -> None:
    scenario = loads("actors: {cms: {sip_timers: {t1: 0.25, t2: 2.0}}}\n")
    cast = build(scenario)
    assert cast.cms.timers == SipTimers(0.25, 2.0) and cast.cms.timers.timer_b == 16.0
    assert cast.skype_client.timers == SipTimers()


def test_sip_timers_out_of_order_are_reported_at_the_key_written(tmp_path: Path) -> None:
    path = write(tmp_path, "t.yaml", "actors:\n  skype_client:\n    sip_timers:\n      t2: 0.1\n")
    assert str(error_of(path)) == (
        f"{path}:4: actors.skype_client.sip_timers.t2: SIP timers need 0 < T1 <= T2 "
        "(T1=0.5, T2=0.1)"
    )


@pytest.mark.parametrize(
    ("reinvite_from", "cms", "client"),
    [
        ("controlling", True, False),
        ("skype_client", False, True),
        ("both", True, True),
        ("none", False, False),
    ],
)
def test_reinvite_from_decides_which_end_sends_it(
    reinvite_from: str, cms: bool, client: bool
) -> None:
    cast = build(loads(f"call: {{reinvite_from: {reinvite_from}}}\n"))
    assert (cast.cms.sends_reinvite, cast.skype_client.sends_reinvite) == (cms, client)
