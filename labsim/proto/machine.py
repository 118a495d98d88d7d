"""The one contract every protocol machine speaks (issue 10).

A protocol machine — :class:`~labsim.proto.turn_server.TurnServer`,
:class:`~labsim.proto.turn_client.TurnClient`, :class:`~labsim.proto.sip_transport.SipTransport`,
:class:`~labsim.proto.sip_proxy.SipProxy`, :class:`~labsim.proto.ice.CheckLink`,
:class:`Timers` — is sans-IO like the actor around it (DESIGN.md, "Rules that keep it honest"),
and says everything it has to say in one typed value, a :class:`Step`:

- ``machine.handle(event, now) -> Step[N]`` takes one runtime event
  (:data:`~labsim.proto.events.Event`) at time ``now``. The router
  (:mod:`labsim.proto.router`) calls it, only with events of what the machine owns.
- A machine's *commands* (``SipTransport.send``, ``TurnClient.release``, ``CheckLink.begin`` …),
  called by its owner, return a :class:`Step` too, and the owner hands that step to
  :meth:`labsim.proto.router.Router.run`.

A step holds:

``effects``
    for the runtime, in order (:data:`~labsim.proto.events.Effect`). The router learns from
    them what the machine now owns: a :class:`~labsim.proto.events.Connect` names a
    connection, a :class:`~labsim.proto.events.Listen` an address (the connections
    :class:`~labsim.proto.events.Accepted` there are the machine's), a
    :class:`~labsim.proto.events.StartTimer` a timer. So no machine answers "is this yours?":
    there is no ``wants``, ``owns_conn`` or ``owns_timer``.
``notices``
    for the machine's owner, in order: what happened that the owner may act on (a SIP message
    arrived, the allocation exists, the candidate pair is valid). Each machine declares its
    notice type ``N`` (a union of frozen dataclasses, or ``Never`` for a machine that tells
    its owner nothing, such as the TURN server); the owner gives the router one function per
    machine taking exactly that type.

Timer names (:data:`~labsim.proto.events.TimerId`) are typed values: enum members (the user
agents' :class:`~labsim.actors.common.UaTimer`, :class:`~labsim.proto.turn_client.ClientTimer`)
or frozen dataclasses carrying what tells two timers of one kind apart
(:class:`~labsim.proto.turn_server.BindTimer` holds the CONNECTION-ID). A name is never built
by formatting a string, and the type of the name says which machine can own it.

A tuple ``(effects, notices)`` would do the same work; a frozen dataclass names the two parts,
cannot be confused with other pairs, and keeps ``effects`` ordered and immutable once returned.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, Never, Protocol, TypeVar

from labsim.proto.events import Effect, Event, StartTimer, StopTimer, TimerFired, TimerId

N = TypeVar("N")
N_co = TypeVar("N_co", covariant=True)
T = TypeVar("T", bound=TimerId)


@dataclass(frozen=True, slots=True)
class Step(Generic[N_co]):
    """What a machine returns for one event or command."""

    effects: tuple[Effect, ...] = ()
    """For the runtime, in order; the router learns ownership from them."""
    notices: tuple[N_co, ...] = ()
    """For the machine's owner, in order."""

    @staticmethod
    def of(effects: Iterable[Effect] = (), notices: Iterable[N] = ()) -> Step[N]:
        """A step from lists (machines build their effects in lists)."""
        return Step(tuple(effects), tuple(notices))


#: The step of a machine that has nothing to say.
NOTHING: Step[Never] = Step()


class Machine(Protocol[N_co]):
    """A protocol machine: takes the runtime events of what it owns, returns a :class:`Step`
    whose notices are of type ``N``."""

    def handle(self, event: Event, now: float) -> Step[N_co]:
        """Take one event at time ``now`` (seconds)."""
        ...


class Timers(Generic[T]):
    """The machine of an owner's own timers (the user agents' :class:`UaTimer`): the router
    delivers their :class:`TimerFired` here, and the owner hears the timer's name as a notice.

    The owner starts and stops them with :meth:`start` and :meth:`stop`, whose steps go
    through :meth:`~labsim.proto.router.Router.run` like any command's."""

    def start(self, timer: T, delay: float) -> Step[Never]:
        return Step((StartTimer(timer, delay),))

    def stop(self, *timers: T) -> Step[Never]:
        return Step(tuple(StopTimer(timer) for timer in timers))

    def handle(self, event: Event, now: float) -> Step[T]:
        if isinstance(event, TimerFired):
            # Only this machine's timers are routed here, and they are all of type T.
            timer: T = event.timer  # type: ignore[assignment]
            return Step((), (timer,))
        return Step()
