"""Shared test helpers: vector files and the external tools (tshark, coturn, sipp).

A test that needs an external tool asks for it with :func:`require_tool`. Locally a missing tool
skips the test; under ``CI=true`` it fails, because ``.ci/run`` installs every tool and a
silently skipped interop test proves nothing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

VECTORS = Path(__file__).parent / "vectors"


def load_hex(path: Path | str) -> bytes:
    """A vector file: hex bytes separated by white space; lines starting with # are comments."""
    text = (VECTORS / path).read_text(encoding="utf-8")
    return bytes.fromhex(" ".join(line for line in text.splitlines() if not line.startswith("#")))


def require_tool(name: str) -> str:
    """The tool's path; skip (locally) or fail (under CI=true) when it is missing."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (.ci/run installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


# Under CI the examples are derandomized, so a run is repeatable; locally they vary and explore.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI", "").lower() == "true":
    _hypothesis_settings.load_profile("ci")


# The fuzz tests (tests/test_fuzz.py) record their counts as a user property; the counts of a
# target's shards are summed here, in the controller, so the lines reach the log whether the
# tests ran in this process or in xdist workers (whose own output pytest does not show).
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    totals: dict[str, dict[str, float]] = {}
    captures: list[str] = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "call":
                continue
            for key, value in getattr(report, "user_properties", ()):
                if key == "dumpcap" and isinstance(value, dict) and report.passed:
                    # tests/test_dumpcap.py: a kernel capture compared with labsim's pcap.
                    captures.append(
                        f"dumpcap {report.nodeid.split('[')[-1].rstrip(']')}: "
                        f"{value['connections']} connections, {value['bytes']} bytes equal, "
                        f"{value['packets']} packets captured ({value['segments']} TCP segments), "
                        f"{value['dropped']} dropped"
                    )
                if key == "fuzz" and isinstance(value, dict):
                    total = totals.setdefault(str(value["target"]), {})
                    for field, number in value.items():
                        if isinstance(number, int | float) and field != "shard":
                            total[field] = total.get(field, 0) + number
    if captures:
        terminalreporter.section("dumpcap")
        for line in sorted(captures):
            terminalreporter.write_line(line)
    if not totals:
        return
    terminalreporter.section("fuzz")
    for target, t in totals.items():
        terminalreporter.write_line(
            f"fuzz {target}: inputs={t['inputs']:.0f} typed_errors={t['typed_errors']:.0f} "
            f"accepted={t['accepted']:.0f} escapes={t['escapes']:.0f} slow={t['slow']:.0f} "
            f"known={t['known']:.0f} ({t['seconds']:.1f} s)"
        )
