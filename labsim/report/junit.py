"""JUnit XML for ``labsim test``: one test case per scenario, so a CI server shows the fault
library like any test suite (a failure's message is the expectation that did not hold, its
text the diagnosis)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the report layer reads results; it does not run scenarios
    from labsim.run import RunResult


def junit_xml(results: Sequence[RunResult]) -> ET.Element:
    failures = sum(not r.passed for r in results)
    suite = ET.Element(
        "testsuite",
        name="labsim scenarios",
        tests=str(len(results)),
        failures=str(failures),
        errors="0",
        time=f"{sum(r.wall for r in results):.3f}",
    )
    for r in results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"labsim.{r.clock}",
            name=r.scenario.name,
            time=f"{r.wall:.3f}",
        )
        if not r.passed:
            failure = ET.SubElement(case, "failure", message="; ".join(r.failures))
            failure.text = r.diagnosis.text()
        out = ET.SubElement(case, "system-out")
        out.text = f"outcome: {r.outcome.name} - {r.outcome.reason}\n{r.diagnosis.text()}\n"
    return suite


def write_junit(results: Sequence[RunResult], path: Path | str) -> None:
    tree = ET.ElementTree(junit_xml(results))
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)
