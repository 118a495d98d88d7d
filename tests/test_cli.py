"""The labsim command line: its commands, exit codes, streams, encodings and widths (issue 16).

Most tests call the click group in-process (``CliRunner``); what depends on the real process
(an ASCII-only standard output, ``python -m labsim``, a terminal, standard output that is a
pipe) runs ``python -m labsim`` as a subprocess, bounded in time. The wheel is tested in
``test_wheel.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from labsim import cli
from labsim.cli import main
from labsim.report.json_out import SCHEMA_PATH
from labsim.scenario import bundled_names, library_dir, schema_text

from .conftest import load_hex

ROOT = Path(__file__).parent.parent
LAB = library_dir() / "sharing-call.yaml"
FRAMED_CHECK = load_hex("stun/rfc4571-framed-request.hex")
ICE_PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"
#: Environment variables that change how rich and click see a terminal: the subprocess tests
#: decide that themselves (CI systems and test runners export some of these).
TERMINAL_VARS = ("COLUMNS", "LINES", "FORCE_COLOR", "FORCE_TERMINAL", "TTY_COMPATIBLE",
                 "TTY_INTERACTIVE", "NO_COLOR", "PYTHONIOENCODING", "TERM")  # fmt: skip


def env(**extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in TERMINAL_VARS}
    return {**clean, **extra}


def labsim(
    *args: str, cwd: Path | None = None, timeout: float = 120, **extra: str
) -> subprocess.CompletedProcess[bytes]:
    """``python -m labsim ARGS`` in a process of its own, standard output and error piped."""
    return subprocess.run(
        [sys.executable, "-m", "labsim", *args], capture_output=True, timeout=timeout,
        cwd=cwd, env=env(**extra), stdin=subprocess.DEVNULL,
    )  # fmt: skip


# --- decode -------------------------------------------------------------------------------------


def test_decode_framed_lab_check_with_password() -> None:
    result = CliRunner().invoke(main, ["decode", FRAMED_CHECK.hex(), "--password", ICE_PASSWORD])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "RFC 4571 frame, length 108"
    assert lines[1] == "Binding Request user: evtj:h6vY"
    assert "0x8029 ICE-CONTROLLED" in result.output
    assert "fingerprint: good" in result.output
    assert "message-integrity (short-term key): good" in result.output


def test_decode_turn_with_long_term_credentials_and_spaced_hex() -> None:
    spaced = load_hex("stun/turn-connection-bind.hex").hex(" ")
    args = ["decode", *spaced.split(), "--username", "cmsturn", "--realm", "TANDBERG"]
    good = CliRunner().invoke(main, [*args, "--password", "secret"])
    assert good.exit_code == 0, good.output
    assert "ConnectionBind Request user: cmsturn realm: TANDBERG with nonce" in good.output
    assert "message-integrity (long-term key): good" in good.output


def test_decode_a_failed_check_exits_1() -> None:
    """Issue 16 #11: a wrong password used to exit 0 ("absent or bad")."""
    wrong = CliRunner().invoke(main, ["decode", FRAMED_CHECK.hex(), "--password", "wrong"])
    assert wrong.exit_code == 1, wrong.output
    assert "message-integrity (short-term key): bad" in wrong.output
    # No MESSAGE-INTEGRITY to check, when a password asks for one: the check fails too.
    plain = load_hex("stun/turn-allocate-request.hex")
    absent = CliRunner().invoke(main, ["decode", plain.hex(), "--password", "x"])
    assert absent.exit_code == 1, absent.output
    assert "message-integrity (short-term key): absent" in absent.output
    # A FINGERPRINT that does not match its message (the CRC's last byte changed).
    broken = FRAMED_CHECK[:-1] + bytes([FRAMED_CHECK[-1] ^ 1])
    bad = CliRunner().invoke(main, ["decode", broken.hex()])
    assert bad.exit_code == 1 and "fingerprint: bad" in bad.output
    # Without a password, integrity is not checked: nothing failed.
    assert CliRunner().invoke(main, ["decode", FRAMED_CHECK.hex()]).exit_code == 0


def test_decode_reads_standard_input_as_hex_or_raw_bytes() -> None:
    """Issue 16 #11: ``labsim decode -`` used to parse "-" as hex."""
    as_hex = CliRunner().invoke(
        main, ["decode", "-", "--password", ICE_PASSWORD], input=FRAMED_CHECK.hex(" ") + "\n"
    )
    assert as_hex.exit_code == 0, as_hex.output
    assert "Binding Request user: evtj:h6vY" in as_hex.output
    assert "message-integrity (short-term key): good" in as_hex.output
    raw = CliRunner().invoke(main, ["decode", "-"], input=FRAMED_CHECK)
    assert raw.exit_code == 0, raw.output
    assert "RFC 4571 frame, length 108" in raw.output
    assert CliRunner().invoke(main, ["decode", "-"], input=b"").exit_code == 2


def test_decode_shows_bytes_as_hex_not_python_reprs() -> None:
    """Issue 16 #11: MESSAGE-INTEGRITY printed as ``hmac=b'\\x9a…'``."""
    result = CliRunner().invoke(main, ["decode", FRAMED_CHECK.hex()])
    line = next(x for x in result.output.splitlines() if "MESSAGE-INTEGRITY" in x)
    assert "MessageIntegrity(hmac=9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2)" in line
    assert "b'" not in result.output
    verbose = CliRunner().invoke(main, ["decode", FRAMED_CHECK.hex(), "-v"])
    assert "value 9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2" in verbose.output
    quiet = CliRunner().invoke(main, ["decode", FRAMED_CHECK.hex(), "-q"])
    assert quiet.output.splitlines() == ["Binding Request user: evtj:h6vY", "  fingerprint: good"]


def test_decode_bad_input_exits_2() -> None:
    garbage = CliRunner().invoke(main, ["decode", "00010002"])
    assert garbage.exit_code == 2
    assert "STUN header needs 20 bytes" in garbage.output
    assert "Traceback" not in garbage.output
    assert CliRunner().invoke(main, ["decode", "zz"]).exit_code == 2


# --- run ----------------------------------------------------------------------------------------


def test_run_default_scenario_in_virtual_time(tmp_path: Path) -> None:
    out_json = tmp_path / "run.json"
    out_pcap = tmp_path / "run.pcapng"
    result = CliRunner().invoke(
        main,
        ["run", "--clock", "virtual", "--width", "160", "--json", str(out_json), "--pcap",
         str(out_pcap)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    header = result.output.splitlines()[0]
    for actor in ("skype_client", "skype_edge", "expressway_e", "expressway_c", "cms"):
        assert actor in header
    assert "ConnectionBind Success Response" in result.output
    assert "TCP connect 10.48.54.230:" in result.output
    assert "outcome sharing-established" in result.output
    assert "expectations met" in result.output
    data = json.loads(out_json.read_text())
    assert data["scenario"] == "sharing-call" and data["outcome"] == "sharing-established"
    first = data["messages"][0]
    assert {"t", "src", "dst", "protocol", "summary", "connection"} <= set(first)
    assert first["summary"] == "INVITE" and first["protocol"] == "SIP"
    assert out_pcap.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"  # pcapng section header block


def test_run_exit_1_when_the_expectation_does_not_hold(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(f"extends: {LAB}\nexpect:\n  outcome: turn-failed\n")
    result = CliRunner().invoke(main, ["run", str(wrong), "--clock", "virtual", "-q"])
    assert result.exit_code == 1, result.output
    assert "outcome sharing-established" in result.output
    assert "expectation not met: outcome 'sharing-established', expected 'turn-failed'" in (
        result.output
    )
    tested = CliRunner().invoke(main, ["test", str(wrong), "--clock", "virtual"])
    assert tested.exit_code == 1 and "Diagnosis: healthy" not in tested.output
    verbose = CliRunner().invoke(main, ["test", str(wrong), "--clock", "virtual", "-v"])
    assert verbose.exit_code == 1 and "Diagnosis: healthy" in verbose.output
    quiet = CliRunner().invoke(main, ["test", str(wrong), "--clock", "virtual", "-q"])
    assert quiet.output.splitlines() == [
        "wrong: outcome 'sharing-established', expected 'turn-failed'",
        "0 passed, 1 failed",
    ]


def test_run_exit_2_with_file_and_line_for_a_broken_scenario(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: broken\ncall:\n  hold: -1\n")
    result = CliRunner().invoke(main, ["run", str(broken), "--clock", "virtual"])
    assert result.exit_code == 2
    assert f"{broken}:3:" in result.output
    missing = CliRunner().invoke(main, ["run", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2
    assert f"cannot read {tmp_path / 'nope.yaml'}: no such file" in missing.output
    bad_clock = CliRunner().invoke(main, ["run", "--clock", "sundial"])
    assert bad_clock.exit_code == 2
    assert CliRunner().invoke(main, ["run", "--width", "0"]).exit_code == 2
    assert CliRunner().invoke(main, ["run", str(tmp_path)]).exit_code == 2


@pytest.mark.parametrize("option", ["--pcap", "--json"])
def test_an_output_file_that_cannot_be_written_is_bad_input(option: str, tmp_path: Path) -> None:
    """Issue 16 #3: a traceback and exit 1 (the code of "expectations not met")."""
    target = tmp_path / "no-such-folder" / "out"
    result = CliRunner().invoke(main, ["run", "--clock", "virtual", option, str(target)])
    assert result.exit_code == 2, result.output
    assert f"{option} {target}: cannot write: No such file or directory" in result.output
    assert "Traceback" not in result.output
    # Refused before the run: no ladder, no outcome.
    assert "outcome" not in result.output
    # In a real process too (CliRunner catches what escapes).
    real = labsim("run", "--clock", "virtual", "-q", option, str(target), cwd=tmp_path)
    assert real.returncode == 2 and b"Traceback" not in real.stderr
    assert real.stdout == b""


def test_json_dash_writes_json_to_standard_output_and_the_report_to_standard_error(
    tmp_path: Path,
) -> None:
    """Issue 16 #4: ``--json -`` used to write a file named ``-``."""
    result = labsim("run", "--clock", "virtual", "--json", "-", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)  # all of standard output is the JSON
    assert data["version"] == 2 and data["outcome"] == "sharing-established"
    report = result.stderr.decode()
    assert "ConnectionBind Success Response" in report  # the ladder, beside the data
    assert "outcome sharing-established" in report and "expectations met" in report
    assert not (tmp_path / "-").exists()


def test_pcap_dash_writes_the_capture_to_standard_output(tmp_path: Path) -> None:
    result = labsim("run", "--clock", "virtual", "-q", "--pcap", "-", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout[:4] == b"\x0a\x0d\x0d\x0a"
    assert b"expectations met" in result.stderr
    assert not (tmp_path / "-").exists()
    both = CliRunner().invoke(main, ["run", "--clock", "virtual", "--pcap", "-", "--json", "-"])
    assert both.exit_code == 2 and "both name -" in both.output


def test_bundled_names_work_in_run_and_test() -> None:
    """Issue 16 #8: ``labsim test sharing-call`` rejected a name that ``run`` accepts."""
    tested = CliRunner().invoke(main, ["test", "sharing-call", "--clock", "virtual"])
    assert tested.exit_code == 0, tested.output
    assert "1 passed, 0 failed" in tested.output
    with_suffix = CliRunner().invoke(main, ["run", "sharing-call.yaml", "--clock", "virtual", "-q"])
    assert with_suffix.exit_code == 0, with_suffix.output


def test_a_misspelt_name_gets_a_suggestion_and_a_pointer_to_list() -> None:
    """Issue 16 #8: ``labsim run sharing-cal`` said only "cannot read sharing-cal"."""
    for command in ("run", "test", "check"):
        result = CliRunner().invoke(main, [command, "sharing-cal"])
        assert result.exit_code == 2, (command, result.output)
        assert "did you mean sharing-call?" in result.output
        assert "`labsim list` shows the bundled scenarios" in result.output
    far = CliRunner().invoke(main, ["run", "zzzz"])
    assert far.exit_code == 2 and "did you mean" not in far.output
    assert "no scenario file or bundled scenario called 'zzzz'" in far.output


def test_a_name_the_file_system_refuses_is_bad_input() -> None:
    # Path.is_dir() raises OSError (ENAMETOOLONG) for it rather than answering False.
    long = "a" * 5000
    for args in (["run", long], ["test", long], ["check", long + ".yaml"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args[0], result.output[-300:])
        assert "internal error" not in result.output


def test_a_user_file_extends_a_bundled_scenario_from_any_folder(tmp_path: Path) -> None:
    mine = tmp_path / "my-variant.yaml"
    mine.write_text(
        "extends: sharing-call.yaml\nname: my-variant\ncall: {hold: 1}\n"
        "expect: {outcome: sharing-established}\n"
    )
    result = labsim("run", "my-variant.yaml", "--clock", "virtual", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert b"my-variant (virtual clock" in result.stdout


def test_piped_output_is_not_cut_at_80_columns() -> None:
    """Issue 16 #9: rich assumed 80 columns when standard output was no terminal."""
    result = CliRunner().invoke(main, ["run", "--clock", "virtual"])
    assert result.exit_code == 0, result.output
    widths = [len(line) for line in result.output.splitlines() if "│" in line]
    assert max(widths) > 80
    assert max(widths) <= 120  # the ladder's default width
    table = CliRunner().invoke(
        main, ["test", "sharing-call", "presenter-not-allowed", "--clock", "virtual"]
    )
    rows = [line for line in table.output.splitlines() if "presenter-not-allowed" in line]
    # One line per scenario, unwrapped: name, expectation and verdict side by side.
    assert len(rows) == 1 and "call-rejected / presenter-not-allowed" in rows[0]


# --- test ---------------------------------------------------------------------------------------


def test_a_broken_scenario_is_a_junit_error_and_the_rest_still_runs(tmp_path: Path) -> None:
    """Issue 16 #6: one broken file used to stop ``labsim test`` before it wrote anything."""
    folder = tmp_path / "scenarios"
    folder.mkdir()
    (folder / "a-broken.yaml").write_text("name: broken\ncall:\n  hold: -1\n")
    (folder / "b-lab.yaml").write_text("extends: sharing-call.yaml\nclock: virtual\n")
    out = tmp_path / "report.xml"
    result = CliRunner().invoke(main, ["test", str(folder), "--junit", str(out)])
    assert result.exit_code == 2, result.output
    assert f"{folder / 'a-broken.yaml'}:3: call.hold" in result.output
    assert "1 passed, 0 failed, 1 error" in result.output
    suite = ET.parse(out).getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "0", "1")
    broken, lab = suite.iter("testcase")
    assert broken.get("name") == "a-broken" and lab.get("name") == "b-lab"
    error = broken.find("error")
    assert error is not None and error.get("type") == "ScenarioError"
    assert f"{folder / 'a-broken.yaml'}:3:" in (error.get("message") or "")
    assert lab.find("error") is None and lab.find("failure") is None


def test_an_unknown_name_among_others_is_an_error_case(tmp_path: Path) -> None:
    out = tmp_path / "report.xml"
    result = CliRunner().invoke(
        main, ["test", "sharing-call", "sharing-cal", "--clock", "virtual", "--junit", str(out)]
    )
    assert result.exit_code == 2, result.output
    suite = ET.parse(out).getroot()
    assert [c.get("name") for c in suite.iter("testcase")] == ["sharing-call", "sharing-cal"]
    assert suite.get("errors") == "1"


def test_junit_to_standard_output(tmp_path: Path) -> None:
    result = labsim("test", "sharing-call", "--clock", "virtual", "--junit", "-", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    suite = ET.fromstring(result.stdout)
    assert suite.get("tests") == "1"
    assert b"1 passed, 0 failed" in result.stderr


# --- exit codes ---------------------------------------------------------------------------------


def test_an_internal_error_exits_3_with_a_short_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import labsim.run

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(labsim.run, "run_scenario", broken)
    result = CliRunner().invoke(main, ["run", "--clock", "virtual"])
    assert result.exit_code == 3, result.output
    assert "labsim: internal error: ZeroDivisionError: a bug" in result.output
    assert "--verbose" in result.output and "Traceback" not in result.output
    verbose = CliRunner().invoke(main, ["run", "--clock", "virtual", "--verbose"])
    assert verbose.exit_code == 3
    assert "Traceback (most recent call last)" in verbose.output
    # labsim test records it as an error case and runs the rest; exit 3 beats 2 and 1.
    tested = CliRunner().invoke(main, ["test", "sharing-call", "sharing-cal"])
    assert tested.exit_code == 3, tested.output
    assert "internal error: ZeroDivisionError: a bug" in tested.output


def test_ctrl_c_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    import labsim.run

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(labsim.run, "run_scenario", interrupted)
    result = CliRunner().invoke(main, ["run", "--clock", "virtual"])
    assert result.exit_code == 130 and "labsim: interrupted" in result.output


@pytest.mark.parametrize(
    "args",
    [["run", "--clock", "virtual"], ["run", "--clock", "virtual", "--json", "-"], ["list"],
     ["schema"]],
    ids=["ladder", "json", "list", "schema"],
)  # fmt: skip
def test_a_closed_pipe_ends_quietly_with_141(args: list[str], tmp_path: Path) -> None:
    """``labsim run | head``: rich exits 1 on a broken pipe, labsim's "an expectation failed"."""
    read, write = os.pipe()
    os.close(read)  # closed before labsim writes anything: its first write fails
    try:
        result = subprocess.run(
            [sys.executable, "-m", "labsim", *args], stdout=write, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, timeout=120, cwd=tmp_path, env=env(),
        )  # fmt: skip
    finally:
        os.close(write)
    assert result.returncode == cli.EXIT_BROKEN_PIPE == 141, result.stderr
    assert b"Traceback" not in result.stderr and b"Exception ignored" not in result.stderr


def test_the_exit_codes_are_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Exit codes") :]
    for code, constant in [("0", cli.EXIT_OK), ("1", cli.EXIT_FAILED), ("2", cli.EXIT_BAD_INPUT),
                           ("3", cli.EXIT_INTERNAL)]:  # fmt: skip
        assert str(constant) == code
        assert re.search(rf"^\| {code} \|", section, re.M), f"exit code {code} not in README"


# --- one command line ---------------------------------------------------------------------------


def test_check_and_schema_replace_python_m_labsim_scenario(tmp_path: Path) -> None:
    """Issue 16 #12: the same bad file exited 1 there and 2 from ``labsim run``."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("clock: x\n")
    checked = CliRunner().invoke(main, ["check", str(LAB), str(bad)])
    assert checked.exit_code == 2 == CliRunner().invoke(main, ["run", str(bad)]).exit_code
    assert f"{LAB}: ok (sharing-call)" in checked.output
    assert f"{bad}:1: clock:" in checked.output
    assert CliRunner().invoke(main, ["check", "-q", str(LAB)]).output == ""
    assert CliRunner().invoke(main, ["check", str(LAB)]).exit_code == 0
    library = CliRunner().invoke(main, ["check"])  # the bundled library
    assert library.exit_code == 0 and library.output.count(": ok (") == len(bundled_names())
    schema = CliRunner().invoke(main, ["schema"])
    assert schema.exit_code == 0 and schema.output == schema_text()
    assert schema.output == (library_dir() / "schema.json").read_text(encoding="utf-8")
    run_schema = CliRunner().invoke(main, ["schema", "run"])
    assert run_schema.output == SCHEMA_PATH.read_text(encoding="utf-8")
    # The old spelling points at the new one and fails, rather than printing nothing.
    old = subprocess.run(
        [sys.executable, "-m", "labsim.scenario", "--schema"], capture_output=True, timeout=60,
        env=env(),
    )  # fmt: skip
    assert old.returncode == 2 and old.stdout == b""
    assert b"labsim check FILE" in old.stderr and b"labsim schema" in old.stderr


def test_python_m_labsim_is_the_same_command_line(tmp_path: Path) -> None:
    """Issue 16 #2."""
    result = labsim("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().startswith("labsim, version ")
    listed = labsim("list", "-q", cwd=tmp_path)
    assert listed.stdout.decode().split() == bundled_names()


def test_every_command_takes_quiet_and_verbose() -> None:
    for name, command in main.commands.items():
        options = {opt for param in command.params for opt in param.opts}
        assert {"-q", "--quiet", "-v", "--verbose"} <= options, (
            f"labsim {name} lacks --quiet/--verbose: decorate it with labsim.cli.verbosity_options"
        )
    both = CliRunner().invoke(main, ["list", "-q", "-v"])
    assert both.exit_code == 2 and "contradict" in both.output
    before = CliRunner().invoke(main, ["-q", "list"])  # on the group, for any command
    assert before.exit_code == 0 and before.output.split() == bundled_names()


def test_scenario_names_complete_in_the_shell() -> None:
    result = CliRunner().invoke(
        main, [], prog_name="labsim",
        env={"_LABSIM_COMPLETE": "bash_complete", "COMP_WORDS": "labsim run one-way",
             "COMP_CWORD": "2"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "plain,one-way-binding-cms-checks",
        "plain,one-way-binding-skype-answers",
        "file,one-way",  # files too: a scenario of one's own
    ]


# --- list ---------------------------------------------------------------------------------------


def test_list_shows_the_bundled_scenarios() -> None:
    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 0
    line = next(x for x in result.output.splitlines() if x.startswith("sharing-call"))
    assert "Cisco TAC document 212580" in line


def test_list_aligns_every_description() -> None:
    """Issue 16 #13: a name longer than 28 characters pushed its description out of line."""
    lines = CliRunner().invoke(main, ["list"]).output.splitlines()
    assert len(lines) == len(bundled_names())
    starts = {len(line) - len(line.split(None, 1)[1]) for line in lines}
    assert len(starts) == 1, starts
    assert max(map(len, bundled_names())) + 2 == starts.pop()
    verbose = CliRunner().invoke(main, ["list", "-v"]).output
    assert "expects sharing-established; " in verbose


# --- encodings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["run", "one-way-binding-cms-checks", "--clock", "virtual"],
        ["run", "one-way-binding-cms-checks", "--clock", "virtual", "-q"],
        ["test", "one-way-binding-cms-checks", "bye-lost", "--clock", "virtual"],
        ["list"],
        ["decode", FRAMED_CHECK.hex()],
    ],
    ids=["run", "run-quiet", "test", "list", "decode"],
)
def test_an_ascii_terminal_gets_ascii_not_a_crash(args: list[str], tmp_path: Path) -> None:
    """Issue 16 #5: UnicodeEncodeError on the ladder, and under -q on the diagnosis's arrows."""
    result = labsim(*args, cwd=tmp_path, PYTHONIOENCODING="ascii")
    assert result.returncode == 0, result.stderr.decode("ascii", "replace")
    assert b"Traceback" not in result.stderr
    result.stdout.decode("ascii")  # nothing else got through
    result.stderr.decode("ascii")
    if args[0] == "run":
        # The diagnosis's arrows, spelt in ASCII ("cms -> expressway_e").
        assert b"dropped on cms -> expressway_e" in result.stdout
    if args == ["run", "one-way-binding-cms-checks", "--clock", "virtual"]:
        assert b" |" in result.stdout  # the ladder's ASCII lifelines


def test_data_stays_utf8_on_an_ascii_terminal(tmp_path: Path) -> None:
    """JSON and schemas are data: never transliterated, whatever the terminal."""
    ran = labsim("run", "one-way-binding-cms-checks", "--clock", "virtual", "--json", "-",
                 cwd=tmp_path, PYTHONIOENCODING="ascii")  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    data = json.loads(ran.stdout.decode("utf-8"))
    assert "→" in json.dumps(data["diagnosis"], ensure_ascii=False)
    ran.stderr.decode("ascii")  # the report beside it: ASCII
    schema = labsim("schema", "run", cwd=tmp_path, PYTHONIOENCODING="ascii")
    assert schema.stdout == SCHEMA_PATH.read_bytes()


def test_the_ascii_spelling_of_labsims_own_characters() -> None:
    text = "a → b — 64·T1 … ✕ é §5.3"
    assert text.encode("ascii", cli._ASCII_ERRORS) == b"a -> b - 64*T1 ... x e section 5.3"
    assert not cli.unicode_ok(type("S", (), {"encoding": "ascii"})())
    assert cli.unicode_ok(type("S", (), {"encoding": "utf-8"})())


# --- what the docs claim -----------------------------------------------------------------------


def test_the_architecture_says_when_extends_inherits_expect(tmp_path: Path) -> None:
    """Issue 16 #10: docs/architecture.md said ``extends`` never inherits ``expect``; the loader
    inherits it when the child states none (scenarios/README.md says so)."""
    from labsim.scenario import load, loads

    lab = load(LAB).expect
    assert lab.messages  # what a child must not silently keep when it names a new outcome
    silent = loads("extends: sharing-call.yaml\n", source=str(tmp_path / "a.yaml"), base=LAB.parent)
    assert silent.expect == lab
    own = loads("extends: sharing-call.yaml\nexpect: {outcome: ice-failed}\n",
                source=str(tmp_path / "b.yaml"), base=LAB.parent)  # fmt: skip
    assert own.expect.outcome == "ice-failed" and own.expect.messages == []
    text = " ".join((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8").split())
    assert "never inherits `name`, `description` or `expect`" not in text
    assert "takes the parent's `expect` only when the child states none" in text


# --- packaging ----------------------------------------------------------------------------------


def test_aioice_is_no_runtime_dependency() -> None:
    """Issue 16 #14: only the tests and bench/codec.py use it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert not [d for d in project["dependencies"] if d.startswith("aioice")]
    assert [d for d in project["optional-dependencies"]["dev"] if d.startswith("aioice")]
    for path in (ROOT / "labsim").rglob("*.py"):
        assert "aioice" not in path.read_text(encoding="utf-8"), path


def test_the_library_is_package_data() -> None:
    """Found with importlib.resources, through labsim/scenarios (a link to scenarios/)."""
    assert library_dir() == (ROOT / "scenarios").resolve()
    assert (ROOT / "labsim" / "scenarios").resolve() == (ROOT / "scenarios").resolve()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    data = project["tool"]["setuptools"]["package-data"]["labsim"]
    assert {"scenarios/*.yaml", "scenarios/schema.json", "report/run.schema.json"} <= set(data)


def test_setup_installs_once_until_pyproject_changes(tmp_path: Path) -> None:
    """Issue 16 #13: scripts/labsim.sh ran ``pip install -e`` on every call (about 4 s)."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "setup.sh").write_bytes((ROOT / "scripts" / "setup.sh").read_bytes())
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    calls = tmp_path / "calls.log"
    # A stand-in for the venv's python that records what it is asked to do.
    fake = bin_dir / "python"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    (bin_dir / "labsim").write_text("#!/bin/sh\n")
    (bin_dir / "labsim").chmod(0o755)

    def setup() -> list[str]:
        subprocess.run(
            ["bash", "scripts/setup.sh"], cwd=tmp_path, check=True, timeout=60,
            env=env(PYTHON=sys.executable), capture_output=True,
        )  # fmt: skip
        return [line for line in calls.read_text().splitlines() if "pip install" in line]

    assert len(setup()) == 1
    assert len(setup()) == 1  # nothing changed: no second install
    with (tmp_path / "pyproject.toml").open("a") as f:
        f.write("\n# a new dependency, say\n")
    assert len(setup()) == 2


# --- a terminal ---------------------------------------------------------------------------------

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def in_terminal(
    *args: str, stdout_tty: bool, columns: int = 80, timeout: float = 120, cwd: Path | None = None
) -> tuple[int, bytes, bytes]:
    """``python -m labsim ARGS`` with standard error (and, if ``stdout_tty``, standard output)
    on a pseudo-terminal of ``columns`` columns: the exit code, what reached the terminal and
    what reached the standard output pipe."""
    import pty
    import select
    import struct
    import termios
    from fcntl import ioctl

    master, slave = pty.openpty()
    ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "labsim", *args], stdin=subprocess.DEVNULL,
        stdout=slave if stdout_tty else subprocess.PIPE, stderr=slave, cwd=cwd,
        env=env(TERM="xterm"),
    )  # fmt: skip
    os.close(slave)
    out_fd = proc.stdout.fileno() if proc.stdout is not None else -1
    seen: dict[int, list[bytes]] = {master: []}
    if proc.stdout is not None:
        seen[out_fd] = []
    open_fds = set(seen)
    try:
        deadline = time.monotonic() + timeout
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"labsim {' '.join(args)} ran over {timeout} s")
            ready, _, _ = select.select(list(open_fds), [], [], left)
            for fd in ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:  # EIO: the terminal's last writer has gone
                    data = b""
                if data:
                    seen[fd].append(data)
                else:
                    open_fds.discard(fd)
        code = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(master)
        if proc.stdout is not None:
            proc.stdout.close()
    piped = b"".join(seen.get(out_fd, []))
    return code, b"".join(seen[master]), piped


def test_progress_shows_on_a_terminal_and_never_in_a_pipe(tmp_path: Path) -> None:
    """Issue 16 #13: ``labsim test --clock live`` ran for minutes in silence."""
    args = ("test", "sharing-call", "presenter-not-allowed", "--clock", "virtual")
    code, terminal, piped = in_terminal(*args, stdout_tty=False, cwd=tmp_path)
    assert code == 0, terminal
    assert b"2/2" in ANSI.sub(b"", terminal)  # the bar, on standard error's terminal
    assert b"2 passed, 0 failed" in piped and b"\x1b" not in piped
    # Standard error in a pipe (a CI log): no progress at all.
    plain = labsim(*args, cwd=tmp_path)
    assert plain.returncode == 0 and plain.stderr == b""
    # --quiet: none on a terminal either.
    code, terminal, _ = in_terminal(*args, "-q", stdout_tty=False, cwd=tmp_path)
    assert code == 0 and b"2/2" not in terminal
    # A run shows what it is running.
    code, terminal, piped = in_terminal("run", "--clock", "virtual", stdout_tty=False, cwd=tmp_path)
    assert code == 0 and b"running sharing-call (virtual clock)" in ANSI.sub(b"", terminal)
    assert b"expectations met" in piped


def test_labsim_test_fits_an_80_column_terminal(tmp_path: Path) -> None:
    """Issue 16 #9: ``labsim test`` forced 150 columns whatever the terminal."""
    code, terminal, _ = in_terminal(
        "test", "sharing-call", "presenter-not-allowed", "--clock", "virtual", stdout_tty=True,
        columns=80, cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, terminal
    lines = re.split(rb"\r\n|\r|\n", ANSI.sub(b"", terminal))
    assert max(len(line.decode()) for line in lines) <= 80
    assert b"2 passed, 0 failed" in terminal


def test_pcap_dash_refuses_a_terminal(tmp_path: Path) -> None:
    code, terminal, _ = in_terminal(
        "run", "--clock", "virtual", "--pcap", "-", stdout_tty=True, cwd=tmp_path
    )
    assert code == 2
    assert b"standard output is a terminal" in terminal
