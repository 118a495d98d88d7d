"""The lab of one run: the five actors' settings and how the call goes.

Each actor owns one settings type, in its own module (:class:`SkypeClientSettings`,
:class:`SkypeEdgeSettings`, :class:`ExpresswayESettings`, :class:`ExpresswayCSettings`,
:class:`CmsSettings`); the two ends share :class:`CallSettings`. A scenario's ``actors:`` and
``call:`` validate straight into these types (:mod:`labsim.scenario`), and every actor is built
from the whole :class:`Lab`: it reads its own section and what it needs of the others (where
its next hop listens, the meeting's SIP URI), so nothing is copied from one to the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from labsim.actors.cms import CmsSettings
from labsim.actors.expressway_c import ExpresswayCSettings
from labsim.actors.expressway_e import ExpresswayESettings
from labsim.actors.skype_client import SkypeClientSettings
from labsim.actors.skype_edge import SkypeEdgeSettings
from labsim.proto.events import Address
from labsim.proto.ice import CheckAttribute
from labsim.proto.settings import SETTINGS_CONFIG, Seconds, SettingError

__all__ = ["ACTOR_NAMES", "ActorName", "CallSettings", "Lab", "UaSide", "domain_of"]

ActorName = Literal["skype_client", "skype_edge", "expressway_e", "expressway_c", "cms"]
ACTOR_NAMES: tuple[ActorName, ...] = get_args(ActorName)
"""The five actors, in call-path order (DESIGN.md, the call we reproduce)."""

UaSide = Literal["cms", "skype_client"]
"""The two ends of the call, the user agents."""


def domain_of(uri: str) -> str:
    """The host part of a SIP URI: the domain the proxies route on (``cms.lab``)."""
    return uri.split("@", 1)[-1].split(";", 1)[0].split(":", 1)[0]


@dataclass(frozen=True)
class CallSettings:
    """How the call goes once the actors are up: what each end of it does."""

    __pydantic_config__ = SETTINGS_CONFIG

    ice_controlling: UaSide = "cms"
    """The controlling ICE agent, which nominates the pair (USE-CANDIDATE). In the lab, CMS's
    check carries USE-CANDIDATE. In the check layouts, ICE-CONTROLLING and ICE-CONTROLLED both
    mark where the role attribute goes, written as the side's actual role, and USE-CANDIDATE is
    written only by the controlling side."""
    reinvite_from: Literal["controlling", "cms", "skype_client", "both", "none"] = "controlling"
    """Who sends the reINVITE once the pair is valid: the controlling agent (RFC 5245 §9.1.3;
    the lab does not show it), a named side, both (glare: the reINVITEs cross, each end answers
    491 and retries after RFC 3261 §14.1's random wait) or none."""
    hold: Seconds = 6.0
    """Seconds the call stays up after the reINVITE is acknowledged, then BYE; 6 s lets the
    lab's 5 s Binding Indication keepalive appear."""
    bye_from: UaSide = "skype_client"
    """Who hangs up after the hold."""
    reinvite_connection: Literal["existing", "new"] = "existing"
    """a=connection in the post-ICE reINVITE and its answer (unconfirmed: RFC 4145 suggests
    existing since the TCP connection exists; PROTOCOL.md §5.3)."""
    check_layout_cms: tuple[CheckAttribute, ...] = (
        "USE-CANDIDATE", "PRIORITY", "ICE-CONTROLLING", "USERNAME", "MS-IMPLEMENTATION-VERSION",
        "MS-CANDIDATE-IDENTIFIER", "MESSAGE-INTEGRITY", "FINGERPRINT",
    )  # fmt: skip
    """Attributes of CMS's ICE Binding Request, in wire order (the lab's starts with
    USE-CANDIDATE and is 88 bytes; the rest is inferred)."""
    check_layout_skype: tuple[CheckAttribute, ...] = (
        "USE-CANDIDATE", "USERNAME", "PRIORITY", "ICE-CONTROLLED", "MESSAGE-INTEGRITY",
        "FINGERPRINT",
    )  # fmt: skip
    """Attributes of the Skype side's ICE Binding Request, in wire order (88 bytes as
    controlled agent, the lab's 90-byte frame 2596)."""

    def __post_init__(self) -> None:
        for key in ("check_layout_cms", "check_layout_skype"):
            layout: tuple[str, ...] = getattr(self, key)
            for index, name in enumerate(layout):
                if name in layout[:index]:
                    raise SettingError((key, index), f"{name} is listed twice")

    def controlling(self, side: UaSide) -> bool:
        return self.ice_controlling == side

    def sends_reinvite(self, side: UaSide) -> bool:
        who = self.ice_controlling if self.reinvite_from == "controlling" else self.reinvite_from
        return who in (side, "both")

    def sends_bye(self, side: UaSide) -> bool:
        return self.bye_from == side

    def check_layout(self, side: UaSide) -> tuple[str, ...]:
        return self.check_layout_cms if side == "cms" else self.check_layout_skype


@dataclass(frozen=True)
class Lab:
    """The five actors' settings and the call; every default is the lab of Cisco TAC document
    212580, written once, in the settings types."""

    skype_client: SkypeClientSettings = field(default_factory=SkypeClientSettings)
    skype_edge: SkypeEdgeSettings = field(default_factory=SkypeEdgeSettings)
    expressway_e: ExpresswayESettings = field(default_factory=ExpresswayESettings)
    expressway_c: ExpresswayCSettings = field(default_factory=ExpresswayCSettings)
    cms: CmsSettings = field(default_factory=CmsSettings)
    call: CallSettings = field(default_factory=CallSettings)

    def sip(self, name: ActorName) -> Address:
        """Where ``name`` takes SIP: its address and SIP port."""
        actor = getattr(self, name)
        return Address(actor.address, actor.sip_port)

    @property
    def cms_domain(self) -> str:
        """The meeting's domain: the proxies route requests for it toward CMS."""
        return domain_of(self.cms.user)

    @property
    def skype_domain(self) -> str:
        """The Skype users' domain: the proxies route requests for it toward the client."""
        return domain_of(self.skype_client.user)
