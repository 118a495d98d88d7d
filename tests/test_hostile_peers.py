"""Hostile peers on live sockets while a sharing call runs (issue 12).

One live run of the lab call, twice: alone, then with hostile peers that start with the call.
The peers run in a process of their own (tests/hostile_peer.py), as peers on other hosts would:

* 1,000 idle TCP connections to Expressway-E's TURN port, held open for the whole call;
* connections to the TURN port that send garbage, and others that send half a STUN header and
  stall;
* the slow SIP inputs of tests/test_hostile_input.py sent to the Skype Edge's SIP port;

and from this process, an authenticated ConnectionBind, as another user of the TURN server,
naming the CONNECTION-ID Expressway-E gave CMS (RFC 6062 §5.4: a peer connection belongs to its
allocation's client).

The call must still reach sharing-established; its setup (INVITE to the last ACK the client
receives, as ``bench/call.py`` measures it) is compared with the run alone, as a ratio in the
same test; afterwards no file descriptor and no task of the run is left.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labsim.net.live import LiveNetwork
from labsim.report.outcome import outcome
from labsim.run import build, network
from labsim.scenario import Scenario
from labsim.trace import Trace
from labsim.wire import stun
from labsim.wire.framing import StunSplitter

from .hostile_peer import SLOW_SIP
from .labs import variant

IDLE = 1000
GARBAGE = 50
HALF_HEADERS = 50
#: The user the hostile ConnectionBind authenticates as: a real account, not CMS's.
MALLORY = ("mallory", "letmein")
EXPE, EDGE = "10.48.54.229", "192.168.1.252"
#: Setup under attack may take this many times the setup alone (same test, same machine).
SETUP_RATIO = 3.0
PEER = Path(__file__).with_name("hostile_peer.py")
#: The lab's relay ports start here (expressway_e.turn.relay_ports).
RELAY_LOW = 24000


def scenario() -> Scenario:
    users = f"{{turn: secret, {MALLORY[0]}: {MALLORY[1]}}}"
    # 20 ms between the Edge and Expressway-E stretches the call's setup to a few hundred ms, so
    # the peers' connections arrive while the call is being set up, not after it.
    return variant(
        f"actors: {{expressway_e: {{turn: {{users: {users}}}}}}}\n"
        "links: [{between: [skype_edge, expressway_e], latency: 0.02}]\n"
        # CMS learns of the peer's connection 0.3 s late, so the foreign ConnectionBind arrives
        # while that connection still waits for its bind (RFC 6062 §5.3).
        "faults: [{delay: {from: expressway_e, to: cms, stun: ConnectionAttempt, by: 0.3}}]\n"
        "call: {hold: 2}\n",
        name="hostile.yaml",
    )


def setup_seconds(trace: Trace) -> float:
    invite = next(m for m in trace.messages if m.src == "skype_client" and m.summary == "INVITE")
    acks = [m for m in trace.messages if m.dst == "skype_client" and m.summary == "ACK"]
    return acks[-1].t - invite.t


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass
class Run:
    trace: Trace
    outcome: str
    setup: float
    fds_after: int
    tasks_after: int
    ended: float
    """time.monotonic() when the call was over (before the run closed its sockets)."""
    peers: dict[str, Any]
    """What the hostile peers' process saw (tests/hostile_peer.py); empty for the run alone."""
    bind_answers: list[str]


async def _stun_exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: bytes
) -> stun.Message | None:
    writer.write(message)
    await writer.drain()
    splitter = StunSplitter()
    while True:
        data = await asyncio.wait_for(reader.read(65536), timeout=5)
        if not data:
            return None  # closed without an answer
        frames = splitter.feed(data)
        if frames:
            return stun.decode(frames[0])


async def _foreign_bind(
    host: str, port: int, trace: Trace, connection_id: int, answers: list[str]
) -> None:
    """ConnectionBind as another user, naming the CONNECTION-ID Expressway-E gives CMS, while
    the peer's connection waits for its bind. The server's numbers are seeded (runs repeat), so
    the run alone told us the id; the Skype Edge's connection to the relay says when."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(
        c.client == "skype_edge" and c.server == "expressway_e" and c.server_addr.port >= RELAY_LOW
        for c in list(trace.connections.values())
    ):
        await asyncio.sleep(0.001)
    # The nonce, from an Allocate's 401 on a connection of its own: with the default
    # bind_failure (reset, as coturn) an unauthenticated ConnectionBind gets no challenge.
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=5)
    try:
        allocate = stun.Message.request(stun.Method.ALLOCATE, [stun.RequestedTransport(6)])
        challenge = await _stun_exchange(reader, writer, allocate.encode())
    finally:
        writer.close()
    nonce = challenge.get(stun.Nonce) if challenge is not None else None
    if nonce is None:
        answers.append("no challenge")
        return
    user, password = MALLORY
    signed = stun.Message.request(
        stun.Method.CONNECTION_BIND,
        [stun.ConnectionId(connection_id), stun.Username(user), stun.Realm("TANDBERG"),
         stun.Nonce(nonce.value), stun.MessageIntegrity(), stun.Fingerprint()],
    )  # fmt: skip
    key = stun.long_term_key(user, "TANDBERG", password)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=5)
    try:
        answer = await _stun_exchange(reader, writer, signed.encode(key=key))
        answers.append("closed" if answer is None else answer.summary())
    except (OSError, TimeoutError) as exc:
        answers.append(f"reset ({type(exc).__name__})")
    finally:
        writer.close()


async def _run(sc: Scenario, *, bind_as_mallory: int | None = None) -> Run:
    cast = build(sc)
    net = network(sc, cast, Trace(), "live")
    assert isinstance(net, LiveNetwork)
    turn, edge = net.loopback_of(EXPE), net.loopback_of(EDGE)  # claims the run's block now
    peer = None
    if bind_as_mallory is not None:
        args = [turn, "3478", edge, "5060", str(IDLE), str(GARBAGE), str(HALF_HEADERS)]
        peer = await asyncio.create_subprocess_exec(
            sys.executable, str(PEER), *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert peer.stdin is not None and peer.stdout is not None
        assert await asyncio.wait_for(peer.stdout.readline(), 10) == b"started\n"
    ended: list[float] = []

    def over(_t: float) -> bool:
        if cast.finished() and not ended:
            ended.append(time.monotonic())  # closes after this are the run's shutdown
        return bool(ended)

    run = asyncio.create_task(net.arun(sc.deadline, stop=over))
    answers: list[str] = []
    report: dict[str, Any] = {}
    if peer is None or peer.stdin is None:
        await asyncio.wait_for(run, timeout=sc.deadline + 10)
    else:
        await asyncio.sleep(0.02)  # the run's listeners are up
        peer.stdin.write(b"go\n")
        assert bind_as_mallory is not None
        bind = asyncio.create_task(_foreign_bind(turn, 3478, net.trace, bind_as_mallory, answers))
        await asyncio.wait_for(run, timeout=sc.deadline + 10)
        await asyncio.wait_for(bind, timeout=10)
        peer.stdin.write(b"stop\n")
        out, _ = await asyncio.wait_for(peer.communicate(), 40)
        lines = out.decode().splitlines()
        assert lines[:1] == ["ready"], lines
        report = json.loads(lines[-1])
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    return Run(
        net.trace, outcome(net.trace).name, setup_seconds(net.trace), open_fds(), len(tasks),
        ended[0], report, answers,
    )  # fmt: skip


async def test_the_call_succeeds_while_hostile_peers_hammer_expressway_e_and_the_edge() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 8192)
    if soft < want:
        # 1,000 connections' server ends in this process: more than the usual 1,024 limit.
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    try:
        sc = scenario()
        fds_before = open_fds()
        alone = await _run(sc)
        attempt = stun.decode(alone.trace.find("ConnectionAttempt Indication")[0].data)
        connection_id = attempt.get(stun.ConnectionId)
        assert connection_id is not None
        attacked = await _run(sc, bind_as_mallory=connection_id.value)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    peers = attacked.peers
    ratio = attacked.setup / alone.setup
    during = {
        kind: sum(1 for t in times if t < attacked.ended)
        for kind, times in peers["closed_at"].items()
    }
    refusals = [
        log.text for log in attacked.trace.logs
        if "ConnectionBind" in log.text and "refused" in log.text
    ]  # fmt: skip
    print(
        f"hostile peers: setup alone {alone.setup * 1000:.1f} ms, under attack "
        f"{attacked.setup * 1000:.1f} ms (x{ratio:.2f}); peers opened {peers['opened']}, closed by "
        f"the server during the call {during}; foreign ConnectionBind: "
        f"{attacked.bind_answers} {refusals}; fds before {fds_before}, after {attacked.fds_after}"
    )
    assert alone.outcome == attacked.outcome == "sharing-established"
    # Every hostile connection reached the servers.
    assert peers["opened"] == {
        "idle": IDLE, "garbage": GARBAGE, "half-header": HALF_HEADERS,
        **dict.fromkeys(SLOW_SIP, 1),
    }, peers  # fmt: skip
    # Garbage and the SIP stream that cannot be framed are reset at once, while the call runs;
    # the SIP message that frames but does not parse is dropped alone.
    assert during.get("garbage") == GARBAGE and during.get("slow-sip-framing") == 1, during
    assert not during.get("slow-sip-uri"), during
    # The foreign ConnectionBind never binds CMS's peer connection, which waits for its bind:
    # it names a connection of another user's allocation (441 Wrong Credentials, RFC 5766 §6.2
    # / RFC 6062 §5.4). CMS binds it afterwards.
    assert attacked.bind_answers and not any("Success" in a for a in attacked.bind_answers)
    assert any("is not the allocation's" in text for text in refusals), refusals
    assert refusals, attacked.bind_answers
    assert ratio < SETUP_RATIO, ratio
    # Nothing leaks: every socket of both runs is closed, and no task is left.
    assert attacked.fds_after <= fds_before, (fds_before, attacked.fds_after)
    assert attacked.tasks_after == 0
