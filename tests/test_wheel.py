"""labsim as a user installs it: the wheel, in a fresh virtual environment, used from a folder of
one's own (issue 16 #1: ``pip install .`` shipped no scenarios and no schema).

The wheel is built from a copy of the source tree (the build writes ``build/`` and
``*.egg-info`` beside the sources, and the checkout is shared with the other tests), installed
with its dependencies by pip from the index pip is configured with (PyPI on a CI machine), so
the test also proves the runtime dependencies are complete without the test tools (aioice
among them). Every subprocess is bounded in time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
#: Building and installing fetch from the package index; generous, but bounded.
INSTALL_TIMEOUT = 600
RUN_TIMEOUT = 120
#: What the build does not need (and must not see: a stale build/ would leak into the wheel).
NOT_SOURCES = shutil.ignore_patterns(
    ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".mypy_cache", ".ruff_cache",
    ".pytest_cache", ".hypothesis", "tests", "bench", "notebooks", "out", "*.pcapng", "*.pcap",
)  # fmt: skip


def _env() -> dict[str, str]:
    # Nothing of the checkout on the path, and no terminal: the installed package alone.
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "COLUMNS", "FORCE_COLOR", "PYTHONIOENCODING")
    return {k: v for k, v in os.environ.items() if k not in drop}


def _run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return result


#: Building and installing take 30 s here, more on a cold CI machine (pip fetches setuptools
#: and the dependencies): one test, so parallel workers never build the wheel twice.
pytestmark = pytest.mark.timeout(2 * INSTALL_TIMEOUT + 10 * RUN_TIMEOUT)


def install(tmp: Path) -> Path:
    """The bin/ folder of a fresh venv in ``tmp`` with labsim's wheel installed."""
    source = tmp / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=NOT_SOURCES)
    wheels = tmp / "wheels"
    build = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheels),
         str(source)],
        tmp, INSTALL_TIMEOUT,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    [wheel] = wheels.glob("labsim-*.whl")
    venv = tmp / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)], tmp, INSTALL_TIMEOUT)
    assert made.returncode == 0, made.stderr
    pip = _run([str(venv / "bin" / "python"), "-m", "pip", "install", str(wheel)], tmp,
               INSTALL_TIMEOUT)  # fmt: skip
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return venv / "bin"


def test_the_wheel_in_a_fresh_venv_from_a_folder_of_ones_own(tmp_path: Path) -> None:
    installed = install(tmp_path)
    elsewhere = tmp_path / "my-lab"  # far from the checkout, as a user's folder would be
    elsewhere.mkdir()
    labsim, python = str(installed / "labsim"), str(installed / "python")

    # The installed package, not the checkout; and the test tools stay out of a user's
    # install: labsim runs without them.
    where = _run([python, "-c", "import labsim; print(labsim.__file__)"], elsewhere, RUN_TIMEOUT)
    assert Path(where.stdout.strip()).is_relative_to(installed.parent), where
    assert _run([python, "-c", "import aioice"], elsewhere, RUN_TIMEOUT).returncode != 0

    # labsim list: the bundled library.
    listed = _run([labsim, "list", "-q"], elsewhere, RUN_TIMEOUT)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == sorted(p.stem for p in (ROOT / "scenarios").glob("*.yaml"))
    by_module = _run([python, "-m", "labsim", "list", "-q"], elsewhere, RUN_TIMEOUT)
    assert by_module.stdout == listed.stdout

    # labsim run and labsim test, by bundled name.
    ran = _run([labsim, "run", "sharing-call", "--clock", "virtual", "--json", "run.json"],
               elsewhere, RUN_TIMEOUT)  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "outcome sharing-established" in ran.stdout and (elsewhere / "run.json").exists()
    tested = _run([labsim, "test", "one-way-binding-cms-checks", "--clock", "virtual"],
                  elsewhere, RUN_TIMEOUT)  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "1 passed, 0 failed" in tested.stdout

    # A user's file that extends a bundled scenario.
    (elsewhere / "my-variant.yaml").write_text(
        "extends: sharing-call.yaml\nname: my-variant\ncall: {hold: 1}\n"
        "faults:\n  - drop: {from: expressway_e, to: skype_edge, stun: Binding Request}\n"
        "expect: {outcome: ice-failed, diagnosis: one-way-binding}\n"
    )
    mine = _run([labsim, "run", "my-variant.yaml", "--clock", "virtual", "-q"], elsewhere,
                RUN_TIMEOUT)  # fmt: skip
    assert mine.returncode == 0, mine.stdout + mine.stderr
    assert "Diagnosis: one-way-binding" in mine.stdout
    checked = _run([labsim, "check", "my-variant.yaml"], elsewhere, RUN_TIMEOUT)
    assert checked.returncode == 0 and "my-variant.yaml: ok (my-variant)" in checked.stdout

    # The schemas ship inside the package, and labsim schema prints what ships.
    shipped = _run(
        [python, "-c",
         "import importlib.resources as r; f = r.files('labsim');"
         "print((f / 'scenarios' / 'schema.json').read_text(encoding='utf-8'), end='');"
         "print('\\0', end='');"
         "print((f / 'report' / 'run.schema.json').read_text(encoding='utf-8'), end='')"],
        elsewhere, RUN_TIMEOUT,
    )  # fmt: skip
    assert shipped.returncode == 0, shipped.stderr
    scenario_schema, run_schema = shipped.stdout.split("\0")
    assert scenario_schema == (ROOT / "scenarios" / "schema.json").read_text(encoding="utf-8")
    assert _run([labsim, "schema"], elsewhere, RUN_TIMEOUT).stdout == scenario_schema
    assert _run([labsim, "schema", "run"], elsewhere, RUN_TIMEOUT).stdout == run_schema
