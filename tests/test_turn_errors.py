"""Errors Expressway-E's TURN server gives on purpose (``turn.errors``), and its static NAT.

The server machine is driven event by event with the harness of ``test_turn_server``; every
answer is decoded as CMS would decode it: method, class, code, reason phrase, MESSAGE-INTEGRITY
with the requester's key, FINGERPRINT. tshark reads the same bytes back as the independent judge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest

from labsim.proto.events import (
    Address,
    Close,
    Listen,
    Listening,
    Log,
    Started,
    StopTimer,
    TimerFired,
)
from labsim.proto.settings import SettingError
from labsim.proto.turn_server import (
    INJECTABLE_METHODS,
    BindTimer,
    InjectableCode,
    InjectedError,
    TurnServer,
    TurnServerSettings,
)
from labsim.wire.stun import (
    Class,
    ConnectionId,
    ErrorCode,
    Lifetime,
    Message,
    MessageIntegrity,
    Method,
    Nonce,
    Realm,
    XorPeerAddress,
    XorRelayedAddress,
    decode,
)

from .pcapwriter import TcpConversation, write_pcap
from .test_turn_flow import CLOCKS
from .test_turn_flow import lab as flow
from .test_turn_flow import summaries as flow_summaries
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
    only_stun,
    sends,
    timer_of,
)

#: The reason phrases of RFC 5389 §15.6, RFC 5766 §15 and RFC 6062 §6.3, written out here so
#: the codec's table is checked against the RFCs rather than against itself.
REASONS = {
    403: "Forbidden",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    446: "Connection Already Exists",
    447: "Connection Timeout or Failure",
    486: "Allocation Quota Reached",
    508: "Insufficient Capacity",
}
CODES: tuple[InjectableCode, ...] = get_args(InjectableCode)


def lab_with(*errors: InjectedError, **settings: Any) -> Lab:
    return Lab(errors=errors, **settings)


def reason(msg: Message) -> str:
    attr = msg.get(ErrorCode)
    assert attr is not None
    return attr.reason


def check_signed_error(msg: Message, method: int, code: int) -> None:
    """An error response as the server signs those to authenticated requests."""
    assert msg.method == method and msg.cls is Class.ERROR, msg.summary()
    assert error_code(msg) == code and reason(msg) == REASONS[code]
    assert msg.verify_fingerprint()
    if code == 438:
        # RFC 5389 §10.2.2: a fresh NONCE and the REALM, no MESSAGE-INTEGRITY (the lab layout).
        assert msg.get(Realm) == Realm("TANDBERG") and msg.get(Nonce) is not None
        assert MessageIntegrity not in msg
    else:
        assert MessageIntegrity in msg and msg.verify_integrity(KEY)


def test_the_reason_phrases_are_the_rfcs() -> None:
    assert set(CODES) == set(REASONS)


@pytest.mark.parametrize("code", CODES)
def test_an_allocate_error_is_answered_before_anything_is_allocated(code: InjectableCode) -> None:
    lab = lab_with(InjectedError("Allocate", code))
    lab.accept("in:ctl")
    challenge = lab.challenge("in:ctl")  # the unauthenticated Allocate is not counted: 401
    assert error_code(challenge) == 401
    effects = lab.request("in:ctl", allocate_request())
    reply = only_stun(effects, "in:ctl")
    check_signed_error(reply, Method.ALLOCATE, code)
    assert not any(isinstance(e, Listen) for e in effects)
    assert lab.server.allocations() == []
    assert "answered" in "\n".join(e.text for e in effects if isinstance(e, Log))


def test_a_stale_nonce_answer_brings_a_new_nonce_that_works() -> None:
    lab = lab_with(InjectedError("Allocate", 438, nth=1))
    lab.accept("in:ctl")
    lab.challenge("in:ctl")
    old = lab.nonce
    reply = only_stun(lab.request("in:ctl", allocate_request()), "in:ctl")
    check_signed_error(reply, Method.ALLOCATE, 438)
    nonce = reply.get(Nonce)
    assert nonce is not None and nonce.value != old
    lab.nonce = nonce.value
    success = only_stun(lab.request("in:ctl", allocate_request()), "in:ctl")
    assert success.cls is Class.SUCCESS and success.verify_integrity(KEY)


def test_nth_counts_authenticated_requests_of_one_kind_over_the_server() -> None:
    lab = lab_with(InjectedError("Allocate", 508, nth=(2,)))
    assert lab.allocate("in:c1").cls is Class.SUCCESS
    lab.accept("in:c2", Address(CMS.host, CMS.port + 1))
    lab.challenge("in:c2")
    check_signed_error(
        only_stun(lab.request("in:c2", allocate_request()), "in:c2"), Method.ALLOCATE, 508
    )
    lab.accept("in:c3")
    lab.challenge("in:c3")
    assert only_stun(lab.request("in:c3", allocate_request()), "in:c3").cls is Class.SUCCESS


def test_a_refresh_error_leaves_the_allocation_as_it_was() -> None:
    lab = lab_with(InjectedError("Refresh", 437, nth=2))
    lab.allocate()
    refresh = Message.request(Method.REFRESH, [Lifetime(600)])
    assert only_stun(lab.request("in:ctl", refresh), "in:ctl").cls is Class.SUCCESS
    before = lab.server.allocations()
    lab.now += 100.0
    effects = lab.request("in:ctl", Message.request(Method.REFRESH, [Lifetime(600)]))
    check_signed_error(only_stun(effects, "in:ctl"), Method.REFRESH, 437)
    # Nothing refreshed: the expiry is where the first Refresh put it.
    assert lab.server.allocations() == before
    third = lab.request("in:ctl", Message.request(Method.REFRESH, [Lifetime(600)]))
    assert only_stun(third, "in:ctl").cls is Class.SUCCESS


def test_a_create_permission_error_installs_no_permission() -> None:
    lab = lab_with(InjectedError("CreatePermission", 403), permission_policy="rfc")
    lab.allocate()
    request = Message.request(Method.CREATE_PERMISSION, [XorPeerAddress(PEER.host, 0)])
    check_signed_error(
        only_stun(lab.request("in:ctl", request), "in:ctl"), Method.CREATE_PERMISSION, 403
    )
    assert lab.server.allocations()[0].permissions == ()
    # So the peer's connection is reset at once (RFC 6062 §5.3) and CMS hears nothing.
    effects = lab.peer_connects()
    assert Close("in:peer", reset=True) in effects and sends(effects, "in:ctl") == []


@pytest.mark.parametrize("code", [446, 447, 403, 508])
def test_a_connection_bind_error_is_answered_then_the_connection_closed(
    code: InjectableCode,
) -> None:
    lab = lab_with(InjectedError("ConnectionBind", code))
    lab.allocate()
    effects = lab.peer_connects()
    cid = attempt_cid(effects)
    bind_timer = timer_of(effects, BindTimer)
    effects = lab.bind("in:data", cid, extra=b"\x00\x6c early client bytes")
    check_signed_error(only_stun(effects, "in:data"), Method.CONNECTION_BIND, code)
    assert effects[-1] == Close("in:data")
    # No pipe: neither side's bytes go anywhere; the peer waits for its bind timer (§5.3).
    assert sends(effects, "in:peer") == []
    assert lab.send("in:data", b"late") == []
    assert lab.send("in:peer", b"peer bytes") == []
    lab.now += 30.0
    assert Close("in:peer") in lab.feed(TimerFired(bind_timer.timer))


def test_a_stale_nonce_on_connection_bind_keeps_the_connection_for_the_retry() -> None:
    lab = lab_with(InjectedError("ConnectionBind", 438, nth=1))
    lab.allocate()
    cid = attempt_cid(lab.peer_connects())
    effects = lab.bind("in:data", cid)
    reply = only_stun(effects, "in:data")
    check_signed_error(reply, Method.CONNECTION_BIND, 438)
    assert not any(isinstance(e, Close) for e in effects)
    nonce = reply.get(Nonce)
    assert nonce is not None
    lab.nonce = nonce.value
    retry = authed(Message.request(Method.CONNECTION_BIND, [ConnectionId(cid)]), lab.nonce)
    assert only_stun(lab.send("in:data", retry), "in:data").cls is Class.SUCCESS


def test_connect_errors_too() -> None:
    lab = lab_with(InjectedError("Connect", 447))
    lab.allocate()
    connect = Message.request(Method.CONNECT, [XorPeerAddress(PEER.host, PEER.port)])
    effects = lab.request("in:ctl", connect)
    check_signed_error(only_stun(effects, "in:ctl"), Method.CONNECT, 447)
    assert len(effects) == 2  # the log and the answer: no connection is opened


def test_without_errors_nothing_changes() -> None:
    assert TurnServerSettings().errors == ()
    lab = Lab()
    assert lab.allocate().cls is Class.SUCCESS


def test_bad_settings_name_their_key() -> None:
    with pytest.raises(SettingError) as bad_code:
        InjectedError("Allocate", 401)  # type: ignore[arg-type]
    assert bad_code.value.where == ("code",)
    with pytest.raises(SettingError) as bad_request:
        InjectedError("Binding", 403)  # type: ignore[arg-type]
    assert bad_request.value.where == ("request",)
    with pytest.raises(SettingError) as bad_nth:
        InjectedError("Refresh", 437, nth=(0,))
    assert bad_nth.value.where == ("nth",)
    assert set(INJECTABLE_METHODS) == {
        "Allocate", "Refresh", "CreatePermission", "Connect", "ConnectionBind"
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Static NAT: the relay is advertised at the public address
# ---------------------------------------------------------------------------------------------


def test_the_relay_is_advertised_at_the_public_address_and_opened_at_the_own() -> None:
    lab = Lab(auto_listen=False)
    lab.server = TurnServer("expressway_e", EXPE, TurnServerSettings(), public_host="198.51.100.10")
    lab.feed(Started())
    lab.feed(Listening(lab.server.address))
    lab.accept("in:ctl")
    lab.challenge("in:ctl")
    effects = lab.request("in:ctl", allocate_request())
    assert [e for e in effects if not isinstance(e, StopTimer)] == [Listen(RELAY)]
    effects = lab.feed(Listening(RELAY))
    success = only_stun(effects, "in:ctl")
    assert success.get(XorRelayedAddress) == XorRelayedAddress("198.51.100.10", RELAY.port)
    assert success.verify_integrity(KEY) and success.verify_fingerprint()
    assert "advertised as 198.51.100.10:24000" in "\n".join(
        e.text for e in effects if isinstance(e, Log)
    )


# ---------------------------------------------------------------------------------------------
# tshark reads every injected error as the error it is
# ---------------------------------------------------------------------------------------------


def injected_answers() -> list[bytes]:
    """The bytes of one injected error of each code (Allocate) and of each other request."""
    out: list[bytes] = []
    for code in CODES:
        lab = lab_with(InjectedError("Allocate", code))
        lab.accept("in:ctl")
        lab.challenge("in:ctl")
        out += [s.data for s in sends(lab.request("in:ctl", allocate_request()), "in:ctl")]
    lab = lab_with(InjectedError("Refresh", 437), InjectedError("CreatePermission", 403),
                   InjectedError("ConnectionBind", 447))  # fmt: skip
    lab.allocate()
    refresh = Message.request(Method.REFRESH, [Lifetime(600)])
    out += [s.data for s in sends(lab.request("in:ctl", refresh), "in:ctl")]
    permission = Message.request(Method.CREATE_PERMISSION, [XorPeerAddress(PEER.host, 0)])
    out += [s.data for s in sends(lab.request("in:ctl", permission), "in:ctl")]
    cid = attempt_cid(lab.peer_connects())
    out += [s.data for s in sends(lab.bind("in:data", cid), "in:data")]
    return out


@pytest.mark.tshark
def test_tshark_reads_the_injected_errors(tmp_path: Path) -> None:
    from .test_tshark import run_tshark

    answers = injected_answers()
    assert len(answers) == len(CODES) + 3
    conversations = [
        TcpConversation((CMS.host, 41000 + n), (EXPE, 3478)).send(False, raw)
        for n, raw in enumerate(answers)
    ]
    path = tmp_path / "errors.pcap"
    write_pcap(path, conversations)
    rows = run_tshark(path)
    assert len(rows) == len(answers)
    for row, raw in zip(rows, answers, strict=True):
        message = decode(raw)
        code = error_code(message)
        info = row["_ws.col.Info"]
        assert info == message.summary()
        assert "Error Response" in info and f"error-code: {code} " in info
        assert info.endswith(REASONS[code]) or f" {REASONS[code]}" in info
        assert row["_ws.malformed"] == ""
        assert row["stun.att.crc32.status"] == "1"


# ---------------------------------------------------------------------------------------------
# CMS's TURN client against these answers, on both clocks
# ---------------------------------------------------------------------------------------------


def errors(*entries: InjectedError) -> dict[str, Any]:
    return {"errors": entries}


@pytest.mark.parametrize("clock", CLOCKS)
@pytest.mark.parametrize("code", [403, 437, 441, 442, 486, 508])
def test_an_allocate_error_leaves_the_client_without_a_relay(
    clock: str, code: InjectableCode
) -> None:
    trace, board = flow(clock, server=errors(InjectedError("Allocate", code)), with_peer=False)
    failed = board.allocation_failed
    assert failed is not None and failed.code == code and failed.reason == REASONS[code]
    assert board.relayed is None
    # The client gives up: its control connection is closed, by the client.
    control = next(c for c in trace.connections.values() if c.client == "cms")
    assert control.closed is not None and control.closed_by == "cms"


@pytest.mark.parametrize("clock", CLOCKS)
def test_a_stale_nonce_on_allocate_is_retried_once_with_the_new_nonce(clock: str) -> None:
    trace, board = flow(clock, server=errors(InjectedError("Allocate", 438, nth=1)))
    lines = flow_summaries(trace)
    stale = next(i for i, s in enumerate(lines) if "438 (Stale Nonce)" in s)
    assert lines[stale + 1].startswith("Allocate Request")
    assert lines[stale + 2].startswith("Allocate Success Response")
    assert board.relayed is not None and board.checks_answered == 1 and board.released


@pytest.mark.parametrize("clock", CLOCKS)
def test_a_refresh_437_is_the_allocation_lost(clock: str) -> None:
    # The lab's Refresh right after the Allocate is the first one.
    trace, board = flow(
        clock, server=errors(InjectedError("Refresh", 437, nth=1)), hangup_after=None,
        with_peer=False,
    )  # fmt: skip
    assert board.expired and not board.released
    assert any("437 (Allocation Mismatch)" in s for s in flow_summaries(trace))
    # RFC 5766 §7.3: the client takes the allocation as deleted and closes its control
    # connection, which deletes the allocation on the server too.
    control = next(c for c in trace.connections.values() if c.client == "cms")
    assert control.closed_by == "cms"


@pytest.mark.parametrize("clock", CLOCKS)
def test_a_create_permission_403_leaves_the_peer_unpermitted(clock: str) -> None:
    trace, board = flow(
        clock,
        server={"permission_policy": "rfc", **errors(InjectedError("CreatePermission", 403))},
        client={"create_permission": True},
        hangup_after=None,
        stop=lambda _t, b: b.peer_closed is not None,
    )
    lines = flow_summaries(trace)
    assert any("CreatePermission Error Response error-code: 403" in s for s in lines)
    assert board.peer_reset and not any(s.startswith("ConnectionAttempt") for s in lines)


@pytest.mark.parametrize("clock", CLOCKS)
def test_a_connection_bind_447_leaves_no_pipe(clock: str) -> None:
    trace, board = flow(
        clock, server=errors(InjectedError("ConnectionBind", 447)), hangup_after=2.0
    )
    lines = flow_summaries(trace)
    assert any("ConnectionBind Error Response error-code: 447" in s for s in lines)
    assert "ConnectionBind Success Response" not in lines
    assert board.cms_pipe_bytes == b"" and board.checks_answered == 0
    data = [c for c in trace.connections.values() if c.client == "cms"][1]
    assert data.closed is not None
