"""TURN client <-> TURN server on both runtimes: the passive RFC 6062 flow of the lab, its error
paths, and the same flow live and virtual."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from labsim.net.live import LiveNetwork
from labsim.net.virtual import VirtualNetwork
from labsim.proto.events import Actor, Address
from labsim.proto.turn_client import TurnClientSettings
from labsim.proto.turn_server import TurnServer, TurnServerSettings
from labsim.trace import Trace

from .turn_actors import Board, CmsLike, SkypePeer

EXPE, CMS, EDGE = "10.48.54.229", "10.48.54.230", "192.168.1.252"
CLOCKS = ["virtual", "live"]
# Live runs bind these on Expressway-E's address in the run's loopback block: away from the
# lab's 3478 and 24000-29999, which a system coturn listening on every address could hold.
TURN_PORT = 34780
RELAYS = (44000, 44009)


def run(clock: str, actors: list[Actor], until: float, stop: Callable[[Trace], bool]) -> Trace:
    trace = Trace()
    if clock == "virtual":
        VirtualNetwork(actors, trace).run(until=until, stop=stop)
    else:
        LiveNetwork(actors, trace).run(until=until, stop=stop)
    return trace


def lab(
    clock: str,
    *,
    server: dict[str, Any] | None = None,
    client: dict[str, Any] | None = None,
    hangup_after: float | None = 1.0,
    with_peer: bool = True,
    until: float = 10.0,
    stop: Callable[[Trace, Board], bool] | None = None,
) -> tuple[Trace, Board]:
    board = Board()
    server_settings = TurnServerSettings(port=TURN_PORT, relay_ports=RELAYS, **(server or {}))
    client_settings = TurnClientSettings(**(client or {}))
    actors: list[Actor] = [
        TurnServer("expressway_e", EXPE, server_settings).actor(),
        CmsLike(
            CMS,
            client_settings,
            board,
            server=Address(EXPE, TURN_PORT),
            hangup_after=hangup_after,
            peer_host=EDGE,
        ),
    ]
    if with_peer:
        actors.append(SkypePeer(EDGE, board))
    done = stop or (lambda _trace, b: b.done)
    trace = run(clock, actors, until, lambda t: done(t, board))
    return trace, board


def summaries(trace: Trace) -> list[str]:
    return [s for s, _, _ in trace.sequence(relayed=False)]


def per_pair(trace: Trace) -> dict[tuple[str, str], list[str]]:
    """Messages in order per direction of actor pair: what is causally ordered in any runtime."""
    out: dict[tuple[str, str], list[str]] = {}
    for summary, src, dst in trace.sequence():
        out.setdefault((src, dst), []).append(summary)
    return out


@pytest.mark.parametrize("clock", CLOCKS)
def test_passive_flow(clock: str) -> None:
    trace, board = lab(clock)
    lines = summaries(trace)
    assert lines[:3] == [
        "Allocate Request TCP lifetime: 600",
        "Allocate Error Response error-code: 401 (Unauthenticated) Unauthorized with nonce"
        " realm: TANDBERG lifetime: 600",
        "Allocate Request user: turn realm: TANDBERG with nonce TCP",
    ]
    assert lines[3].startswith("Allocate Success Response lifetime: 600 XOR-MAPPED-ADDRESS: ")
    assert lines[4:6] == [
        "Refresh Request user: turn realm: TANDBERG with nonce lifetime: 600",
        "Refresh Success Response lifetime: 600",
    ]
    attempt = [s for s in lines if s.startswith("ConnectionAttempt")]
    assert attempt and attempt[0].startswith(
        f"ConnectionAttempt Indication XOR-PEER-ADDRESS: {EDGE}:"
    )
    bind = lines.index("ConnectionBind Request user: turn realm: TANDBERG with nonce")
    assert lines[bind + 1] == "ConnectionBind Success Response"
    assert lines[-2:] == [
        "Refresh Request user: turn realm: TANDBERG with nonce lifetime: 0",
        "Refresh Success Response lifetime: 0",
    ]
    # Bytes both ways through the pipe: each side answered the other's check.
    relayed = [m for m in trace.messages if m.relayed]
    assert {(m.summary.split(" XOR")[0], m.dst) for m in relayed} >= {
        ("Binding Request user: Xa3f:cM5k", "cms"),
        ("Binding Request user: Xa3f:cM5k", "skype_edge"),
        ("Binding Success Response", "cms"),
        ("Binding Success Response", "skype_edge"),
    }
    assert board.checks_answered == 1 and board.released
    # The lab's sizes (PROTOCOL.md §10): 44, 176, 148, 112, 136, 88, 100, 136, 88 bytes.
    sizes = {m.summary.split(" user")[0].split(" XOR")[0].split(" lifetime")[0]: len(m.data)
             for m in trace.messages if m.protocol == "STUN" and not m.relayed}  # fmt: skip
    assert sizes["Allocate Success Response"] == 112
    assert sizes["ConnectionAttempt Indication"] == 100
    assert sizes["ConnectionBind Request"] == 136 and sizes["ConnectionBind Success Response"] == 88


def test_same_flow_live_and_virtual() -> None:
    virtual, _ = lab("virtual")
    live, _ = lab("live")
    assert per_pair(virtual) == per_pair(live)
    assert sorted(virtual.sequence()) == sorted(live.sequence())
    # Control, peer and data connections; releasing the allocation closed all three, in both.
    for trace in (virtual, live):
        assert len(trace.connections) == 3
        assert all(c.closed is not None for c in trace.connections.values())


@pytest.mark.parametrize("clock", CLOCKS)
def test_wrong_password_fails_with_401(clock: str) -> None:
    trace, board = lab(clock, client={"password": "wrong"}, with_peer=False)
    assert board.allocation_failed is not None and board.allocation_failed.code == 401
    assert board.allocation_failed.reason == "unauthorized - check credentials"
    assert summaries(trace)[-1].startswith("Allocate Error Response error-code: 401")


@pytest.mark.parametrize("clock", CLOCKS)
def test_no_tcp_relay_gives_442(clock: str) -> None:
    trace, board = lab(clock, server={"tcp_relay": False}, with_peer=False)
    assert board.allocation_failed is not None and board.allocation_failed.code == 442
    assert any("442 (Unsupported Transport Protocol)" in s for s in summaries(trace))


@pytest.mark.parametrize("clock", CLOCKS)
def test_rfc_policy_without_permission_resets_the_peer(clock: str) -> None:
    trace, board = lab(
        clock,
        server={"permission_policy": "rfc"},
        hangup_after=None,
        stop=lambda _t, b: b.peer_closed is not None,
    )
    assert board.peer_reset
    assert not any(s.startswith("ConnectionAttempt") for s in summaries(trace))


@pytest.mark.parametrize("clock", CLOCKS)
def test_rfc_policy_with_create_permission_succeeds(clock: str) -> None:
    trace, board = lab(
        clock, server={"permission_policy": "rfc"}, client={"create_permission": True}
    )
    lines = summaries(trace)
    assert "CreatePermission Success Response" in lines
    assert "ConnectionBind Success Response" in lines and board.checks_answered == 1


def test_connection_bind_never_sent_closes_the_peer_after_30_s() -> None:
    trace, board = lab(
        "virtual",
        client={"send_connection_bind": False},
        hangup_after=None,
        until=100.0,
        stop=lambda _t, b: b.peer_closed is not None,
    )
    attempt = trace.find("ConnectionAttempt")[0]
    assert board.peer_closed is not None and 29.9 < board.peer_closed - attempt.t < 30.2
    assert not trace.find("ConnectionBind")


def test_600_s_allocation_expires_in_virtual_time() -> None:
    trace, board = lab(
        "virtual",
        client={"refresh_after_allocate": False, "refresh_margin": -100.0, "keepalive_first": None},
        hangup_after=None,
        with_peer=False,
        until=800.0,
    )
    assert board.expired
    relay = [c for c in trace.connections.values() if c.server == "expressway_e"]
    assert relay and not trace.find("Refresh")


def test_stale_nonce_is_recovered() -> None:
    trace, board = lab(
        "virtual",
        server={"nonce_lifetime": 100.0},
        client={"refresh_after_allocate": False, "refresh_margin": 450.0},
        hangup_after=None,
        with_peer=False,
        until=400.0,
        stop=lambda t, _b: len(t.find("Refresh Success")) >= 1,
    )
    lines = summaries(trace)
    stale = lines.index(next(s for s in lines if "438 (Stale Nonce)" in s))
    assert lines[stale - 1].startswith("Refresh Request")
    assert lines[stale + 1].startswith("Refresh Request") and lines[stale + 2].startswith(
        "Refresh Success Response"
    )
