"""Start Debian's coturn on a free loopback port for one test, bounded in time (PROTOCOL.md §11).

The server gets its own scratch folder (user database, log, pid file) and its own loopback block
(labsim.net.live.claim_block, as a live run claims one): it listens and relays on the block's
first address only, so no other test, pytest-xdist worker or live run can take its port or
relay range between the choice and the start. The rest of the block is the test's (a peer's
address: ``block.address(2)``). It is terminated (then killed) when the test ends; its log is
capped by the short life of the server and checked for size.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from labsim.net.live import LoopbackBlock, claim_block

from .conftest import require_tool
from .stun_client import coturn_command, free_port, free_range, wait_listening

MAX_LOG_BYTES = 5 * 1024 * 1024


@dataclass(frozen=True)
class Coturn:
    host: str
    port: int
    relay_ports: range
    log: Path
    block: LoopbackBlock


@contextmanager
def coturn(
    workdir: Path, *extra: str, start_timeout: float = 10.0, external_ip: str | None = None
) -> Iterator[Coturn]:
    """coturn on a block of its own; ``external_ip``: the address it reports its relays at
    (``--external-ip PUBLIC/ITS-ADDRESS``, as behind a NAT), e.g. a lab address."""
    turnserver = require_tool("turnserver")
    with claim_block() as block:
        host = block.address(1)
        # Ports the kernel would give on the address, so clear of wildcard listeners; the
        # address is ours, so nothing else takes them before coturn binds.
        port = free_port(host)
        relays = free_range(20, host, avoid=port)
        log = workdir / "turnserver.log"
        cmd = [*coturn_command(turnserver, host, port, relays, workdir), *extra]
        if external_ip is not None:
            cmd += ["--external-ip", f"{external_ip}/{host}"]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            wait_listening(host, port, f"turnserver (log: {log})", start_timeout, proc)
            yield Coturn(host, port, relays, log, block)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
            if log.exists() and log.stat().st_size > MAX_LOG_BYTES:
                raise RuntimeError(f"turnserver log grew to {log.stat().st_size} bytes")
