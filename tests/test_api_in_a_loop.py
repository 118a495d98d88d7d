"""The Python API inside a running event loop (Jupyter runs one under every cell): a run on
either clock is a plain call there too (issue 14, part 3)."""

from __future__ import annotations

import asyncio

import pytest

from labsim.run import run_scenario

from .labs import variant


@pytest.mark.parametrize("clock", ["virtual", "live"])
async def test_run_scenario_is_a_plain_call_inside_a_running_loop(clock: str) -> None:
    asyncio.get_running_loop()  # the loop a notebook cell runs in
    result = run_scenario(variant("", hold=0.5), clock)  # type: ignore[arg-type]
    assert result.outcome.name == "sharing-established", result.outcome
    assert result.diagnosis.verdict == "healthy", result.diagnosis.text()
    # The caller's loop kept running: it is not closed, and still schedules work.
    assert await asyncio.sleep(0, result="still running") == "still running"
