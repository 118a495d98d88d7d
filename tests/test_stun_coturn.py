"""The codec against a real RFC 6062 server: coturn (Debian).

A blocking-socket client, written with labsim's codec and splitter only, runs the passive
TURN-TCP flow of the lab (PROTOCOL.md §3.3) against coturn: Allocate -> 401 -> authenticated
Allocate -> Success, CreatePermission, a peer connects to the relayed port -> ConnectionAttempt ->
ConnectionBind on a new connection -> raw bytes both ways -> Refresh lifetime 0. Every message
coturn sends must decode, verify (MESSAGE-INTEGRITY with our long-term key, FINGERPRINT) and
re-encode to its exact bytes; every message we send must be accepted.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from labsim.wire import stun
from labsim.wire.framing import frame_rfc4571
from labsim.wire.stun import Class, Message, Method

from .coturn import coturn
from .stun_client import PASSWORD, REALM, USER, Control, authed

pytestmark = pytest.mark.coturn
TIMEOUT = 5.0


def test_passive_tcp_relay_flow_against_coturn(tmp_path: Path) -> None:
    key = stun.long_term_key(USER, REALM, PASSWORD)
    with coturn(tmp_path) as server:
        control = Control((server.host, server.port))
        try:
            first = control.transact(
                Message.request(Method.ALLOCATE, [stun.RequestedTransport(6), stun.Fingerprint()])
            )
            assert first.cls is Class.ERROR and first.get(stun.ErrorCode).code == 401  # type: ignore[union-attr]
            assert first.get(stun.Realm) == stun.Realm(REALM)
            assert first.verify_fingerprint()
            nonce = first.get(stun.Nonce).value  # type: ignore[union-attr]

            allocated = control.transact(
                authed(Method.ALLOCATE, [stun.RequestedTransport(6)], nonce), key
            )
            assert allocated.cls is Class.SUCCESS, allocated.summary()
            assert allocated.verify_integrity(key) and allocated.verify_fingerprint()
            assert not allocated.verify_integrity(stun.long_term_key(USER, REALM, "wrong"))
            relayed = allocated.get(stun.XorRelayedAddress)
            assert relayed is not None and relayed.port in server.relay_ports
            assert allocated.get(stun.Lifetime) == stun.Lifetime(600)

            # RFC 6062 §5.3 / coturn: a peer is let in only with a permission for its address.
            permission = control.transact(
                authed(Method.CREATE_PERMISSION, [stun.XorPeerAddress("127.0.0.1", 0)], nonce), key
            )
            assert permission.cls is Class.SUCCESS and permission.verify_integrity(key)

            peer = socket.create_connection((relayed.address, relayed.port), timeout=TIMEOUT)
            attempt = control.receive()
            assert (attempt.method, attempt.cls) == (Method.CONNECTION_ATTEMPT, Class.INDICATION)
            assert attempt.get(stun.XorPeerAddress) == stun.XorPeerAddress(
                "127.0.0.1", peer.getsockname()[1]
            )
            connection_id = attempt.get(stun.ConnectionId)
            assert connection_id is not None
            assert attempt.summary() == (
                f"ConnectionAttempt Indication XOR-PEER-ADDRESS: 127.0.0.1:{peer.getsockname()[1]}"
            )
            # Bytes the peer sends before the bind must arrive after it (RFC 6062 §5.3).
            early = frame_rfc4571(b"early bytes from the Skype side")
            peer.sendall(early)

            # The data connection carries one STUN exchange, then raw bytes.
            data = Control((server.host, server.port), max_messages=1)
            try:
                bound = data.transact(authed(Method.CONNECTION_BIND, [connection_id], nonce), key)
                assert bound.cls is Class.SUCCESS, bound.summary()
                assert bound.summary() == "ConnectionBind Success Response"
                assert bound.verify_integrity(key)
                # From now on the data connection is a raw pipe (RFC 6062 §4.3).
                check = frame_rfc4571(b"\x00\x01 framed check from CMS")
                data.sock.sendall(check)
                assert _read_exactly(peer, len(check)) == check
                leftover = data.splitter.take_buffered()  # may hold early bytes already
                got = leftover + _read_exactly(data.sock, len(early) - len(leftover))
                assert got == early
            finally:
                data.close()
                peer.close()

            released = control.transact(authed(Method.REFRESH, [stun.Lifetime(0)], nonce), key)
            assert released.cls is Class.SUCCESS and released.get(stun.Lifetime) == stun.Lifetime(0)
            assert released.summary() == "Refresh Success Response lifetime: 0"
        finally:
            control.close()


def test_wrong_password_and_second_allocate_errors(tmp_path: Path) -> None:
    with coturn(tmp_path) as server:
        control = Control((server.host, server.port))
        try:
            challenge = control.transact(
                Message.request(Method.ALLOCATE, [stun.RequestedTransport(6)])
            )
            nonce = challenge.get(stun.Nonce).value  # type: ignore[union-attr]
            wrong = stun.long_term_key(USER, REALM, "not-the-password")
            refused = control.transact(
                authed(Method.ALLOCATE, [stun.RequestedTransport(6)], nonce), wrong
            )
            error = refused.get(stun.ErrorCode)
            assert refused.cls is Class.ERROR and error is not None and error.code == 401
            key = stun.long_term_key(USER, REALM, PASSWORD)
            ok = control.transact(authed(Method.ALLOCATE, [stun.RequestedTransport(6)], nonce), key)
            assert ok.cls is Class.SUCCESS
            again = control.transact(
                authed(Method.ALLOCATE, [stun.RequestedTransport(6)], nonce), key
            )
            error = again.get(stun.ErrorCode)
            assert error is not None and error.code == 437, again.summary()
            assert again.summary().startswith(
                "Allocate Error Response error-code: 437 (Allocation Mismatch)"
            )
        finally:
            control.close()


def test_tcp_relay_switched_off_gives_442(tmp_path: Path) -> None:
    with coturn(tmp_path, "--no-tcp-relay") as server:
        control = Control((server.host, server.port))
        try:
            challenge = control.transact(
                Message.request(Method.ALLOCATE, [stun.RequestedTransport(6)])
            )
            nonce = challenge.get(stun.Nonce).value  # type: ignore[union-attr]
            key = stun.long_term_key(USER, REALM, PASSWORD)
            refused = control.transact(
                authed(Method.ALLOCATE, [stun.RequestedTransport(6)], nonce), key
            )
            error = refused.get(stun.ErrorCode)
            assert error is not None and error.code == 442, refused.summary()
        finally:
            control.close()


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return out
