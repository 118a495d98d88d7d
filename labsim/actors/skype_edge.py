"""The Skype for Business Edge: SIP proxy between the client and Expressway-E, and the
client's media relay.

The client has no IP path to Expressway-E (the lab's premise, Cisco 212580), so its media
reaches CMS's relay candidate through the Edge: the client opens a TCP connection to the
Edge's media port, and the Edge opens one from its own address (the lab's
192.168.1.252:53577) to the relay candidate on Expressway-E, then pipes bytes both ways.

Simplification, on purpose: a real A/V Edge is told the destination through MS-TURN (its
Allocate and Set Active Destination, PROTOCOL.md §5.2), a protocol that never reaches the
Expressway leg. Here the Edge learns it by reading the answer SDP it forwards (the first relay
candidate of the m=applicationsharing section, else the first passive candidate: CMS's private
host address, which the Edge has no route to); the bytes on every leg the lab captured stay the
same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Never

from labsim.actors.common import ProxyElement
from labsim.actors.lab import Lab
from labsim.proto import appsharing
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
    Log,
    Received,
    Send,
    Started,
)
from labsim.proto.machine import Step
from labsim.proto.sip_proxy import ProxySettings, ResponseForwarded
from labsim.wire import WireError, sip


@dataclass
class _Pipe:
    inner: ConnId
    outer: ConnId
    target: Address
    up: bool = False
    pending: list[bytes] = field(default_factory=list)


class MediaRelay:
    """The Edge's media relay, a machine with no notices: it listens on the media port, and
    for each client connection opens one from the relay port to :attr:`target` and pipes bytes
    both ways (what is sent before the outer connection is up waits)."""

    def __init__(self, address: Address, relay_port: int, connect_timeout: float) -> None:
        self.address = address
        self.relay_port = relay_port
        self.connect_timeout = connect_timeout
        #: CMS's relay candidate, read from the answer the Edge forwards to the client.
        self.target: Address | None = None
        self._pipes: dict[ConnId, _Pipe] = {}
        self._count = 0

    def handle(self, event: Event, now: float) -> Step[Never]:
        return Step(tuple(self._handle(event)))

    def _handle(self, event: Event) -> list[Effect]:
        match event:
            case Started():
                return [Listen(self.address)]
            case Accepted(conn=conn):
                return self._client_media(conn)
            case Connected(conn=conn) if conn in self._pipes:
                pipe = self._pipes[conn]
                pipe.up = True
                effects: list[Effect] = (
                    [Send(conn, b"".join(pipe.pending), "raw")] if pipe.pending else []
                )
                pipe.pending.clear()
                return effects
            case ConnectFailed(conn=conn, reason=reason) if conn in self._pipes:
                pipe = self._pipes.pop(conn)
                self._pipes.pop(pipe.inner, None)
                return [Log(f"relay to {pipe.target} failed: {reason}", "warn"),
                        Close(pipe.inner, reset=True)]  # fmt: skip
            case Received(conn=conn, data=data) if conn in self._pipes:
                pipe = self._pipes[conn]
                if conn == pipe.outer:
                    return [Send(pipe.inner, data, "raw")]
                if not pipe.up:
                    pipe.pending.append(data)
                    return []
                return [Send(pipe.outer, data, "raw")]
            case Closed(conn=conn, reset=reset) if conn in self._pipes:
                pipe = self._pipes.pop(conn)
                other = pipe.inner if conn == pipe.outer else pipe.outer
                self._pipes.pop(other, None)
                return [Close(other, reset=reset)]
        return []

    def _client_media(self, conn: ConnId) -> list[Effect]:
        target = self.target
        if target is None:
            return [Log("client media arrived before any answer named a relay", "warn"),
                    Close(conn, reset=True)]  # fmt: skip
        self._count += 1
        return self.pipe(conn, f"relay:{self._count}", target, self.relay_port,
                         f"relaying the client's media to {target}")  # fmt: skip

    def pipe(self, inner: ConnId, outer: ConnId, target: Address, port: int,
             words: str) -> list[Effect]:  # fmt: skip
        """Pipe the client connection ``inner`` to ``target`` over a new connection ``outer``
        from ``port``."""
        self._pipes[inner] = self._pipes[outer] = _Pipe(inner, outer, target)
        return [Log(words), Connect(outer, target, self.connect_timeout, port)]


class SkypeEdge(ProxyElement):
    #: The media relay's type (the many-client Edge relays per client: labsim.actors.meeting).
    relay_type: type[MediaRelay] = MediaRelay

    def __init__(self, lab: Lab, name: str = "skype_edge") -> None:
        settings = lab.skype_edge
        #: Toward Expressway-E (the federation route) and toward the client.
        self.expressway_e, self.client = lab.sip("expressway_e"), lab.sip("skype_client")
        routes = ((lab.cms_domain, self.expressway_e), (lab.skype_domain, self.client))
        super().__init__(name, ProxySettings(settings.address, settings.sip_port, routes))
        self.settings = settings
        self.media_address = Address(settings.address, settings.media_port)
        self.relay = self.relay_type(
            self.media_address, settings.relay_port, settings.connect_timeout
        )
        self.router.add(self.relay)

    @property
    def relay_target(self) -> Address | None:
        """Where the Edge relays the client's media (CMS's relay candidate), once known."""
        return self.relay.target

    def on_forwarded(self, notice: ResponseForwarded, now: float) -> list[Effect]:
        learned = self.answer_target(notice)
        if learned is not None:
            self.relay.target = learned[1]
        return []

    def is_client(self, host: str) -> bool:
        """Whether ``host`` is a client behind this Edge (one here; many in a load run)."""
        return host == self.client.host

    def answer_target(self, notice: ResponseForwarded) -> tuple[str, Address] | None:
        """The client an answer goes to and CMS's relay candidate in it, when ``notice`` is
        CMS's 200 OK to a client's INVITE on its way to that client: the client's own answer
        to a reINVITE names the Edge's relay candidate, not CMS's."""
        response, toward = notice.response, notice.toward
        if (
            response.code != 200
            or sip.cseq(response).method != "INVITE"
            or not response.body
            or toward is None
            or not self.is_client(toward.host)
        ):
            return None
        try:
            target = appsharing.parse(response.body).passive()
        except WireError:
            return None
        return None if target is None else (toward.host, Address(target.address, target.port))

    def start(self, now: float) -> list[Effect]:
        # The federation connection to Expressway-E is up before the sharing INVITE: the
        # audio/video call of the same meeting already runs over it (Cisco 212580).
        return self.open(self.expressway_e)
