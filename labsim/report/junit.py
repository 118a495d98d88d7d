"""JUnit XML for ``labsim test``: one test case per scenario, so a CI server shows the fault
library like any test suite. A scenario whose expectations do not hold is a ``failure`` (its
message the expectations, its text the diagnosis); one that could not be run at all is an
``error``: a file that does not load (bad input: the message is its ``file:line``) or a run that
raised (a bug in labsim: the text is the traceback). JUnit tells the two apart the same way:
a failure is the thing under test misbehaving, an error is the test itself not working."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


@dataclass(frozen=True)
class Case:
    name: str
    clock: str
    seconds: float
    failures: tuple[str, ...]
    output: str
    """Outcome and diagnosis, in words."""
    error: str | None = None
    """Why the scenario could not be run (None: it ran); ``failures`` is then empty."""
    error_type: str = ""
    """What kind of error: ``ScenarioError`` for a file that does not load, the exception's
    type for a run that raised."""


def junit_xml(cases: Sequence[Case]) -> ET.Element:
    suite = ET.Element(
        "testsuite",
        name="labsim scenarios",
        tests=str(len(cases)),
        failures=str(sum(bool(c.failures) for c in cases)),
        errors=str(sum(c.error is not None for c in cases)),
        time=f"{sum(c.seconds for c in cases):.3f}",
    )
    for c in cases:
        case = ET.SubElement(
            suite, "testcase", classname=f"labsim.{c.clock}", name=c.name, time=f"{c.seconds:.3f}"
        )
        if c.error is not None:
            first = c.error.splitlines()[0] if c.error else ""
            error = ET.SubElement(case, "error", message=first, type=c.error_type)
            error.text = c.error
        elif c.failures:
            failure = ET.SubElement(case, "failure", message="; ".join(c.failures))
            failure.text = c.output
        if c.output:
            ET.SubElement(case, "system-out").text = c.output
    return suite


def write_junit(cases: Sequence[Case], path: Path | str | BinaryIO) -> None:
    """Write the report to ``path``: a file name, or a binary file open for writing."""
    tree = ET.ElementTree(junit_xml(cases))
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)
