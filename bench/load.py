"""``labsim load`` at scale: how the cost of a sharing call grows with the calls up at once.

Live: 10 -> 100 -> 1,000 concurrent sharing calls on loopback (each call through the one Edge,
Expressway-E, Expressway-C and CMS), started at ``--rate`` calls a second and held long
enough that all are up at once (the peak of TURN allocations held says whether they were):
all established?, setup p50/p99 (sharing INVITE to the reINVITE's ACK), wall time, CPU and
RSS per call. Virtual: N calls in one simulation (default 100, 1,000, 10,000), wall and CPU.

Baseline, measured in the same run: one sharing call alone, ``labsim run``'s way
(:func:`labsim.run.run_scenario`), on each clock; every figure per call is given as a ratio
to it. Each size runs in a child process of its own, so RSS is that run's alone. Nothing
here is a test; the machine is shared, so read ratios and orders of growth, not the
absolute figures.

    .venv/bin/python bench/load.py [--live 10,100,1000] [--virtual 100,1000,10000] [--rate 25]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def scenario_text(calls: int, rate: float, clock: str) -> str:
    """The healthy lab; live, held long enough that every call is up before the first hangs
    up. Virtual calls keep the lab's hold: started at ``--virtual-rate`` a second, about
    rate × 6.6 s of them are up at once (within Expressway-E's 1,800 allocations; started all
    at the same instant, 10,000 TURN connections without an allocation would pass its
    max_idle_connections, 1,000, and the oldest would be reset, as that setting says)."""
    ramp = (calls - 1) / rate
    hold = max(6.0, ramp + 10.0) if clock == "live" else 6.0
    deadline = hold + ramp + 40.0
    return (
        f"extends: {ROOT / 'labsim' / 'scenarios' / 'sharing-call.yaml'}\n"
        f"name: load-{calls}\ndeadline: {deadline}\ncall: {{hold: {hold}}}\n"
    )


def one(clock: str, calls: int, rate: float) -> dict[str, Any]:
    """One size, in this (child) process."""
    from labsim import scenario
    from labsim.load import raise_fd_limit, rss_kib, run_load
    from labsim.load_command import percentile
    from labsim.run import run_scenario

    raise_fd_limit(4096 + 16 * calls)
    if calls == 0:  # the baseline: one call alone, as labsim run runs it
        sc = scenario.load(ROOT / "labsim" / "scenarios" / "sharing-call.yaml")
        before = rss_kib()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = run_scenario(sc, clock)  # type: ignore[arg-type]
        return {
            "calls": 1, "established": int(result.outcome.name == "sharing-established"),
            "wall": time.perf_counter() - wall0, "cpu": time.process_time() - cpu0,
            "rss_growth_kib": rss_kib() - before, "end": 0.0,
            "setup_p50": None, "setup_p99": None, "peak_allocations": 1,
        }  # fmt: skip
    sc = scenario.loads(scenario_text(calls, rate, clock))
    before = rss_kib()
    result = run_load(sc, calls, clock=clock, rate=rate)  # type: ignore[arg-type]
    setups = [c.setup for c in result.calls if c.setup is not None]
    return {
        "calls": calls,
        "established": sum(c.outcome.name == "sharing-established" for c in result.calls),
        "verdicts": dict(sorted(
            {v: sum(c.diagnosis.verdict == v for c in result.calls)
             for v in {c.diagnosis.verdict for c in result.calls}}.items())),
        "wall": result.wall, "cpu": result.cpu, "end": result.end,
        "rss_growth_kib": result.peak_rss_kib - before,
        "setup_p50": percentile(setups, 50), "setup_p99": percentile(setups, 99),
        "peak_allocations": result.peak_allocations, "peak_fds": result.peak_fds,
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }  # fmt: skip


def child(clock: str, calls: int, rate: float) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--one", clock, str(calls), "--rate", str(rate)],
        check=True, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def table(clock: str, base: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    print(f"\n{clock}: one call alone: wall {base['wall']:.3f} s, CPU {base['cpu'] * 1000:.1f} ms, "
          f"RSS +{base['rss_growth_kib']} KiB")  # fmt: skip
    head = (f"{'calls':>6} {'up':>6} {'at once':>7} {'setup p50':>9} {'p99':>8} {'wall':>8} "
            f"{'CPU/call':>9} {'x alone':>7} {'RSS/call':>9} verdicts")  # fmt: skip
    print(head)
    for r in rows:
        n = r["calls"]
        cpu_call = r["cpu"] / n
        ratio = cpu_call / base["cpu"] if base["cpu"] else math.nan
        rss_call = r["rss_growth_kib"] / n
        verdicts = ", ".join(f"{k} {v}" for k, v in r.get("verdicts", {}).items())
        print(f"{n:>6} {r['established']:>6} {r['peak_allocations']:>7} {ms(r['setup_p50']):>9} "
              f"{ms(r['setup_p99']):>8} {r['wall']:>7.1f}s {cpu_call * 1000:>7.1f}ms "
              f"{ratio:>6.2f}x {rss_call:>7.1f}KiB {verdicts}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--live", default="10,100,1000", help="live sizes, comma-separated ('' none)"
    )
    parser.add_argument("--virtual", default="100,1000,10000", help="virtual sizes ('' none)")
    parser.add_argument("--rate", type=float, default=25.0, help="live calls started a second")
    parser.add_argument(
        "--virtual-rate", type=float, default=200.0, help="virtual calls started a second"
    )
    parser.add_argument("--one", nargs=2, metavar=("CLOCK", "CALLS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.rate)))
        return
    print(f"bench/load.py: live at {args.rate:g} calls/s, virtual at {args.virtual_rate:g} "
          "calls/s (of simulated time); each size in its own process")  # fmt: skip
    for clock, sizes, rate in (
        ("live", args.live, args.rate), ("virtual", args.virtual, args.virtual_rate)
    ):  # fmt: skip
        counts = [int(x) for x in sizes.split(",") if x.strip()]
        if not counts:
            continue
        base = child(clock, 0, rate)
        rows = []
        for n in counts:
            print(f"  {clock} {n} calls ...", file=sys.stderr, flush=True)
            rows.append(child(clock, n, rate))
        table(clock, base, rows)


if __name__ == "__main__":
    main()
