"""Expressway-E's TURN server as a sans-IO machine: RFC 5766 allocations with RFC 6062 TCP relays.

What it does, in the order of the lab call (PROTOCOL.md §3.3, §10):

1. Listens on the TURN port (3478). Every TCP connection to it starts *undetermined*: its first
   STUN message says what it is. A ConnectionBind makes it an RFC 6062 **data connection**
   (RFC 6062 §4.4); anything else makes it a **control connection** (Allocate, Refresh,
   CreatePermission, Connect; RFC 6062 §4.1).
2. Authenticates requests with long-term credentials (RFC 5389 §10.2): 401 with REALM and NONCE,
   438 for a stale nonce, 401 for a wrong user or password, 441 for a request on an allocation by
   another user (RFC 5766 §4).
3. Allocate with REQUESTED-TRANSPORT TCP: picks the lowest free relay port of the range, asks the
   runtime to ``Listen`` on it, and answers Allocate Success once the listener is up (so a port
   the runtime cannot bind is never advertised).
4. A peer connecting to the relayed port gets a ConnectionAttempt indication sent to the client
   (RFC 6062 §5.3); the client's ConnectionBind on a new connection to 3478 turns the pair into a
   raw pipe (RFC 6062 §5.4). Peer bytes that arrive before the bind are buffered and delivered
   after the ConnectionBind success, none lost.
5. Connect (RFC 6062 §5.2) opens a connection to a peer and hands it to the client the same way.

Message layouts (attribute sets and order) are a setting: the ``"expressway"`` preset reproduces
the lab rows of PROTOCOL.md §10 byte for byte in size; ``"coturn"`` follows what coturn 4.6.1 was
seen to send (PROTOCOL.md §11).

Like every machine below ``labsim/net`` it does no IO and reads no clock: time comes in as
``now`` and randomness (nonces, CONNECTION-IDs, indication transaction IDs) from a
:class:`random.Random` seeded from the settings, so a run is repeatable.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import ipaddress
import random
import secrets
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Annotated, Literal, Never, get_args

import annotated_types as at

from labsim.proto.events import (
    Accepted,
    Address,
    Close,
    Closed,
    Connect,
    Connected,
    ConnectFailed,
    ConnId,
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
from labsim.proto.machine import Step
from labsim.proto.router import Solo
from labsim.proto.settings import (
    MAX_SECONDS,
    SETTINGS_CONFIG,
    Bytes,
    Count,
    Ordinal,
    Port,
    PositiveCount,
    PositiveSeconds,
    SettingError,
)
from labsim.proto.turn_client import ExternalTurnServer
from labsim.wire.errors import FramingError, StunError
from labsim.wire.framing import StunSplitter
from labsim.wire.stun import (
    HEADER_LENGTH,
    TRANSPORT_NAMES,
    TRANSPORT_TCP,
    TRANSPORT_UDP,
    Attribute,
    Class,
    ConnectionId,
    DontFragment,
    EvenPort,
    Fingerprint,
    Lifetime,
    Message,
    MessageIntegrity,
    Method,
    Nonce,
    Realm,
    RequestedAddressFamily,
    RequestedTransport,
    ReservationToken,
    Software,
    UnknownAttributes,
    Username,
    XorMappedAddress,
    XorPeerAddress,
    XorRelayedAddress,
    decode,
    long_term_key,
    split_type,
)

# ---------------------------------------------------------------------------------------------
# Layouts: which attributes each message carries, in which order
# ---------------------------------------------------------------------------------------------

#: Attribute names a layout may list (Wireshark's names, as in PROTOCOL.md §10).
LAYOUT_ATTRIBUTES = frozenset(
    {
        "NONCE",
        "REALM",
        "LIFETIME",
        "XOR-MAPPED-ADDRESS",
        "XOR-RELAYED-ADDRESS",
        "XOR-PEER-ADDRESS",
        "CONNECTION-ID",
        "UNKNOWN-ATTRIBUTES",
        "SOFTWARE",
        "MESSAGE-INTEGRITY",
        "FINGERPRINT",
    }
)


@dataclass(frozen=True)
class Layout:
    """The attributes of every message the server sends, in wire order, by name.

    Error responses always start with ERROR-CODE (RFC 5389 §15.6 puts no rule on the order, but
    every server seen does so); the tuples list what follows it. A name whose value does not
    apply to a message is skipped: MESSAGE-INTEGRITY when there is no key, LIFETIME in a
    challenge to a request that is neither Allocate nor Refresh, UNKNOWN-ATTRIBUTES outside 420,
    SOFTWARE when the ``software`` setting is empty.
    """

    challenge: tuple[str, ...]
    """401 (after ERROR-CODE)."""
    stale_nonce: tuple[str, ...]
    """438 (after ERROR-CODE)."""
    error: tuple[str, ...]
    """Every other error response (after ERROR-CODE)."""
    allocate: tuple[str, ...]
    refresh: tuple[str, ...]
    create_permission: tuple[str, ...]
    connect: tuple[str, ...]
    connection_bind: tuple[str, ...]
    connection_attempt: tuple[str, ...]
    binding: tuple[str, ...]

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            unknown = set(value) - LAYOUT_ATTRIBUTES
            if unknown:
                raise ValueError(f"layout {name}: unknown attributes {sorted(unknown)}")


_SW_MI_FP = ("SOFTWARE", "MESSAGE-INTEGRITY", "FINGERPRINT")

#: Layout presets. "expressway" is inferred from the lab capture's sizes and Info phrases
#: (PROTOCOL.md §10: 401 = 176 bytes, Allocate Success 112, Refresh Success 88,
#: ConnectionAttempt 100, ConnectionBind Success 88); "coturn" is what coturn 4.6.1 sent
#: (PROTOCOL.md §11). Rows neither source shows use the RFC attributes plus SOFTWARE, MI, FP.
LayoutName = Literal["expressway", "coturn"]

LAYOUTS: dict[str, Layout] = {
    "expressway": Layout(
        # The lab's 401 carries LIFETIME and even a MESSAGE-INTEGRITY (the sizes need it),
        # although RFC 5389 §10.2.2 says a 401 SHOULD NOT.
        challenge=("NONCE", "REALM", "LIFETIME", *_SW_MI_FP),
        # RFC 5389 §10.2.2: 438 carries NONCE and REALM and SHOULD NOT carry MI.
        stale_nonce=("NONCE", "REALM", "SOFTWARE", "FINGERPRINT"),
        error=("UNKNOWN-ATTRIBUTES", *_SW_MI_FP),
        allocate=("LIFETIME", "XOR-MAPPED-ADDRESS", "XOR-RELAYED-ADDRESS", *_SW_MI_FP),
        refresh=("LIFETIME", *_SW_MI_FP),
        create_permission=_SW_MI_FP,
        connect=("CONNECTION-ID", *_SW_MI_FP),
        connection_bind=("CONNECTION-ID", *_SW_MI_FP),
        connection_attempt=("XOR-PEER-ADDRESS", "CONNECTION-ID", *_SW_MI_FP),
        binding=("XOR-MAPPED-ADDRESS", "SOFTWARE", "FINGERPRINT"),
    ),
    "coturn": Layout(
        challenge=("NONCE", "REALM", "SOFTWARE", "FINGERPRINT"),
        stale_nonce=("NONCE", "REALM", "SOFTWARE", "FINGERPRINT"),
        error=("UNKNOWN-ATTRIBUTES", *_SW_MI_FP),
        allocate=("XOR-RELAYED-ADDRESS", "XOR-MAPPED-ADDRESS", "LIFETIME", *_SW_MI_FP),
        refresh=("LIFETIME", *_SW_MI_FP),
        create_permission=_SW_MI_FP,
        # coturn's Connect success: CONNECTION-ID and MI only, no SOFTWARE, no FINGERPRINT.
        connect=("CONNECTION-ID", "MESSAGE-INTEGRITY"),
        connection_bind=_SW_MI_FP,
        # coturn's ConnectionAttempt has no MESSAGE-INTEGRITY.
        connection_attempt=("CONNECTION-ID", "XOR-PEER-ADDRESS", "SOFTWARE", "FINGERPRINT"),
        binding=("XOR-MAPPED-ADDRESS", "SOFTWARE", "FINGERPRINT"),
    ),
}

PermissionPolicy = Literal["lab", "rfc"]
BindFailure = Literal["reset", "answer"]

#: The requests an injected error may answer, by their Wireshark names, and their methods.
InjectableRequest = Literal["Allocate", "Refresh", "CreatePermission", "Connect", "ConnectionBind"]
INJECTABLE_METHODS: dict[str, Method] = {
    "Allocate": Method.ALLOCATE,
    "Refresh": Method.REFRESH,
    "CreatePermission": Method.CREATE_PERMISSION,
    "Connect": Method.CONNECT,
    "ConnectionBind": Method.CONNECTION_BIND,
}
#: The codes an injected error may carry: the TURN errors of RFC 5389 §15.6, RFC 5766 §15 and
#: RFC 6062 §6.3 a server gives an authenticated request (401 and 400 have their own causes).
InjectableCode = Literal[403, 437, 438, 441, 442, 446, 447, 486, 508]

#: A stateless NONCE: hex of its issue time in milliseconds, a salt, then the HMAC.
_NONCE_TIME_DIGITS = 12
_NONCE_SALT_DIGITS = 4
NONCE_MIN_LENGTH = _NONCE_TIME_DIGITS + _NONCE_SALT_DIGITS + 16

#: The placeholders :meth:`Message.encode` fills in (RFC 5389 §15.4, §15.5); frozen, so shared.
_INTEGRITY = MessageIntegrity()
_FINGERPRINT = Fingerprint()


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InjectedError:
    """One kind of TURN request the server answers with a chosen error instead of doing it.

    It applies once the request has authenticated (a request that gets 401 or 438 for its
    credentials is not counted) and before anything else: no allocation, refresh, permission,
    connection or bind is made. The answer is the server's usual error response: ERROR-CODE with
    the RFC's reason phrase, MESSAGE-INTEGRITY with the requester's key, FINGERPRINT; 438 comes
    with a fresh NONCE and the REALM as every 438 does (RFC 5389 §10.2.2). A ConnectionBind that
    gets an error other than 438 has its connection closed after the answer (RFC 6062 §5.4).
    """

    __pydantic_config__ = SETTINGS_CONFIG

    request: InjectableRequest
    """Allocate, Refresh (the release at hang-up, LIFETIME 0, is a Refresh too),
    CreatePermission, Connect or ConnectionBind."""
    code: InjectableCode
    """403 Forbidden, 437 Allocation Mismatch, 438 Stale Nonce, 441 Wrong Credentials, 442
    Unsupported Transport Protocol, 446 Connection Already Exists, 447 Connection Timeout or
    Failure, 486 Allocation Quota Reached or 508 Insufficient Capacity."""
    nth: Ordinal | tuple[Ordinal, ...] | None = None
    """Only the n-th authenticated request of that kind (1-based, counted over the whole
    server), or those listed; null: every one."""

    def __post_init__(self) -> None:
        if self.request not in INJECTABLE_METHODS:
            raise SettingError(("request",), f"must be one of {', '.join(INJECTABLE_METHODS)}")
        if self.code not in get_args(InjectableCode):
            codes = ", ".join(map(str, get_args(InjectableCode)))
            raise SettingError(("code",), f"must be one of {codes}")
        if any(n < 1 for n in self.occurrences()):
            raise SettingError(("nth",), "occurrences count from 1")

    def occurrences(self) -> tuple[int, ...]:
        """The occurrences it answers; empty: every one."""
        if self.nth is None:
            return ()
        return (self.nth,) if isinstance(self.nth, int) else tuple(self.nth)

    def applies(self, method: int, count: int) -> bool:
        """Whether it answers the ``count``-th authenticated request of ``method``."""
        wanted = self.occurrences()
        return INJECTABLE_METHODS[self.request] == method and (not wanted or count in wanted)


@dataclass(frozen=True)
class TurnServerSettings:
    """Expressway-E's TURN server (RFC 5766 + RFC 6062 over TCP): everything that makes it the
    lab's Expressway-E or something else. The defaults are the lab.

    Behaviour faults (wrong password, no TCP relays, a strict permission policy) are ordinary
    settings here, never ``if fault:`` branches (DESIGN.md).
    """

    __pydantic_config__ = SETTINGS_CONFIG

    port: Port = 3478
    """TURN port for the control and data connections (Expressway-E: 3478, PROTOCOL.md §6.1)."""
    realm: Annotated[str, at.MinLen(1)] = "TANDBERG"
    """REALM of the long-term credentials; the lab's 401 carries TANDBERG (PROTOCOL.md §6.1)."""
    users: Mapping[str, str] = field(default_factory=lambda: {"turn": "secret"}, hash=False)
    """Username -> password of the local authentication database (Expressway's). CMS
    authenticates as one of these (actors.cms.turn.username/password)."""
    software: str = "TANDBERG/4120 (X8.9 PC1)"
    """SOFTWARE of the responses (24 characters in the lab); empty: no SOFTWARE."""
    layout: LayoutName = "expressway"
    """Attribute order of the responses: expressway reproduces the sizes of the lab's rows
    (PROTOCOL.md §10), coturn the order coturn 4.6.1 uses (§11)."""
    relay_ports: tuple[Port, Port] = (24000, 29999)
    """[low, high], inclusive: the ports relays are allocated from (Expressway-E:
    24000-29999); the lowest free one is used."""
    max_allocations: Count = 1800
    """Allocations the server holds at once; one more gets 508 Insufficient Capacity
    (Expressway-E: 1800 relays on a small or medium system, 6000 on a large one; PROTOCOL.md
    §6.1)."""
    user_quota: Count = 0
    """Allocations one username may hold at once; one more gets 486 Allocation Quota Reached
    (RFC 5766 §6.2). 0: no quota."""
    default_lifetime: Annotated[int, at.Interval(ge=1, le=int(MAX_SECONDS))] = 600
    """Lifetime in seconds of an allocation whose request asks for none, and the least one
    gets (RFC 5766 §6.2)."""
    max_lifetime: Annotated[int, at.Interval(ge=1, le=int(MAX_SECONDS))] = 3600
    """The longest lifetime in seconds granted: min(requested, this), RFC 5766 §6.2."""
    permission_lifetime: PositiveSeconds = 300.0
    """Seconds a CreatePermission lasts (RFC 5766 §8: 300, fixed)."""
    nonce_lifetime: Annotated[float, at.Interval(ge=1, le=MAX_SECONDS)] = 3600.0
    """Seconds before a NONCE turns stale and gets 438 Stale Nonce (RFC 5389 §10.2: server
    policy); at least 1 s, so stale-nonce retries cannot flood a run."""
    nonce_length: int = 52
    """NONCE characters (52 in the lab; RFC 5389 §15.8 allows fewer than 128). Nonces are
    stateless (the server keeps none): lowercase hex of the issue time in milliseconds (12
    digits), a random salt (4) and an HMAC-SHA256 of both and the client's IP address (the
    rest, at least 16), keyed with a secret of the server's (see secrets_from_seed); so at
    least 32."""
    tcp_relay: bool = True
    """false: a TCP Allocate gets 442 Unsupported Transport Protocol, as on Expressway before
    X8.9 (PROTOCOL.md §6.1)."""
    permission_policy: PermissionPolicy = "lab"
    """lab: a peer may connect to a relayed port without a permission, which RFC 6062 §5.3
    forbids: the default only because the lab capture shows no CreatePermission and its
    Expressway-E relayed anyway (PROTOCOL.md §10). rfc: without one the peer's connection is
    accepted and reset at once and no ConnectionAttempt is sent (RFC 6062 §5.3, as coturn
    does); pair it with ``cms.turn.create_permission: true``."""
    connect_installs_permission: bool = False
    """Whether Connect installs a permission for its peer. RFC 6062 §5.2 says nothing of
    permissions and coturn's Connect installs none (PROTOCOL.md §11), hence false."""
    forbidden_peers: tuple[str, ...] = ()
    """Peer addresses or networks (``192.0.2.9``, ``192.0.2.0/24``) refused by local policy:
    CreatePermission and Connect get 403 (RFC 5766 §9.2, RFC 6062 §5.2) and a peer connecting
    from one is reset."""
    allowed_peers: tuple[str, ...] = ()
    """Peer addresses or networks that alone are allowed (the rest as forbidden_peers);
    empty: any peer not forbidden. forbidden_peers wins where both match."""
    relay_to_self: bool = False
    """false: CreatePermission and Connect naming this server's own address (or its public
    one) with its TURN port or a port of its relay range get 403 (RFC 5766 §9.2, RFC 6062
    §5.2: local policy), so a client cannot make the server connect to itself or loop one
    relay into another. true: allowed, as coturn with --allow-loopback-peers allows
    (turnutils_uclient -T connects two clients' relays of one server)."""
    max_permissions: PositiveCount = 1024
    """Permissions (peer IPs) one allocation holds at once; a CreatePermission that would add
    one more gets 508 Insufficient Capacity (RFC 5766 §9.2 leaves the limit to the server,
    §15 defines 508). Refreshing a held permission always works. coturn holds 1024 per
    allocation and answers 500 past it."""
    bind_timeout: PositiveSeconds = 30.0
    """Seconds a peer connection waits for its ConnectionBind before it is closed (RFC 6062
    §5.3: 30)."""
    connect_timeout: PositiveSeconds = 30.0
    """Seconds a Connect waits for the peer (RFC 6062 §5.2: at least 30)."""
    early_data_limit: Bytes = 256 * 1024
    """Peer bytes buffered before the ConnectionBind, per peer connection; past that the peer
    is reset (RFC 6062 §5.3 buffers them; a simulator cannot shrink a TCP window)."""
    early_data_total: Bytes = 1024 * 1024
    """Peer bytes buffered before their ConnectionBinds, all peer connections of one
    allocation together; the peer whose bytes would pass it is reset."""
    max_pending_peers: PositiveCount = 32
    """Peer connections one allocation holds waiting for their ConnectionBind (RFC 6062 §5.3)
    or for a Connect to complete (§5.2); one more peer connecting to the relay is reset
    without a ConnectionAttempt, one more Connect gets 508 Insufficient Capacity (RFC 5766
    §15). RFC 6062 sets no number; the lab has one."""
    idle_timeout: PositiveSeconds = 60.0
    """Seconds a connection to the TURN port may stay without an allocation (and not be a
    bound data connection) before the server closes it: one that never sends, stalls half
    way through a STUN header, or only sends Binding requests. It runs from the accept and
    again when the connection's allocation goes; a live allocation's lifetime governs its
    control connection instead. RFC 5389 §7.2.2 lets the server close a connection it deems
    timed out; coturn closes one not allocated within 60 s (--max-allocate-timeout)."""
    max_idle_connections: PositiveCount = 1000
    """Connections to the TURN port held at once without an allocation (those idle_timeout
    watches); with one more, the one idle the longest is reset (RFC 5389 §7.2.2 does not
    oblige a server to keep connections). Evicting the oldest rather than refusing the newest
    keeps a flood of idle connections from locking real clients out."""
    bind_failure: BindFailure = "reset"
    """A ConnectionBind that fails: reset the connection without an answer (coturn,
    PROTOCOL.md §11) or answer it with the STUN error (RFC 6062 §5.4: 400, or 401/438)."""
    integrity_error_code: Literal[401, 431] = 401
    """Code for a wrong MESSAGE-INTEGRITY: 401 (RFC 5389 §10.2.2) or Expressway's legacy 431
    (PROTOCOL.md §1.6)."""
    listen_attempts: PositiveCount = 8
    """Relay ports tried for one Allocate when the runtime cannot listen, before 508."""
    errors: tuple[InjectedError, ...] = ()
    """Requests answered with a chosen error instead of being done, e.g. [{request: Allocate,
    code: 508}] or [{request: Refresh, code: 437, nth: 2}]; the first entry that applies
    answers. Empty (the lab): none."""
    seed: int = 6062
    """Seed of the random numbers (nonce salts, CONNECTION-IDs, transaction IDs): runs repeat,
    all but the server's secrets unless secrets_from_seed."""
    secrets_from_seed: bool = False
    """false: the server's two secrets (the key of the stateless nonces' HMAC and the key of
    the MESSAGE-INTEGRITY the lab's 401 carries) come from the operating system's random
    source, new for every server, so nobody can forge a nonce or learn anything from the 401;
    a run's nonces and integrity values then differ from run to run (their sizes do not).
    true: they come from ``seed`` too, so every byte of a virtual run repeats (for comparing
    captures byte for byte); anyone who knows the seed can then forge nonces."""
    external: ExternalTurnServer | None = None
    """A real TURN server in the call instead of this one (live clock only): Expressway-E
    then runs none, CMS allocates on the real server with its credentials, and of the keys
    above only port (the lab's TURN port CMS dials) still applies. null (the lab): this
    server."""

    def __post_init__(self) -> None:
        # What a scenario's types cannot say, checked here so that code constructing settings
        # is held to it too; each names its key (SettingError) for the scenario's file:line.
        low, high = self.relay_ports
        if low > high:
            raise SettingError(
                ("relay_ports", 1), f"the range ends ({high}) below its start ({low})"
            )
        if low <= self.port <= high:
            raise SettingError(
                ("relay_ports",), f"the relay range {low}-{high} holds the TURN port {self.port}",
                alternatives=[("port",)],
            )  # fmt: skip
        if not NONCE_MIN_LENGTH <= self.nonce_length <= 127:
            raise SettingError(
                ("nonce_length",),
                f"a stateless NONCE is {NONCE_MIN_LENGTH}-127 characters: time, salt and an "
                "HMAC of at least 16 (RFC 5389 §15.8 allows up to 127)",
            )
        for key in ("forbidden_peers", "allowed_peers"):
            for i, text in enumerate(getattr(self, key)):
                try:
                    ipaddress.ip_network(text, strict=False)
                except ValueError:
                    raise SettingError((key, i), f"{text!r} is no IP address or network") from None
        if self.max_lifetime < self.default_lifetime:
            raise SettingError(
                ("max_lifetime",), f"below default_lifetime ({self.default_lifetime})",
                alternatives=[("default_lifetime",)],
            )  # fmt: skip
        for key, allowed in (
            ("layout", tuple(LAYOUTS)),
            ("permission_policy", get_args(PermissionPolicy)),
            ("bind_failure", get_args(BindFailure)),
            ("integrity_error_code", (401, 431)),
        ):
            if getattr(self, key) not in allowed:
                raise SettingError((key,), f"must be one of {', '.join(map(str, allowed))}")

    @property
    def resolved_layout(self) -> Layout:
        return LAYOUTS[self.layout]


@dataclass(frozen=True)
class AllocationInfo:
    """A read-only view of one allocation (what Expressway's "TURN relay usage" page lists)."""

    relay: Address
    client: Address
    username: str
    transport: str
    expires: float
    permissions: tuple[str, ...]
    connections: int


# ---------------------------------------------------------------------------------------------
# Internal state
# ---------------------------------------------------------------------------------------------


class _Role(Enum):
    UNDETERMINED = "undetermined"  # no message yet: control or data connection?
    CONTROL = "control"
    DATA = "data"


class _PeerState(Enum):
    CONNECTING = "connecting"  # Connect issued, waiting for Connected
    PENDING = "pending"  # waiting for ConnectionBind (buffering peer bytes)
    BOUND = "bound"  # raw pipe with a client data connection


@dataclass
class _Credentials:
    username: str
    key: bytes


@dataclass(frozen=True)
class ExpiryTimer:
    """An allocation's lifetime (RFC 5766 §5)."""

    allocation: int
    """The allocation's number (its relay port may be given to another allocation later)."""


@dataclass(frozen=True)
class BindTimer:
    """RFC 6062 §5.3: a peer connection waits 30 s for its ConnectionBind."""

    connection_id: int
    """The peer connection's CONNECTION-ID."""


@dataclass(frozen=True)
class IdleTimer:
    """A connection to the TURN port without an allocation is closed after ``idle_timeout``
    (RFC 5389 §7.2.2; coturn's --max-allocate-timeout)."""

    conn: ConnId
    """The connection."""


ServerTimer = ExpiryTimer | BindTimer | IdleTimer


@dataclass
class _Allocation:
    ident: int
    control: ConnId
    client: Address
    relay: Address
    transport: int
    username: str
    key: bytes
    transaction_id: bytes
    request: Message
    lifetime: int
    expires: float = 0.0
    active: bool = False  # a TCP relay is active once the runtime listens on its port
    success: bytes | None = None  # the Allocate success, resent for a retransmission
    tried_ports: set[int] = field(default_factory=set)
    # Peer IP -> expiry, in expiry order (every permission lasts permission_lifetime and time
    # only grows, so a refreshed one moves to the end): the expired ones are at the front.
    permissions: dict[str, float] = field(default_factory=dict)
    peers: dict[int, _Peer] = field(default_factory=dict)  # CONNECTION-ID -> peer
    waiting: set[int] = field(default_factory=set)  # CONNECTION-IDs connecting or unbound
    buffered: int = 0  # peer bytes held for ConnectionBinds, all its waiting peers together

    timer: ExpiryTimer = field(init=False, repr=False)
    """Its lifetime's timer (made once: every Allocate, Refresh and deletion names it)."""

    def __post_init__(self) -> None:
        self.timer = ExpiryTimer(self.ident)


@dataclass
class _Peer:
    conn: ConnId
    cid: int
    allocation: _Allocation
    remote: Address
    state: _PeerState
    buffer: bytearray = field(default_factory=bytearray)
    data_conn: ConnId | None = None
    connect_request: Message | None = None  # the Connect this peer answers (active path)
    connect_key: bytes | None = None
    closed_early: bool = False  # the peer sent FIN before the bind; deliver, then close


@dataclass
class _Client:
    """A connection to the TURN port."""

    conn: ConnId
    remote: Address
    splitter: StunSplitter
    role: _Role = _Role.UNDETERMINED
    allocation: _Allocation | None = None
    peer: _Peer | None = None  # for a data connection


@dataclass
class _Reject:
    """An authentication failure: the error code and why (for the log)."""

    code: int
    why: str


class _RelayPorts:
    """The relay range's ports in use (port -> allocation), and the lowest free one.

    The server hands out the lowest free port (repeatable runs; the lab's first relay is
    24000). A scan from the bottom made every Allocate cost as many steps as allocations were
    held; here a cursor passes the ports taken in order once, and ports given back below it
    wait in a heap, so finding the lowest free port costs O(log n). Invariant: every free port
    below ``_fresh`` is in ``_freed`` (which may also hold ports taken again since: those are
    dropped when they reach the top).
    """

    __slots__ = ("low", "high", "_used", "_freed", "_fresh")

    def __init__(self, low: int, high: int) -> None:
        self.low = low
        self.high = high
        self._used: dict[int, _Allocation] = {}
        self._freed: list[int] = []
        self._fresh = low

    def get(self, port: int) -> _Allocation | None:
        return self._used.get(port)

    def __contains__(self, port: int) -> bool:
        return port in self._used

    def __len__(self) -> int:
        return len(self._used)

    def items(self) -> list[tuple[int, _Allocation]]:
        """(port, allocation), lowest port first."""
        return sorted(self._used.items())

    def take(self, port: int, alloc: _Allocation) -> None:
        self._used[port] = alloc

    def give_back(self, port: int) -> None:
        del self._used[port]
        if port < self._fresh:
            heapq.heappush(self._freed, port)
            if len(self._freed) > 2 * (self.high - self.low + 1):
                # Entries of ports taken again without reaching the top (the EVEN-PORT and
                # retry scans below take any port): rebuild from the free ones.
                self._freed = sorted({p for p in self._freed if p not in self._used})

    def lowest_free(self, *, even: bool = False, exclude: Collection[int] = ()) -> int | None:
        """The lowest port of the range neither in use nor in ``exclude`` (and even, if
        asked); None when there is none."""
        used = self._used
        if even or exclude:
            # Rare (an EVEN-PORT request, a relay port the runtime could not bind): a scan.
            for port in range(self.low, self.high + 1):
                if port in used or port in exclude or (even and port % 2):
                    continue
                return port
            return None
        freed = self._freed
        while freed and freed[0] in used:
            heapq.heappop(freed)
        fresh = self._fresh
        while fresh <= self.high and fresh in used:
            fresh += 1
        self._fresh = fresh
        if freed and freed[0] < fresh:
            return freed[0]
        return fresh if fresh <= self.high else None


#: HMAC's block size for SHA-256 (RFC 2104 §2: B = 64, as for SHA-1).
_SHA256_BLOCK = 64
_IPAD = bytes.maketrans(bytes(range(256)), bytes(b ^ 0x36 for b in range(256)))
_OPAD = bytes.maketrans(bytes(range(256)), bytes(b ^ 0x5C for b in range(256)))


def _hmac_states(key: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """SHA-256 states that have absorbed ``key XOR ipad`` and ``key XOR opad`` (RFC 2104 §2),
    to start each HMAC of ``key`` from copies of them."""
    if len(key) > _SHA256_BLOCK:
        key = hashlib.sha256(key).digest()
    block = key.ljust(_SHA256_BLOCK, b"\x00")
    return hashlib.sha256(block.translate(_IPAD)), hashlib.sha256(block.translate(_OPAD))


def _role(client: _Client) -> _Role:
    """The role now (a call, so that type narrowing does not outlive a state change)."""
    return client.role


_Handler = Callable[[_Client, Message, _Credentials, float], list[Effect]]
#: A request on the client's existing allocation, handed that allocation once it is checked.
_AllocationHandler = Callable[[_Client, _Allocation, Message, _Credentials, float], list[Effect]]


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


class TurnServer:
    """Expressway-E's TURN server (RFC 5766 + RFC 6062), a protocol machine
    (:mod:`labsim.proto.machine`) with no notices: it answers its clients itself.

    ``name`` and ``host`` are the actor's; it listens on ``host:settings.port`` and relays on
    ``host:<relay port>``. ``public_host``: the address a static NAT in front of the host
    maps to it; XOR-RELAYED-ADDRESS then names it instead of ``host`` (peers reach the relay
    through the NAT). :meth:`actor` runs it alone (a test's or a benchmark's TURN server).
    """

    def __init__(
        self, name: str, host: str, settings: TurnServerSettings | None = None,
        prefix: str = "turn", public_host: str | None = None,
    ) -> None:  # fmt: skip
        self.name = name
        self.host = host
        self.public_host = public_host
        self.settings = settings or TurnServerSettings()
        #: Prefix of the connections this machine opens (RFC 6062 Connect to a peer).
        self.prefix = prefix
        self._layout = self.settings.resolved_layout
        self._rng = random.Random(self.settings.seed)
        self._address = Address(host, self.settings.port)
        self._family = ipaddress.ip_address(host).version
        self._clients: dict[ConnId, _Client] = {}
        self._peers: dict[ConnId, _Peer] = {}
        self._cids: dict[int, _Peer] = {}
        self._ports = _RelayPorts(*self.settings.relay_ports)
        self._allocations: dict[int, _Allocation] = {}
        #: Username -> allocations it holds (the quota check; a count over every allocation
        #: made each Allocate cost as much as the allocations held).
        self._held: dict[str, int] = {}
        # Secrets drawn once per server: the key of the stateless nonces' HMAC, and the key of
        # the MESSAGE-INTEGRITY the lab's 401 carries (never a user's: with one, a single
        # unauthenticated Allocate let anyone test that user's passwords offline).
        draw = self._rng.randbytes if self.settings.secrets_from_seed else secrets.token_bytes
        self._nonce_secret = draw(32)
        self._nonce_hmac = _hmac_states(self._nonce_secret)
        self._challenge_secret = draw(32)
        self._forbidden = tuple(
            ipaddress.ip_network(p, strict=False) for p in self.settings.forbidden_peers
        )
        self._allowed = tuple(
            ipaddress.ip_network(p, strict=False) for p in self.settings.allowed_peers
        )
        self._own_hosts = frozenset(
            ipaddress.ip_address(h) for h in (host, public_host) if h is not None
        )
        #: Connections watched by their idle timer, oldest first (a dict keeps the order).
        self._idle: dict[ConnId, None] = {}
        """Connections to the TURN port with an IdleTimer running (no allocation, not bound)."""
        self._timers: set[ServerTimer] = set()
        """The timers running."""
        self._authenticated: dict[int, int] = {}
        """Method -> authenticated requests of it so far (what ``errors``' nth counts)."""
        self._next_ident = 1
        self._handlers: dict[int, _Handler] = {
            Method.ALLOCATE: self._on_allocate,
            Method.REFRESH: self._with_allocation(self._on_refresh),
            Method.CREATE_PERMISSION: self._with_allocation(self._on_create_permission),
            Method.CONNECT: self._with_allocation(self._on_connect),
        }
        # Attributes every response of this server carries with the same value. Attributes are
        # frozen, so one instance serves every message (building them anew was a visible share
        # of answering a request).
        self._realm = Realm(self.settings.realm)
        self._software = Software(self.settings.software) if self.settings.software else None

    # -- introspection -------------------------------------------------------------------------

    @property
    def address(self) -> Address:
        """The TURN port's address."""
        return self._address

    @property
    def allocation_count(self) -> int:
        """How many allocations are held now (a load run samples it often: no list built)."""
        return len(self._allocations)

    def allocations(self) -> list[AllocationInfo]:
        """The allocations now held, lowest relay port first."""
        return [
            AllocationInfo(
                relay=a.relay,
                client=a.client,
                username=a.username,
                transport=TRANSPORT_NAMES.get(a.transport, str(a.transport)),
                expires=a.expires,
                permissions=tuple(sorted(a.permissions)),
                connections=len(a.peers),
            )
            for _, a in self._ports.items()
        ]

    def actor(self) -> Solo:
        """This server alone as an actor (named and placed as the server is)."""
        return Solo(self.name, self.host, self)

    # -- the machine interface -----------------------------------------------------------------

    def handle(self, event: Event, now: float) -> Step[Never]:
        """Take one event at ``now`` (seconds); the effects in order, no notices."""
        return Step(tuple(self._handle(event, now)))

    def _handle(self, event: Event, now: float) -> list[Effect]:
        # Cases are tried in order: Received first, as almost every event is bytes (a relay
        # moves each read through here), then the events of every allocation.
        match event:
            case Received(conn=conn, data=data):
                if conn in self._clients:
                    return self._on_client_bytes(self._clients[conn], data, now)
                if conn in self._peers:
                    return self._on_peer_bytes(self._peers[conn], data)
                return []
            case Accepted(conn=conn, local=local, remote=remote):
                return self._on_accepted(conn, local, remote, now)
            case Listening(address=address):
                return self._on_listening(address, now)
            case Started():
                return [
                    Listen(self._address),
                    Log(f"TURN server on {self._address}, realm {self.settings.realm}"),
                ]
            case ListenFailed(address=address, reason=reason):
                return self._on_listen_failed(address, reason, now)
            case Connected(conn=conn):
                return self._on_connected(conn)
            case ConnectFailed(conn=conn, reason=reason):
                return self._on_connect_failed(conn, reason)
            case Closed(conn=conn, reset=reset):
                return self._on_closed(conn, reset)
            case TimerFired(timer=timer):
                return self._on_timer(timer)
        return []  # pragma: no cover - the match is exhaustive

    # -- listeners -----------------------------------------------------------------------------

    def _on_listening(self, address: Address, now: float) -> list[Effect]:
        if address == self._address:
            return [Log(f"listening for TURN on {address} (TCP)")]
        alloc = self._ports.get(address.port)
        if alloc is None or alloc.active or address.host != self.host:
            return []
        return self._activate(alloc, now)

    def _on_listen_failed(self, address: Address, reason: str, now: float) -> list[Effect]:
        if address == self._address:
            return [Log(f"cannot listen on the TURN port {address}: {reason}", "error")]
        alloc = self._ports.get(address.port)
        if alloc is None or alloc.active or address.host != self.host:
            return []
        # The runtime could not bind this relay port (in use on the host): try the next free one,
        # and answer 508 only when no port can be had (RFC 5766 §6.2).
        self._ports.give_back(address.port)
        alloc.tried_ports.add(address.port)
        out: list[Effect] = [Log(f"cannot listen on relay {address}: {reason}", "warning")]
        port = self._free_port(even=False, exclude=alloc.tried_ports)
        if port is None or len(alloc.tried_ports) >= self.settings.listen_attempts:
            why = f"no relay port could be opened after {len(alloc.tried_ports)} tries"
            out += self._reject(alloc.control, alloc.request, 508, why, alloc.key)
            return out + self._forget_allocation(alloc)
        alloc.relay = Address(self.host, port)
        self._ports.take(port, alloc)
        return [*out, Listen(alloc.relay)]

    # -- accepted connections ------------------------------------------------------------------

    def _on_accepted(
        self, conn: ConnId, local: Address, remote: Address, now: float
    ) -> list[Effect]:
        if local.port == self.settings.port:
            # RFC 6062 §4.4/§5.4: control and data connections both arrive on the TURN port;
            # the first message tells which. ChannelData is refused: TCP allocations never use
            # it (RFC 6062 §3, PROTOCOL.md §3.2) and UDP ones are bookkeeping only here, and a
            # non-STUN first byte (an HTTP request) then fails at once.
            splitter = StunSplitter(allow_channel_data=False)
            self._clients[conn] = _Client(conn, remote, splitter)
            return self._start_idle_timer(conn)
        alloc = self._ports.get(local.port)
        if alloc is None or not alloc.active or alloc.transport != TRANSPORT_TCP:
            return [
                Log(f"connection from {remote} to {local}: no TCP relay there, reset", "warning"),
                Close(conn, reset=True),
            ]
        return self._on_peer_accepted(alloc, conn, remote, now)

    def _on_peer_accepted(
        self, alloc: _Allocation, conn: ConnId, remote: Address, now: float
    ) -> list[Effect]:
        refusal = self._peer_refusal(remote.host, None)
        if refusal is not None:
            # coturn checks its peer policy on incoming peer connections too.
            return [
                Log(f"peer connection from {remote} to {alloc.relay}: {refusal}, reset", "warning"),
                Close(conn, reset=True),
            ]
        if len(alloc.waiting) >= self.settings.max_pending_peers:
            return [
                Log(
                    f"peer connection from {remote} to {alloc.relay}: {len(alloc.waiting)} "
                    "peer connections already wait for their ConnectionBind "
                    "(max_pending_peers), reset",
                    "warning",
                ),
                Close(conn, reset=True),
            ]
        out: list[Effect] = []
        permitted = self._has_permission(alloc, remote.host, now)
        if not permitted:
            if self.settings.permission_policy == "rfc":
                # RFC 6062 §5.3: accept, then close at once; the client hears nothing. coturn
                # resets the connection (PROTOCOL.md §11).
                return [
                    Log(
                        f"no permission for {remote.host}: peer connection from {remote} reset "
                        "(rfc policy, RFC 6062 §5.3)",
                        "warning",
                    ),
                    Close(conn, reset=True),
                ]
            out.append(
                Log(
                    f"no permission for {remote.host}, peer connection accepted anyway "
                    "(lab policy: the lab's Expressway-E did so)"
                )
            )
        cid = self._new_cid()
        peer = _Peer(conn, cid, alloc, remote, _PeerState.PENDING)
        self._add_peer(peer)
        # RFC 6062 §5.3: ConnectionAttempt with XOR-PEER-ADDRESS and CONNECTION-ID on the
        # control connection; MESSAGE-INTEGRITY (where the layout has it) with the allocation's
        # key, the only key the client can check.
        indication = Message.indication(
            Method.CONNECTION_ATTEMPT, transaction_id=self._rng.randbytes(12)
        )
        data = self._build(
            indication,
            self._layout.connection_attempt,
            {
                "XOR-PEER-ADDRESS": XorPeerAddress(remote.host, remote.port),
                "CONNECTION-ID": ConnectionId(cid),
            },
            alloc.key,
        )
        out += [
            Log(
                f"peer {remote} connected to relay {alloc.relay}: ConnectionAttempt with "
                f"CONNECTION-ID 0x{cid:08x}, waiting {self.settings.bind_timeout:g} s for "
                "ConnectionBind (RFC 6062 §5.3)"
            ),
            Send(alloc.control, data, protocol="stun"),
            self._start_bind_timer(peer),
        ]
        return out

    # -- bytes from clients (TURN port) ----------------------------------------------------------

    def _on_client_bytes(self, client: _Client, data: bytes, now: float) -> list[Effect]:
        if client.role is _Role.DATA:
            return self._pipe(client.conn, data)
        out: list[Effect] = []
        try:
            if client.role is _Role.UNDETERMINED:
                out += self._on_undetermined_bytes(client, data, now)
                if client.conn not in self._clients or _role(client) is not _Role.CONTROL:
                    return out
                data = b""  # it just became a control connection: split what is buffered
            out += self._on_control_messages(client, client.splitter.feed(data), now)
        except FramingError as exc:
            # The whole messages before the garbage arrived intact: they are answered first.
            out += self._on_control_messages(client, exc.messages, now)
            if client.conn not in self._clients:
                return out
            # Garbage on this connection: only this one is reset; other connections keep their
            # own splitters and state.
            out += [
                Log(f"garbage on {client.conn} from {client.remote}: {exc}; reset", "warning"),
                *self._stop_idle_timer(client.conn),
                Close(client.conn, reset=True),
            ]
            out += self._drop_client(client, reset=True)
        return out

    def _on_control_messages(
        self, client: _Client, messages: Sequence[bytes], now: float
    ) -> list[Effect]:
        out: list[Effect] = []
        for raw in messages:
            if client.conn not in self._clients:
                break
            out += self._on_control_message(client, raw, now)
        return out

    def _on_undetermined_bytes(self, client: _Client, data: bytes, now: float) -> list[Effect]:
        # Split one message at a time: after a ConnectionBind the rest of the segment is no
        # longer STUN but raw bytes for the peer (RFC 6062 §5.4).
        out: list[Effect] = []
        chunk = data
        while _role(client) is _Role.UNDETERMINED and client.conn in self._clients:
            first = client.splitter.feed(chunk, max_messages=1)
            chunk = b""
            if not first:
                return out
            out += self._on_first_message(client, first[0], now)
        if client.conn in self._clients and _role(client) is _Role.DATA:
            rest = client.splitter.take_buffered()
            if rest:
                out += self._pipe(client.conn, rest)
        return out

    def _on_first_message(self, client: _Client, raw: bytes, now: float) -> list[Effect]:
        method, cls = split_type(int.from_bytes(raw[:2], "big"))
        if method == Method.CONNECTION_BIND and cls is Class.REQUEST:
            return self._on_connection_bind(client, raw, now)
        client.role = _Role.CONTROL
        return self._on_control_message(client, raw, now)

    def _on_control_message(self, client: _Client, raw: bytes, now: float) -> list[Effect]:
        try:
            msg = decode(raw)
        except StunError as exc:
            return self._on_malformed(client.conn, raw, exc)
        if msg.cls is Class.INDICATION:
            if msg.method == Method.BINDING:
                return []  # a keepalive (RFC 5245 §10, PROTOCOL.md §10 row 3209): no answer
            return [Log(f"{msg.summary()} on {client.conn} ignored (no UDP relaying)")]
        if msg.cls is not Class.REQUEST:
            return [Log(f"unexpected {msg.summary()} on {client.conn} ignored", "warning")]
        # RFC 5389 §7.3: a bad FINGERPRINT means this is not a STUN message for us. (The check
        # comes first: it passes for almost every request, and the scan only matters if not.)
        if not msg.verify_fingerprint() and Fingerprint in msg:
            return [Log(f"{msg.summary()} with a bad FINGERPRINT discarded", "warning")]
        if msg.method == Method.BINDING:
            return self._on_binding(client, msg)
        if msg.method == Method.CONNECTION_BIND:
            return self._reject(
                client.conn,
                msg,
                400,
                "ConnectionBind must be the first message on a new connection (RFC 6062 §4.4)",
            )
        handler = self._handlers.get(msg.method)
        if handler is None:
            return self._reject(client.conn, msg, 400, f"{msg.method_name} is not supported here")
        auth = self._authenticate(msg, client.remote.host, now)
        if isinstance(auth, _Reject):
            return self._reject_auth(client, msg, auth, now)
        unknown = msg.unknown_comprehension_required()
        if unknown:
            # RFC 5389 §7.3.1: after authentication, unknown comprehension-required attributes.
            names = ", ".join(f"0x{t:04x}" for t in unknown)
            return self._reject(
                client.conn,
                msg,
                420,
                f"unknown comprehension-required attributes {names} (RFC 5389 §7.3.1)",
                auth.key,
                extra={"UNKNOWN-ATTRIBUTES": UnknownAttributes(tuple(unknown))},
            )
        injected = self._injected(msg.method)
        if injected is not None:
            return self._answer_injected(client, msg, injected, auth, now)
        return handler(client, msg, auth, now)

    # -- injected errors (the errors setting) --------------------------------------------------

    def _injected(self, method: int) -> InjectedError | None:
        """Count one more authenticated request of ``method``; the error that answers it."""
        count = self._authenticated.get(method, 0) + 1
        self._authenticated[method] = count
        errors = self.settings.errors
        if not errors:
            return None
        return next((e for e in errors if e.applies(method, count)), None)

    def _answer_injected(
        self, client: _Client, msg: Message, error: InjectedError, auth: _Credentials, now: float
    ) -> list[Effect]:
        count = self._authenticated[msg.method]
        why = f"{msg.method_name} #{count} answered {error.code} by the errors setting"
        if error.code == 438:
            # RFC 5389 §10.2.2: a 438 carries a fresh NONCE and the REALM, as any stale nonce
            # gets (the layout's stale_nonce row).
            return self._reject_auth(client, msg, _Reject(438, why), now)
        return self._reject(client.conn, msg, error.code, why, auth.key)

    def _on_malformed(self, conn: ConnId, raw: bytes, exc: StunError) -> list[Effect]:
        method, cls = split_type(int.from_bytes(raw[:2], "big"))
        out: list[Effect] = [Log(f"malformed STUN message on {conn}: {exc}", "warning")]
        if cls is Class.REQUEST and len(raw) >= HEADER_LENGTH:
            # RFC 5389 §7.3: a malformed request gets 400; the header is intact (the splitter
            # checked it), so the method and transaction ID can be echoed.
            request = Message(method, Class.REQUEST, raw[8:HEADER_LENGTH])
            out += self._reject(conn, request, 400, "malformed request")
        return out

    def _on_binding(self, client: _Client, msg: Message) -> list[Effect]:
        # A TURN server is a STUN server too: plain Binding requests get their mapped address
        # without authentication (CMS 2.9.2 and earlier sent them, PROTOCOL.md §6.2).
        unknown = msg.unknown_comprehension_required()
        if unknown:
            return self._reject(
                client.conn,
                msg,
                420,
                "unknown comprehension-required attributes (RFC 5389 §7.3.1)",
                extra={"UNKNOWN-ATTRIBUTES": UnknownAttributes(tuple(unknown))},
            )
        values = {"XOR-MAPPED-ADDRESS": XorMappedAddress(client.remote.host, client.remote.port)}
        data = self._build(msg.success(), self._layout.binding, values, None)
        return [Send(client.conn, data, protocol="stun")]

    # -- authentication (RFC 5389 §10.2.2) ------------------------------------------------------

    def _authenticate(self, msg: Message, host: str, now: float) -> _Credentials | _Reject:
        """``msg``'s long-term credentials, from a client at IP ``host``."""
        if MessageIntegrity not in msg:
            return _Reject(401, "no MESSAGE-INTEGRITY: challenge with realm and nonce")
        username, realm, nonce = msg.get(Username), msg.get(Realm), msg.get(Nonce)
        if username is None or realm is None or nonce is None:
            return _Reject(400, "MESSAGE-INTEGRITY without USERNAME, REALM and NONCE")
        # RFC 5389 §10.2.2 checks the nonce before the username and the integrity.
        if not self._nonce_valid(nonce.value, host, now):
            return _Reject(438, "stale or unknown nonce")
        if realm.value != self.settings.realm:
            return _Reject(401, f"realm {realm.value!r} is not {self.settings.realm!r}")
        password = self.settings.users.get(username.value)
        if password is None:
            return _Reject(401, f"unknown user {username.value!r}")
        key = long_term_key(username.value, self.settings.realm, password)
        if not msg.verify_integrity(key):
            return _Reject(
                self.settings.integrity_error_code,
                f"MESSAGE-INTEGRITY of user {username.value!r} does not match (wrong password)",
            )
        return _Credentials(username.value, key)

    # Nonces are stateless (coturn's are too): the server keeps none, so unauthenticated
    # requests cost no memory however many come. A nonce carries its issue time and a salt in
    # clear and an HMAC over both and the client's IP, keyed with the server's secret: only
    # this server can make one, it is checked without a table, and it turns stale by its own
    # time (RFC 5389 §10.2: "the server MAY ... limit the nonce's validity"; §15.8: a NONCE
    # is opaque, under 128 characters). The IP, not the port: the client reuses the control
    # connection's nonce on its new data connections (RFC 6062 §5.4; PROTOCOL.md §11).

    def _nonce_mac(self, head: str, host: str, digits: int) -> str:
        # HMAC-SHA256 (RFC 2104) from the secret's two key states, hashed once per server:
        # the same bytes as hmac.new(secret, ..., sha256), at about a third of its cost (each
        # request of every allocation checks or makes a nonce).
        inner_start, outer_start = self._nonce_hmac
        inner = inner_start.copy()
        inner.update(f"{head}|{host}".encode())
        outer = outer_start.copy()
        outer.update(inner.digest())
        return outer.hexdigest()[:digits]

    def _nonce_valid(self, nonce: str, host: str, now: float) -> bool:
        length = self.settings.nonce_length
        if len(nonce) != length:
            return False
        head = nonce[: _NONCE_TIME_DIGITS + _NONCE_SALT_DIGITS]
        if not hmac.compare_digest(
            nonce[len(head) :], self._nonce_mac(head, host, length - len(head))
        ):
            return False
        # The HMAC matched, so the time field is the one this server wrote: plain hex. The age
        # is counted in the milliseconds it was written in, rounded as _new_nonce rounds:
        # now * 1000 may round up (1.1219999999999999 * 1000 is 1122.0), so comparing seconds
        # made a nonce checked at the instant it was issued look issued later, and stale.
        age = max(0, int(now * 1000)) - int(head[:_NONCE_TIME_DIGITS], 16)
        return 0 <= age <= self.settings.nonce_lifetime * 1000

    def _new_nonce(self, host: str, now: float) -> str:
        # Milliseconds, rounded down (so a nonce is never younger than its time says); the salt
        # tells apart nonces issued in the same millisecond (a 438 brings a new one).
        issued = format(max(0, int(now * 1000)), f"0{_NONCE_TIME_DIGITS}x")
        salt = format(self._rng.getrandbits(4 * _NONCE_SALT_DIGITS), f"0{_NONCE_SALT_DIGITS}x")
        head = issued + salt
        return head + self._nonce_mac(head, host, self.settings.nonce_length - len(head))

    def _reject_auth(
        self, client: _Client, msg: Message, reject: _Reject, now: float
    ) -> list[Effect]:
        conn, host = client.conn, client.remote.host
        if reject.code == 400:
            return self._reject(conn, msg, 400, reject.why)
        # 401 reuses a still valid nonce the client sent (coturn does); 438 needs a fresh one.
        sent = msg.get(Nonce)
        if reject.code != 438 and sent is not None and self._nonce_valid(sent.value, host, now):
            nonce = sent.value
        else:
            nonce = self._new_nonce(host, now)
        values: dict[str, Attribute] = {"NONCE": Nonce(nonce), "REALM": self._realm}
        layout = self._layout.stale_nonce if reject.code == 438 else self._layout.challenge
        if msg.method in (Method.ALLOCATE, Method.REFRESH):
            values["LIFETIME"] = Lifetime(self._lifetime(msg))
        # The lab's 401 carries a MESSAGE-INTEGRITY (its size says so, PROTOCOL.md §10) whose
        # key cannot be known. RFC 5389 §10.2.2 says a 401 SHOULD NOT carry one: the client
        # has no shared key yet. Keying it with a user's long-term key would hand anyone who
        # asks an offline test of that user's password; a key of the server's own that nobody
        # knows gives the same bytes and length and tells nothing.
        data = self._build(msg.error(reject.code), layout, values, self._challenge_secret)
        return [
            Log(f"{msg.method_name} on {conn}: {reject.code}, {reject.why} (RFC 5389 §10.2.2)"),
            Send(conn, data, protocol="stun"),
        ]

    # -- Allocate (RFC 5766 §6.2, RFC 6062 §5.1) -------------------------------------------------

    def _on_allocate(
        self, client: _Client, msg: Message, auth: _Credentials, now: float
    ) -> list[Effect]:
        conn = client.conn
        existing = client.allocation
        if existing is not None:
            if existing.username != auth.username:
                return self._wrong_user(conn, msg, existing, auth)
            if existing.transaction_id == msg.transaction_id:
                # RFC 5766 §6.2: a retransmission gets the same answer (none yet while the relay
                # listener is being opened).
                if existing.success is None:
                    return []
                return [Send(conn, existing.success, protocol="stun")]
            return self._reject(
                conn,
                msg,
                437,
                f"this connection already has the allocation {existing.relay} (RFC 5766 §6.2)",
                auth.key,
            )
        requested = msg.get(RequestedTransport)
        if requested is None:
            return self._reject(conn, msg, 400, "no REQUESTED-TRANSPORT (RFC 5766 §6.2)", auth.key)
        transport = requested.protocol
        if transport not in (TRANSPORT_UDP, TRANSPORT_TCP):
            why = f"REQUESTED-TRANSPORT {transport} is neither UDP nor TCP (RFC 6062 §5.1)"
            return self._reject(conn, msg, 442, why, auth.key)
        if transport == TRANSPORT_TCP and not self.settings.tcp_relay:
            why = "TCP relays are off (like Expressway-E before X8.9)"
            return self._reject(conn, msg, 442, why, auth.key)
        # The attribute types present, once: several checks below ask about them.
        present = {type(a) for a in msg.attributes}
        udp_only = [t.NAME for t in (EvenPort, ReservationToken, DontFragment) if t in present]
        if transport == TRANSPORT_TCP and udp_only:
            why = f"a TCP Allocate may not carry {', '.join(udp_only)} (RFC 6062 §5.1)"
            return self._reject(conn, msg, 400, why, auth.key)
        family = msg.get(RequestedAddressFamily)
        if family is not None and family.family != (1 if self._family == 4 else 2):
            why = f"address family {family.family} not offered (RFC 6156 §4.2)"
            return self._reject(conn, msg, 440, why, auth.key)
        if ReservationToken in present:
            # RFC 5766 §6.2: this server keeps no reserved ports, so every token is unknown.
            return self._reject(conn, msg, 508, "unknown RESERVATION-TOKEN", auth.key)
        quota = self.settings.user_quota
        held = self._held.get(auth.username, 0)
        if quota and held >= quota:
            why = f"user {auth.username!r} holds {held} allocations, the quota (RFC 5766 §6.2)"
            return self._reject(conn, msg, 486, why, auth.key)
        if len(self._allocations) >= self.settings.max_allocations:
            why = f"{len(self._allocations)} allocations held, the server's capacity"
            return self._reject(conn, msg, 508, why, auth.key)
        port = self._free_port(even=EvenPort in present)
        if port is None:
            low, high = self.settings.relay_ports
            return self._reject(
                conn, msg, 508, f"no free relay port in {low}-{high} (RFC 5766 §6.2)", auth.key
            )
        alloc = _Allocation(
            ident=self._next_ident,
            control=conn,
            client=client.remote,
            relay=Address(self.host, port),
            transport=transport,
            username=auth.username,
            key=auth.key,
            transaction_id=msg.transaction_id,
            request=msg,
            lifetime=self._lifetime(msg),
        )
        self._next_ident += 1
        self._allocations[alloc.ident] = alloc
        self._held[alloc.username] = self._held.get(alloc.username, 0) + 1
        self._ports.take(port, alloc)
        client.allocation = alloc
        # From now on the allocation's lifetime governs the connection, not the idle timer.
        out = self._stop_idle_timer(conn)
        if transport == TRANSPORT_TCP:
            # The relayed transport address is a listening TCP socket (RFC 6062 §5.1); answer
            # once the runtime says it listens (Listening), so no dead port is advertised.
            return [*out, Listen(alloc.relay)]
        return [
            *out,
            Log(
                f"UDP relay {alloc.relay} for {client.remote}: bookkeeping only "
                "(the runtimes carry TCP only; no UDP socket is opened)"
            ),
            *self._activate(alloc, now),
        ]

    def _activate(self, alloc: _Allocation, now: float) -> list[Effect]:
        alloc.active = True
        alloc.expires = now + alloc.lifetime
        values: dict[str, Attribute] = {
            "LIFETIME": Lifetime(alloc.lifetime),
            "XOR-MAPPED-ADDRESS": XorMappedAddress(alloc.client.host, alloc.client.port),
            # Behind a static NAT, the address peers reach the relay at (RFC 5766 §6.2 lets the
            # server name any address it relays from; Expressway-E's static NAT mode does so).
            "XOR-RELAYED-ADDRESS": XorRelayedAddress(
                self.public_host or alloc.relay.host, alloc.relay.port
            ),
        }
        alloc.success = self._build(
            alloc.request.success(), self._layout.allocate, values, alloc.key
        )
        self._timers.add(alloc.timer)
        transport = TRANSPORT_NAMES.get(alloc.transport, "?")
        nat = f" (advertised as {self.public_host}:{alloc.relay.port})" if self.public_host else ""
        return [
            Log(
                f"{transport} allocation for {alloc.username!r} at {alloc.client}: relay "
                f"{alloc.relay}{nat}, lifetime {alloc.lifetime} s"
            ),
            Send(alloc.control, alloc.success, protocol="stun"),
            StartTimer(alloc.timer, float(alloc.lifetime)),
        ]

    def _lifetime(self, msg: Message) -> int:
        """RFC 5766 §6.2/§7.2: min(requested, maximum), but never below the default; 0 stays 0
        (a Refresh deleting the allocation)."""
        requested = msg.get(Lifetime)
        if requested is None:
            return self.settings.default_lifetime
        if requested.value == 0 and msg.method == Method.REFRESH:
            return 0
        return max(self.settings.default_lifetime, min(requested.value, self.settings.max_lifetime))

    def _free_port(self, *, even: bool, exclude: Collection[int] = ()) -> int | None:
        # The lowest free port, so runs are repeatable and the first relay is 24000.
        return self._ports.lowest_free(even=even, exclude=exclude)

    # -- Refresh (RFC 5766 §7.2) -----------------------------------------------------------------

    def _on_refresh(
        self, client: _Client, alloc: _Allocation, msg: Message, auth: _Credentials, now: float
    ) -> list[Effect]:
        lifetime = self._lifetime(msg)
        data = self._build(
            msg.success(), self._layout.refresh, {"LIFETIME": Lifetime(lifetime)}, auth.key
        )
        out: list[Effect] = [Send(client.conn, data, protocol="stun")]
        if lifetime == 0:
            out += self._delete_allocation(alloc, "Refresh with LIFETIME 0 (RFC 5766 §7.2)")
            return out
        alloc.lifetime = lifetime
        alloc.expires = now + lifetime
        if alloc.active:
            out.append(StartTimer(alloc.timer, float(lifetime)))
        out.append(Log(f"allocation {alloc.relay} refreshed for {lifetime} s"))
        return out

    # -- CreatePermission (RFC 5766 §9.2) ------------------------------------------------------

    def _on_create_permission(
        self, client: _Client, alloc: _Allocation, msg: Message, auth: _Credentials, now: float
    ) -> list[Effect]:
        conn = client.conn
        peers = msg.get_all(XorPeerAddress)
        if not peers:
            return self._reject(
                conn, msg, 400, "CreatePermission without XOR-PEER-ADDRESS", auth.key
            )
        for peer in peers:
            if ipaddress.ip_address(peer.address).version != self._family:
                why = f"peer {peer.address} is not of the relay's address family (RFC 6156 §6.2)"
                return self._reject(conn, msg, 443, why, auth.key)
            refusal = self._peer_refusal(peer.address, peer.port)
            if refusal is not None:
                why = f"peer {peer.address}:{peer.port}: {refusal} (RFC 5766 §9.2)"
                return self._reject(conn, msg, 403, why, auth.key)
        permissions = alloc.permissions
        self._expire_permissions(alloc, now)
        # RFC 5766 §9.2: all or nothing; only IPs not yet permitted take room.
        ips = dict.fromkeys(p.address for p in peers)
        new = sum(1 for ip in ips if ip not in permissions)
        if new and len(permissions) + new > self.settings.max_permissions:
            why = (
                f"allocation {alloc.relay} holds {len(permissions)} permissions, "
                f"max_permissions {self.settings.max_permissions} (RFC 5766 §9.2, §15)"
            )
            return self._reject(conn, msg, 508, why, auth.key)
        lifetime = self.settings.permission_lifetime
        for ip in ips:
            # RFC 5766 §8: a permission covers the IP only, the port is ignored. Popped first,
            # so a refreshed permission moves to the end and the dict stays in expiry order.
            permissions.pop(ip, None)
            permissions[ip] = now + lifetime
        data = self._build(msg.success(), self._layout.create_permission, {}, auth.key)
        return [
            Log(f"permission for {', '.join(sorted(ips))} on {alloc.relay} for {lifetime:g} s"),
            Send(conn, data, protocol="stun"),
        ]

    def _expire_permissions(self, alloc: _Allocation, now: float) -> None:
        # Only the front can have expired (the dict is in expiry order): each request pays for
        # the permissions that expired since, never for those still held (a scan of them all
        # made CreatePermission slower with every permission held).
        permissions = alloc.permissions
        while permissions:
            ip, expiry = next(iter(permissions.items()))
            if expiry > now:
                return
            del permissions[ip]

    def _peer_refusal(self, ip: str, port: int | None) -> str | None:
        """Why local policy refuses peer ``ip`` (and ``port``, where one is named), else None.

        RFC 5766 §9.2 and RFC 6062 §5.2 answer such a peer 403 Forbidden; coturn refuses a
        forbidden peer's incoming connection too.
        """
        address = ipaddress.ip_address(ip)
        if any(address in net for net in self._forbidden):
            return "forbidden by local policy (forbidden_peers)"
        if self._allowed and not any(address in net for net in self._allowed):
            return "not among the allowed peers (allowed_peers)"
        if port is not None and not self.settings.relay_to_self:
            low, high = self.settings.relay_ports
            own = address in self._own_hosts or address.is_unspecified
            if own and (port == self.settings.port or low <= port <= high):
                # A peer that is this server's TURN port or one of its relays would have the
                # server connect to itself: one relay looped into another, or into its own.
                return "this TURN server's own port (relay_to_self is off)"
        return None

    def _has_permission(self, alloc: _Allocation, ip: str, now: float) -> bool:
        expiry = alloc.permissions.get(ip)
        return expiry is not None and expiry > now

    # -- Connect (RFC 6062 §5.2) -----------------------------------------------------------------

    def _on_connect(
        self, client: _Client, alloc: _Allocation, msg: Message, auth: _Credentials, now: float
    ) -> list[Effect]:
        conn = client.conn
        if alloc.transport != TRANSPORT_TCP:
            return self._reject(conn, msg, 400, "Connect on a UDP allocation", auth.key)
        target = msg.get(XorPeerAddress)
        if target is None or ipaddress.ip_address(target.address).version != self._family:
            why = "Connect without a usable XOR-PEER-ADDRESS (RFC 6062 §5.2)"
            return self._reject(conn, msg, 400, why, auth.key)
        remote = Address(target.address, target.port)
        refusal = self._peer_refusal(target.address, target.port)
        if refusal is not None:
            why = f"peer {remote}: {refusal} (RFC 6062 §5.2)"
            return self._reject(conn, msg, 403, why, auth.key)
        if any(p.remote == remote for p in alloc.peers.values()):
            why = f"a connection to {remote} already exists or is in progress (RFC 6062 §5.2)"
            return self._reject(conn, msg, 446, why, auth.key)
        if len(alloc.waiting) >= self.settings.max_pending_peers:
            why = (
                f"{len(alloc.waiting)} peer connections of {alloc.relay} wait for their "
                "ConnectionBind or Connect (max_pending_peers; RFC 5766 §15)"
            )
            return self._reject(conn, msg, 508, why, auth.key)
        installs = self.settings.connect_installs_permission
        if installs:
            self._expire_permissions(alloc, now)
            permissions = alloc.permissions
            if remote.host not in permissions and len(permissions) >= self.settings.max_permissions:
                why = f"Connect would install permission {len(permissions) + 1} (max_permissions)"
                return self._reject(conn, msg, 508, why, auth.key)
        cid = self._new_cid()
        peer = _Peer(
            f"{self.prefix}:peer:{cid:08x}",
            cid,
            alloc,
            remote,
            _PeerState.CONNECTING,
            connect_request=msg,
            connect_key=auth.key,
        )
        self._add_peer(peer)
        out: list[Effect] = []
        if installs:
            alloc.permissions.pop(remote.host, None)  # to the end: expiry order
            alloc.permissions[remote.host] = now + self.settings.permission_lifetime
            out.append(Log(f"Connect installs a permission for {remote.host} (setting)"))
        # RFC 6062 §5.2 wants the connection to start from the relayed address; the runtime
        # contract has no source port, so it leaves from an ephemeral port of this host.
        return [
            *out,
            Log(f"Connect to {remote} from relay {alloc.relay} (RFC 6062 §5.2)"),
            Connect(peer.conn, remote, timeout=self.settings.connect_timeout),
        ]

    def _on_connected(self, conn: ConnId) -> list[Effect]:
        peer = self._peers.get(conn)
        if peer is None or peer.state is not _PeerState.CONNECTING:
            # The allocation went away while connecting: nobody wants this connection.
            return [Close(conn)] if conn.startswith(f"{self.prefix}:") else []
        peer.state = _PeerState.PENDING
        request = peer.connect_request
        assert request is not None
        peer.connect_request = None
        values: dict[str, Attribute] = {"CONNECTION-ID": ConnectionId(peer.cid)}
        data = self._build(request.success(), self._layout.connect, values, peer.connect_key)
        return [
            Log(
                f"connected to {peer.remote}: Connect success with CONNECTION-ID "
                f"0x{peer.cid:08x}, waiting {self.settings.bind_timeout:g} s for ConnectionBind"
            ),
            Send(peer.allocation.control, data, protocol="stun"),
            self._start_bind_timer(peer),
        ]

    def _on_connect_failed(self, conn: ConnId, reason: str) -> list[Effect]:
        peer = self._peers.get(conn)
        if peer is None or peer.state is not _PeerState.CONNECTING:
            return []
        self._remove_peer(peer)
        request = peer.connect_request
        assert request is not None
        why = f"connection to {peer.remote} failed ({reason}) (RFC 6062 §5.2)"
        return self._reject(peer.allocation.control, request, 447, why, peer.connect_key)

    # -- ConnectionBind (RFC 6062 §5.4) --------------------------------------------------------

    def _on_connection_bind(self, client: _Client, raw: bytes, now: float) -> list[Effect]:
        conn = client.conn
        try:
            msg = decode(raw)
        except StunError as exc:
            return self._bind_failed(client, None, 400, f"malformed ConnectionBind: {exc}", None)
        if not msg.verify_fingerprint() and Fingerprint in msg:
            return self._bind_failed(client, msg, 400, "bad FINGERPRINT", None)
        auth = self._authenticate(msg, client.remote.host, now)
        if isinstance(auth, _Reject):
            if self.settings.bind_failure == "answer" and auth.code != 400:
                # The RFC 5389 §10.2.2 answer (401 challenge or 438 with a nonce).
                return self._reject_auth(client, msg, auth, now)
            return self._bind_failed(client, msg, auth.code, auth.why, None)
        unknown = msg.unknown_comprehension_required()
        if unknown:
            extra = {"UNKNOWN-ATTRIBUTES": UnknownAttributes(tuple(unknown))}
            why = "unknown comprehension-required attributes (RFC 5389 §7.3.1)"
            return self._bind_failed(client, msg, 420, why, auth.key, extra)
        injected = self._injected(Method.CONNECTION_BIND)
        if injected is not None:
            answer = self._answer_injected(client, msg, injected, auth, now)
            if injected.code == 438:
                return answer  # the client retries with the new nonce on this connection
            # RFC 6062 §5.4: a failed ConnectionBind leaves no data connection; the server
            # closes it after the answer (the client must close it too, §4.3). The peer
            # connection stays pending until its bind timer (§5.3).
            del self._clients[conn]
            return [*answer, *self._stop_idle_timer(conn), Close(conn)]
        cid_attr = msg.get(ConnectionId)
        if cid_attr is None:
            return self._bind_failed(client, msg, 400, "no CONNECTION-ID", auth.key)
        peer = self._cids.get(cid_attr.value)
        if peer is None or peer.state is not _PeerState.PENDING:
            why = f"CONNECTION-ID 0x{cid_attr.value:08x} names no pending peer connection"
            return self._bind_failed(client, msg, 400, why, auth.key)
        if peer.allocation.username != auth.username:
            why = f"user {auth.username!r} is not the allocation's {peer.allocation.username!r}"
            return self._bind_failed(client, msg, 441, why, auth.key)
        # Success: from the next byte on, this connection and the peer's are a raw pipe.
        client.role = _Role.DATA
        client.peer = peer
        peer.state = _PeerState.BOUND
        peer.data_conn = conn
        peer.allocation.waiting.discard(peer.cid)
        self._timers.discard(BindTimer(peer.cid))
        values: dict[str, Attribute] = {"CONNECTION-ID": ConnectionId(peer.cid)}
        data = self._build(msg.success(), self._layout.connection_bind, values, auth.key)
        out: list[Effect] = [
            StopTimer(BindTimer(peer.cid)),
            # A bound data connection lives as long as its peer's (RFC 6062 §5.5).
            *self._stop_idle_timer(conn),
            Log(
                f"ConnectionBind 0x{peer.cid:08x}: {conn} piped to peer {peer.remote} "
                "(RFC 6062 §5.4)"
            ),
            Send(conn, data, protocol="stun"),
        ]
        if peer.buffer:
            # RFC 6062 §5.4: data the peer sent before the bind goes out right after it.
            out.append(Log(f"delivering {len(peer.buffer)} peer bytes buffered before the bind"))
            out.append(Send(conn, bytes(peer.buffer), protocol="raw"))
            peer.allocation.buffered -= len(peer.buffer)
            peer.buffer.clear()
        if peer.closed_early:
            out.append(Log(f"peer {peer.remote} had closed before the bind: closing {conn}"))
            out.append(Close(conn))
            client.splitter.take_buffered()
            self._remove_peer(peer)
            del self._clients[conn]
        return out

    def _bind_failed(
        self,
        client: _Client,
        msg: Message | None,
        code: int,
        why: str,
        key: bytes | None,
        extra: Mapping[str, Attribute] | None = None,
    ) -> list[Effect]:
        if self.settings.bind_failure == "answer" and msg is not None:
            # RFC 6062 §5.4 answers 400 (the client must then close the connection).
            return self._reject(client.conn, msg, code, f"ConnectionBind: {why}", key, extra=extra)
        # coturn resets the connection without a STUN answer (PROTOCOL.md §11).
        out: list[Effect] = [
            Log(f"ConnectionBind on {client.conn} refused ({code}: {why}): reset", "warning"),
            *self._stop_idle_timer(client.conn),
            Close(client.conn, reset=True),
        ]
        del self._clients[client.conn]
        return out

    # -- the pipe ------------------------------------------------------------------------------

    def _pipe(self, conn: ConnId, data: bytes) -> list[Effect]:
        client = self._clients.get(conn)
        if client is None or client.peer is None:
            return []
        return [Send(client.peer.conn, data, protocol="raw")]

    def _on_peer_bytes(self, peer: _Peer, data: bytes) -> list[Effect]:
        if peer.state is _PeerState.BOUND and peer.data_conn is not None:
            return [Send(peer.data_conn, data, protocol="raw")]
        alloc = peer.allocation
        over = None
        if len(peer.buffer) + len(data) > self.settings.early_data_limit:
            over = f"over {self.settings.early_data_limit} bytes (early_data_limit)"
        elif alloc.buffered + len(data) > self.settings.early_data_total:
            over = (
                f"bytes that would take the allocation's peers past "
                f"{self.settings.early_data_total} (early_data_total)"
            )
        if over is not None:
            # RFC 6062 §5.3 buffers (shrinking the TCP window); a simulator cannot push back on
            # the sender, so past the bound the peer is reset instead of growing memory.
            self._remove_peer(peer)
            return [
                Log(
                    f"peer {peer.remote} sent {over} before ConnectionBind 0x{peer.cid:08x}: reset",
                    "warning",
                ),
                StopTimer(BindTimer(peer.cid)),
                Close(peer.conn, reset=True),
            ]
        peer.buffer += data
        alloc.buffered += len(data)
        return []

    # -- closing -------------------------------------------------------------------------------

    def _on_closed(self, conn: ConnId, reset: bool) -> list[Effect]:
        client = self._clients.get(conn)
        if client is not None:
            return self._drop_client(client, reset=reset)
        peer = self._peers.get(conn)
        if peer is None:
            return []
        how = "reset" if reset else "closed"
        if peer.state is _PeerState.BOUND and peer.data_conn is not None:
            # RFC 6062 §5.5 (closing either side of a pair closes the other).
            data_conn = peer.data_conn
            self._remove_peer(peer)
            self._clients.pop(data_conn, None)
            return [
                Log(f"peer {peer.remote} {how}: closing data connection {data_conn}"),
                Close(data_conn, reset=reset),
            ]
        if peer.state is _PeerState.PENDING and peer.buffer and not reset:
            # Keep its bytes: a ConnectionBind within the timer still gets them, then a FIN.
            peer.closed_early = True
            return [Log(f"peer {peer.remote} closed before ConnectionBind; its bytes are kept")]
        self._remove_peer(peer)
        return [
            Log(f"peer {peer.remote} {how} before ConnectionBind 0x{peer.cid:08x}"),
            StopTimer(BindTimer(peer.cid)),
        ]

    def _drop_client(self, client: _Client, *, reset: bool) -> list[Effect]:
        """Forget a TURN-port connection that is gone, and what hangs on it."""
        self._clients.pop(client.conn, None)
        idle = self._stop_idle_timer(client.conn)
        if idle:
            return idle  # no allocation and no peer hang on it
        if client.role is _Role.DATA and client.peer is not None:
            peer = client.peer
            self._remove_peer(peer)
            how = "reset" if reset else "closed"
            return [
                Log(f"data connection {client.conn} {how}: closing peer {peer.remote}"),
                Close(peer.conn, reset=reset),
            ]
        if client.allocation is not None:
            # Closing the control connection deletes the allocation: it lives on that
            # connection's 5-tuple (RFC 5766 §2.2), which can no longer refresh it
            # (PROTOCOL.md §3.2; the RFC's exact wording is UNSURE there).
            return self._delete_allocation(client.allocation, "control connection closed")
        return []

    def _delete_allocation(self, alloc: _Allocation, why: str) -> list[Effect]:
        """RFC 5766 §5 / RFC 6062 §5.5: deleting an allocation closes its relay listener and
        every peer and data connection it has."""
        out: list[Effect] = [Log(f"allocation {alloc.relay} of {alloc.username!r} deleted: {why}")]
        timer = alloc.timer
        if timer in self._timers:
            self._timers.discard(timer)
            out.append(StopTimer(timer))
        if alloc.transport == TRANSPORT_TCP:
            out.append(Unlisten(alloc.relay))
        for peer in list(alloc.peers.values()):
            self._remove_peer(peer)
            if peer.state is _PeerState.CONNECTING:
                continue  # closed when (if) Connected arrives
            if peer.state is _PeerState.PENDING:
                out.append(StopTimer(BindTimer(peer.cid)))
            if not peer.closed_early:  # a peer that closed already gets no Close
                out.append(Close(peer.conn))
            if peer.data_conn is not None:
                self._clients.pop(peer.data_conn, None)
                out.append(Close(peer.data_conn))
        return out + self._forget_allocation(alloc)

    def _forget_allocation(self, alloc: _Allocation) -> list[Effect]:
        """Drop ``alloc`` from the tables; its control connection, if still open, is idle
        again (its idle timer restarts)."""
        if self._allocations.pop(alloc.ident, None) is not None:
            left = self._held[alloc.username] - 1
            if left:
                self._held[alloc.username] = left
            else:
                del self._held[alloc.username]
        if self._ports.get(alloc.relay.port) is alloc:
            self._ports.give_back(alloc.relay.port)
        owner = self._clients.get(alloc.control)
        if owner is not None and owner.allocation is alloc:
            owner.allocation = None
            return self._start_idle_timer(owner.conn)
        return []

    # -- timers --------------------------------------------------------------------------------

    def _start_bind_timer(self, peer: _Peer) -> StartTimer:
        timer = BindTimer(peer.cid)
        self._timers.add(timer)
        return StartTimer(timer, self.settings.bind_timeout)

    def _start_idle_timer(self, conn: ConnId) -> list[Effect]:
        """Watch ``conn`` until it allocates or binds. Past ``max_idle_connections`` the one
        idle the longest is reset to make room: refusing the newest instead would let a flood
        of idle connections lock every real client out (a client sends its Allocate at once,
        so it leaves this set long before it is the oldest)."""
        out: list[Effect] = []
        while len(self._idle) >= self.settings.max_idle_connections:
            oldest = next(iter(self._idle))
            out += self._stop_idle_timer(oldest)
            client = self._clients.pop(oldest, None)
            remote = f" from {client.remote}" if client is not None else ""
            out += [
                Log(
                    f"{oldest}{remote}: the oldest of {self.settings.max_idle_connections} "
                    "connections without an allocation (max_idle_connections), reset to make "
                    "room",
                    "warning",
                ),
                Close(oldest, reset=True),
            ]
        timer = IdleTimer(conn)
        self._idle[conn] = None
        self._timers.add(timer)
        out.append(StartTimer(timer, self.settings.idle_timeout))
        return out

    def _stop_idle_timer(self, conn: ConnId) -> list[Effect]:
        """The StopTimer of ``conn``'s idle timer if it runs, else nothing."""
        if conn not in self._idle:
            return []
        del self._idle[conn]
        timer = IdleTimer(conn)
        self._timers.discard(timer)
        return [StopTimer(timer)]

    def _on_timer(self, timer: object) -> list[Effect]:
        if not isinstance(timer, ExpiryTimer | BindTimer | IdleTimer) or timer not in self._timers:
            return []
        self._timers.discard(timer)
        if isinstance(timer, IdleTimer):
            return self._on_idle(timer.conn)
        if isinstance(timer, ExpiryTimer):
            alloc = self._allocations.get(timer.allocation)
            if alloc is None:
                return []
            why = f"expired after {alloc.lifetime} s without Refresh (RFC 5766 §5)"
            return self._delete_allocation(alloc, why)
        peer = self._cids.get(timer.connection_id)
        if peer is None or peer.state is not _PeerState.PENDING:
            return []
        self._remove_peer(peer)
        out: list[Effect] = [
            Log(
                f"no ConnectionBind for 0x{peer.cid:08x} within {self.settings.bind_timeout:g} s:"
                f" peer connection {peer.remote} closed (RFC 6062 §5.3)",
                "warning",
            )
        ]
        if not peer.closed_early:
            out.append(Close(peer.conn))
        return out

    def _on_idle(self, conn: ConnId) -> list[Effect]:
        self._idle.pop(conn, None)
        client = self._clients.pop(conn, None)
        if client is None:
            return []
        # Only connections without an allocation and not bound run this timer (it is stopped
        # when either comes), so nothing else hangs on this one.
        half = client.splitter.buffered
        stalled = f", {half} bytes of an unfinished message held" if half else ""
        return [
            Log(
                f"{conn} from {client.remote}: no allocation within "
                f"{self.settings.idle_timeout:g} s{stalled}: closed (RFC 5389 §7.2.2)",
                "warning",
            ),
            Close(conn),
        ]

    # -- helpers -------------------------------------------------------------------------------

    def _new_cid(self) -> int:
        while True:
            cid = self._rng.getrandbits(32)
            if cid and cid not in self._cids:
                return cid

    def _add_peer(self, peer: _Peer) -> None:
        self._peers[peer.conn] = peer
        self._cids[peer.cid] = peer
        peer.allocation.peers[peer.cid] = peer
        peer.allocation.waiting.add(peer.cid)  # connecting or waiting for its bind

    def _remove_peer(self, peer: _Peer) -> None:
        self._peers.pop(peer.conn, None)
        self._cids.pop(peer.cid, None)
        alloc = peer.allocation
        alloc.peers.pop(peer.cid, None)
        alloc.waiting.discard(peer.cid)
        alloc.buffered -= len(peer.buffer)
        peer.buffer.clear()
        self._timers.discard(BindTimer(peer.cid))

    def _with_allocation(self, handler: _AllocationHandler) -> _Handler:
        """``handler`` called with the client's allocation, once there is one (else 437) and
        the requesting user created it (else 441)."""

        def checked(client: _Client, msg: Message, auth: _Credentials, now: float) -> list[Effect]:
            alloc = client.allocation
            if alloc is None:
                why = f"{msg.method_name} without an allocation"
                return self._reject(client.conn, msg, 437, why, auth.key)
            if alloc.username != auth.username:
                return self._wrong_user(client.conn, msg, alloc, auth)
            return handler(client, alloc, msg, auth, now)

        return checked

    def _wrong_user(
        self, conn: ConnId, msg: Message, alloc: _Allocation, auth: _Credentials
    ) -> list[Effect]:
        why = (
            f"user {auth.username!r} is not {alloc.username!r}, who created the allocation "
            "(RFC 5766 §4)"
        )
        return self._reject(conn, msg, 441, why, auth.key)

    def _reject(
        self,
        conn: ConnId,
        msg: Message,
        code: int,
        why: str,
        key: bytes | None = None,
        *,
        extra: Mapping[str, Attribute] | None = None,
    ) -> list[Effect]:
        """An error response (MESSAGE-INTEGRITY with ``key`` when the request authenticated)."""
        data = self._build(msg.error(code), self._layout.error, extra or {}, key)
        return [
            Log(f"{msg.method_name} on {conn} rejected with {code}: {why}", "warning"),
            Send(conn, data, protocol="stun"),
        ]

    def _build(
        self,
        base: Message,
        layout: tuple[str, ...],
        values: Mapping[str, Attribute],
        key: bytes | None,
    ) -> bytes:
        """Encode ``base`` with the layout's attributes appended in order."""
        attributes = base.attributes
        for name in layout:
            if name == "MESSAGE-INTEGRITY":
                if key is not None:
                    attributes.append(_INTEGRITY)
            elif name == "FINGERPRINT":
                attributes.append(_FINGERPRINT)
            elif name == "SOFTWARE":
                if self._software is not None:
                    attributes.append(self._software)
            elif name in values:
                attributes.append(values[name])
        return base.encode(key)
