"""Write batching and backpressure: how an actor's sends reach the transport.

* **Batching.** The bytes all the Sends of one effect list put on one connection are written
  together, after the list (before a Close of that connection in it), as TCP_CORK would: they
  usually arrive as one Received in both runtimes, and a live run makes one syscall, not several.
* **Backpressure** (live runtime). When an end's write buffer goes over its high-water mark,
  the ends of the same actor whose bytes made it send there (a relay's other side: its
  *feeders*) stop being read until it drains, so a slow reader cannot make a relay buffer
  without bound; the kernel's window then slows the fast sender down, as TCP does.
"""

from __future__ import annotations

from labsim.net.model import End
from labsim.net.transport import Transport


class Writes:
    """The writes of the effect list being carried out, and who feeds whom."""

    __slots__ = ("transport", "_corked", "source", "read_pauses")

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._corked: list[End] = []
        #: The end whose bytes the actor is handling now (its sends are fed by it).
        self.source: End | None = None
        #: How many times an end's reading was paused because what it feeds could not keep up.
        self.read_pauses = 0

    def queue(self, end: End, data: bytes) -> None:
        """Queue bytes (already traced) for the write at the end of the effect list."""
        buf = end.outbuf
        if buf is None:
            end.outbuf = [data]
            self._corked.append(end)
        else:
            buf.append(data)
        source = self.source
        if source is not None and source is not end and source.st is end.st:
            self._note_feeder(source, end)

    def flush(self) -> None:
        """Write what each connection was sent by one effect list, as one write."""
        if self._corked:
            corked, self._corked = self._corked, []
            for end in corked:
                self.flush_end(end)

    def flush_end(self, end: End) -> None:
        buf = end.outbuf
        if buf is not None:
            end.outbuf = None
            self.transport.write(end, buf[0] if len(buf) == 1 else b"".join(buf))

    # -- backpressure --------------------------------------------------------------------------

    def _note_feeder(self, source: End, end: End) -> None:
        feeders = end.feeders
        if feeders is None:
            feeders = end.feeders = set()
        if source not in feeders:
            feeders.add(source)
            if end.write_paused:
                self._pause(source)

    def pressure(self, end: End, paused: bool) -> None:
        """The write buffer of ``end`` went over (or back under) its high-water mark."""
        if end.write_paused == paused:
            return
        end.write_paused = paused
        for feeder in end.feeders or ():
            if paused:
                self._pause(feeder)
            else:
                feeder.read_pauses -= 1
                if feeder.read_pauses == 0 and feeder.open:
                    self.transport.reading(feeder, True)

    def _pause(self, feeder: End) -> None:
        feeder.read_pauses += 1
        if feeder.read_pauses == 1 and feeder.open:
            self.read_pauses += 1
            self.transport.reading(feeder, False)
