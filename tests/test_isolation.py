"""Live runs never collide: each claims a loopback block of its own (labsim/net/live.py).

- The claim itself: two claims never hold the same block, in one process or in two; a released
  block (or one whose process died) can be claimed again; blocks in use outside the claim
  system are skipped.
- Two live runs at the same moment on the lab's exact ports: in one event loop, and as two
  ``labsim run --clock live`` processes, the real command line, both exiting 0.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from labsim.net.live import LiveNetwork, claim_block
from labsim.proto.events import Address, Closed
from labsim.trace import Trace

from .test_runtimes import CLIENT_HOST, SERVER_HOST, Client, EchoServer, first_in

ROOT = Path(__file__).parent.parent
LABSIM = Path(sys.executable).with_name("labsim")  # the venv's console script


def somewhere() -> tuple[int, int]:
    """A block free a moment ago, to start claims at (any block does: a claim walks on from a
    taken one); other tests and pytest-xdist workers claim at random, elsewhere."""
    with claim_block() as block:
        return block.a, block.b


def test_claims_never_share_a_block_and_a_released_one_is_free_again() -> None:
    first = somewhere()
    blocks = [claim_block(first=first) for _ in range(20)]
    try:
        prefixes = [b.prefix for b in blocks]
        assert len(set(prefixes)) == 20
        assert all(b.held and not b.prefix.startswith("127.0.") for b in blocks)
        taken = blocks[0].prefix
        blocks[0].release()
        assert not blocks[0].held
        blocks[0].release()  # twice is harmless
        with claim_block(first=(blocks[0].a, blocks[0].b)) as again:
            assert again.prefix == taken
            assert again.address(1) == f"{taken}.1" and again.address(254) == f"{taken}.254"
            assert again.address(1) in again and "127.0.0.1" not in again
        with pytest.raises(ValueError):
            blocks[1].address(255)
    finally:
        for block in blocks:
            block.release()


def test_random_claims_differ_and_avoided_blocks_are_skipped() -> None:
    blocks = [claim_block() for _ in range(10)]
    try:
        assert len({b.prefix for b in blocks}) == 10
        a, b = somewhere()
        with claim_block(avoid=[f"127.{a}.{b}.9", "::1", "10.1.2.3"], first=(a, b)) as block:
            assert block.prefix != f"127.{a}.{b}"
    finally:
        for block in blocks:
            block.release()


HOLDER = textwrap.dedent(
    """
    import sys
    from labsim.net.live import claim_block
    block = claim_block(first=(int(sys.argv[1]), int(sys.argv[2])))
    print(block.prefix, flush=True)
    sys.stdin.read()  # held until the parent closes our stdin (or kills us)
    """
)


def test_a_block_held_by_another_process_is_not_claimed_until_it_exits() -> None:
    first = somewhere()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, *map(str, first)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        theirs = holder.stdout.readline().strip()
        with claim_block(first=first) as ours:
            assert theirs and ours.prefix != theirs
    finally:
        holder.kill()  # no release of its own: the kernel frees the name with the process
        holder.wait(timeout=10)
    a, b = map(int, theirs.split(".")[1:])
    with claim_block(first=(a, b)) as ours:
        assert ours.prefix == theirs


async def test_two_live_runs_at_once_on_the_same_lab_ports() -> None:
    def actors() -> tuple[EchoServer, Client]:
        server = EchoServer(5061)  # the lab's SIP port, on 10.48.54.229 in both runs
        return server, Client(Address(SERVER_HOST, 5061), [b"one", b"two"], local_port=53577)

    (s1, c1), (s2, c2) = actors(), actors()
    one, two = LiveNetwork([s1, c1], Trace()), LiveNetwork([s2, c2], Trace())
    traces = await asyncio.wait_for(
        asyncio.gather(
            one.arun(5.0, stop=lambda _: bool(s1.of(Closed))),
            two.arun(5.0, stop=lambda _: bool(s2.of(Closed))),
        ),
        timeout=10,
    )
    assert one.loopback_of(SERVER_HOST) != two.loopback_of(SERVER_HOST)
    for server, client, trace in ((s1, c1, traces[0]), (s2, c2, traces[1])):
        assert bytes(client.received) == b"onetwo" and server.data[first_in(server)] == b"onetwo"
        (record,) = trace.connections.values()
        # What the trace shows is the lab's, whichever block the run had.
        assert record.server_addr == Address(SERVER_HOST, 5061)
        assert record.client_addr == Address(CLIENT_HOST, 53577)


def test_two_labsim_run_live_processes_started_together_both_pass() -> None:
    cmd = [str(LABSIM), "run", "--clock", "live", "-q"]
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(2)
    ]
    outputs: list[str] = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=60)  # the call holds 6 s; the deadline is 20 s
            outputs.append(out.decode(errors="replace"))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out
        assert "outcome sharing-established" in out and "expectations met" in out, out
