"""The ``labsim`` command line.

``labsim decode`` reads STUN/TURN bytes as a capture shows them (hex, with or without the
RFC 4571 length prefix the lab's ICE checks carry) and explains them: the Wireshark Info line,
every attribute in wire order, and, given credentials, whether MESSAGE-INTEGRITY holds.
``labsim run SCENARIO`` runs the call (live sockets or virtual time), prints the ladder and the
outcome, and writes the capture and the JSON when asked; ``labsim list`` shows the bundled
scenarios. Exit codes follow DESIGN.md's contract: 0 when the scenario's expectations hold, 1
when they do not, 2 for a bad command line or scenario file.
"""

from __future__ import annotations

import re
import struct
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

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


def _scenario_path(text: str) -> Path:
    """A file name, or the name of a bundled scenario (``sharing-call``)."""
    from labsim.scenario import library_dir

    path = Path(text)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    bundled = library_dir() / f"{text}.yaml"
    return bundled if bundled.exists() else path


@main.command()
@click.argument("scenario", default="sharing-call")
@click.option(
    "--clock", type=click.Choice(["live", "virtual"]), help="Override the scenario's clock."
)
@click.option("--pcap", "pcap_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the run as a pcapng capture (lab addresses).")  # fmt: skip
@click.option("--capture-at", "capture_at", metavar="ACTOR[,ACTOR…]",
              help="Capture --pcap at these actors' interfaces (one pcapng interface each) "
              "rather than on every leg; overrides the scenario's capture.at.")  # fmt: skip
@click.option("--json", "json_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the run as JSON (scenario, outcome, messages …).")  # fmt: skip
@click.option("--no-data", is_flag=True, help="Leave opaque relayed TCP data out of the ladder.")
@click.option("--no-logs", is_flag=True, help="Leave the actors' notes out of the ladder.")
@click.option("--quiet", "-q", is_flag=True, help="Print the outcome only, no ladder.")
@click.option("--width", type=int, help="Ladder width (default: the terminal's).")
def run(
    scenario: str,
    clock: str | None,
    pcap_file: Path | None,
    capture_at: str | None,
    json_file: Path | None,
    no_data: bool,
    no_logs: bool,
    quiet: bool,
    width: int | None,
) -> None:
    """Run a scenario (a YAML file or a bundled name; default: sharing-call) and show the call.

    Prints the ladder (a column per actor, an arrow per message, TCP connects, closes and
    resets), then the outcome and whether the scenario's expectations hold.
    """
    from labsim.report.json_out import write_json
    from labsim.report.ladder import render_ladder_rich
    from labsim.report.pcap import write_pcapng
    from labsim.run import ACTORS, run_scenario
    from labsim.scenario import ScenarioError, load

    points = _capture_points(capture_at, pcap_file)
    try:
        sc = load(_scenario_path(scenario))
    except ScenarioError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    if points is None:
        points = list(sc.capture.at)
    console = Console(highlight=False, soft_wrap=True)
    result = run_scenario(sc, clock)  # type: ignore[arg-type]
    if not quiet:
        console.print(
            render_ladder_rich(
                result.trace, list(ACTORS), width=width or console.width,
                show_data=not no_data, logs=not no_logs,
            ),
            end="",
        )  # fmt: skip
        console.print()
    wall = f"{result.wall * 1000:.0f} ms" if result.wall < 10 else f"{result.wall:.1f} s"
    console.print(
        f"[bold]{sc.name}[/bold] ({result.clock} clock, {wall} wall): "
        f"outcome [bold]{result.outcome.name}[/bold] - {result.outcome.reason}"
    )
    console.print(result.diagnosis.text(), markup=False)
    for rule in result.trace.unmatched_rules:
        # A rule that never acted left the call healthy where the user meant a fault.
        console.print(f"[yellow]warning:[/yellow] {escape(rule.unmatched())}")
    if pcap_file is not None:
        write_pcapng(result.trace, pcap_file, capture_at=points, scenario=sc.name)
        where = f"at {', '.join(points)}" if points else "every leg"
        console.print(f"capture: {pcap_file} ({where})")
    if json_file is not None:
        write_json(
            result.trace, json_file, scenario=sc.name, outcome=result.outcome.name,
            diagnosis=result.diagnosis.as_dict(),
            extra={"clock": result.clock, "expected": sc.expect.outcome,
                   "failures": result.failures, "reason": result.outcome.reason},
        )  # fmt: skip
        console.print(f"json: {json_file}")
    if result.failures:
        for failure in result.failures:
            console.print(f"[red]expectation not met:[/red] {failure}")
        sys.exit(1)
    console.print("[green]expectations met[/green]")


def _capture_points(text: str | None, pcap_file: Path | None) -> list[str] | None:
    """The actors ``--capture-at`` names (None: the option was not given); a bad list exits 2
    before anything runs."""
    from labsim.run import ACTORS

    if text is None:
        return None
    if pcap_file is None:
        click.echo("--capture-at says where --pcap captures: give --pcap FILE too", err=True)
        sys.exit(2)
    names = [name.strip() for name in text.split(",")]
    for name in names:
        if name not in ACTORS:
            click.echo(
                f"--capture-at: {name!r} is not an actor; the actors are {', '.join(ACTORS)}",
                err=True,
            )
            sys.exit(2)
    if len(set(names)) != len(names):
        click.echo(f"--capture-at: {text!r} names an actor twice", err=True)
        sys.exit(2)
    return names


@main.command(name="test")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--clock", type=click.Choice(["live", "virtual"]), help="Run every scenario on this clock."
)
@click.option("--junit", "junit_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a JUnit XML report (one test case per scenario).")  # fmt: skip
def test_command(paths: tuple[Path, ...], clock: str | None, junit_file: Path | None) -> None:
    """Run scenarios (files or folders; default: every bundled one) and check each against its
    expect: block. Prints a table; exits 0 only when every expectation holds."""
    from rich.table import Table

    from labsim.report.junit import Case, write_junit
    from labsim.run import RunResult, run_scenario
    from labsim.scenario import ScenarioError, library_dir, load

    files: list[Path] = []
    for path in paths or (library_dir(),):
        files += sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    try:
        scenarios = [load(f) for f in files]
    except ScenarioError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    console = Console(highlight=False, soft_wrap=True)
    console.width = max(console.width, 150)  # a CI log is no terminal: keep rows on one line
    table = Table("scenario", "expected", "outcome", "diagnosis", "time", "result")
    results: list[RunResult] = []
    for sc in scenarios:
        result = run_scenario(sc, clock)  # type: ignore[arg-type]
        results.append(result)
        expected = sc.expect.outcome + (f" / {sc.expect.diagnosis}" if sc.expect.diagnosis else "")
        table.add_row(
            sc.name, expected, result.outcome.name, result.diagnosis.verdict,
            f"{result.wall:.2f} s ({result.clock})",
            "[green]pass[/green]" if result.passed else "[red]FAIL[/red]",
        )  # fmt: skip
    console.print(table)
    for result in results:
        for failure in result.failures:
            console.print(f"[red]{result.scenario.name}:[/red] {failure}")
    failed = sum(not r.passed for r in results)
    console.print(f"{len(results) - failed} passed, {failed} failed")
    if junit_file is not None:
        write_junit(
            [
                Case(r.scenario.name, r.clock, r.wall, tuple(r.failures),
                     f"outcome: {r.outcome.name} - {r.outcome.reason}\n{r.diagnosis.text()}\n")
                for r in results
            ],
            junit_file,
        )  # fmt: skip
        console.print(f"junit: {junit_file}")
    sys.exit(1 if failed else 0)


@main.command(name="diagnose")
@click.argument("capture_file", metavar="FILE", type=click.Path(path_type=Path))
@click.option("--actor", "actors", multiple=True, metavar="ADDRESS=ACTOR",
              help="Name a host (repeatable): --actor 10.48.54.230=cms. Other hosts are "
              "named from the roles their messages show, each reason printed.")  # fmt: skip
@click.option("--at", "at", metavar="ACTOR",
              help="The actor at whose interfaces the capture was taken (default: the one "
              "host on every connection, or labsim's interface name).")  # fmt: skip
@click.option("--json", "json_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the view, the outcome and the diagnosis as JSON.")  # fmt: skip
@click.option("--no-ladder", is_flag=True, help="Leave the ladder out.")
@click.option("--width", type=int, help="Ladder width (default: the terminal's).")
def diagnose_command(
    capture_file: Path, actors: tuple[str, ...], at: str | None, json_file: Path | None,
    no_ladder: bool, width: int | None,
) -> None:  # fmt: skip
    """Diagnose a capture file (pcap or pcapng: labsim's, dumpcap's, a real lab's).

    Reassembles the TCP streams, finds SIP, STUN/TURN and the RFC 4571-framed checks, names
    the actors, and runs the same diagnosis as a run, saying what the capture point cannot
    see. Exit 0 when the call worked, 1 when the diagnosis found a failure, 2 for a file that
    is not a readable capture or a bad option (and, after the report, for a file cut short).
    """
    from labsim.report.capture import (
        LAB_CHAIN,
        CaptureError,
        diagnose_capture,
        parse_actor_options,
        read_capture,
    )
    from labsim.report.json_out import write_json
    from labsim.report.ladder import render_ladder_rich
    from labsim.vocabulary import WORKING

    if at is not None and at not in LAB_CHAIN:
        click.echo(f"--at: {at!r} is not an actor; the actors are {', '.join(LAB_CHAIN)}", err=True)
        sys.exit(2)
    try:
        named = parse_actor_options(list(actors))
        capture = read_capture(capture_file, named, at)
    except (ValueError, CaptureError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    result = diagnose_capture(capture)
    console = Console(highlight=False, soft_wrap=True)
    if not no_ladder:
        present = {c.client for c in capture.trace.connections.values()}
        present |= {c.server for c in capture.trace.connections.values()}
        order = [a for a in LAB_CHAIN if a in present] + sorted(present - set(LAB_CHAIN))
        console.print(
            render_ladder_rich(capture.trace, order, width=width or console.width), end=""
        )
        console.print()
    console.print(result.text(), markup=False)
    if json_file is not None:
        # The run's JSON (run.schema.json: messages, journeys, fates …) of the capture's trace,
        # with what the capture is under "capture".
        view = {k: v for k, v in result.as_dict().items() if k not in ("outcome", "diagnosis")}
        try:
            write_json(
                capture.trace, json_file, scenario=capture_file.name,
                outcome=result.outcome.name, diagnosis=result.diagnosis.as_dict(),
                extra={"capture": view, "reason": result.outcome.reason},
            )  # fmt: skip
        except OSError as exc:
            click.echo(f"error: cannot write {json_file}: {exc.strerror or exc}", err=True)
            sys.exit(2)
        console.print(f"json: {json_file}")
    if capture.packets.cut:
        # As tshark does with a file cut short: everything before the cut, then exit 2.
        click.echo(f"error: {capture_file}: {capture.packets.cut}", err=True)
        sys.exit(2)
    sys.exit(0 if result.diagnosis.verdict in WORKING else 1)


@main.command(name="list")
def list_command() -> None:
    """The bundled scenarios, one line each."""
    from labsim.scenario import ScenarioError, first_sentence, library_dir, list_scenarios

    try:
        found = list_scenarios()
    except ScenarioError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    for path, sc in found:
        click.echo(f"{path.stem:<28} {first_sentence(sc.description)}")
    if not found:
        click.echo(f"no scenarios in {library_dir()}")


if __name__ == "__main__":  # pragma: no cover
    main()
