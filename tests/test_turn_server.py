"""The Expressway-E TURN server machine (labsim.proto.turn_server), driven event by event.

No network: a small harness feeds events with a clock the test controls, collects the effects and
decodes what the server sends with labsim.wire.stun, as CMS would.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from labsim.proto.events import (
    Accepted,
    Address,
    Close,
    Closed,
    Connect,
    Connected,
    ConnectFailed,
    Effect,
    Event,
    Listen,
    ListenFailed,
    Listening,
    Log,
    Received,
    Send,
    Started,
    StartTimer,
    StopTimer,
    TimerFired,
    Unlisten,
)
from labsim.proto.turn_server import (
    LAYOUTS,
    BindTimer,
    ExpiryTimer,
    IdleTimer,
    Layout,
    TurnServer,
    TurnServerSettings,
)
from labsim.wire.stun import (
    Attribute,
    Class,
    ConnectionId,
    DontFragment,
    ErrorCode,
    EvenPort,
    Fingerprint,
    Lifetime,
    Message,
    MessageIntegrity,
    Method,
    Nonce,
    Realm,
    RequestedTransport,
    ReservationToken,
    Software,
    UnknownAttribute,
    UnknownAttributes,
    Username,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
    decode,
    long_term_key,
)

EXPE = "10.48.54.229"
TURN = Address(EXPE, 3478)
RELAY = Address(EXPE, 24000)
CMS = Address("10.48.54.230", 44342)
CMS_DATA = Address("10.48.54.230", 44343)
PEER = Address("192.168.1.252", 53577)
KEY = long_term_key("turn", "TANDBERG", "secret")


class Lab:
    """Feeds events to one TurnServer at a controlled ``now``; plays CMS's side of STUN."""

    def __init__(self, *, auto_listen: bool = True, **settings: Any) -> None:
        self.server = TurnServer("expressway_e", EXPE, TurnServerSettings(**settings))
        self.now = 0.0
        self.auto_listen = auto_listen
        self.nonce = ""
        assert self.feed(Started()) == [Listen(TURN), Log(self.feed_log_started())]
        self.feed(Listening(TURN))

    @staticmethod
    def feed_log_started() -> str:
        return f"TURN server on {TURN}, realm TANDBERG"

    def feed(self, event: Event) -> list[Effect]:
        effects = list(self.server.handle(event, self.now).effects)
        if self.auto_listen:
            # Play the runtime: every relay Listen succeeds at once.
            for effect in list(effects):
                if isinstance(effect, Listen) and effect.address != TURN:
                    effects += self.feed(Listening(effect.address))
        return effects

    def accept(self, conn: str, remote: Address = CMS, local: Address = TURN) -> list[Effect]:
        return self.feed(Accepted(conn, local, remote))

    def send(self, conn: str, data: bytes) -> list[Effect]:
        return self.feed(Received(conn, data))

    def request(
        self, conn: str, msg: Message, *, user: str = "turn", password: str = "secret"
    ) -> list[Effect]:
        """Send ``msg`` authenticated: USERNAME, REALM, NONCE first, MI and FINGERPRINT last."""
        return self.send(conn, authed(msg, self.nonce, user, password))

    def challenge(self, conn: str, transport: int = 6) -> Message:
        """The unauthenticated Allocate and its 401; remembers the nonce."""
        first = Message.request(
            Method.ALLOCATE, [RequestedTransport(transport), Lifetime(600), Fingerprint()]
        )
        reply = only_stun(self.send(conn, first.encode()), conn)
        nonce = reply.get(Nonce)
        assert nonce is not None
        self.nonce = nonce.value
        return reply

    def allocate(self, conn: str = "in:ctl", remote: Address = CMS, transport: int = 6) -> Message:
        """Connect, get challenged, allocate: the Allocate Success."""
        self.accept(conn, remote)
        self.challenge(conn, transport)
        reply = only_stun(self.request(conn, allocate_request(transport)), conn)
        assert reply.cls is Class.SUCCESS, reply.summary()
        return reply

    def peer_connects(self, conn: str = "in:peer", remote: Address = PEER) -> list[Effect]:
        return self.accept(conn, remote, RELAY)

    def bind(
        self,
        conn: str,
        cid: int,
        *,
        extra: bytes = b"",
        user: str = "turn",
        password: str = "secret",
    ) -> list[Effect]:
        """A new connection to the TURN port whose first message is ConnectionBind."""
        self.accept(conn, CMS_DATA)
        bind = Message.request(Method.CONNECTION_BIND, [ConnectionId(cid)])
        return self.send(conn, authed(bind, self.nonce, user, password) + extra)


def authed(
    msg: Message, nonce: str, user: str = "turn", password: str = "secret", realm: str = "TANDBERG"
) -> bytes:
    head = [a for a in msg.attributes if type(a) is ConnectionId]
    rest = [a for a in msg.attributes if type(a) is not ConnectionId]
    msg.attributes = [
        *head,
        Username(user),
        Realm(realm),
        Nonce(nonce),
        *rest,
        MessageIntegrity(),
        Fingerprint(),
    ]
    return msg.encode(long_term_key(user, realm, password))


def allocate_request(transport: int = 6, *extra: Attribute) -> Message:
    return Message.request(Method.ALLOCATE, [RequestedTransport(transport), *extra])


def sends(effects: Iterable[Effect], conn: str | None = None) -> list[Send]:
    return [e for e in effects if isinstance(e, Send) and (conn is None or e.conn == conn)]


def stun(effects: Iterable[Effect], conn: str) -> list[Message]:
    out = []
    for send in sends(effects, conn):
        assert send.protocol == "stun"
        out.append(decode(send.data))
    return out


def only_stun(effects: Iterable[Effect], conn: str) -> Message:
    messages = stun(effects, conn)
    assert len(messages) == 1, messages
    return messages[0]


def error_code(msg: Message) -> int:
    assert msg.cls is Class.ERROR, msg.summary()
    code = msg.get(ErrorCode)
    assert code is not None
    return code.code


def logs(effects: Iterable[Effect]) -> str:
    return "\n".join(e.text for e in effects if isinstance(e, Log))


def timer_of(effects: Iterable[Effect], kind: type[ExpiryTimer | BindTimer]) -> StartTimer:
    timers = [e for e in effects if isinstance(e, StartTimer) and isinstance(e.timer, kind)]
    assert len(timers) == 1, effects
    return timers[0]


def attempt_cid(effects: Iterable[Effect]) -> int:
    attempt = only_stun(effects, "in:ctl")
    assert attempt.method == Method.CONNECTION_ATTEMPT and attempt.cls is Class.INDICATION
    cid = attempt.get(ConnectionId)
    assert cid is not None
    return cid.value


def names(msg: Message) -> list[str]:
    return [a.name for a in msg.attributes]


# ---------------------------------------------------------------------------------------------
# The passive flow of the lab call (PROTOCOL.md §3.3, §10)
# ---------------------------------------------------------------------------------------------


def test_the_whole_passive_flow() -> None:
    lab = Lab()
    # A connection without an allocation is watched by the idle timer (coturn: 60 s).
    assert lab.accept("in:ctl") == [StartTimer(IdleTimer("in:ctl"), 60.0)]

    # Allocate -> 401 with realm and nonce.
    challenge = lab.challenge("in:ctl")
    assert error_code(challenge) == 401
    assert challenge.get(Realm) == Realm("TANDBERG")
    assert len(lab.nonce) == 52

    # Authenticated Allocate: the relay listener first, the answer once it listens.
    lab.auto_listen = False
    effects = lab.request("in:ctl", allocate_request())
    assert effects == [StopTimer(IdleTimer("in:ctl")), Listen(RELAY)]
    effects = lab.feed(Listening(RELAY))
    success = only_stun(effects, "in:ctl")
    assert success.method == Method.ALLOCATE and success.cls is Class.SUCCESS
    assert success.get(XorRelayedAddress) == XorRelayedAddress(EXPE, 24000)
    assert success.get(XorMappedAddress) == XorMappedAddress(CMS.host, CMS.port)
    assert success.get(Lifetime) == Lifetime(600)
    assert success.verify_integrity(KEY) and success.verify_fingerprint()
    assert timer_of(effects, ExpiryTimer).delay == 600
    lab.auto_listen = True

    # Refresh, as CMS does right after the Allocate.
    refresh = only_stun(
        lab.request("in:ctl", Message.request(Method.REFRESH, [Lifetime(600)])), "in:ctl"
    )
    assert refresh.cls is Class.SUCCESS and refresh.get(Lifetime) == Lifetime(600)
    assert refresh.verify_integrity(KEY)

    # The Skype side connects to the relayed port (no permission: lab policy) -> ConnectionAttempt.
    effects = lab.peer_connects()
    cid = attempt_cid(effects)
    attempt = only_stun(effects, "in:ctl")
    assert attempt.get(XorPeerAddress) == XorPeerAddress(PEER.host, PEER.port)
    assert attempt.verify_integrity(KEY) and attempt.verify_fingerprint()
    bind_timer = timer_of(effects, BindTimer)
    assert bind_timer.delay == 30
    assert "no permission for 192.168.1.252" in logs(effects)

    # The peer talks before the bind: buffered, nothing sent yet.
    assert lab.send("in:peer", b"\x00\x6c early check") == []
    assert lab.send("in:peer", b" and more") == []

    # ConnectionBind on a new connection, with client bytes in the same segment.
    effects = lab.bind("in:data", cid, extra=b"\x00\x6c client check")
    out = sends(effects)
    assert [(s.conn, s.protocol) for s in out] == [
        ("in:data", "stun"),
        ("in:data", "raw"),
        ("in:peer", "raw"),
    ]
    bound = decode(out[0].data)
    assert bound.method == Method.CONNECTION_BIND and bound.cls is Class.SUCCESS
    assert bound.get(ConnectionId) == ConnectionId(cid)
    assert bound.verify_integrity(KEY)
    assert out[1].data == b"\x00\x6c early check and more"
    assert out[2].data == b"\x00\x6c client check"
    assert any(isinstance(e, StopTimer) and isinstance(e.timer, BindTimer) for e in effects)

    # A raw pipe both ways, bytes untouched (even bytes that look like STUN).
    stunish = Message.request(Method.BINDING).encode()
    assert lab.send("in:data", stunish) == [Send("in:peer", stunish, protocol="raw")]
    assert lab.send("in:peer", b"pong") == [Send("in:data", b"pong", protocol="raw")]
    # The bind timer, had it not been stopped, would do nothing now.
    assert lab.feed(TimerFired(bind_timer.timer)) == []

    # Closing one side closes the other.
    assert Close("in:data") in lab.feed(Closed("in:peer"))
    assert lab.send("in:data", b"late") == []


def test_connection_bind_split_across_segments_and_followed_by_raw_bytes() -> None:
    lab = Lab()
    lab.allocate()
    cid = attempt_cid(lab.peer_connects())
    lab.accept("in:data", CMS_DATA)
    bind = authed(Message.request(Method.CONNECTION_BIND, [ConnectionId(cid)]), lab.nonce)
    assert lab.send("in:data", bind[:7]) == []  # a stalled half message
    effects = lab.send("in:data", bind[7:] + b"raw")
    assert only_stun(effects, "in:data").cls is Class.SUCCESS
    assert sends(effects, "in:peer") == [Send("in:peer", b"raw", protocol="raw")]


def test_peer_that_closes_before_the_bind_still_delivers_its_bytes() -> None:
    lab = Lab()
    lab.allocate()
    cid = attempt_cid(lab.peer_connects())
    lab.send("in:peer", b"hello")
    lab.feed(Closed("in:peer"))
    effects = lab.bind("in:data", cid)
    assert [s.data for s in sends(effects, "in:data")][1:] == [b"hello"]
    assert effects[-1] == Close("in:data")


# ---------------------------------------------------------------------------------------------
# Lab layouts: sizes and Wireshark phrases (PROTOCOL.md §10)
# ---------------------------------------------------------------------------------------------


def test_lab_layout_sizes_and_phrases() -> None:
    lab = Lab()
    lab.accept("in:ctl")
    first = Message.request(Method.ALLOCATE, [RequestedTransport(6), Lifetime(600), Fingerprint()])
    [r401] = sends(lab.send("in:ctl", first.encode()))
    lab.nonce = decode(r401.data).get(Nonce).value  # type: ignore[union-attr]
    [ok] = sends(lab.request("in:ctl", allocate_request()))
    [refresh] = sends(lab.request("in:ctl", Message.request(Method.REFRESH, [Lifetime(600)])))
    [attempt] = sends(lab.peer_connects())
    cid = decode(attempt.data).get(ConnectionId).value  # type: ignore[union-attr]
    [bound] = sends(lab.bind("in:data", cid))

    assert [len(s.data) for s in (r401, ok, refresh, attempt, bound)] == [176, 112, 88, 100, 88]
    m401 = decode(r401.data)
    assert names(m401) == [
        "ERROR-CODE",
        "NONCE",
        "REALM",
        "LIFETIME",
        "SOFTWARE",
        "MESSAGE-INTEGRITY",
        "FINGERPRINT",
    ]
    assert m401.get(Software) == Software("TANDBERG/4120 (X8.9 PC1)")
    # The lab's older Wireshark printed no error-code text; a current one adds it in front.
    assert m401.summary().startswith("Allocate Error Response")
    assert m401.summary().endswith("with nonce realm: TANDBERG lifetime: 600")
    assert decode(ok.data).summary() == (
        "Allocate Success Response lifetime: 600 XOR-MAPPED-ADDRESS: 10.48.54.230:44342"
        " XOR-RELAYED-ADDRESS: 10.48.54.229:24000"
    )
    assert decode(refresh.data).summary() == "Refresh Success Response lifetime: 600"
    assert decode(attempt.data).summary() == (
        "ConnectionAttempt Indication XOR-PEER-ADDRESS: 192.168.1.252:53577"
    )
    assert decode(bound.data).summary() == "ConnectionBind Success Response"
    assert names(decode(attempt.data)) == [
        "XOR-PEER-ADDRESS",
        "CONNECTION-ID",
        "SOFTWARE",
        "MESSAGE-INTEGRITY",
        "FINGERPRINT",
    ]
    # The lab 401's MI is keyed with a secret of the server's: no user's key verifies it.
    assert not m401.verify_integrity(KEY) and m401.verify_fingerprint()


def test_coturn_layout_orders() -> None:
    lab = Lab(layout="coturn", software="Coturn-4.6.1 'Gorst'")
    lab.accept("in:ctl")
    challenge = lab.challenge("in:ctl")
    assert names(challenge) == ["ERROR-CODE", "NONCE", "REALM", "SOFTWARE", "FINGERPRINT"]
    ok = only_stun(lab.request("in:ctl", allocate_request()), "in:ctl")
    assert names(ok)[:3] == ["XOR-RELAYED-ADDRESS", "XOR-MAPPED-ADDRESS", "LIFETIME"]
    attempt = only_stun(lab.peer_connects(), "in:ctl")
    assert names(attempt) == ["CONNECTION-ID", "XOR-PEER-ADDRESS", "SOFTWARE", "FINGERPRINT"]


def test_custom_layout_and_no_software(monkeypatch: pytest.MonkeyPatch) -> None:
    layout = Layout(**{**vars(LAYOUTS["expressway"]), "refresh": ("LIFETIME", "FINGERPRINT")})
    # Settings name a layout (what a scenario can write); a new one is a new preset.
    monkeypatch.setitem(LAYOUTS, "custom", layout)
    lab = Lab(layout="custom", software="")
    lab.allocate()
    refresh = only_stun(lab.request("in:ctl", Message.request(Method.REFRESH)), "in:ctl")
    assert names(refresh) == ["LIFETIME", "FINGERPRINT"]
    with pytest.raises(ValueError, match="unknown attributes"):
        Layout(**{**vars(LAYOUTS["expressway"]), "refresh": ("BOGUS",)})


def test_runs_are_repeatable() -> None:
    def run() -> list[bytes]:
        lab = Lab(secrets_from_seed=True)
        lab.allocate()
        return [s.data for s in sends(lab.peer_connects())] + [lab.nonce.encode()]

    assert run() == run()
    a, b = Lab(seed=1), Lab(seed=2)
    a.accept("in:ctl")
    b.accept("in:ctl")
    assert a.challenge("in:ctl").get(Nonce) != b.challenge("in:ctl").get(Nonce)


# ---------------------------------------------------------------------------------------------
# Authentication (RFC 5389 §10.2.2, RFC 5766 §4)
# ---------------------------------------------------------------------------------------------


def test_wrong_password_gets_401_with_the_same_nonce() -> None:
    lab = Lab()
    lab.accept("in:ctl")
    lab.challenge("in:ctl")
    reply = only_stun(lab.request("in:ctl", allocate_request(), password="wrong"), "in:ctl")
    assert error_code(reply) == 401
    assert reply.get(Nonce) == Nonce(lab.nonce) and reply.get(Realm) == Realm("TANDBERG")
    assert lab.server.allocations() == []


def test_keys_follow_password_changes_and_users() -> None:
    # Long-term keys (RFC 5389 §15.4) and the HMAC states derived from them are cached per
    # user, realm and password: a changed password or another user must never meet a stale key.
    users = {"turn": "secret", "other": "pass2"}
    lab = Lab(users=users)
    lab.allocate()
    users["turn"] = "changed"
    refresh = Message.request(Method.REFRESH, [Lifetime(600)])
    reply = only_stun(lab.request("in:ctl", refresh), "in:ctl")
    assert error_code(reply) == 401
    reply = only_stun(lab.request("in:ctl", refresh, password="changed"), "in:ctl")
    assert reply.cls is Class.SUCCESS and reply.verify_integrity(
        long_term_key("turn", "TANDBERG", "changed")
    )
    assert not reply.verify_integrity(KEY)
    # Another user on its own control connection: its own key signs its answers.
    lab.accept("in:ctl2", Address("10.48.54.230", 44350))
    lab.challenge("in:ctl2")
    reply = only_stun(
        lab.request("in:ctl2", allocate_request(), user="other", password="pass2"), "in:ctl2"
    )
    assert reply.cls is Class.SUCCESS
    assert reply.verify_integrity(long_term_key("other", "TANDBERG", "pass2"))
    # And the 401 challenge of the lab layout carries an MI that the named user's key does not
    # verify (it would let anyone test that user's password offline).
    bare = Message.request(Method.REFRESH, [Username("other"), Fingerprint()])
    challenge = only_stun(lab.send("in:ctl2", bare.encode()), "in:ctl2")
    assert error_code(challenge) == 401 and MessageIntegrity in challenge
    assert not challenge.verify_integrity(long_term_key("other", "TANDBERG", "pass2"))


def test_unknown_user_and_wrong_realm_get_401() -> None:
    lab = Lab()
    lab.accept("in:ctl")
    lab.challenge("in:ctl")
    assert (
        error_code(only_stun(lab.request("in:ctl", allocate_request(), user="x"), "in:ctl")) == 401
    )
    data = authed(allocate_request(), lab.nonce, realm="OTHER")
    assert error_code(only_stun(lab.send("in:ctl", data), "in:ctl")) == 401


def test_legacy_431_for_a_bad_integrity() -> None:
    lab = Lab(integrity_error_code=431)
    lab.accept("in:ctl")
    lab.challenge("in:ctl")
    reply = only_stun(lab.request("in:ctl", allocate_request(), password="wrong"), "in:ctl")
    assert error_code(reply) == 431


def test_stale_nonce_gets_438_with_a_fresh_nonce() -> None:
    lab = Lab(nonce_lifetime=3600)
    lab.allocate()
    lab.now = 3601.0
    refresh = Message.request(Method.REFRESH, [Lifetime(600)])
    reply = only_stun(lab.request("in:ctl", refresh), "in:ctl")
    assert error_code(reply) == 438
    fresh = reply.get(Nonce)
    assert fresh is not None and fresh.value != lab.nonce and len(fresh.value) == 52
    assert reply.get(Realm) == Realm("TANDBERG")
    lab.nonce = fresh.value
    retry = Message.request(Method.REFRESH, [Lifetime(600)])
    assert only_stun(lab.request("in:ctl", retry), "in:ctl").cls is Class.SUCCESS


def test_an_invented_nonce_gets_438() -> None:
    lab = Lab()
    lab.accept("in:ctl")
    lab.nonce = "x" * 52
    assert error_code(only_stun(lab.request("in:ctl", allocate_request()), "in:ctl")) == 438


def test_another_user_on_the_allocation_gets_441() -> None:
    lab = Lab(users={"turn": "secret", "other": "pw2"})
    lab.allocate()
    for msg in (
        Message.request(Method.REFRESH),
        Message.request(Method.CREATE_PERMISSION, [XorPeerAddress(PEER.host, 0)]),
        allocate_request(),
    ):
        reply = only_stun(lab.request("in:ctl", msg, user="other", password="pw2"), "in:ctl")
        assert error_code(reply) == 441
        # Authenticated errors carry MI with the requester's key, and FINGERPRINT.
        assert reply.verify_integrity(long_term_key("other", "TANDBERG", "pw2"))
        assert reply.verify_fingerprint()


def test_integrity_without_username_gets_400() -> None:
    lab = Lab()
    lab.accept("in:ctl")
    msg = allocate_request(6, MessageIntegrity())
    assert error_code(only_stun(lab.send("in:ctl", msg.encode(KEY)), "in:ctl")) == 400


# ---------------------------------------------------------------------------------------------
# Allocate, Refresh, CreatePermission errors (RFC 5766, RFC 6062 §5.1)
# ---------------------------------------------------------------------------------------------


def test_second_allocate_gets_437_and_a_retransmission_the_same_answer() -> None:
    lab = Lab()
    lab.accept("in:ctl")
    lab.challenge("in:ctl")
    request = allocate_request()
    data = authed(request, lab.nonce)
    [first] = sends(lab.send("in:ctl", data))
    [again] = sends(lab.send("in:ctl", data))
    assert again.data == first.data
    reply = only_stun(lab.request("in:ctl", allocate_request()), "in:ctl")
    assert error_code(reply) == 437 and reply.verify_integrity(KEY)


@pytest.mark.parametrize(
    "msg",
    [
        Message.request(Method.REFRESH, [Lifetime(600)]),
        Message.request(Method.CREATE_PERMISSION, [XorPeerAddress(PEER.host, 0)]),
        Message.request(Method.CONNECT, [XorPeerAddress(PEER.host, PEER.port)]),
    ],
    ids=lambda m: m.method_name,
)
def test_requests_without_an_allocation_get_437(msg: Message) -> None:
    lab = Lab()
    lab.accept("in:ctl")
    lab.challenge("in:ctl")
    assert error_code(only_stun(lab.request("in:ctl", msg), "in:ctl")) == 437


@pytest.mark.parametrize(
    "msg",
    [
        Message.request(Method.ALLOCATE, [Lifetime(600)]),
        allocate_request(6, EvenPort()),
        allocate_request(6, ReservationToken(bytes(8))),
        allocate_request(6, DontFragment()),
        Message.request(Method.SEND),
    ],
    ids=["no-transport", "even-port", "reservation-token", "dont-fragment", "unknown-method"],
)
def test_bad_allocates_get_400(msg: Message) -> None:
    lab = Lab()
    lab.accept("in:ctl")
    lab.challenge("in:ctl")
    assert error_code(only_stun(lab.request("in:ctl", msg), "in:ctl")) == 400


def test_malformed_request_gets_400() -> None:
    lab = Lab()
    lab.accept("in:ctl")
    # REQUESTED-TRANSPORT with a 1-byte value: the header is fine, the attribute is not.
    bad = Message.request(Method.ALLOCATE, [UnknownAttribute(0x0019, b"\x06")])
    reply = only_stun(lab.send("in:ctl", bad.encode()), "in:ctl")
    assert error_code(reply) == 400 and reply.transaction_id == bad.transaction_id
    assert "malformed" in logs(lab.send("in:ctl", bad.encode()))


def test_unknown_comprehension_required_attribute_gets_420() -> None:
    lab = Lab()
    lab.accept("in:ctl")
    lab.challenge("in:ctl")
    msg = allocate_request(6, UnknownAttribute(0x7777, b"abcd"), UnknownAttribute(0xC001, b""))
    reply = only_stun(lab.request("in:ctl", msg), "in:ctl")
    assert error_code(reply) == 420
    assert reply.get(UnknownAttributes) == UnknownAttributes((0x7777,))
    assert reply.verify_integrity(KEY) and reply.verify_fingerprint()


def test_tcp_relay_off_gets_442() -> None:
    lab = Lab(tcp_relay=False)
    lab.accept("in:ctl")
    lab.challenge("in:ctl")
    reply = only_stun(lab.request("in:ctl", allocate_request(6)), "in:ctl")
    assert error_code(reply) == 442
    assert error_code(only_stun(lab.request("in:ctl", allocate_request(99)), "in:ctl")) == 442
    # UDP still works (bookkeeping only).
    assert only_stun(lab.request("in:ctl", allocate_request(17)), "in:ctl").cls is Class.SUCCESS


def test_quota_gets_486() -> None:
    lab = Lab(user_quota=1)
    lab.allocate("in:a")
    lab.accept("in:b", Address(CMS.host, 50000))
    reply = only_stun(lab.request("in:b", allocate_request()), "in:b")
    assert error_code(reply) == 486


def test_no_quota_by_default() -> None:
    lab = Lab()  # user_quota 0: none (the lab's Expressway-E)
    for n in range(3):
        lab.allocate(f"in:{n}", Address(CMS.host, 50000 + n))
    assert len(lab.server.allocations()) == 3


def test_capacity_gets_508_and_a_released_allocation_frees_it() -> None:
    lab = Lab(max_allocations=1)
    lab.allocate("in:a")
    lab.accept("in:b", Address(CMS.host, 50000))
    assert error_code(only_stun(lab.request("in:b", allocate_request()), "in:b")) == 508
    lab.feed(Closed("in:a"))
    assert only_stun(lab.request("in:b", allocate_request()), "in:b").cls is Class.SUCCESS


def test_no_free_port_gets_508_and_a_freed_port_is_reused() -> None:
    lab = Lab(relay_ports=(24000, 24000))
    lab.allocate("in:a")
    lab.accept("in:b", Address(CMS.host, 50000))
    assert error_code(only_stun(lab.request("in:b", allocate_request()), "in:b")) == 508
    lab.feed(Closed("in:a"))
    ok = only_stun(lab.request("in:b", allocate_request()), "in:b")
    assert ok.get(XorRelayedAddress) == XorRelayedAddress(EXPE, 24000)


def test_relay_ports_go_lowest_first_and_listen_failure_moves_on() -> None:
    lab = Lab(auto_listen=False)
    lab.accept("in:a")
    lab.challenge("in:a")
    assert lab.request("in:a", allocate_request()) == [StopTimer(IdleTimer("in:a")), Listen(RELAY)]
    effects = lab.feed(ListenFailed(RELAY, "address in use"))
    assert effects[-1] == Listen(Address(EXPE, 24001))
    ok = only_stun(lab.feed(Listening(Address(EXPE, 24001))), "in:a")
    assert ok.get(XorRelayedAddress) == XorRelayedAddress(EXPE, 24001)


def test_listen_failures_end_in_508() -> None:
    lab = Lab(auto_listen=False, relay_ports=(24000, 24001))
    lab.accept("in:a")
    lab.challenge("in:a")
    lab.request("in:a", allocate_request())
    lab.feed(ListenFailed(RELAY, "in use"))
    reply = only_stun(lab.feed(ListenFailed(Address(EXPE, 24001), "in use")), "in:a")
    assert error_code(reply) == 508
    assert lab.server.allocations() == []


def test_lifetimes_are_clamped() -> None:
    lab = Lab()
    lab.accept("in:ctl")
    lab.challenge("in:ctl")
    ok = only_stun(lab.request("in:ctl", allocate_request(6, Lifetime(60))), "in:ctl")
    assert ok.get(Lifetime) == Lifetime(600)  # below the default: the default
    for asked, got in ((7200, 3600), (1200, 1200), (None, 600)):
        attrs = [Lifetime(asked)] if asked is not None else []
        reply = only_stun(lab.request("in:ctl", Message.request(Method.REFRESH, attrs)), "in:ctl")
        assert reply.get(Lifetime) == Lifetime(got)


def test_udp_allocation_is_bookkeeping_only() -> None:
    lab = Lab()
    lab.accept("in:ctl")
    lab.challenge("in:ctl", transport=17)
    effects = lab.request("in:ctl", allocate_request(17))
    assert not any(isinstance(e, Listen) for e in effects)
    assert "bookkeeping only" in logs(effects)
    assert only_stun(effects, "in:ctl").cls is Class.SUCCESS
    assert lab.server.allocations()[0].transport == "UDP"


def test_binding_request_and_indication() -> None:
    lab = Lab()
    lab.accept("in:ctl")
    reply = only_stun(lab.send("in:ctl", Message.request(Method.BINDING).encode()), "in:ctl")
    assert reply.get(XorMappedAddress) == XorMappedAddress(CMS.host, CMS.port)
    keepalive = Message.indication(Method.BINDING, [Fingerprint()]).encode()
    assert lab.send("in:ctl", keepalive) == []


# ---------------------------------------------------------------------------------------------
# Permissions (RFC 5766 §8-9, RFC 6062 §5.3)
# ---------------------------------------------------------------------------------------------


def test_rfc_policy_resets_a_peer_without_permission() -> None:
    lab = Lab(permission_policy="rfc")
    lab.allocate()
    effects = lab.peer_connects()
    assert sends(effects) == []
    assert Close("in:peer", reset=True) in effects
    assert "no permission for 192.168.1.252: peer connection" in logs(effects)
    assert "rfc policy" in logs(effects)


def test_rfc_policy_accepts_a_permitted_peer_until_the_permission_expires() -> None:
    lab = Lab(permission_policy="rfc")
    lab.allocate()
    create = Message.request(Method.CREATE_PERMISSION, [XorPeerAddress(PEER.host, 0)])
    reply = only_stun(lab.request("in:ctl", create), "in:ctl")
    assert reply.cls is Class.SUCCESS and reply.verify_integrity(KEY)
    attempt_cid(lab.peer_connects("in:p1"))  # accepted: ConnectionAttempt
    lab.now = 301.0
    assert Close("in:p2", reset=True) in lab.peer_connects("in:p2")
    # Refreshing the permission lets the peer in again.
    create = Message.request(Method.CREATE_PERMISSION, [XorPeerAddress(PEER.host, 0)])
    lab.request("in:ctl", create)
    attempt_cid(lab.peer_connects("in:p3"))
    assert lab.server.allocations()[0].permissions == (PEER.host,)


def test_create_permission_errors() -> None:
    lab = Lab(forbidden_peers=("192.0.2.9",))
    lab.allocate()
    empty = Message.request(Method.CREATE_PERMISSION)
    assert error_code(only_stun(lab.request("in:ctl", empty), "in:ctl")) == 400
    bad = Message.request(Method.CREATE_PERMISSION, [XorPeerAddress("192.0.2.9", 0)])
    assert error_code(only_stun(lab.request("in:ctl", bad), "in:ctl")) == 403
    v6 = Message.request(Method.CREATE_PERMISSION, [XorPeerAddress("2001:db8::1", 0)])
    assert error_code(only_stun(lab.request("in:ctl", v6), "in:ctl")) == 443


# ---------------------------------------------------------------------------------------------
# ConnectionBind failures and the 30 s timer (RFC 6062 §5.3, §5.4)
# ---------------------------------------------------------------------------------------------


def test_bind_timeout_closes_the_peer() -> None:
    lab = Lab()
    lab.allocate()
    timer = timer_of(lab.peer_connects(), BindTimer)
    lab.now += 30.0
    effects = lab.feed(TimerFired(timer.timer))
    assert Close("in:peer") in effects
    assert "no ConnectionBind" in logs(effects)
    assert lab.feed(TimerFired(timer.timer)) == []  # fired once


def test_unknown_connection_id_resets_the_data_connection() -> None:
    lab = Lab()
    lab.allocate()
    cid = attempt_cid(lab.peer_connects())
    effects = lab.bind("in:data", cid ^ 1)
    assert sends(effects) == [] and Close("in:data", reset=True) in effects
    # The real bind still works afterwards.
    assert only_stun(lab.bind("in:data2", cid), "in:data2").cls is Class.SUCCESS


def test_bad_credentials_on_connection_bind_reset() -> None:
    lab = Lab(users={"turn": "secret", "other": "pw2"})
    lab.allocate()
    cid = attempt_cid(lab.peer_connects())
    for n, (user, password) in enumerate((("turn", "wrong"), ("other", "pw2"))):
        effects = lab.bind(f"in:bad{n}", cid, user=user, password=password)
        assert sends(effects) == [] and Close(f"in:bad{n}", reset=True) in effects
    # Without MESSAGE-INTEGRITY at all.
    lab.accept("in:bare", CMS_DATA)
    bare = Message.request(Method.CONNECTION_BIND, [ConnectionId(cid)]).encode()
    assert Close("in:bare", reset=True) in lab.send("in:bare", bare)


def test_bind_failures_answered_when_set() -> None:
    lab = Lab(bind_failure="answer")
    lab.allocate()
    cid = attempt_cid(lab.peer_connects())
    reply = only_stun(lab.bind("in:d1", cid ^ 1), "in:d1")
    assert error_code(reply) == 400 and reply.verify_integrity(KEY)
    lab.accept("in:d2", CMS_DATA)
    bare = Message.request(Method.CONNECTION_BIND, [ConnectionId(cid)]).encode()
    assert error_code(only_stun(lab.send("in:d2", bare), "in:d2")) == 401


def test_connection_bind_on_a_control_connection_gets_400() -> None:
    lab = Lab()
    lab.allocate()
    cid = attempt_cid(lab.peer_connects())
    bind = Message.request(Method.CONNECTION_BIND, [ConnectionId(cid)])
    assert error_code(only_stun(lab.request("in:ctl", bind), "in:ctl")) == 400


def test_early_peer_data_is_bounded() -> None:
    lab = Lab(early_data_limit=10)
    lab.allocate()
    cid = attempt_cid(lab.peer_connects())
    assert lab.send("in:peer", b"x" * 10) == []
    effects = lab.send("in:peer", b"y")
    assert Close("in:peer", reset=True) in effects and "before ConnectionBind" in logs(effects)
    assert Close("in:data", reset=True) in lab.bind("in:data", cid)


# ---------------------------------------------------------------------------------------------
# Deleting allocations (RFC 5766 §5, §7.2; RFC 6062 §5.5)
# ---------------------------------------------------------------------------------------------


def _bound_pair(lab: Lab) -> None:
    lab.allocate()
    cid = attempt_cid(lab.peer_connects())
    assert only_stun(lab.bind("in:data", cid), "in:data").cls is Class.SUCCESS


def test_refresh_with_lifetime_zero_deletes_and_closes_everything() -> None:
    lab = Lab()
    _bound_pair(lab)
    pending_timer = timer_of(lab.peer_connects("in:peer2", Address(PEER.host, 53578)), BindTimer)
    effects = lab.request("in:ctl", Message.request(Method.REFRESH, [Lifetime(0)]))
    reply = only_stun(effects, "in:ctl")
    assert reply.cls is Class.SUCCESS and reply.get(Lifetime) == Lifetime(0)
    assert Unlisten(RELAY) in effects
    assert {Close("in:peer"), Close("in:data"), Close("in:peer2")} <= set(effects)
    assert StopTimer(pending_timer.timer) in effects
    assert lab.server.allocations() == []
    assert lab.send("in:data", b"late") == [] and lab.send("in:peer", b"late") == []
    # Another Refresh now finds no allocation.
    again = Message.request(Method.REFRESH, [Lifetime(600)])
    assert error_code(only_stun(lab.request("in:ctl", again), "in:ctl")) == 437


def test_expiry_deletes_the_allocation() -> None:
    lab = Lab()
    lab.accept("in:ctl")
    lab.challenge("in:ctl")
    timer = timer_of(lab.request("in:ctl", allocate_request()), ExpiryTimer)
    assert timer.delay == 600
    lab.now = 600.0
    effects = lab.feed(TimerFired(timer.timer))
    assert Unlisten(RELAY) in effects and "expired" in logs(effects)
    assert lab.server.allocations() == []
    assert Close("in:late", reset=True) in lab.peer_connects("in:late")


def test_refresh_restarts_the_expiry_timer() -> None:
    lab = Lab()
    lab.allocate()
    lab.now = 500.0
    effects = lab.request("in:ctl", Message.request(Method.REFRESH, [Lifetime(600)]))
    assert timer_of(effects, ExpiryTimer).delay == 600
    assert lab.server.allocations()[0].expires == 1100.0


def test_closing_the_control_connection_deletes_the_allocation() -> None:
    lab = Lab()
    _bound_pair(lab)
    effects = lab.feed(Closed("in:ctl"))
    assert Unlisten(RELAY) in effects
    assert Close("in:peer") in effects and Close("in:data") in effects
    assert any(isinstance(e, StopTimer) and isinstance(e.timer, ExpiryTimer) for e in effects)
    assert lab.server.allocations() == []


def test_closing_the_data_connection_closes_the_peer() -> None:
    lab = Lab()
    _bound_pair(lab)
    assert Close("in:peer", reset=True) in lab.feed(Closed("in:data", reset=True))
    assert lab.server.allocations()[0].connections == 0


# ---------------------------------------------------------------------------------------------
# Connect (RFC 6062 §5.2)
# ---------------------------------------------------------------------------------------------


def _connect(lab: Lab, peer: Address = PEER) -> list[Effect]:
    msg = Message.request(Method.CONNECT, [XorPeerAddress(peer.host, peer.port)])
    return lab.request("in:ctl", msg)


def test_connect_success_then_bind() -> None:
    lab = Lab()
    lab.allocate()
    [connect] = [e for e in _connect(lab) if isinstance(e, Connect)]
    assert connect.remote == PEER and not connect.conn.startswith("in:")
    assert connect.timeout >= 30
    effects = lab.feed(Connected(connect.conn, Address(EXPE, 40000), PEER))
    reply = only_stun(effects, "in:ctl")
    assert reply.method == Method.CONNECT and reply.cls is Class.SUCCESS
    assert reply.verify_integrity(KEY)
    cid = reply.get(ConnectionId)
    assert cid is not None
    timer_of(effects, BindTimer)
    lab.send(connect.conn, b"from peer")
    effects = lab.bind("in:data", cid.value)
    assert [s.data for s in sends(effects, "in:data")][1:] == [b"from peer"]
    assert lab.send("in:data", b"to peer") == [Send(connect.conn, b"to peer", protocol="raw")]


def test_connect_failure_gets_447() -> None:
    lab = Lab()
    lab.allocate()
    [connect] = [e for e in _connect(lab) if isinstance(e, Connect)]
    reply = only_stun(lab.feed(ConnectFailed(connect.conn, PEER, "refused")), "in:ctl")
    assert error_code(reply) == 447 and reply.verify_integrity(KEY)
    # The peer may be tried again.
    assert any(isinstance(e, Connect) for e in _connect(lab))


def test_connect_to_a_peer_in_progress_or_connected_gets_446() -> None:
    lab = Lab()
    lab.allocate()
    [connect] = [e for e in _connect(lab) if isinstance(e, Connect)]
    assert error_code(only_stun(_connect(lab), "in:ctl")) == 446
    lab.feed(Connected(connect.conn, Address(EXPE, 40000), PEER))
    assert error_code(only_stun(_connect(lab), "in:ctl")) == 446
    # A passively accepted peer counts too.
    other = Address("198.51.100.20", 5000)
    attempt_cid(lab.peer_connects("in:p", other))
    assert error_code(only_stun(_connect(lab, other), "in:ctl")) == 446


def test_connect_does_not_install_a_permission_unless_set() -> None:
    lab = Lab(permission_policy="rfc")
    lab.allocate()
    _connect(lab)
    assert lab.server.allocations()[0].permissions == ()
    lab = Lab(permission_policy="rfc", connect_installs_permission=True)
    lab.allocate()
    _connect(lab)
    assert lab.server.allocations()[0].permissions == (PEER.host,)


def test_connect_without_peer_gets_400_and_connected_after_delete_is_closed() -> None:
    lab = Lab()
    lab.allocate()
    bare = Message.request(Method.CONNECT)
    assert error_code(only_stun(lab.request("in:ctl", bare), "in:ctl")) == 400
    [connect] = [e for e in _connect(lab) if isinstance(e, Connect)]
    lab.feed(Closed("in:ctl"))
    assert lab.feed(Connected(connect.conn, Address(EXPE, 40000), PEER)) == [Close(connect.conn)]


# ---------------------------------------------------------------------------------------------
# Robustness: one bad connection hurts only itself
# ---------------------------------------------------------------------------------------------


def test_garbage_resets_only_its_connection() -> None:
    lab = Lab()
    lab.accept("in:junk", Address("203.0.113.9", 1111))
    lab.accept("in:half", Address("203.0.113.9", 2222))
    half = Message.request(Method.ALLOCATE, [RequestedTransport(6)]).encode()
    assert lab.send("in:half", half[:10]) == []  # stalls mid-message
    effects = lab.send("in:junk", b"GET / HTTP/1.1\r\n\r\n")
    assert effects[-1] == Close("in:junk", reset=True) and "garbage" in logs(effects)
    assert lab.send("in:junk", b"more") == []  # forgotten
    ok = lab.allocate("in:ctl")
    assert ok.get(XorRelayedAddress) == XorRelayedAddress(EXPE, 24000)
    # The stalled one completes later.
    assert error_code(only_stun(lab.send("in:half", half[10:]), "in:half")) == 401


def test_garbage_on_a_control_connection_deletes_its_allocation() -> None:
    lab = Lab()
    lab.allocate()
    effects = lab.send("in:ctl", b"\x00\x01\x00\x00garbage!")
    assert Close("in:ctl", reset=True) in effects and Unlisten(RELAY) in effects


def test_channel_data_is_refused() -> None:
    lab = Lab()
    lab.accept("in:ctl")
    effects = lab.send("in:ctl", b"\x40\x00\x00\x04abcd")
    assert Close("in:ctl", reset=True) in effects


def test_unknown_events_are_ignored() -> None:
    lab = Lab()
    assert lab.send("in:nobody", b"x") == []
    assert lab.feed(Closed("in:nobody")) == []
    assert lab.feed(TimerFired(ExpiryTimer(99))) == []
    assert lab.feed(ConnectFailed("turn:peer:1", PEER, "refused")) == []
    assert Close("in:x", reset=True) in lab.accept("in:x", PEER, Address(EXPE, 25000))


@pytest.mark.parametrize(
    "bad",
    [
        {"permission_policy": "loose"},
        {"bind_failure": "ignore"},
        {"layout": "nginx"},
        {"relay_ports": (3000, 4000)},
        {"relay_ports": (25000, 24000)},
        {"nonce_length": 200},
        {"integrity_error_code": 402},
    ],
)
def test_settings_are_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        TurnServerSettings(**bad)
