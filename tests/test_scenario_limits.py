"""Scenario files are user input (issue 12, hostile input): every time, count and size is
bounded, YAML cannot expand or nest without end, and each such file is a file:line error."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from labsim.cli import main as cli
from labsim.proto.settings import MAX_SECONDS
from labsim.run import run_scenario
from labsim.scenario import (
    MAX_DEPTH,
    MAX_EXTENDS,
    MAX_FILE_BYTES,
    Scenario,
    ScenarioError,
    json_schema,
    load,
    loads,
)
from labsim.wire.facts import has_facts

#: The classic "billion laughs": nine levels of nine aliases, 9**9 strings from 342 bytes.
BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""

#: Five thousand brackets: PyYAML's composer recursed into a RecursionError.
DEEP = "a: " + "[" * 5000 + "]" * 5000 + "\n"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def error_of(path: Path) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        load(path)
    return info.value


@pytest.fixture
def yaml_work(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Counts what PyYAML does during a test: nodes composed, values constructed, mapping pairs
    a merge key (<<) copied; and stops the test once one passes 100,000: a loader that expands
    aliases again fails here in a fraction of a second instead of taking the machine's memory."""
    counts = {"composed": 0, "constructed": 0, "merged": 0}
    bound = 100_000

    def counting(cls: type, name: str, key: str, size: Callable[[Any], int]) -> None:
        original: Callable[..., Any] = getattr(cls, name)

        def counted(self: Any, node: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(self, node, *args, **kwargs)
            counts[key] += size(node)
            assert counts[key] <= bound, f"{key}: more than {bound:,}"
            return result

        monkeypatch.setattr(cls, name, counted)

    def one(_node: Any) -> int:
        return 1

    def pairs(node: Any) -> int:
        return len(node.value)

    counting(yaml.composer.Composer, "compose_node", "composed", one)
    counting(yaml.constructor.BaseConstructor, "construct_object", "constructed", one)
    counting(yaml.constructor.SafeConstructor, "flatten_mapping", "merged", pairs)
    yield counts


# --- times, counts and sizes ---------------------------------------------------------------

BOUNDS = [
    ("deadline: .inf\n", 1, "deadline: Input should be a finite number (got inf)"),
    ("deadline: .nan\n", 1, "deadline: Input should be a finite number (got nan)"),
    ("call:\n  hold: .inf\n", 2, "call.hold: Input should be a finite number (got inf)"),
    ("call:\n  hold: -.inf\n", 2, "call.hold: Input should be a finite number (got -inf)"),
    (
        "actors:\n  skype_client:\n    ice_timeout: .inf\n",
        3,
        "actors.skype_client.ice_timeout: Input should be a finite number (got inf)",
    ),
    ("deadline: 14401\n", 1, "deadline: Input should be less than or equal to 14400 (got 14401)"),
    (
        "call:\n  hold: 1.0e+9\n",
        2,
        "call.hold: Input should be less than or equal to 86400 (got 1000000000.0)",
    ),
    ("latency: 1.0e+300\n", 1, "latency: Input should be less than or equal to 86400"),
    (
        "actors:\n  cms:\n    turn:\n      keepalive_interval: 1.0e-9\n",
        4,
        "actors.cms.turn.keepalive_interval: Input should be greater than or equal to 0.001 "
        "(got 1e-09)",
    ),
    (
        "actors:\n  cms:\n    sip_timers: {t1: 0.0000001}\n",
        3,
        "actors.cms.sip_timers.t1: Input should be greater than or equal to 0.001",
    ),
    (
        "faults:\n  - delay: {sip: INVITE, by: 1.0e+6}\n",
        2,
        "faults[0].delay.by: Input should be less than or equal to 86400",
    ),
    (
        "actors:\n  expressway_e:\n    turn:\n      nonce_lifetime: 0.01\n",
        4,
        "actors.expressway_e.turn.nonce_lifetime: Input should be greater than or equal to 1",
    ),
    (
        "actors:\n  expressway_e:\n    turn: {max_lifetime: 100000}\n",
        3,
        "actors.expressway_e.turn.max_lifetime: Input should be less than or equal to 86400",
    ),
    (
        "actors:\n  cms:\n    refuse_invite: {status: 503, retry_after: 100000}\n",
        3,
        "actors.cms.refuse_invite.retry_after: Input should be less than or equal to 86400",
    ),
    (
        "actors:\n  expressway_e:\n    turn: {max_allocations: 2000000}\n",
        3,
        "actors.expressway_e.turn.max_allocations: Input should be less than or equal to 1000000",
    ),
    (
        "actors:\n  cms:\n    turn: {max_stale_nonce_retries: 10000000}\n",
        3,
        "actors.cms.turn.max_stale_nonce_retries: Input should be less than or equal to 1000000",
    ),
    (
        "actors:\n  expressway_e:\n    turn:\n      early_data_limit: 1000000000000\n",
        4,
        "actors.expressway_e.turn.early_data_limit: Input should be less than or equal to 67108864",
    ),
    (
        "faults:\n  - cut: {from: cms, after_bytes: 99999999999}\n",
        2,
        "faults[0].cut.after_bytes: Input should be less than or equal to 67108864",
    ),
    (
        "expect:\n  messages:\n    - {kind: INVITE, count: 99999999}\n",
        3,
        "expect.messages[0].count: Input should be less than or equal to 1000000",
    ),
    (
        "faults:\n  - drop: {sip: INVITE, connection: 10000000}\n",
        2,
        "faults[0].drop.connection: Input should be less than or equal to 1000000",
    ),
    ("seed: -1\n", 1, "seed: Input should be greater than or equal to 0"),
    # A periodic timer fires deadline / period times: each is bounded, the product too.
    (
        "deadline: 3600\nactors:\n  cms:\n    turn:\n      keepalive_interval: 0.01\n",
        5,
        "actors.cms.turn.keepalive_interval: a keepalive every 0.01 s until the deadline "
        "(3600 s) is 360,000 timer firings, more than the 100,000 a run may fire: lengthen "
        "keepalive_interval or shorten the deadline",
    ),
    (
        "deadline: 14400\nactors:\n  cms:\n    turn: {create_permission: true,\n"
        "      permission_refresh: 0.1}\n",
        5,
        "actors.cms.turn.permission_refresh: a CreatePermission every 0.1 s until the deadline "
        "(14400 s) is 144,000 timer firings",
    ),
]


@pytest.mark.parametrize(("yaml_text", "line", "message"), BOUNDS)
def test_an_unbounded_value_is_reported_at_its_line(
    tmp_path: Path, yaml_text: str, line: int, message: str
) -> None:
    path = write(tmp_path, "bad.yaml", yaml_text)
    error = error_of(path)
    assert (error.path, error.line) == (str(path), line), str(error)
    assert str(error).startswith(f"{path}:{line}: {message}"), str(error)


def test_the_periodic_timer_bound_holds_across_extends(tmp_path: Path) -> None:
    # The parent's keepalive is fine for its deadline; the child's deadline makes it too much,
    # and the interval, written in the parent, is where the error points.
    parent = write(
        tmp_path, "parent.yaml", "actors:\n  cms:\n    turn: {keepalive_interval: 0.1}\n"
    )
    assert load(parent).actors.cms.turn is not None
    child = write(tmp_path, "child.yaml", "extends: parent.yaml\ndeadline: 14400\n")
    error = error_of(child)
    assert (error.path, error.line) == (str(parent), 3)
    assert "until the deadline (14400 s) is 144,000 timer firings" in error.message


def test_the_bounds_allow_what_a_lab_needs() -> None:
    scenario = loads(
        "deadline: 14400\ncall: {hold: 14000}\nlatency: 0\n"
        "actors:\n  cms:\n    turn: {keepalive_interval: 1.0}\n"
        "  expressway_e:\n    turn: {max_allocations: 6000, max_lifetime: 86400}\n"
    )
    assert (scenario.deadline, scenario.call.hold, scenario.latency) == (14400, 14000, 0)
    # 14,400 keepalives: within the bound.
    assert scenario.actors.cms.turn is not None
    assert scenario.actors.cms.turn.keepalive_interval == 1.0


def test_the_defaults_are_within_the_bounds() -> None:
    defaults = Scenario(name="defaults")
    again = Scenario.model_validate_json(defaults.model_dump_json(by_alias=True), strict=True)
    assert again == defaults


def test_max_allocations_0_is_a_full_server_not_a_crash() -> None:
    # A server that holds no allocation answers the Allocate 508 Insufficient Capacity.
    scenario = loads(
        "clock: virtual\nactors:\n  expressway_e:\n    turn: {max_allocations: 0}\n"
        "expect: {outcome: turn-failed}\n"
    )
    result = run_scenario(scenario)
    assert result.passed, result.failures
    errors = [m for m in result.trace.messages if has_facts(m.facts, {"error": 508})]
    assert errors and errors[0].src == "expressway_e"


def _leaves(node: dict[str, Any], path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every numeric key of the schema below ``node``, with its schema."""
    defs = json_schema()["$defs"]
    while "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[-1]]
    for alternative in node.get("anyOf", []):
        yield from _leaves(alternative, path)
    if node.get("type") == "object":
        for key, value in node.get("properties", {}).items():
            yield from _leaves(value, (*path, key))
    elif node.get("type") == "array":
        for item in [node.get("items"), *node.get("prefixItems", [])]:
            if item is not None:
                yield from _leaves(item, (*path, "[]"))
    elif node.get("type") in ("number", "integer"):
        yield path, node


#: Numbers that need no upper bound, and why.
UNBOUNDED = {
    # A seed only seeds random.Random: no time, count or size.
    "seed",
    # Checked in TurnServerSettings.__post_init__ (1-127, RFC 5389 §15.8).
    "nonce_length",
}


def test_every_number_a_scenario_sets_is_bounded_above() -> None:
    # A new time, count or size without a maximum fails here.
    unbounded = {
        ".".join(path)
        for path, node in _leaves(json_schema(), ())
        if not {"maximum", "exclusiveMaximum", "enum"} & set(node) and path[-1] not in UNBOUNDED
    }  # fmt: skip
    assert unbounded == set()


#: Every time a scenario sets outside lists: (path, whether 0 is allowed).
TIME_KEYS = sorted(
    {
        path
        for path, node in _leaves(json_schema(), ())
        if node.get("type") == "number"
        and "[]" not in path
        and path[-1] != "probability"
        # The keys under an optional section that needs a key of its own (refuse_invite needs a
        # status) are left out: the section would fail for the missing key.
        and not {"refuse_invite", "refuse_reinvite", "nat"} & set(path)
    }
)


def _at(scenario: object, path: tuple[str, ...]) -> Any:
    for key in path:
        scenario = getattr(scenario, key)
    return scenario


def _nested(path: tuple[str, ...], value: object) -> dict[str, Any]:
    data: Any = value
    for key in reversed(path):
        data = {key: data}
    return dict(data)


@settings(max_examples=300, deadline=None)
@given(
    path=st.sampled_from(TIME_KEYS),
    value=st.floats(allow_nan=True, allow_infinity=True) | st.integers(),
)
def test_any_number_for_a_time_loads_bounded_or_fails_typed(
    path: tuple[str, ...], value: float | int
) -> None:
    text = yaml.safe_dump(_nested(path, value))
    try:
        scenario = loads(text, source="time.yaml")
    except ScenarioError as exc:
        assert exc.path == "time.yaml" and exc.line >= 1
        return
    loaded = _at(scenario, path)
    assert isinstance(loaded, float) and math.isfinite(loaded)
    assert 0 <= loaded <= MAX_SECONDS


def test_the_time_keys_are_found() -> None:
    assert ("deadline",) in TIME_KEYS and ("call", "hold") in TIME_KEYS
    assert ("actors", "cms", "turn", "keepalive_interval") in TIME_KEYS
    assert ("actors", "skype_client", "sip_timers", "t1") in TIME_KEYS


# --- YAML --------------------------------------------------------------------------------------


def test_the_alias_bomb_fails_at_its_line_after_a_bounded_number_of_nodes(
    tmp_path: Path, yaml_work: dict[str, int]
) -> None:
    path = write(tmp_path, "laughs.yaml", BILLION_LAUGHS)
    assert len(path.read_bytes()) < 400
    error = error_of(path)
    # d's nine aliases of c (820 values each) are the first to pass 10,000 values.
    assert str(error) == (
        f"{path}:5: YAML: the alias *d expands the file to more than 10,000 values; a scenario "
        "needs far fewer"
    )
    # The loader stopped while composing: a node per line's event, nothing built.
    assert yaml_work["composed"] < 100
    assert yaml_work["constructed"] == 0


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (DEEP, 1, "YAML: nested more than 32 levels deep; a scenario needs about 8"),
        # Indented block lists: each '-' one more level.
        (
            "a:\n" + "".join(" " * n + "-\n" for n in range(40)),
            MAX_DEPTH + 1,
            "YAML: nested more than 32 levels deep",
        ),
        # Aliases nest what they name: 3 x 20 levels from three 20-level lists.
        (
            "a: &a "
            + "[" * 20
            + "]" * 20
            + "\nb: &b "
            + "[" * 19
            + "*a"
            + "]" * 19
            + "\nc: "
            + "[" * 19
            + "*b"
            + "]" * 19
            + "\n",
            2,
            "YAML: nested more than 32 levels deep",
        ),
        # Merge keys copy mappings: nine merges of nine merges of ...
        (
            "a: &a {k1: 1, k2: 2, k3: 3, k4: 4, k5: 5, k6: 6, k7: 7, k8: 8, k9: 9}\n"
            + "".join(
                f"{n}: &{n} {{<<: [{', '.join([f'*{p}'] * 9)}]}}\n"
                for p, n in zip("abcdefgh", "bcdefghi", strict=True)
            ),
            4,
            "YAML: the alias *c expands the file to more than 10,000 values",
        ),
        (
            "faults: [" + "{}, " * 10_000 + "]\n",
            1,
            "YAML: the file holds more than 10,000 values; a scenario needs far fewer",
        ),
        ("a: &a [1, *a]\n", 1, "an alias refers to a node that contains it"),
        ("a: &a {b: *a}\n", 1, "an alias refers to a node that contains it"),
        ("a: *nowhere\n", 1, "YAML: found undefined alias 'nowhere'"),
    ],
    ids=[
        "flow",
        "block",
        "aliases",
        "merge-keys",
        "values",
        "recursive-list",
        "recursive-mapping",
        "undefined",
    ],
)
def test_yaml_that_expands_or_nests_too_far(
    tmp_path: Path, yaml_work: dict[str, int], text: str, line: int, message: str
) -> None:
    path = write(tmp_path, "bad.yaml", text)
    error = error_of(path)
    assert str(error).startswith(f"{path}:{line}: {message}"), str(error)
    assert yaml_work["constructed"] == 0


def test_a_file_larger_than_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    line = "description: " + "x" * 99 + "\n"  # 113 bytes
    path.write_text(line * (MAX_FILE_BYTES // len(line) + 1), encoding="utf-8")
    error = error_of(path)
    assert (error.path, error.line) == (str(path), MAX_FILE_BYTES // len(line) + 1)
    assert error.message == "more than 1,048,576 bytes; not a scenario"
    with pytest.raises(ScenarioError, match="more than 1,048,576 bytes"):
        loads(path.read_text(encoding="utf-8"))


def test_a_file_at_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "padded.yaml"
    text = "name: padded\n"
    path.write_text(text + "#" * (MAX_FILE_BYTES - len(text)), encoding="utf-8")
    assert len(path.read_bytes()) == MAX_FILE_BYTES
    assert load(path).name == "padded"


def test_an_extends_chain_longer_than_the_limit(tmp_path: Path) -> None:
    write(tmp_path, "s0.yaml", "deadline: 5\n")
    for n in range(1, MAX_EXTENDS + 2):
        write(tmp_path, f"s{n}.yaml", f"extends: s{n - 1}.yaml\n")
    assert load(tmp_path / f"s{MAX_EXTENDS}.yaml").deadline == 5
    error = error_of(tmp_path / f"s{MAX_EXTENDS + 1}.yaml")
    # s17's 17th ancestor is one too many: reported where s1 names it.
    assert (error.path, error.line) == (str(tmp_path / "s1.yaml"), 1)
    assert error.message == f"extends: more than {MAX_EXTENDS} ancestors in a row"


# --- through the CLI -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (BILLION_LAUGHS, ":5: YAML: the alias *d expands"),
        (DEEP, ":1: YAML: nested more than 32 levels deep"),
        ("clock: virtual\ncall: {hold: .inf}\n", ":2: call.hold: Input should be a finite number"),
    ],
    ids=["alias-bomb", "deep", "inf"],
)
def test_labsim_run_exits_2_with_file_and_line(
    tmp_path: Path, yaml_work: dict[str, int], text: str, where: str
) -> None:
    path = write(tmp_path, "hostile.yaml", text)
    result = CliRunner().invoke(cli, ["run", str(path), "--clock", "virtual"])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert result.output.startswith(f"{path}{where}"), result.output
    assert "Traceback" not in result.output
