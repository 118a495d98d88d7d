"""Expressway-E: the DMZ end of the traversal zone (a SIP proxy) and the TURN server CMS uses
for its TCP relay (RFC 5766 + RFC 6062, :mod:`labsim.proto.turn_server`).

SIP arrives from the Skype Edge on the SIP port and from Expressway-C on the traversal port;
requests for the meeting's domain go to Expressway-C down the connection Expressway-C opened.
Every other event belongs to the TURN server (its ``wants`` says which).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from labsim.actors.common import ProxyElement
from labsim.proto.events import Address, Effect, Event, Started
from labsim.proto.sip_proxy import ProxySettings
from labsim.proto.turn_server import TurnServer, TurnServerSettings


@dataclass(frozen=True)
class ExpresswayESettings:
    host: str = "10.48.54.229"
    sip_port: int = 5060
    traversal_port: int = 7001
    expressway_c: Address = Address("10.48.54.228", 5060)
    edge: Address = Address("192.168.1.252", 5060)
    cms_domain: str = "cms.lab"
    skype_domain: str = "skype.lab"
    turn: TurnServerSettings = field(default_factory=TurnServerSettings)


class ExpresswayE(ProxyElement):
    def __init__(self, settings: ExpresswayESettings, name: str = "expressway_e") -> None:
        routes = (
            (settings.cms_domain, settings.expressway_c),
            (settings.skype_domain, settings.edge),
        )
        super().__init__(
            name, settings.host,
            ProxySettings(settings.host, settings.sip_port, routes, (settings.traversal_port,)),
            (settings.sip_port, settings.traversal_port),
        )  # fmt: skip
        self.settings = settings
        self.turn = TurnServer(name, settings.host, settings.turn)

    def handle(self, event: Event, now: float) -> list[Effect]:
        if isinstance(event, Started):
            return [*self.start(now), *self.turn.handle(event, now)]
        if self.turn.wants(event):
            return self.turn.handle(event, now)
        return super().handle(event, now)
