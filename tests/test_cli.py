"""The labsim command line (decode, for now)."""

from __future__ import annotations

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
