"""Scenarios: YAML files -> a validated :class:`Scenario`, every mistake reported as file:line.

A scenario says which lab to build (the five actors and their settings), which network joins
them (latency, who may open TCP to whom), how the call goes, which faults to inject and what the
run must show. The healthy lab of Cisco TAC document 212580 is the model's defaults and the
bundled ``scenarios/sharing-call.yaml``; every other scenario ``extends`` it and states only
what differs (DESIGN.md, "A scenario, as a user would write it").

Why the loader is more than ``yaml.safe_load`` + ``model_validate``: a user editing YAML needs
to be told *where* the mistake is. PyYAML's node tree keeps the line of every key and value,
so the loader builds the plain data and, beside it, a table from each path (``("actors",
"cms", "turn", "lifetime")``) to the file and line it was written at. Pydantic reports errors by
the same paths (``loc``), so each one maps back to a line, in the file that wrote the value even
when it came through ``extends``. Duplicate keys, which PyYAML silently lets the last one win,
are errors too.

``python -m labsim.scenario --schema`` prints the JSON Schema that ``scenarios/schema.json``
holds (editors use it to complete and check scenario files); ``python -m labsim.scenario FILE``
checks files.

This module imports only the standard library, pydantic, PyYAML and ``labsim.wire`` (DESIGN.md,
layers).
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import json
import re
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from labsim.vocabulary import OutcomeName, Verdict
from labsim.wire.facts import FACT_FIELDS, Kind, KindError, parse_kind

__all__ = [
    "ACTOR_NAMES",
    "Actors",
    "Call",
    "Cms",
    "Expect",
    "ExpresswayC",
    "ExpresswayE",
    "Link",
    "MessageExpect",
    "Scenario",
    "ScenarioError",
    "SkypeClient",
    "SkypeEdge",
    "TurnClientConfig",
    "TurnServerConfig",
    "first_sentence",
    "json_schema",
    "library_dir",
    "list_scenarios",
    "load",
    "loads",
    "main",
    "schema_text",
]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class ScenarioError(ValueError):
    """A scenario that cannot be used: ``str()`` is ``file:line: what is wrong``.

    ``path`` is the file that holds the mistake (a parent reached through ``extends`` when the
    bad value was written there), ``line`` is 1-based. When validation finds several mistakes
    at once, this is the first (by file and line) and ``others`` holds the rest; ``str()`` then
    gives one line per mistake, so a user fixes them all in one go.
    """

    def __init__(
        self, path: str, line: int, message: str, others: Sequence[ScenarioError] = ()
    ) -> None:
        self.path = path
        self.line = line
        self.message = message
        self.others = tuple(others)
        super().__init__(str(self))

    def __str__(self) -> str:
        first = f"{self.path}:{self.line}: {self.message}"
        return "\n".join([first, *(str(other) for other in self.others)])


class _At(ValueError):
    """A validator's complaint about a value below the one it validates.

    Pydantic places a validator's error at the field or model it runs on; ``where`` (a path
    relative to that) lets the loader point at the exact key or list item, e.g. the second
    actor that reuses an address rather than the whole ``actors`` block. When two values clash,
    ``alternatives`` name the other one: the loader reports the first the user actually wrote,
    not a default they never saw.
    """

    def __init__(
        self,
        where: tuple[str | int, ...],
        message: str,
        alternatives: Sequence[tuple[str | int, ...]] = (),
    ) -> None:
        super().__init__(message)
        self.where = where
        self.alternatives = tuple(alternatives)


# ---------------------------------------------------------------------------------------------
# Value types shared by the models
# ---------------------------------------------------------------------------------------------

ActorName = Literal["skype_client", "skype_edge", "expressway_e", "expressway_c", "cms"]
ACTOR_NAMES: tuple[str, ...] = get_args(ActorName)
"""The five actors, in call-path order (DESIGN.md, the call we reproduce)."""


def _ipv4(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError as exc:
        raise ValueError(f"not an IPv4 address in dotted form ({exc})") from None


# Numbers and booleans are strict: YAML already types them, so a quoted "3478" or a `yes`
# where a number belongs is a mistake to report, not something to coerce silently.
IPv4 = Annotated[str, AfterValidator(_ipv4), Field(json_schema_extra={"format": "ipv4"})]
Port = Annotated[int, Strict(), Field(ge=1, le=65535)]
Seconds = Annotated[float, Strict(), Field(ge=0)]
PositiveSeconds = Annotated[float, Strict(), Field(gt=0)]
Count = Annotated[int, Strict(), Field(ge=0)]
Flag = Annotated[bool, Strict()]
SipUri = Annotated[str, Field(pattern=r"^sips?:[^@\s]+@[^@\s]+$")]
# RFC 5245 §15.4: ice-char is ALPHA / DIGIT / "+" / "/"; ufrag 4-256, pwd 22-256 characters.
IceUfrag = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]{4,256}$")]
IcePwd = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]{22,256}$")]

#: Names an ICE check layout may list: the typed STUN attributes labsim.wire.stun can build.
#: What an ICE check layout may list: the attributes labsim.proto.ice knows how to fill in
#: (kept equal to its LAYOUT_NAMES by tests/test_call.py; this module may not import proto).
CHECK_ATTRIBUTES: tuple[str, ...] = (
    "FINGERPRINT", "ICE-CONTROLLED", "ICE-CONTROLLING", "MESSAGE-INTEGRITY",
    "MS-CANDIDATE-IDENTIFIER", "MS-IMPLEMENTATION-VERSION", "PRIORITY", "SOFTWARE",
    "USE-CANDIDATE", "USERNAME",
)  # fmt: skip


class _Model(BaseModel):
    # extra="forbid": a misspelt key is an error with its line, never a silently ignored one.
    model_config = ConfigDict(extra="forbid")


def _distinct_ports(ports: dict[tuple[str | int, ...], int]) -> None:
    """Two listeners of one actor on one port cannot both exist (all TCP)."""
    seen: dict[int, tuple[str | int, ...]] = {}
    for where, port in ports.items():
        if port in seen:
            first = seen[port]
            names = " and ".join(".".join(map(str, w)) for w in (first, where))
            raise _At(where, f"{names} are both port {port}", alternatives=[first])
        seen[port] = where


# ---------------------------------------------------------------------------------------------
# TURN
# ---------------------------------------------------------------------------------------------


class TurnServerConfig(_Model):
    """Expressway-E's TURN server (RFC 5766 + RFC 6062 over TCP). Defaults: the lab."""

    port: Port = Field(
        default=3478,
        description="TURN port for the control and data connections (Expressway-E: 3478).",
    )
    realm: str = Field(
        default="TANDBERG",
        min_length=1,
        description="REALM of the long-term credentials; the lab's 401 carries TANDBERG.",
    )
    users: dict[str, str] = Field(
        default_factory=lambda: {"turn": "secret"},
        description="Username -> password of the local authentication database. CMS "
        "authenticates as one of these (actors.cms.turn.username/password).",
    )
    relay_ports: tuple[Port, Port] = Field(
        default=(24000, 29999),
        description="[low, high], inclusive: the ports relays are allocated from "
        "(Expressway-E: 24000-29999); the lowest free one is used.",
    )
    permission_policy: Literal["lab", "rfc"] = Field(
        default="lab",
        description="lab: a peer may connect to a relayed port without a permission (the lab "
        "capture shows no CreatePermission). rfc: without one the peer's connection is reset "
        "and no ConnectionAttempt is sent (RFC 6062 §5.3, as coturn does).",
    )
    tcp_relay: Flag = Field(
        default=True,
        description="false: a TCP Allocate gets 442 Unsupported Transport Protocol, as on "
        "Expressway before X8.9.",
    )
    nonce_lifetime: PositiveSeconds = Field(
        default=3600.0, description="Seconds before a NONCE turns stale and gets 438 Stale Nonce."
    )
    bind_timeout: PositiveSeconds = Field(
        default=30.0,
        description="Seconds a peer connection waits for the ConnectionBind before it is "
        "closed (RFC 6062 §5.3: 30).",
    )
    max_allocations: Count = Field(
        default=1800,
        description="Allocations the server holds at once; one more gets 508 Insufficient "
        "Capacity (Expressway-E: 1800 relays, 6000 on a large system).",
    )
    user_quota: Count = Field(
        default=0,
        description="Allocations one username may hold at once, one more gets 486 Allocation "
        "Quota Reached; 0 = no quota.",
    )
    layout: Literal["expressway", "coturn"] = Field(
        default="expressway",
        description="Attribute order and SOFTWARE of the responses: expressway reproduces the "
        "sizes of the lab's rows, coturn the order coturn uses.",
    )

    @field_validator("relay_ports")
    @classmethod
    def _low_then_high(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] > value[1]:
            raise _At((1,), f"the range ends ({value[1]}) below its start ({value[0]})")
        return value


class TurnClientConfig(_Model):
    """How CMS talks TURN to Expressway-E. Defaults reproduce the lab capture."""

    username: str = Field(default="turn", description="TURN username (CMS /turnServers username).")
    password: str = Field(
        default="secret",
        description="TURN password; one the server does not know ends the allocation in "
        "401 Unauthorized.",
    )
    lifetime: Annotated[int, Strict(), Field(ge=0, le=0xFFFFFFFF)] = Field(
        default=600, description="LIFETIME asked for in the Allocate and every Refresh (lab: 600)."
    )
    refresh_after_allocate: Flag = Field(
        default=True,
        description="Send a Refresh right after the Allocate succeeds, as the lab's CMS.",
    )
    refresh: Flag = Field(
        default=True,
        description="Refresh the allocation before it expires; false lets it run out "
        "(RFC 5766 §7).",
    )
    refresh_margin: Seconds = Field(
        default=60.0, description="Refresh this many seconds before the granted lifetime runs out."
    )
    keepalive_first: Seconds | None = Field(
        default=5.0,
        description="Seconds after allocating until the first Binding Indication on the "
        "control connection (the lab's keepalive, 5 s); null: no keepalive.",
    )
    keepalive_interval: PositiveSeconds | None = Field(
        default=15.0,
        description="Seconds between later Binding Indications (unconfirmed for CMS); null: "
        "only the first.",
    )
    create_permission: Flag = Field(
        default=False,
        description="Send CreatePermission for the Skype side (RFC 5766 §9). The lab shows "
        "none; a server with permission_policy rfc needs it.",
    )
    send_connection_bind: Flag = Field(
        default=True,
        description="Answer a ConnectionAttempt with a data connection and ConnectionBind "
        "(RFC 6062 §4.4); false: the server drops the peer after its bind_timeout.",
    )


# ---------------------------------------------------------------------------------------------
# Actors
# ---------------------------------------------------------------------------------------------


class SkypeClient(_Model):
    """The Skype for Business client that shares its screen."""

    address: IPv4 = Field(
        default="192.168.1.100", description="Lab address (invented: the lab does not show it)."
    )
    sip_port: Port = Field(default=5060, description="SIP over TCP.")
    user: SipUri = Field(default="sip:alice@skype.lab", description="The sharer's SIP URI.")
    media_port: Port = Field(
        default=50040, description="Port of the client's TCP-PASS candidate (m=applicationsharing)."
    )
    ice_ufrag: IceUfrag = Field(default="Xa3f", description="a=ice-ufrag of the offer.")
    ice_pwd: IcePwd = Field(
        default="Tq9sLmN2vB7xYc4ZkP1rW8dE", description="a=ice-pwd of the offer."
    )
    direct_path: Flag = Field(
        default=False,
        description="The client has an IP path to Expressway-E and opens the media connection "
        "to the relay itself instead of through the Skype Edge; implies skype_client -> "
        "expressway_e in reachability.",
    )
    ice_timeout: PositiveSeconds = Field(
        default=10.0,
        description="Seconds from the 200 OK to a valid candidate pair before the client gives "
        "the sharing session up with BYE (set it above 30 to see Expressway-E's ConnectionBind "
        "timer close the peer connection first).",
    )
    cms_role: Literal["presenter", "attendee"] = Field(
        default="presenter",
        description="CMS's role in the Skype meeting. attendee: the meeting's policy lets only "
        "presenters share, so CMS's sharing reINVITE is refused with 403 and "
        'ms-diagnostics-public: 21002;reason="Attendees cannot share in this conference";'
        'component="ASMCU" (the fix on a real meeting: Make Presenter).',
    )

    @model_validator(mode="after")
    def _ports_differ(self) -> SkypeClient:
        _distinct_ports({("sip_port",): self.sip_port, ("media_port",): self.media_port})
        return self


class SkypeEdge(_Model):
    """The Skype for Business Edge: SIP proxy and media relay for the client."""

    address: IPv4 = Field(
        default="192.168.1.252",
        description="Lab address: the Skype-side peer of the lab's ConnectionAttempt.",
    )
    sip_port: Port = Field(default=5060, description="SIP over TCP.")
    media_port: Port = Field(
        default=3478, description="Where the client's media connection arrives at the Edge."
    )
    relay_port: Port = Field(
        default=53577,
        description="Source port of the Edge's connection to the TURN relay (the lab's "
        "XOR-PEER-ADDRESS 192.168.1.252:53577).",
    )

    @model_validator(mode="after")
    def _ports_differ(self) -> SkypeEdge:
        _distinct_ports({("sip_port",): self.sip_port, ("media_port",): self.media_port})
        return self


class ExpresswayE(_Model):
    """Expressway-E: SIP B2BUA towards the Skype Edge, traversal server, TURN server."""

    address: IPv4 = Field(
        default="10.48.54.229", description="Lab address (the lab's TURN server)."
    )
    sip_port: Port = Field(default=5060, description="SIP over TCP, from the Skype Edge.")
    traversal_port: Port = Field(
        default=7001,
        description="Traversal zone port: Expressway-C opens the traversal connection here.",
    )
    turn: TurnServerConfig = Field(default_factory=TurnServerConfig, description="The TURN server.")

    @model_validator(mode="after")
    def _ports_differ(self) -> ExpresswayE:
        listeners: dict[tuple[str | int, ...], int] = {
            ("sip_port",): self.sip_port,
            ("traversal_port",): self.traversal_port,
            ("turn", "port"): self.turn.port,
        }
        _distinct_ports(listeners)
        low, high = self.turn.relay_ports
        for where, port in listeners.items():
            if low <= port <= high:
                message = f"the relay range {low}-{high} holds {'.'.join(map(str, where))} {port}"
                raise _At(("turn", "relay_ports"), message, alternatives=[where])
        return self


class ExpresswayC(_Model):
    """Expressway-C: SIP B2BUA between the traversal zone and CMS."""

    address: IPv4 = Field(default="10.48.54.228", description="Lab address (invented).")
    sip_port: Port = Field(default=5060, description="SIP over TCP, from CMS.")


class Cms(_Model):
    """Cisco Meeting Server: hosts the meeting, uses Expressway-E as its TURN server."""

    address: IPv4 = Field(
        default="10.48.54.230", description="Lab address (the lab's TURN client)."
    )
    sip_port: Port = Field(default=5060, description="SIP over TCP.")
    user: SipUri = Field(default="sip:meeting@cms.lab", description="The meeting's SIP URI.")
    ice_ufrag: IceUfrag = Field(default="cM5k", description="a=ice-ufrag of the answer.")
    ice_pwd: IcePwd = Field(
        default="Hh3uY7pQ1wE5rT9iO2aS6dF0", description="a=ice-pwd of the answer."
    )
    turn: TurnClientConfig = Field(
        default_factory=TurnClientConfig, description="CMS's TURN client."
    )


class Actors(_Model):
    """The five actors. Each section is optional; what is left out is the lab."""

    skype_client: SkypeClient = Field(default_factory=SkypeClient, description="The sharer.")
    skype_edge: SkypeEdge = Field(default_factory=SkypeEdge, description="The Skype Edge.")
    expressway_e: ExpresswayE = Field(
        default_factory=ExpresswayE, description="Expressway-E (TURN server)."
    )
    expressway_c: ExpresswayC = Field(default_factory=ExpresswayC, description="Expressway-C.")
    cms: Cms = Field(default_factory=Cms, description="Cisco Meeting Server.")

    @model_validator(mode="after")
    def _one_address_per_actor(self) -> Actors:
        # DESIGN.md: one address per actor; the live runtime binds each to its own loopback.
        owner: dict[str, str] = {}
        for name in ACTOR_NAMES:
            address = getattr(self, name).address
            if address in owner:
                raise _At(
                    (name, "address"),
                    f"{address} is already {owner[address]}'s address",
                    alternatives=[(owner[address], "address")],
                )
            owner[address] = name
        return self


# ---------------------------------------------------------------------------------------------
# Network, call, expectations
# ---------------------------------------------------------------------------------------------


class Link(_Model):
    """A one-way latency for the traffic between two actors (both directions)."""

    between: tuple[ActorName, ActorName] = Field(
        description="The two actors, e.g. [cms, expressway_e]."
    )
    latency: Seconds = Field(
        description="One-way latency in seconds, both clocks (on live sockets it is added to "
        "loopback's own)."
    )

    @field_validator("between")
    @classmethod
    def _two_actors(cls, value: tuple[str, str]) -> tuple[str, str]:
        if value[0] == value[1]:
            raise _At((1,), f"a link joins two different actors, not {value[0]} to itself")
        return value


#: Who may open a TCP connection to whom in the lab.
LAB_REACHABILITY: tuple[tuple[ActorName, ActorName], ...] = (
    ("skype_client", "skype_edge"),
    ("skype_edge", "expressway_e"),
    # Expressway-E cannot open connections into the internal network: Expressway-C opens the
    # traversal connection and Expressway-E answers over it.
    ("expressway_c", "expressway_e"),
    ("expressway_c", "cms"),
    ("cms", "expressway_c"),
    # CMS's TURN control and data connections.
    ("cms", "expressway_e"),
)


class Call(_Model):
    """How the call goes once the actors are up."""

    ice_controlling: Literal["cms", "skype_client"] = Field(
        default="cms",
        description="The controlling ICE agent, which nominates the pair (USE-CANDIDATE). In "
        "the lab, CMS's check carries USE-CANDIDATE. In the check layouts, ICE-CONTROLLING and "
        "ICE-CONTROLLED both mark where the role attribute goes, written as the side's actual "
        "role, and USE-CANDIDATE is written only by the controlling side.",
    )
    reinvite_from: Literal["controlling", "cms", "skype_client", "none"] = Field(
        default="controlling",
        description="Who sends the reINVITE once the pair is valid: the controlling agent "
        "(RFC 5245 §9.1.3; the lab does not show it), a named side, or none.",
    )
    hold: Seconds = Field(
        default=6.0,
        description="Seconds the call stays up after the reINVITE is acknowledged, then BYE; "
        "6 s lets the lab's 5 s Binding Indication keepalive appear.",
    )
    bye_from: Literal["skype_client", "cms"] = Field(
        default="skype_client", description="Who hangs up after the hold."
    )
    reinvite_connection: Literal["existing", "new"] = Field(
        default="existing",
        description="a=connection in the post-ICE reINVITE (unconfirmed: RFC 4145 suggests "
        "existing since the TCP connection exists).",
    )
    check_layout_cms: list[str] = Field(
        default_factory=lambda: [
            "USE-CANDIDATE",
            "PRIORITY",
            "ICE-CONTROLLING",
            "USERNAME",
            "MS-IMPLEMENTATION-VERSION",
            "MS-CANDIDATE-IDENTIFIER",
            "MESSAGE-INTEGRITY",
            "FINGERPRINT",
        ],
        description="Attributes of CMS's ICE Binding Request, in wire order (the lab's starts "
        "with USE-CANDIDATE and is 88 bytes; the rest is inferred).",
        json_schema_extra={"items": {"type": "string", "enum": list(CHECK_ATTRIBUTES)}},
    )
    check_layout_skype: list[str] = Field(
        default_factory=lambda: [
            "USE-CANDIDATE",
            "USERNAME",
            "PRIORITY",
            "ICE-CONTROLLED",
            "MESSAGE-INTEGRITY",
            "FINGERPRINT",
        ],
        description="Attributes of the Skype side's ICE Binding Request, in wire order (88 "
        "bytes as controlled agent, the lab's 90-byte frame 2596).",
        json_schema_extra={"items": {"type": "string", "enum": list(CHECK_ATTRIBUTES)}},
    )

    @field_validator("check_layout_cms", "check_layout_skype")
    @classmethod
    def _stun_attributes(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for index, name in enumerate(value):
            if name not in CHECK_ATTRIBUTES:
                close = difflib.get_close_matches(name.upper(), CHECK_ATTRIBUTES, n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise _At((index,), f"{name!r} is not a STUN attribute labsim knows{hint}")
            if name in seen:
                raise _At((index,), f"{name} is listed twice")
            seen.add(name)
        return value


Outcome = OutcomeName
#: The verdicts of labsim.report.diagnose (written once, in labsim.vocabulary).
Diagnosis = Verdict


# ---------------------------------------------------------------------------------------------
# Fault rules
# ---------------------------------------------------------------------------------------------

ProtocolName = Literal["SIP", "STUN", "TCP"]


class _Ends(_Model):
    src: ActorName | None = Field(
        default=None,
        alias="from",
        description="The actor the bytes (or the connect) come from; null: any.",
    )
    dst: ActorName | None = Field(
        default=None, alias="to", description="The actor they go to; null: any."
    )

    @model_validator(mode="after")
    def _two_actors(self) -> _Ends:
        if self.src is not None and self.src == self.dst:
            raise _At(("to",), f"a hop joins two different actors, not {self.src} to itself")
        return self


class _HopSpec(_Ends):
    connection: Annotated[int, Strict(), Field(ge=1)] | None = Field(
        default=None,
        description="Only the n-th TCP connection (1-based) opened between the two actors, "
        "e.g. 2 for CMS's TURN data connection (1 is its control connection).",
    )


class MessageRule(_HopSpec):
    """Which messages a drop or delay takes: every condition given must hold."""

    protocol: ProtocolName | None = Field(default=None, description="SIP, STUN or TCP.")
    message: str | None = Field(
        default=None,
        min_length=1,
        description="The kind of message: a STUN method with an optional class and error "
        'code ("Binding Success Response", "Allocate Error Response 401", "ConnectionAttempt"), '
        'a SIP method or status ("INVITE", "200 OK"), or "TCP data" / "framed data".',
    )
    sip: str | None = Field(
        default=None, min_length=1, description="Shorthand for protocol: SIP, message: ..."
    )
    stun: str | None = Field(
        default=None, min_length=1, description="Shorthand for protocol: STUN, message: ..."
    )
    nth: (
        Annotated[int, Strict(), Field(ge=1)] | list[Annotated[int, Strict(), Field(ge=1)]] | (None)
    ) = Field(
        default=None,
        description="Only the n-th matching message (1-based), or those listed; null: all.",
    )
    probability: Annotated[float, Strict(), Field(gt=0, le=1)] = Field(
        default=1.0, description="Hit each matching message with this probability (seeded)."
    )

    @model_validator(mode="after")
    def _one_message(self) -> MessageRule:
        given = [k for k in ("message", "sip", "stun") if getattr(self, k) is not None]
        if len(given) > 1:
            raise _At((given[1],), f"give one of message, sip, stun (here: {', '.join(given)})")
        if given and given[0] != "message" and self.protocol is not None:
            raise _At(("protocol",), f"{given[0]}: already says the protocol")
        if given:
            try:
                self.kind()
            except KindError as exc:
                raise _At((given[0],), str(exc)) from None
        return self

    def kind(self) -> Kind | None:
        """The kind of message named (typed: rules never compare summary text), or None."""
        protocol, text = self.protocol, self.message
        if self.sip is not None:
            protocol, text = "SIP", self.sip
        elif self.stun is not None:
            protocol, text = "STUN", self.stun
        return None if text is None else parse_kind(text, protocol)

    def protocol_only(self) -> str | None:
        """The protocol a rule names without naming a kind (``protocol: STUN``)."""
        given = self.message is not None or self.sip is not None or self.stun is not None
        return None if given else self.protocol

    def occurrences(self) -> tuple[int, ...]:
        if self.nth is None:
            return ()
        return (self.nth,) if isinstance(self.nth, int) else tuple(self.nth)


class DelayRule(MessageRule):
    """Hold matching messages back; what follows on their connection waits behind them."""

    by: PositiveSeconds = Field(description="Seconds each matching message is held.")


class BlockRule(_Ends):
    """Connects that fail: a firewall between two actors, or in front of a port range."""

    ports: Port | tuple[Port, Port] | None = Field(
        default=None,
        description="Only connects to this port, or to a port in [first, last], e.g. "
        "Expressway-E's relay range [24000, 29999].",
    )
    how: Literal["refuse", "blackhole"] = Field(
        default="blackhole",
        description="refuse: a RST comes back at once; blackhole: the SYN is dropped and the "
        "connect times out.",
    )

    @field_validator("ports")
    @classmethod
    def _range(cls, value: int | tuple[int, int] | None) -> int | tuple[int, int] | None:
        if isinstance(value, tuple) and value[0] > value[1]:
            raise _At((1,), f"the range ends ({value[1]}) before it starts ({value[0]})")
        return value

    def port_range(self) -> tuple[int, int] | None:
        if self.ports is None:
            return None
        return (self.ports, self.ports) if isinstance(self.ports, int) else self.ports


class CutRule(_HopSpec):
    """The network resets a connection (both ends get a RST) at a time or after some bytes."""

    after: Seconds | None = Field(default=None, description="Seconds after the connection opened.")
    after_bytes: Count | None = Field(
        default=None,
        description="Once this many bytes went from `from` to `to` (both ways if either is null).",
    )

    @model_validator(mode="after")
    def _one_trigger(self) -> CutRule:
        if (self.after is None) == (self.after_bytes is None):
            raise _At((), "give exactly one of after (seconds) and after_bytes")
        return self


class FaultRule(_Model):
    """One network fault: exactly one of drop, delay, block, cut."""

    drop: MessageRule | None = Field(default=None, description="Messages that never arrive.")
    delay: DelayRule | None = Field(default=None, description="Messages that arrive late.")
    block: BlockRule | None = Field(default=None, description="Connects that fail.")
    cut: CutRule | None = Field(default=None, description="A connection the network resets.")

    @model_validator(mode="after")
    def _exactly_one(self) -> FaultRule:
        given = [k for k in ("drop", "delay", "block", "cut") if getattr(self, k) is not None]
        if len(given) != 1:
            what = ", ".join(given) if given else "none"
            raise _At((), f"a fault is exactly one of drop, delay, block, cut (here: {what})")
        return self


class MessageExpect(_Model):
    """A message the run must (or must not) show, on a hop or anywhere."""

    kind: str | None = Field(
        default=None,
        min_length=1,
        description="The kind of message: a STUN method with an optional class "
        '("ConnectionBind Success Response", "Refresh Request") or a SIP method or status '
        '("INVITE", "403"), as in fault rules.',
    )
    summary: str | None = Field(
        default=None,
        min_length=1,
        description="Older spelling of kind: must name a kind (use facts for attribute values).",
    )
    facts: dict[str, str | int | None] = Field(
        default_factory=dict,
        description="Typed fields the message must have, e.g. {peer: 192.168.1.100} (an "
        "address without a port matches any port) or {error: 401}; see docs/json.md.",
    )
    src: ActorName | None = Field(
        default=None, alias="from", description="Sending actor; null: any."
    )
    dst: ActorName | None = Field(
        default=None, alias="to", description="Receiving actor; null: any."
    )
    present: Flag = Field(default=True, description="false: the run must not show such a message.")
    count: Count | None = Field(
        default=None, description="Exactly this many such messages; null: at least one."
    )

    @model_validator(mode="after")
    def _present_agrees_with_count(self) -> MessageExpect:
        if not self.present and self.count:
            raise _At(("count",), f"present: false contradicts count: {self.count}")
        if (self.kind is None) == (self.summary is None):
            raise _At((), "give the message's kind (kind: Binding Request)")
        key = "kind" if self.kind is not None else "summary"
        try:
            kind = self.parsed()
        except KindError as exc:
            raise _At((key,), str(exc)) from None
        fields = FACT_FIELDS[kind.protocol]
        for name in self.facts:
            if name not in fields:
                close = difflib.get_close_matches(name, fields, n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise _At(("facts", name), f"{kind.protocol} messages have no fact {name!r}{hint}")
        return self

    def parsed(self) -> Kind:
        text = self.kind if self.kind is not None else self.summary
        assert text is not None
        return parse_kind(text)

    @property
    def label(self) -> str:
        text = self.kind or self.summary or ""
        facts = ", ".join(f"{k}: {v}" for k, v in self.facts.items())
        return f"{text} {{{facts}}}" if facts else text


class Expect(_Model):
    """What the run must show for the scenario to pass."""

    outcome: Outcome = Field(default="sharing-established", description="How the call ends up.")
    messages: list[MessageExpect] = Field(
        default_factory=list, description="Messages that must, or must not, appear."
    )
    diagnosis: Diagnosis | None = Field(
        default=None, description="The diagnosis the report must give (its identifier); null: any."
    )


def _no_default(schema: dict[str, Any]) -> None:
    # The loader fills `name` from the file name, so the schema must not suggest a default.
    schema.pop("default", None)


class Scenario(_Model):
    """A labsim scenario: the lab to build, the call to make, the faults and the expectations.

    Every key is optional; what is left out is the lab of Cisco TAC document 212580.
    """

    model_config = ConfigDict(extra="forbid", title="labsim scenario")

    name: str = Field(
        default="",
        min_length=1,
        description="Short name shown by `labsim list` and in reports; defaults to the file "
        "name without .yaml. Not inherited through extends.",
        json_schema_extra=_no_default,
    )
    description: str = Field(
        default="",
        description="One paragraph: what happens and why; `labsim list` prints its first "
        "sentence. Not inherited through extends.",
    )
    extends: str | None = Field(
        default=None,
        description="A scenario file this one starts from, relative to this file (or, when "
        "no such file exists, in labsim's scenarios folder). Mappings merge key by key, this "
        "file winning; lists (faults, links, reachability, ...) are replaced whole; expect is "
        "replaced whole when this file states it; name and description are never inherited.",
    )
    clock: Literal["live", "virtual"] = Field(
        default="live",
        description="live: real sockets on loopback, wall-clock time. virtual: a simulated "
        "network in simulated time (a 600 s lifetime passes in milliseconds).",
    )
    deadline: PositiveSeconds = Field(
        default=20.0, description="Seconds (virtual or wall clock) by which the run always ends."
    )
    latency: Seconds = Field(
        default=0.0005,
        description="Default one-way latency of every link in seconds (virtual clock; on live "
        "sockets only the per-pair `links` latencies are added).",
    )
    links: list[Link] = Field(
        default_factory=list,
        description="Latencies that differ from `latency`, per pair (applied in both clocks).",
    )
    actors: Actors = Field(default_factory=Actors, description="The five actors.")
    reachability: list[tuple[ActorName, ActorName]] = Field(
        default_factory=lambda: list(LAB_REACHABILITY),
        description="[client, server] pairs: who may open a TCP connection to whom; any other "
        "connect times out. Default (the lab): the Skype client has no IP path to "
        "Expressway-E, and Expressway-E cannot open connections into the internal network.",
    )
    call: Call = Field(default_factory=Call, description="How the call goes.")
    faults: list[FaultRule] = Field(
        default_factory=list,
        description="Network faults, applied in both clocks: drop or delay matching messages, "
        "block connects, cut connections. Rules are tried in order; the first that matches a "
        "message decides.",
    )
    seed: Count = Field(
        default=0, description="Seed of the fault rules' probability draws (runs repeat)."
    )
    expect: Expect = Field(default_factory=Expect, description="What the run must show.")

    @model_validator(mode="after")
    def _network(self) -> Scenario:
        seen: dict[frozenset[str], int] = {}
        for index, link in enumerate(self.links):
            pair = frozenset(link.between)
            if pair in seen:
                raise _At(
                    ("links", index, "between"),
                    f"links[{seen[pair]}] already sets the latency between these actors",
                )
            seen[pair] = index
        for index, (client, server) in enumerate(self.reachability):
            if client == server:
                raise _At(("reachability", index), f"{client} reaching itself says nothing")
        return self

    def can_connect(self, client: str, server: str) -> bool:
        """Whether ``client`` may open a TCP connection to ``server``."""
        if (client, server) == ("skype_client", "expressway_e") and (
            self.actors.skype_client.direct_path
        ):
            return True
        return (client, server) in self.reachability

    def link_latency(self, a: str, b: str) -> float:
        """One-way latency between two actors, either direction."""
        for link in self.links:
            if set(link.between) == {a, b}:
                return link.latency
        return self.latency


# ---------------------------------------------------------------------------------------------
# YAML with positions
# ---------------------------------------------------------------------------------------------

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class _Pos:
    file: str
    key_line: int
    """Line of the key (of the item, in a list): where an unknown key is reported."""
    value_line: int
    """Line where the value starts: where a wrong value is reported."""


@dataclass
class _Doc:
    data: dict[str, Any]
    positions: dict[Loc, _Pos]
    file: str


class _Builder:
    """Plain data from a PyYAML node tree, recording the file and line of every path."""

    def __init__(self, loader: yaml.SafeLoader, file: str) -> None:
        self.loader = loader
        self.file = file
        self.positions: dict[Loc, _Pos] = {}
        self._open: set[int] = set()  # collection nodes being built: catches recursive aliases

    def build(self, node: yaml.Node, loc: Loc, key_line: int) -> Any:
        line = node.start_mark.line + 1
        self.positions[loc] = _Pos(self.file, key_line, line)
        if isinstance(node, yaml.ScalarNode):
            try:
                return self.loader.construct_object(node, deep=True)
            except (yaml.YAMLError, ValueError) as exc:  # e.g. a date like 2024-13-45
                raise ScenarioError(self.file, line, f"cannot read this value: {exc}") from None
        if id(node) in self._open:
            raise ScenarioError(self.file, line, "an alias refers to a node that contains it")
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [
                    self.build(item, (*loc, index), item.start_mark.line + 1)
                    for index, item in enumerate(node.value)
                ]
            assert isinstance(node, yaml.MappingNode)
            return self._mapping(node, loc)
        finally:
            self._open.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[str, Any]:
        # PyYAML lets the last of two equal keys win without a word: report it instead. Keys
        # brought in by a `<<` merge may be overridden, as YAML's merge key allows.
        first_line: dict[str, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self._key(key_node)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise ScenarioError(
                    self.file, line, f"duplicate key '{key}' (first at line {first_line[key]})"
                )
            first_line[key] = line
        try:
            self.loader.flatten_mapping(node)
        except yaml.MarkedYAMLError as exc:
            raise _yaml_error(exc, self.file) from None
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self._key(key_node)
            result[key] = self.build(value_node, (*loc, key), key_node.start_mark.line + 1)
        return result

    def _key(self, node: yaml.Node) -> str:
        line = node.start_mark.line + 1
        if not isinstance(node, yaml.ScalarNode):
            raise ScenarioError(self.file, line, "a key must be a plain string, not a collection")
        try:
            key = self.loader.construct_object(node)
        except (yaml.YAMLError, ValueError) as exc:
            raise ScenarioError(self.file, line, f"cannot read this key: {exc}") from None
        if not isinstance(key, str):
            # YAML 1.1 reads yes/no/on/off, numbers and dates as such: `on:` is the key True.
            raise ScenarioError(self.file, line, f"key {key!r} is not a string (quote it)")
        return key


def _yaml_error(exc: yaml.MarkedYAMLError, file: str) -> ScenarioError:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else 1
    what = exc.problem or "cannot parse"
    if exc.context:
        where = f" at line {exc.context_mark.line + 1}" if exc.context_mark is not None else ""
        what = f"{what} ({exc.context}{where})"
    return ScenarioError(file, line, f"YAML: {what}")


def _parse_yaml(text: str, file: str) -> tuple[Any, dict[Loc, _Pos], int]:
    """Data, positions and the line where the document starts."""
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow
        raise ScenarioError(file, text.count("\n", 0, exc.position) + 1, f"YAML: {exc}") from None
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            raise _yaml_error(exc, file) from None
        except yaml.reader.ReaderError as exc:
            line = text.count("\n", 0, exc.position) + 1
            raise ScenarioError(file, line, f"YAML: {exc}") from None
        if root is None:
            return None, {}, 1
        builder = _Builder(loader, file)
        data = builder.build(root, (), root.start_mark.line + 1)
        return data, builder.positions, root.start_mark.line + 1
    finally:
        loader.dispose()


# ---------------------------------------------------------------------------------------------
# extends
# ---------------------------------------------------------------------------------------------

# Keys a child never inherits: its identity, and the parent's own link (already followed).
_NOT_INHERITED = ("name", "description", "extends")


def _read(path: Path, file: str, opened_from: tuple[str, int]) -> str:
    """The file's text; a file that cannot be read is reported where it was asked for."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        where, line = opened_from
        raise ScenarioError(where, line, f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ScenarioError(file, line, f"not UTF-8 text ({exc.reason})") from None


def _parse_doc(text: str, file: str, base: Path, chain: tuple[Path, ...]) -> _Doc:
    data, positions, start = _parse_yaml(text, file)
    if data is None:
        raise ScenarioError(file, start, "the file is empty; a scenario is a mapping of keys")
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"the value {data!r}"
        raise ScenarioError(
            file, start, f"a scenario is a mapping of keys (name, actors, call, ...), not {kind}"
        )
    doc = _Doc(data, positions, file)
    if "extends" not in data:
        return doc
    target = data["extends"]
    pos = positions[("extends",)]
    if not isinstance(target, str) or not target:
        raise ScenarioError(file, pos.value_line, "extends: expected the path of a scenario file")
    parent_path = base / target
    if not parent_path.is_file() and not Path(target).is_absolute():
        # A scenario outside the repository may extend a bundled one by its name.
        bundled = library_dir() / target
        if bundled.is_file():
            parent_path = bundled
    if not parent_path.is_file():
        raise ScenarioError(
            file,
            pos.value_line,
            f"extends: no scenario file {target} (looked in {base} and {library_dir()})",
        )
    resolved = parent_path.resolve()
    if resolved in chain:
        loop = " -> ".join(p.name for p in (*chain[chain.index(resolved) :], resolved))
        raise ScenarioError(file, pos.value_line, f"extends: cycle {loop}")
    parent_file = str(parent_path)
    text = _read(parent_path, parent_file, (file, pos.value_line))
    parent = _parse_doc(text, parent_file, parent_path.parent, (*chain, resolved))
    return _inherit(parent, doc)


def _subtree(positions: dict[Loc, _Pos], loc: Loc) -> dict[Loc, _Pos]:
    n = len(loc)
    return {k: v for k, v in positions.items() if k[:n] == loc}


def _inherit(parent: _Doc, child: _Doc) -> _Doc:
    """The child on top of its parent: mappings merge, anything else the child replaces."""
    skip = list(_NOT_INHERITED)
    # A child's expectations are a statement about its own run: a fault scenario that names a
    # new outcome must not silently keep the parent's "ConnectionBind Success present".
    if "expect" in child.data:
        skip.append("expect")
    inherited = {k: v for k, v in parent.data.items() if k not in skip}
    positions: dict[Loc, _Pos] = {}

    def merge(old: Any, new: Any, loc: Loc) -> Any:
        if isinstance(old, dict) and isinstance(new, dict):
            positions[loc] = child.positions[loc]
            out: dict[str, Any] = {}
            for key, value in old.items():
                if key not in new:
                    out[key] = value
                    positions.update(_subtree(parent.positions, (*loc, key)))
            for key, value in new.items():
                out[key] = merge(old[key], value, (*loc, key)) if key in old else value
                if key not in old:
                    positions.update(_subtree(child.positions, (*loc, key)))
            return out
        positions.update(_subtree(child.positions, loc))
        return new

    data = merge(inherited, child.data, ())
    return _Doc(data, positions, child.file)


# ---------------------------------------------------------------------------------------------
# Validation errors -> file:line
# ---------------------------------------------------------------------------------------------


def _unwrap(tp: Any) -> Any:
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            rest = [a for a in get_args(tp) if a is not type(None)]
            if len(rest) != 1:
                return tp
            tp = rest[0]
        else:
            return tp


def _keys_at(loc: Loc) -> list[str]:
    """The keys the model accepts at ``loc`` (for "did you mean"), or [] if not a model."""
    tp: Any = Scenario
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(part, str) and isinstance(tp, type) and issubclass(tp, BaseModel):
            fields = {f.alias or n: f for n, f in tp.model_fields.items()}
            if part not in fields:
                return []
            tp = fields[part].annotation
        elif isinstance(part, int) and get_origin(tp) in (list, tuple):
            args = get_args(tp)
            # list[X] and tuple[X, ...] have one item type; tuple[X, Y] one per position.
            tp = (
                args[0] if len(args) == 1 or args[1] is Ellipsis else args[min(part, len(args) - 1)]
            )
        else:
            return []
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [f.alias or n for n, f in tp.model_fields.items()]
    return []


def _dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "the scenario"


def _problem(error: ErrorDetails, positions: dict[Loc, _Pos], file: str) -> ScenarioError:
    loc: Loc = tuple(error["loc"])
    message = error["msg"]
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, _At):
        candidates = [(*loc, *where) for where in (cause.where, *cause.alternatives)]
        loc = next((c for c in candidates if c in positions), candidates[0])
        message = str(cause)
    elif message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    # The deepest path written in some file: a missing key has no line of its own, so it is
    # reported at the mapping that lacks it.
    known = next(loc[:n] for n in range(len(loc), -1, -1) if loc[:n] in positions or n == 0)
    pos = positions.get(known, _Pos(file, 1, 1))
    if error["type"] == "extra_forbidden":
        key = str(loc[-1])
        keys = _keys_at(loc[:-1])
        close = difflib.get_close_matches(key, keys, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(keys)}"
        where = _dotted(loc[:-1])
        return ScenarioError(pos.file, pos.key_line, f"unknown key '{key}' in {where}{hint}")
    if error["type"] == "missing":
        return ScenarioError(pos.file, pos.value_line, f"{_dotted(loc[:-1])}: missing {loc[-1]}")
    shown = error.get("input")
    got = "" if isinstance(cause, _At) or isinstance(shown, dict | list) else f" (got {shown!r})"
    return ScenarioError(pos.file, pos.value_line, f"{_dotted(loc)}: {message}{got}")


def _validate(doc: _Doc, default_name: str) -> Scenario:
    data = dict(doc.data)
    data.setdefault("name", default_name)
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(e, doc.positions, doc.file) for e in exc.errors(include_url=False)]
    # Problems in the file the user loaded first, then the parents; by line within a file.
    problems.sort(key=lambda p: (p.path != doc.file, p.path, p.line))
    unique = list({str(p): p for p in problems}.values())
    first = unique[0]
    raise ScenarioError(first.path, first.line, first.message, unique[1:]) from None


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def load(path: str | Path) -> Scenario:
    """The scenario in ``path``; every mistake raises :class:`ScenarioError` (file:line)."""
    path = Path(path)
    file = str(path)
    text = _read(path, file, (file, 1))
    doc = _parse_doc(text, file, path.parent, (path.resolve(),))
    return _validate(doc, path.stem)


def loads(text: str, *, source: str = "<string>", base: Path | None = None) -> Scenario:
    """A scenario from text. ``source`` names it in errors (and gives the default name);
    ``extends`` resolves against ``base``, else the folder of ``source`` when it is a path,
    else the current directory."""
    if base is None:
        base = Path.cwd() if source.startswith("<") else Path(source).parent
    chain = () if source.startswith("<") else (Path(source).resolve(),)
    doc = _parse_doc(text, source, base, chain)
    return _validate(doc, Path(source).stem if not source.startswith("<") else "scenario")


def library_dir() -> Path:
    """The bundled scenarios: the repository's ``scenarios/`` folder."""
    return Path(__file__).parent.parent / "scenarios"


def list_scenarios(dir: Path | None = None) -> list[tuple[Path, Scenario]]:
    """Every ``*.yaml`` scenario in ``dir`` (default: :func:`library_dir`), sorted by name.

    A broken file raises its :class:`ScenarioError`: a library that does not load is a bug.
    """
    folder = library_dir() if dir is None else dir
    return [(path, load(path)) for path in sorted(folder.glob("*.yaml"))]


def first_sentence(description: str) -> str:
    """The first sentence of a description, on one line.

    A sentence ends at . ! or ? followed by the end or by white space and something that is not
    a lower-case letter, so "e.g. the" and "X8.9" do not cut it short.
    """
    text = " ".join(description.split())
    match = re.search(r"[.!?](?=$|\s+[^a-z\s])", text)
    return text[: match.end()] if match else text


def json_schema() -> dict[str, Any]:
    """The JSON Schema of scenario files (what ``scenarios/schema.json`` holds)."""
    schema = Scenario.model_json_schema(by_alias=True)
    return {"$schema": JSON_SCHEMA_DIALECT, **schema, "title": "labsim scenario"}


def schema_text() -> str:
    """:func:`json_schema` as committed in ``scenarios/schema.json``."""
    return json.dumps(json_schema(), indent=2) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m labsim.scenario --schema`` prints the schema; with files, checks them."""
    parser = argparse.ArgumentParser(
        prog="python -m labsim.scenario",
        description="Check scenario files, or print the JSON Schema of scenario files.",
    )
    parser.add_argument("--schema", action="store_true", help="print the JSON Schema")
    parser.add_argument("files", nargs="*", type=Path, help="scenario files to check")
    args = parser.parse_args(argv)
    if not args.schema and not args.files:
        parser.print_usage(sys.stderr)
        return 2
    if args.schema:
        sys.stdout.write(schema_text())
    status = 0
    for path in args.files:
        try:
            scenario = load(path)
        except ScenarioError as exc:
            print(exc, file=sys.stderr)
            status = 1
        else:
            print(f"{path}: ok ({scenario.name})", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
