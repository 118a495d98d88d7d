"""The ``labsim`` command line.

``labsim decode`` reads STUN/TURN bytes as a capture shows them (hex, with or without the
RFC 4571 length prefix the lab's ICE checks carry) and explains them: the Wireshark Info line,
every attribute in wire order, and, given credentials, whether MESSAGE-INTEGRITY holds.
``labsim run``, ``list`` and ``test`` arrive with the call itself (DESIGN.md, contracts).
"""

from __future__ import annotations

import re
import struct
import sys

import click

from labsim import __version__
from labsim.wire import WireError
from labsim.wire.stun import (
    MAGIC_COOKIE_BYTES,
    ChannelData,
    Message,
    decode_control,
    long_term_key,
    short_term_key,
)


def _parse_hex(words: tuple[str, ...]) -> bytes:
    text = re.sub(r"0x|[\s:,.-]", "", " ".join(words))
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise click.BadParameter(f"not hex: {exc}") from None


def _strip_rfc4571(data: bytes) -> tuple[bytes, bool]:
    """Detect RFC 4571 framing the way Wireshark does: the magic cookie at offset 6."""
    if len(data) >= 10 and data[6:10] == MAGIC_COOKIE_BYTES:
        length = struct.unpack("!H", data[:2])[0]
        if length == len(data) - 2:
            return data[2:], True
    return data, False


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="labsim")
def main() -> None:
    """labsim: the Skype for Business -> CMS screen-share lab, on your laptop."""


@main.command()
@click.argument("hex_bytes", nargs=-1, required=True)
@click.option("--username", help="Long-term credential user (TURN), e.g. turn.")
@click.option("--realm", help="Long-term credential realm, e.g. TANDBERG.")
@click.option("--password", help="TURN password, or the ICE password alone (short-term).")
def decode(
    hex_bytes: tuple[str, ...], username: str | None, realm: str | None, password: str | None
) -> None:
    """Decode one STUN/TURN message or ChannelData frame given as hex.

    Example, the start of the lab's framed ICE check is `00 6c 00 01 00 58 21 12 a4 42 ...`.
    """
    data, framed = _strip_rfc4571(_parse_hex(hex_bytes))
    try:
        frame = decode_control(data)
    except WireError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    if framed:
        click.echo(f"RFC 4571 frame, length {len(data)}")
    click.echo(frame.summary())
    if isinstance(frame, ChannelData):
        click.echo(f"  channel 0x{frame.channel:04x}, {len(frame.data)} bytes of data")
        return
    _explain(frame, username, realm, password)


def _explain(msg: Message, username: str | None, realm: str | None, password: str | None) -> None:
    click.echo(
        f"  type 0x{msg.type:04x} ({msg.method_name}, class {msg.cls.name.lower()}),"
        f" length {len(msg.raw or b'') - 20}, transaction {msg.transaction_id.hex()}"
    )
    for attr, offset in zip(msg.attributes, msg.offsets, strict=True):
        flag = "required" if attr.comprehension_required else "optional"
        click.echo(f"  @{offset:<4} 0x{attr.type:04x} {attr.name:<28} {flag:<8} {attr!r}")
    click.echo(f"  fingerprint: {'good' if msg.verify_fingerprint() else 'absent or bad'}")
    if password is not None:
        if username is not None and realm is not None:
            key, kind = long_term_key(username, realm, password), "long-term"
        else:
            key, kind = short_term_key(password), "short-term"
        verdict = "good" if msg.verify_integrity(key) else "absent or bad"
        click.echo(f"  message-integrity ({kind} key): {verdict}")


if __name__ == "__main__":  # pragma: no cover
    main()
