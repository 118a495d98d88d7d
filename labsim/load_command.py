"""``labsim load``: the command line of :mod:`labsim.load` (docs/load.md).

A click command of its own; :mod:`labsim.cli` registers it with ``main.add_command`` and this
module takes the command line's helpers (progress, errors, sinks) from there when it runs.

What it prints at the end (standard output): calls by outcome and by diagnosis verdict, setup
time p50/p90/p99, the peaks (TURN allocations held, which are Expressway-E's relay ports in
use; the Edge's relayed media connections; file descriptors; RSS) and the calls that missed
the scenario's ``expect``. ``--stats F`` writes the figures every ``--stats-every`` seconds of
the run's clock and once at the end, as SIPp's ``-trace_stat`` does: CSV (a row each) or JSON
(by the file's extension). Exit 0 when every call met ``expect`` (or at most
``--max-failures`` did not), 1 otherwise, 2 for bad input.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections import Counter
from dataclasses import asdict, fields
from pathlib import Path
from typing import IO, Any, Literal, cast

import click

from labsim.actors.meeting import MAX_CALLS, calls_possible
from labsim.load import LAG_NOTICE, LoadResult, Sample, raise_fd_limit, run_load

#: File descriptors a live call holds at most, with margin: the client's SIP and media
#: connections, both ends of each at the Edge, Expressway-E and CMS (TURN control, data, the
#: relay's peer leg), and the listeners.
FDS_PER_LIVE_CALL = 16


def percentile(values: list[float], p: float) -> float | None:
    """The ``p``-th percentile by nearest rank (the value at rank ceil(p/100·n)); None for
    no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(result: LoadResult, max_failures: int) -> dict[str, Any]:
    """The figures the command prints and writes (``--json``, the final ``--stats``)."""
    setups = [c.setup for c in result.calls if c.setup is not None]
    failed = result.failed()
    return {
        "scenario": result.scenario.name,
        "clock": result.clock,
        "calls": len(result.calls),
        "passed": len(result.calls) - len(failed),
        "failed": len(failed),
        "max_failures": max_failures,
        "ok": len(failed) <= max_failures and not result.errors,
        "by_outcome": dict(Counter(c.outcome.name for c in result.calls).most_common()),
        "by_verdict": dict(Counter(c.diagnosis.verdict for c in result.calls).most_common()),
        "setup": {
            "measured": len(setups),
            "p50": percentile(setups, 50),
            "p90": percentile(setups, 90),
            "p99": percentile(setups, 99),
        },
        "peak": {
            "allocations": result.peak_allocations,
            "edge_relays": result.peak_edge_relays,
            "fds": result.peak_fds,
            "rss_kib": result.peak_rss_kib,
        },
        "loop_lag": {
            "measured": len(result.loop_lag),
            "p99_ms": _ms_or_none(percentile(result.loop_lag, 99)),
            "max_ms": _ms_or_none(max(result.loop_lag, default=None)),
            # Calls not healthy that ran while the simulator itself was late: their timings
            # (a slow-network verdict above all) are this machine's CPU, not the network.
            "not_healthy_while_late": dict(
                Counter(
                    c.diagnosis.verdict
                    for c in result.calls
                    if c.diagnosis.verdict != "healthy" and c.loop_lag >= LAG_NOTICE
                ).most_common()
            ),
        },
        "wall": result.wall,
        "cpu": result.cpu,
        "end": result.end,
        "errors": result.errors,
        "per_call": [
            {
                "call": c.call,
                "client": c.client,
                "outcome": c.outcome.name,
                "verdict": c.diagnosis.verdict,
                "setup": c.setup,
                "ended": c.ended,
                "loop_lag_ms": c.loop_lag * 1000,
                "failures": c.failures,
            }
            for c in result.calls
        ],  # fmt: skip
    }


def _ms_or_none(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


def report_lines(s: dict[str, Any]) -> list[str]:
    """The summary for people."""

    def counts(d: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in d.items())

    setup, peak = s["setup"], s["peak"]
    lines = [
        f"{s['scenario']}: {s['calls']} calls ({s['clock']} clock, {s['end']:.2f} s run, "
        f"{s['wall']:.2f} s wall, {s['cpu']:.2f} s CPU)",
        f"  outcomes: {counts(s['by_outcome'])}",
        f"  verdicts: {counts(s['by_verdict'])}",
        f"  setup (sharing INVITE to the reINVITE's ACK, {setup['measured']} calls): "
        f"p50 {_ms(setup['p50'])}, p90 {_ms(setup['p90'])}, p99 {_ms(setup['p99'])}",
        f"  peak: {peak['allocations']} TURN allocations held (Expressway-E relay ports in "
        f"use), {peak['edge_relays']} Edge media relays, {peak['fds']} file descriptors, "
        f"RSS {peak['rss_kib'] / 1024:.0f} MiB",
    ]
    lag = s["loop_lag"]
    if lag["measured"]:
        lines.append(
            f"  labsim's own event loop ran late by p99 {lag['p99_ms']:.1f} ms, at worst "
            f"{lag['max_ms']:.1f} ms (every hop waits that long too)"
        )
    if lag["not_healthy_while_late"]:
        lines.append(
            f"  caution: calls judged {counts(lag['not_healthy_while_late'])} ran while that "
            f"loop was {LAG_NOTICE * 1000:.0f} ms or more late: one process plays every actor "
            "and its CPU could not keep up, so their round trips measure labsim on this "
            "machine, not a network; lower --rate or --concurrent to tell"
        )
    for error in s["errors"][:5]:
        lines.append(f"  error: {error}")
    failed = [c for c in s["per_call"] if c["failures"]]
    for c in failed[:10]:
        lines.append(
            f"  {c['client']}: {c['outcome']} / {c['verdict']}: {'; '.join(c['failures'])}"
        )
    if len(failed) > 10:
        lines.append(f"  ... and {len(failed) - 10} more calls missed expect")
    return lines


class StatsFile:
    """``--stats F``: the samples as they are taken (CSV: a row each, flushed) and the final
    figures (CSV: a last row with ``kind`` final; JSON: one document at the end)."""

    COLUMNS = ["kind", *(f.name for f in fields(Sample))]

    def __init__(self, path: Path) -> None:
        from labsim.cli import BadInput

        suffix = path.suffix.lower()
        if suffix not in (".csv", ".json"):
            raise BadInput(f"labsim: --stats {path}: name a .csv or a .json file")
        self.kind: Literal["csv", "json"] = "csv" if suffix == ".csv" else "json"
        try:
            self.stream: IO[str] = path.open("w", newline="")
        except OSError as exc:
            raise BadInput(f"labsim: --stats {path}: cannot write: {exc.strerror or exc}") from None
        self.samples: list[Sample] = []
        self._csv = csv.writer(self.stream) if self.kind == "csv" else None
        if self._csv is not None:
            self._csv.writerow(self.COLUMNS)

    def sample(self, s: Sample) -> None:
        self.samples.append(s)
        if self._csv is not None:
            self._csv.writerow(["periodic", *asdict(s).values()])
            self.stream.flush()

    def final(self, last: Sample | None, figures: dict[str, Any]) -> None:
        if self._csv is not None:
            if last is not None:
                self._csv.writerow(["final", *asdict(last).values()])
        else:
            doc = {"samples": [asdict(s) for s in self.samples],
                   "final": {k: v for k, v in figures.items() if k != "per_call"}}  # fmt: skip
            json.dump(doc, self.stream, indent=1)
            self.stream.write("\n")
        self.stream.close()


def parse_rate(text: str | None) -> float | None:
    """``--rate``: calls a second, ``10`` or ``10/s``."""
    if text is None:
        return None
    number = text.strip().removesuffix("/s").strip()
    try:
        rate = float(number)
    except ValueError:
        rate = math.nan
    if not math.isfinite(rate) or rate <= 0:
        raise click.BadParameter(f"{text!r}: calls a second, a positive number (10 or 10/s)")
    return rate


@click.command(name="load")
@click.argument("scenario", default="sharing-call")
@click.option("--calls", type=click.IntRange(1, MAX_CALLS), default=10, show_default=True,
              help="How many sharing calls, each its own Skype client.")  # fmt: skip
@click.option("--rate", metavar="R/s",
              help="Start at most R calls a second (default: all at once).")  # fmt: skip
@click.option("--concurrent", type=click.IntRange(1), metavar="M",
              help="At most M calls up at once; the next starts when one ends.")  # fmt: skip
@click.option("--clock", type=click.Choice(["live", "virtual"]),
              help="Override the scenario's clock.")  # fmt: skip
@click.option("--stats", "stats_file", type=click.Path(dir_okay=False, path_type=Path),
              metavar="F",
              help="Write periodic and final figures to F (.csv or .json).")  # fmt: skip
@click.option("--stats-every", type=click.FloatRange(0.001), default=1.0, show_default=True,
              metavar="S", help="Seconds of the run's clock between two --stats rows.")  # fmt: skip
@click.option("--max-failures", type=click.IntRange(0), default=0, show_default=True,
              metavar="K",
              help="Exit 0 still when at most K calls missed the scenario's expect.")  # fmt: skip
@click.option("--json", "json_file",
              type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              metavar="F", help="Write the summary and every call's result as JSON; '-': "
              "standard output (the summary goes to standard error).")  # fmt: skip
def load_command(
    scenario: str,
    calls: int,
    rate: str | None,
    concurrent: int | None,
    clock: str | None,
    stats_file: Path | None,
    stats_every: float,
    max_failures: int,
    json_file: Path | None,
) -> None:
    """Run many sharing calls at once (default scenario: sharing-call): N Skype clients, each
    with its own address, through one Skype Edge, one Expressway-E, one Expressway-C and one
    CMS, the scenario's faults and settings applied to every call; each call is judged
    against the scenario's expect. Exit 0 when every call met it (or at most --max-failures
    did not), 1 otherwise."""
    from labsim import cli

    say = cli.level()
    per_second = parse_rate(rate)
    sc = cli._load(cli.resolve_scenario(scenario))
    most = calls_possible(sc.lab())
    if calls > most:
        raise cli.BadInput(
            f"labsim: --calls {calls}: one meeting holds at most {most} calls (client "
            f"addresses, and the Edge's relay ports from {sc.actors.skype_edge.relay_port} "
            "to 65535)"
        )
    run_clock = cast(Literal["live", "virtual"], clock or sc.clock)
    json_sink = cli._Sink("--json", json_file) if json_file is not None else None
    stats = StatsFile(stats_file) if stats_file is not None else None
    if run_clock == "live":
        live_calls = min(calls, concurrent or calls)
        raise_fd_limit(1024 + FDS_PER_LIVE_CALL * live_calls)
    try:
        what = f"{sc.name}: {calls} calls ({run_clock} clock)"
        with cli._Progress(say != "quiet", calls, what) as progress:
            seen = [0]

            def advance(done: int, total: int) -> None:
                progress.update(what, advance=done - seen[0])
                seen[0] = done

            result = run_load(
                sc, calls, clock=run_clock, rate=per_second, concurrent=concurrent,
                every=stats_every, progress=advance,
                on_sample=stats.sample if stats is not None else None,
            )  # fmt: skip
        figures = summary(result, max_failures)
        if stats is not None:
            stats.final(result.samples[-1] if result.samples else None, figures)
            stats = None
        to_stderr = json_sink is not None and json_sink.to_stdout
        out = sys.stderr if to_stderr else sys.stdout
        for line in report_lines(figures):
            click.echo(line, file=out)
        if json_sink is not None:
            json_sink.stream.write(json.dumps(figures, indent=1).encode() + b"\n")
    finally:
        if json_sink is not None:
            json_sink.close()
        if stats is not None:
            stats.stream.close()
    if not figures["ok"]:
        click.echo(f"expectations not met: {figures['failed']} of {calls} calls (at most "
                   f"{max_failures} allowed)", file=out)  # fmt: skip
        sys.exit(cli.EXIT_FAILED)
    click.echo(f"expectations met: {figures['passed']} of {calls} calls", file=out)
