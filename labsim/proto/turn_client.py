"""CMS's TURN client for a TCP relay (RFC 5766 + RFC 6062), as a sans-IO machine.

An actor (CMS) embeds one :class:`TurnClient` per allocation. It speaks the machines'
contract (:mod:`labsim.proto.machine`): :meth:`TurnClient.handle` and the commands
(:meth:`~TurnClient.start`, :meth:`~TurnClient.create_permission`, :meth:`~TurnClient.connect_peer`,
:meth:`~TurnClient.release`) return a :class:`~labsim.proto.machine.Step` whose notices
(:data:`Notification`: :class:`Allocated`, :class:`PeerConnected` and so on) say what happened.
Its connections are named with its prefix (``"turn:ctl"``, ``"turn:data:1"``: names the trace
shows); its timers are :class:`TurnTimer` and :class:`TransactionTimer` values. The actor's
router (:mod:`labsim.proto.router`) learns both from the effects.

The call flow (PROTOCOL.md §1.7, §3.3, §10)::

    Connect turn:ctl -> server:3478
    Allocate [REQUESTED-TRANSPORT TCP, LIFETIME, FP]                   -> 401 (REALM, NONCE)
    Allocate [USERNAME, REALM, NONCE, REQUESTED-TRANSPORT, SOFTWARE, MI, FP] -> Success
    Refresh  [USERNAME, REALM, NONCE, LIFETIME, MI, FP]                -> Success (the lab: at once)
    CreatePermission [XOR-PEER-ADDRESS ip:0, auth] -> Success          (only with the setting on)
    <- ConnectionAttempt [XOR-PEER-ADDRESS, CONNECTION-ID] on turn:ctl
    Connect turn:data:1 -> server:3478
    ConnectionBind [CONNECTION-ID, USERNAME, REALM, NONCE, MI, FP]     -> Success: a raw pipe
    Binding Indication [FP] on turn:ctl 5 s after allocating (keepalive)
    Refresh [... LIFETIME 0 ...] at hang-up -> Success -> Close turn:ctl

With the default settings every message has the lab's size and attribute order (44, 148, 136,
136 and 28 bytes with Expressway-E's 52-character nonce). Behaviour the lab does not pin down is a
setting of :class:`TurnClientSettings`, never an ``if fault:`` branch.

No IO and no clock: time comes in as ``now``; randomness (transaction ids) only from the injected
:class:`random.Random`, so a run is repeatable.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass, field
from enum import Enum
from typing import Annotated

import annotated_types as at

from labsim.proto.events import (
    Address,
    Close,
    Closed,
    Connect,
    Connected,
    ConnectFailed,
    ConnId,
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
from labsim.proto.settings import (
    SETTINGS_CONFIG,
    Count,
    Port,
    PositiveSeconds,
    Seconds,
    SettingError,
    TextForm,
)
from labsim.wire import stun
from labsim.wire.errors import FramingError, StunError
from labsim.wire.framing import StunSplitter
from labsim.wire.stun import Class, Message, Method

#: RFC 5389 §7.2.2: over TCP there are no retransmissions; a transaction fails after Ti = 39.5 s.
TRANSACTION_TIMEOUT = 39.5

#: The text CMS logs when its TURN credentials are refused (PROTOCOL.md §6.2, Cisco 210800).
UNAUTHORIZED_REASON = "unauthorized - check credentials"


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TurnClientSettings:
    """How CMS talks TURN to Expressway-E. The defaults reproduce the lab capture (PROTOCOL.md
    §10). Where the server is and which peers to permit come from the lab around the client
    (:class:`TurnClient`'s arguments), not from here."""

    __pydantic_config__ = SETTINGS_CONFIG

    username: str = "turn"
    """TURN username (CMS ``/turnServers`` username; Expressway's local database)."""
    password: str = "secret"
    """TURN password; one the server does not know ends the allocation in 401 Unauthorized
    ("unauthorized - check credentials" in CMS's log)."""
    realm: Annotated[str, at.MinLen(1)] | None = None
    """The realm the server must challenge with; a 401 naming another fails the allocation
    before any credentials are sent (a server that is not the one configured). null (the
    lab, as CMS's /turnServers has no realm): the REALM of the server's 401 (RFC 5389
    §10.2.3)."""
    lifetime: Annotated[int, at.Interval(ge=0, le=0xFFFFFFFF)] = 600
    """LIFETIME asked for in the Allocate and every Refresh (lab: 600; RFC 5766 §2.2, §7)."""
    software: str | None = "CMS v2.2"
    """SOFTWARE in the authenticated Allocate (8 characters in the lab); null leaves it out."""
    fingerprint: bool = True
    """End every message with FINGERPRINT (RFC 5389 §15.5)."""
    refresh_after_allocate: bool = True
    """Send a Refresh right after the Allocate succeeds, as the lab's CMS does (§10 row 5)."""
    refresh: bool = True
    """Refresh the allocation before it expires (RFC 5766 §7); false lets it run out, and the
    server closes the relay after its lifetime."""
    refresh_margin: Seconds = 60.0
    """Refresh this many seconds before the granted lifetime runs out (RFC 5766 §7)."""
    keepalive_first: Seconds | None = 5.0
    """Seconds after allocating until the first Binding Indication on the control connection
    (the lab's keepalive, row 10: 5 s); null: no keepalive."""
    keepalive_interval: PositiveSeconds | None = 15.0
    """Seconds between later Binding Indications (unconfirmed for CMS); null: only the
    first."""
    create_permission: bool = False
    """Send CreatePermission for the Skype side (RFC 5766 §9). The lab shows none; a server
    with permission_policy rfc (coturn) needs it."""
    permission_refresh: PositiveSeconds = 240.0
    """Seconds between CreatePermission refreshes; permissions last 300 s (RFC 5766 §8)."""
    send_connection_bind: bool = True
    """Answer a ConnectionAttempt with a data connection and ConnectionBind (RFC 6062 §4.4);
    false: the server drops the peer after its bind_timeout."""
    max_stale_nonce_retries: Count = 3
    """How many 438 Stale Nonce answers one request may get before it is given up."""
    verify_integrity: bool = True
    """Discard responses to authenticated requests whose MESSAGE-INTEGRITY does not verify
    (RFC 5389 §10.2.3)."""
    connect_timeout: PositiveSeconds = 5.0
    """Seconds a TCP connect to the server may take."""
    transaction_timeout: PositiveSeconds = TRANSACTION_TIMEOUT
    """Seconds to wait for a response (RFC 5389 §7.2.2, Ti)."""


def _loopback(value: str) -> None:
    try:
        ip = ipaddress.IPv4Address(value)
    except ValueError as exc:
        raise SettingError((), f"not an IPv4 address in dotted form ({exc})") from None
    if not ip.is_loopback:
        # DESIGN.md: no socket ever targets a non-loopback address.
        raise SettingError((), f"{value} is not a loopback address (127.0.0.0/8): labsim "
                           "connects to nothing off loopback")  # fmt: skip


LoopbackIPv4 = Annotated[str, TextForm(_loopback, (("format", "ipv4"),))]
"""A real address on loopback (127.0.0.0/8), not a lab address."""


@dataclass(frozen=True)
class ExternalTurnServer:
    """A real TURN server (coturn, a real Expressway-E) standing in for Expressway-E's TURN
    service, on the live clock only (``actors.expressway_e.turn.external``). Expressway-E then
    runs no TURN server of its own; CMS dials Expressway-E's lab address at turn.port as before
    and the run carries the connection to ``address``:``port``, so the trace and the capture
    still read as the lab (10.48.54.229:3478). CMS authenticates with ``username`` and
    ``password`` (they replace cms.turn's). The relay the server reports in
    XOR-RELAYED-ADDRESS is what CMS offers: a loopback address is reached as it is;
    Expressway-E's lab address (coturn ``--external-ip 10.48.54.229/ADDRESS``) is carried to
    ``address`` at the same port, for every port Expressway-E's own SIP listeners do not
    hold."""

    __pydantic_config__ = SETTINGS_CONFIG

    address: LoopbackIPv4
    """The loopback address the server listens on and relays from, e.g. 127.0.0.1: a real
    address, never shown in the lab's bytes."""
    port: Port = 3478
    """The server's real TURN port (TCP)."""
    username: Annotated[str, at.MinLen(1)] = "turn"
    """The username CMS allocates with (CMS /turnServers username)."""
    password: str = "secret"
    """The password CMS allocates with; one the server does not accept ends the allocation in
    401 (the diagnosis: TURN authentication failed)."""
    realm: Annotated[str, at.MinLen(1)] | None = None
    """The realm the server is expected to challenge with (coturn -r); a 401 naming another
    fails the allocation before any credentials are sent. null: whatever realm the server
    names (RFC 5389 §10.2.3)."""


# ---------------------------------------------------------------------------------------------
# Notifications: client -> owner
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Allocated:
    """The Allocate succeeded: the relay exists (RFC 5766 §6.3)."""

    relayed: Address
    """XOR-RELAYED-ADDRESS: the relay candidate to put in SDP (Expressway-E 24000-29999)."""
    mapped: Address | None
    """XOR-MAPPED-ADDRESS: this client as the server sees it (None if the server left it out)."""
    lifetime: int
    """Seconds granted (LIFETIME)."""


@dataclass(frozen=True)
class AllocationFailed:
    """No allocation: the owner has no relay candidate."""

    code: int | None
    """The STUN error code (401, 442, 486, 508 ...); None when no error response said why."""
    reason: str
    """Why, in words (``"unauthorized - check credentials"`` for CMS's ICE failure 4)."""


@dataclass(frozen=True)
class Refreshed:
    """A Refresh succeeded; the allocation lives ``lifetime`` more seconds (RFC 5766 §7.3)."""

    lifetime: int
    """Seconds granted."""


@dataclass(frozen=True)
class PermissionCreated:
    """A CreatePermission succeeded (RFC 5766 §9.3)."""

    peer_hosts: tuple[str, ...]
    """The peer IPs it covered."""


@dataclass(frozen=True)
class PermissionFailed:
    """A CreatePermission was refused or went unanswered."""

    peer_hosts: tuple[str, ...]
    """The peer IPs it was for."""
    code: int | None
    """The error code (403 ...), None for no answer."""
    reason: str
    """Why, in words."""


@dataclass(frozen=True)
class PeerConnected:
    """ConnectionBind succeeded: ``conn`` is now a raw pipe to the peer (RFC 6062 §4.3, §4.4).

    The owner takes the connection over (:meth:`labsim.proto.router.Router.give`): the client
    keeps no state for it any more.
    """

    conn: ConnId
    """The data connection."""
    peer: Address | None
    """The peer at the far end of the relay (XOR-PEER-ADDRESS)."""
    early_data: bytes
    """Bytes that arrived after the ConnectionBind response in the same read: already the
    peer's raw bytes (RFC 6062 §5.3 has the server buffer and flush them)."""
    connection_id: int
    """CONNECTION-ID of the bound peer connection."""


@dataclass(frozen=True)
class PeerBindFailed:
    """A peer connection could not be bound (ConnectionBind or Connect error, reset, timeout)."""

    connection_id: int | None
    """CONNECTION-ID, None when a Connect failed before the server gave one."""
    reason: str
    """Why, in words."""
    peer: Address | None = None
    """The peer, when known."""
    code: int | None = None
    """The error code, when an error response said why."""


@dataclass(frozen=True)
class Released:
    """The allocation was given back (Refresh LIFETIME 0 answered) or never made; the control
    connection is closed."""


@dataclass(frozen=True)
class Expired:
    """The allocation is gone without a release: lifetime ran out, the server refused a
    Refresh with 437, or the control connection broke."""

    reason: str = "the allocation lifetime ran out without a successful Refresh"
    """Why, in words."""


@dataclass(frozen=True)
class TurnTimer:
    """One of a client's allocation timers."""

    client: str
    """The client's prefix: two clients in one actor keep their timers apart."""
    kind: TimerKind


class TimerKind(Enum):
    REFRESH = "refresh"
    """Refresh the allocation before its lifetime ends (RFC 5766 §7)."""
    EXPIRY = "expiry"
    """The lifetime is over without a successful Refresh (RFC 5766 §5)."""
    KEEPALIVE = "keepalive"
    """Binding Indication on the control connection (RFC 5389 §7.2)."""
    PERMISSION = "permission"
    """Refresh the permissions before their 300 s end (RFC 5766 §8)."""


@dataclass(frozen=True)
class TransactionTimer:
    """A request waiting for its answer (RFC 5389 §7.2.2: Ti over TCP)."""

    client: str
    """The client's prefix."""
    transaction_id: bytes
    """The request's transaction id."""


Notification = (
    Allocated
    | AllocationFailed
    | Refreshed
    | PermissionCreated
    | PermissionFailed
    | PeerConnected
    | PeerBindFailed
    | Released
    | Expired
)


class TurnState(Enum):
    """Where the allocation stands."""

    IDLE = "idle"
    CONNECTING = "connecting"  # TCP connect of the control connection
    CHALLENGING = "challenging"  # first, unauthenticated Allocate sent
    ALLOCATING = "allocating"  # authenticated Allocate sent
    ALLOCATED = "allocated"
    RELEASING = "releasing"  # Refresh LIFETIME 0 sent
    RELEASED = "released"
    FAILED = "failed"
    EXPIRED = "expired"


class TurnEvent(Enum):
    """What moves the allocation's state (:data:`TRANSITIONS`)."""

    START = "start: the control connection is opened (RFC 6062 §4.1: TCP to the TURN server)"
    CONNECTED = "control connection open: Allocate sent without credentials"
    CHALLENGED = "401 with REALM and NONCE: Allocate sent with them (RFC 5389 §10.2.3)"
    STALE_NONCE = "438 Stale Nonce: sent again with the new NONCE (RFC 5389 §10.2.3)"
    ALLOCATED = "Allocate Success Response: XOR-RELAYED-ADDRESS (RFC 5766 §6.3)"
    FAIL = "an error answer, no answer, or the connection lost before the allocation"
    EXPIRE = (
        "the lifetime ran out, a Refresh refused with 437, or the control connection lost "
        "(RFC 5766 §7)"
    )
    RELEASE = "the owner releases it (the call is over)"
    RELEASED = "the Refresh with LIFETIME 0 answered, or its connection gone"


#: The allocation's state machine as data (h11's ``_state.py`` is the model): for each state,
#: the events it allows and where each leads. :meth:`TurnClient._go` is the only way the state
#: moves; ``python -m labsim.actors.states --diagrams docs/`` draws it (docs/state-turn.md).
TRANSITIONS: dict[TurnState, dict[TurnEvent, TurnState]] = {
    TurnState.IDLE: {TurnEvent.START: TurnState.CONNECTING, TurnEvent.RELEASE: TurnState.RELEASED},
    TurnState.CONNECTING: {
        TurnEvent.CONNECTED: TurnState.CHALLENGING, TurnEvent.FAIL: TurnState.FAILED,
        TurnEvent.RELEASE: TurnState.RELEASED,
    },
    TurnState.CHALLENGING: {
        TurnEvent.CHALLENGED: TurnState.ALLOCATING, TurnEvent.STALE_NONCE: TurnState.ALLOCATING,
        TurnEvent.ALLOCATED: TurnState.ALLOCATED, TurnEvent.FAIL: TurnState.FAILED,
        TurnEvent.RELEASE: TurnState.RELEASED,
    },
    TurnState.ALLOCATING: {
        TurnEvent.CHALLENGED: TurnState.ALLOCATING, TurnEvent.STALE_NONCE: TurnState.ALLOCATING,
        TurnEvent.ALLOCATED: TurnState.ALLOCATED, TurnEvent.FAIL: TurnState.FAILED,
        TurnEvent.RELEASE: TurnState.RELEASED,
    },
    TurnState.ALLOCATED: {
        TurnEvent.EXPIRE: TurnState.EXPIRED, TurnEvent.RELEASE: TurnState.RELEASING,
    },
    TurnState.RELEASING: {
        TurnEvent.RELEASED: TurnState.RELEASED, TurnEvent.EXPIRE: TurnState.EXPIRED,
    },
    TurnState.FAILED: {TurnEvent.RELEASE: TurnState.RELEASED},
    TurnState.EXPIRED: {TurnEvent.RELEASE: TurnState.RELEASED},
    TurnState.RELEASED: {},
}  # fmt: skip

_TERMINAL = (TurnState.RELEASED, TurnState.FAILED, TurnState.EXPIRED)
_BEFORE_ALLOCATION = (TurnState.CONNECTING, TurnState.CHALLENGING, TurnState.ALLOCATING)


# ---------------------------------------------------------------------------------------------
# Internal records
# ---------------------------------------------------------------------------------------------


class _Kind(Enum):
    ALLOCATE = "Allocate"
    REFRESH = "Refresh"
    RELEASE = "Refresh (lifetime 0)"
    PERMISSION = "CreatePermission"
    CONNECT = "Connect"
    BIND = "ConnectionBind"


_METHODS = {
    _Kind.ALLOCATE: Method.ALLOCATE,
    _Kind.REFRESH: Method.REFRESH,
    _Kind.RELEASE: Method.REFRESH,
    _Kind.PERMISSION: Method.CREATE_PERMISSION,
    _Kind.CONNECT: Method.CONNECT,
    _Kind.BIND: Method.CONNECTION_BIND,
}


@dataclass
class _Transaction:
    """One outstanding request; a 401/438 retry sends it again under a new transaction id."""

    kind: _Kind
    conn: ConnId
    authenticated: bool
    stale_retries: int = 0
    peer_hosts: tuple[str, ...] = ()
    peer: Address | None = None
    connection_id: int | None = None

    @property
    def method(self) -> int:
        return _METHODS[self.kind]


@dataclass
class _DataConn:
    """An RFC 6062 data connection until its ConnectionBind succeeds."""

    conn: ConnId
    connection_id: int
    peer: Address | None
    # RFC 6062 §4.3: after the ConnectionBind response the bytes are the peer's, not STUN; the
    # splitter is fed one message at a time so they stay unparsed (take_buffered()).
    splitter: StunSplitter = field(default_factory=lambda: StunSplitter(allow_channel_data=False))
    tid: bytes | None = None


# Why a server refuses an Allocate, for the trace (RFC 5766 §6.2, §15; RFC 6062 §5.1).
_ALLOCATE_EXPLANATIONS: dict[int, str] = {
    300: "the server redirects to another one (Try Alternate); this client does not follow",
    400: "the server found the request malformed",
    403: "the server's policy forbids this client",
    437: "an allocation already exists on this connection (RFC 5766 §6.2)",
    441: "the username is not the one that created the allocation",
    442: "the TURN server has no TCP relay (Expressway before X8.9)",
    486: "this user has reached its allocation quota",
    508: "the TURN server has no relay ports left",
}
_CONNECT_EXPLANATIONS: dict[int, str] = {
    403: "the server's policy forbids this peer",
    446: "a connection to this peer already exists or is being set up (RFC 6062 §5.2)",
    447: "the server could not connect to the peer (RFC 6062 §5.2)",
}


def _error_of(message: Message) -> tuple[int | None, str]:
    attr = message.get(stun.ErrorCode)
    if attr is None:
        return None, "error response without ERROR-CODE"
    reason = attr.reason or stun.DEFAULT_REASONS.get(attr.code, stun.ERROR_NAMES.get(attr.code, ""))
    return attr.code, reason


# ---------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------


class TurnClient:
    """A TURN client with one TCP allocation (RFC 5766, RFC 6062), sans-IO.

    The owner calls :meth:`start`; its router gives :meth:`handle` the events of the
    client's connections and timers; every call returns a :class:`Step` of
    :data:`Notification`.
    """

    def __init__(
        self, settings: TurnClientSettings, rng: random.Random, *, server: Address,
        prefix: str = "turn", permission_peers: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        self.settings = settings
        #: The TURN server's address (CMS ``/turnServers`` serverAddress, TCP).
        self.server = server
        self.prefix = prefix
        #: What happened since the last step, for the owner (drained into each Step).
        self._notices: list[Notification] = []
        self._rng = rng
        self.control_conn: ConnId = f"{prefix}:ctl"
        self._refresh_timer = TurnTimer(prefix, TimerKind.REFRESH)
        self._expiry_timer = TurnTimer(prefix, TimerKind.EXPIRY)
        self._keepalive_timer = TurnTimer(prefix, TimerKind.KEEPALIVE)
        self._permission_timer = TurnTimer(prefix, TimerKind.PERMISSION)
        self._state = TurnState.IDLE
        self._ctl_open = False
        self._ctl_splitter = StunSplitter(allow_channel_data=False)
        self._realm: str | None = None
        self._nonce: str | None = None
        self._key: bytes | None = None
        self._txns: dict[bytes, _Transaction] = {}
        self._data: dict[ConnId, _DataConn] = {}
        self._data_count = 0
        #: Peer IPs to permit as soon as the allocation exists (more via ``create_permission``).
        self._permission_hosts: list[str] = list(dict.fromkeys(permission_peers))
        self._permission_timer_running = False
        self.relayed: Address | None = None
        self.mapped: Address | None = None
        self.lifetime: int | None = None
        self.expires_at: float | None = None

    def _go(self, event: TurnEvent) -> None:
        """Move along :data:`TRANSITIONS`; an event the current state does not allow is a bug
        of this machine, not of a peer (peers' messages are checked before they get here)."""
        target = TRANSITIONS[self._state].get(event)
        if target is None:
            raise RuntimeError(f"TURN client: {event.name} in state {self._state.name}")
        self._state = target

    # -- what the owner asks -------------------------------------------------------------------

    @property
    def state(self) -> TurnState:
        return self._state

    @property
    def realm(self) -> str | None:
        return self._realm

    @property
    def nonce(self) -> str | None:
        return self._nonce

    @property
    def permission_hosts(self) -> tuple[str, ...]:
        return tuple(self._permission_hosts)

    def _step(self, effects: list[Effect]) -> Step[Notification]:
        notices, self._notices = self._notices, []
        return Step(tuple(effects), tuple(notices))

    # -- commands ------------------------------------------------------------------------------

    def start(self, now: float) -> Step[Notification]:
        """Open the control connection; the Allocate follows on Connected (RFC 6062 §4.1)."""
        if self._state is not TurnState.IDLE:
            return Step()
        self._go(TurnEvent.START)
        server = self.server
        return Step.of(
            [
                Log(f"TURN: connecting to {server} over TCP for a TCP relay allocation"),
                Connect(self.control_conn, server, timeout=self.settings.connect_timeout),
            ]
        )

    def create_permission(self, peer_host: str, now: float) -> Step[Notification]:
        return self._step(self._create_permission(peer_host, now))

    def _create_permission(self, peer_host: str, now: float) -> list[Effect]:
        """Permit ``peer_host`` to connect to the relay (RFC 5766 §9, RFC 6062 §5.3).

        Only when the ``create_permission`` setting is on; before the allocation exists the
        host is remembered and permitted right after it.
        """
        if not self.settings.create_permission:
            return [
                Log(
                    f"TURN: no CreatePermission for {peer_host}: this CMS sends none "
                    "(as in the lab); a strict server will refuse the peer's connection"
                )
            ]
        new = peer_host not in self._permission_hosts
        if new:
            self._permission_hosts.append(peer_host)
        if self._state is TurnState.ALLOCATED:
            effects = self._send_permission((peer_host,), now)
            if not self._permission_timer_running:
                effects += self._start_permission_timer()
            return effects
        if self._state in (TurnState.IDLE, *_BEFORE_ALLOCATION) and new:
            return [Log(f"TURN: CreatePermission for {peer_host} will follow the allocation")]
        return []

    def connect_peer(self, peer: Address, now: float) -> Step[Notification]:
        """RFC 6062 §4.3 active path: ask the server to connect out to ``peer``."""
        if self._state is not TurnState.ALLOCATED:
            self._notices.append(PeerBindFailed(None, "no allocation to connect from", peer=peer))
            return self._step([Log(f"TURN: cannot Connect to {peer}: no allocation", "warning")])
        txn = _Transaction(_Kind.CONNECT, self.control_conn, authenticated=True, peer=peer)
        return self._step([Log(f"TURN: asking the server to connect to {peer}"),
                           *self._send(txn, now)])  # fmt: skip

    def release(self, now: float) -> Step[Notification]:
        return self._step(self._release(now))

    def _release(self, now: float) -> list[Effect]:
        """Give the allocation back at hang-up: Refresh with LIFETIME 0 (RFC 5766 §7.1), then
        close the control connection when it is answered."""
        state = self._state
        if state is TurnState.RELEASED or state is TurnState.RELEASING:
            return []
        if state in _TERMINAL:
            # Failed or expired: there is nothing to give back, and the owner, which is
            # hanging up, still hears that the allocation is over.
            self._go(TurnEvent.RELEASE)
            self._notices.append(Released())
            return [Log(f"TURN: nothing to release (allocation {state.name.lower()})")]
        effects = self._stop_everything()
        if state is TurnState.ALLOCATED:
            self._go(TurnEvent.RELEASE)
            txn = _Transaction(_Kind.RELEASE, self.control_conn, authenticated=True)
            effects.append(Log("TURN: releasing the allocation (Refresh with LIFETIME 0)"))
            return effects + self._send(txn, now)
        self._go(TurnEvent.RELEASE)
        effects += self._close_control()
        self._notices.append(Released())
        effects.append(Log("TURN: released before any allocation existed"))
        return effects

    # -- events --------------------------------------------------------------------------------

    def handle(self, event: Event, now: float) -> Step[Notification]:
        """Take an event of one of this client's connections or timers."""
        return self._step(self._handle(event, now))

    def _handle(self, event: Event, now: float) -> list[Effect]:
        if isinstance(event, TimerFired):
            return self._on_timer(event.timer, now)
        if isinstance(event, Connected | ConnectFailed | Received | Closed):
            if event.conn == self.control_conn:
                return self._on_control_event(event, now)
            if event.conn in self._data:
                return self._on_data_event(self._data[event.conn], event, now)
            if isinstance(event, Connected):
                # A data connection given up while it was being opened: close it now.
                return [Close(event.conn)]
        return []

    # -- control connection --------------------------------------------------------------------

    def _on_control_event(
        self, event: Connected | ConnectFailed | Received | Closed, now: float
    ) -> list[Effect]:
        if isinstance(event, Connected):
            if self._state is not TurnState.CONNECTING:
                # Released while the connect was under way: nothing left to say on it.
                return [] if self._ctl_open else [Close(self.control_conn)]
            self._ctl_open = True
            self._go(TurnEvent.CONNECTED)
            # RFC 6062 §4.1: REQUESTED-TRANSPORT 6 asks for a TCP relay. The first Allocate
            # carries no credentials: the server's 401 gives REALM and NONCE (RFC 5389 §10.2.1).
            txn = _Transaction(_Kind.ALLOCATE, self.control_conn, authenticated=False)
            return self._send(txn, now)
        if isinstance(event, ConnectFailed):
            if self._state is not TurnState.CONNECTING:
                return []
            return self._fail_allocation(
                None,
                f"cannot connect to the TURN server {self.server}: {event.reason}",
            )
        if isinstance(event, Closed):
            return self._on_control_closed(event.reset)
        return self._on_control_bytes(event.data, now)

    def _on_control_closed(self, reset: bool) -> list[Effect]:
        if not self._ctl_open:
            return []
        self._ctl_open = False
        how = "reset" if reset else "closed"
        if self._state in _BEFORE_ALLOCATION:
            return self._fail_allocation(
                None, f"the TURN server {how} the control connection before allocating"
            )
        if self._state is TurnState.ALLOCATED:
            # Closing the control connection deletes the allocation (PROTOCOL.md §3.2, UNSURE).
            return self._expire(f"the TURN server {how} the control connection")
        if self._state is TurnState.RELEASING:
            effects = self._stop_everything()
            self._go(TurnEvent.RELEASED)
            self._notices.append(Released())
            return [*effects, Log(f"TURN: control connection {how} while releasing")]
        return []

    def _on_control_bytes(self, data: bytes, now: float) -> list[Effect]:
        garbage: FramingError | None = None
        try:
            frames = self._ctl_splitter.feed(data)
        except FramingError as exc:
            # The whole messages before the garbage arrived intact: handle them first.
            frames, garbage = list(exc.messages), exc
        effects: list[Effect] = []
        for frame in frames:
            if not self._ctl_open:
                break
            try:
                message = stun.decode(frame)
            except StunError as exc:
                effects.append(Log(f"TURN: undecodable message ignored ({exc})", "warning"))
                continue
            effects += self._on_control_message(message, now)
        if garbage is None or not self._ctl_open:
            return effects
        effects.append(Log(f"TURN: control connection carries no valid STUN ({garbage})", "error"))
        effects += self._close_control(reset=True)
        if self._state in _BEFORE_ALLOCATION:
            return effects + self._fail_allocation(None, f"garbage from the server: {garbage}")
        if self._state is TurnState.ALLOCATED:
            return effects + self._expire(f"garbage on the control connection: {garbage}")
        return effects

    def _on_control_message(self, message: Message, now: float) -> list[Effect]:
        if message.cls in (Class.SUCCESS, Class.ERROR):
            return self._on_response(message, self.control_conn, now)
        if message.cls is Class.INDICATION and message.method == Method.CONNECTION_ATTEMPT:
            return self._on_connection_attempt(message, now)
        return [Log(f"TURN: {message.summary()} from the server ignored")]

    def _on_connection_attempt(self, message: Message, now: float) -> list[Effect]:
        """RFC 6062 §4.4: a peer connected to the relayed address."""
        if self._state is not TurnState.ALLOCATED:
            return [Log("TURN: ConnectionAttempt without an allocation ignored", "warning")]
        if message.get(stun.MessageIntegrity) is not None and not self._authentic(message):
            return [
                Log(
                    "TURN: ConnectionAttempt with a MESSAGE-INTEGRITY that does not verify "
                    "discarded (RFC 5389 §10.2.3)",
                    "warning",
                )
            ]
        cid = message.get(stun.ConnectionId)
        if cid is None:
            return [Log("TURN: ConnectionAttempt without CONNECTION-ID ignored", "warning")]
        xpeer = message.get(stun.XorPeerAddress)
        peer = Address(xpeer.address, xpeer.port) if xpeer is not None else None
        if not self.settings.send_connection_bind:
            return [
                Log(
                    f"TURN: ConnectionAttempt from {peer} not answered: this CMS never sends "
                    "ConnectionBind; the server drops the peer after 30 s (RFC 6062 §5.3)",
                    "warning",
                )
            ]
        # RFC 6062 §4.4: a new TCP connection to the same server address as the control
        # connection; its first message is ConnectionBind with the CONNECTION-ID.
        return self._open_data(cid.value, peer)

    # -- data connections (RFC 6062 §4.3, §4.4) -----------------------------------------------

    def _open_data(self, connection_id: int, peer: Address | None) -> list[Effect]:
        self._data_count += 1
        conn = f"{self.prefix}:data:{self._data_count}"
        self._data[conn] = _DataConn(conn, connection_id, peer)
        return [
            Log(f"TURN: peer {peer} (connection id {connection_id:#x}): opening data connection"),
            Connect(conn, self.server, timeout=self.settings.connect_timeout),
        ]

    def _on_data_event(
        self, dc: _DataConn, event: Connected | ConnectFailed | Received | Closed, now: float
    ) -> list[Effect]:
        if isinstance(event, Connected):
            txn = _Transaction(
                _Kind.BIND,
                dc.conn,
                authenticated=True,
                peer=dc.peer,
                connection_id=dc.connection_id,
            )
            return self._send(txn, now)
        if isinstance(event, ConnectFailed):
            return self._bind_failed(dc, f"data connection failed: {event.reason}", close=False)
        if isinstance(event, Closed):
            how = "reset" if event.reset else "closed"
            return self._bind_failed(
                dc, f"the server {how} the data connection before ConnectionBind succeeded",
                close=False,
            )  # fmt: skip
        return self._on_data_bytes(dc, event.data, now)

    def _on_data_bytes(self, dc: _DataConn, data: bytes, now: float) -> list[Effect]:
        effects: list[Effect] = []
        chunk = data
        while dc.conn in self._data:
            try:
                # One message at a time: after the ConnectionBind response the stream is raw.
                frames = dc.splitter.feed(chunk, max_messages=1)
            except FramingError as exc:
                return effects + self._bind_failed(dc, f"no STUN on the data connection ({exc})")
            chunk = b""
            if not frames:
                break
            try:
                message = stun.decode(frames[0])
            except StunError as exc:
                return effects + self._bind_failed(dc, f"undecodable ConnectionBind answer ({exc})")
            if message.cls in (Class.SUCCESS, Class.ERROR):
                effects += self._on_response(message, dc.conn, now)
            else:
                effects.append(Log(f"TURN: {message.summary()} on a data connection ignored"))
        return effects

    def _hand_over(self, dc: _DataConn, message: Message) -> list[Effect]:
        # RFC 6062 §4.3, §4.5: from the byte after the ConnectionBind success response on, the data
        # connection relays raw bytes; whatever followed it in this read is the peer's.
        early = dc.splitter.take_buffered()
        del self._data[dc.conn]
        self._notices.append(PeerConnected(dc.conn, dc.peer, early, dc.connection_id))
        extra = f", {len(early)} early bytes" if early else ""
        return [Log(f"TURN: {dc.conn} bound to peer {dc.peer}: now a raw pipe{extra}")]

    def _bind_failed(
        self, dc: _DataConn, reason: str, *, code: int | None = None, close: bool = True
    ) -> list[Effect]:
        self._data.pop(dc.conn, None)
        effects: list[Effect] = []
        if dc.tid is not None and self._txns.pop(dc.tid, None) is not None:
            effects.append(StopTimer(self._txn_timer(dc.tid)))
        if close:
            # RFC 6062 §4.3: on a ConnectionBind error the client closes the data connection.
            effects.append(Close(dc.conn))
        self._notices.append(PeerBindFailed(dc.connection_id, reason, dc.peer, code))
        effects.append(Log(f"TURN: binding peer {dc.peer} failed: {reason}", "warning"))
        return effects

    # -- requests and responses ----------------------------------------------------------------

    def _attributes(self, txn: _Transaction) -> list[stun.Attribute]:
        """The attribute layout of each request, in the lab's order (PROTOCOL.md §10)."""
        s = self.settings
        head: list[stun.Attribute] = []
        tail: list[stun.Attribute] = []
        if txn.kind is _Kind.ALLOCATE:
            if txn.authenticated:
                tail = [stun.RequestedTransport(stun.TRANSPORT_TCP)]
                if s.software is not None:
                    tail.append(stun.Software(s.software))
            else:
                head = [stun.RequestedTransport(stun.TRANSPORT_TCP), stun.Lifetime(s.lifetime)]
        elif txn.kind is _Kind.REFRESH:
            tail = [stun.Lifetime(s.lifetime)]
        elif txn.kind is _Kind.RELEASE:
            tail = [stun.Lifetime(0)]  # RFC 5766 §7.1: LIFETIME 0 deletes the allocation
        elif txn.kind is _Kind.PERMISSION:
            # RFC 5766 §9.1: only the IP matters, so the port is 0.
            head = [stun.XorPeerAddress(host, 0) for host in txn.peer_hosts]
        elif txn.kind is _Kind.CONNECT:
            assert txn.peer is not None
            head = [stun.XorPeerAddress(txn.peer.host, txn.peer.port)]
        elif txn.kind is _Kind.BIND:
            assert txn.connection_id is not None
            head = [stun.ConnectionId(txn.connection_id)]
        attributes = head
        if txn.authenticated:
            # RFC 5389 §10.2.2: USERNAME, REALM and NONCE, then MESSAGE-INTEGRITY.
            assert self._realm is not None and self._nonce is not None
            attributes += [
                stun.Username(s.username),
                stun.Realm(self._realm),
                stun.Nonce(self._nonce),
            ]
        attributes += tail
        if txn.authenticated:
            attributes.append(stun.MessageIntegrity())
        if s.fingerprint:
            attributes.append(stun.Fingerprint())
        return attributes

    def _send(self, txn: _Transaction, now: float) -> list[Effect]:
        """Send ``txn`` under a fresh transaction id (RFC 5389 §10.2.1: a retry is a new
        transaction) and start its timeout."""
        tid = self._rng.randbytes(stun.TRANSACTION_ID_LENGTH)
        message = Message.request(txn.method, self._attributes(txn), transaction_id=tid)
        wire = message.encode(self._key if txn.authenticated else None)
        self._txns[tid] = txn
        if txn.kind is _Kind.BIND:
            self._data[txn.conn].tid = tid
        return [
            Send(txn.conn, wire, protocol="stun"),
            StartTimer(self._txn_timer(tid), self.settings.transaction_timeout),
        ]

    def _txn_timer(self, tid: bytes) -> TransactionTimer:
        return TransactionTimer(self.prefix, tid)

    def _authentic(self, message: Message) -> bool:
        """RFC 5389 §10.2.3: MESSAGE-INTEGRITY present and right with the long-term key."""
        if not self.settings.verify_integrity:
            return True
        return self._key is not None and message.verify_integrity(self._key)

    def _trusted(self, message: Message, txn: _Transaction) -> bool:
        if stun.Fingerprint in message and not message.verify_fingerprint():
            return False  # RFC 5389 §7.3: a wrong FINGERPRINT means it is not STUN for us
        if not txn.authenticated:
            return True  # no key agreed yet: nothing to check
        if message.cls is Class.ERROR:
            code, _ = _error_of(message)
            # A 401/438 answers credentials the server could not use, so it cannot carry an MI
            # we could check; other errors are checked when they carry one.
            if code in (401, 438) or stun.MessageIntegrity not in message:
                return True
        return self._authentic(message)

    def _on_response(self, message: Message, conn: ConnId, now: float) -> list[Effect]:
        tid = message.transaction_id
        txn = self._txns.get(tid)
        if txn is None or txn.conn != conn or txn.method != message.method:
            return [Log(f"TURN: {message.summary()} matches no request: ignored", "warning")]
        if not self._trusted(message, txn):
            return [
                Log(
                    f"TURN: {message.summary()} discarded: MESSAGE-INTEGRITY or FINGERPRINT "
                    "does not verify (RFC 5389 §10.2.3)",
                    "warning",
                )
            ]
        del self._txns[tid]
        effects: list[Effect] = [StopTimer(self._txn_timer(tid))]
        if message.cls is Class.SUCCESS:
            return effects + self._on_success(txn, message, now)
        code, reason = _error_of(message)
        if code == 401 and not txn.authenticated:
            return effects + self._on_challenge(txn, message, now)
        if code == 438:
            return effects + self._on_stale_nonce(txn, message, now)
        return effects + self._on_error(txn, code, reason)

    def _take_credentials(self, message: Message) -> bool:
        realm = message.get(stun.Realm)
        nonce = message.get(stun.Nonce)
        if nonce is None or (realm is None and self._realm is None):
            return False
        if realm is not None and realm.value != self._realm:
            self._realm = realm.value
            # RFC 5389 §15.4: key = MD5(username ":" realm ":" SASLprep(password)).
            s = self.settings
            self._key = stun.long_term_key(s.username, realm.value, s.password)
        self._nonce = nonce.value
        return True

    def _on_challenge(self, txn: _Transaction, message: Message, now: float) -> list[Effect]:
        """RFC 5389 §10.2.3: a 401 to a request without credentials; resend with them."""
        expected, offered = self.settings.realm, message.get(stun.Realm)
        if expected is not None and offered is not None and offered.value != expected:
            return self._fail_allocation(
                401, f"the server's realm is {offered.value!r}, not {expected!r}: wrong server?"
            )
        if not self._take_credentials(message):
            return self._fail_allocation(401, "401 without REALM and NONCE: cannot authenticate")
        if txn.kind is _Kind.ALLOCATE:
            self._go(TurnEvent.CHALLENGED)
        txn.authenticated = True
        user = self.settings.username
        log = Log(f"TURN: challenged by realm {self._realm!r}: authenticating as {user!r}")
        return [log, *self._send(txn, now)]

    def _on_stale_nonce(self, txn: _Transaction, message: Message, now: float) -> list[Effect]:
        """RFC 5389 §10.2.3: 438 Stale Nonce: retry with the new NONCE, a bounded number of
        times."""
        if txn.stale_retries >= self.settings.max_stale_nonce_retries:
            return self._on_error(
                txn, 438, f"Stale Nonce {txn.stale_retries + 1} times in a row: giving up"
            )
        if not self._take_credentials(message):
            return self._on_error(txn, 438, "438 Stale Nonce without a new NONCE")
        txn.stale_retries += 1
        txn.authenticated = True
        if txn.kind is _Kind.ALLOCATE:
            self._go(TurnEvent.STALE_NONCE)
        log = Log(f"TURN: {txn.kind.value}: 438 Stale Nonce, retrying with the new nonce")
        return [log, *self._send(txn, now)]

    def _on_success(self, txn: _Transaction, message: Message, now: float) -> list[Effect]:
        kind = txn.kind
        if kind is _Kind.ALLOCATE:
            return self._on_allocated(message, now)
        if kind is _Kind.REFRESH:
            if self._state is not TurnState.ALLOCATED:
                return []
            attr = message.get(stun.Lifetime)
            lifetime = attr.value if attr is not None else self.settings.lifetime
            if lifetime == 0:
                return self._expire("the server answered a Refresh with LIFETIME 0")
            self._notices.append(Refreshed(lifetime))
            return self._arm_lifetime(lifetime, now)
        if kind is _Kind.RELEASE:
            effects = self._stop_everything() + self._close_control()
            self._go(TurnEvent.RELEASED)
            self._notices.append(Released())
            return [*effects, Log("TURN: allocation released")]
        if kind is _Kind.PERMISSION:
            self._notices.append(PermissionCreated(txn.peer_hosts))
            return [Log(f"TURN: permission for {', '.join(txn.peer_hosts)} installed")]
        if kind is _Kind.CONNECT:
            cid = message.get(stun.ConnectionId)
            if cid is None:
                self._notices.append(
                    PeerBindFailed(None, "Connect Success without CONNECTION-ID", txn.peer)
                )
                return [Log("TURN: Connect Success without CONNECTION-ID", "warning")]
            # RFC 6062 §4.3: bind a new data connection to the CONNECTION-ID within 30 s.
            return self._open_data(cid.value, txn.peer)
        # ConnectionBind
        dc = self._data.get(txn.conn)
        return self._hand_over(dc, message) if dc is not None else []

    def _on_error(self, txn: _Transaction, code: int | None, reason: str) -> list[Effect]:
        """A final error (or no answer, code None) for ``txn``."""
        kind = txn.kind
        text = f"{code} {reason}" if code is not None else reason
        if kind is _Kind.ALLOCATE:
            if code == 401:
                # RFC 5389 §10.2.3: a 401 to an authenticated request means bad credentials.
                return self._fail_allocation(
                    401,
                    UNAUTHORIZED_REASON,
                    f"Allocate refused: {text} — ICE failure 4 ({UNAUTHORIZED_REASON})",
                )
            if code is None:
                return self._fail_allocation(None, reason, f"Allocate failed: {reason}")
            why = _ALLOCATE_EXPLANATIONS.get(code)
            return self._fail_allocation(
                code, reason, f"Allocate refused: {text}" + (f" — {why}" if why else "")
            )
        if kind is _Kind.REFRESH:
            if code == 437:
                # RFC 5766 §7.3: 437 to a Refresh means the allocation no longer exists.
                return self._expire(f"Refresh refused: {text}")
            return [Log(f"TURN: Refresh failed: {text}; the allocation may expire", "warning")]
        if kind is _Kind.RELEASE:
            effects = self._stop_everything() + self._close_control()
            self._go(TurnEvent.RELEASED)
            self._notices.append(Released())
            return [*effects, Log(f"TURN: release answered {text}; closing anyway", "warning")]
        if kind is _Kind.PERMISSION:
            self._notices.append(PermissionFailed(txn.peer_hosts, code, reason))
            hosts = ", ".join(txn.peer_hosts)
            return [Log(f"TURN: CreatePermission for {hosts} failed: {text}", "warning")]
        if kind is _Kind.CONNECT:
            why = _CONNECT_EXPLANATIONS.get(code) if code is not None else None
            self._notices.append(PeerBindFailed(None, reason, txn.peer, code))
            detail = f"{text}" + (f" — {why}" if why else "")
            return [Log(f"TURN: Connect to {txn.peer} refused: {detail}", "warning")]
        dc = self._data.get(txn.conn)
        if dc is None:
            return []
        dc.tid = None
        return self._bind_failed(dc, f"ConnectionBind refused: {text}", code=code)

    # -- allocation lifetime -------------------------------------------------------------------

    def _on_allocated(self, message: Message, now: float) -> list[Effect]:
        relayed = message.get(stun.XorRelayedAddress)
        if relayed is None:
            return self._fail_allocation(None, "Allocate Success without XOR-RELAYED-ADDRESS")
        mapped = message.get(stun.XorMappedAddress)
        attr = message.get(stun.Lifetime)
        lifetime = attr.value if attr is not None else self.settings.lifetime
        self._go(TurnEvent.ALLOCATED)
        self.relayed = Address(relayed.address, relayed.port)
        self.mapped = Address(mapped.address, mapped.port) if mapped is not None else None
        self._notices.append(Allocated(self.relayed, self.mapped, lifetime))
        effects: list[Effect] = [Log(f"TURN: relay allocated at {self.relayed} for {lifetime} s")]
        if self.settings.refresh_after_allocate:
            # The lab's CMS refreshes at once (PROTOCOL.md §10 row 5).
            effects += self._send(_Transaction(_Kind.REFRESH, self.control_conn, True), now)
        if self.settings.create_permission and self._permission_hosts:
            effects += self._send_permission(tuple(self._permission_hosts), now)
            effects += self._start_permission_timer()
        effects += self._arm_lifetime(lifetime, now)
        if self.settings.keepalive_first is not None:
            effects.append(StartTimer(self._keepalive_timer, self.settings.keepalive_first))
        return effects

    def _arm_lifetime(self, lifetime: int, now: float) -> list[Effect]:
        """RFC 5766 §7: refresh before the lifetime runs out; notice if it does."""
        self.lifetime = lifetime
        self.expires_at = now + lifetime
        margin = self.settings.refresh_margin
        delay = lifetime - margin if lifetime > 2 * margin else lifetime / 2
        expiry = StartTimer(self._expiry_timer, lifetime)
        if not self.settings.refresh:
            return [expiry]
        return [StartTimer(self._refresh_timer, delay), expiry]

    def _send_permission(self, hosts: tuple[str, ...], now: float) -> list[Effect]:
        txn = _Transaction(_Kind.PERMISSION, self.control_conn, True, peer_hosts=hosts)
        return self._send(txn, now)

    def _start_permission_timer(self) -> list[Effect]:
        # RFC 5766 §8: a permission lasts 300 s; refresh it before.
        self._permission_timer_running = True
        return [StartTimer(self._permission_timer, self.settings.permission_refresh)]

    def _on_timer(self, timer: object, now: float) -> list[Effect]:
        if isinstance(timer, TransactionTimer):
            return self._on_transaction_timeout(timer.transaction_id)
        if self._state is not TurnState.ALLOCATED:
            return []
        if timer == self._refresh_timer:
            return self._send(_Transaction(_Kind.REFRESH, self.control_conn, True), now)
        if timer == self._expiry_timer:
            return self._expire("the allocation lifetime ran out without a successful Refresh")
        if timer == self._keepalive_timer:
            # A Binding Indication (RFC 5389 §7.2: never answered) keeps the control connection
            # and the NATs and firewalls on its path alive; FINGERPRINT only, 28 bytes.
            tid = self._rng.randbytes(stun.TRANSACTION_ID_LENGTH)
            attributes = [stun.Fingerprint()] if self.settings.fingerprint else []
            indication = Message.indication(Method.BINDING, attributes, transaction_id=tid)
            effects: list[Effect] = [Send(self.control_conn, indication.encode(), "stun")]
            if self.settings.keepalive_interval is not None:
                effects.append(StartTimer(timer, self.settings.keepalive_interval))
            return effects
        if timer == self._permission_timer and self._permission_hosts:
            effects = self._send_permission(tuple(self._permission_hosts), now)
            return effects + self._start_permission_timer()
        return []

    def _on_transaction_timeout(self, tid: bytes) -> list[Effect]:
        txn = self._txns.pop(tid, None)
        if txn is None:
            return []
        seconds = self.settings.transaction_timeout
        reason = f"no answer to {txn.kind.value} within {seconds:g} s (RFC 5389 §7.2.2)"
        if txn.kind is _Kind.BIND:
            dc = self._data.get(txn.conn)
            if dc is None:
                return []
            dc.tid = None
            return self._bind_failed(dc, reason)
        return self._on_error(txn, None, reason)

    # -- endings -------------------------------------------------------------------------------

    def _stop_everything(self) -> list[Effect]:
        """Stop every timer, forget every transaction, close data connections not yet bound."""
        effects: list[Effect] = [
            StopTimer(timer)
            for timer in (
                self._refresh_timer,
                self._expiry_timer,
                self._keepalive_timer,
                self._permission_timer,
            )
        ]
        self._permission_timer_running = False
        effects += [StopTimer(self._txn_timer(tid)) for tid in self._txns]
        self._txns.clear()
        effects += [Close(conn) for conn in self._data]
        self._data.clear()
        return effects

    def _close_control(self, *, reset: bool = False) -> list[Effect]:
        if not self._ctl_open:
            return []
        self._ctl_open = False
        return [Close(self.control_conn, reset=reset)]

    def _fail_allocation(
        self, code: int | None, reason: str, log_text: str | None = None
    ) -> list[Effect]:
        effects = self._stop_everything() + self._close_control()
        self._go(TurnEvent.FAIL)
        self._notices.append(AllocationFailed(code, reason))
        effects.append(Log(f"TURN: {log_text or 'allocation failed: ' + reason}", "error"))
        return effects

    def _expire(self, reason: str) -> list[Effect]:
        effects = self._stop_everything() + self._close_control()
        self._go(TurnEvent.EXPIRE)
        self._notices.append(Expired(reason))
        effects.append(Log(f"TURN: allocation lost: {reason}", "error"))
        return effects
