"""Setup time of one sharing call on live sockets, next to a floor measured in the same run.

Setup = from the Skype client's sharing INVITE to the ACK of the reINVITE reaching it (trace
times), with the default scenario (hold 0 s, so each call also hangs up at once; the meeting's
audio/video call before it, with share_after 0 s, is not counted). Each call is a whole
run: five actors, their listeners and connections, made and torn down.

The floor is the same number of one-way trips done by plain asyncio sockets: the virtual run
of the scenario with one latency L per hop takes N*L from INVITE to ACK, so the call's critical
path is N one-way trips (TCP handshakes included); the floor plays N/2 request/response round
trips of 512 bytes over one loopback connection. The ratio says how much the simulator (SIP
parsing, proxies, TURN, ICE, the trace) adds over the sockets themselves.

    .venv/bin/python bench/call.py [--calls 100]

Target (issue 4): median setup <= 5 ms per call.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labsim.run import run_scenario  # noqa: E402
from labsim.scenario import Scenario, loads  # noqa: E402
from labsim.trace import Trace  # noqa: E402

TARGET_MS = 5.0


def scenario() -> Scenario:
    return loads(
        "extends: sharing-call.yaml\ncall: {hold: 0}\n"
        "actors: {cms: {turn: {keepalive_first: null}}, skype_client: {share_after: 0}}\n",
        source="bench-call.yaml",
    )


def setup_time(trace: Trace) -> float:
    invite = next(
        m for m in trace.messages
        if m.src == "skype_client" and m.summary == "INVITE" and m.sip_facts is not None
        and "applicationsharing" in m.sip_facts.media
    )  # fmt: skip
    ack = [m for m in trace.messages if m.dst == "skype_client" and m.summary == "ACK"][-1]
    return ack.t - invite.t


def one_way_trips(sc: Scenario) -> int:
    result = run_scenario(sc, "virtual")
    return round(setup_time(result.trace) / sc.latency)


async def floor_once(round_trips: int, size: int = 512) -> float:
    payload = b"x" * size

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.readexactly(size):
                writer.write(data)
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(round_trips - 1):  # the connect was the first round trip
        writer.write(payload)
        await reader.readexactly(size)
    elapsed = time.perf_counter() - start
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    sc = scenario()
    trips = one_way_trips(sc)
    round_trips = (trips + 1) // 2
    run_scenario(sc, "live")  # warm-up: imports, caches
    setups, walls, floors = [], [], []
    for _ in range(args.calls):
        gc.collect()
        result = run_scenario(sc, "live")
        if result.outcome.name != "sharing-established":
            print(f"call failed: {result.outcome}", file=sys.stderr)
            return 1
        setups.append(setup_time(result.trace))
        walls.append(result.wall)
        floors.append(asyncio.run(floor_once(round_trips)))
    med, floor = statistics.median(setups) * 1000, statistics.median(floors) * 1000
    print(
        f"{args.calls} calls on live loopback sockets, {os.cpu_count()} CPUs; critical path "
        f"{trips} one-way trips ({round_trips} round trips)"
    )
    print(
        f"  labsim: setup median {med:.2f} ms (p10 {_pct(setups, 10):.2f}, "
        f"p90 {_pct(setups, 90):.2f}); whole run median {statistics.median(walls) * 1000:.1f} ms"
    )
    print(f"  floor:  {round_trips} asyncio round trips, median {floor:.2f} ms")
    verdict = "PASS" if med <= TARGET_MS else "FAIL"
    print(f"  ratio labsim/floor: {med / floor:.1f}x; target <= {TARGET_MS} ms: {verdict}")
    return 0


def _pct(values: list[float], pct: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, len(ordered) * pct // 100)] * 1000


if __name__ == "__main__":
    sys.exit(main())
