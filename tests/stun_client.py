"""A blocking-socket STUN/TURN client and free loopback ports, written with labsim's codec and
splitter only: the independent side of conversations with coturn and with our own TURN server,
shared by the tests and by ``bench/turn.py`` (so it imports no test framework)."""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from pathlib import Path

from labsim.wire import stun
from labsim.wire.framing import StunSplitter
from labsim.wire.stun import Message

#: The long-term credentials both TURN servers are given (Expressway-E's lab realm).
USER, PASSWORD, REALM = "turn", "secret", "TANDBERG"
KEY = stun.long_term_key(USER, REALM, PASSWORD)
TIMEOUT = 5.0
#: ``SO_LINGER`` on with timeout 0: close() sends RST.
LINGER_RST = struct.pack("ii", 1, 0)


def coturn_command(
    turnserver: str, host: str, port: int, relays: range, workdir: Path
) -> list[str]:
    """The coturn command line of PROTOCOL.md §11: long-term credentials, TCP and UDP on
    ``host:port`` only, relays in ``relays``, loopback peers allowed; its user database, log
    (``turnserver.log``) and pid file (``turnserver.pid``) in ``workdir``."""
    return [
        turnserver, "-n", "--listening-ip", host, "--relay-ip", host,
        "--listening-port", str(port), "--lt-cred-mech", "--user", f"{USER}:{PASSWORD}",
        "-r", REALM, "--no-tls", "--no-dtls", "--no-cli", "--allow-loopback-peers",
        "--min-port", str(relays.start), "--max-port", str(relays.stop - 1), "--fingerprint",
        "--userdb", str(workdir / "turndb.sqlite"), "--log-file", str(workdir / "turnserver.log"),
        "--simple-log", "--no-stdout-log", "--pidfile", str(workdir / "turnserver.pid"),
    ]  # fmt: skip


def wait_listening(
    host: str, port: int, what: str, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Return once something accepts TCP connections on ``host:port``; raise RuntimeError when
    ``proc`` (the server, if we started it) exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not listening on {port} after {timeout} s") from None
            time.sleep(0.05)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing is bound to on ``host`` right now. Only free *now*: a server meant
    to bind it later belongs on an address of a block claimed for it
    (``labsim.net.live.claim_block``), where no parallel test or live run binds; on a shared
    address such as 127.0.0.1 another process may take it first."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def free_range(size: int, host: str = "127.0.0.1", avoid: int | None = None) -> range:
    """A run of ``size`` ports none of which is bound now and which excludes ``avoid``
    (relay ports for a TURN server); as for :func:`free_port`, use it on a claimed address."""
    for _ in range(50):
        start = free_port(host)
        ports = range(start, start + size)
        if ports.stop > 65535 or avoid in ports:
            continue
        held: list[socket.socket] = []
        try:
            for port in ports:
                s = socket.socket()
                held.append(s)
                s.bind((host, port))
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
        return ports
    raise RuntimeError(f"no free run of {size} ports on {host}")


class Control:
    """One TCP connection to the TURN port, speaking STUN through labsim's splitter.

    ``check=True`` also asserts that every message received re-encodes to the same bytes (a
    codec test on a real server's output); the benchmark turns it off to measure the server,
    not the client."""

    def __init__(
        self, address: tuple[str, int], max_messages: int | None = None, *, check: bool = True
    ) -> None:
        self.max_messages = max_messages
        self.check = check
        self.sock = socket.create_connection(address, timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.splitter = StunSplitter()
        self.pending: list[bytes] = []
        self.received: list[bytes] = []

    def send(self, message: Message, key: bytes | None = None) -> None:
        self.sock.sendall(message.encode(key))

    def receive(self) -> Message:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.pending += self.splitter.feed(data, max_messages=self.max_messages)
        raw = self.pending.pop(0)
        message = stun.decode(raw)
        if self.check:
            self.received.append(raw)
            assert message.encode() == raw  # byte-identical re-encoding of a real server's bytes
        return message

    def transact(self, message: Message, key: bytes | None = None) -> Message:
        self.send(message, key)
        response = self.receive()
        if response.transaction_id != message.transaction_id:
            raise RuntimeError(f"unexpected {response.summary()}")
        return response

    def close(self, reset: bool = False) -> None:
        if reset:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        self.sock.close()


def authed(method: int, attrs: list[stun.Attribute], nonce: str) -> Message:
    """A request with long-term credentials (RFC 5389 §10.2): MESSAGE-INTEGRITY, FINGERPRINT."""
    return Message.request(
        method,
        [*attrs, stun.Username(USER), stun.Realm(REALM), stun.Nonce(nonce), stun.MessageIntegrity(),
         stun.Fingerprint()],
    )  # fmt: skip
