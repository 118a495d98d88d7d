"""The library scenarios of three behaviour settings, on both clocks: Expressway-E's TURN server
answering with a chosen error (``expressway_e.turn.errors``), CMS with no TURN server
(``cms.turn: null``) and Expressway-E behind a static NAT (``expressway_e.nat``).

Each run must meet its file's expectations; the asserts here read the trace for what makes the
fault real on the wire (who closed what, which connect never opened, what the answer offered).
"""

from __future__ import annotations

import pytest

from labsim.run import Clock, RunResult, run_scenario
from labsim.scenario import library_dir, load
from labsim.trace import ConnectionRecord, Trace
from labsim.wire.address import Address

from .labs import variant

CLOCKS: tuple[Clock, ...] = ("virtual", "live")
PUBLIC = "198.51.100.10"


def run(name: str, clock: Clock) -> RunResult:
    result = run_scenario(load(library_dir() / f"{name}.yaml"), clock)
    assert result.passed, (result.failures, result.outcome)
    assert result.ended == "finished"
    return result


def turn_connections(trace: Trace) -> list[ConnectionRecord]:
    """CMS's connections to Expressway-E's TURN port, in the order they opened."""
    return [
        c for c in trace.connections.values()
        if c.client == "cms" and c.server == "expressway_e" and c.server_addr.port == 3478
    ]  # fmt: skip


def cms_answer(trace: Trace) -> bytes:
    """The 200 OK CMS gave the INVITE, as it left CMS."""
    ok = [r for r in trace.find("200") if r.src == "cms" and b"m=applicationsharing" in r.data]
    assert ok
    return bytes(ok[0].data)


@pytest.mark.parametrize("clock", CLOCKS)
def test_allocate_508_leaves_cms_without_a_relay(clock: Clock) -> None:
    trace = run("turn-allocate-508", clock).trace
    (error,) = [r for r in trace.find("Allocate Error Response 508") if r.dst == "cms"]
    assert error.delivered
    assert not any(c.server_addr.port >= 24000 for c in trace.connections.values())
    answer = cms_answer(trace)
    assert b"typ relay" not in answer and b"typ host" in answer


@pytest.mark.parametrize("clock", CLOCKS)
def test_connection_bind_447_closes_the_data_connection(clock: Clock) -> None:
    trace = run("turn-connectionbind-447", clock).trace
    control, data = turn_connections(trace)[:2]
    assert control.closed_by in ("cms", None)
    # RFC 6062 §5.4: the server answers, then closes; the client closes its side too.
    assert data.closed is not None and data.closed_by in ("expressway_e", "cms")
    assert not data.reset
    # No byte of the peer's ever reaches CMS.
    assert not [r for r in trace.messages if r.dst == "cms" and r.framing != "stun"
                and r.connection == data.id]  # fmt: skip


@pytest.mark.parametrize("clock", CLOCKS)
def test_create_permission_403_gets_the_peer_reset(clock: Clock) -> None:
    trace = run("turn-createpermission-403", clock).trace
    peers = [c for c in trace.connections.values()
             if c.client == "skype_edge" and c.server_addr.port == 24000]  # fmt: skip
    assert peers and all(c.reset and c.closed_by == "expressway_e" for c in peers)


def test_refresh_437_mid_call_loses_the_allocation() -> None:
    trace = run("turn-refresh-437", "virtual").trace
    (error,) = trace.find("Refresh Error Response 437")
    assert error.t > 500.0  # the second Refresh, 540 s into the call
    control, data = turn_connections(trace)[:2]
    # CMS takes the allocation as gone and closes its control connection; the server then
    # deletes the allocation and closes the data connection with it.
    assert control.closed_by == "cms" and control.closed is not None
    assert control.closed >= error.t
    assert data.closed is not None and data.closed_by == "expressway_e"
    assert data.closed < 600.0


@pytest.mark.parametrize("clock", CLOCKS)
def test_refresh_437_mid_call_with_a_short_lifetime(clock: Clock) -> None:
    # The same fault within seconds (a 10 s lifetime refreshes every 5 s), so it runs live too.
    sc = variant(
        "actors:\n"
        "  expressway_e: {turn: {default_lifetime: 10, errors: "
        "[{request: Refresh, code: 437, nth: 2}]}}\n"
        "  cms: {turn: {lifetime: 10}}\n"
        "expect: {outcome: sharing-established}\n",
        hold=8.0,
    )
    result = run_scenario(sc, clock)
    assert result.passed, result.failures
    trace = result.trace
    (error,) = trace.find("Refresh Error Response 437")
    control, data = turn_connections(trace)[:2]
    assert control.closed_by == "cms"
    assert data.closed is not None and data.closed_by == "expressway_e"
    assert data.closed >= error.t


@pytest.mark.parametrize("clock", CLOCKS)
def test_cms_without_turn_server_offers_an_unreachable_host_candidate(clock: Clock) -> None:
    trace = run("cms-no-turn-server", clock).trace
    assert not [r for r in trace.messages if r.protocol == "STUN" and "cms" in (r.src, r.dst)
                and r.framing == "stun"]  # fmt: skip
    answer = cms_answer(trace)
    assert b"typ relay" not in answer
    assert b"10.48.54.230 33710 typ host" in answer
    # The Edge tries what the answer offers; it has no route to CMS's private address.
    (refused,) = [r for r in trace.refused if r.client == "skype_edge"]
    assert refused.server_addr == Address("10.48.54.230", 33710)
    assert refused.reason == "timeout"


@pytest.mark.parametrize("clock", CLOCKS)
def test_static_nat_relay_reached_at_the_public_address(clock: Clock) -> None:
    trace = run("static-nat-public-address", clock).trace
    (success,) = [r for r in trace.find("Allocate Success Response") if r.dst == "cms"]
    assert f"XOR-RELAYED-ADDRESS: {PUBLIC}:24000" in success.summary
    assert b"198.51.100.10 24000 typ relay" in cms_answer(trace)
    # The NAT delivers the Edge's connect to Expressway-E's relay listener.
    (peer,) = [c for c in trace.connections.values()
               if c.client == "skype_edge" and c.server_addr.port == 24000]  # fmt: skip
    assert peer.server == "expressway_e" and not trace.refused


@pytest.mark.parametrize("clock", CLOCKS)
def test_static_nat_without_forwarding_times_the_connect_out(clock: Clock) -> None:
    trace = run("static-nat-not-forwarded", clock).trace
    (refused,) = trace.refused
    assert refused.client == "skype_edge" and refused.server_addr == Address(PUBLIC, 24000)
    assert refused.reason == "timeout"
    assert not [c for c in trace.connections.values() if c.server_addr.port == 24000]
