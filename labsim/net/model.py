"""The runtime's records of actors and connections: what both runtimes hold, typed.

* :class:`ActorState` — one actor and what the runtime holds for it (its connections by its
  own names, connects in flight, listeners, timers);
* :class:`Link` — one TCP connection of the run: its trace id, its one name, its two ends;
* :class:`End` — one actor's end of a connection, with the transport's handle for it (``io``:
  an asyncio transport on the live clock, the one-way latency to the peer on the virtual one).

Every connection has one run-global int id (``Link.gid``, the id in the trace) and one name
(``Link.name``): the opener's name for it, qualified by the opener (``cms/turn:data:1``). The
opener knows its end by the name it gave in :class:`~labsim.proto.events.Connect`; the
accepting actor by the connection's name, so its notes and the ladder, JSON and capture say the
same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from labsim.proto.events import Actor, Address, ConnId, TimerId

if TYPE_CHECKING:
    from labsim.net.faults import Hit
    from labsim.net.transport import Handle
    from labsim.trace import Trace, Unit

#: ``stop(trace)``: end the run as soon as this is true (checked after every event).
StopWhen = Callable[["Trace"], bool]

#: Who a connection's far end belongs to when it is not an actor of the run (live only).
EXTERNAL = "external"
#: ``closed_by`` when neither end closed it (a reset by the network, a lost listener).
NETWORK = "network"
#: Client ports (and ``Listen`` on port 0) come from a per-host counter over this range, in
#: both runtimes, so one scenario shows the same ports on both clocks.
EPHEMERAL_FIRST = 40000
EPHEMERAL_LAST = 65535


class ActorState:
    """One actor and everything the runtime holds for it."""

    __slots__ = (
        "actor", "name", "host", "alive", "ends", "gone", "connecting", "listeners", "timers",
    )  # fmt: skip

    def __init__(self, actor: Actor) -> None:
        self.actor = actor
        self.name: str = actor.name
        self.host: str = actor.host
        self.alive = True
        #: Open connections by the actor's name for them.
        self.ends: dict[ConnId, End] = {}
        #: Names of connections that closed: later effects on them are quietly ignored.
        self.gone: set[ConnId] = set()
        #: Connects in progress: name -> the transport's handle for the attempt.
        self.connecting: dict[ConnId, object] = {}
        #: Listening addresses -> the transport's handle.
        self.listeners: dict[Address, object] = {}
        #: Running timers -> the handle of this start (a restart makes a new one).
        self.timers: dict[TimerId, Handle] = {}


class CutBudget:
    """A cut-after-bytes rule on one connection: how many bytes may still go, and which way."""

    __slots__ = ("hit", "sender", "left")

    def __init__(self, hit: Hit, sender: str | None, left: int) -> None:
        self.hit = hit
        #: The actor whose bytes count (None: both ways).
        self.sender = sender
        #: Bytes still allowed; -1 once spent.
        self.left = left


class Link:
    """One TCP connection of the run: the trace's id, its name and its two ends (None: outside
    the run)."""

    __slots__ = ("gid", "client", "server", "framing", "names", "number", "budgets", "name")

    def __init__(self, gid: int, client: str = "", server: str = "") -> None:
        self.gid = gid
        self.client: End | None = None
        self.server: End | None = None
        #: The framing the run's own end last sent with: bytes from a peer outside the run
        #: (coturn, sipp) are traced with the same framing, so its answers decode too. Empty
        #: until then: a peer outside the run that speaks first is framed by its first bytes.
        self.framing = ""
        #: (client actor, server actor), as the trace names them.
        self.names = (client, server)
        #: Which connection between these two actors this is (1-based), for fault rules.
        self.number = 0
        #: Cut-after-bytes rules on this connection.
        self.budgets: list[CutBudget] | None = None
        #: The connection's one name (``cms/turn:data:1``).
        self.name = ""


class Held:
    """What a delay rule holds back on one end: a message, or the actor's Close behind it."""

    __slots__ = ("release", "unit", "reset")

    def __init__(self, release: float, unit: Unit | None, reset: bool = False) -> None:
        #: When it may go.
        self.release = release
        #: The message (a unit of ``Trace.cut``); None for the actor's Close.
        self.unit = unit
        #: For a held Close: RST rather than FIN.
        self.reset = reset


class End:
    """One actor's end of a connection."""

    __slots__ = (
        "link", "st", "conn", "is_client", "local", "remote", "open", "io", "outbuf",
        "feeders", "write_paused", "read_pauses", "watched", "held",
    )  # fmt: skip

    def __init__(
        self,
        link: Link,
        st: ActorState,
        conn: ConnId,
        is_client: bool,
        local: Address,
        remote: Address,
        io: object,
    ) -> None:
        self.link = link
        self.st = st
        self.conn = conn
        self.is_client = is_client
        #: Lab addresses, as the actor sees them.
        self.local = local
        self.remote = remote
        #: False once the actor closed it or was told it closed.
        self.open = True
        #: The transport's handle: an asyncio transport (live), the one-way latency to the
        #: peer (virtual). Only the transport reads it.
        self.io = io
        #: Sends of the effect list being carried out, written as one when it is done.
        self.outbuf: list[bytes] | None = None
        #: Backpressure (live runtime): the ends of the same actor whose received bytes made it
        #: send on this one (a relay's other side). While this end's write buffer is over the
        #: high-water mark they are not read, so a slow reader cannot make a relay buffer
        #: without bound; the kernel's window then slows the fast sender down, as TCP does.
        self.feeders: set[End] | None = None
        self.write_paused = False
        #: How many paused ends this one currently feeds (reading resumes at 0).
        self.read_pauses = 0
        #: Fault rules (see :mod:`labsim.net.faults`): whether a drop or delay rule can match
        #: what this end sends (None: not worked out yet), and what a delay holds back.
        self.watched: bool | None = None
        self.held: list[Held] | None = None

    @property
    def names(self) -> tuple[str, str]:
        """(this end's actor, the far end's), as the trace names them."""
        client, server = self.link.names
        return (client, server) if self.is_client else (server, client)

    @property
    def peer(self) -> End | None:
        """The other end, when it belongs to an actor of the run."""
        return self.link.server if self.is_client else self.link.client
