"""The virtual runtime: the actors on a simulated network, in simpy's virtual time.

Nothing waits on a wall clock: simpy jumps from one scheduled event to the next, so a 600 s
allocation lifetime passes in microseconds, and a run is a pure function of its inputs (same
actors, same settings -> the identical trace).

The network model, kept small and explicit:

* **Latency.** Each direction between two actors has a one-way latency (``latency``, or
  ``link_latency[(a, b)]``, which also serves ``(b, a)`` unless that has its own entry). A
  segment (a :class:`~labsim.proto.events.Send`, a FIN, a RST, a SYN-ACK) arrives that long after
  it left; equal latency keeps each direction in order (simpy breaks ties first-in first-out).
  What one event made an actor send on a connection leaves as one segment (see
  :class:`~labsim.net.writes.Writes`) and arrives as one
  :class:`~labsim.proto.events.Received`; there is no bandwidth limit.
* **Connect** takes one round trip: the SYN reaches the server after one latency, which accepts
  at once (:class:`Accepted`; the trace records the connection then), and the SYN-ACK reaches the
  client one latency later (:class:`Connected`). No listener at the address, or a ``refuse``
  from the run's :class:`~labsim.net.faults.Reachability` (a ``refused`` pair, a ``block``
  rule): the RST comes back instead, ``ConnectFailed("refused")`` after one round trip. A
  ``blackhole`` (a ``blocked`` pair, actor names, client first) drops the SYN:
  ``ConnectFailed("timeout")`` when the Connect's timeout runs out. The client's port is taken
  at Connect from a per-host counter from 40000 up (the live runtime binds the same numbers).
* **Close.** ``Close(reset=False)`` sends a FIN behind the data already sent, so the peer gets
  every byte and then ``Closed(reset=False)``. ``Close(reset=True)`` sends a RST, which here also
  travels behind what was already sent (it was on the wire; there is no send buffer to discard)
  and gives the peer ``Closed(reset=True)``. Bytes that reach an end after it closed are dropped,
  as a closed socket's kernel would (its RST would arrive after the FIN the peer already got).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import simpy
from simpy.events import NORMAL

from labsim.net.faults import FAILS_AS, BlockHow, FaultPlan
from labsim.net.model import EPHEMERAL_FIRST, EPHEMERAL_LAST, ActorState, End, StopWhen
from labsim.net.nat import StaticNat
from labsim.net.runtime import Runtime
from labsim.net.transport import Handle
from labsim.proto.events import Actor, Address, Connect, ConnId
from labsim.trace import ConnectFailure, Trace


class _Pending:
    """A connect in flight."""

    __slots__ = ("st", "conn", "remote", "local")

    def __init__(self, st: ActorState, conn: ConnId, remote: Address, local: Address) -> None:
        self.st = st
        self.conn = conn
        self.remote = remote
        #: The client's address: its port is taken at Connect, as a kernel does.
        self.local = local


class _Listener:
    __slots__ = ("st", "address")

    def __init__(self, st: ActorState, address: Address) -> None:
        self.st = st
        self.address = address


class _Call(simpy.Event):
    """A callback simpy runs at its time, unless called off (simpy has no cancel): an event
    triggered at creation, as a :class:`simpy.Timeout` is, that is its own callback (one
    object per scheduled call, not a timeout and a callback object)."""

    def __init__(
        self, env: simpy.Environment, delay: float, fn: Callable[..., object],
        args: tuple[object, ...],
    ) -> None:  # fmt: skip
        if delay < 0:
            raise ValueError(f"Negative delay {delay}")
        # simpy.Event's state, as Timeout.__init__ sets it: processed with value None.
        self.env = env
        self.callbacks = [_Call._run]
        self._value = None
        self._ok = True
        self.fn: Callable[..., object] | None = fn
        self.args = args
        env.schedule(self, NORMAL, delay)

    def _run(self) -> None:
        fn = self.fn
        if fn is not None:
            self.fn = None
            fn(*self.args)

    def cancel(self) -> None:
        self.fn = None


class VirtualNetwork:
    """Run actors on a simulated network in virtual time (see the module docstring): the
    virtual transport, and the run's :class:`~labsim.net.runtime.Runtime` composed with it."""

    def __init__(
        self,
        actors: Sequence[Actor],
        trace: Trace,
        *,
        latency: float = 0.0005,
        link_latency: Mapping[tuple[str, str], float] | None = None,
        blocked: set[tuple[str, str]] | None = None,
        refused: set[tuple[str, str]] | None = None,
        faults: FaultPlan | None = None,
        nat: Sequence[StaticNat] = (),
    ) -> None:
        if latency < 0 or any(v < 0 for v in (link_latency or {}).values()):
            raise ValueError("latencies must not be negative")
        self.env = simpy.Environment()
        self.latency = latency
        self.link_latency = dict(link_latency or {})
        self.runtime = Runtime(
            actors, trace, self, faults=faults, blocked=blocked or (), refused=refused or (),
            nat=nat,
        )  # fmt: skip
        self.trace = trace
        self._listeners: dict[Address, _Listener] = {}
        self._ports_in_use: set[tuple[str, int]] = set()
        self._next_port: dict[str, int] = {}
        self._done: simpy.Event | None = None

    @property
    def errors(self) -> list[tuple[str, BaseException]]:
        """(actor name, exception) for every actor exception, in order."""
        return self.runtime.errors

    # -- running -------------------------------------------------------------------------------

    def run(self, until: float, stop: StopWhen | None = None) -> Trace:
        """Run until virtual time ``until`` or until ``stop(trace)`` is true; return the trace."""
        runtime = self.runtime
        runtime.begin(stop)
        env = self.env
        self._done = env.event()
        self.later(until, runtime.request_stop)
        runtime.start_all()
        if not runtime.stopping:
            env.run(until=self._done)
        runtime.release_all()
        return self.trace

    # -- the clock -----------------------------------------------------------------------------

    def now(self) -> float:
        return float(self.env.now)

    def stop(self) -> None:
        if self._done is not None and not self._done.triggered:
            self._done.succeed()

    def later(self, delay: float, fn: Callable[..., object], *args: object) -> Handle:
        return _Call(self.env, delay, fn, args)

    def soon(self, fn: Callable[..., object], *args: object) -> None:
        self.later(0.0, fn, *args)

    def _latency(self, src: str | None, dst: str | None) -> float:
        if src is not None and dst is not None:
            value = self.link_latency.get((src, dst))
            if value is None:
                value = self.link_latency.get((dst, src))
            if value is not None:
                return value
        return self.latency

    def _ephemeral(self, host: str) -> int:
        port = self._next_port.get(host, EPHEMERAL_FIRST)
        for _ in range(EPHEMERAL_LAST - EPHEMERAL_FIRST + 1):
            taken = (host, port) in self._ports_in_use or Address(host, port) in self._listeners
            candidate, port = port, EPHEMERAL_FIRST if port >= EPHEMERAL_LAST else port + 1
            if not taken:
                self._next_port[host] = port
                return candidate
        raise RuntimeError(f"no free ephemeral port left on {host}")

    # -- listeners -----------------------------------------------------------------------------

    def listen(self, st: ActorState, address: Address) -> tuple[Address, object] | str:
        if address.port == 0:
            address = Address(address.host, self._ephemeral(address.host))
        elif address in self._listeners or (address.host, address.port) in self._ports_in_use:
            return "address already in use"
        listener = _Listener(st, address)
        self._listeners[address] = listener
        return address, listener

    def unlisten(self, handle: object) -> None:
        assert isinstance(handle, _Listener)
        if self._listeners.get(handle.address) is handle:
            del self._listeners[handle.address]

    # -- connecting: SYN, SYN-ACK / RST ---------------------------------------------------------

    def connect(self, st: ActorState, effect: Connect, blocked: BlockHow | None) -> object:
        port = effect.local_port
        if not port or (st.host, port) in self._ports_in_use:
            port = self._ephemeral(st.host)
        self._ports_in_use.add((st.host, port))
        pending = _Pending(st, effect.conn, effect.remote, Address(st.host, port))
        listener = self._listeners.get(effect.remote)
        target = listener.st.name if listener else self.runtime.owner_of_host.get(
            effect.remote.host
        )  # fmt: skip
        round_trip = self._latency(st.name, target) + self._latency(target, st.name)
        if blocked is not None:
            # refuse: a firewall's RST comes back after a round trip; blackhole: the SYN and
            # every retransmission of it vanish, and the connect times out.
            wait = min(round_trip, effect.timeout) if blocked == "refuse" else effect.timeout
            self.later(wait, self._fail, pending, FAILS_AS[blocked])
        elif round_trip > effect.timeout:
            self.later(effect.timeout, self._fail, pending, "timeout")
        else:
            self.later(self._latency(st.name, target), self._syn_arrives, pending)
        return pending

    def cancel_connect(self, handle: object) -> None:
        pass  # the SYN-ACK / RST finds the attempt gone from st.connecting

    def _attempt_live(self, pending: _Pending) -> bool:
        return pending.st.alive and pending.st.connecting.get(pending.conn) is pending

    def _free_port(self, address: Address) -> None:
        self._ports_in_use.discard((address.host, address.port))

    def _fail(self, pending: _Pending, how: ConnectFailure) -> None:
        self._free_port(pending.local)
        if self._attempt_live(pending):
            # The words the actor gets are the typed value itself: a virtual connect fails
            # only by a RST or by silence.
            self.runtime.connect_failed(pending.st, pending.conn, pending.remote, how, how)

    def _syn_arrives(self, pending: _Pending) -> None:
        if not self._attempt_live(pending):
            self._free_port(pending.local)
            return  # given up before the SYN got there: treated as never sent
        runtime = self.runtime
        client = pending.st
        listener = self._listeners.get(pending.remote)
        server = listener.st.name if listener else None
        back = self._latency(server, client.name)
        if listener is None:
            self.later(back, self._fail, pending, "refused")
            return
        client_addr = pending.local
        link = runtime.open_link(
            client.name, client_addr, listener.st.name, listener.address, pending.conn
        )
        forth = self._latency(client.name, listener.st.name)
        client_end = runtime.client_end(
            link, client, pending.conn, client_addr, pending.remote, forth
        )
        server_end = runtime.server_end(link, listener.st, listener.address, client_addr, back)
        # The SYN-ACK leaves before anything the server sends on Accepted, so it arrives first.
        self.later(back, self._syn_ack_arrives, pending, client_end)
        runtime.accepted(server_end)

    def _syn_ack_arrives(self, pending: _Pending, end: End) -> None:
        if self._attempt_live(pending):
            self.runtime.connected(end)
            return
        # The client gave up (Close while connecting) or died: it answers the SYN-ACK with RST.
        end.open = False
        self._free_port(end.local)
        self.trace.closed(self.now(), end.link.gid, end.st.name, True)
        if end.link.server is not None:
            self.later(self._one_way(end), self._arrive_close, end.link.server, True, end.st.name)

    # -- data and closing ----------------------------------------------------------------------

    @staticmethod
    def _one_way(end: End) -> float:
        latency = end.io
        assert isinstance(latency, float)
        return latency

    def write(self, end: End, data: bytes) -> None:
        peer = end.peer
        if peer is not None:
            self.later(self._one_way(end), self.runtime.received, peer, data)

    def close(self, end: End, reset: bool) -> None:
        if end.is_client:
            self._free_port(end.local)
        peer = end.peer
        if peer is not None:
            self.later(self._one_way(end), self._arrive_close, peer, reset, end.st.name)

    def abort(self, end: End) -> None:
        pass  # nothing is buffered here: the cut's closes reach both ends at once

    def alive(self, end: End) -> bool:
        return True

    def reading(self, end: End, on: bool) -> None:
        pass  # no buffers: nothing to pause

    def _arrive_close(self, end: End, reset: bool, by: str) -> None:
        """A FIN or RST reaches ``end``."""
        if end.open and end.is_client:
            self._free_port(end.local)
        self.runtime.peer_closed(end, reset, by)
