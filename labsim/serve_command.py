"""``labsim serve`` and ``labsim locustfile``: the command lines of :mod:`labsim.serve` and
:mod:`labsim.locustfile` (docs/locust.md).

A module of its own, as :mod:`labsim.load_command` is; :mod:`labsim.cli` registers the commands
and this module takes the command line's helpers from there when they run.

``labsim serve`` prints where the target listens once every listener is up, serves until
``--for`` seconds have passed or SIGTERM/SIGINT comes, and then judges every call it saw; on
SIGUSR1 it prints the judgement so far and goes on serving. With ``--json F`` (``-``: standard
output) each of these is one JSON line (``{"event": "listening", …}``, ``{"event":
"judgement", …}``), so a script reads the address from the first line while the target runs.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import IO, Any

import click

from labsim.serve import (
    ESTABLISHED,
    Target,
    locustfile_path,
    prepare_fds,
    target_summary,
    with_hold,
)

#: The longest ``--for``: a day (every call's messages stay in the target's trace).
MAX_SERVE = 24 * 3600.0

#: Calls up at once the target raises its file descriptor limit for.
FD_CALLS = 4000


def _listening_lines(where: dict[str, Any], seconds: float) -> list[str]:
    e, c, m = where["expressway_e"], where["expressway_c"], where["cms"]
    low, high = e["relays"]
    return [
        f"target: {where['target']} (Expressway-E SIP, lab {e['lab']}:{e['sip']}); point the "
        f"Skype side here: labsim://{where['target']}",
        f"  Expressway-E {e['host']}: SIP {e['sip']}, traversal {e['traversal']}, TURN "
        f"{e['turn']}, relays {low}-{high}",
        f"  Expressway-C {c['host']}: SIP {c['sip']}",
        f"  CMS {m['host']}: SIP {m['sip']}, one user agent per participant",
        f"serving for {seconds:g} s (SIGTERM or Ctrl-C ends it; SIGUSR1 prints the judgement "
        "so far)",
    ]


def _judgement_lines(s: dict[str, Any], expected: str) -> list[str]:
    counts = ", ".join(f"{k} {v}" for k, v in s["by_outcome"].items()) or "none"
    lines = [f"{s['calls']} calls seen: {counts}"]
    missed = [c for c in s["per_call"] if c["outcome"] != expected]
    for c in missed[:10]:
        lines.append(f"  {c['client']}: {c['outcome']}: {c['reason']}")
    if len(missed) > 10:
        lines.append(f"  ... and {len(missed) - 10} more")
    return lines


@click.command(name="serve")
@click.argument("scenario", default="sharing-call")
@click.option("--for", "seconds", type=click.FloatRange(0.1, MAX_SERVE), default=60.0,
              show_default=True, metavar="SECONDS",
              help="Serve this long (wall clock), then judge the calls and exit.")  # fmt: skip
@click.option("--hold", type=click.FloatRange(0.0, 3600.0), metavar="S",
              help="Override the scenario's call.hold (how long a call stays up).")  # fmt: skip
@click.option("--json", "json_file",
              type=click.Path(dir_okay=False, allow_dash=True, path_type=Path), metavar="F",
              help="Write JSON lines to F ('-': standard output, the text then goes to "
              "standard error): where the target listens, then the judgement.")  # fmt: skip
def serve_command(
    scenario: str, seconds: float, hold: float | None, json_file: Path | None
) -> None:
    """Run the target alone (default scenario: sharing-call): Expressway-E (SIP and TURN),
    Expressway-C and a CMS taking many participants, on live sockets in a loopback block of
    their own, for Skype sides elsewhere (labsim.serve.place_call, the Locust user class of
    `labsim locustfile`) to call. At the end every call it saw is judged from its half of the
    trace. Exit 0 when every call reached the scenario's expected outcome, 1 otherwise."""
    from labsim import cli

    say = cli.level()
    sc = cli._load(cli.resolve_scenario(scenario))
    if hold is not None:
        sc = with_hold(sc, hold)
    sink = cli._Sink("--json", json_file) if json_file is not None else None
    text: IO[str] = sys.stderr if sink is not None and sink.to_stdout else sys.stdout
    prepare_fds(FD_CALLS)
    target = Target(sc)
    expected = sc.expect.outcome

    def emit(event: str, doc: dict[str, Any]) -> None:
        if sink is not None:
            sink.stream.write(json.dumps({"event": event, **doc}).encode() + b"\n")
            sink.stream.flush()

    def ready() -> None:
        where = target.addresses()
        if say != "quiet":
            for line in _listening_lines(where, seconds):
                click.echo(line, file=text)
            text.flush()
        emit("listening", {"scenario": sc.name, **where})

    def judge(final: bool) -> dict[str, Any]:
        s = target_summary(target.calls())
        emit("judgement", {"scenario": sc.name, "final": final, "expected": expected, **s})
        for line in _judgement_lines(s, expected):
            click.echo(line, file=text)
        text.flush()
        return s

    async def main() -> None:
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGUSR1, judge, False)
        except (NotImplementedError, RuntimeError, ValueError, AttributeError):
            pass
        try:
            await target.serve(seconds, ready)
        finally:
            try:
                loop.remove_signal_handler(signal.SIGUSR1)
            except (NotImplementedError, RuntimeError, ValueError, AttributeError):
                pass

    try:
        asyncio.run(main())
        s = judge(True)
    finally:
        if sink is not None:
            sink.close()
    errors = [f"{name} raised {type(exc).__name__}: {exc}" for name, exc in target.net.errors]
    for error in errors[:5]:
        click.echo(f"error: {error}", file=text)
    missed = s["calls"] - s["by_outcome"].get(expected, 0)
    if missed or errors:
        click.echo(f"expectations not met: {missed} of {s['calls']} calls did not reach "
                   f"{expected}", file=text)  # fmt: skip
        sys.exit(cli.EXIT_FAILED)
    if expected == ESTABLISHED:
        click.echo(f"every call established ({s['calls']})", file=text)


@click.command(name="locustfile")
@click.option("--path", "path_only", is_flag=True, help="Print the file's path alone.")
def locustfile_command(path_only: bool) -> None:
    """Where the Locust user class that places sharing calls is (labsim/locustfile.py,
    docs/locust.md), and how to run it against `labsim serve`."""
    path = locustfile_path()
    click.echo(str(path))
    if path_only:
        return
    click.echo(
        "\nrun a target:   labsim serve --for 600\n"
        f"one machine:    locust -f {path} --headless -u 20 -r 5 -t 60s "
        "--host labsim://TARGET:PORT\n"
        f"master:         locust -f {path} --master --headless --expect-workers 2 -u 20 -r 5 "
        "-t 60s --host labsim://TARGET:PORT\n"
        f"each worker:    locust -f {path} --worker --master-host MASTER"
    )
