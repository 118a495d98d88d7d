"""Where one machine runs out with Locust (docs/locust.md): the sharing calls a single Locust
process (one worker's worth) sustains against a `labsim serve` target in a process of its own,
next to `labsim load` placing the same calls in one process on the same machine.

For each number of users U: a fresh target (`labsim serve --hold H`), then `locust --headless
-u U -r U -t S` with labsim's user class (each user places one call after another, each held H
seconds); reported: calls completed, failures, calls per second, Locust's median and 99th
percentile of the setup time, the target's own count of established calls, and the CPU seconds
the Locust process and the target process spent per call (from wait4's rusage: steadier than
rates on a shared machine). The baseline: `labsim load --calls N --concurrent U --clock live`
with the same hold and N the number of calls Locust completed, its calls per second and CPU
per call in the same run.

    .venv/bin/python bench/locust.py [--users 10,40,80] [--hold 1] [--seconds 30]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labsim.serve import locustfile_path  # noqa: E402


def _cpu(rusage: Any) -> float:
    return float(rusage.ru_utime + rusage.ru_stime)


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> float:
    """Wait for ``proc`` (killed after ``timeout``); its CPU seconds (user + system)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, _status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = 0
            return _cpu(rusage)
        if time.monotonic() > deadline:
            proc.kill()
        time.sleep(0.05)


def _scenario(folder: Path, hold: float) -> Path:
    path = folder / "held.yaml"
    path.write_text(f"extends: sharing-call.yaml\nname: held-{hold:g}\ncall:\n  hold: {hold}\n")
    return path


def locust_run(users: int, hold: float, seconds: float, folder: Path) -> dict[str, Any]:
    jsonl = folder / f"target-{users}.jsonl"
    target = subprocess.Popen(
        [sys.executable, "-m", "labsim", "serve", "--for", str(seconds + 120), "--hold",
         str(hold), "--json", str(jsonl)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(300):
        if jsonl.exists() and jsonl.read_text().strip():
            break
        time.sleep(0.1)
    where = json.loads(jsonl.read_text().splitlines()[0])
    prefix = folder / f"locust-{users}"
    locust = subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", str(locustfile_path()), "--headless", "-u",
         str(users), "-r", str(users), "-t", f"{seconds:g}s", "--stop-timeout", "60",
         "--host", f"labsim://{where['target']}", "--labsim-hold", str(hold), "--csv",
         str(prefix), "--only-summary", "--loglevel", "WARNING"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    locust_cpu = _wait(locust, seconds + 120)
    target.send_signal(signal.SIGTERM)
    target_cpu = _wait(target, 120)
    judged = json.loads(jsonl.read_text().splitlines()[-1])
    with open(f"{prefix}_stats.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["Type"] == "sharing-call")
    calls = int(row["Request Count"])
    return {
        "users": users, "calls": calls, "failures": int(row["Failure Count"]),
        "calls_per_s": calls / seconds, "p50_ms": float(row["50%"]), "p99_ms": float(row["99%"]),
        "target_established": judged["established"], "target_calls": judged["calls"],
        "locust_cpu_per_call_ms": 1000 * locust_cpu / max(calls, 1),
        "target_cpu_per_call_ms": 1000 * target_cpu / max(judged["calls"], 1),
    }  # fmt: skip


def load_run(calls: int, users: int, scenario: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "labsim", "load", str(scenario), "--calls", str(max(calls, 1)),
         "--concurrent", str(users), "--clock", "live", "--json", "-", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    out = proc.stdout.read()
    cpu = _wait(proc, 600)
    wall = time.perf_counter() - t0
    s = json.loads(out)
    return {
        "calls": s["calls"], "established": s["by_outcome"].get("sharing-established", 0),
        "calls_per_s": s["calls"] / s["wall"],
        "wall": wall, "p50_ms": 1000 * (s["setup"]["p50"] or 0),
        "p99_ms": 1000 * (s["setup"]["p99"] or 0), "cpu_per_call_ms": 1000 * cpu / s["calls"],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", default="10,40,80")
    parser.add_argument("--hold", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; hold {args.hold:g} s; {args.seconds:g} s per Locust run")
    with tempfile.TemporaryDirectory(prefix="labsim-bench-locust-") as tmp:
        folder = Path(tmp)
        scenario = _scenario(folder, args.hold)
        for users in (int(u) for u in args.users.split(",")):
            r = locust_run(users, args.hold, args.seconds, folder)
            print(
                f"locust  users {users:4}: {r['calls']:5} calls, {r['failures']} failed, "
                f"{r['calls_per_s']:6.1f} calls/s, setup p50 {r['p50_ms']:.0f} ms p99 "
                f"{r['p99_ms']:.0f} ms; target: {r['target_established']}/{r['target_calls']} "
                f"established; CPU/call: locust {r['locust_cpu_per_call_ms']:.1f} ms, target "
                f"{r['target_cpu_per_call_ms']:.1f} ms",
                flush=True,
            )
            if args.no_baseline:
                continue
            b = load_run(r["calls"], users, scenario)
            print(
                f"load    users {users:4}: {b['calls']:5} calls, {b['established']} "
                f"established, {b['calls_per_s']:6.1f} calls/s, setup p50 {b['p50_ms']:.0f} ms p99 "
                f"{b['p99_ms']:.0f} ms; CPU/call {b['cpu_per_call_ms']:.1f} ms (both halves); "
                f"locust/load calls/s ratio {r['calls_per_s'] / b['calls_per_s']:.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
