"""Many sharing calls at once: N Skype clients through one Skype Edge, one Expressway-E, one
Expressway-C and one CMS (``labsim load``, docs/load.md).

Two of the five actors of the one-call lab meet many calls and need a multi-call form; the
other three already serve many (the proxies are transaction-stateful per branch, RFC 3261 §16;
Expressway-E's TURN server keeps an allocation per control connection, RFC 5766 §5):

- :class:`MeetingServer` is CMS for many participants: one SIP listener, and behind it one
  per-call user agent, the one-call :class:`~labsim.actors.cms.Cms` unchanged, per participant.
  SIP is dispatched by Call-ID (RFC 3261 §12: a dialog is named by it); a new Call-ID goes to
  its participant's user agent, found by the host of the bottom Via (the originating UA's own
  address, which proxies leave in place, §16.6 step 8), so the meeting's audio/video call and
  the share of one client reach the same user agent, as they reach one participant on a real
  CMS. Each user agent's connections (its TURN control and data connections) and timers are
  its own: the server renames them ``c<call>.<name>`` and ``(call, timer)``, so the trace shows
  ``cms/c17.turn:ctl`` and every call holds its own TURN allocation.
- :class:`MeetingEdge` is the Skype Edge for many clients: its media relay learns each
  client's target (CMS's relay candidate) from the answer it forwards toward that client, and
  relays each client's media from a relay port of that client's own, as a real A/V Edge gives
  each client its own MS-TURN allocation (PROTOCOL.md §5.2): the relay candidate the client
  offers and the peer Expressway-E sees in ConnectionAttempt name that port.

A call is numbered from 1. Its client is the actor ``skype_client/<n>`` at the lab address
:func:`client_address` (192.168.10.1 on); its lab is :func:`call_lab` (the scenario's, with
that address, that Edge relay port and seeds of its own). The one-call lab stays what it is:
``labsim run`` never builds these.

The Skype side (clients and Edge) and the target (Expressway-E, Expressway-C, CMS) share
nothing but bytes, so the two can run apart (a load generator against a real or simulated
target): nothing here reads the other side's objects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from labsim.actors.cms import Cms
from labsim.actors.lab import Lab
from labsim.actors.skype_edge import MediaRelay, SkypeEdge
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
from labsim.proto.sip_proxy import ResponseForwarded
from labsim.wire.errors import FramingError
from labsim.wire.framing import SipSplitter

#: Clients per /24 of lab addresses (192.168.X.1 to .250).
_PER_NET = 250
#: The first third octet of the clients' addresses (192.168.10.1 is call 1).
_FIRST_NET = 10
#: Most calls one meeting numbers (the third octet stays below 256).
MAX_CALLS = (256 - _FIRST_NET) * _PER_NET

CLIENT_ROLE = "skype_client"


def client_name(call: int) -> str:
    """The actor name of call ``call``'s client: ``skype_client/17``. Fault rules and
    reachability name actors by role, the part before ``/`` (:func:`role_of`)."""
    return f"{CLIENT_ROLE}/{call}"


def role_of(actor: str) -> str:
    """The role an actor plays: ``skype_client`` for ``skype_client/17``."""
    return actor.split("/", 1)[0]


def call_of_actor(actor: str) -> int | None:
    """The call a per-call actor belongs to (``skype_client/17`` -> 17), else None."""
    role, slash, number = actor.partition("/")
    return int(number) if slash and role == CLIENT_ROLE and number.isdigit() else None


def client_address(call: int) -> str:
    """Call ``call``'s client lab address: 192.168.10.1 for call 1, 250 to a /24."""
    if not 1 <= call <= MAX_CALLS:
        raise ValueError(f"calls are numbered 1 to {MAX_CALLS}, not {call}")
    net, host = divmod(call - 1, _PER_NET)
    return f"192.168.{_FIRST_NET + net}.{1 + host}"


def call_of_address(host: str) -> int | None:
    """The inverse of :func:`client_address`; None for a host that is no client's."""
    parts = host.split(".")
    if len(parts) != 4 or parts[:2] != ["192", "168"] or not all(p.isdigit() for p in parts):
        return None
    net, last = int(parts[2]) - _FIRST_NET, int(parts[3])
    if not (0 <= net < 256 - _FIRST_NET and 1 <= last <= _PER_NET):
        return None
    return net * _PER_NET + last


def edge_relay_port(base: int, call: int) -> int:
    """The Edge's relay port for call ``call``: the lab's port for call 1, then on (a real
    A/V Edge gives each client's allocation a port of its range, 50000-59999 by default)."""
    port = base + call - 1
    if port > 65535:
        raise ValueError(f"call {call}: no Edge relay port past 65535 from {base}")
    return port


def calls_possible(lab: Lab) -> int:
    """How many calls one meeting can number: client addresses, and Edge relay ports from
    the lab's up to 65535."""
    return min(MAX_CALLS, 65536 - lab.skype_edge.relay_port)


def conn_prefix(call: int) -> str:
    """What the shared actors put before their per-call connection names: ``c17``."""
    return f"c{call}"


def call_of_connection(name: str) -> int | None:
    """The call a connection's trace name says it belongs to: ``skype_client/17/sip:1``,
    ``cms/c17.turn:ctl``, ``skype_edge/c17.relay:1`` -> 17; None for a shared one."""
    opener, slash, own = name.partition("/")
    if not slash:
        return None
    if opener == CLIENT_ROLE:
        number = own.split("/", 1)[0]
        return int(number) if number.isdigit() else None
    head = own.split(".", 1)[0]
    if len(head) > 1 and head[0] == "c" and head[1:].isdigit() and "." in own:
        return int(head[1:])
    return None


def call_lab(lab: Lab, call: int) -> Lab:
    """The lab of call ``call``: the scenario's, with the client at its own address, the Edge
    relaying its media from its own port, and seeds of its own for both ends (Call-IDs, tags,
    branches and TURN transaction IDs differ between calls; call 1 of a one-call load keeps
    the scenario's seeds)."""
    return replace(
        lab,
        skype_client=replace(
            lab.skype_client, address=client_address(call),
            seed=lab.skype_client.seed + call - 1,
        ),
        # Past the last port (a CMS numbering a participant it was not built for) the Edge's
        # port is left as it is: CMS never reads it.
        skype_edge=replace(
            lab.skype_edge, relay_port=edge_relay_port(lab.skype_edge.relay_port, call)
        ) if call <= calls_possible(lab) else lab.skype_edge,
        cms=replace(lab.cms, seed=lab.cms.seed + call - 1),
    )  # fmt: skip


# -- CMS for many participants -----------------------------------------------------------------

#: A header line of Call-ID (or its compact form ``i``, RFC 3261 §7.3.3, §20.8).
_CALL_ID = re.compile(rb"^(?:call-id|i)[ \t]*:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)
#: A Via header line (compact form ``v``) and the sent-by host of each value in it (§20.42).
_VIA = re.compile(rb"^(?:via|v)[ \t]*:(.*)$", re.IGNORECASE | re.MULTILINE)
_SENT_BY = re.compile(rb"SIP\s*/\s*2\.0\s*/\s*\w+\s+\[?([0-9A-Za-z.:-]+?)\]?(?::\d+)?\s*(?:;|,|$)")


def _head(frame: bytes) -> bytes:
    end = frame.find(b"\r\n\r\n")
    return frame if end < 0 else frame[:end]


def call_id_of(frame: bytes) -> str | None:
    """The Call-ID of one whole SIP message, read from its header block alone (the user agent
    parses the message itself)."""
    found = _CALL_ID.search(_head(frame))
    return found.group(1).decode("ascii", "replace") if found else None


def origin_of(frame: bytes) -> str | None:
    """The sent-by host of the bottom Via: the UA that sent the request first (RFC 3261
    §16.6 step 8: every proxy pushes its own Via on top)."""
    hosts: list[bytes] = []
    for line in _VIA.finditer(_head(frame)):
        hosts += _SENT_BY.findall(line.group(1))
    return hosts[-1].decode("ascii", "replace") if hosts else None


@dataclass
class _Shared:
    """A SIP connection Expressway-C opened to the server: every call's SIP crosses it."""

    local: Address
    remote: Address
    splitter: SipSplitter = field(default_factory=SipSplitter)
    users: set[int] = field(default_factory=set)
    """The calls whose user agent was told of this connection (an ``Accepted``)."""


@dataclass(frozen=True)
class CallTimer:
    """A per-call user agent's timer, as the server's: the call and the UA's own name."""

    call: int
    timer: object


class MeetingServer:
    """CMS hosting one meeting with many participants sharing: one SIP listener, one
    :class:`Cms` per participant behind it (see the module docstring)."""

    def __init__(self, lab: Lab, name: str = "cms") -> None:
        self.name = name
        self.lab = lab
        self.host = lab.cms.address
        self.sip = Address(lab.cms.address, lab.cms.sip_port)
        #: The per-call user agents, by call number.
        self.calls: dict[int, Cms] = {}
        self._by_origin: dict[str, int] = {}
        self._by_call_id: dict[str, int] = {}
        self._shared: dict[ConnId, _Shared] = {}
        #: Per-call connections: the server's name -> (call, the user agent's name).
        self._own: dict[ConnId, tuple[int, ConnId]] = {}
        self._strangers = 0
        #: Calls whose user agent is not finished (kept as they change, not counted).
        self._busy: set[int] = set()

    @property
    def finished(self) -> bool:
        """Every participant's user agent is done (none yet: nothing to finish)."""
        return not self._busy

    @property
    def active(self) -> int:
        """User agents still in a call."""
        return len(self._busy)

    # -- events --------------------------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Effect]:
        match event:
            case Started():
                return [Listen(self.sip)]
            case Listening(address=address):
                return [Log(f"SIP on TCP {address}, one user agent per participant")]
            case ListenFailed(address=address, reason=reason):
                return [Log(f"cannot listen for SIP on {address}: {reason}", "error")]
            case Accepted(conn=conn, local=local, remote=remote) if local == self.sip:
                self._shared[conn] = _Shared(local, remote)
                return []
            case Received(conn=conn, data=data) if conn in self._shared:
                return self._sip(conn, data, now)
            case Closed(conn=conn) if conn in self._shared:
                shared = self._shared.pop(conn)
                effects: list[Effect] = []
                for call in sorted(shared.users):
                    effects += self._to(call, event, now)
                return effects
            case (
                Connected(conn=conn) | ConnectFailed(conn=conn) | Received(conn=conn)
                | Closed(conn=conn)
            ) if conn in self._own:  # fmt: skip
                call, inner = self._own[conn]
                if isinstance(event, Closed | ConnectFailed):
                    del self._own[conn]
                return self._to(call, replace(event, conn=inner), now)
            case TimerFired(timer=CallTimer(call=call, timer=timer)):
                return self._to(call, TimerFired(timer), now)
        return []

    def _sip(self, conn: ConnId, data: bytes, now: float) -> list[Effect]:
        shared = self._shared[conn]
        try:
            frames = shared.splitter.feed(data)
            lost = None
        except FramingError as exc:
            frames, lost = list(exc.messages), exc
        effects: list[Effect] = []
        for frame in frames:
            call = self._call_of(frame)
            if call is None:
                effects.append(Log("a SIP message with no Call-ID dropped", "warning"))
                continue
            if call not in shared.users:
                shared.users.add(call)
                effects += self._to(call, Accepted(conn, shared.local, shared.remote), now)
            effects += self._to(call, Received(conn, frame), now)
        if lost is not None:
            # RFC 3261 §18.3: no next message can be found on the stream; every call on it
            # loses it.
            self._shared.pop(conn)
            effects += [Log(f"SIP framing error from {shared.remote}: {lost}: reset", "error"),
                        Close(conn, reset=True)]  # fmt: skip
            for call in sorted(shared.users):
                effects += self._to(call, Closed(conn, reset=True), now)
        return effects

    def _call_of(self, frame: bytes) -> int | None:
        """The call a SIP message belongs to: its Call-ID's, else its originator's."""
        call_id = call_id_of(frame)
        if call_id is None:
            return None
        call = self._by_call_id.get(call_id)
        if call is not None:
            return call
        origin = origin_of(frame) or call_id
        call = self._by_origin.get(origin)
        if call is None:
            call = call_of_address(origin)
            if call is None or call in self.calls:
                # A participant not at a client address of this meeting: numbered past them.
                self._strangers += 1
                call = MAX_CALLS + self._strangers
            self._by_origin[origin] = call
        self._by_call_id[call_id] = call
        return call

    def _ua(self, call: int, now: float) -> tuple[Cms, list[Effect]]:
        ua = self.calls.get(call)
        if ua is not None:
            return ua, []
        lab = call_lab(self.lab, call) if call <= MAX_CALLS else self.lab
        ua = self.calls[call] = Cms(lab, self.name)
        return ua, self._from(call, ua.handle(Started(), now))

    def _to(self, call: int, event: Event, now: float) -> list[Effect]:
        ua, effects = self._ua(call, now)
        effects += self._from(call, ua.handle(event, now))
        if ua.finished:
            self._busy.discard(call)
        else:
            self._busy.add(call)
        return effects

    def _from(self, call: int, effects: list[Effect]) -> list[Effect]:
        """A user agent's effects as the server's: its listener is the server's, its own
        connections and timers are renamed, its lines say which call."""
        out: list[Effect] = []
        prefix = conn_prefix(call)
        for effect in effects:
            match effect:
                case Listen() | Unlisten():
                    continue  # the server's one listener takes every participant's SIP
                case Connect(conn=conn):
                    outer = f"{prefix}.{conn}"
                    self._own[outer] = (call, conn)
                    out.append(replace(effect, conn=outer))
                case Send(conn=conn) | Close(conn=conn) if conn in self._shared:
                    if isinstance(effect, Close):
                        # The connection carries the other calls too: only its own user
                        # agent lets go of it.
                        self._shared[conn].users.discard(call)
                        continue
                    out.append(effect)
                case Send(conn=conn) | Close(conn=conn):
                    outer = f"{prefix}.{conn}"
                    if isinstance(effect, Close):
                        self._own.pop(outer, None)
                    out.append(replace(effect, conn=outer))
                case StartTimer(timer=timer) | StopTimer(timer=timer):
                    out.append(replace(effect, timer=CallTimer(call, timer)))
                case Log(text=text):
                    out.append(replace(effect, text=f"[{prefix}] {text}"))
        return out


def call_log_prefix(call: int) -> str:
    """How the server's lines about call ``call`` begin."""
    return f"[{conn_prefix(call)}] "


# -- the Skype Edge for many clients -----------------------------------------------------------


class MeetingRelay(MediaRelay):
    """The Edge's media relay for many clients: each client's media goes to the target learned
    from the answer forwarded to that client, from that client's relay port."""

    def __init__(self, address: Address, relay_port: int, connect_timeout: float) -> None:
        super().__init__(address, relay_port, connect_timeout)
        #: Client host -> CMS's relay candidate for its call.
        self.targets: dict[str, Address] = {}
        self._numbers: dict[int, int] = {}

    @property
    def pipes(self) -> int:
        """Client media connections relayed now (each holds one relay port)."""
        return len(self._pipes) // 2

    def _handle(self, event: Event) -> list[Effect]:
        if isinstance(event, Accepted):
            return self._client_media_from(event.conn, event.remote.host)
        return super()._handle(event)

    def _client_media_from(self, conn: ConnId, host: str) -> list[Effect]:
        target = self.targets.get(host)
        call = call_of_address(host)
        if target is None or call is None:
            return [Log(f"media from {host} before any answer named a relay for it", "warn"),
                    Close(conn, reset=True)]  # fmt: skip
        n = self._numbers[call] = self._numbers.get(call, 0) + 1
        port = edge_relay_port(self.relay_port, call)
        return self.pipe(conn, f"{conn_prefix(call)}.relay:{n}", target, port,
                         f"relaying {host}'s media to {target} from port {port}")  # fmt: skip


class MeetingEdge(SkypeEdge):
    """The Skype Edge in front of many clients (see the module docstring)."""

    relay_type = MeetingRelay
    relay: MeetingRelay

    def is_client(self, host: str) -> bool:
        return call_of_address(host) is not None

    def on_forwarded(self, notice: ResponseForwarded, now: float) -> list[Effect]:
        # The one-call Edge's rule, kept per client: CMS's answer to a client's INVITE names
        # where that client's media goes.
        learned = self.answer_target(notice)
        if learned is not None:
            client, target = learned
            self.relay.targets[client] = target
        return []
