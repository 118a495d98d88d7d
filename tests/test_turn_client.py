"""CMS's TURN client (labsim.proto.turn_client) driven by hand, without any network.

Each test plays Expressway-E with labsim.wire.stun: it reads the requests the client sends,
answers them (echoing their transaction ids, MESSAGE-INTEGRITY with the long-term key of
turn/TANDBERG/secret) and feeds the answers back as Received events.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

import pytest

from labsim.proto.events import (
    Address,
    Close,
    Closed,
    Connect,
    Connected,
    ConnectFailed,
    Effect,
    Event,
    Log,
    Received,
    Send,
    StartTimer,
    StopTimer,
    TimerFired,
)
from labsim.proto.machine import Step
from labsim.proto.router import Router
from labsim.proto.turn_client import (
    Allocated,
    AllocationFailed,
    Expired,
    Notification,
    PeerBindFailed,
    PeerConnected,
    PermissionCreated,
    Refreshed,
    Released,
    TimerKind,
    TransactionTimer,
    TurnClient,
    TurnClientSettings,
    TurnState,
    TurnTimer,
)
from labsim.wire import stun
from labsim.wire.framing import frame_rfc4571
from labsim.wire.stun import Message, Method

SERVER = Address("10.48.54.229", 3478)
CMS = Address("10.48.54.230", 44341)
RELAY = Address("10.48.54.229", 24012)
PEER = Address("192.168.1.252", 53577)
REALM = "TANDBERG"
NONCE = "4f7a1c9e2b6d8a0357c1e9f4b2a6d8c03e5f7a9b1d3c5e7f9a1b"  # 52 characters, as in the lab
NEW_NONCE = "c" * 52
KEY = stun.long_term_key("turn", REALM, "secret")
SOFTWARE = "TANDBERG/4132 (X8.10.20)"  # 24 characters, as in the lab
CTL = "turn:ctl"


# --- playing the server -----------------------------------------------------------------------


def sends(effects: list[Effect], conn: str | None = None) -> list[Send]:
    return [e for e in effects if isinstance(e, Send) and (conn is None or e.conn == conn)]


def requests(effects: list[Effect], conn: str = CTL) -> list[Message]:
    out = []
    for send in sends(effects, conn):
        assert send.protocol == "stun"
        out.append(stun.decode(send.data))
    return out


def only_request(effects: list[Effect], conn: str = CTL) -> Message:
    found = requests(effects, conn)
    assert len(found) == 1, [m.summary() for m in found]
    return found[0]


def logs(effects: list[Effect]) -> str:
    return "\n".join(e.text for e in effects if isinstance(e, Log))


def challenge(request: Message, nonce: str = NONCE) -> bytes:
    """Expressway-E's 401 (PROTOCOL.md §10): 176 bytes."""
    attrs = [stun.Nonce(nonce), stun.Realm(REALM), stun.Lifetime(600), stun.Software(SOFTWARE)]
    return request.error(401, [*attrs, stun.MessageIntegrity(), stun.Fingerprint()]).encode(KEY)


def success(request: Message, attrs: list[stun.Attribute], key: bytes = KEY) -> bytes:
    tail = [stun.Software(SOFTWARE), stun.MessageIntegrity(), stun.Fingerprint()]
    return request.success([*attrs, *tail]).encode(key)


def error(request: Message, code: int, attrs: Sequence[stun.Attribute] = ()) -> bytes:
    return request.error(code, [*attrs, stun.Fingerprint()]).encode()


def stale(request: Message, nonce: str = NEW_NONCE) -> bytes:
    return error(request, 438, [stun.Nonce(nonce), stun.Realm(REALM)])


def allocate_success(request: Message, key: bytes = KEY) -> bytes:
    return success(
        request,
        [
            stun.Lifetime(600),
            stun.XorMappedAddress(CMS.host, CMS.port),
            stun.XorRelayedAddress(RELAY.host, RELAY.port),
        ],
        key,
    )


def connection_attempt(connection_id: int = 0x1234ABCD) -> bytes:
    attrs = [stun.XorPeerAddress(PEER.host, PEER.port), stun.ConnectionId(connection_id)]
    tail = [stun.Software(SOFTWARE), stun.MessageIntegrity(), stun.Fingerprint()]
    return Message.indication(Method.CONNECTION_ATTEMPT, [*attrs, *tail]).encode(KEY)


class Owned:
    """A client as its owner drives it: events through a :class:`Router` (which learns what
    the client owns from its effects), commands' effects claimed the same way, effects as
    lists, notices kept for :meth:`poll`. A bound data connection is taken away from it, as
    CMS does."""

    def __init__(self, client: TurnClient) -> None:
        self.client = client
        self.router = Router()
        self.router.add(client, self._notice)
        self._notices: list[Notification] = []

    def _notice(self, notice: Notification, now: float) -> list[Effect]:
        self._notices.append(notice)
        if isinstance(notice, PeerConnected):
            self.router.give(notice.conn, None)
        return []

    def _command(self, step: Step[Notification]) -> list[Effect]:
        self.router.claim(self.client, step.effects)
        self._notices += step.notices
        return list(step.effects)

    def handle(self, event: Event, now: float) -> list[Effect]:
        return self.router.handle(event, now)

    def start(self, now: float) -> list[Effect]:
        return self._command(self.client.start(now))

    def release(self, now: float) -> list[Effect]:
        return self._command(self.client.release(now))

    def create_permission(self, host: str, now: float) -> list[Effect]:
        return self._command(self.client.create_permission(host, now))

    def connect_peer(self, peer: Address, now: float) -> list[Effect]:
        return self._command(self.client.connect_peer(peer, now))

    def poll(self) -> list[Notification]:
        out, self._notices = self._notices, []
        return out

    def owns_conn(self, conn: str) -> bool:
        return self.router.owner(Received(conn, b"x")) is self.client

    def owns_timer(self, timer: object) -> bool:
        return self.router.owner(TimerFired(timer)) is self.client  # type: ignore[arg-type]

    @property
    def state(self) -> TurnState:
        return self.client.state

    @property
    def nonce(self) -> str | None:
        return self.client.nonce

    @property
    def expires_at(self) -> float | None:
        return self.client.expires_at


def timer(kind: str, prefix: str = "turn") -> TurnTimer:
    return TurnTimer(prefix, TimerKind(kind))


def new_client(
    prefix: str = "turn", permission_peers: tuple[str, ...] = (), **changes: object
) -> Owned:
    settings = replace(TurnClientSettings(), **changes)  # type: ignore[arg-type]
    return Owned(TurnClient(
        settings, random.Random(6062), server=SERVER, prefix=prefix,
        permission_peers=permission_peers,
    ))  # fmt: skip


def challenged(client: Owned) -> Message:
    """Start the client and answer its first Allocate with the lab's 401: returns the
    authenticated Allocate it sends then, not answered yet."""
    client.start(0.0)
    first = only_request(client.handle(Connected(CTL, CMS, SERVER), 0.0))
    return only_request(client.handle(Received(CTL, challenge(first)), 0.0))


def allocate(client: Owned, conn: str = CTL) -> tuple[list[Message], list[Effect]]:
    """Start the client and play the lab's allocation; returns the requests (first Allocate,
    authenticated Allocate) and the effects after the Allocate success."""
    effects = client.start(0.0)
    assert Connect(conn, SERVER, timeout=5.0) in effects
    first = only_request(client.handle(Connected(conn, CMS, SERVER), 0.0), conn)
    second = only_request(client.handle(Received(conn, challenge(first)), 0.002), conn)
    after = client.handle(Received(conn, allocate_success(second)), 0.118)
    return [first, second], after


# --- the lab's passive flow -------------------------------------------------------------------


def test_passive_flow_reproduces_the_lab_rows_and_hands_over_the_pipe() -> None:
    client = new_client()
    (first, second), after = allocate(client)

    # Row 2394: 44 bytes, REQUESTED-TRANSPORT(TCP), LIFETIME, FINGERPRINT, no credentials.
    assert len(first.raw or b"") == 44
    assert first.summary() == "Allocate Request TCP lifetime: 600"
    assert [type(a) for a in first.attributes] == [
        stun.RequestedTransport,
        stun.Lifetime,
        stun.Fingerprint,
    ]
    assert first.verify_fingerprint()
    # Row 2399: 148 bytes with the 52-character nonce, a new transaction id, MI with the key.
    assert len(second.raw or b"") == 148
    assert second.summary() == "Allocate Request user: turn realm: TANDBERG with nonce TCP"
    assert second.transaction_id != first.transaction_id
    assert second.get(stun.Software) == stun.Software("CMS v2.2")
    assert second.get(stun.Nonce) == stun.Nonce(NONCE)
    assert second.verify_integrity(KEY) and second.verify_fingerprint()
    assert client.poll() == [Allocated(RELAY, CMS, 600)]
    assert client.state is TurnState.ALLOCATED

    # Row 2428: the Refresh right after the allocation, 136 bytes.
    refresh = only_request(after)
    assert len(refresh.raw or b"") == 136
    assert refresh.summary() == (
        "Refresh Request user: turn realm: TANDBERG with nonce lifetime: 600"
    )
    assert refresh.verify_integrity(KEY)
    assert StartTimer(timer("keepalive"), 5.0) in after
    assert client.handle(Received(CTL, success(refresh, [stun.Lifetime(600)])), 0.2) != []
    assert client.poll() == [Refreshed(600)]

    # Row 2526: ConnectionAttempt -> a new connection to the same server address.
    effects = client.handle(Received(CTL, connection_attempt()), 0.55)
    connects = [e for e in effects if isinstance(e, Connect)]
    assert connects == [Connect("turn:data:1", SERVER, timeout=5.0)]
    assert sends(effects) == []
    assert client.owns_conn("turn:data:1")

    # Row 2540: ConnectionBind is the first message on it, 136 bytes.
    effects = client.handle(Connected("turn:data:1", Address(CMS.host, 44342), SERVER), 0.6)
    bind = only_request(effects, "turn:data:1")
    assert len(bind.raw or b"") == 136
    assert bind.summary() == "ConnectionBind Request user: turn realm: TANDBERG with nonce"
    assert [type(a) for a in bind.attributes] == [
        stun.ConnectionId,
        stun.Username,
        stun.Realm,
        stun.Nonce,
        stun.MessageIntegrity,
        stun.Fingerprint,
    ]
    assert bind.get(stun.ConnectionId) == stun.ConnectionId(0x1234ABCD)
    assert bind.verify_integrity(KEY)

    # Row 2552 and the raw bytes after it in the same read (RFC 6062 §5.3 early data),
    # including an RFC 4571-framed check that must not be parsed as STUN.
    check = frame_rfc4571(bytes.fromhex("0001005821") + bytes(103))
    answer = success(bind, [stun.ConnectionId(0x1234ABCD)])
    assert len(answer) == 88
    client.handle(Received("turn:data:1", answer + check), 0.67)
    assert client.poll() == [PeerConnected("turn:data:1", PEER, check, 0x1234ABCD)]
    assert not client.owns_conn("turn:data:1")
    assert client.owns_conn(CTL)
    # Events for the handed-over pipe are no longer the client's business.
    assert client.handle(Received("turn:data:1", b"\x00\x6c"), 0.8) == []

    # Row 3209: the Binding Indication keepalive on the control connection, 28 bytes.
    effects = client.handle(TimerFired(timer("keepalive")), 5.118)
    (keepalive,) = sends(effects)
    assert keepalive.conn == CTL and len(keepalive.data) == 28
    message = stun.decode(keepalive.data)
    assert message.summary() == "Binding Indication" and message.verify_fingerprint()
    assert StartTimer(timer("keepalive"), 15.0) in effects


def test_responses_cut_and_coalesced_anywhere() -> None:
    """TCP semantics: the answers arrive byte by byte, then two messages in one read."""
    client = new_client()
    client.start(0.0)
    first = only_request(client.handle(Connected(CTL, CMS, SERVER), 0.0))
    effects: list[Effect] = []
    for byte in challenge(first):
        effects += client.handle(Received(CTL, bytes([byte])), 0.001)
    second = only_request(effects)
    both = allocate_success(second) + connection_attempt(7)
    effects = client.handle(Received(CTL, both), 0.1)
    assert isinstance(client.poll()[0], Allocated)
    assert Connect("turn:data:1", SERVER, timeout=5.0) in effects


def test_the_same_seed_gives_the_same_bytes() -> None:
    a, b = new_client(), new_client()
    assert allocate(a)[0] == allocate(b)[0]
    assert [m.raw for m in allocate(new_client())[0]] == [m.raw for m in allocate(new_client())[0]]


# --- refreshes, keepalives, expiry -------------------------------------------------------------


def test_refresh_right_after_allocation_is_a_setting() -> None:
    _, after = allocate(new_client(refresh_after_allocate=False))
    assert sends(after) == []
    assert StartTimer(timer("refresh"), 540.0) in after


def test_refresh_before_expiry_and_expiry_without_answer() -> None:
    client = new_client()
    _, after = allocate(client)
    assert StartTimer(timer("refresh"), 540.0) in after
    assert StartTimer(timer("expiry"), 600) in after
    client.handle(Received(CTL, success(only_request(after), [stun.Lifetime(600)])), 0.2)
    client.poll()

    effects = client.handle(TimerFired(timer("refresh")), 540.2)
    refresh = only_request(effects)
    assert refresh.method == Method.REFRESH and refresh.get(stun.Lifetime) == stun.Lifetime(600)
    effects = client.handle(Received(CTL, success(refresh, [stun.Lifetime(300)])), 540.3)
    assert client.poll() == [Refreshed(300)]
    assert StartTimer(timer("refresh"), 240.0) in effects
    assert StartTimer(timer("expiry"), 300) in effects
    assert client.expires_at == pytest.approx(840.3)

    # The next Refresh goes unanswered: the allocation runs out.
    client.handle(TimerFired(timer("refresh")), 780.3)
    effects = client.handle(TimerFired(timer("expiry")), 840.3)
    assert client.poll() == [
        Expired("the allocation lifetime ran out without a successful Refresh")
    ]
    assert Close(CTL) in effects and StopTimer(timer("keepalive")) in effects
    assert client.state is TurnState.EXPIRED
    assert client.handle(TimerFired(timer("keepalive")), 841.0) == []


def test_keepalive_interval_settings() -> None:
    client = new_client(keepalive_first=2.0, keepalive_interval=None)
    _, after = allocate(client)
    assert StartTimer(timer("keepalive"), 2.0) in after
    effects = client.handle(TimerFired(timer("keepalive")), 2.1)
    assert [len(s.data) for s in sends(effects)] == [28]
    assert not any(isinstance(e, StartTimer) for e in effects)
    _, after = allocate(new_client(keepalive_first=None))
    assert not any(isinstance(e, StartTimer) and e.timer == timer("keepalive") for e in after)


# --- 401, 438, errors -------------------------------------------------------------------------


def test_allocate_438_retries_with_the_new_nonce_then_gives_up() -> None:
    client = new_client(max_stale_nonce_retries=2)
    second = challenged(client)
    effects = client.handle(Received(CTL, stale(second)), 0.1)
    third = only_request(effects)
    assert third.method == Method.ALLOCATE and third.transaction_id != second.transaction_id
    assert third.get(stun.Nonce) == stun.Nonce(NEW_NONCE) and third.verify_integrity(KEY)
    assert client.nonce == NEW_NONCE
    fourth = only_request(client.handle(Received(CTL, stale(third, "d" * 52)), 0.2))
    assert fourth.get(stun.Nonce) == stun.Nonce("d" * 52)
    # A third 438 in a row exceeds the bound of 2 retries.
    effects = client.handle(Received(CTL, stale(fourth, "e" * 52)), 0.3)
    assert requests(effects) == []
    (failed,) = client.poll()
    assert isinstance(failed, AllocationFailed) and failed.code == 438
    assert Close(CTL) in effects


def test_allocate_438_then_success() -> None:
    client = new_client()
    second = challenged(client)
    third = only_request(client.handle(Received(CTL, stale(second)), 0.1))
    client.handle(Received(CTL, allocate_success(third)), 0.2)
    assert client.poll() == [Allocated(RELAY, CMS, 600)]


def test_refresh_438_retries_with_the_new_nonce() -> None:
    client = new_client()
    _, after = allocate(client)
    refresh = only_request(after)
    retry = only_request(client.handle(Received(CTL, stale(refresh)), 0.2))
    assert retry.method == Method.REFRESH and retry.transaction_id != refresh.transaction_id
    assert retry.get(stun.Nonce) == stun.Nonce(NEW_NONCE) and retry.verify_integrity(KEY)
    client.poll()
    client.handle(Received(CTL, success(retry, [stun.Lifetime(600)])), 0.3)
    assert client.poll() == [Refreshed(600)]
    # Later requests reuse the new nonce (RFC 5389 §10.2.3).
    later = only_request(client.handle(TimerFired(timer("refresh")), 540.0))
    assert later.get(stun.Nonce) == stun.Nonce(NEW_NONCE)


def test_wrong_password_is_cms_ice_failure_4() -> None:
    client = new_client(password="not-the-password")
    second = challenged(client)
    assert not second.verify_integrity(KEY)
    effects = client.handle(Received(CTL, challenge(second)), 0.1)
    assert requests(effects) == []
    assert client.poll() == [AllocationFailed(401, "unauthorized - check credentials")]
    assert "ICE failure 4 (unauthorized - check credentials)" in logs(effects)
    assert Close(CTL) in effects
    assert StopTimer(TransactionTimer("turn", second.transaction_id)) in effects
    assert client.state is TurnState.FAILED


@pytest.mark.parametrize(
    ("code", "reason", "explanation"),
    [
        (442, "Unsupported Transport Protocol", "no TCP relay (Expressway before X8.9)"),
        (486, "Allocation Quota Reached", "quota"),
        (508, "Insufficient Capacity", "no relay ports left"),
        (500, "Server Error", ""),
    ],
)
def test_allocate_errors_fail_with_code_and_reason(
    code: int, reason: str, explanation: str
) -> None:
    client = new_client()
    second = challenged(client)
    answer = second.error(code, [stun.MessageIntegrity(), stun.Fingerprint()]).encode(KEY)
    effects = client.handle(Received(CTL, answer), 0.1)
    assert client.poll() == [AllocationFailed(code, reason)]
    assert f"Allocate refused: {code} {reason}" in logs(effects)
    assert explanation in logs(effects)
    assert Close(CTL) in effects


def test_the_442_log_line() -> None:
    client = new_client()
    second = challenged(client)
    effects = client.handle(Received(CTL, error(second, 442)), 0.1)
    assert (
        "Allocate refused: 442 Unsupported Transport Protocol — the TURN server has no TCP "
        "relay (Expressway before X8.9)"
    ) in logs(effects)


def test_a_bad_message_integrity_is_not_trusted() -> None:
    client = new_client()
    second = challenged(client)
    forged = allocate_success(second, key=stun.long_term_key("turn", REALM, "forged"))
    effects = client.handle(Received(CTL, forged), 0.1)
    assert client.poll() == [] and client.state is TurnState.ALLOCATING
    assert "does not verify" in logs(effects)
    # A success without any MESSAGE-INTEGRITY is not trusted either (RFC 5389 §10.2.3).
    bare = second.success([stun.XorRelayedAddress(RELAY.host, RELAY.port)]).encode()
    client.handle(Received(CTL, bare), 0.1)
    assert client.poll() == []
    # The genuine answer still counts.
    client.handle(Received(CTL, allocate_success(second)), 0.2)
    assert client.poll() == [Allocated(RELAY, CMS, 600)]


def test_a_forged_connection_bind_success_is_not_trusted() -> None:
    client = new_client()
    allocate(client)
    client.handle(Received(CTL, connection_attempt()), 0.5)
    bind = only_request(client.handle(Connected("turn:data:1", CMS, SERVER), 0.5), "turn:data:1")
    forged = success(bind, [stun.ConnectionId(0x1234ABCD)], key=b"x" * 16)
    client.handle(Received("turn:data:1", forged), 0.6)
    assert [n for n in client.poll() if isinstance(n, PeerConnected)] == []
    client.handle(Received("turn:data:1", success(bind, [stun.ConnectionId(0x1234ABCD)])), 0.7)
    assert client.poll() == [PeerConnected("turn:data:1", PEER, b"", 0x1234ABCD)]


def test_connect_failure_on_the_control_connection() -> None:
    client = new_client()
    client.start(0.0)
    effects = client.handle(ConnectFailed(CTL, SERVER, "refused"), 0.1)
    (failed,) = client.poll()
    assert isinstance(failed, AllocationFailed) and failed.code is None
    assert "10.48.54.229:3478" in failed.reason and "refused" in failed.reason
    assert not any(isinstance(e, Close) for e in effects)


def test_no_answer_within_ti_fails_the_allocation() -> None:
    client = new_client()
    client.start(0.0)
    first = only_request(client.handle(Connected(CTL, CMS, SERVER), 0.0))
    effects = client.handle(Connected(CTL, CMS, SERVER), 0.0)
    assert effects == []  # a duplicate event changes nothing
    client.handle(TimerFired(TransactionTimer("turn", first.transaction_id)), 39.5)
    (failed,) = client.poll()
    assert isinstance(failed, AllocationFailed) and "39.5 s" in failed.reason


def test_control_connection_lost_after_allocating_is_expiry() -> None:
    client = new_client()
    allocate(client)
    client.poll()
    effects = client.handle(Closed(CTL, reset=True), 3.0)
    (expired,) = client.poll()
    assert isinstance(expired, Expired) and "reset" in expired.reason
    assert not any(isinstance(e, Close) for e in effects)
    assert StopTimer(timer("refresh")) in effects


# --- CreatePermission --------------------------------------------------------------------------


def test_create_permission_off_as_in_the_lab() -> None:
    client = new_client(permission_peers=("192.168.1.252",))
    _, after = allocate(client)
    assert [m.method for m in requests(after)] == [Method.REFRESH]
    effects = client.create_permission("192.168.1.252", 1.0)
    assert sends(effects) == [] and "no CreatePermission" in logs(effects)


def test_create_permission_on_for_strict_servers() -> None:
    client = new_client(create_permission=True, permission_peers=("192.168.1.252",))
    _, after = allocate(client)
    refresh, permission = requests(after)
    assert refresh.method == Method.REFRESH
    assert permission.method == Method.CREATE_PERMISSION
    assert permission.get_all(stun.XorPeerAddress) == [stun.XorPeerAddress("192.168.1.252", 0)]
    assert permission.get(stun.Nonce) == stun.Nonce(NONCE) and permission.verify_integrity(KEY)
    assert StartTimer(timer("permission"), 240.0) in after
    client.poll()
    client.handle(Received(CTL, success(permission, [])), 0.2)
    assert client.poll() == [PermissionCreated(("192.168.1.252",))]

    # Another peer on demand; then the refresh covers both.
    extra = only_request(client.create_permission("192.168.1.253", 1.0))
    assert extra.get_all(stun.XorPeerAddress) == [stun.XorPeerAddress("192.168.1.253", 0)]
    effects = client.handle(TimerFired(timer("permission")), 240.0)
    again = only_request(effects)
    assert [a.address for a in again.get_all(stun.XorPeerAddress)] == [
        "192.168.1.252",
        "192.168.1.253",
    ]
    assert StartTimer(timer("permission"), 240.0) in effects


def test_create_permission_asked_before_the_allocation_follows_it() -> None:
    client = new_client(create_permission=True)
    client.start(0.0)
    assert sends(client.create_permission("192.168.1.252", 0.0)) == []
    first = only_request(client.handle(Connected(CTL, CMS, SERVER), 0.0))
    second = only_request(client.handle(Received(CTL, challenge(first)), 0.0))
    after = client.handle(Received(CTL, allocate_success(second)), 0.1)
    assert [m.method for m in requests(after)] == [Method.REFRESH, Method.CREATE_PERMISSION]


# --- release -----------------------------------------------------------------------------------


def test_release_sends_lifetime_0_then_closes() -> None:
    client = new_client()
    allocate(client)
    client.poll()
    effects = client.release(60.0)
    release = only_request(effects)
    assert release.summary() == (
        "Refresh Request user: turn realm: TANDBERG with nonce lifetime: 0"
    )
    assert release.verify_integrity(KEY)
    for kind in ("refresh", "keepalive", "expiry", "permission"):
        assert StopTimer(timer(kind)) in effects
    assert not any(isinstance(e, Close) for e in effects)  # not before the answer
    assert client.release(60.0) == []
    effects = client.handle(Received(CTL, success(release, [stun.Lifetime(0)])), 60.1)
    assert client.poll() == [Released()]
    assert Close(CTL) in effects
    assert client.state is TurnState.RELEASED


def test_release_while_connecting_closes_the_connection_when_it_opens() -> None:
    client = new_client()
    client.start(0.0)
    effects = client.release(0.01)
    assert client.poll() == [Released()] and sends(effects) == []
    assert client.handle(Connected(CTL, CMS, SERVER), 0.02) == [Close(CTL)]


def test_release_before_allocating_just_closes() -> None:
    client = new_client()
    client.start(0.0)
    client.handle(Connected(CTL, CMS, SERVER), 0.0)
    effects = client.release(0.1)
    assert sends(effects) == [] and Close(CTL) in effects
    assert client.poll() == [Released()]


# --- RFC 6062 data connections -----------------------------------------------------------------


def test_cms_that_never_sends_connection_bind() -> None:
    client = new_client(send_connection_bind=False)
    allocate(client)
    client.poll()
    effects = client.handle(Received(CTL, connection_attempt()), 0.5)
    assert not any(isinstance(e, Connect) for e in effects)
    assert sends(effects) == [] and client.poll() == []
    assert "never sends ConnectionBind" in logs(effects)


def test_connection_bind_error_and_reset() -> None:
    client = new_client()
    allocate(client)
    client.poll()
    client.handle(Received(CTL, connection_attempt(1)), 0.5)
    bind = only_request(client.handle(Connected("turn:data:1", CMS, SERVER), 0.5), "turn:data:1")
    effects = client.handle(Received("turn:data:1", error(bind, 400)), 0.6)
    assert Close("turn:data:1") in effects
    (failed,) = client.poll()
    assert isinstance(failed, PeerBindFailed)
    assert (failed.connection_id, failed.code, failed.peer) == (1, 400, PEER)

    # coturn answers a bad bind with a TCP reset, no STUN (PROTOCOL.md §11).
    client.handle(Received(CTL, connection_attempt(2)), 1.0)
    client.handle(Connected("turn:data:2", CMS, SERVER), 1.0)
    effects = client.handle(Closed("turn:data:2", reset=True), 1.1)
    assert not any(isinstance(e, Close) for e in effects)
    (failed,) = client.poll()
    assert isinstance(failed, PeerBindFailed) and failed.connection_id == 2
    assert "reset" in failed.reason
    assert client.state is TurnState.ALLOCATED  # the allocation itself is fine

    # A data connection still opening at release is closed, and closed again if it opens.
    client.handle(Received(CTL, connection_attempt(3)), 2.0)
    effects = client.release(2.1)
    assert Close("turn:data:3") in effects
    # (The runtime cancels a connect closed while opening, so the router drops a late
    # Connected; the client closes it all the same.)
    assert client.handle(Connected("turn:data:3", CMS, SERVER), 2.2) == []
    late = client.client.handle(Connected("turn:data:3", CMS, SERVER), 2.2)
    assert late.effects == (Close("turn:data:3"),)


def test_active_connect_then_bind() -> None:
    client = new_client()
    allocate(client)
    client.poll()
    connect = only_request(client.connect_peer(PEER, 1.0))
    assert connect.method == Method.CONNECT and connect.verify_integrity(KEY)
    assert connect.get(stun.XorPeerAddress) == stun.XorPeerAddress(PEER.host, PEER.port)
    answer = connect.success([stun.ConnectionId(99), stun.MessageIntegrity()]).encode(KEY)
    effects = client.handle(Received(CTL, answer), 1.1)
    assert Connect("turn:data:1", SERVER, timeout=5.0) in effects
    bind = only_request(client.handle(Connected("turn:data:1", CMS, SERVER), 1.2), "turn:data:1")
    assert bind.get(stun.ConnectionId) == stun.ConnectionId(99)
    client.handle(Received("turn:data:1", success(bind, [])), 1.3)
    assert client.poll() == [PeerConnected("turn:data:1", PEER, b"", 99)]


def test_active_connect_refused() -> None:
    client = new_client()
    allocate(client)
    client.poll()
    connect = only_request(client.connect_peer(PEER, 1.0))
    effects = client.handle(Received(CTL, error(connect, 447)), 1.1)
    assert client.poll() == [PeerBindFailed(None, "Connection Timeout or Failure", PEER, 447)]
    assert "could not connect to the peer" in logs(effects)


# --- ownership ---------------------------------------------------------------------------------


def test_two_clients_do_not_claim_each_others_connections() -> None:
    a, b = new_client("turn"), new_client("turn2")
    allocate(a, "turn:ctl")
    allocate(b, "turn2:ctl")
    assert a.owns_conn("turn:ctl") and not a.owns_conn("turn2:ctl")
    assert b.owns_conn("turn2:ctl") and not b.owns_conn("turn:ctl")
    assert a.owns_timer(timer("refresh")) and not a.owns_timer(timer("refresh", "turn2"))
    assert not b.owns_timer(timer("keepalive"))
    assert not a.owns_conn("in:1") and not a.owns_timer("sip:t1")
    # An event for the other client's connection changes nothing.
    before = a.state
    assert a.handle(Closed("turn2:ctl"), 1.0) == [] and a.state is before
    b.handle(Received("turn2:ctl", connection_attempt()), 1.0)
    assert b.owns_conn("turn2:data:1") and not a.owns_conn("turn2:data:1")


def test_release_after_a_failed_allocation_still_reports_released() -> None:
    client = new_client(password="not-the-password")
    second = challenged(client)
    client.handle(Received(CTL, challenge(second)), 0.1)
    assert client.state is TurnState.FAILED and len(client.poll()) == 1
    effects = client.release(1.0)
    assert sends(effects) == [] and client.poll() == [Released()]
    assert client.state is TurnState.RELEASED and client.release(2.0) == []


# -- the allocation's state table ----------------------------------------------------------------


def test_the_turn_state_table_reaches_every_state_and_nothing_else_moves_it() -> None:
    from labsim.proto.turn_client import TRANSITIONS, TurnEvent, TurnState

    reached = {TurnState.IDLE}
    todo = [TurnState.IDLE]
    while todo:
        for target in TRANSITIONS[todo.pop()].values():
            if target not in reached:
                reached.add(target)
                todo.append(target)
    assert reached == set(TurnState)
    # Every event is used somewhere, and the terminal state allows none.
    assert {e for moves in TRANSITIONS.values() for e in moves} == set(TurnEvent)
    assert TRANSITIONS[TurnState.RELEASED] == {}


def test_an_event_its_state_does_not_allow_is_refused() -> None:
    from labsim.proto.turn_client import TurnEvent, TurnState

    client = new_client().client
    client._go(TurnEvent.START)
    assert client._state is TurnState.CONNECTING
    with pytest.raises(RuntimeError, match="ALLOCATED in state CONNECTING"):
        client._go(TurnEvent.ALLOCATED)
    assert client._state is TurnState.CONNECTING
