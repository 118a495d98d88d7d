"""Expressway-E: the DMZ end of the traversal zone (a SIP proxy) and the TURN server CMS uses
for its TCP relay (RFC 5766 + RFC 6062, :mod:`labsim.proto.turn_server`).

SIP arrives from the Skype Edge on the SIP port and from Expressway-C on the traversal port;
requests for the meeting's domain go to Expressway-C down the connection Expressway-C opened.
The TURN server is the actor's second machine; the router gives it the events of its listeners,
connections and timers. With an external TURN server (``turn.external``: coturn or a real
Expressway-E in the call, live clock only) the actor runs none: it is the SIP proxy alone, and
the run carries CMS's TURN connections and the Skype side's relay connection to the real server.
"""

from __future__ import annotations

from labsim.actors.common import ProxyElement
from labsim.actors.lab import Lab
from labsim.proto.sip_proxy import ProxySettings
from labsim.proto.turn_server import TurnServer


class ExpresswayE(ProxyElement):
    def __init__(self, lab: Lab, name: str = "expressway_e") -> None:
        settings = lab.expressway_e
        # Toward CMS: down the traversal connection Expressway-C opened (the transport reuses
        # connections by host, so Expressway-C's SIP address is enough).
        routes = (
            (lab.cms_domain, lab.sip("expressway_c")),
            (lab.skype_domain, lab.sip("skype_edge")),
        )
        super().__init__(
            name,
            ProxySettings(settings.address, settings.sip_port, routes, (settings.traversal_port,)),
        )
        self.settings = settings
        nat = settings.nat
        #: None when an external server stands in for the TURN service (turn.external).
        self.turn: TurnServer | None = None
        if settings.turn.external is None:
            self.turn = TurnServer(
                name, settings.address, settings.turn,
                public_host=nat.public_address if nat is not None else None,
            )  # fmt: skip
            self.router.add(self.turn)
