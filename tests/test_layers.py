"""DESIGN.md's layer rules, enforced: no IO and no clock below labsim/net, imports point down."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent / "labsim"
FORBIDDEN_BELOW_NET = {"asyncio", "socket", "selectors", "time", "simpy", "trio", "threading"}
# Which labsim packages each layer may import (DESIGN.md, layers).
ALLOWED = {
    "wire": {"wire"},
    "proto": {"wire", "proto"},
    "actors": {"wire", "proto", "actors"},
    "trace.py": {"wire"},
    # Renderers read the trace only (DESIGN.md: the trace is the truth); they do no socket IO
    # and read no clock either (timestamps come from the trace).
    "report": {"report", "trace", "wire", "vocabulary"},
    # The scenario validates straight into the settings types the actors and protocol machines
    # own (each default written once, beside its code), so it may import them.
    "scenario.py": {"wire", "vocabulary", "proto", "actors"},
    "vocabulary.py": set(),
}


def imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def sans_io_modules() -> list[Path]:
    return [
        p for layer in ALLOWED if not layer.endswith(".py")
        for p in sorted((ROOT / layer).rglob("*.py"))
    ] + [ROOT / layer for layer in ALLOWED if layer.endswith(".py")]  # fmt: skip


def test_the_scan_finds_modules() -> None:
    assert len(sans_io_modules()) >= 4  # wire: errors, stun, framing, sip, sdp ...


@pytest.mark.parametrize("path", sans_io_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_io_or_clock_and_imports_point_down(path: Path) -> None:
    layer = path.relative_to(ROOT).parts[0]
    for lineno, module in imports(path):
        top = module.split(".")[0]
        assert top not in FORBIDDEN_BELOW_NET, f"{path}:{lineno} imports {module}"
        if top == "labsim" and module != "labsim":
            sub = module.split(".")[1]
            assert sub in ALLOWED[layer], f"{path}:{lineno}: {layer} may not import {module}"


def test_the_checker_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom asyncio import sleep\n")
    assert [m for _, m in imports(bad)] == ["time", "asyncio"]


def summary_uses(path: Path) -> list[tuple[int, str]]:
    """Places in ``path`` that compare or parse a message's summary: ``x.summary`` as an
    operand of a comparison (``==``, ``in``), the receiver of a method (``.startswith``,
    ``.split``) or subscripted."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and node.attr == "summary"):
            continue
        parent = parents.get(node)
        if isinstance(parent, ast.Compare) and all(
            isinstance(op, ast.Is | ast.IsNot) for op in parent.ops
        ):
            continue  # "is None": whether there is one, not what it says
        if isinstance(parent, ast.Compare | ast.Subscript) or (
            isinstance(parent, ast.Attribute) and parent.value is node
        ):
            found.append((node.lineno, ast.unparse(parent)))
    return sorted(found)


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_code_compares_or_parses_a_summary(path: Path) -> None:
    """Summaries are for people; code compares typed facts (labsim.wire.facts)."""
    assert summary_uses(path) == []


def test_the_summary_check_catches_a_comparison(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "a = [m for m in ms if m.summary.startswith('Binding')]\n"
        "b = m.summary == 'INVITE'\nc = 'x' in m.summary\nd = m.summary.split(' ')[0]\n"
        "ok = f'{m.summary}'\n"
    )
    assert [line for line, _ in summary_uses(bad)] == [1, 2, 3, 4]
