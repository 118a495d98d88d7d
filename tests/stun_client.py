"""A blocking-socket STUN/TURN client for tests, written with labsim's codec and splitter only:
the independent side of conversations with coturn and with our own TURN server."""

from __future__ import annotations

import socket

from labsim.wire import stun
from labsim.wire.framing import StunSplitter
from labsim.wire.stun import Message

from .coturn import REALM, USER

TIMEOUT = 5.0


class Control:
    """One TCP connection to the TURN port, speaking STUN through labsim's splitter."""

    def __init__(self, address: tuple[str, int], max_messages: int | None = None) -> None:
        self.max_messages = max_messages
        self.sock = socket.create_connection(address, timeout=TIMEOUT)
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
        self.received.append(raw)
        message = stun.decode(raw)
        assert message.encode() == raw  # byte-identical re-encoding of a real server's bytes
        return message

    def transact(self, message: Message, key: bytes | None = None) -> Message:
        self.send(message, key)
        response = self.receive()
        assert response.transaction_id == message.transaction_id
        return response

    def close(self) -> None:
        self.sock.close()


def authed(method: int, attrs: list[stun.Attribute], nonce: str) -> Message:
    return Message.request(
        method,
        [*attrs, stun.Username(USER), stun.Realm(REALM), stun.Nonce(nonce), stun.MessageIntegrity(),
         stun.Fingerprint()],
    )  # fmt: skip
