"""Locust's distributed mode spreading sharing calls (issue 15, docs/locust.md): one master and
two workers, all on loopback, run labsim's Locust user class (labsim/locustfile.py) against a
``labsim serve`` target in a process of its own; every call is checked on both sides (Locust's
statistics: calls and 0 failures; the target's own judgement: every call it saw established,
as many as Locust counted, from both workers).

Also: ``labsim serve`` and the Skype side's :func:`labsim.serve.place_call` in one process (the
halves, each judged from its own trace), the target address parser, and bad input."""

from __future__ import annotations

import asyncio
import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from click.testing import CliRunner

from labsim.cli import main
from labsim.net.live import claim_block
from labsim.scenario import bundled, load
from labsim.serve import (
    ESTABLISHED,
    Target,
    TargetError,
    aplace_call,
    judge_target,
    locustfile_path,
    parse_target,
    sip_of,
    with_hold,
)

#: Seconds a call stays up in these tests (the scenario's hold is 6 s).
HOLD = 0.5
#: Locust users (calls up at once) in the distributed test.
USERS = 4
#: Calls each user places (--labsim-calls-per-user): about 1.2 s each with HOLD.
CALLS_PER_USER = 3
#: Every process of a test is killed after this long, whatever happens.
BOUND = 90.0


def _require_locust() -> None:
    if importlib.util.find_spec("locust") is None:
        message = "locust is not installed (the dev extras install it: scripts/setup.sh)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


class _Lines:
    """A child's standard output, read line by line in a thread (a pipe read with a bound)."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._new = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._new:
                self.lines.append(line)
                self._new.notify_all()
        with self._new:
            self.lines.append("")  # end of output
            self._new.notify_all()

    def json_event(self, event: str, timeout: float) -> dict[str, Any]:
        """The first JSON line whose ``event`` is ``event``."""
        with self._new:
            found = self._new.wait_for(lambda: self._find(event) is not None or "" in self.lines,
                                       timeout)  # fmt: skip
            doc = self._find(event)
        assert found and doc is not None, f"no {event!r} line: {''.join(self.lines)[-2000:]}"
        return doc

    def _find(self, event: str) -> dict[str, Any] | None:
        for line in self.lines:
            if line.startswith("{"):
                doc: dict[str, Any] = json.loads(line)
                if doc.get("event") == event:
                    return doc
        return None


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts: killed by pid at the end, whatever happened."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not refused
            pass


def _stats(prefix: Path) -> dict[str, int]:
    """Locust's --csv statistics: the sharing-call row's request and failure counts."""
    with open(f"{prefix}_stats.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    row = next(r for r in rows if r["Type"] == "sharing-call")
    return {"requests": int(row["Request Count"]), "failures": int(row["Failure Count"])}


def test_locust_master_and_two_workers_place_calls_the_target_sees_established(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    _require_locust()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    target = subprocess.Popen(
        [sys.executable, "-m", "labsim", "serve", "--for", str(BOUND), "--json", "-"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    processes.append(target)
    assert target.stdout is not None
    out = _Lines(target.stdout)
    where = out.json_event("listening", 30)
    host = f"labsim://{where['target']}"
    # The master's port on a loopback address of a block this test holds: no other run binds
    # there, whatever runs beside it.
    with claim_block() as block:
        bind = block.address(1)
        locustfile = str(locustfile_path())
        common = [sys.executable, "-m", "locust", "-f", locustfile, "--loglevel", "WARNING"]
        prefix = tmp_path / "calls"
        master = subprocess.Popen(
            [*common, "--master", "--headless", "--expect-workers", "2",
             "--expect-workers-max-wait", "30", "--master-bind-host", bind,
             "--master-bind-port", "5557", "-u", str(USERS), "-r", str(USERS), "-t", "12s",
             "--labsim-calls-per-user", str(CALLS_PER_USER),
             "--stop-timeout", "30", "--host", host, "--labsim-hold", str(HOLD),
             "--csv", str(prefix), "--only-summary"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        processes.append(master)
        workers = [
            subprocess.Popen(
                [*common, "--worker", "--master-host", bind, "--master-port", "5557"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                text=True,
                env=env,
            )  # fmt: skip
            for _ in range(2)
        ]
        processes.extend(workers)
        _, master_err = master.communicate(timeout=BOUND)
        for worker in workers:
            worker.wait(timeout=30)
    assert master.returncode == 0, master_err[-3000:]
    stats = _stats(prefix)
    target.send_signal(signal.SIGTERM)
    judged = out.json_event("judgement", 60)
    target.wait(timeout=30)

    # Locust: calls were placed, none failed (a failure names the call's outcome).
    assert stats["requests"] == USERS * CALLS_PER_USER, stats
    assert stats["failures"] == 0, master_err[-3000:]
    # The target's own judgement: every call it saw established, and it saw exactly the calls
    # Locust counted (each user stops after CALLS_PER_USER, long before the run time is up,
    # so the workers' last reports reach the master).
    assert judged["final"] is True
    assert judged["by_outcome"] == {ESTABLISHED: stats["requests"]}, (judged, stats)
    assert target.returncode == 0
    # Both workers placed calls: worker 0 numbers its calls 1, 3, 5 …, worker 1 2, 4, 6 ….
    numbers = [c["call"] for c in judged["per_call"]]
    assert len(set(numbers)) == len(numbers)
    assert {n % 2 for n in numbers} == {0, 1}, numbers
    for c in judged["per_call"]:
        assert len(c["call_ids"]) == 2, c  # the audio/video call and the share


async def test_the_skype_side_and_the_target_judge_each_call_from_their_own_traces() -> None:
    sc = with_hold(load(bundled("sharing-call") or "sharing-call"), HOLD)
    target = Target(sc)
    ready = asyncio.Event()
    serving = asyncio.ensure_future(target.serve(60, ready.set, signals=False))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        address = target.address()
        calls = await asyncio.gather(
            *(aplace_call(sc, address, n, keep_trace=True) for n in (7, 8, 9))
        )
    finally:
        target.stop()
        await serving
    for call in calls:
        assert call.outcome.name == ESTABLISHED, call.verdict
        assert call.established and call.ended == "finished"
        assert call.setup is not None and call.setup > 0
        assert call.trace is not None
        # The Skype side's trace holds its own two actors and the target as "external".
        actors = {m.src for m in call.trace.messages} | {m.dst for m in call.trace.messages}
        assert actors == {call.client, "skype_edge", "external"}, actors
    seen = judge_target(target.trace)
    assert [c.call for c in seen] == [7, 8, 9]
    assert all(c.outcome.name == ESTABLISHED for c in seen), [c.outcome for c in seen]
    # Each view holds its own call's SIP only: the Call-IDs the Skype side used.
    for call, judged in zip(calls, seen, strict=True):
        assert call.trace is not None
        assert set(judged.call_ids) == {f.call_id for f in sip_of(call.trace)}
    # And the target's trace has no Skype actor in it.
    assert not {m.src for m in target.trace.messages} & {"skype_edge", "skype_client"}


async def test_a_call_against_no_target_fails_and_says_why() -> None:
    sc = with_hold(load(bundled("sharing-call") or "sharing-call"), HOLD)
    with claim_block() as block:  # nothing listens in a block this test holds
        nobody = parse_target(f"{block.address(9)}:5060", 5060)
        call = await aplace_call(sc, nobody, 1)
    assert not call.established
    assert call.outcome.name != ESTABLISHED
    assert call.verdict.startswith(f"{call.outcome.name}: ")


def test_target_addresses_parse() -> None:
    assert parse_target("labsim://127.1.2.3:5070", 5060) == parse_target("127.1.2.3:5070", 1)
    t = parse_target("labsim://127.1.2.3", 5060)
    assert (t.host, t.port, t.relay_host) == ("127.1.2.3", 5060, "127.1.2.3")
    assert str(parse_target("sip://[::1]:5061/", 5060)) == "::1:5061"
    for bad in ("labsim://", "127.0.0.1:0", "127.0.0.1:http", "h:99999"):
        with pytest.raises(TargetError):
            parse_target(bad, 5060)


def test_a_target_off_loopback_is_refused_before_any_socket() -> None:
    sc = load(bundled("sharing-call") or "sharing-call")
    with pytest.raises(TargetError, match="loopback"):
        asyncio.run(aplace_call(sc, parse_target("192.0.2.1:5060", 5060), 1))


def test_serve_and_locustfile_commands() -> None:
    runner = CliRunner()
    found = runner.invoke(main, ["locustfile", "--path"])
    assert found.exit_code == 0
    path = Path(found.output.strip())
    assert path == locustfile_path() and path.is_file()
    assert "class SharingCallUser(User)" in path.read_text(encoding="utf-8")
    usage = runner.invoke(main, ["locustfile"])
    assert "--master" in usage.output and "--worker" in usage.output
    bad = runner.invoke(main, ["serve", "--for", "0"])
    assert bad.exit_code == 2
    missing = runner.invoke(main, ["serve", "no-such-scenario"])
    assert missing.exit_code == 2


def test_serve_with_no_calls_judges_none_and_exits_0() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["serve", "--for", "0.3", "--json", "-"])
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events] == ["listening", "judgement"]
    listening, judged = events
    assert listening["expressway_e"]["lab"] == "10.48.54.229"
    assert listening["target"] == f"{listening['expressway_e']['host']}:5060"
    assert judged["calls"] == 0 and judged["final"] is True
