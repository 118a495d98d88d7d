"""Hostile peers in a process of their own, as peers on other hosts would be: the run under
test pays only for what its servers do with them (tests/test_hostile_peers.py).

    python tests/hostile_peer.py TURN_HOST TURN_PORT SIP_HOST SIP_PORT IDLE GARBAGE HALF

prints ``started``, waits for a line on standard input, then opens IDLE idle connections to the
TURN port, GARBAGE that send garbage and HALF that send half a STUN header and stall, and one
connection per slow SIP input to the SIP port. It prints ``ready`` once every connection is open
(or has failed), waits for another line (or 30 s), and prints one JSON object: per kind, how
many connections opened and failed, and when (``time.monotonic()``) the server closed or reset
each before that line.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter

#: Inputs that once took the SIP codecs seconds to minutes (tests/test_hostile_input.py).
SLOW_SIP = {
    # The stream splitter's old Content-Length regex backtracked on a padded compact header: a
    # framing error, so the connection is reset (RFC 3261 §18.3).
    "slow-sip-framing": b"l:" + b" " * 3000 + b"\rX\r\n\r\n",
    # sipmessage's tel: URI grammar is quadratic in the digits: a whole message (its
    # Content-Length holds) that does not parse is dropped alone, the connection stays.
    "slow-sip-uri": b"INVITE tel:+" + b"1" * 32_000 + b"! SIP/2.0\r\nContent-Length: 0\r\n\r\n",
}
#: 8 of the 20 bytes of an Allocate's STUN header (RFC 5389 §6), then nothing.
HALF_HEADER = bytes.fromhex("0003000c2112a442")
LIMIT = 30.0


class Peers:
    def __init__(self) -> None:
        self.opened: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        #: time.monotonic() (the system's CLOCK_MONOTONIC, the same in every process) of each
        #: close or reset by the server, per kind.
        self.closed: dict[str, list[float]] = {}
        self.writers: list[asyncio.StreamWriter] = []
        self.watchers: list[asyncio.Task[None]] = []

    async def open(self, kind: str, host: str, port: int, data: bytes = b"") -> None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        except (OSError, TimeoutError):
            self.failed[kind] += 1
            return
        self.opened[kind] += 1
        self.writers.append(writer)
        if data:
            writer.write(data)
        self.watchers.append(asyncio.create_task(self._watch(kind, reader)))

    async def _watch(self, kind: str, reader: asyncio.StreamReader) -> None:
        """Count the connection once the server closes or resets it."""
        try:
            while await reader.read(65536):
                pass
        except OSError:
            pass
        self.closed.setdefault(kind, []).append(time.monotonic())


async def main(argv: list[str]) -> None:
    turn_host, turn_port, sip_host, sip_port = argv[0], int(argv[1]), argv[2], int(argv[3])
    idle, garbage, half = (int(a) for a in argv[4:7])
    peers = Peers()
    loop = asyncio.get_running_loop()
    print("started", flush=True)
    await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), LIMIT)
    await asyncio.gather(
        *(peers.open("garbage", turn_host, turn_port, os.urandom(64) + b"\xc0")
          for _ in range(garbage)),
        *(peers.open("half-header", turn_host, turn_port, HALF_HEADER) for _ in range(half)),
        *(peers.open(kind, sip_host, sip_port, data) for kind, data in SLOW_SIP.items()),
    )  # fmt: skip
    for start in range(0, idle, 100):  # in batches: the listen backlog is finite
        await asyncio.gather(
            *(peers.open("idle", turn_host, turn_port) for _ in range(min(100, idle - start)))
        )
    print("ready", flush=True)
    try:
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), LIMIT)
    except TimeoutError:
        pass
    await asyncio.sleep(0)  # closes that arrived with the line
    report = {
        "opened": dict(peers.opened),
        "failed": dict(peers.failed),
        "closed_at": peers.closed,
    }
    for writer in peers.writers:
        writer.close()
    for watcher in peers.watchers:
        watcher.cancel()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
