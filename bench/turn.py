"""TURN relay speed: our TurnServer (live runtime) against Debian's coturn, same client, one run.

Both servers run as their own processes on 127.0.0.1 (ours in a child Python, so it does not share
the client's GIL), on free ports found at run time. One blocking-socket client built on labsim's
codec measures, for each server:

1. relay throughput through an RFC 6062 TCP allocation (PROTOCOL.md §3.3): Allocate -> 401 ->
   authenticated Allocate, CreatePermission 127.0.0.1, a peer connects to the relayed port,
   ConnectionAttempt, ConnectionBind on a data connection; then a writer thread pushes 64 KiB
   random writes in one end while the main thread counts what comes out of the other, for
   ``--seconds`` per direction (peer -> client, then client -> peer);
2. TCP allocations per second, one at a time on a fresh control connection each: Allocate -> 401
   -> authenticated Allocate -> Success -> Refresh LIFETIME 0 -> Success, for ``--alloc-seconds``.

Prints both figures for both servers, the ratios (labsim / coturn) against the targets of issue
15 (relay throughput kept >= 3.0x, allocations >= 1.0x), and each server's peak RSS (VmHWM). A
miss is reported as BELOW; the exit status is 0 either way (a benchmark, not a test).

Beside the allocation rate it prints each server's CPU time (user + system, all threads, from
/proc) per allocation over the same loop: the rate of a one-at-a-time loop also counts the
client and the scheduler, and moves with the machine's load, while the CPU per allocation is
the server's own cost and moves much less on a shared machine.

    .venv/bin/python bench/turn.py [--seconds 3] [--alloc-seconds 3] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from labsim.wire import stun
from labsim.wire.stun import Class, Message, Method

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# The tests' TURN client and port helpers: one client for the tests and the bench.
from tests.stun_client import (  # noqa: E402
    KEY,
    TIMEOUT,
    Control,
    authed,
    coturn_command,
    free_port,
    free_range,
    wait_listening,
)  # fmt: skip

HOST = "127.0.0.1"
CHUNK = 64 * 1024
RELAY_PORTS = 200
#: Issue 15's targets, labsim / coturn: relay throughput kept at 3x or more, allocations per
#: second at least coturn's.
THROUGHPUT_TARGET = 3.0
ALLOCATION_TARGET = 1.0

# The child that runs our server. It only needs the installed labsim package; the server lives
# for at most argv[4] seconds even if the parent dies without killing it.
OURS_CHILD = """
import sys
from labsim.net.live import LiveNetwork
from labsim.proto.turn_server import TurnServer, TurnServerSettings
from labsim.trace import Trace

port, low, high, until = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
settings = TurnServerSettings(port=port, relay_ports=(low, high), permission_policy="rfc")
LiveNetwork([TurnServer("expressway_e", "127.0.0.1", settings).actor()], Trace()).run(until=until)
"""


# ---------------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    port: int
    pid: int
    """The server process itself (for coturn: turnserver, not the `timeout` above it)."""

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the server process, all its threads (None off Linux)."""
        try:
            # Fields 14 and 15 of /proc/PID/stat, counted after the ")" that ends the name.
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def peak_rss_mib(self) -> float | None:
        """VmHWM of the server process (None once it is gone or off Linux)."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except (OSError, ValueError):
            pass
        return None


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End one child we started, by its pid: TERM, then KILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextmanager
def ours(lifetime: float) -> Iterator[Server]:
    port = free_port()
    relays = free_range(RELAY_PORTS, HOST, avoid=port)
    cmd = [sys.executable, "-c", OURS_CHILD, str(port), str(relays.start), str(relays.stop - 1)]
    proc = subprocess.Popen(
        [*cmd, str(lifetime)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_listening(HOST, port, "labsim TurnServer", 20.0, proc)
        yield Server("labsim", port, proc.pid)
    finally:
        stop(proc)
        assert proc.stderr is not None
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
        if err and "Terminated" not in err:
            print(f"  (labsim child stderr: {err[-500:]})", file=sys.stderr)


@contextmanager
def coturn(workdir: Path, lifetime: float) -> Iterator[Server]:
    """coturn as PROTOCOL.md §11 starts it; its own log file, killed at the end."""
    turnserver = shutil.which("turnserver")
    if turnserver is None:
        raise RuntimeError("turnserver not found: apt-get install coturn")
    port = free_port()
    relays = free_range(RELAY_PORTS, HOST, avoid=port)
    cmd = coturn_command(turnserver, HOST, port, relays, workdir)
    # `timeout` bounds its life even if this script is killed before the finally runs; it
    # forwards our SIGTERM to turnserver, whose own pid (for VmHWM) is in its pid file.
    proc = subprocess.Popen(
        ["timeout", "--signal=KILL", str(int(lifetime)), *cmd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pid: int | None = None
    try:
        wait_listening(HOST, port, "turnserver", 10.0, proc)
        pid = turnserver_pid(workdir / "turnserver.pid")
        yield Server("coturn", port, pid if pid is not None else proc.pid)
    finally:
        stop(proc)
        # Should turnserver have outlived `timeout` (TERM ignored, then `timeout` killed), end
        # it by its own pid, after checking that the pid is still turnserver's.
        if pid is not None and is_turnserver(pid):
            os.kill(pid, signal.SIGKILL)


def turnserver_pid(pidfile: Path) -> int | None:
    """turnserver's pid from its pid file, which may be written just after it listens."""
    for _ in range(40):
        try:
            return int(pidfile.read_text().strip())
        except (OSError, ValueError):
            time.sleep(0.05)
    return None


def is_turnserver(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "turnserver"
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------------------------


def expect(response: Message, cls: Class, what: str) -> Message:
    if response.cls is not cls:
        raise RuntimeError(f"{what}: {response.summary()}")
    return response


def allocate(port: int) -> tuple[Control, str, stun.XorRelayedAddress]:
    """A fresh control connection holding a TCP allocation; returns it, the nonce, the relay."""
    control = Control((HOST, port), check=False)
    try:
        challenge = control.transact(
            Message.request(Method.ALLOCATE, [stun.RequestedTransport(6), stun.Fingerprint()])
        )
        nonce = challenge.get(stun.Nonce)
        if challenge.cls is not Class.ERROR or nonce is None:
            raise RuntimeError(f"Allocate: expected 401, got {challenge.summary()}")
        allocated = expect(
            control.transact(
                authed(Method.ALLOCATE, [stun.RequestedTransport(6)], nonce.value), KEY
            ),
            Class.SUCCESS,
            "Allocate",
        )
        relayed = allocated.get(stun.XorRelayedAddress)
        if relayed is None:
            raise RuntimeError("Allocate Success without XOR-RELAYED-ADDRESS")
        return control, nonce.value, relayed
    except BaseException:
        control.close()
        raise


def release(control: Control, nonce: str) -> None:
    expect(
        control.transact(authed(Method.REFRESH, [stun.Lifetime(0)], nonce), KEY),
        Class.SUCCESS,
        "Refresh LIFETIME 0",
    )


def allocation_rate(port: int, seconds: float) -> tuple[float, int]:
    """Allocations per second, one after another, each on its own control connection; and how
    many were made."""
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        control, nonce, _ = allocate(port)
        try:
            release(control, nonce)
        finally:
            # RST: thousands of short control connections must leave no TIME_WAIT behind on
            # the client side to exhaust ephemeral ports (both servers alike).
            control.close(reset=True)
        done += 1
    return done / (time.perf_counter() - start), done


@dataclass
class Pipe:
    control: Control
    nonce: str
    data: Control
    peer: socket.socket

    def close(self) -> None:
        self.data.close()
        self.peer.close()
        try:
            release(self.control, self.nonce)
        except (OSError, RuntimeError):
            pass  # the relay figures are taken already; a failed release changes none of them
        self.control.close()


def open_pipe(port: int) -> Pipe:
    """A passive RFC 6062 relay pipe: peer socket <-> data connection (PROTOCOL.md §3.3)."""
    control, nonce, relayed = allocate(port)
    # Both servers (ours with permission_policy="rfc") reset a peer without a permission.
    expect(
        control.transact(
            authed(Method.CREATE_PERMISSION, [stun.XorPeerAddress(HOST, 0)], nonce), KEY
        ),
        Class.SUCCESS,
        "CreatePermission",
    )
    peer = socket.create_connection((relayed.address, relayed.port), timeout=TIMEOUT)
    attempt = control.receive()
    connection_id = attempt.get(stun.ConnectionId)
    if attempt.method != Method.CONNECTION_ATTEMPT or connection_id is None:
        raise RuntimeError(f"expected ConnectionAttempt, got {attempt.summary()}")
    data = Control((HOST, port), max_messages=1, check=False)  # one STUN exchange, then raw bytes
    expect(
        data.transact(authed(Method.CONNECTION_BIND, [connection_id], nonce), KEY),
        Class.SUCCESS,
        "ConnectionBind",
    )
    if data.splitter.take_buffered():
        raise RuntimeError("bytes on the data connection before any were sent")
    return Pipe(control, nonce, data, peer)


def pump(source: socket.socket, sink: socket.socket, seconds: float) -> tuple[float, int]:
    """MB/s (10^6 bytes) from ``source`` to ``sink`` over ``seconds``, and the writes made.

    A thread writes 64 KiB chunks of random bytes (so no layer can shortcut zeros) while this
    thread reads and counts; the clock runs from the first byte received to the deadline. Every
    64th read is compared with what must arrive at its stream offset, so a relay that drops,
    duplicates or reorders bytes fails the run instead of posting a figure."""
    payload = os.urandom(CHUNK)
    # Byte k of the stream is payload[k % CHUNK]; a read of up to read_size bytes at any
    # offset lies inside this many repeats of it.
    read_size = 256 * 1024
    pattern = payload * (read_size // CHUNK + 1)
    halt = threading.Event()
    writes = 0
    failure: list[BaseException] = []

    def writer() -> None:
        nonlocal writes
        try:
            while not halt.is_set():
                source.sendall(payload)
                writes += 1
        except OSError as exc:
            if not halt.is_set():
                failure.append(exc)

    buf = bytearray(read_size)
    view = memoryview(buf)
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    offset = 0  # stream offset of the next byte to read

    def read(check: bool) -> int:
        nonlocal offset
        n = sink.recv_into(view)
        if n == 0:
            raise ConnectionError(f"relay closed the pipe after {offset} bytes")
        if check:
            at = offset % CHUNK
            if view[:n] != pattern[at : at + n]:
                raise RuntimeError(f"relayed bytes differ from those sent near offset {offset}")
        offset += n
        return n

    try:
        read(True)  # the first bytes start the clock
        start = now = time.perf_counter()
        deadline = start + seconds
        received = reads = 0
        while now < deadline:
            received += read(reads % 64 == 0)
            reads += 1
            now = time.perf_counter()
        elapsed = now - start
    finally:
        # Drain until the writer sees the halt: it may be blocked in sendall on a full relay.
        halt.set()
        sink.settimeout(0.2)
        give_up = time.monotonic() + 5.0
        while thread.is_alive() and time.monotonic() < give_up:
            try:
                if sink.recv_into(view) == 0:
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        thread.join(timeout=1.0)
    if failure:
        raise RuntimeError(f"writer failed: {failure[0]}")
    return received / elapsed / 1e6, writes


@dataclass
class Result:
    down: float  # peer -> client, MB/s
    up: float  # client -> peer, MB/s
    allocs: float  # allocations per second
    alloc_cpu: float | None  # server CPU microseconds per allocation
    writes: int
    rss: float | None


def measure(server: Server, seconds: float, alloc_seconds: float) -> Result:
    pipe = open_pipe(server.port)
    try:
        down, w1 = pump(pipe.peer, pipe.data.sock, seconds)
    finally:
        pipe.close()
    # A fresh pipe per direction: the drained tail of the first run does not leak into this one.
    pipe = open_pipe(server.port)
    try:
        up, w2 = pump(pipe.data.sock, pipe.peer, seconds)
    finally:
        pipe.close()
    cpu_before = server.cpu_seconds()
    allocs, done = allocation_rate(server.port, alloc_seconds)
    cpu_after = server.cpu_seconds()
    alloc_cpu = None
    if cpu_before is not None and cpu_after is not None and done:
        alloc_cpu = (cpu_after - cpu_before) / done * 1e6
    return Result(down, up, allocs, alloc_cpu, w1 + w2, server.peak_rss_mib())


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def verdict(ratio: float, target: float) -> str:
    return "PASS" if ratio >= target else "BELOW"


def report(ours_r: Result, theirs: Result) -> None:
    def row(label: str, a: float, b: float, target: float | None) -> None:
        ratio = a / b if b else float("inf")
        tail = f"  >= {target:.1f}  {verdict(ratio, target)}" if target is not None else ""
        print(f"{label:<24}{a:>10.1f}{b:>11.1f}{ratio:>9.2f}{tail}")

    print(f"{'':<24}{'labsim':>10}{'coturn':>11}{'ratio':>9}  target")
    both_ours = (ours_r.down + ours_r.up) / 2
    both_theirs = (theirs.down + theirs.up) / 2
    row("relay MB/s (mean)", both_ours, both_theirs, THROUGHPUT_TARGET)
    row("  peer -> client", ours_r.down, theirs.down, None)
    row("  client -> peer", ours_r.up, theirs.up, None)
    row("allocations/s", ours_r.allocs, theirs.allocs, ALLOCATION_TARGET)
    if ours_r.alloc_cpu is not None and theirs.alloc_cpu is not None:
        row("  server CPU us/alloc", ours_r.alloc_cpu, theirs.alloc_cpu, None)
    if ours_r.rss is not None and theirs.rss is not None:
        row("peak RSS MiB", ours_r.rss, theirs.rss, None)


def best(results: list[Result]) -> Result:
    """Per figure, the best of the repeats (shared CPUs make single runs noisy)."""
    rss = [r.rss for r in results if r.rss is not None]
    cpu = [r.alloc_cpu for r in results if r.alloc_cpu is not None]
    return Result(
        max(r.down for r in results),
        max(r.up for r in results),
        max(r.allocs for r in results),
        min(cpu) if cpu else None,
        sum(r.writes for r in results),
        max(rss) if rss else None,
    )


def main() -> None:
    assert __doc__ is not None
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="pumping time per direction (default 2)"
    )
    parser.add_argument(
        "--alloc-seconds", type=float, default=2.0, help="allocation loop time (default 2)"
    )
    # Three alternating rounds by default: on a shared 2-core machine one round moves by ±30%.
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds, servers alternating; the best is shown"
    )
    args = parser.parse_args()
    # Each server lives for all rounds plus slack for setup, then dies on its own.
    lifetime = 2 * args.repeat * (2 * args.seconds + args.alloc_seconds + 5) + 30
    print(
        f"{args.repeat} round(s), servers alternating: relay {args.seconds:g} s per direction "
        f"with {CHUNK // 1024} KiB writes, then {args.alloc_seconds:g} s of sequential TCP "
        f"allocations (Allocate, 401, Allocate, Refresh 0); {os.cpu_count()} CPUs"
    )
    results: dict[str, list[Result]] = {"labsim": [], "coturn": []}
    with tempfile.TemporaryDirectory(prefix="bench-turn-") as tmp, ExitStack() as stack:
        servers = [
            stack.enter_context(ours(lifetime)),
            stack.enter_context(coturn(Path(tmp), lifetime)),
        ]
        # Both are up for the whole run and measured in turn, so both see the same machine load.
        for _ in range(args.repeat):
            for server in servers:
                r = measure(server, args.seconds, args.alloc_seconds)
                results[server.name].append(r)
                cpu = f" ({r.alloc_cpu:.0f} us CPU each)" if r.alloc_cpu is not None else ""
                print(
                    f"  {server.name}: {r.down:.1f} / {r.up:.1f} MB/s (peer->client / "
                    f"client->peer), {r.allocs:.0f} allocations/s{cpu}, {r.writes} writes"
                )
        log = Path(tmp) / "turnserver.log"
        if log.exists():
            print(f"  coturn log: {log.stat().st_size / 1e6:.1f} MB")
    print()
    report(best(results["labsim"]), best(results["coturn"]))


if __name__ == "__main__":
    main()
