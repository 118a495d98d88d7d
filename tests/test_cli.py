"""The labsim command line: decode, run, list."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from labsim.cli import main

from .conftest import load_hex


def test_decode_framed_lab_check_with_password() -> None:
    framed = load_hex("stun/rfc4571-framed-request.hex").hex()
    result = CliRunner().invoke(main, ["decode", framed, "--password", "VOkJxbRl1RmTxUk/WvJxBt"])
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
    assert "ConnectionBind Request user: cmsturn realm: TANDBERG with nonce" in good.output
    assert "message-integrity (long-term key): good" in good.output
    bad = CliRunner().invoke(main, [*args, "--password", "wrong"])
    assert "message-integrity (long-term key): absent or bad" in bad.output


def test_decode_garbage_is_a_clear_error() -> None:
    result = CliRunner().invoke(main, ["decode", "00010002"])
    assert result.exit_code == 1
    assert "STUN header needs 20 bytes" in result.output
    result = CliRunner().invoke(main, ["decode", "zz"])
    assert result.exit_code == 2


LAB = Path(__file__).parent.parent / "scenarios" / "sharing-call.yaml"


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


def test_run_exit_2_with_file_and_line_for_a_broken_scenario(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: broken\ncall:\n  hold: -1\n")
    result = CliRunner().invoke(main, ["run", str(broken), "--clock", "virtual"])
    assert result.exit_code == 2
    assert f"{broken}:3:" in result.output
    missing = CliRunner().invoke(main, ["run", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2
    bad_clock = CliRunner().invoke(main, ["run", "--clock", "sundial"])
    assert bad_clock.exit_code == 2


def test_list_shows_the_bundled_scenarios() -> None:
    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 0
    line = next(x for x in result.output.splitlines() if x.startswith("sharing-call"))
    assert "Cisco TAC document 212580" in line
