"""What the three SIP proxies of the call share: a transport, a proxy, and the dispatch of
runtime events between them and whatever else the actor holds."""

from __future__ import annotations

from labsim.proto.events import Effect, Event, Started
from labsim.proto.sip_proxy import ProxySettings, SipProxy
from labsim.proto.sip_transport import SipTransport


class ProxyElement:
    """An actor whose SIP side is a :class:`SipProxy`; subclasses add their other machines by
    overriding :meth:`other` (return None when the event is not theirs)."""

    def __init__(self, name: str, host: str, settings: ProxySettings, ports: tuple[int, ...]):
        self.name = name
        self.host = host
        self.transport = SipTransport(host, ports)
        self.proxy = SipProxy(name, settings, self.transport)

    def start(self, now: float) -> list[Effect]:
        return self.transport.start()

    def other(self, event: Event, now: float) -> list[Effect] | None:
        return None

    def handle(self, event: Event, now: float) -> list[Effect]:
        if isinstance(event, Started):
            return self.start(now)
        if self.transport.wants(event):
            effects, notices = self.transport.handle(event, now)
            for notice in notices:
                effects += self.proxy.on_notice(notice, now)
            return effects
        return self.other(event, now) or []
