"""Expressway-C: the internal end of Cisco's traversal zone, a SIP proxy toward CMS.

It is not on the media path (PROTOCOL.md §6.2). At start it opens the traversal connection to
Expressway-E (TCP 7001 by default): Expressway-E sits in the DMZ and may not open connections
into the internal network, so everything it sends to Expressway-C goes down that connection
(:mod:`labsim.proto.sip_transport` reuses connections by host).
"""

from __future__ import annotations

from dataclasses import dataclass

from labsim.actors.common import ProxyElement
from labsim.proto.events import Address, Effect, Log
from labsim.proto.sip_proxy import ProxySettings


@dataclass(frozen=True)
class ExpresswayCSettings:
    host: str = "10.48.54.228"
    sip_port: int = 5060
    traversal: Address = Address("10.48.54.229", 7001)
    """Expressway-E's traversal port, which this side connects to."""
    cms: Address = Address("10.48.54.230", 5060)
    cms_domain: str = "cms.lab"
    skype_domain: str = "skype.lab"


class ExpresswayC(ProxyElement):
    def __init__(self, settings: ExpresswayCSettings, name: str = "expressway_c") -> None:
        routes = ((settings.cms_domain, settings.cms), (settings.skype_domain, settings.traversal))
        super().__init__(
            name, settings.host, ProxySettings(settings.host, settings.sip_port, routes),
            (settings.sip_port,),
        )  # fmt: skip
        self.settings = settings

    def start(self, now: float) -> list[Effect]:
        return [
            *super().start(now),
            Log(f"traversal zone: connecting to Expressway-E {self.settings.traversal}"),
            *self.transport.open(self.settings.traversal),
            # The zone toward CMS carries the meeting's audio/video call already.
            *self.transport.open(self.settings.cms),
        ]
