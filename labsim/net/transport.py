"""The narrow contract between the runtime core and a clock with its network.

:class:`~labsim.net.runtime.Runtime` carries the actors' effects out and knows nothing of
sockets or simpy; it composes one :class:`Transport`, which moves bytes, opens and closes
connections and keeps time — on loopback sockets (:mod:`labsim.net.live`) or in virtual time
(:mod:`labsim.net.virtual`). A transport reports what the network did back through the
runtime's network entry points (``Runtime.open_link``, ``client_end`` / ``server_end``,
``accepted`` / ``connected``, ``connect_failed``, ``received``, ``peer_closed``,
``write_pressure``, ``request_stop``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from labsim.net.faults import BlockHow
from labsim.net.model import ActorState, End
from labsim.proto.events import Address, Connect


class Handle(Protocol):
    """Something scheduled that can be called off."""

    def cancel(self) -> None: ...


class Transport(Protocol):
    """What a clock and its network do for the runtime core."""

    def now(self) -> float:
        """Seconds since the run started."""
        ...

    def soon(self, fn: Callable[..., object], *args: object) -> None:
        """Call ``fn(*args)`` after the current callback, at the same time."""
        ...

    def later(self, delay: float, fn: Callable[..., object], *args: object) -> Handle:
        """Call ``fn(*args)`` ``delay`` seconds from now; callbacks due at the same time run in
        the order they were scheduled."""
        ...

    def stop(self) -> None:
        """The run must end now (its deadline passed, or its stop condition holds)."""
        ...

    def listen(self, st: ActorState, address: Address) -> tuple[Address, object] | str:
        """Start listening: (bound address, handle), or why not."""
        ...

    def unlisten(self, handle: object) -> None: ...

    def connect(self, st: ActorState, effect: Connect, blocked: BlockHow | None) -> object:
        """Start a connect; the handle goes into ``st.connecting``. It ends in the runtime's
        ``connected`` or ``connect_failed`` unless cancelled. ``blocked``: a reachability
        rule says it cannot get through, and how it fails."""
        ...

    def cancel_connect(self, handle: object) -> None: ...

    def write(self, end: End, data: bytes) -> None:
        """Write bytes (the sends of one effect list on ``end``, joined)."""
        ...

    def close(self, end: End, reset: bool) -> None:
        """The actor closed its end (already marked closed and traced): FIN or RST the peer."""
        ...

    def abort(self, end: End) -> None:
        """The network cut the connection: drop ``end``'s socket without a word to the peer."""
        ...

    def alive(self, end: End) -> bool:
        """Whether bytes written on ``end`` can still go out (its socket is not lost)."""
        ...

    def reading(self, end: End, on: bool) -> None:
        """Resume (``on``) or pause reading ``end``; a transport without buffers ignores it."""
        ...
