"""Virtual sharing calls per second: this tree against a base commit, measured in the same run.

One call is one whole :func:`labsim.run.run_scenario` of the default scenario on the virtual
clock: the five actors built, the meeting's audio/video call, the share (TURN allocation,
ConnectionBind, the ICE checks, the reINVITE), the hang-up, then the outcome and the
diagnosis read from the trace. Each call has seeds of its own (the Skype client's and CMS's,
so its Call-IDs, tags, branches, ICE and TURN transaction IDs differ), as the calls of a load
run do: the codecs' caches then see new text on every call, not the same call again
(``--same`` measures that easier case). Expressway-E's secrets come from its seed, so the
base and this tree must produce the same trace, byte for byte: the script compares a digest
of the first call's trace and says so.

The base is ``git archive REV`` unpacked into a temporary directory and run with the same
interpreter and dependencies. Each side runs in a process of its own, kept for the whole
measurement; they take turns, one batch of calls each, so both see the same machine load. The
figures are medians over the batches: calls per second of the process's CPU time (user +
system: a shared machine's other work stretches the wall time of a batch, much less its CPU
time) and calls per second of wall time.

``--tuned-gc`` shows what a load run gains by tuning Python's collector for many short calls
(both sides alike): a call allocates thousands of objects that live until it ends, and with
the default thresholds the collector scans them again and again.

What a load run pays once is measured apart: loading the scenario (YAML, pydantic) and the
first call (imports done, caches empty).

    .venv/bin/python bench/virtual.py [--base REV] [--calls 40] [--rounds 15] [--same]
                                      [--tuned-gc]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The child: imports labsim from the directory it runs in, then runs batches of calls on
#: demand (one line on stdin: the number of calls; one JSON line back). It uses only what the
#: base commits have too (run_scenario, loads, the settings dataclasses).
CHILD = r"""
import dataclasses, hashlib, json, sys, time
sys.path.insert(0, sys.argv[1])
t0 = time.perf_counter()
from labsim.run import run_scenario
from labsim.scenario import loads
t1 = time.perf_counter()
sc = loads(sys.argv[2], source="bench-virtual.yaml")
t2 = time.perf_counter()
same = sys.argv[3] == "same"

def nth(i):
    if same:
        return sc
    a = sc.actors
    actors = a.model_copy(update={
        "skype_client": dataclasses.replace(a.skype_client, seed=a.skype_client.seed + 7919 * i),
        "cms": dataclasses.replace(a.cms, seed=a.cms.seed + 7919 * i),
    })
    return sc.model_copy(update={"actors": actors})

def digest(trace):
    h = hashlib.sha256()
    for m in trace.messages:
        h.update(repr((m.t, m.src, m.dst, m.summary, m.fate, m.fate_t, m.size)).encode())
        h.update(m.data)
    for c in trace.connections.values():
        h.update(repr((c.id, c.client, c.server, c.opened, c.closed, c.name)).encode())
    for log in trace.logs:
        h.update(repr((log.t, log.actor, log.text, log.level)).encode())
    return h.hexdigest()[:16]

t3 = time.perf_counter()
first = run_scenario(nth(0), "virtual")
t4 = time.perf_counter()
if sys.argv[4] == "tuned-gc":
    import gc
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
print(json.dumps({
    "imports": t1 - t0, "load": t2 - t1, "first": t4 - t3, "digest": digest(first.trace),
    "outcome": first.outcome.name, "verdict": first.diagnosis.verdict,
}), flush=True)
i = 1
for line in sys.stdin:
    n = int(line)
    bad = 0
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        result = run_scenario(nth(i), "virtual")
        bad += not result.passed
        i += 1
    print(json.dumps({
        "seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu, "failed": bad,
    }), flush=True)
"""

SCENARIO = (
    "extends: sharing-call.yaml\n"
    "name: bench-virtual\n"
    "actors: {expressway_e: {turn: {secrets_from_seed: true}}}\n"
)


class Side:
    def __init__(self, name: str, root: Path, same: bool, tuned_gc: bool) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(root), SCENARIO, "same" if same else "distinct",
             "tuned-gc" if tuned_gc else "default-gc"],
            cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.start = self._read()
        self.rates: list[float] = []
        self.cpu_rates: list[float] = []

    def _read(self) -> dict[str, object]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.name}: the child process ended (see its error above)")
        value: dict[str, object] = json.loads(line)
        return value

    def batch(self, calls: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{calls}\n")
        self.proc.stdin.flush()
        got = self._read()
        if got["failed"]:
            raise SystemExit(f"{self.name}: {got['failed']} calls did not meet the expectations")
        seconds, cpu = got["seconds"], got["cpu"]
        assert isinstance(seconds, float) and isinstance(cpu, float)
        self.rates.append(calls / seconds)
        self.cpu_rates.append(calls / cpu)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def unpack(rev: str, into: Path) -> str:
    """``git archive`` of ``rev`` unpacked into ``into``; returns the commit's short id."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True,
        text=True,
    ).stdout.strip()  # fmt: skip
    archive = into / "base.tar"
    subprocess.run(["git", "archive", "-o", str(archive), commit], cwd=ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="tar")
    return commit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD~1", help="commit to compare with (HEAD~1)")
    parser.add_argument("--calls", type=int, default=40, help="calls per batch")
    parser.add_argument("--rounds", type=int, default=15, help="batches per side")
    parser.add_argument("--same", action="store_true", help="the same call every time")
    parser.add_argument(
        "--tuned-gc", action="store_true",
        help="both sides freeze what the first call left (gc.freeze) and collect the youngest "
        "generation every 50,000 allocations instead of 700, as a load run may",
    )  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="labsim-bench-") as tmp:
        commit = unpack(args.base, Path(tmp))
        sides = [
            Side(f"base {commit}", Path(tmp) / "tree", args.same, args.tuned_gc),
            Side("this tree", ROOT, args.same, args.tuned_gc),
        ]
        try:
            for _ in range(2):  # warm-up batches, not counted
                for side in sides:
                    side.batch(args.calls)
                    side.rates.clear()
                    side.cpu_rates.clear()
            for round_ in range(args.rounds):
                for side in sides[:: 1 if round_ % 2 else -1]:
                    side.batch(args.calls)
        finally:
            for side in sides:
                side.close()
    kind = "the same call" if args.same else "distinct calls (own seeds)"
    kind += ", tuned GC" if args.tuned_gc else ""
    print(
        f"virtual sharing call (audio/video call, share, hang-up, outcome, diagnosis), {kind}; "
        f"{args.rounds} batches of {args.calls} per side, taking turns"
    )
    for side in sides:
        s, cpu, wall = side.start, statistics.median(side.cpu_rates), statistics.median(side.rates)
        print(
            f"  {side.name:<12} {cpu:7.1f} calls per CPU second ({1000 / cpu:6.2f} ms), "
            f"wall {wall:7.1f} calls/s; once: imports {float(s['imports']) * 1000:.0f} ms, "
            f"scenario {float(s['load']) * 1000:.0f} ms, first call "
            f"{float(s['first']) * 1000:.0f} ms"
        )
    cpu_ratio = statistics.median(sides[1].cpu_rates) / statistics.median(sides[0].cpu_rates)
    wall_ratio = statistics.median(sides[1].rates) / statistics.median(sides[0].rates)
    print(f"  ratio this/base: {cpu_ratio:.2f}x in CPU time, {wall_ratio:.2f}x in wall time")
    digests = {str(side.start["digest"]) for side in sides}
    outcome = {f"{side.start['outcome']}/{side.start['verdict']}" for side in sides}
    same = "identical" if len(digests) == 1 else f"DIFFERENT ({', '.join(sorted(digests))})"
    print(f"  first call's trace: {same}; outcome/diagnosis {', '.join(sorted(outcome))}")
    return 0 if len(digests) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
