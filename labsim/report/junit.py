"""JUnit XML for ``labsim test``: one test case per scenario, so a CI server shows the fault
library like any test suite (a failure's message is the expectations that did not hold, its
text the diagnosis)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Case:
    name: str
    clock: str
    seconds: float
    failures: tuple[str, ...]
    output: str
    """Outcome and diagnosis, in words."""


def junit_xml(cases: Sequence[Case]) -> ET.Element:
    suite = ET.Element(
        "testsuite",
        name="labsim scenarios",
        tests=str(len(cases)),
        failures=str(sum(bool(c.failures) for c in cases)),
        errors="0",
        time=f"{sum(c.seconds for c in cases):.3f}",
    )
    for c in cases:
        case = ET.SubElement(
            suite, "testcase", classname=f"labsim.{c.clock}", name=c.name, time=f"{c.seconds:.3f}"
        )
        if c.failures:
            failure = ET.SubElement(case, "failure", message="; ".join(c.failures))
            failure.text = c.output
        ET.SubElement(case, "system-out").text = c.output
    return suite


def write_junit(cases: Sequence[Case], path: Path | str) -> None:
    tree = ET.ElementTree(junit_xml(cases))
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)
