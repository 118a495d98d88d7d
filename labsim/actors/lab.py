"""The lab of one run: the five actors' settings and how the call goes.

Each actor owns one settings type (:class:`SkypeClientSettings` for
:class:`~labsim.actors.skype_client.SkypeClient`, and so on); the two ends share
:class:`CallSettings`. They live together here, below the actors, so that each actor can be
built from the whole :class:`Lab`: it reads its own section and what it needs of the others
(where its next hop listens, the meeting's SIP URI, Expressway-E's TURN port), and nothing is
copied from one to the other. A scenario's ``actors:`` and ``call:`` validate straight into
these types (:mod:`labsim.scenario`); the TURN machines' settings they hold are the machines'
own (:mod:`labsim.proto.turn_server`, :mod:`labsim.proto.turn_client`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Annotated, Literal, get_args

import annotated_types as at

from labsim.proto.events import Address
from labsim.proto.ice import CheckAttribute, IceCredentials, IcePwd, IceUfrag
from labsim.proto.settings import (
    MAX_SECONDS,
    SETTINGS_CONFIG,
    IPv4,
    Ordinal,
    Port,
    PositiveSeconds,
    Seconds,
    SettingError,
    SipUri,
)
from labsim.proto.sip_ua_state import SipTimers
from labsim.proto.turn_client import ExternalTurnServer, TurnClientSettings
from labsim.proto.turn_server import TurnServerSettings
from labsim.wire import sip

__all__ = [
    "ACTOR_NAMES",
    "ActorName",
    "CallSettings",
    "CmsSettings",
    "ExpresswayCSettings",
    "ExpresswayESettings",
    "Lab",
    "SkypeClientSettings",
    "SkypeEdgeSettings",
    "SipRefusal",
    "StaticNat",
    "UaSide",
    "domain_of",
]

ActorName = Literal["skype_client", "skype_edge", "expressway_e", "expressway_c", "cms"]
ACTOR_NAMES: tuple[ActorName, ...] = get_args(ActorName)
"""The five actors, in call-path order (DESIGN.md, the call we reproduce)."""

UaSide = Literal["cms", "skype_client"]
"""The two ends of the call, the user agents."""


def domain_of(uri: str) -> str:
    """The host part of a SIP URI: the domain the proxies route on (``cms.lab``)."""
    return uri.split("@", 1)[-1].split(";", 1)[0].split(":", 1)[0]


ErrorStatus = Annotated[int, at.Interval(ge=400, le=699)]
"""A SIP final error status (RFC 3261 §21.4-§21.6: 4xx, 5xx, 6xx)."""


@dataclass(frozen=True)
class SipRefusal:
    """A final error answer a user agent gives an INVITE or reINVITE instead of accepting it
    (RFC 3261 §21), e.g. {status: 488} or {status: 503, retry_after: 5, nth: 1}."""

    __pydantic_config__ = SETTINGS_CONFIG

    status: ErrorStatus
    """The status code, 400-699: 403, 486, 488, 491 (a reINVITE: the peer retries, §14.1),
    481 (a reINVITE: this end has lost the dialog), 500, 503, 603 ..."""
    reason: str | None = None
    """The reason phrase; null: RFC 3261 §21's for the status (a status §21 does not define
    needs one)."""
    retry_after: Annotated[int, at.Interval(ge=0, le=int(MAX_SECONDS))] | None = None
    """Seconds in a Retry-After header (RFC 3261 §20.33; with 503: when the service is back),
    at most a day; null: no Retry-After."""
    nth: Ordinal | None = None
    """Which request gets this answer, counting from 1 the INVITEs (or the peer's reINVITEs)
    this end takes on; null: every one."""

    def __post_init__(self) -> None:
        if self.reason is None and self.status not in sip.DEFAULT_REASONS:
            raise SettingError(
                ("reason",),
                f"RFC 3261 §21 defines no reason phrase for {self.status}: give one",
                alternatives=[("status",)],
            )
        if self.reason is not None and (
            not self.reason.strip() or any(not " " <= c <= "~" for c in self.reason)
        ):  # fmt: skip
            # §25.1: Reason-Phrase is text without CR or LF; kept to printable ASCII so a
            # capture shows what was written.
            raise SettingError(("reason",), f"{self.reason!r} is not a one-line ASCII phrase")

    @property
    def phrase(self) -> str:
        """The reason phrase on the wire."""
        return self.reason if self.reason is not None else sip.DEFAULT_REASONS[self.status]

    def applies(self, count: int) -> bool:
        """Whether the ``count``-th request (from 1) gets this answer."""
        return self.nth is None or self.nth == count


@dataclass(frozen=True)
class SkypeClientSettings:
    """The Skype for Business client that shares its screen."""

    __pydantic_config__ = SETTINGS_CONFIG

    address: IPv4 = "192.168.1.100"
    """Lab address (invented: the lab does not show the client)."""
    sip_port: Port = 5060
    """SIP over TCP."""
    user: SipUri = "sip:alice@skype.lab"
    """The sharer's SIP URI."""
    media_port: Port = 50040
    """Port of the client's host candidates (m=applicationsharing, TCP-PASS and TCP-ACT)."""
    ice_ufrag: IceUfrag = "Xa3f"
    """a=ice-ufrag of the offer."""
    ice_pwd: IcePwd = "Tq9sLmN2vB7xYc4ZkP1rW8dE"
    """a=ice-pwd of the offer."""
    direct_path: bool = False
    """The client has an IP path to Expressway-E and opens the media connection to the relay
    itself instead of through the Skype Edge; implies skype_client -> expressway_e in
    reachability."""
    ice_timeout: PositiveSeconds = 10.0
    """Seconds from the 200 OK to a valid candidate pair (or the reINVITE) before the client
    gives the sharing session up with BYE, as a client whose connectivity checks fail does (set
    it above 30 to see Expressway-E's ConnectionBind timer close the peer connection first)."""
    cms_role: Literal["presenter", "attendee"] = "presenter"
    """CMS's role in the Skype meeting. attendee: the meeting's policy lets only presenters
    share, so CMS's sharing reINVITE is refused with 403 and ms-diagnostics-public:
    21002;reason="Attendees cannot share in this conference";component="ASMCU" (PROTOCOL.md
    §5.4; the fix on a real meeting: Make Presenter)."""
    refuse_reinvite: SipRefusal | None = None
    """Answer CMS's reINVITE with this error (e.g. {status: 488}; {status: 491, nth: 1}: glare
    once, CMS retries); for the reINVITEs it names it comes before cms_role. null: the
    reINVITE is answered 200 (or 403 for an attendee). After any refusal but 491 the end that
    sent the reINVITE ends the dialog with BYE (Reason: the status), or without BYE after 481."""
    retry_after_503: bool = False
    """A 503 Service Unavailable with Retry-After to the sharing INVITE: send the INVITE once
    more after that many seconds (RFC 3261 §21.5.4; same Call-ID and tag, next CSeq). false:
    the call attempt is over, as after any other refusal."""
    sip_timers: SipTimers = field(default_factory=SipTimers)
    """T1 and T2 (RFC 3261 §17.1.1.1): Timer B of the INVITE and reINVITE, Timer F of the BYE,
    the retransmissions of a 2xx and the wait for its ACK."""
    start_delay: Seconds = 0.0
    """Seconds from the start until the client's first INVITE: the meeting's audio/video call
    (call.av_call), else the sharing INVITE (the client is in that call already)."""
    share_after: Seconds = 0.5
    """Seconds from the audio/video call's ACK until the sharing INVITE (call.av_call: the
    user presses Share once in the meeting); unused without the audio/video call."""
    linger: Seconds = 0.05
    """Seconds between the client's last act and its end (lets its closes reach the trace)."""
    seed: int = 5061
    """Seed of the client's random numbers (Call-ID, tags, branches, keys): runs repeat."""

    @property
    def ice(self) -> IceCredentials:
        return IceCredentials(self.ice_ufrag, self.ice_pwd)


@dataclass(frozen=True)
class SkypeEdgeSettings:
    """The Skype for Business Edge: SIP proxy and media relay for the client."""

    __pydantic_config__ = SETTINGS_CONFIG

    address: IPv4 = "192.168.1.252"
    """Lab address: the Skype-side peer of the lab's ConnectionAttempt."""
    sip_port: Port = 5060
    """SIP over TCP."""
    media_port: Port = 3478
    """Where the client's media connection arrives at the Edge."""
    relay_port: Port = 53577
    """Source port of the Edge's connection to the TURN relay (the lab's XOR-PEER-ADDRESS
    192.168.1.252:53577)."""
    connect_timeout: PositiveSeconds = 5.0
    """Seconds the Edge's connection to the relay may take before the client's media
    connection is closed."""


@dataclass(frozen=True)
class StaticNat:
    """A static NAT in front of Expressway-E's external interface (Expressway's "static NAT
    mode"): the Skype side reaches Expressway-E at a public address the firewall forwards."""

    __pydantic_config__ = SETTINGS_CONFIG

    public_address: IPv4
    """The public address mapped to Expressway-E (Expressway: the IPv4 static NAT address).
    The TURN server advertises it in XOR-RELAYED-ADDRESS, so CMS's relay candidate names it and
    the Skype Edge connects there."""
    relay_ports_forwarded: bool = True
    """Whether the firewall forwards TCP to the relay range (turn.relay_ports) on the public
    address to Expressway-E; false: connects there are dropped and time out."""


@dataclass(frozen=True)
class ExpresswayESettings:
    """Expressway-E: SIP proxy towards the Skype Edge, traversal server, TURN server."""

    __pydantic_config__ = SETTINGS_CONFIG

    address: IPv4 = "10.48.54.229"
    """Lab address (the lab's TURN server)."""
    sip_port: Port = 5060
    """SIP over TCP, from the Skype Edge."""
    traversal_port: Port = 7001
    """Traversal zone port: Expressway-C opens the traversal connection here."""
    turn: TurnServerSettings = field(default_factory=TurnServerSettings)
    """The TURN server: labsim's, or a real one standing in for it (turn.external)."""
    nat: StaticNat | None = None
    """A static NAT in front of Expressway-E; null (the lab): none, the relay is advertised at
    Expressway-E's own address, which the Skype Edge reaches directly."""


@dataclass(frozen=True)
class ExpresswayCSettings:
    """Expressway-C: SIP proxy between the traversal zone and CMS."""

    __pydantic_config__ = SETTINGS_CONFIG

    address: IPv4 = "10.48.54.228"
    """Lab address (invented)."""
    sip_port: Port = 5060
    """SIP over TCP, from CMS."""


@dataclass(frozen=True)
class CmsSettings:
    """Cisco Meeting Server: hosts the meeting, uses Expressway-E as its TURN server."""

    __pydantic_config__ = SETTINGS_CONFIG

    address: IPv4 = "10.48.54.230"
    """Lab address (the lab's TURN client)."""
    sip_port: Port = 5060
    """SIP over TCP."""
    user: SipUri = "sip:meeting@cms.lab"
    """The meeting's SIP URI."""
    media_port: Port = 33710
    """Port of CMS's host candidates (offered, never reachable from the Skype side)."""
    ice_ufrag: IceUfrag = "cM5k"
    """a=ice-ufrag of the answer."""
    ice_pwd: IcePwd = "Hh3uY7pQ1wE5rT9iO2aS6dF0"
    """a=ice-pwd of the answer."""
    turn: TurnClientSettings | None = field(default_factory=TurnClientSettings)
    """CMS's TURN client (its server is Expressway-E at its TURN port). null: no TURN server
    configured (CMS's /turnServers empty): CMS allocates nothing and answers with its host
    candidates only, which the Skype side cannot reach."""
    refuse_invite: SipRefusal | None = None
    """Answer the sharing INVITE with this error after 100 Trying, before any TURN request
    (e.g. {status: 488}, {status: 503, retry_after: 5}); no dialog is made, the caller ACKs
    and the call is over (RFC 3261 §13.2.2.3, §17.1.1.3). null: accept it."""
    refuse_reinvite: SipRefusal | None = None
    """Answer the Skype client's reINVITE (call.reinvite_from: skype_client or both) with this
    error; null: 200."""
    sip_timers: SipTimers = field(default_factory=SipTimers)
    """T1 and T2 (RFC 3261 §17.1.1.1): the 200 OK's retransmissions and the wait for its ACK,
    Timer B of the reINVITE, Timer F of the BYE."""
    linger: Seconds = 0.05
    """Seconds between CMS's last act and its end (lets its closes reach the trace)."""
    seed: int = 2017
    """Seed of CMS's random numbers (tags, branches, keys, TURN transaction IDs): runs
    repeat."""

    @property
    def ice(self) -> IceCredentials:
        return IceCredentials(self.ice_ufrag, self.ice_pwd)


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
    """Who sends the reINVITE once the pair is valid: the controlling agent (RFC 5245 §8.1.2;
    the lab does not show it), a named side, both (glare: the reINVITEs cross, each end answers
    491 and retries after RFC 3261 §14.1's random wait) or none."""
    hold: Seconds = 6.0
    """Seconds the call stays up after the reINVITE is acknowledged, then BYE; 6 s lets the
    lab's 5 s Binding Indication keepalive appear."""
    bye_from: UaSide = "skype_client"
    """Who hangs up after the hold."""
    av_call: bool = True
    """The Skype client first joins the meeting with an ordinary audio/video call: its own
    INVITE (own Call-ID, From tag and CSeq; SDP with m=audio and m=video and MS-ICE2
    candidates, no media beyond the SDP), 200 OK, ACK, along the same proxies. The sharing
    INVITE is a new dialog with a different Call-ID (Cisco 212580: "It will have a different
    SIP call-id than the initial audio/video call"); CMS allocates its TURN relay for the share
    only. The A/V dialog stays up during the share; once the sharing dialog is over the client
    hangs it up with BYE (it leaves the meeting). false: the sharing INVITE alone, as the
    TechNote's figures show it."""
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

    def __post_init__(self) -> None:
        external = self.expressway_e.turn.external
        if external is not None and self.cms.turn is not None:
            # The credentials and realm are the external server's: CMS's TURN client takes
            # them (its /turnServers entry names that server). Folded in here, once, so that
            # lab.cms.turn is what CMS really sends.
            turn = replace(
                self.cms.turn, username=external.username, password=external.password,
                realm=external.realm,
            )  # fmt: skip
            object.__setattr__(self, "cms", replace(self.cms, turn=turn))

    @property
    def external_turn(self) -> ExternalTurnServer | None:
        """The real TURN server standing in for Expressway-E's, if the lab has one."""
        return self.expressway_e.turn.external

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
