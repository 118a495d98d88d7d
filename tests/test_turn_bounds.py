"""The TURN server's state is bounded and its answers leak nothing (issue 12, hostile input and
hostile peers): idle connections, stateless nonces, permissions, pending peers and their early
data, the 401's MESSAGE-INTEGRITY and the peers a client may name. Sans-IO: the machine is driven
event by event with the harness of test_turn_server.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import pytest

from labsim.proto.events import (
    Address,
    Close,
    Closed,
    Connect,
    Connected,
    Listening,
    Received,
    StartTimer,
    StopTimer,
    TimerFired,
)
from labsim.proto.settings import SettingError
from labsim.proto.turn_server import IdleTimer, TurnServer, TurnServerSettings
from labsim.wire.stun import (
    Class,
    ConnectionId,
    Fingerprint,
    Lifetime,
    Message,
    MessageIntegrity,
    Method,
    Nonce,
    RequestedTransport,
    Username,
    XorPeerAddress,
    long_term_key,
)

from .test_turn_server import (
    CMS,
    EXPE,
    KEY,
    PEER,
    RELAY,
    Lab,
    allocate_request,
    attempt_cid,
    authed,
    error_code,
    logs,
    only_stun,
    sends,
)

FIRST_ALLOCATE = Message.request(
    Method.ALLOCATE, [RequestedTransport(6), Lifetime(600), Fingerprint()]
).encode()


def permission(*ips: str, port: int = 0) -> Message:
    return Message.request(Method.CREATE_PERMISSION, [XorPeerAddress(ip, port) for ip in ips])


def connect(lab: Lab, peer: Address, conn: str = "in:ctl") -> list[Any]:
    return lab.request(
        conn, Message.request(Method.CONNECT, [XorPeerAddress(peer.host, peer.port)])
    )


def held(server: TurnServer) -> int:
    """Every entry of every table the server holds (what a flood could grow)."""
    return sum(len(v) for v in vars(server).values() if isinstance(v, dict | set | list))


# ---------------------------------------------------------------------------------------------
# The lab 401's MESSAGE-INTEGRITY (PROTOCOL.md §10; RFC 5389 §10.2.2)
# ---------------------------------------------------------------------------------------------


def test_the_401_integrity_verifies_with_no_users_key_and_keeps_its_length() -> None:
    users = {"turn": "secret", "other": "pw2"}
    keys = [long_term_key(u, "TANDBERG", p) for u, p in users.items()]
    lab = Lab(users=users)
    lab.accept("in:ctl")
    [bare] = sends(lab.send("in:ctl", FIRST_ALLOCATE))
    named = Message.request(
        Method.ALLOCATE, [Username("other"), RequestedTransport(6), Lifetime(600), Fingerprint()]
    )
    [with_user] = sends(lab.send("in:ctl", named.encode()))
    for send in (bare, with_user):
        challenge = only_stun([send], "in:ctl")
        assert error_code(challenge) == 401 and MessageIntegrity in challenge
        # Keyed with any user's long-term key, one unauthenticated request would let anyone
        # test that user's passwords offline.
        assert not any(challenge.verify_integrity(k) for k in keys)
        assert challenge.verify_fingerprint()
    assert len(bare.data) == 176  # the lab row (PROTOCOL.md §10)


def test_the_401_integrity_key_is_random_per_server_or_repeats_with_its_seed() -> None:
    def challenge(seed: int, *, from_seed: bool) -> bytes:
        lab = Lab(seed=seed, secrets_from_seed=from_seed)
        lab.accept("in:ctl")
        return sends(lab.send("in:ctl", FIRST_ALLOCATE))[0].data

    # By default nobody can guess it: two servers with the same seed differ.
    assert challenge(1, from_seed=False) != challenge(1, from_seed=False)
    assert len(challenge(1, from_seed=False)) == len(challenge(1, from_seed=True))
    # From the seed, on request: every byte repeats.
    assert challenge(1, from_seed=True) == challenge(1, from_seed=True)
    assert challenge(1, from_seed=True) != challenge(2, from_seed=True)


# ---------------------------------------------------------------------------------------------
# Stateless nonces (RFC 5389 §10.2, §15.8)
# ---------------------------------------------------------------------------------------------


def test_unauthenticated_allocates_leave_no_state() -> None:
    lab = Lab()
    lab.accept("in:warmup")
    lab.feed(Closed("in:warmup"))
    before = held(lab.server)
    for i in range(2000):
        conn = f"in:{i}"
        lab.accept(conn, Address(f"10.9.{i // 250}.{i % 250 + 1}", 40000))
        assert error_code(only_stun(lab.send(conn, FIRST_ALLOCATE), conn)) == 401
        lab.feed(Closed(conn))
        lab.now += 0.001
    assert held(lab.server) == before


def test_a_nonce_is_lab_sized_hex_and_works_from_the_clients_other_connections() -> None:
    lab = Lab()
    lab.allocate()
    assert len(lab.nonce) == 52 and set(lab.nonce) <= set("0123456789abcdef")
    # The data connection comes from another port of the same IP with the same nonce.
    cid = attempt_cid(lab.peer_connects())
    assert only_stun(lab.bind("in:data", cid), "in:data").cls is Class.SUCCESS


def test_a_nonce_from_another_ip_or_tampered_gets_438() -> None:
    lab = Lab()
    lab.allocate()
    other = Address("10.48.54.231", 50000)
    lab.accept("in:other", other)
    assert error_code(only_stun(lab.request("in:other", allocate_request()), "in:other")) == 438
    # A later issue time in the clear part does not outlive the HMAC.
    forged = format(int(lab.nonce[:12], 16) + 10_000_000, "012x") + lab.nonce[12:]
    lab.nonce = forged
    refresh = Message.request(Method.REFRESH, [Lifetime(600)])
    reply = only_stun(lab.request("in:ctl", refresh), "in:ctl")
    assert error_code(reply) == 438
    fresh = reply.get(Nonce)
    assert fresh is not None and len(fresh.value) == 52


def test_a_nonce_goes_stale_by_its_own_time() -> None:
    lab = Lab(nonce_lifetime=10.0)
    lab.allocate()
    refresh = Message.request(Method.REFRESH, [Lifetime(600)])
    lab.now = 10.0
    assert only_stun(lab.request("in:ctl", refresh), "in:ctl").cls is Class.SUCCESS
    lab.now = 10.01
    assert error_code(only_stun(lab.request("in:ctl", refresh), "in:ctl")) == 438


def test_a_short_nonce_cannot_hold_an_hmac() -> None:
    with pytest.raises(SettingError) as bad:
        TurnServerSettings(nonce_length=20)
    assert bad.value.where == ("nonce_length",)
    lab = Lab(nonce_length=32)
    assert lab.allocate().cls is Class.SUCCESS


# ---------------------------------------------------------------------------------------------
# Idle connections to the TURN port (RFC 5389 §7.2.2; coturn --max-allocate-timeout 60)
# ---------------------------------------------------------------------------------------------


def test_a_silent_or_stalled_connection_is_closed_after_the_idle_timeout() -> None:
    lab = Lab()
    [start] = lab.accept("in:silent")
    assert start == StartTimer(IdleTimer("in:silent"), 60.0)
    lab.accept("in:half", Address("203.0.113.9", 2222))
    assert lab.send("in:half", FIRST_ALLOCATE[:10]) == []  # half a STUN header, then nothing
    lab.now = 60.0
    effects = lab.feed(TimerFired(IdleTimer("in:silent")))
    assert effects[-1] == Close("in:silent") and "no allocation within 60 s" in logs(effects)
    effects = lab.feed(TimerFired(IdleTimer("in:half")))
    assert effects[-1] == Close("in:half") and "10 bytes of an unfinished message" in logs(effects)
    # Forgotten: later bytes and a second firing do nothing.
    assert lab.send("in:half", FIRST_ALLOCATE[10:]) == []
    assert lab.feed(TimerFired(IdleTimer("in:half"))) == []


def test_binding_requests_alone_do_not_keep_a_connection() -> None:
    lab = Lab(idle_timeout=5.0)
    lab.accept("in:stun")
    lab.now = 4.0
    assert only_stun(lab.send("in:stun", Message.request(Method.BINDING).encode()), "in:stun")
    lab.now = 5.0
    assert Close("in:stun") in lab.feed(TimerFired(IdleTimer("in:stun")))


def test_an_allocation_or_a_bind_stops_the_idle_timer_and_losing_it_restarts_it() -> None:
    lab = Lab()
    lab.accept("in:ctl")
    lab.challenge("in:ctl")
    effects = lab.request("in:ctl", allocate_request())
    assert StopTimer(IdleTimer("in:ctl")) in effects
    cid = attempt_cid(lab.peer_connects())
    assert StopTimer(IdleTimer("in:data")) in lab.bind("in:data", cid)
    # Had they not been stopped, the timers would do nothing now.
    lab.now = 60.0
    assert lab.feed(TimerFired(IdleTimer("in:ctl"))) == []
    assert lab.feed(TimerFired(IdleTimer("in:data"))) == []
    # A control connection that outlives its allocation is idle again.
    effects = lab.request("in:ctl", Message.request(Method.REFRESH, [Lifetime(0)]))
    assert StartTimer(IdleTimer("in:ctl"), 60.0) in effects
    lab.now = 120.0
    assert Close("in:ctl") in lab.feed(TimerFired(IdleTimer("in:ctl")))


def test_closed_connections_stop_their_idle_timers() -> None:
    lab = Lab()
    lab.accept("in:a")
    assert lab.feed(Closed("in:a")) == [StopTimer(IdleTimer("in:a"))]
    lab.accept("in:b")
    effects = lab.send("in:b", b"GET / HTTP/1.1\r\n\r\n")
    assert effects[-2:] == [StopTimer(IdleTimer("in:b")), Close("in:b", reset=True)]


def test_connections_without_an_allocation_are_capped_by_resetting_the_oldest() -> None:
    lab = Lab(max_idle_connections=2)
    lab.accept("in:a", Address("203.0.113.9", 1))
    lab.accept("in:b", Address("203.0.113.9", 2))
    # One more: the one idle the longest goes, the newcomer is watched (a flood of idle
    # connections must not lock a real client out).
    effects = lab.accept("in:c", Address("203.0.113.9", 3))
    assert StopTimer(IdleTimer("in:a")) in effects and Close("in:a", reset=True) in effects
    assert effects[-1] == StartTimer(IdleTimer("in:c"), 60.0)
    assert "max_idle_connections" in logs(effects)
    assert lab.send("in:a", FIRST_ALLOCATE) == []  # forgotten
    # A connection that allocates leaves the count (in:e takes in:b's place, then allocates):
    # room for one more, nobody reset.
    lab.allocate("in:e")
    assert lab.accept("in:d", Address("203.0.113.9", 4)) == [StartTimer(IdleTimer("in:d"), 60.0)]


def test_a_real_client_gets_its_allocation_through_a_flood_of_idle_connections() -> None:
    lab = Lab(max_idle_connections=10)
    for i in range(100):
        lab.accept(f"in:flood{i}", Address("203.0.113.9", 1000 + i))
    lab.allocate("in:cms")  # connects after the flood and allocates at once
    for i in range(100, 200):
        lab.accept(f"in:flood{i}", Address("203.0.113.9", 1000 + i))
    assert lab.server._clients["in:cms"].allocation is not None


# ---------------------------------------------------------------------------------------------
# Permissions per allocation (RFC 5766 §9.2; 508 of §15)
# ---------------------------------------------------------------------------------------------


def test_permissions_past_the_cap_get_508_and_refreshes_still_work() -> None:
    lab = Lab(max_permissions=3)
    lab.allocate()
    ok = only_stun(lab.request("in:ctl", permission("198.51.100.1", "198.51.100.2")), "in:ctl")
    assert ok.cls is Class.SUCCESS
    # One free slot, two new IPs: all or nothing (RFC 5766 §9.2).
    reply = only_stun(lab.request("in:ctl", permission("198.51.100.3", "198.51.100.4")), "in:ctl")
    assert error_code(reply) == 508 and reply.verify_integrity(KEY)
    assert lab.server.allocations()[0].permissions == ("198.51.100.1", "198.51.100.2")
    assert only_stun(lab.request("in:ctl", permission("198.51.100.3")), "in:ctl").cls is (
        Class.SUCCESS
    )
    assert error_code(only_stun(lab.request("in:ctl", permission("198.51.100.4")), "in:ctl")) == 508
    # Refreshing a held one takes no room.
    refresh = permission("198.51.100.1", "198.51.100.3")
    assert only_stun(lab.request("in:ctl", refresh), "in:ctl").cls is Class.SUCCESS
    # Once the others expire (RFC 5766 §8: 300 s), there is room again.
    lab.now = 301.0
    pair = permission("198.51.100.4", "198.51.100.5")
    assert only_stun(lab.request("in:ctl", pair), "in:ctl").cls is Class.SUCCESS


def test_a_refreshed_permission_outlives_the_ones_created_with_it() -> None:
    lab = Lab(permission_policy="rfc")
    lab.allocate()
    lab.request("in:ctl", permission("198.51.100.1", PEER.host))
    lab.now = 200.0
    lab.request("in:ctl", permission(PEER.host))
    lab.now = 400.0
    lab.request("in:ctl", permission("198.51.100.9"))  # expires the stale ones
    assert lab.server.allocations()[0].permissions == ("192.168.1.252", "198.51.100.9")
    attempt_cid(lab.peer_connects())


def _create_permission_cost(count: int) -> float:
    """Seconds 200 CreatePermissions of one new IP each take with ``count`` permissions held."""
    lab = Lab(max_permissions=10**6)
    lab.allocate()
    ips = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(count + 200)]
    for i in range(0, count, 500):
        lab.request("in:ctl", permission(*ips[i : min(i + 500, count)]))
    timed = [authed(permission(ip), lab.nonce) for ip in ips[count:]]
    # The collector's passes grow with the heap, not with the server's work: kept out.
    gc.disable()
    try:
        start = time.perf_counter()
        for data in timed:
            lab.server.handle(Received("in:ctl", data), lab.now)
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    assert len(lab.server.allocations()[0].permissions) == count + 200
    return elapsed


def best_of_3(work: Callable[[], float]) -> float:
    return min(work() for _ in range(3))


def test_create_permission_work_does_not_grow_with_the_permissions_held() -> None:
    # Each CreatePermission once looked at every permission held (to expire the stale ones):
    # with 10x as many held it cost about 9x as much. Now it looks at the expired ones only:
    # about the same. The bound leaves room for noise on either side.
    small = best_of_3(lambda: _create_permission_cost(5_000))
    large = best_of_3(lambda: _create_permission_cost(50_000))
    assert large / small < 5, (small, large)


# ---------------------------------------------------------------------------------------------
# Peer connections waiting for their ConnectionBind (RFC 6062 §5.2, §5.3)
# ---------------------------------------------------------------------------------------------


def test_peers_waiting_for_their_bind_are_capped() -> None:
    lab = Lab(max_pending_peers=2)
    lab.allocate()
    first = attempt_cid(lab.peer_connects("in:p1", Address("198.51.100.1", 1)))
    attempt_cid(lab.peer_connects("in:p2", Address("198.51.100.2", 2)))
    effects = lab.peer_connects("in:p3", Address("198.51.100.3", 3))
    assert sends(effects) == [] and effects[-1] == Close("in:p3", reset=True)
    assert "max_pending_peers" in logs(effects)
    # Connect counts against the same cap: 508 Insufficient Capacity (RFC 5766 §15).
    reply = only_stun(connect(lab, Address("198.51.100.4", 4)), "in:ctl")
    assert error_code(reply) == 508 and reply.verify_integrity(KEY)
    # A bound peer no longer waits: room for one more.
    assert only_stun(lab.bind("in:data", first), "in:data").cls is Class.SUCCESS
    attempt_cid(lab.peer_connects("in:p5", Address("198.51.100.5", 5)))
    # And a peer that goes makes room too.
    lab.feed(Closed("in:p2", reset=True))
    [start] = [e for e in connect(lab, Address("198.51.100.6", 6)) if isinstance(e, Connect)]
    assert start.remote == Address("198.51.100.6", 6)


def test_early_data_is_bounded_per_allocation_too() -> None:
    lab = Lab(early_data_limit=100, early_data_total=150)
    lab.allocate()
    cid1 = attempt_cid(lab.peer_connects("in:p1", Address("198.51.100.1", 1)))
    attempt_cid(lab.peer_connects("in:p2", Address("198.51.100.2", 2)))
    attempt_cid(lab.peer_connects("in:p3", Address("198.51.100.3", 3)))
    assert lab.send("in:p1", b"a" * 100) == []
    assert lab.send("in:p2", b"b" * 50) == []
    effects = lab.send("in:p3", b"c")  # 151 bytes held in all: over the total
    assert effects[-1] == Close("in:p3", reset=True) and "early_data_total" in logs(effects)
    # Delivered bytes leave the count.
    effects = lab.bind("in:data", cid1)
    assert [s.data for s in sends(effects, "in:data")][1:] == [b"a" * 100]
    assert lab.send("in:p2", b"b" * 50) == []
    # So do the bytes of a peer that is reset.
    lab.feed(Closed("in:p2", reset=True))
    attempt_cid(lab.peer_connects("in:p4", Address("198.51.100.4", 4)))
    assert lab.send("in:p4", b"d" * 100) == []


# ---------------------------------------------------------------------------------------------
# Which peers a client may name (RFC 5766 §9.2, RFC 6062 §5.2: 403)
# ---------------------------------------------------------------------------------------------


def test_the_servers_own_ports_are_no_peers() -> None:
    lab = Lab()
    lab.allocate()
    lab.allocate("in:ctl2", Address(CMS.host, 44350))  # its relay: 24001
    for target in (Address(EXPE, 3478), RELAY, Address(EXPE, 24001), Address("0.0.0.0", 24001)):
        reply = only_stun(connect(lab, target), "in:ctl")
        assert error_code(reply) == 403 and reply.verify_integrity(KEY), target
        reply = only_stun(
            lab.request("in:ctl", permission(target.host, port=target.port)), "in:ctl"
        )
        assert error_code(reply) == 403, target
    # The server's address at another port is an ordinary peer; permissions ignore ports.
    assert any(isinstance(e, Connect) for e in connect(lab, Address(EXPE, 5060)))
    assert only_stun(lab.request("in:ctl", permission(EXPE)), "in:ctl").cls is Class.SUCCESS


def test_the_public_address_is_the_servers_own_too() -> None:
    lab = Lab()
    lab.server = TurnServer("expressway_e", EXPE, TurnServerSettings(), public_host="198.51.100.10")
    lab.feed(Listening(lab.server.address))
    lab.allocate()
    reply = only_stun(connect(lab, Address("198.51.100.10", 24000)), "in:ctl")
    assert error_code(reply) == 403


def test_relay_to_self_allows_the_servers_relays_as_peers() -> None:
    lab = Lab(relay_to_self=True)
    lab.allocate()
    lab.allocate("in:ctl2", Address(CMS.host, 44350))
    [start] = [e for e in connect(lab, Address(EXPE, 24001)) if isinstance(e, Connect)]
    reply = only_stun(lab.feed(Connected(start.conn, Address(EXPE, 40000), start.remote)), "in:ctl")
    assert reply.cls is Class.SUCCESS and reply.get(ConnectionId) is not None


def test_allowed_and_forbidden_peers_take_networks() -> None:
    lab = Lab(allowed_peers=("198.51.100.0/24",), forbidden_peers=("198.51.100.66",))
    lab.allocate()
    for ip, code in (("198.51.100.20", None), ("198.51.100.66", 403), (PEER.host, 403)):
        reply = only_stun(lab.request("in:ctl", permission(ip)), "in:ctl")
        assert (reply.cls is Class.SUCCESS) if code is None else error_code(reply) == code, ip
    assert error_code(only_stun(connect(lab, PEER), "in:ctl")) == 403
    # A peer outside the policy that connects in is reset, even with the lab permission policy.
    effects = lab.peer_connects()
    assert sends(effects) == [] and effects[-1] == Close("in:peer", reset=True)
    assert "allowed_peers" in logs(effects)
    attempt_cid(lab.peer_connects("in:ok", Address("198.51.100.20", 5000)))


@pytest.mark.parametrize("key", ["allowed_peers", "forbidden_peers"])
def test_peer_lists_are_validated(key: str) -> None:
    with pytest.raises(SettingError) as bad:
        TurnServerSettings(**{key: ("198.51.100.1", "not-an-address")})
    assert bad.value.where == (key, 1)
