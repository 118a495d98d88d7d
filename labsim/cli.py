"""The ``labsim`` command line: one click group, one set of exit codes.

``labsim run SCENARIO`` runs the call (live sockets or virtual time), prints the ladder and the
outcome, and writes the capture and the JSON when asked; ``labsim test`` runs many scenarios
and checks each against its ``expect:``; ``labsim list`` shows the bundled scenarios; ``labsim
check`` checks scenario files and ``labsim schema`` prints the JSON Schemas (scenario files,
``--json`` output); ``labsim decode`` explains STUN/TURN bytes as a capture shows them. Other
modules add commands to the group with ``@main.command()`` (and may take
:func:`verbosity_options` to get ``--quiet``/``--verbose`` like the rest).

Exit codes, in SIPp's manner (README, "Exit codes"; every command):

====  ==========================================================================================
0     everything asked for held: the scenarios' expectations, the checks asked for
1     an expectation failed: a scenario's ``expect:``, a MESSAGE-INTEGRITY or FINGERPRINT check
2     bad input: the command line, a scenario file, a file that cannot be read or written,
      bytes that are no STUN message
3     internal error: an exception labsim did not expect (a bug); a short message, the
      traceback only under ``--verbose``
130   interrupted (Ctrl-C), as the shell reports a process ended by SIGINT
141   standard output closed under it (``labsim run | head``), as for a process ended by SIGPIPE
====  ==========================================================================================

When one run finds several (``labsim test``, ``labsim check``), the highest of 3, 2, 1 wins: a
bug hides nothing, and a file that did not load is not reported as a failed expectation.

Where output goes: what a command reports (ladder, outcome, tables, lists, schemas) goes to
standard output; errors, warnings and progress go to standard error. Progress is shown only when
standard error is a terminal (never in a pipe or a CI log, so captured output is stable). When
standard output carries data (``--json -``, ``--pcap -``), the report moves to standard error.
On a terminal whose encoding cannot show the ladder's Unicode glyphs (``PYTHONIOENCODING=ascii``,
a latin-1 console) everything is drawn with ASCII characters instead of failing.
"""

from __future__ import annotations

import codecs
import dataclasses
import io
import os
import re
import struct
import sys
import time
import traceback
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Literal, NoReturn, TypeVar, cast

import click
from click.shell_completion import CompletionItem
from rich.console import Console
from rich.markup import escape

from labsim import __version__
from labsim.wire import WireError
from labsim.wire.stun import (
    MAGIC_COOKIE_BYTES,
    Attribute,
    ChannelData,
    Fingerprint,
    Message,
    MessageIntegrity,
    decode_control,
    long_term_key,
    short_term_key,
)

if TYPE_CHECKING:
    from labsim.report.diagnose import Diagnosis
    from labsim.report.html import Section
    from labsim.report.junit import Case
    from labsim.report.outcome import Outcome
    from labsim.run import RunResult
    from labsim.scenario import Scenario
    from labsim.trace import Trace

EXIT_OK: int = 0
EXIT_FAILED: int = 1
EXIT_BAD_INPUT: int = 2
EXIT_INTERNAL: int = 3
EXIT_INTERRUPTED: int = 130
EXIT_BROKEN_PIPE: int = 141

# ---------------------------------------------------------------------------------------------
# Errors and exit codes
# ---------------------------------------------------------------------------------------------


class BadInput(click.ClickException):
    """Input labsim cannot use (exit 2): printed as given, with no traceback. click's own
    ``ClickException`` exits 1, which here means "an expectation failed"."""

    exit_code = EXIT_BAD_INPUT

    def show(self, file: IO[Any] | None = None) -> None:
        _echo(self.format_message(), err=True)


_VERBOSE = "labsim.verbose"
_QUIET = "labsim.quiet"


def _internal_error(exc: BaseException, verbose: bool) -> None:
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    text = str(exc).strip().splitlines()
    what = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    _echo(f"labsim: internal error: {what}", err=True)
    if not verbose:
        _echo(
            "This is a bug in labsim. Run the command again with --verbose for the traceback, "
            "and report it with that.",
            err=True,
        )


def _quiet_stdout() -> None:
    """After a broken pipe: point standard output at /dev/null, so the interpreter's last flush
    finds nowhere to fail (otherwise it prints "Exception ignored … BrokenPipeError")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass  # not a real file (a test runner's buffer): nothing will flush into a pipe


class _Labsim(click.Group):
    """The command group: turns what escapes a command into labsim's exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click reports these itself (usage errors exit 2)
        except BrokenPipeError:
            _quiet_stdout()
            ctx.exit(EXIT_BROKEN_PIPE)
        except KeyboardInterrupt:
            _echo("labsim: interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except Exception as exc:  # anything else is a bug: say so briefly, exit 3
            from labsim.run import NeedsLiveClock

            if isinstance(exc, NeedsLiveClock):  # a scenario that --clock virtual cannot run
                raise BadInput(f"labsim: {exc}") from None
            _internal_error(exc, bool(ctx.meta.get(_VERBOSE)))
            ctx.exit(EXIT_INTERNAL)


# ---------------------------------------------------------------------------------------------
# --quiet / --verbose
# ---------------------------------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])


def _remember(key: str) -> Callable[[click.Context, click.Parameter, bool], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            ctx.meta[key] = True  # meta is shared by the group's and the command's contexts

    return callback


def verbosity_options(f: F) -> F:
    """``-q/--quiet`` and ``-v/--verbose`` for a command (read them with :func:`level`)."""
    f = click.option(
        "-v", "--verbose", is_flag=True, expose_value=False, callback=_remember(_VERBOSE),
        help="Say more; on an internal error, print the traceback.",
    )(f)  # fmt: skip
    f = click.option(
        "-q", "--quiet", is_flag=True, expose_value=False, callback=_remember(_QUIET),
        help="Say less: results only, no progress.",
    )(f)  # fmt: skip
    return f


Level = Literal["quiet", "normal", "verbose"]


def level() -> Level:
    """How much the current command says, from ``--quiet``/``--verbose`` given to it or to
    ``labsim`` itself."""
    meta = click.get_current_context().meta
    if meta.get(_QUIET) and meta.get(_VERBOSE):
        raise click.UsageError("--quiet and --verbose contradict each other: give one")
    return "quiet" if meta.get(_QUIET) else "verbose" if meta.get(_VERBOSE) else "normal"


# ---------------------------------------------------------------------------------------------
# Terminals: encodings, widths, progress
# ---------------------------------------------------------------------------------------------

#: What labsim's own Unicode characters become on a terminal that cannot show them (ladder
#: glyphs, arrows and dashes in diagnoses, rich's box drawing); anything else is spelt by its
#: decomposition's ASCII letters (é → e), or "?".
ASCII_FOR = {
    "→": "->", "←": "<-", "↔": "<->", "⇄": "<->", "—": "-", "–": "-", "…": "...", "×": "x",
    "≤": "<=", "≥": ">=", "≠": "!=", "≈": "~", "•": "*", "·": "*", "│": "|", "─": "-",
    "╌": ".", "▶": ">", "◀": "<", "▷": ">", "◁": "<", "✕": "x", "✓": "v", "‘": "'", "’": "'",
    "“": '"', "”": '"', "µ": "u", "§": "section ", "°": " deg", "±": "+/-", "\u00a0": " ",
    "\u2009": " ", "\u202f": " ",
}  # fmt: skip

_ASCII_ERRORS = "labsim.ascii"


def _ascii_for(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = []
    for char in exc.object[exc.start : exc.end]:
        spelt = ASCII_FOR.get(char)
        if spelt is None:
            plain = unicodedata.normalize("NFKD", char).encode("ascii", "ignore").decode()
            spelt = plain or "?"
        out.append(spelt)
    return "".join(out), exc.end


codecs.register_error(_ASCII_ERRORS, _ascii_for)

#: Characters labsim prints that an encoding must hold to be left as it is.
_PROBE = "│→…✕▶"


def unicode_ok(stream: object) -> bool:
    """Whether ``stream``'s encoding can show labsim's Unicode glyphs."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        _PROBE.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def _fit_encodings() -> None:
    """On a stream whose encoding cannot show labsim's glyphs, write ASCII stand-ins instead
    of raising UnicodeEncodeError in the middle of a report."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and not unicode_ok(stream):
            stream.reconfigure(errors=_ASCII_ERRORS)


def _echo(message: str = "", *, err: bool = False, nl: bool = True) -> None:
    """``click.echo`` to the streams the rich output uses: click would swap an ASCII standard
    output for a UTF-8 one of its own, and a terminal that cannot show UTF-8 gets mojibake."""
    click.echo(message, file=sys.stderr if err else sys.stdout, nl=nl)


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich exits 1 here, which is labsim's "an expectation failed": let the group end the
        # command with the code of a closed pipe instead.
        self.quiet = True
        raise BrokenPipeError


def _console(stderr: bool = False) -> Console:
    # soft_wrap: a line is never folded by rich; the ladder is laid out to its width already.
    return _Console(file=sys.stderr if stderr else sys.stdout, highlight=False, soft_wrap=True)


def _width_given(console: Console) -> bool:
    """Whether the console's width means something: a terminal's. A pipe, a file or a CI log
    has none (rich would assume 80 columns, or take COLUMNS, which test runners and CI tools
    export as they please); there the output takes its natural width, the same everywhere."""
    return console.is_terminal


class _Progress:
    """Progress on standard error while something long runs: only on a terminal and not under
    ``--quiet`` (a pipe or a CI log gets nothing, so captured output stays stable). Transient:
    it disappears when done, leaving the report alone."""

    def __init__(self, enabled: bool, total: int | None, description: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._bar: Progress | None = None
        self._task: Any = None
        console = _console(stderr=True)
        if not enabled or not console.is_terminal:
            return
        columns: list[Any] = [SpinnerColumn("line"), TextColumn("{task.description}")]
        if total is not None:
            columns += [BarColumn(), MofNCompleteColumn()]
        columns.append(TimeElapsedColumn())
        self._bar = Progress(*columns, console=console, transient=True)
        self._task = self._bar.add_task(description, total=total)

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def update(self, description: str, advance: int = 0) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=description, advance=advance)


# ---------------------------------------------------------------------------------------------
# The group
# ---------------------------------------------------------------------------------------------


@click.group(cls=_Labsim, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="labsim")
@verbosity_options
def main() -> None:
    """labsim: the Skype for Business -> CMS screen-share lab, on your laptop.

    Exit codes: 0 all held, 1 an expectation failed, 2 bad input, 3 internal error.
    """
    _fit_encodings()


# ---------------------------------------------------------------------------------------------
# Scenarios by file or by name
# ---------------------------------------------------------------------------------------------


def _complete_scenario(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Shell completion: the bundled scenarios' names, and files (README, "Completion")."""
    from labsim.scenario import bundled_names

    names = [CompletionItem(name) for name in bundled_names() if name.startswith(incomplete)]
    return [*names, CompletionItem(incomplete, type="file")]


def _no_scenario(text: str, why: str) -> BadInput:
    from labsim.scenario import close_names

    close = close_names(text)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return BadInput(
        f"labsim: {why}{hint} (`labsim list` shows the bundled scenarios; a file name works too)"
    )


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name the system refuses (too long, a NUL)
        return False


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def resolve_scenario(text: str) -> Path:
    """The scenario file ``text`` names: a file that exists, else a bundled scenario of that
    name (``sharing-call`` or ``sharing-call.yaml``); anything else is bad input, with the
    bundled names it looks like."""
    from labsim.scenario import bundled

    path = Path(text)
    if _is_file(path):
        return path
    found = bundled(text)
    if found is not None:
        return found
    if _is_dir(path):
        raise BadInput(f"labsim: {text} is a folder, not a scenario file")
    if path.suffix in (".yaml", ".yml") or "/" in text:
        raise _no_scenario(text, f"cannot read {text}: no such file")
    raise _no_scenario(text, f"no scenario file or bundled scenario called {text!r}")


def _load(path: Path) -> Scenario:
    from labsim.scenario import ScenarioError, load

    try:
        return load(path)
    except ScenarioError as exc:
        raise BadInput(str(exc)) from None


# ---------------------------------------------------------------------------------------------
# decode
# ---------------------------------------------------------------------------------------------

#: Hex text read from standard input is bounded: a STUN message is at most 64 KiB.
MAX_DECODE_INPUT = 1024 * 1024


def _parse_hex(text: str) -> bytes:
    cleaned = re.sub(r"0x|[\s:,.-]", "", text)
    try:
        return bytes.fromhex(cleaned)
    except ValueError as exc:
        raise click.BadParameter(f"not hex: {exc}", param_hint="HEX_BYTES") from None


def _read_stdin() -> bytes:
    """The bytes on standard input: hex text (``echo 0001… | labsim decode -``) or the raw
    message (``xxd -r -p msg.hex | labsim decode -``). A STUN message starts with 0x00 or 0x01
    and a ChannelData frame with 0x40-0x7f, none of them a hex digit, so the two never mix."""
    data = sys.stdin.buffer.read(MAX_DECODE_INPUT + 1)
    if len(data) > MAX_DECODE_INPUT:
        raise BadInput(f"labsim decode: more than {MAX_DECODE_INPUT:,} bytes on standard input")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return data
    if re.fullmatch(r"(0x|[0-9a-fA-F\s:,.-])*", text):
        return _parse_hex(text)
    return data


def _strip_rfc4571(data: bytes) -> tuple[bytes, bool]:
    """Detect RFC 4571 framing the way Wireshark does: the magic cookie at offset 6."""
    if len(data) >= 10 and data[6:10] == MAGIC_COOKIE_BYTES:
        length = struct.unpack("!H", data[:2])[0]
        if length == len(data) - 2:
            return data[2:], True
    return data, False


@main.command()
@click.argument("hex_bytes", nargs=-1, required=True)
@click.option("--username", help="Long-term credential user (TURN), e.g. turn.")
@click.option("--realm", help="Long-term credential realm, e.g. TANDBERG.")
@click.option("--password", help="TURN password, or the ICE password alone (short-term).")
@verbosity_options
def decode(
    hex_bytes: tuple[str, ...], username: str | None, realm: str | None, password: str | None
) -> None:
    """Decode one STUN/TURN message or ChannelData frame given as hex ('-': read standard
    input, hex or raw bytes).

    Example, the start of the lab's framed ICE check is `00 6c 00 01 00 58 21 12 a4 42 ...`.
    Exits 1 when a check fails: a FINGERPRINT that does not match, or with --password a
    MESSAGE-INTEGRITY that is absent or does not match; 2 when the bytes are no message.
    """
    say = level()
    raw = _read_stdin() if hex_bytes == ("-",) else _parse_hex(" ".join(hex_bytes))
    if not raw:
        raise BadInput("labsim decode: no bytes given")
    data, framed = _strip_rfc4571(raw)
    try:
        frame = decode_control(data)
    except WireError as exc:
        raise BadInput(f"labsim decode: not a STUN message or ChannelData frame: {exc}") from None
    if framed and say != "quiet":
        _echo(f"RFC 4571 frame, length {len(data)}")
    _echo(frame.summary())
    if isinstance(frame, ChannelData):
        if say != "quiet":
            _echo(f"  channel 0x{frame.channel:04x}, {len(frame.data)} bytes of data")
        return
    if not _explain(frame, username, realm, password, say):
        sys.exit(EXIT_FAILED)


def _value_text(attr: Attribute) -> str:
    """An attribute's fields as people read them: bytes as hex (a MESSAGE-INTEGRITY is an HMAC,
    not text), everything else as Python writes it."""
    if not dataclasses.is_dataclass(attr):
        return repr(attr)
    parts = []
    for f in dataclasses.fields(attr):
        value = getattr(attr, f.name)
        shown = bytes(value).hex() if isinstance(value, bytes | bytearray) else repr(value)
        parts.append(f"{f.name}={shown}")
    return f"{type(attr).__name__}({', '.join(parts)})"


def _explain(
    msg: Message, username: str | None, realm: str | None, password: str | None, say: Level
) -> bool:
    """Print the message's fields and checks; False when a check fails."""
    if say != "quiet":
        _echo(
            f"  type 0x{msg.type:04x} ({msg.method_name}, class {msg.cls.name.lower()}),"
            f" length {len(msg.raw or b'') - 20}, transaction {msg.transaction_id.hex()}"
        )
        for attr, offset in zip(msg.attributes, msg.offsets, strict=True):
            flag = "required" if attr.comprehension_required else "optional"
            _echo(f"  @{offset:<4} 0x{attr.type:04x} {attr.name:<28} {flag:<8} {_value_text(attr)}")
            if say == "verbose":
                _echo(f"{'':<8}value {attr.wire_value(msg.transaction_id).hex()}")
    ok = True
    if msg.get(Fingerprint) is None:
        _echo("  fingerprint: absent")
    elif msg.verify_fingerprint():
        _echo("  fingerprint: good")
    else:
        _echo("  fingerprint: bad")
        ok = False
    if password is not None:
        if username is not None and realm is not None:
            key, kind = long_term_key(username, realm, password), "long-term"
        else:
            key, kind = short_term_key(password), "short-term"
        if msg.get(MessageIntegrity) is None:
            verdict = "absent"
        else:
            verdict = "good" if msg.verify_integrity(key) else "bad (wrong credentials?)"
        _echo(f"  message-integrity ({kind} key): {verdict}")
        ok = ok and verdict == "good"
    return ok


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------

STDOUT = "-"


class _Sink:
    """Where ``--pcap`` or ``--json`` goes: a file, opened before the run so that a path that
    cannot be written fails at once (exit 2) rather than after a six-second live call, or
    standard output (``-``)."""

    def __init__(self, option: str, path: Path) -> None:
        self.option = option
        self.to_stdout = str(path) == STDOUT
        self.name = "standard output" if self.to_stdout else str(path)
        self.stream: BinaryIO
        if self.to_stdout:
            sys.stdout.flush()  # text written before goes first, not after the bytes
            self.stream = cast(BinaryIO, sys.stdout.buffer)
            return
        try:
            self.stream = cast(BinaryIO, path.open("wb"))
        except OSError as exc:
            raise BadInput(
                f"labsim: {option} {path}: cannot write: {exc.strerror or exc}"
            ) from None

    def close(self) -> None:
        if self.to_stdout:
            self.stream.flush()
        else:
            self.stream.close()


def _capture_points(text: str | None, pcap_file: Path | None) -> list[str] | None:
    """The actors ``--capture-at`` names (None: the option was not given); a bad list is bad
    input before anything runs."""
    from labsim.run import ACTORS

    if text is None:
        return None
    if pcap_file is None:
        raise BadInput("labsim: --capture-at says where --pcap captures: give --pcap FILE too")
    names = [name.strip() for name in text.split(",")]
    for name in names:
        if name not in ACTORS:
            raise BadInput(
                f"labsim: --capture-at: {name!r} is not an actor; the actors are "
                f"{', '.join(ACTORS)}"
            )
    if len(set(names)) != len(names):
        raise BadInput(f"labsim: --capture-at: {text!r} names an actor twice")
    return names


_OUTPUT = click.Path(dir_okay=False, allow_dash=True, path_type=Path)


def _picture_options(f: F) -> F:
    """``--svg``, ``--html`` and ``--mermaid`` (labsim/report/svg.py, html.py, mermaid.py)."""
    for flag, what in reversed(_PICTURES):
        f = click.option(flag, flag[2:] + "_file", type=_OUTPUT, metavar="FILE",
                         help=f"Write {what}; '-': standard output.")(f)  # fmt: skip
    return f


_PICTURES = (
    ("--svg", "the ladder as an SVG picture (a column per actor with its lab addresses, an "
     "arrow per message, dropped ones stopped where they were lost)"),
    ("--html", "one self-contained HTML page: outcome, diagnosis, topology and the ladder, "
     "each message clickable for its decoded fields and bytes (works offline)"),
    ("--mermaid", "the ladder as a Mermaid sequenceDiagram"),
)  # fmt: skip


@main.command()
@click.argument("scenario", default="sharing-call", shell_complete=_complete_scenario)
@click.option(
    "--clock", type=click.Choice(["live", "virtual"]), help="Override the scenario's clock."
)
@click.option("--pcap", "pcap_file", type=_OUTPUT, metavar="FILE",
              help="Write the run as a pcapng capture (lab addresses); '-': standard output "
              "(not a terminal).")  # fmt: skip
@click.option("--capture-at", "capture_at", metavar="ACTOR[,ACTOR…]",
              help="Capture --pcap at these actors' interfaces (one pcapng interface each) "
              "rather than on every leg; overrides the scenario's capture.at.")  # fmt: skip
@click.option("--json", "json_file", type=_OUTPUT, metavar="FILE",
              help="Write the run as JSON (scenario, outcome, messages …); '-': standard "
              "output, and the ladder goes to standard error.")  # fmt: skip
@_picture_options
@click.option("--no-data", is_flag=True, help="Leave opaque relayed TCP data out of the ladder.")
@click.option("--no-logs", is_flag=True,
              help="Leave the actors' notes out of the ladder (and the pictures).")  # fmt: skip
@click.option("--width", type=click.IntRange(20, 1000),
              help="Ladder width (default: the terminal's; 120 in a pipe or file).")  # fmt: skip
@click.option("--full", is_flag=True,
              help="Expanded ladder: under each arrow, its message's fields whole (Call-ID, SDP "
              "candidates, STUN attributes such as XOR-RELAYED-ADDRESS); nothing cut.")  # fmt: skip
@verbosity_options
def run(
    scenario: str,
    clock: str | None,
    pcap_file: Path | None,
    capture_at: str | None,
    json_file: Path | None,
    no_data: bool,
    no_logs: bool,
    width: int | None,
    full: bool,
    **pictures: Path | None,
) -> None:
    """Run a scenario (a YAML file or a bundled name; default: sharing-call) and show the call.

    Prints the ladder (a column per actor, an arrow per message, TCP connects, closes and
    resets), then the outcome, the diagnosis and whether the scenario's expectations hold
    (exit 0, else 1). --quiet leaves the ladder out.
    """
    from labsim.run import ACTORS, run_scenario

    say = level()
    points = _capture_points(capture_at, pcap_file)
    _distinct_outputs({"--pcap": pcap_file, "--json": json_file, **_picture_flags(pictures)})
    if str(pcap_file) == STDOUT and sys.stdout.isatty():
        raise BadInput(
            "labsim: --pcap -: standard output is a terminal; redirect it to a file or a pipe "
            "(labsim run --pcap - | tshark -r -)"
        )
    path = resolve_scenario(scenario)
    sc = _load(path)
    if say == "verbose":
        _echo(f"scenario: {path}", err=True)
    if points is None:
        points = list(sc.capture.at)
    sinks: list[_Sink] = []
    try:
        pcap = _Sink("--pcap", pcap_file) if pcap_file is not None else None
        sinks += [pcap] if pcap else []
        json_sink = _Sink("--json", json_file) if json_file is not None else None
        sinks += [json_sink] if json_sink else []
        drawn = _picture_sinks(pictures)
        sinks += drawn
        with _Progress(say != "quiet", None, f"running {sc.name} ({clock or sc.clock} clock)"):
            result = run_scenario(sc, cast(Literal["live", "virtual"] | None, clock))
        # Standard output carries data: the report goes to standard error beside it.
        report = _console(stderr=any(s.to_stdout for s in sinks))
        _report_run(report, result, say, width, no_data=no_data, no_logs=no_logs, full=full)
        if pcap is not None:
            _write_pcap(result, pcap, points)
            where = f"at {', '.join(points)}" if points else "every leg"
            report.print(f"capture: {escape(pcap.name)} ({where})")
        if json_sink is not None:
            _write_json(result, json_sink)
            report.print(f"json: {escape(json_sink.name)}")
        for sink in drawn:
            _write_picture(
                sink, result.trace, ACTORS, name=result.scenario.name, outcome=result.outcome,
                diagnosis=result.diagnosis, logs=not no_logs,
                extra={"clock": result.clock, "expected": result.scenario.expect.outcome,
                       "failures": result.failures},
            )  # fmt: skip
            report.print(f"{sink.option[2:]}: {escape(sink.name)}")
    finally:
        for sink in sinks:
            sink.close()
    if result.failures:
        for failure in result.failures:
            report.print(f"[red]expectation not met:[/red] {escape(failure)}")
        sys.exit(EXIT_FAILED)
    report.print("[green]expectations met[/green]")


def _report_run(
    console: Console, result: RunResult, say: Level, width: int | None, **ladder: bool
) -> None:
    from labsim.report.ladder import DEFAULT_WIDTH, render_ladder_rich
    from labsim.run import ACTORS

    if say != "quiet":
        if width is None:
            width = console.width if _width_given(console) else DEFAULT_WIDTH
        rows = render_ladder_rich(
            result.trace, list(ACTORS), width=width, show_data=not ladder["no_data"],
            logs=not ladder["no_logs"], ascii=not unicode_ok(console.file),
            full=ladder.get("full", False),
        )  # fmt: skip
        console.print(rows, end="")
        console.print()
    wall = f"{result.wall * 1000:.0f} ms" if result.wall < 10 else f"{result.wall:.1f} s"
    console.print(
        f"[bold]{escape(result.scenario.name)}[/bold] ({result.clock} clock, {wall} wall): "
        f"outcome [bold]{result.outcome.name}[/bold] - {escape(result.outcome.reason)}"
    )
    console.print(result.diagnosis.text(), markup=False)
    warnings = _console(stderr=True)
    for rule in result.trace.unmatched_rules:
        # A rule that never acted left the call healthy where the user meant a fault.
        warnings.print(f"[yellow]warning:[/yellow] {escape(rule.unmatched())}")


def _write_pcap(result: RunResult, sink: _Sink, points: list[str]) -> None:
    from labsim.report.pcap import write_pcapng

    write_pcapng(result.trace, sink.stream, capture_at=points, scenario=result.scenario.name)


def _picture_flags(pictures: dict[str, Path | None]) -> dict[str, Path | None]:
    return {f"--{key.removesuffix('_file')}": path for key, path in pictures.items()}


def _distinct_outputs(outputs: dict[str, Path | None]) -> None:
    """Two options may not write the same file (nor both standard output)."""
    seen: dict[str, str] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        if str(path) in seen:
            raise BadInput(f"labsim: {seen[str(path)]} and {option} both name {path}")
        seen[str(path)] = option


def _picture_sinks(pictures: dict[str, Path | None]) -> list[_Sink]:
    return [_Sink(flag, path) for flag, path in _picture_flags(pictures).items() if path]


def _write_picture(
    sink: _Sink, trace: Trace, actors: Sequence[str], *, name: str, outcome: Outcome,
    diagnosis: Diagnosis, extra: dict[str, object], sections: Sequence[Section] = (),
    logs: bool = True,
) -> None:  # fmt: skip
    """Draw the run (or the capture) into ``sink`` as its option asks."""
    from labsim.report.html import render_html
    from labsim.report.mermaid import render_mermaid
    from labsim.report.pictures import ladder
    from labsim.report.svg import ladder_svg

    if sink.option == "--html":
        text = render_html(
            trace, actors, scenario=name, outcome=outcome, diagnosis=diagnosis, extra=extra,
            sections=sections, logs=logs,
        )  # fmt: skip
    elif sink.option == "--svg":
        text = ladder_svg(ladder(trace, actors, logs=logs), title=f"labsim: {name}")
    else:
        text = render_mermaid(ladder(trace, actors, logs=logs), title=f"labsim: {name}")
    sink.stream.write(text.encode("utf-8"))


def _write_json(result: RunResult, sink: _Sink) -> None:
    from labsim.report.json_out import write_json

    write_json(
        result.trace, sink.stream, scenario=result.scenario.name, outcome=result.outcome.name,
        diagnosis=result.diagnosis.as_dict(),
        extra={"clock": result.clock, "expected": result.scenario.expect.outcome,
               "failures": result.failures, "reason": result.outcome.reason},
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# test, check: many scenarios
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Target:
    """One scenario named on the command line: a file, or why there is none."""

    label: str
    path: Path | None
    problem: str = ""


def _targets(texts: Sequence[str]) -> list[_Target]:
    """Files, folders (their ``*.yaml``) and bundled names; none: the bundled library. What
    names nothing is kept with its message, so the rest still runs."""
    from labsim.scenario import library_dir

    if not texts:
        return [_Target(p.stem, p) for p in sorted(library_dir().glob("*.yaml"))]
    found: list[_Target] = []
    for text in texts:
        path = Path(text)
        if _is_dir(path):
            files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
            found += [_Target(str(p), p) for p in files]
            if not files:
                found.append(_Target(text, None, f"labsim: {text}: no *.yaml scenario files"))
            continue
        try:
            found.append(_Target(text, resolve_scenario(text)))
        except BadInput as exc:
            found.append(_Target(text, None, exc.format_message()))
    return found


@dataclasses.dataclass
class _Ran:
    """One scenario of ``labsim test``: its table row, its JUnit case, what went wrong in words
    and the exit code it asks for."""

    row: tuple[str, ...]
    case: Case
    problems: list[str]
    status: int


def _error_row(name: str) -> tuple[str, ...]:
    return (escape(name), "", "", "", "", "[red]ERROR[/red]")


def _run_target(target: _Target, clock: str | None, say: Level) -> _Ran:
    """Load and run one scenario; a file that does not load (exit 2) and a run that raises
    (a bug, exit 3) become error cases, so the other scenarios still run."""
    from labsim.report.junit import Case
    from labsim.run import NeedsLiveClock, run_scenario
    from labsim.scenario import ScenarioError, load

    where = clock or "unknown"
    if target.path is None:
        case = Case(target.label, where, 0.0, (), "", target.problem, "NoScenario")
        return _Ran(_error_row(target.label), case, [target.problem], EXIT_BAD_INPUT)
    name = target.path.stem
    started = time.perf_counter()
    try:
        sc = load(target.path)
    except ScenarioError as exc:
        case = Case(name, where, 0.0, (), "", str(exc), "ScenarioError")
        return _Ran(_error_row(name), case, [str(exc)], EXIT_BAD_INPUT)
    try:
        r = run_scenario(sc, cast(Literal["live", "virtual"] | None, clock))
    except NeedsLiveClock as exc:
        case = Case(sc.name, where, 0.0, (), "", str(exc), "NeedsLiveClock")
        return _Ran(_error_row(sc.name), case, [str(exc)], EXIT_BAD_INPUT)
    except Exception as exc:  # a bug: recorded with its traceback; the rest still runs
        text = "".join(traceback.format_exception(exc))
        if say == "verbose":
            _echo(text, err=True, nl=False)
        case = Case(sc.name, where, time.perf_counter() - started, (), "", text,
                    type(exc).__name__)  # fmt: skip
        what = f"internal error: {type(exc).__name__}: {exc}"
        return _Ran(_error_row(sc.name), case, [what], EXIT_INTERNAL)
    expect = r.scenario.expect
    expected = expect.outcome + (f" / {expect.diagnosis}" if expect.diagnosis else "")
    row = (
        escape(r.scenario.name), expected, r.outcome.name, r.diagnosis.verdict,
        f"{r.wall:.2f} s ({r.clock})", "[green]pass[/green]" if r.passed else "[red]FAIL[/red]",
    )  # fmt: skip
    output = f"outcome: {r.outcome.name} - {r.outcome.reason}\n{r.diagnosis.text()}\n"
    case = Case(r.scenario.name, r.clock, r.wall, tuple(r.failures), output)
    return _Ran(row, case, list(r.failures), EXIT_FAILED if r.failures else EXIT_OK)


@main.command(name="test")
@click.argument("targets", nargs=-1, shell_complete=_complete_scenario)
@click.option(
    "--clock", type=click.Choice(["live", "virtual"]), help="Run every scenario on this clock."
)
@click.option("--junit", "junit_file", type=_OUTPUT, metavar="FILE",
              help="Write a JUnit XML report (one test case per scenario; a file that does "
              "not load is an error case); '-': standard output.")  # fmt: skip
@verbosity_options
def test_command(targets: tuple[str, ...], clock: str | None, junit_file: Path | None) -> None:
    """Run scenarios (files, folders or bundled names; default: every bundled one) and check
    each against its expect: block.

    Prints a table, then one line per expectation not met (--quiet: those lines only). A file
    that does not load is reported and the rest still run. Exit 0 when every expectation
    holds, 1 when one does not, 2 when a file could not be loaded, 3 when a run raised (a bug).
    """
    from labsim.report.junit import write_junit

    say = level()
    found = _targets(targets)
    junit = _Sink("--junit", junit_file) if junit_file is not None else None
    try:
        ran: list[_Ran] = []
        with _Progress(say != "quiet", len(found), "scenarios") as progress:
            for target in found:
                progress.update(target.label)
                ran.append(_run_target(target, clock, say))
                progress.update(target.label, advance=1)
        report = _console(stderr=junit is not None and junit.to_stdout)
        _report_test(report, ran, say)
        if junit is not None:
            write_junit([r.case for r in ran], junit.stream)
            if not junit.to_stdout:
                report.print(f"junit: {escape(junit.name)}")
    finally:
        if junit is not None:
            junit.close()
    sys.exit(max((r.status for r in ran), default=EXIT_OK))


def _report_test(console: Console, ran: list[_Ran], say: Level) -> None:
    from rich.measure import Measurement
    from rich.table import Table

    if say != "quiet":
        table = Table("scenario", "expected", "outcome", "diagnosis", "time", "result")
        for r in ran:
            table.add_row(*r.row)
        if not _width_given(console):
            # A pipe or a CI log has no width: keep each row on one line, at its natural width.
            wide = console.options.update_width(10_000)
            console.width = max(80, Measurement.get(console, wide, table).maximum)
        console.print(table)
    for r in ran:
        for problem in r.problems:
            console.print(f"[red]{escape(r.case.name)}:[/red] {escape(problem)}")
        if say == "verbose" and r.case.failures:
            console.print(r.case.output, markup=False, end="")  # the outcome and diagnosis
    errors = sum(r.case.error is not None for r in ran)
    failed = sum(bool(r.case.failures) for r in ran)
    summary = f"{len(ran) - failed - errors} passed, {failed} failed"
    console.print(summary + (f", {errors} error{'s' if errors > 1 else ''}" if errors else ""))


@main.command()
@click.argument("targets", nargs=-1, shell_complete=_complete_scenario)
@verbosity_options
def check(targets: tuple[str, ...]) -> None:
    """Check scenario files (files, folders or bundled names; default: the bundled library)
    without running them.

    Prints `FILE: ok (NAME)` for each good file (--quiet: nothing) and `FILE:LINE: what is
    wrong` on standard error for each bad one. Exit 0 when all are good, 2 when one is not.
    """
    from labsim.scenario import ScenarioError, load

    say = level()
    status = EXIT_OK
    for target in _targets(targets):
        if target.path is None:
            _echo(target.problem, err=True)
            status = EXIT_BAD_INPUT
            continue
        try:
            sc = load(target.path)
        except ScenarioError as exc:
            _echo(str(exc), err=True)
            status = EXIT_BAD_INPUT
            continue
        if say == "verbose":
            rules = f"{len(sc.faults)} fault rule{'s' if len(sc.faults) != 1 else ''}"
            _echo(f"{target.path}: ok ({sc.name}: expects {sc.expect.outcome}, {rules})")
        elif say == "normal":
            _echo(f"{target.path}: ok ({sc.name})")
    sys.exit(status)


@main.command()
@click.argument("kind", type=click.Choice(["scenario", "run"]), default="scenario")
@verbosity_options
def schema(kind: str) -> None:
    """Print a JSON Schema: of scenario files (default; what scenarios/schema.json holds, for
    editors), or of `labsim run --json` output (`run`, as labsim/report/run.schema.json)."""
    level()
    if kind == "scenario":
        from labsim.scenario import schema_text
    else:
        from labsim.report.schema import schema_text
    # Data, not a report: UTF-8 whatever the terminal's encoding (a schema piped into a file
    # must not have its "…" spelt "...").
    sys.stdout.flush()
    sys.stdout.buffer.write(schema_text().encode("utf-8"))
    sys.stdout.buffer.flush()


@main.command(name="diagnose")
@click.argument("capture_file", metavar="FILE", type=click.Path(allow_dash=True, path_type=Path))
@click.option("--actor", "actors", multiple=True, metavar="ADDRESS=ACTOR",
              help="Name a host (repeatable): --actor 10.48.54.230=cms. Other hosts are "
              "named from the roles their messages show, each reason printed.")  # fmt: skip
@click.option("--at", "at", metavar="ACTOR",
              help="The actor at whose interfaces the capture was taken (default: the one "
              "actor on every connection, or labsim's interface name).")  # fmt: skip
@click.option("--json", "json_file", type=_OUTPUT, metavar="FILE",
              help="Write the capture's messages, view, outcome and diagnosis as JSON (the "
              "run's format, docs/json.md; - for standard output).")  # fmt: skip
@_picture_options
@click.option("--width", type=click.IntRange(20, 1000),
              help="Ladder width (default: the terminal's, else 120).")  # fmt: skip
@verbosity_options
def diagnose_command(
    capture_file: Path, actors: tuple[str, ...], at: str | None, json_file: Path | None,
    width: int | None, **pictures: Path | None,
) -> None:  # fmt: skip
    """Diagnose a capture file (pcap or pcapng: labsim's, dumpcap's, a real lab's; - for
    standard input).

    Reassembles the TCP streams, finds SIP, STUN/TURN and the RFC 4571-framed checks, names
    the actors, and runs the same diagnosis as a run, saying what the capture point cannot
    see. Exit 0 when the call worked, 1 when the diagnosis found a failure, 2 for a file that
    is not a readable capture or a bad option (and, after the report, for a file cut short,
    as tshark does). --quiet leaves the ladder out.
    """
    from labsim.report.capture import (
        LAB_CHAIN,
        CaptureError,
        diagnose_capture,
        parse_actor_options,
        read_capture,
    )
    from labsim.report.json_out import write_json
    from labsim.report.ladder import DEFAULT_WIDTH, render_ladder_rich
    from labsim.vocabulary import WORKING

    say = level()
    if at is not None and at not in LAB_CHAIN:
        raise BadInput(
            f"labsim: --at: {at!r} is not an actor; the actors are {', '.join(LAB_CHAIN)}"
        )
    try:
        named = parse_actor_options(list(actors))
    except ValueError as exc:
        raise BadInput(f"labsim: {exc}") from None
    _distinct_outputs({"--json": json_file, **_picture_flags(pictures)})
    sink = _Sink("--json", json_file) if json_file is not None else None
    drawn: list[_Sink] = []
    try:
        drawn = _picture_sinks(pictures)
        data = sys.stdin.buffer.read() if str(capture_file) == STDOUT else None
        with _Progress(say != "quiet", None, f"reading {capture_file}"):
            capture = read_capture(capture_file, named, at, data=data)
            result = diagnose_capture(capture)
        report = _console(stderr=any(s.to_stdout for s in [*drawn, *([sink] if sink else [])]))
        order = capture.actors
        if say != "quiet":
            if width is None:
                width = report.width if _width_given(report) else DEFAULT_WIDTH
            ladder = render_ladder_rich(
                capture.trace, order, width=width, ascii=not unicode_ok(report.file)
            )
            report.print(ladder, end="")
            report.print()
        report.print(result.text(), markup=False)
        if sink is not None:
            # The run's JSON (run.schema.json: messages, journeys, fates …) of the capture's
            # trace, with what the capture is under "capture".
            view = {k: v for k, v in result.as_dict().items() if k not in ("outcome", "diagnosis")}
            write_json(
                capture.trace, sink.stream, scenario=capture_file.name or "stdin",
                outcome=result.outcome.name, diagnosis=result.diagnosis.as_dict(),
                extra={"capture": view, "reason": result.outcome.reason},
            )  # fmt: skip
            report.print(f"json: {escape(sink.name)}")
        for picture in drawn:
            where = capture.point or "this capture"
            _write_picture(
                picture, capture.trace, order, name=capture_file.name or "stdin",
                outcome=result.outcome, diagnosis=result.diagnosis, extra={},
                sections=[("Capture", result.view), (f"What {where} cannot see", result.blind)],
            )  # fmt: skip
            report.print(f"{picture.option[2:]}: {escape(picture.name)}")
    except CaptureError as exc:
        raise BadInput(f"labsim: {exc}") from None
    finally:
        for opened in [*drawn, *([sink] if sink else [])]:
            opened.close()
    if capture.packets.cut:
        # As tshark does with a file cut short: everything before the cut, then exit 2.
        raise BadInput(f"labsim: {capture_file}: {capture.packets.cut}")
    sys.exit(EXIT_OK if result.diagnosis.verdict in WORKING else EXIT_FAILED)


# ---------------------------------------------------------------------------------------------
# explain
# ---------------------------------------------------------------------------------------------


def _healthy_lab(sc: Scenario) -> Scenario:
    """The healthy lab to compare a run with: the bundled sharing-call on the virtual clock,
    held as long as ``sc``'s call (a shorter call has no keepalive yet, a longer one more
    Refreshes: that is not where a fault departs)."""
    import json

    from labsim.scenario import bundled, loads

    lab = bundled("sharing-call")
    if lab is None:
        _fail_internal("the bundled sharing-call scenario is missing: the installation is broken")
    base = _load(lab)
    text = (
        f"extends: {json.dumps(str(lab))}\nclock: virtual\n"
        f"deadline: {max(sc.deadline, base.deadline)!r}\ncall: {{hold: {sc.call.hold!r}}}\n"
    )
    return loads(text, source="<the healthy lab>")


@main.command(name="explain")
@click.argument("scenario", default="sharing-call", shell_complete=_complete_scenario)
@click.option("--clock", type=click.Choice(["live", "virtual"]), default="virtual",
              show_default=True, help="The clock of the run explained (the healthy call it is "
              "compared with runs on the virtual clock).")  # fmt: skip
@click.option("--step", "pause", is_flag=True,
              help="Pause after each step until Enter (q and Enter: stop). Needs a terminal "
              "on standard input: refused (exit 2) otherwise.")  # fmt: skip
@click.option("--json", "json_file", type=_OUTPUT, metavar="FILE",
              help="Write the explanation as JSON (steps, evidence, filters, the run); '-': "
              "standard output, and the text goes to standard error.")  # fmt: skip
@click.option(
    "--pcap",
    "pcap_file",
    type=_OUTPUT,
    metavar="FILE",
    help="Write this run's capture at CMS, whose frames the explanation numbers.",
)
@click.option("--width", type=click.IntRange(40, 1000),
              help="Fold the prose at this width (default: the terminal's, else 100); filters, "
              "bytes and fields are never cut.")  # fmt: skip
@verbosity_options
def explain_command(
    scenario: str, clock: str, pause: bool, json_file: Path | None, pcap_file: Path | None,
    width: int | None,
) -> None:  # fmt: skip
    """Walk through a run step by step, as Cisco TAC document 212580 tells the call
    (SCENARIO: a file or a bundled name; default: sharing-call).

    For each step: what happens, the fields and bytes of this run that show it, why (RFC and
    Microsoft sections), the Wireshark filters and frames, and what breaks when it fails. A
    fault scenario is compared with the healthy lab, step by step, and the first step where it
    departs is marked. --quiet: the steps' titles only. Exit 0 when the run was explained (a
    fault is what it explains), 2 for bad input (--step without a terminal on standard input).
    """
    import json

    from labsim.report.explain import WIDTH, explain, explanation_json, render_text
    from labsim.report.pcap import write_pcapng
    from labsim.run import run_scenario

    say = level()
    if pause and not sys.stdin.isatty():
        raise BadInput(
            "labsim explain: --step waits for Enter between steps, and standard input is not a "
            "terminal; run it on a terminal, or leave --step out"
        )
    if pcap_file is not None and json_file is not None and str(pcap_file) == str(json_file):
        raise BadInput(f"labsim: --pcap and --json both name {pcap_file}")
    if str(pcap_file) == STDOUT and sys.stdout.isatty():
        raise BadInput("labsim: --pcap -: standard output is a terminal; redirect it")
    path = resolve_scenario(scenario)
    sc = _load(path)
    healthy_sc = _healthy_lab(sc)
    sinks: list[_Sink] = []
    try:
        json_sink = _Sink("--json", json_file) if json_file is not None else None
        pcap = _Sink("--pcap", pcap_file) if pcap_file is not None else None
        sinks += [s for s in (json_sink, pcap) if s is not None]
        with _Progress(say != "quiet", None, f"running {sc.name} and the healthy lab"):
            result = run_scenario(sc, cast(Literal["live", "virtual"], clock))
            healthy = run_scenario(healthy_sc, "virtual")
        ex = explain(
            result.trace, scenario=sc.name, clock=result.clock, outcome=result.outcome.name,
            reason=result.outcome.reason, diagnosis=result.diagnosis, healthy=healthy.trace,
            healthy_name=f"the healthy lab (sharing-call, virtual clock, held "
            f"{sc.call.hold:g} s)",
        )  # fmt: skip
        to_stderr = any(s.to_stdout for s in sinks)
        if width is None:
            console = _console(stderr=to_stderr)
            width = console.width if _width_given(console) else WIDTH
        blocks = list(render_text(ex, width, say))
        for number, block in enumerate(blocks):
            _echo(block + ("" if say == "quiet" else "\n"), err=to_stderr)
            # Between steps: after each but the last (the diagnosis follows it at once).
            if pause and 0 < number < len(blocks) - 2 and not _next_step(number, len(blocks) - 2):
                break
        if json_sink is not None:
            text = json.dumps(explanation_json(ex), indent=2, ensure_ascii=False) + "\n"
            json_sink.stream.write(text.encode("utf-8"))
            _echo(f"json: {json_sink.name}", err=to_stderr)
        if pcap is not None:
            write_pcapng(result.trace, pcap.stream, capture_at=["cms"], scenario=sc.name)
            _echo(f"capture: {pcap.name} (at cms)", err=to_stderr)
    finally:
        for sink in sinks:
            sink.close()


def _next_step(done: int, total: int) -> bool:
    """After step ``done`` of ``total`` (``--step``): wait for Enter on the terminal. False:
    stop here (q, or the end of input)."""
    sys.stdout.flush()
    _echo(f"-- step {done} of {total}: Enter for the next, q and Enter to stop --", err=True)
    answer = sys.stdin.readline()
    return bool(answer) and answer.strip().lower() != "q"


def _register_plugin_command() -> None:
    """``labsim wireshark-plugin`` (labsim/wireshark/command.py), with -q/-v like every
    command."""
    from labsim.wireshark.command import wireshark_plugin

    main.add_command(verbosity_options(wireshark_plugin))


_register_plugin_command()


@main.command(name="probe")
@click.option("--turn", "target", required=True, metavar="HOST:PORT",
              help="The TURN server (Expressway-E's TURN port, e.g. 203.0.113.5:3478; port "
              "3478 if left out; [IPv6]:PORT).")  # fmt: skip
@click.option("--user", required=True, help="TURN username (CMS /turnServers username).")
@click.option("--password", required=True, envvar="LABSIM_TURN_PASSWORD",
              help="TURN password (or the environment variable LABSIM_TURN_PASSWORD).")  # fmt: skip
@click.option("--realm", help="The realm the credentials belong to (Expressway-E: TANDBERG); "
              "compared with the server's.")  # fmt: skip
@click.option("--peer-address", metavar="IP",
              help="The peer address to permit (default: this machine as the server sees it); "
              "give it when a NAT rewrites this machine's address.")  # fmt: skip
@click.option("--relay-host", metavar="IP",
              help="Connect the peer here instead of the relayed address's host (same "
              "port): the server's own address behind a static NAT this machine cannot "
              "reach.")  # fmt: skip
@click.option("--timeout", type=click.FloatRange(0.1, 300.0), default=5.0, show_default=True,
              metavar="S", help="Seconds each step may take.")  # fmt: skip
@click.option("--json", "json_file", type=_OUTPUT, metavar="FILE",
              help="Write the steps as JSON; '-': standard output, and the report goes to "
              "standard error.")  # fmt: skip
@verbosity_options
def probe_command(
    target: str, user: str, password: str, realm: str | None, peer_address: str | None,
    relay_host: str | None, timeout: float, json_file: Path | None,
) -> None:  # fmt: skip
    """Act as CMS against a TURN server: TCP allocation, permission, a peer connecting to the
    relay, ConnectionAttempt, ConnectionBind, framed ICE checks both ways, release; each step
    timed, and a verdict naming the first that fails (exit 0 all passed, 1 a step failed;
    docs/probe.md)."""
    from labsim.probe import ProbeConfig, ProbeInputError, command, parse_target

    say = level()
    try:
        host, port = parse_target(target)
        config = ProbeConfig(host, port, user, password, realm, peer_address, timeout, relay_host)
        sink = _Sink("--json", json_file) if json_file is not None else None
        try:
            report = sys.stderr if sink is not None and sink.to_stdout else sys.stdout
            code = command(config, say, report, sink.stream if sink is not None else None)
        finally:
            if sink is not None:
                sink.close()
    except ProbeInputError as exc:
        raise BadInput(f"labsim probe: {exc}") from None
    sys.exit(code)


def _register_load_command() -> None:
    """``labsim load`` (labsim/load_command.py), with -q/-v like every command."""
    from labsim.load_command import load_command

    main.add_command(verbosity_options(load_command))


_register_load_command()


def _register_serve_commands() -> None:
    """``labsim serve`` and ``labsim locustfile`` (labsim/serve_command.py), with -q/-v."""
    from labsim.serve_command import locustfile_command, serve_command

    main.add_command(verbosity_options(serve_command))
    main.add_command(verbosity_options(locustfile_command))


_register_serve_commands()


@main.command(name="list")
@verbosity_options
def list_command() -> None:
    """The bundled scenarios, one line each (--quiet: names only; --verbose: the whole
    description, the file and the expected outcome)."""
    from labsim.scenario import ScenarioError, first_sentence, library_dir, list_scenarios

    say = level()
    try:
        found = list_scenarios()
    except ScenarioError as exc:  # the package's own data: a bug, not the user's input
        _fail_internal(f"a bundled scenario does not load: {exc}")
    if not found:
        _fail_internal(f"no bundled scenarios in {library_dir()}: the installation is broken")
    names = [path.stem for path, _ in found]
    pad = max(map(len, names))
    for (path, sc), name in zip(found, names, strict=True):
        if say == "quiet":
            _echo(name)
            continue
        description = " ".join(sc.description.split())
        _echo(f"{name:<{pad}}  {first_sentence(description)}")
        if say == "verbose":
            _echo(f"{'':<{pad}}  expects {sc.expect.outcome}; {path}")
            rest = description[len(first_sentence(description)) :].strip()
            if rest:
                _echo(f"{'':<{pad}}  {rest}")


def _fail_internal(message: str) -> NoReturn:
    _echo(f"labsim: internal error: {message}", err=True)
    sys.exit(EXIT_INTERNAL)
