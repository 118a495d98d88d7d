"""Variants of the lab for tests: the lab scenario plus a few YAML lines, run and checked."""

from __future__ import annotations

from pathlib import Path

from labsim.run import Clock, RunResult, run_scenario
from labsim.scenario import Scenario, loads

LAB = Path(__file__).parent.parent / "scenarios" / "sharing-call.yaml"


def variant(extra: str = "", *, hold: float | None = None, name: str = "variant.yaml") -> Scenario:
    """The lab with ``extra`` YAML lines (``hold``: the call's hold time, when given)."""
    head = f"extends: {LAB}\n" + (f"call: {{hold: {hold}}}\n" if hold is not None else "")
    return loads(head + extra, source=name)


def run_variant(extra: str, outcome: str, clock: Clock = "virtual") -> RunResult:
    """Run a variant that expects ``outcome`` and check it met every expectation."""
    result = run_scenario(variant(f"{extra}\nexpect: {{outcome: {outcome}}}\n"), clock)
    assert result.outcome.name == outcome, result.outcome
    assert result.failures == [], result.failures
    return result
