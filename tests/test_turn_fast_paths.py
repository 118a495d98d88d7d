"""The TURN server's fast paths (bench/turn.py), each checked against the plain computation it
replaced: the lowest free relay port without a scan of the range (``_RelayPorts``), the user
quota from a count, the nonce's HMAC from precomputed key states."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from labsim.proto.events import Address, Closed
from labsim.proto.turn_server import TurnServer, TurnServerSettings, _hmac_states, _RelayPorts
from labsim.wire.stun import XorRelayedAddress
from tests.test_turn_server import CMS, Lab


def test_released_relay_ports_are_reused_lowest_first() -> None:
    lab = Lab()
    for n in range(5):
        lab.allocate(f"in:{n}", Address(CMS.host, 50000 + n))
    # Released out of order: the next allocations still take the lowest free port first.
    lab.feed(Closed("in:3"))
    lab.feed(Closed("in:1"))
    relays = [
        lab.allocate(f"in:again{n}", Address(CMS.host, 51000 + n)).get(XorRelayedAddress)
        for n in range(3)
    ]
    assert [r.port for r in relays if r is not None] == [24001, 24003, 24005]


def test_user_quota_counts_what_the_user_holds_now() -> None:
    lab = Lab(user_quota=2)
    lab.allocate("in:a", Address(CMS.host, 50000))
    lab.allocate("in:b", Address(CMS.host, 50001))
    lab.feed(Closed("in:a"))  # one given back: room for one more, not two
    lab.allocate("in:c", Address(CMS.host, 50002))
    assert len(lab.server.allocations()) == 2
    assert lab.server.allocation_count == 2


LOW, HIGH = 100, 115


def scan(used: set[int], even: bool) -> int | None:
    """The lowest free port as the server used to find it: a scan from the bottom."""
    return next((p for p in range(LOW, HIGH + 1) if p not in used and not (even and p % 2)), None)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["take", "even", "give"]), st.integers(0, 63))))
def test_relay_port_pool_finds_the_lowest_free_port_as_a_scan_does(
    ops: list[tuple[str, int]],
) -> None:
    pool = _RelayPorts(LOW, HIGH)
    used: set[int] = set()
    alloc = cast(Any, object())  # the pool stores allocations, it never reads them
    for op, pick in ops:
        if op == "give":
            if used:
                port = sorted(used)[pick % len(used)]
                used.discard(port)
                pool.give_back(port)
        else:
            even = op == "even"  # EVEN-PORT takes its port by a scan: the pool must cope
            lowest = pool.lowest_free(even=even)
            assert lowest == scan(used, even)
            if lowest is not None:
                used.add(lowest)
                pool.take(lowest, alloc)
        assert pool.lowest_free() == scan(used, False)
        assert [p for p, _ in pool.items()] == sorted(used)
        assert len(pool) == len(used)


@given(st.binary(max_size=200), st.binary(max_size=100))
def test_hmac_from_key_states_is_hmac_sha256(key: bytes, data: bytes) -> None:
    inner, outer = (state.copy() for state in _hmac_states(key))
    inner.update(data)
    outer.update(inner.digest())
    assert outer.digest() == hmac.new(key, data, hashlib.sha256).digest()


def test_nonce_is_the_hmac_of_its_head_and_the_client_ip() -> None:
    server = TurnServer("expressway_e", "10.48.54.229", TurnServerSettings(secrets_from_seed=True))
    nonce = server._new_nonce("10.48.54.230", 12.5)
    digits = len(nonce) - 16  # the time and salt digits come first, in clear
    head = nonce[:16]
    mac = hmac.new(server._nonce_secret, f"{head}|10.48.54.230".encode(), hashlib.sha256)
    assert nonce[16:] == mac.hexdigest()[:digits]
    assert server._nonce_valid(nonce, "10.48.54.230", 13.0)
    assert not server._nonce_valid(nonce, "10.48.54.231", 13.0)


def test_a_nonce_is_valid_at_the_instant_it_was_issued() -> None:
    # Times whose product by 1000 rounds up (1.1219999999999999 * 1000 == 1122.0) once read a
    # nonce checked at its own issue time as issued later, hence stale (a 438 in a virtual run).
    server = TurnServer("expressway_e", "10.48.54.229", TurnServerSettings(secrets_from_seed=True))
    for i in range(1000):
        now = 1.0 + i * 0.001
        nonce = server._new_nonce("10.48.54.230", now)
        assert server._nonce_valid(nonce, "10.48.54.230", now), now
    nonce = server._new_nonce("10.48.54.230", 10.0)
    lifetime = server.settings.nonce_lifetime
    assert server._nonce_valid(nonce, "10.48.54.230", 10.0 + lifetime)
    assert not server._nonce_valid(nonce, "10.48.54.230", 10.0 + lifetime + 0.002)
    assert not server._nonce_valid(nonce, "10.48.54.230", 9.998)
