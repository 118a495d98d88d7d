"""Expressway-C: the internal end of Cisco's traversal zone, a SIP proxy toward CMS.

It is not on the media path (PROTOCOL.md §6.2). At start it opens the traversal connection to
Expressway-E (TCP 7001 by default): Expressway-E sits in the DMZ and may not open connections
into the internal network, so everything it sends to Expressway-C goes down that connection
(:mod:`labsim.proto.sip_transport` reuses connections by host).
"""

from __future__ import annotations

from labsim.actors.common import ProxyElement
from labsim.actors.lab import Lab
from labsim.proto.events import Address, Effect, Log
from labsim.proto.sip_proxy import ProxySettings


class ExpresswayC(ProxyElement):
    def __init__(self, lab: Lab, name: str = "expressway_c") -> None:
        settings = lab.expressway_c
        expe = lab.expressway_e
        #: Expressway-E's traversal port, which this side connects to.
        self.traversal = Address(expe.address, expe.traversal_port)
        self.cms = lab.sip("cms")
        routes = ((lab.cms_domain, self.cms), (lab.skype_domain, self.traversal))
        super().__init__(name, ProxySettings(settings.address, settings.sip_port, routes))
        self.settings = settings

    def start(self, now: float) -> list[Effect]:
        return [
            Log(f"traversal zone: connecting to Expressway-E {self.traversal}"),
            *self.open(self.traversal),
            # The zone toward CMS carries the meeting's audio/video call already.
            *self.open(self.cms),
        ]
