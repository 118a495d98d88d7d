"""The one place an actor's events find their machine (issue 10).

An actor is a few protocol machines (:mod:`labsim.proto.machine`) wired together: Expressway-E
is a SIP proxy and a TURN server, CMS a SIP transport, a TURN client, an ICE check link and its
own timers. The runtime hands the actor every event of all of them; the :class:`Router` gives
each to the machine it belongs to, and hands each machine's notices to the function the actor
registered for that machine.

Ownership is learned, never asked. The router reads the effects of every :class:`Step` it
sees, in order:

============================  ==================================================================
effect                        what the machine now owns (or no longer owns)
============================  ==================================================================
``Connect(conn)``             the connection ``conn`` (its ``Connected``/``ConnectFailed``,
                              ``Received``, ``Closed``)
``Listen(address)``           the address (its ``Listening``/``ListenFailed``) and every
                              connection ``Accepted`` there, from then on
``StartTimer(timer)``         the timer, until it fires or is stopped
``Close(conn)``               ends the claim (the runtime sends nothing more for ``conn``)
``Unlisten(address)``         ends the address's claim (accepted connections stay the machine's)
``StopTimer(timer)``          ends the timer's claim
============================  ==================================================================

``Closed`` and ``ConnectFailed`` end a connection's claim and ``TimerFired`` a timer's (the
machine may start it again in the step it returns). ``Started`` goes to every machine, in the
order they were added, then to the actor's ``on_started``.

Decisions, each tested in ``tests/test_router.py``:

- **An event nobody owns** (bytes on a connection no machine opened or accepted, a timer no
  machine started) is dropped: the runtime only reports what the actor asked for, so it can
  only be a late event for something a machine gave up, which the machine would ignore too.
- **A name claimed by another machine is refused**: a ``Connect``, ``Listen`` or
  ``StartTimer`` for a name another machine holds raises :class:`OwnershipError` (a wiring
  bug, not a network condition; the runtime stops the actor and logs it). Restarting one's own
  timer is the contract's ordinary restart. Typed timer names make a clash between two kinds
  of machine impossible; it is caught for two machines of one kind.
- **Handing over** is explicit: :meth:`Router.give` moves a connection to another machine
  (CMS takes the RFC 6062 data connection from its TURN client once it is bound, for the ICE
  checks).

Notices of a step returned by ``handle`` go to the owner at once, after the step's effects;
notices of a command's step (:meth:`Router.run`) wait until the event being handled is done,
so the owner never re-enters its own reaction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from labsim.proto import events as ev
from labsim.proto.events import Address, ConnId, Effect, Event, TimerId
from labsim.proto.machine import Machine, Step

N = TypeVar("N")

# The router holds machines of every notice type; each is paired at `add` with the owner's
# function for exactly its type, so the pairing is checked there and erased here.
_AnyMachine = Machine[Any]
_React = Callable[[Any, float], list[Effect]]


class OwnershipError(RuntimeError):
    """A machine claimed a connection, address or timer another machine holds."""


#: Effects that claim nothing (their exact types: the common case, tested before the match).
_CLAIM_NOTHING: frozenset[type] = frozenset({ev.Send, ev.Log})


def _no_reaction(notice: object, now: float) -> list[Effect]:
    return []


class Router:
    """Routes an actor's events to its machines and their notices to the actor."""

    def __init__(self, on_started: Callable[[float], list[Effect]] | None = None) -> None:
        self._on_started = on_started
        self._machines: list[_AnyMachine] = []
        self._react: dict[int, _React] = {}
        self._conns: dict[ConnId, _AnyMachine] = {}
        self._addresses: dict[Address, _AnyMachine] = {}
        self._timers: dict[TimerId, _AnyMachine] = {}
        self._later: list[tuple[_React, object]] = []

    def add(
        self, machine: Machine[N], on_notice: Callable[[N, float], list[Effect]] | None = None
    ) -> None:
        """Wire ``machine`` in; ``on_notice`` takes its notices (none: they are not wanted)."""
        self._machines.append(machine)
        self._react[id(machine)] = on_notice or _no_reaction

    # -- who owns what -------------------------------------------------------------------------

    def owner(self, event: Event) -> _AnyMachine | None:
        """The machine ``event`` belongs to, or None."""
        if type(event) is ev.Received:  # most events: bytes on a connection
            return self._conns.get(event.conn)
        match event:
            case ev.Listening(address=address) | ev.ListenFailed(address=address):
                return self._addresses.get(address)
            case ev.Accepted(local=local):
                return self._addresses.get(local)
            case ev.Connected(conn=conn) | ev.ConnectFailed(conn=conn) | ev.Received(conn=conn):
                return self._conns.get(conn)
            case ev.Closed(conn=conn):
                return self._conns.get(conn)
            case ev.TimerFired(timer=timer):
                return self._timers.get(timer)
        return None

    def give(self, conn: ConnId, machine: Machine[N] | None) -> None:
        """Hand ``conn`` over to ``machine`` (None: to nobody, e.g. before closing it)."""
        if machine is None:
            self._conns.pop(conn, None)
        else:
            self._conns[conn] = machine

    def claim(self, machine: Machine[N], effects: tuple[Effect, ...]) -> None:
        """Learn what ``machine`` owns from the effects it emitted, in order."""
        for effect in effects:
            if type(effect) in _CLAIM_NOTHING:  # most effects: bytes sent, a log line
                continue
            match effect:
                case ev.Connect(conn=conn):
                    self._take(self._conns, conn, machine, "connection")
                case ev.Listen(address=address):
                    self._take(self._addresses, address, machine, "address")
                case ev.StartTimer(timer=timer):
                    self._take(self._timers, timer, machine, "timer")
                case ev.Close(conn=conn):
                    self._drop(self._conns, conn, machine)
                case ev.Unlisten(address=address):
                    self._drop(self._addresses, address, machine)
                case ev.StopTimer(timer=timer):
                    self._drop(self._timers, timer, machine)

    @staticmethod
    def _take(table: dict[Any, _AnyMachine], key: object, machine: object, what: str) -> None:
        holder = table.get(key)
        if holder is not None and holder is not machine:
            raise OwnershipError(
                f"{type(machine).__name__} claims the {what} {key!r} that "
                f"{type(holder).__name__} holds"
            )
        table[key] = machine  # type: ignore[assignment]

    @staticmethod
    def _drop(table: dict[Any, _AnyMachine], key: object, machine: object) -> None:
        # Only the holder lets go: a machine closing or stopping what it does not own (a name
        # it gave up earlier) changes nothing here.
        if table.get(key) is machine:
            del table[key]

    # -- events in, effects out ----------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Effect]:
        """The actor's whole turn for ``event``: the owning machine's effects, the owner's
        reactions to its notices, then to the notices of commands run meanwhile."""
        effects: list[Effect] = []
        if isinstance(event, ev.Started):
            for each in list(self._machines):
                effects += self._deliver(each, event, now)
            if self._on_started is not None:
                effects += self._on_started(now)
        else:
            machine = self.owner(event)
            if machine is not None and type(event) is ev.Received:
                effects += self._deliver(machine, event, now)
            elif machine is not None:
                match event:
                    case ev.Closed(conn=conn) | ev.ConnectFailed(conn=conn):
                        del self._conns[conn]
                    case ev.TimerFired(timer=timer):
                        del self._timers[timer]
                    case ev.Accepted(conn=conn):
                        self._take(self._conns, conn, machine, "connection")
                effects += self._deliver(machine, event, now)
        while self._later:
            react, notice = self._later.pop(0)
            effects += react(notice, now)
        return effects

    def _deliver(self, machine: _AnyMachine, event: Event, now: float) -> list[Effect]:
        step = machine.handle(event, now)
        self.claim(machine, step.effects)
        effects = list(step.effects)
        react = self._react[id(machine)]
        for notice in step.notices:
            effects += react(notice, now)
        return effects

    def run(self, machine: Machine[N], step: Step[N]) -> list[Effect]:
        """A command's step: learn from its effects and return them; its notices reach the
        owner when the event being handled is done."""
        self.claim(machine, step.effects)
        react = self._react[id(machine)]
        self._later += [(react, notice) for notice in step.notices]
        return list(step.effects)


class Solo:
    """An actor that is one machine and nothing else (a TURN server on its own, for tests and
    benchmarks): the runtime's :class:`~labsim.proto.events.Actor` around a :class:`Router`."""

    def __init__(self, name: str, host: str, machine: Machine[object]) -> None:
        self.name = name
        self.host = host
        self.machine = machine
        self.router = Router()
        self.router.add(machine)

    def handle(self, event: Event, now: float) -> list[Effect]:
        return self.router.handle(event, now)
