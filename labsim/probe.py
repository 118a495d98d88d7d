"""``labsim probe``: act as CMS against a real TURN server and say which step fails, and why.

What an engineer runs against their own Expressway-E (or coturn) before blaming Skype: the
probe plays both ends of the relay that the sharing call needs (Cisco 212580, PROTOCOL.md §3.3).
As CMS it drives labsim's own TURN client (:class:`labsim.proto.turn_client.TurnClient`, the
machine the simulated CMS uses, so the bytes are CMS's); as the Skype side's peer it connects
to the relayed address itself. The steps, in call order:

==================  ===========================================================================
control             TCP connect to the TURN port (RFC 6062 §4.1)
allocate            Allocate REQUESTED-TRANSPORT TCP -> 401 (REALM, NONCE) -> authenticated
                    Allocate -> Success with XOR-RELAYED-ADDRESS (RFC 5766 §6, RFC 6062 §5.1)
permission          CreatePermission for the peer's address (RFC 5766 §9; RFC 6062 §5.3 drops
                    peers without one)
peer-connect        the peer's TCP connect to the relayed address (the Skype Edge's, in the lab)
connection-attempt  ConnectionAttempt on the control connection (RFC 6062 §4.4)
connection-bind     a new data connection, ConnectionBind -> Success: a raw pipe (§4.4, §5.4)
check-to-peer       an RFC 4571-framed ICE Binding Request from the CMS side through the relay,
                    answered by the peer (the lab's 108-byte check, RFC 6544 §3)
check-from-peer     the same from the peer to the CMS side: the pair is valid both ways
release             Refresh LIFETIME 0 -> Success (RFC 5766 §7.1)
==================  ===========================================================================

Every step has its own deadline (``timeout``), so a server that stalls costs at most that per
step; the first step that fails ends the probe (an allocation already made is still released)
and the verdict names it with what it most likely means on the real systems.

This is a tool module (net layer): it owns an asyncio loop and real sockets, to any host the
user names. The protocol machines it drives stay sans-IO; :class:`_Driver` carries out their
effects, as :mod:`labsim.net.live` does for a lab run, but without the lab's loopback mapping
(the addresses here are the user's real ones). Hand-written: no library probes an RFC 6062
relay (``turnutils_uclient`` needs coturn's own peer tool, prints no per-step verdict and
cannot send the MS-ICE2 checks CMS and Skype exchange).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import os
import random
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO, TypeVar

from labsim import __version__
from labsim.actors.lab import CallSettings, CmsSettings, SkypeClientSettings
from labsim.net.live import reset_transport
from labsim.proto.appsharing import PRIORITIES
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
    TimerId,
)
from labsim.proto.ice import (
    CheckFailed,
    CheckSettings,
    CheckStream,
    IceNotice,
)
from labsim.proto.machine import Step
from labsim.proto.turn_client import (
    Allocated,
    AllocationFailed,
    Notification,
    PeerBindFailed,
    PeerConnected,
    PermissionCreated,
    PermissionFailed,
    Released,
    TurnClient,
    TurnClientSettings,
    TurnState,
)
from labsim.wire import WireError, stun
from labsim.wire.framing import Rfc4571Splitter, StunSplitter

#: The TURN port when HOST:PORT gives none (RFC 5766 §4: 3478 for TURN over TCP).
DEFAULT_PORT = 3478
DEFAULT_TIMEOUT = 5.0
#: Bounds of ``timeout``: a step may wait at most this long (the CLI refuses more).
MIN_TIMEOUT, MAX_TIMEOUT = 0.1, 300.0

#: Longer than any probe runs (nine steps of at most MAX_TIMEOUT each).
_NEVER = 3600.0

#: The steps in order: (name, what it does, for people).
STEPS: tuple[tuple[str, str], ...] = (
    ("control", "TCP connect to the TURN port"),
    ("allocate", "Allocate (TCP relay), 401 challenge, authenticated Allocate"),
    ("permission", "CreatePermission for the peer's address"),
    ("peer-connect", "the peer connects to the relayed address"),
    ("connection-attempt", "ConnectionAttempt on the control connection"),
    ("connection-bind", "data connection and ConnectionBind"),
    ("check-to-peer", "framed ICE check CMS -> peer through the relay, answered"),
    ("check-from-peer", "framed ICE check peer -> CMS through the relay, answered"),
    ("release", "Refresh with LIFETIME 0"),
)
STEP_NAMES = tuple(name for name, _ in STEPS)

Status = Literal["passed", "failed", "skipped"]


class ProbeInputError(ValueError):
    """What the user gave cannot be probed (a bad HOST:PORT, a name that does not resolve):
    the CLI's exit 2."""


# ---------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------


def parse_target(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``HOST`` (port 3478), ``[IPv6]:PORT`` or ``[IPv6]`` -> (host, port)."""
    text = text.strip()
    if not text:
        raise ProbeInputError("--turn is empty: give HOST:PORT, e.g. expe.example.com:3478")
    port_text: str | None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not host:
            raise ProbeInputError(f"--turn {text!r}: an IPv6 address is written [ADDRESS]:PORT")
        if rest and not rest.startswith(":"):
            raise ProbeInputError(f"--turn {text!r}: expected ':PORT' after ']'")
        port_text = rest[1:] if rest else None
        _ip(host, f"--turn {text!r}")
    elif text.count(":") > 1:
        raise ProbeInputError(f"--turn {text!r}: write an IPv6 address as [ADDRESS]:PORT")
    else:
        host, sep, port_text_ = text.partition(":")
        port_text = port_text_ if sep else None
        if not host:
            raise ProbeInputError(f"--turn {text!r}: no host before ':'")
        if any(c.isspace() or c in "/@?#" for c in host):
            raise ProbeInputError(f"--turn {text!r}: {host!r} is not a host name or address")
    if port_text is None:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ProbeInputError(f"--turn {text!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def _ip(text: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ProbeInputError(f"{what}: {text!r} is not an IP address") from None


@dataclass(frozen=True)
class ProbeConfig:
    """What to probe and how."""

    host: str
    """The TURN server's host name or address, as the user wrote it."""
    port: int
    username: str
    password: str = field(repr=False)
    realm: str | None = None
    """The realm the credentials belong to, when the user knows it: compared with the server's
    REALM (the probe always answers with the server's, RFC 5389 §10.2.3)."""
    peer_address: str | None = None
    """The peer address to permit; None: this machine's address as the server sees it
    (XOR-MAPPED-ADDRESS)."""
    timeout: float = DEFAULT_TIMEOUT
    """Seconds each step may take."""
    relay_host: str | None = None
    """Where the peer connects instead of the relayed address's host (the port stays the
    relayed one): the server's own address when its relayed address is a static NAT's public
    one this machine cannot reach (no hairpin). None: the relayed address, as the Skype Edge."""

    def __post_init__(self) -> None:
        if not MIN_TIMEOUT <= self.timeout <= MAX_TIMEOUT:
            raise ProbeInputError(
                f"--timeout {self.timeout:g}: give {MIN_TIMEOUT:g} to {MAX_TIMEOUT:g} seconds"
            )
        if not self.username:
            raise ProbeInputError("--user is empty")
        if self.peer_address is not None:
            object.__setattr__(self, "peer_address", _ip(self.peer_address, "--peer-address"))
        if self.relay_host is not None:
            object.__setattr__(self, "relay_host", _ip(self.relay_host, "--relay-host"))

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass
class StepResult:
    name: str
    title: str
    status: Status = "skipped"
    ms: float | None = None
    """How long the step took, milliseconds (None: not run)."""
    detail: str = ""
    """What happened."""
    cause: str = ""
    """For a failed step: what it most likely means, in an engineer's words."""


@dataclass(frozen=True)
class WireRecord:
    """One message the probe sent or received."""

    ms: float
    conn: str
    """``control``, ``data`` (the RFC 6062 data connection) or ``peer``."""
    direction: Literal["sent", "received"]
    summary: str


@dataclass
class ProbeResult:
    config: ProbeConfig
    address: tuple[str, int] | None = None
    """The address the name resolved to and was probed."""
    steps: list[StepResult] = field(
        default_factory=lambda: [StepResult(name, title) for name, title in STEPS]
    )
    messages: list[WireRecord] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    """The TURN client's own notes (what it decided and why)."""
    relayed: Address | None = None
    mapped: Address | None = None
    realm: str | None = None

    def step(self, name: str) -> StepResult:
        return self.steps[STEP_NAMES.index(name)]

    @property
    def failed(self) -> StepResult | None:
        """The first failed step (the release after an earlier failure is cleanup: the first
        failure is the verdict)."""
        return next((s for s in self.steps if s.status == "failed"), None)

    @property
    def passed(self) -> bool:
        return all(s.status == "passed" for s in self.steps)

    def verdict(self) -> str:
        failed = self.failed
        total = sum(s.ms or 0.0 for s in self.steps)
        if failed is None and self.passed:
            return (
                f"verdict: PASS - {self.config.target} relays TCP for CMS: all {len(self.steps)} "
                f"steps passed in {total:.0f} ms"
            )
        if failed is None:  # pragma: no cover - a step neither passed nor failed: a bug
            return "verdict: FAIL - the probe stopped before every step ran"
        return f"verdict: FAIL at {failed.name} - {failed.cause or failed.detail}"

    def to_json(self) -> dict[str, Any]:
        c = self.config
        failed = self.failed
        return {
            "labsim": __version__,
            "target": {"host": c.host, "port": c.port,
                       "address": list(self.address) if self.address else None},
            "user": c.username,
            "realm_expected": c.realm,
            "realm": self.realm,
            "peer_address": c.peer_address,
            "relay_host": c.relay_host,
            "timeout": c.timeout,
            "passed": self.passed,
            "failed_step": failed.name if failed else None,
            "verdict": self.verdict(),
            "relayed": str(self.relayed) if self.relayed else None,
            "mapped": str(self.mapped) if self.mapped else None,
            "steps": [dataclasses.asdict(s) for s in self.steps],
            "messages": [dataclasses.asdict(m) for m in self.messages],
            "logs": self.logs,
        }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The driver: the TURN client's effects on real sockets
# ---------------------------------------------------------------------------------------------


@dataclass
class _ConnState:
    status: Literal["connecting", "open", "failed", "closed"] = "connecting"
    reason: str = ""
    reset: bool = False
    local: Address | None = None
    opened: float | None = None
    """When the connect succeeded (seconds since the start); None: it never did."""


class _Stream(asyncio.Protocol):
    def __init__(self, driver: _Driver, conn: ConnId, remote: Address) -> None:
        self.driver = driver
        self.conn = conn
        self.remote = remote

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.driver.made(self.conn, self.remote, transport)

    def data_received(self, data: bytes) -> None:
        self.driver.event(Received(self.conn, data))

    def eof_received(self) -> bool:
        return False  # close our side too: connection_lost(None) follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.driver.lost(self.conn, exc)


def _connect_failure(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, OSError):
        # asyncio puts its own words in strerror ("Connect call failed …"); the errno's are
        # the ones people know.
        return os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


T = TypeVar("T")


class _Driver:
    """Carries out the effects of the TURN client (and the peer's connection) on asyncio
    sockets, feeds it the events, and keeps what the steps wait for."""

    def __init__(self, result: ProbeResult, client: TurnClient, t0: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.result = result
        self.client = client
        self.t0 = t0
        self.conns: dict[ConnId, _ConnState] = {}
        self.transports: dict[ConnId, asyncio.Transport] = {}
        self.connecting: dict[ConnId, asyncio.Task[None]] = {}
        self.timers: dict[TimerId, asyncio.TimerHandle] = {}
        #: Connections the TURN client no longer owns: the data connection once bound, the
        #: peer's; their bytes go to these handlers.
        self.taken: dict[ConnId, Callable[[bytes], None]] = {}
        self.notices: list[Notification] = []
        #: Every STUN message received on the control connection, decoded apart from the
        #: client (it sees the same bytes): what the steps report.
        self.control_in: list[stun.Message] = []
        self.control_at: list[float] = []
        """When each of ``control_in`` arrived."""
        #: The client's warnings (a response discarded, an undecodable message), with when.
        self.warnings: list[tuple[float, str]] = []
        self._observer: StunSplitter | None = StunSplitter(allow_channel_data=False)
        self.changed = asyncio.Event()
        self.error: BaseException | None = None
        #: Called with each notice as it comes, before any step sees it: a data connection
        #: changes hands there, so no byte after the ConnectionBind answer goes astray.
        self.on_notice: Callable[[Notification], None] = lambda _n: None

    # -- time and records ----------------------------------------------------------------------

    def now(self) -> float:
        return self.loop.time() - self.t0

    def record(self, conn: ConnId, direction: Literal["sent", "received"], summary: str) -> None:
        self.result.messages.append(WireRecord(round(self.now() * 1000, 3), _role(conn, self),
                                               direction, summary))  # fmt: skip

    # -- the TURN client -----------------------------------------------------------------------

    def apply(self, step: Step[Notification]) -> None:
        for effect in step.effects:
            self._effect(effect)
        for notice in step.notices:
            self.on_notice(notice)
        self.notices += step.notices
        self.changed.set()

    def _effect(self, effect: Effect) -> None:
        match effect:
            case Send(conn=conn, data=data):
                if effect.protocol == "stun":
                    self._record_stun(conn, "sent", data)
                self.write(conn, data)
            case Connect():
                self.connect(effect.conn, effect.remote, effect.timeout)
            case Close(conn=conn, reset=reset):
                self.close(conn, reset)
            case StartTimer(timer=timer, delay=delay):
                old = self.timers.pop(timer, None)
                if old is not None:
                    old.cancel()
                self.timers[timer] = self.loop.call_later(delay, self._fire, timer)
            case StopTimer(timer=timer):
                handle = self.timers.pop(timer, None)
                if handle is not None:
                    handle.cancel()
            case Log(text=text, level=lvl):
                self.result.logs.append(f"{self.now() * 1000:9.1f} ms  {lvl}: {text}")
                if lvl != "info":
                    self.warnings.append((self.now(), text.removeprefix("TURN: ")))
            case _:  # Listen, Unlisten: a client never asks for them
                raise RuntimeError(f"the TURN client asked for {effect!r}")

    def _record_stun(
        self, conn: ConnId, direction: Literal["sent", "received"], data: bytes
    ) -> None:
        try:
            summary = stun.decode(data).summary()
        except WireError as exc:
            summary = f"undecodable STUN ({exc})"
        self.record(conn, direction, summary)

    def _fire(self, timer: TimerId) -> None:
        self.timers.pop(timer, None)
        self.event(TimerFired(timer))

    def event(self, event: Event) -> None:
        """One event from a socket or a timer: to whoever owns it now."""
        try:
            if isinstance(event, Received) and event.conn in self.taken:
                self.taken[event.conn](event.data)
            elif isinstance(event, Received | Connected | ConnectFailed | Closed) and (
                event.conn == PEER
            ):
                pass  # the peer's connection events are read from self.conns
            else:
                if isinstance(event, Received) and event.conn == self.client.control_conn:
                    self._observe(event.data)
                self.apply(self.client.handle(event, self.now()))
        except Exception as exc:  # a bug of labsim's: end the probe with it (exit 3)
            self.error = exc
        self.changed.set()

    def control_partial(self) -> int:
        """Bytes of the control connection waiting for the rest of their message."""
        return self._observer.buffered if self._observer is not None else 0

    def _observe(self, data: bytes) -> None:
        if self._observer is None:
            return
        try:
            frames = self._observer.feed(data)
        except WireError as exc:
            frames = list(getattr(exc, "messages", ()))
            self._observer = None  # the client fails the connection; nothing more to read
            self.record(self.client.control_conn, "received", f"bytes that are no STUN ({exc})")
        for frame in frames:
            try:
                message = stun.decode(frame)
            except WireError as exc:
                self.record(self.client.control_conn, "received", f"undecodable STUN ({exc})")
                continue
            self.control_in.append(message)
            self.control_at.append(self.now())
            self.record(self.client.control_conn, "received", message.summary())

    # -- sockets -------------------------------------------------------------------------------

    def connect(self, conn: ConnId, remote: Address, timeout: float) -> None:
        self.conns[conn] = _ConnState()
        self.connecting[conn] = self.loop.create_task(self._connect(conn, remote, timeout))

    async def _connect(self, conn: ConnId, remote: Address, timeout: float) -> None:
        try:
            await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: _Stream(self, conn, remote), remote.host, remote.port
                ),
                timeout,
            )
        except asyncio.CancelledError:
            raise
        except (OSError, TimeoutError) as exc:
            self.connecting.pop(conn, None)
            state = self.conns[conn]
            if state.status != "connecting":
                return
            state.status, state.reason = "failed", _connect_failure(exc)
            self.event(ConnectFailed(conn, remote, state.reason))
            return
        self.connecting.pop(conn, None)

    def made(self, conn: ConnId, remote: Address, transport: asyncio.BaseTransport) -> None:
        """A connect of ours succeeded: :class:`Connected` at once, before any byte the peer
        sent with it (a server that talks first must be heard after the connect)."""
        assert isinstance(transport, asyncio.Transport)
        state = self.conns[conn]
        if state.status != "connecting":  # given up meanwhile
            transport.abort()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        name = transport.get_extra_info("sockname")
        self.transports[conn] = transport
        state.status, state.opened = "open", self.now()
        state.local = Address(str(name[0]), int(name[1])) if name else None
        self.event(Connected(conn, state.local or Address("0.0.0.0", 0), remote))

    def write(self, conn: ConnId, data: bytes) -> None:
        transport = self.transports.get(conn)
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def close(self, conn: ConnId, reset: bool = False) -> None:
        task = self.connecting.pop(conn, None)
        if task is not None:
            task.cancel()
        transport = self.transports.pop(conn, None)
        state = self.conns.get(conn)
        if state is not None and state.status in ("connecting", "open"):
            state.status = "closed"
        if transport is None:
            return
        if reset:
            reset_transport(transport)
        else:
            transport.close()

    def lost(self, conn: ConnId, exc: Exception | None) -> None:
        had = self.transports.pop(conn, None)
        state = self.conns.get(conn)
        if had is None or state is None:
            return  # we closed it ourselves: no event for it
        state.status = "closed"
        state.reset = exc is not None
        state.reason = "reset" if exc is not None else "closed"
        self.event(Closed(conn, reset=state.reset))

    async def shutdown(self) -> None:
        for handle in self.timers.values():
            handle.cancel()
        self.timers.clear()
        tasks = list(self.connecting.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.connecting.clear()
        for conn in list(self.transports):
            self.close(conn)
        await asyncio.sleep(0)  # let the transports run connection_lost

    # -- waiting -------------------------------------------------------------------------------

    async def until(self, found: Callable[[], T], deadline: float) -> T | None:
        """The first non-None value of ``found()``, checked after every event, or None when
        ``deadline`` (seconds since the start) passes first."""
        while True:
            self.changed.clear()
            if self.error is not None:
                raise self.error
            value = found()
            if value is not None:
                return value
            remaining = deadline - self.now()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                pass

    def take(self, *kinds: type) -> Notification | None:
        """The first notice of these kinds, removed from the list."""
        for i, notice in enumerate(self.notices):
            if isinstance(notice, kinds):
                del self.notices[i]
                return notice
        return None


PEER: ConnId = "peer"


def _role(conn: ConnId, driver: _Driver) -> str:
    if conn == driver.client.control_conn:
        return "control"
    return "peer" if conn == PEER else "data"


# ---------------------------------------------------------------------------------------------
# The probe
# ---------------------------------------------------------------------------------------------


def _client_settings(config: ProbeConfig) -> TurnClientSettings:
    """CMS's TURN client as the lab has it, with the user's credentials and what a probe needs:
    CreatePermission on, no immediate Refresh, no keepalive or refresh timers (the probe lasts
    seconds), and the step timeout as the connect timeout. The steps' deadlines decide when a
    request is unanswered, so the client's own transaction timeout is set past the probe's
    whole life: it never fires late, in a later step, with a notice that is not that step's."""
    lab = CmsSettings().turn or TurnClientSettings()
    return dataclasses.replace(
        lab, username=config.username, password=config.password, create_permission=True,
        refresh_after_allocate=False, refresh=False, keepalive_first=None,
        connect_timeout=config.timeout, transaction_timeout=_NEVER,
    )  # fmt: skip


class _Probe:
    def __init__(self, config: ProbeConfig, result: ProbeResult, say: Callable[[StepResult], None]):
        self.config = config
        self.result = result
        self.say = say
        self.rng = random.SystemRandom()  # transaction ids for a real server: unpredictable
        self.deadline = 0.0
        self.began = 0.0
        self.attempt_at = 0.0
        #: When the step's result came, if it came before the step looked (None: when seen).
        self.ended: float | None = None
        self.peer_host = ""
        #: The bound data connection and the peer as the server named it.
        self.data_conn: ConnId = ""
        self.cms_peer = Address("0.0.0.0", 0)
        #: The two ends of the checks (made once the pipe is up) and what each end said.
        self.cms_checks: CheckStream | None = None
        self.peer_checks: CheckStream | None = None
        self.ice_notes: dict[str, list[IceNotice]] = {"data": [], "peer": []}
        #: Bytes that reached an end before its checks existed (the server's early data).
        self.early: dict[str, bytes] = {"data": b"", "peer": b""}
        #: Each end's own cut of the framed stream, for the record (None after bad framing).
        self.record_splitters: dict[str, Rfc4571Splitter | None] = {
            "data": Rfc4571Splitter(), "peer": Rfc4571Splitter(),
        }  # fmt: skip

    async def run(self) -> None:
        c = self.config
        loop = asyncio.get_running_loop()
        host, port = await _resolve(c.host, c.port, c.timeout)
        self.result.address = (host, port)
        client = TurnClient(_client_settings(c), self.rng, server=Address(host, port),
                            prefix="probe")  # fmt: skip
        self.d = _Driver(self.result, client, loop.time())
        self.d.on_notice = self._notice
        self.client = client
        steps: dict[str, Callable[[StepResult], Awaitable[bool]]] = {
            "control": self._control, "allocate": self._allocate,
            "permission": self._permission, "peer-connect": self._peer_connect,
            "connection-attempt": self._connection_attempt,
            "connection-bind": self._connection_bind, "check-to-peer": self._check_to_peer,
            "check-from-peer": self._check_from_peer,
        }  # fmt: skip
        try:
            for name, fn in steps.items():
                if not await self._run_step(name, fn):
                    break
            # After a failure too: an allocation the probe made is given back (cleanup).
            await self._run_step("release", self._release)
        finally:
            await self.d.shutdown()

    def _notice(self, notice: Notification) -> None:
        if isinstance(notice, PeerConnected):
            # From the byte after the ConnectionBind answer the connection is the pipe's
            # (RFC 6062 §4.5): the CMS side of the checks takes it now.
            self.data_conn = notice.conn
            self.d.taken[notice.conn] = self._data_in
            if notice.early_data:
                self._data_in(notice.early_data)

    async def _run_step(self, name: str, fn: Callable[[StepResult], Awaitable[bool]]) -> bool:
        step = self.result.step(name)
        if name == "release" and not self._allocated():
            step.detail = "no allocation to release"
            self.say(step)
            return False
        self._begin(self.d.now())
        self.ended = None
        ok: bool = await fn(step)
        end = self.ended if self.ended is not None else self.d.now()
        step.ms = round(max(0.0, end - self.began) * 1000, 1)
        step.status = "passed" if ok else "failed"
        self.say(step)
        return ok

    def _begin(self, t: float) -> None:
        """The step began at ``t``: its time and its deadline count from there. A step whose
        first message the client sent on its own during the step before (the Allocate on the
        connect, ConnectionBind on the ConnectionAttempt) begins then."""
        self.began, self.deadline = t, t + self.config.timeout

    def _allocated(self) -> bool:
        return self.client.state is TurnState.ALLOCATED

    def _fail(self, step: StepResult, detail: str, cause: str) -> bool:
        step.detail, step.cause = detail, cause
        return False

    def _no_answer(self, step: StepResult, detail: str, cause: str) -> bool:
        """A step that timed out: when the server did answer, but with something the client
        threw away (a FINGERPRINT or MESSAGE-INTEGRITY that does not verify, bytes that do not
        decode, an answer to no request of ours), that is the cause, not a silent server."""
        unusable = [text for t, text in self.d.warnings if t >= self.began]
        partial = self.d.control_partial()
        if partial and not unusable:
            return self._fail(
                step, f"{detail}; {partial} bytes came that are not a whole STUN message",
                "the server sent part of a message and stopped (or its STUN length is wrong): "
                "a broken TURN server, or a middlebox cutting the stream",
            )  # fmt: skip
        if not unusable:
            return self._fail(step, detail, cause)
        return self._fail(
            step, f"{detail}; discarded: {unusable[-1]}",
            f"the server answers, but not with anything a TURN client can use: {unusable[-1]}",
        )  # fmt: skip

    def _control_lost(self) -> str | None:
        state = self.d.conns.get(self.client.control_conn)
        if state is not None and state.status == "closed":
            return "reset" if state.reset else "closed"
        return None

    # -- control -------------------------------------------------------------------------------

    async def _control(self, step: StepResult) -> bool:
        c = self.config
        self.d.apply(self.client.start(self.d.now()))
        ctl = self.client.control_conn
        state = await self.d.until(
            lambda: s if (s := self.d.conns.get(ctl)) and s.status != "connecting" else None,
            self.deadline + 0.5,
        )
        address = self.result.address
        named = address is not None and address[0] != c.host
        where = f"{c.target}" + (f" ({address[0]})" if address is not None and named else "")
        if state is None or state.status == "failed" and state.reason == "timeout":
            return self._fail(
                step, f"no answer to the TCP connect to {where} within {c.timeout:g} s",
                f"nothing answers on TCP {c.target}: a firewall drops it, the host is down, or "
                "its TURN service listens elsewhere (Expressway-E: TCP 3478, or 443 when TURN "
                "on TCP 443 is on)",
            )  # fmt: skip
        if state.status == "failed" and state.reason == "refused":
            return self._fail(
                step, f"TCP connect to {where} refused",
                f"nothing listens on TCP {c.target}: the TURN service is off, the port is wrong, "
                "or (Expressway X8.11+) TURN moved to TCP 443, which stops 3478",
            )  # fmt: skip
        if state.status == "failed":
            return self._fail(step, f"TCP connect to {where} failed: {state.reason}",
                              f"this machine cannot reach {c.target}: {state.reason}")  # fmt: skip
        # Open, or open and already over: what follows is the Allocate's to judge (the client
        # sent it on the connect, and a quick server may have answered and hung up already).
        local = f" from {state.local}" if state.local else ""
        step.detail = f"connected to {where}{local}"
        return True

    # -- allocate ------------------------------------------------------------------------------

    async def _allocate(self, step: StepResult) -> bool:
        c = self.config
        self._begin(self.d.conns[self.client.control_conn].opened or self.d.now())  # Allocate sent
        found = await self.d.until(lambda: self.d.take(Allocated, AllocationFailed), self.deadline)
        challenges = [m for m in self.d.control_in if _is_error(m, stun.Method.ALLOCATE, 401)]
        realm = next((r.value for m in challenges if (r := m.get(stun.Realm))), None)
        self.result.realm = self.client.realm or realm
        mismatch = ""
        if c.realm is not None and self.result.realm is not None and c.realm != self.result.realm:
            mismatch = f"the server's realm is {self.result.realm!r}, not {c.realm!r}"
        if isinstance(found, Allocated):
            self.result.relayed, self.result.mapped = found.relayed, found.mapped
            how = f"401 realm {self.result.realm!r}, then " if challenges else "no challenge, "
            mapped = f", mapped {found.mapped}" if found.mapped else ", no XOR-MAPPED-ADDRESS"
            step.detail = f"{how}relayed {found.relayed}{mapped}, lifetime {found.lifetime} s"
            if mismatch:
                step.detail += f" (note: {mismatch}; the probe used the server's, as CMS does)"
            return True
        if found is None:
            if challenges:
                return self._no_answer(
                    step, f"401 challenge, then no answer to the authenticated Allocate within "
                    f"{c.timeout:g} s",
                    "the server stalls after its challenge: it is overloaded, or a middlebox "
                    "drops the second request",
                )  # fmt: skip
            return self._no_answer(
                step, f"no answer to the Allocate within {c.timeout:g} s",
                f"the server accepted TCP but never answered: {c.target} is not a TURN server "
                "over TCP (a TLS or HTTP port?), or it stalls",
            )  # fmt: skip
        assert isinstance(found, AllocationFailed)
        return self._fail(step, *_allocation_failure(found, c, mismatch))

    # -- permission ----------------------------------------------------------------------------

    async def _permission(self, step: StepResult) -> bool:
        peer = self._peer_host()
        self.peer_host = peer
        self.d.apply(self.client.create_permission(peer, self.d.now()))
        found = await self.d.until(
            lambda: self.d.take(PermissionCreated, PermissionFailed) or self._lost_notice(),
            self.deadline,
        )
        source = "given with --peer-address" if self.config.peer_address else (
            "this machine as the server sees it" if self.result.mapped else
            "this machine's own address (the server gave no XOR-MAPPED-ADDRESS)"
        )  # fmt: skip
        if isinstance(found, PermissionCreated):
            step.detail = f"permission for {peer} ({source})"
            return True
        if isinstance(found, PermissionFailed):
            refused = _code_text(found.code, found.reason)
            return self._fail(step, f"CreatePermission for {peer} refused: {refused}",
                              _permission_cause(found.code, peer))  # fmt: skip
        if isinstance(found, str):
            return self._fail(step, f"the server {found} the control connection",
                              "the server dropped the allocation on CreatePermission")  # fmt: skip
        return self._no_answer(
            step, f"no answer to CreatePermission for {peer} within {self.config.timeout:g} s",
            "the server stalls on CreatePermission",
        )  # fmt: skip

    def _peer_host(self) -> str:
        if self.config.peer_address is not None:
            return self.config.peer_address
        if self.result.mapped is not None:
            return self.result.mapped.host
        state = self.d.conns.get(self.client.control_conn)
        return state.local.host if state and state.local else "0.0.0.0"

    def _lost_notice(self) -> str | None:
        return self._control_lost()

    # -- the peer ------------------------------------------------------------------------------

    async def _peer_connect(self, step: StepResult) -> bool:
        advertised = self.result.relayed
        assert advertised is not None
        relayed = advertised
        if self.config.relay_host is not None:
            relayed = Address(self.config.relay_host, advertised.port)
        self.d.taken[PEER] = self._peer_in
        self.d.connect(PEER, relayed, self.config.timeout)
        state = await self.d.until(
            lambda: s if (s := self.d.conns.get(PEER)) and s.status != "connecting" else None,
            self.deadline + 0.5,
        )
        t = f"{self.config.timeout:g} s"
        if state is None or state.status == "failed" and state.reason == "timeout":
            return self._fail(
                step, f"no answer to the TCP connect to the relayed address {relayed} within {t}",
                f"a firewall drops TCP to the relay port {relayed.port}: the Skype Edge could not "
                "reach it either (Expressway-E: open TCP 24000-29999 on its public address), or "
                f"{relayed.host} is not reachable from here (a static NAT address seen from "
                "inside? --relay-host tries the server's own address)",
            )  # fmt: skip
        if state.status == "failed" and state.reason == "refused":
            return self._fail(
                step, f"TCP connect to the relayed address {relayed} refused",
                f"nothing accepts on {relayed}: the server advertises a relay address it does not "
                "listen on (a static NAT that does not forward the relay range?) or a firewall "
                "rejects the relay ports",
            )  # fmt: skip
        if state.status == "failed" and state.reason == "reset":
            return self._fail(
                step, f"the server reset the connection to the relayed address {relayed}",
                "the server took the peer's connection and reset it: no permission for the "
                "peer's address as the server sees it (RFC 6062 §5.3; the permission was for "
                f"{self.peer_host}). If a NAT rewrites this machine's address, give "
                "--peer-address",
            )  # fmt: skip
        if state.status == "failed":
            return self._fail(
                step,
                f"TCP connect to the relayed address {relayed} failed: {state.reason}",
                f"cannot reach {relayed}: {state.reason}",
            )
        step.detail = f"connected to {relayed}" + (f" from {state.local}" if state.local else "")
        if relayed != advertised:
            step.detail += f" (--relay-host, instead of {advertised})"
        return True

    async def _connection_attempt(self, step: StepResult) -> bool:
        self._begin(self.d.conns[PEER].opened or self.d.now())  # the server knew of the peer then

        def seen() -> stun.Message | str | None:
            for m, t in zip(self.d.control_in, self.d.control_at, strict=True):
                if m.method == stun.Method.CONNECTION_ATTEMPT and m.cls is stun.Class.INDICATION:
                    self.attempt_at = self.ended = t
                    return m
            peer = self.d.conns[PEER]
            if peer.status == "closed":
                return f"peer-{peer.reason}"
            lost = self._control_lost()
            return f"control-{lost}" if lost else None

        found = await self.d.until(seen, self.deadline)
        t = f"{self.config.timeout:g} s"
        if isinstance(found, stun.Message):
            xpeer = found.get(stun.XorPeerAddress)
            cid = found.get(stun.ConnectionId)
            who = f"{xpeer.address}:{xpeer.port}" if xpeer else "no XOR-PEER-ADDRESS"
            step.detail = f"peer {who}, CONNECTION-ID " + (f"{cid.value:#x}" if cid else "none")
            if xpeer is not None and xpeer.address != self.peer_host:
                step.detail += (f" (the server sees the peer as {xpeer.address}, the permission "
                                f"was for {self.peer_host})")  # fmt: skip
            return True
        permission = f"the permission was for {self.peer_host}"
        if found is not None and found.startswith("peer-"):
            how = found[5:]
            return self._fail(
                step, f"the server {how} the peer's connection without a ConnectionAttempt",
                f"the server accepted the peer and dropped it: no permission for the peer's "
                f"address as the server sees it (RFC 6062 §5.3; {permission}). If a NAT "
                "rewrites this machine's address, give --peer-address",
            )  # fmt: skip
        if found is not None:
            return self._fail(
                step,
                f"the server {found[8:]} the control connection",
                "the server dropped the allocation when the peer connected",
            )
        return self._fail(
            step, f"no ConnectionAttempt within {t} of the peer's connect",
            "the relay port took the peer's connection but the server never told the client: "
            f"the server does not relay TCP to a TURN client (RFC 6062), or drops peers without "
            f"a permission silently ({permission}), or something else answers on the relay port",
        )  # fmt: skip

    async def _connection_bind(self, step: StepResult) -> bool:
        self._begin(self.attempt_at)  # the client opened the data connection on it
        found = await self.d.until(
            lambda: self.d.take(PeerConnected, PeerBindFailed) or self._lost_notice(),
            self.deadline,
        )
        if isinstance(found, PeerConnected):
            self.cms_peer = found.peer or Address("0.0.0.0", 0)
            state = self.d.conns.get(found.conn)
            local = f" from {state.local}" if state and state.local else ""
            step.detail = f"data connection{local} bound: a raw pipe to the peer"
            return True
        if isinstance(found, PeerBindFailed):
            return self._fail(step, f"ConnectionBind failed: {found.reason}",
                              _bind_cause(found, self.config))  # fmt: skip
        if isinstance(found, str):
            return self._fail(
                step,
                f"the server {found} the control connection",
                "the server dropped the allocation during ConnectionBind",
            )
        return self._no_answer(
            step, f"no answer to ConnectionBind within {self.config.timeout:g} s",
            "the server stalls on the data connection: ConnectionBind unanswered",
        )  # fmt: skip

    # -- checks --------------------------------------------------------------------------------

    def _streams(self) -> None:
        """Both ends of the candidate pair as the lab's call has them (CMS controlling, its
        108-byte check; the Skype side's 88-byte one), then the bytes that came early."""
        cms, skype, call = CmsSettings(), SkypeClientSettings(), CallSettings()
        assert self.result.relayed is not None
        self.cms_checks = CheckStream(
            CheckSettings(cms.ice, call.controlling("cms"), PRIORITIES[("relay", "TCP-PASS")],
                          call.check_layout("cms")),
            skype.ice, self.cms_peer, self.rng,
        )  # fmt: skip
        self.peer_checks = CheckStream(
            CheckSettings(skype.ice, call.controlling("skype_client"),
                          PRIORITIES[("relay", "TCP-ACT")], call.check_layout("skype_client")),
            cms.ice, self.result.relayed, self.rng,
        )  # fmt: skip
        for side, handler in (("data", self._data_in), ("peer", self._peer_in)):
            early, self.early[side] = self.early[side], b""
            if early:
                handler(early)

    def _data_in(self, data: bytes) -> None:
        self._feed(self.data_conn, "data", self.cms_checks, data)

    def _peer_in(self, data: bytes) -> None:
        self._feed(PEER, "peer", self.peer_checks, data)

    def _feed(self, conn: ConnId, side: str, checks: CheckStream | None, data: bytes) -> None:
        if checks is None:
            self.early[side] += data
            return
        for summary in self._frames(side, data):
            self.d.record(conn, "received", summary)
        out, notes = checks.feed(data)
        self.ice_notes[side] += notes
        for answer in out:
            self.d.record(conn, "sent", _frame_summary(answer))
            self.d.write(conn, answer)

    def _frames(self, side: str, data: bytes) -> list[str]:
        """Summaries of the framed messages in ``data``, for the record (the check streams
        parse the same bytes for real)."""
        splitter = self.record_splitters[side]
        if splitter is None:
            return []
        try:
            frames = splitter.feed(data)
        except WireError as exc:
            self.record_splitters[side] = None
            return [f"bytes that are no RFC 4571 frame ({exc})"]
        return [_summary(frame) for frame in frames]

    async def _check_to_peer(self, step: StepResult) -> bool:
        self._streams()
        assert self.cms_checks is not None and self.peer_checks is not None
        return await self._check(step, self.data_conn, self.cms_checks, self.peer_checks,
                                 "the CMS side", "the peer", "data", "peer")  # fmt: skip

    async def _check_from_peer(self, step: StepResult) -> bool:
        assert self.cms_checks is not None and self.peer_checks is not None
        return await self._check(step, PEER, self.peer_checks, self.cms_checks,
                                 "the peer", "the CMS side", "peer", "data")  # fmt: skip

    async def _check(
        self, step: StepResult, conn: ConnId, sender: CheckStream, answerer: CheckStream,
        who: str, other: str, side: str, other_side: str,
    ) -> bool:  # fmt: skip
        request = sender.request()
        self.d.record(conn, "sent", _frame_summary(request))
        self.d.write(conn, request)

        def done() -> str | None:
            for note in self.ice_notes[side] + self.ice_notes[other_side]:
                if isinstance(note, CheckFailed):
                    return note.reason
            if sender.answered and answerer.received:
                return "ok"
            for c in (self.data_conn, PEER):
                s = self.d.conns.get(c)
                if s is not None and s.status == "closed":
                    return f"{_role(c, self.d)}-{s.reason}"
            return None

        found = await self.d.until(done, self.deadline)
        size = len(request) - 2  # the RFC 4571 length field
        if found == "ok":
            step.detail = f"{size}-byte Binding Request from {who} answered by {other}"
            return True
        relay = "through the relay"
        if found is None:
            if not answerer.received:
                return self._fail(
                    step, f"{who}'s check ({size} bytes) never reached {other} within "
                    f"{self.config.timeout:g} s", f"the server does not pass bytes {relay} from "
                    f"{who} to {other}: the data connection is bound but not relayed",
                )  # fmt: skip
            return self._fail(
                step, f"{other} answered, but the answer never came back {relay} within "
                f"{self.config.timeout:g} s",
                f"the server relays only one way: {other} to {who} is not passed",
            )  # fmt: skip
        if found.endswith(("-closed", "-reset")):
            role, _, how = found.partition("-")
            return self._fail(step, f"the server {how} the {role} connection during the check",
                              f"the server tore the relay down under the check ({role} "
                              "connection)")  # fmt: skip
        return self._fail(
            step,
            f"check failed: {found}",
            f"the bytes came out of the relay changed or not as sent: {found}",
        )

    # -- release -------------------------------------------------------------------------------

    async def _release(self, step: StepResult) -> bool:
        before = len(self.d.control_in)
        self.d.apply(self.client.release(self.d.now()))

        def answered() -> stun.Message | str | None:
            for m in self.d.control_in[before:]:
                if m.method == stun.Method.REFRESH and m.cls in (
                    stun.Class.SUCCESS, stun.Class.ERROR,
                ):  # fmt: skip
                    return m
            if self.d.take(Released) is not None:
                return "released"  # the connection went before an answer
            return None

        found = await self.d.until(answered, self.deadline)
        if isinstance(found, stun.Message) and found.cls is stun.Class.SUCCESS:
            life = found.get(stun.Lifetime)
            step.detail = "allocation released" + (f" (lifetime {life.value})" if life else "")
            return True
        if isinstance(found, stun.Message):
            code, reason = _error(found)
            cause = (
                "the allocation was already gone on the server (it expired or was deleted)"
                if code == 437 else f"the server refused to release the allocation ({code})"
            )  # fmt: skip
            return self._fail(
                step, f"Refresh LIFETIME 0 refused: {_code_text(code, reason)}", cause
            )
        if found == "released":
            lost = self._control_lost() or "closed"
            return self._fail(step, f"the server {lost} the control connection before answering",
                              "the server dropped the connection instead of answering the "
                              "release")  # fmt: skip
        return self._no_answer(
            step,
            f"no answer to Refresh LIFETIME 0 within {self.config.timeout:g} s",
            "the server stalls on Refresh: the allocation stays until it expires",
        )


# ---------------------------------------------------------------------------------------------
# Causes, in an engineer's words
# ---------------------------------------------------------------------------------------------


def _error(message: stun.Message) -> tuple[int | None, str]:
    attr = message.get(stun.ErrorCode)
    if attr is None:
        return None, "error response without ERROR-CODE"
    return attr.code, attr.reason or stun.DEFAULT_REASONS.get(attr.code, "")


def _is_error(message: stun.Message, method: int, code: int) -> bool:
    return (
        message.method == method
        and message.cls is stun.Class.ERROR
        and (_error(message)[0] == code)
    )


def _code_text(code: int | None, reason: str) -> str:
    return f"{code} {reason}".strip() if code is not None else reason


def _allocation_failure(
    found: AllocationFailed, config: ProbeConfig, mismatch: str
) -> tuple[str, str]:
    code, reason = found.code, found.reason
    detail = f"Allocate refused: {_code_text(code, reason)}"
    if code == 401:
        realm = f"; {mismatch}" if mismatch else ""
        return (
            "401 to the authenticated Allocate: the credentials were refused",
            f"authentication failed: wrong username or password for user {config.username!r} "
            f"(Expressway-E: the local authentication database){realm}",
        )
    causes = {
        442: "the server does not relay TCP (442): Expressway-E before X8.9, or TCP relays "
        "turned off (coturn --no-tcp-relay)",
        508: "the server has no relay ports left (508): its relay range is full or too small",
        486: "this user's allocation quota is reached (486): allocations of earlier calls or "
        "probes still held",
        437: "the server says an allocation already exists on this connection (437)",
        438: "the server keeps answering Stale Nonce (438): its nonces expire at once",
        403: "the server's policy forbids this client (403)",
        300: "the server redirects to another one (300 Try Alternate: a full cluster peer)",
        400: "the server found the Allocate malformed (400)",
    }
    if code is not None:
        return detail, causes.get(code, f"the server refused the allocation: {code} {reason}")
    if reason.startswith("garbage"):
        return (
            f"the server sent bytes that are not STUN ({reason})",
            f"{config.target} is not a TURN server over TCP (a TLS, HTTP or SIP port?)",
        )
    if "closed" in reason or "reset" in reason:
        return reason, "the server hung up on the Allocate: not a TURN server, or TURN over TCP off"
    return detail, reason


def _permission_cause(code: int | None, peer: str) -> str:
    if code == 403:
        return (
            f"the server's policy forbids the peer {peer} (403): on coturn --denied-peer-ip, or "
            "loopback/private peers without --allow-loopback-peers; a peer the server will not "
            "relay to, so the Skype side cannot connect either"
        )
    if code == 508:
        return "the server holds no more permissions for this allocation (508)"
    if code == 437:
        return "the allocation is gone on the server (437)"
    if code == 443:
        return (
            f"the peer {peer} is of another address family than the relay (443, RFC 6156): "
            "give --peer-address of the relay's family, or probe over IPv4"
        )
    return f"CreatePermission refused ({code})"


def _bind_cause(found: PeerBindFailed, config: ProbeConfig) -> str:
    reason = found.reason
    if found.code == 447:
        return "the server lost the peer's connection before the bind (447)"
    if found.code == 400:
        return "the server did not know the CONNECTION-ID (400): the peer's connection is gone"
    if found.code is not None:
        return f"the server refused ConnectionBind ({found.code})"
    if "data connection failed" in reason:
        return (
            f"a second TCP connection to {config.target} failed: the server (or a firewall) "
            "limits connections from this machine"
        )
    if "reset" in reason or "closed" in reason:
        return (
            "the server hung up on the ConnectionBind without an answer (coturn resets on a "
            "wrong CONNECTION-ID or credentials): the bind was not accepted"
        )
    return reason


def _frame_summary(framed: bytes) -> str:
    return _summary(framed[2:])


def _summary(payload: bytes) -> str:
    if not stun.is_stun(payload):
        return f"framed data ({len(payload)} bytes)"
    try:
        return f"framed {stun.decode(payload).summary()}"
    except WireError as exc:
        return f"framed undecodable STUN ({exc})"


async def _resolve(host: str, port: int, timeout: float) -> tuple[str, int]:
    """The address to probe: an IP as given, or the name's first address. The lookup runs in a
    daemon thread so a resolver that hangs cannot hold the process after the deadline."""
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    done: asyncio.Future[list[Any]] = loop.create_future()

    def settle(infos: list[Any], error: BaseException | None) -> None:
        if done.done():  # the wait is over: nobody reads it
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(infos)

    def lookup() -> None:
        try:
            infos: list[Any] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            loop.call_soon_threadsafe(settle, [], exc)
            return
        loop.call_soon_threadsafe(settle, infos, None)

    threading.Thread(target=lookup, name="labsim-probe-resolve", daemon=True).start()
    try:
        infos = await asyncio.wait_for(done, timeout)
    except TimeoutError:
        raise ProbeInputError(f"--turn: {host!r} did not resolve within {timeout:g} s") from None
    except (OSError, UnicodeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise ProbeInputError(f"--turn: cannot resolve {host!r}: {why}") from None
    if not infos:
        raise ProbeInputError(f"--turn: {host!r} has no address")
    address = infos[0][4]
    return str(address[0]), port


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


async def probe(
    config: ProbeConfig, on_step: Callable[[StepResult], None] | None = None
) -> ProbeResult:
    """Probe the TURN server of ``config``; ``on_step`` hears each step as it ends."""
    result = ProbeResult(config)
    await _Probe(config, result, on_step or (lambda _s: None)).run()
    return result


def run_probe(
    config: ProbeConfig, on_step: Callable[[StepResult], None] | None = None
) -> ProbeResult:
    """:func:`probe` on an event loop of its own (the command line's entry)."""
    return asyncio.run(probe(config, on_step))


_MARK = {"passed": "ok", "failed": "FAIL", "skipped": "-"}


def step_line(step: StepResult) -> str:
    ms = f"{step.ms:8.1f} ms" if step.ms is not None else " " * 11
    what = step.detail or ("not run" if step.status == "skipped" else "")
    return f"  {_MARK[step.status]:<4}  {step.name:<18} {ms}  {what}"


def command(
    config: ProbeConfig, say: Literal["quiet", "normal", "verbose"], report: TextIO,
    json_out: Any | None = None,
) -> int:  # fmt: skip
    """``labsim probe``: run the probe, write the report (and the JSON), return the exit code:
    0 every step passed, 1 a step failed. Raises :class:`ProbeInputError` for bad input."""

    def out(text: str) -> None:
        print(text, file=report, flush=True)

    shown: set[str] = set()

    def on_step(step: StepResult) -> None:
        if say == "quiet":
            return
        if not shown:  # the first step: the name resolved, the probe is under way
            out(f"labsim probe: TURN server {config.target}, user {config.username!r}, as CMS "
                f"(each step within {config.timeout:g} s)")  # fmt: skip
        # The steps a failure left out come before the release, in their places.
        for name, title in STEPS[: STEP_NAMES.index(step.name)]:
            if name not in shown:
                shown.add(name)
                out(step_line(StepResult(name, title)))
        shown.add(step.name)
        out(step_line(step))

    result = run_probe(config, on_step)
    if say != "quiet":
        for step in result.steps:
            if step.name not in shown:
                out(step_line(step))
    if say == "verbose":
        out("messages:")
        for m in result.messages:
            arrow = "->" if m.direction == "sent" else "<-"
            out(f"  {m.ms:9.1f} ms  {m.conn:<7} {arrow} {m.summary}")
        out("TURN client notes:")
        for line in result.logs:
            out(f"  {line}")
    out(result.verdict())
    if json_out is not None:
        text = json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n"
        json_out.write(text.encode("utf-8"))
    return 0 if result.passed else 1
