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
are errors too. A file is user input: its size, nesting and expansion through YAML aliases are
bounded while PyYAML composes it (:class:`_Loader`), and every number it sets is finite and
bounded (the settings types' own bounds, :data:`MAX_DEADLINE`, :data:`MAX_PERIODIC_FIRINGS`).

``labsim schema`` prints the JSON Schema that ``scenarios/schema.json`` holds (editors use it to
complete and check scenario files); ``labsim check FILE…`` checks files (:mod:`labsim.cli`).

The lab's sections (``actors:``, ``call:``) validate straight into the settings types the
actors and protocol machines own (:mod:`labsim.actors.lab`, :mod:`labsim.proto.settings`):
each default, constraint and description is written once, beside the code that uses it, and
``labsim.run`` composes the actors from what this module returns. So this module imports
``labsim.actors`` and ``labsim.proto`` for their settings types, besides ``labsim.wire`` and
``labsim.vocabulary`` (DESIGN.md, layers); the checks that span several actors (one address
per actor, an actor's listeners on distinct ports) live here, around those types.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import json
import math
import re
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from labsim.actors.lab import (
    ACTOR_NAMES,
    ActorName,
    CallSettings,
    CmsSettings,
    ExpresswayCSettings,
    ExpresswayESettings,
    Lab,
    SkypeClientSettings,
    SkypeEdgeSettings,
)
from labsim.proto.settings import (
    MIN_SECONDS,
    Bytes,
    Count,
    Ordinal,
    Port,
    PositiveSeconds,
    Seconds,
    SettingError,
    Where,
)
from labsim.vocabulary import OutcomeName, Verdict
from labsim.wire.facts import FACT_FIELDS, Kind, KindError, parse_kind

__all__ = [
    "ACTOR_NAMES",
    "Actors",
    "Expect",
    "Link",
    "MessageExpect",
    "Scenario",
    "ScenarioError",
    "first_sentence",
    "json_schema",
    "library_dir",
    "bundled",
    "bundled_names",
    "close_names",
    "list_scenarios",
    "load",
    "loads",
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


#: A validator's complaint about a value below the one it validates: pydantic places a
#: validator's error at the field or model it runs on; ``where`` (a path relative to that) lets
#: the loader point at the exact key or list item, e.g. the second actor that reuses an address
#: rather than the whole ``actors`` block. The settings types raise the same from their
#: ``__post_init__`` (:class:`labsim.proto.settings.SettingError`).
_At = SettingError

# ---------------------------------------------------------------------------------------------
# The lab: the actors' and machines' own settings types, checked across actors here
# ---------------------------------------------------------------------------------------------


class _Model(BaseModel):
    # extra="forbid": a misspelt key is an error with its line, never a silently ignored one;
    # allow_inf_nan=False: a .inf or .nan time is a run without end (as in SETTINGS_CONFIG).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _distinct_ports(ports: dict[Where, int]) -> None:
    """Two listeners of one actor on one port cannot both exist (all TCP)."""
    seen: dict[int, Where] = {}
    for where, port in ports.items():
        if port in seen:
            first = seen[port]
            names = " and ".join(".".join(map(str, w)) for w in (first, where))
            raise _At(where, f"{names} are both port {port}", alternatives=[first])
        seen[port] = where


def _client_ports(client: SkypeClientSettings) -> SkypeClientSettings:
    _distinct_ports({("sip_port",): client.sip_port, ("media_port",): client.media_port})
    return client


def _edge_ports(edge: SkypeEdgeSettings) -> SkypeEdgeSettings:
    _distinct_ports({("sip_port",): edge.sip_port, ("media_port",): edge.media_port})
    return edge


def _expressway_e_ports(expe: ExpresswayESettings) -> ExpresswayESettings:
    # Expressway-E's own listeners and its TURN server's; the TURN machine checks its port
    # against its relay range itself (TurnServerSettings).
    own: dict[Where, int] = {
        ("sip_port",): expe.sip_port,
        ("traversal_port",): expe.traversal_port,
    }
    _distinct_ports({**own, ("turn", "port"): expe.turn.port})
    low, high = expe.turn.relay_ports
    for where, port in own.items():
        if low <= port <= high:
            message = f"the relay range {low}-{high} holds {'.'.join(map(str, where))} {port}"
            raise _At(("turn", "relay_ports"), message, alternatives=[where])
    return expe


class Actors(_Model):
    """The five actors. Each section is optional; what is left out is the lab."""

    skype_client: Annotated[SkypeClientSettings, AfterValidator(_client_ports)] = Field(
        default_factory=SkypeClientSettings, description="The sharer."
    )
    skype_edge: Annotated[SkypeEdgeSettings, AfterValidator(_edge_ports)] = Field(
        default_factory=SkypeEdgeSettings, description="The Skype Edge."
    )
    expressway_e: Annotated[ExpresswayESettings, AfterValidator(_expressway_e_ports)] = Field(
        default_factory=ExpresswayESettings, description="Expressway-E (TURN server)."
    )
    expressway_c: ExpresswayCSettings = Field(
        default_factory=ExpresswayCSettings, description="Expressway-C."
    )
    cms: CmsSettings = Field(default_factory=CmsSettings, description="Cisco Meeting Server.")

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
        nat = self.expressway_e.nat
        if nat is not None and nat.public_address in owner:
            raise _At(
                ("expressway_e", "nat", "public_address"),
                f"{nat.public_address} is {owner[nat.public_address]}'s address, not a public one",
            )
        return self


# ---------------------------------------------------------------------------------------------
# Network, expectations
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
    connection: Ordinal | None = Field(
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
    nth: Ordinal | list[Ordinal] | None = Field(
        default=None,
        description="Only the n-th matching message (1-based), or those listed; null: all.",
    )
    probability: Annotated[float, Field(gt=0, le=1)] = Field(
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
    after_bytes: Bytes | None = Field(
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
    present: bool = Field(default=True, description="false: the run must not show such a message.")
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
    unmatched_faults: Literal["error", "allowed"] = Field(
        default="error",
        description="A rule of faults: that never acted (dropped, delayed, blocked or cut "
        "nothing) is most often a typo (a hop whose actors share no connection, a kind that "
        "never crosses it) and leaves the healthy call: error fails the scenario; allowed only "
        "reports it (a probability below 1 may act zero times).",
    )


class Capture(_Model):
    """Where the run's pcapng is captured (``labsim run --pcap``)."""

    at: list[ActorName] = Field(
        default_factory=list,
        description="The actors whose interfaces are captured, one pcapng interface each: what "
        "each sent (stamped when it left, present even when a fault dropped it on the way) and "
        "was delivered (stamped when it arrived), on the connections it is an end of. Empty: "
        "every leg of the run on one interface. `labsim run --capture-at` overrides it.",
    )

    @model_validator(mode="after")
    def _distinct(self) -> Capture:
        for index, name in enumerate(self.at):
            if name in self.at[:index]:
                raise _At(("at", index), f"{name} is already a capture point")
        return self


#: The longest deadline: 4 hours, simulated or wall-clock. The lab's call is over in seconds and
#: the longest bundled scenario (an allocation left to expire) runs 800 s; every periodic timer
#: of a run fires at most deadline / period times, so this bounds the work of a run too.
MAX_DEADLINE: Final = 4 * 3600.0

#: Periodic timer firings a run may schedule (TURN keepalives, permission refreshes): each is a
#: message in the trace (about 36 us and 1.4 KB on the virtual clock), so 100,000 of them cost
#: seconds and some 140 MB; the lab's call fires one.
MAX_PERIODIC_FIRINGS: Final = 100_000


def _no_default(schema: dict[str, Any]) -> None:
    # The loader fills `name` from the file name, so the schema must not suggest a default.
    schema.pop("default", None)


class Scenario(_Model):
    """A labsim scenario: the lab to build, the call to make, the faults and the expectations.

    Every key is optional; what is left out is the lab of Cisco TAC document 212580.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, title="labsim scenario")

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
    deadline: Annotated[float, Field(ge=MIN_SECONDS, le=MAX_DEADLINE)] = Field(
        default=20.0,
        description="Seconds (virtual or wall clock) by which the run always ends: 1 ms to 4 "
        "hours.",
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
    call: CallSettings = Field(default_factory=CallSettings, description="How the call goes.")
    faults: list[FaultRule] = Field(
        default_factory=list,
        description="Network faults, applied in both clocks: drop or delay matching messages, "
        "block connects, cut connections. Rules are tried in order; the first that matches a "
        "message decides.",
    )
    seed: Annotated[int, Field(ge=0, lt=2**64)] = Field(
        default=0, description="Seed of the fault rules' probability draws (runs repeat)."
    )
    expect: Expect = Field(default_factory=Expect, description="What the run must show.")
    capture: Capture = Field(
        default_factory=Capture, description="Where the run's pcapng is captured."
    )

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

    @model_validator(mode="after")
    def _external_turn(self) -> Scenario:
        # A real TURN server is a process in real time: the virtual clock cannot hold it, and
        # a static NAT in front of Expressway-E forwards to labsim's TURN server, not to it.
        expe = self.actors.expressway_e
        if expe.turn.external is None:
            return self
        where = ("actors", "expressway_e", "turn", "external")
        if self.clock == "virtual":
            raise _At(
                where,
                "an external TURN server is a real process: it runs on the live clock only "
                "(clock: live)",
                alternatives=[("clock",)],
            )
        if expe.nat is not None:
            raise _At(
                where,
                "a static NAT (actors.expressway_e.nat) forwards to labsim's TURN server, not to "
                "an external one: leave one of them out",
                alternatives=[("actors", "expressway_e", "nat")],
            )
        return self

    @model_validator(mode="after")
    def _bounded_work(self) -> Scenario:
        # Each time is bounded on its own, but a periodic timer fires deadline / period times:
        # a keepalive every 1 ms for 4 hours would be 14 million Binding Indications. The other
        # timers cannot add up so: one-shot timeouts fire once, a 2xx is retransmitted for 64·T1
        # with doubling intervals, stale-nonce retries each outlast nonce_lifetime (>= 1 s) and
        # the allocation Refresh repeats at most every default_lifetime / 2 (>= 0.5 s).
        turn = self.actors.cms.turn
        if turn is None:
            return self
        periodic: list[tuple[str, float, str]] = []
        if turn.keepalive_first is not None and turn.keepalive_interval is not None:
            periodic.append(("keepalive_interval", turn.keepalive_interval, "a keepalive"))
        if turn.create_permission:
            periodic.append(("permission_refresh", turn.permission_refresh, "a CreatePermission"))
        firings = {key: math.floor(self.deadline / period) for key, period, _ in periodic}
        if sum(firings.values()) <= MAX_PERIODIC_FIRINGS:
            return self
        key, period, what = max(periodic, key=lambda item: firings[item[0]])
        raise _At(
            ("actors", "cms", "turn", key),
            f"{what} every {period:g} s until the deadline ({self.deadline:g} s) is "
            f"{firings[key]:,} timer firings, more than the {MAX_PERIODIC_FIRINGS:,} a run "
            f"may fire: lengthen {key} or shorten the deadline",
            alternatives=[("deadline",)],
        )

    def lab(self) -> Lab:
        """The five actors' settings and the call, as the actors take them."""
        return Lab(**{name: getattr(self.actors, name) for name in ACTOR_NAMES}, call=self.call)

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

Loc = Where


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

    def build(self, node: yaml.Node, loc: Loc, key_line: int) -> Any:
        line = node.start_mark.line + 1
        self.positions[loc] = _Pos(self.file, key_line, line)
        if isinstance(node, yaml.ScalarNode):
            try:
                return self.loader.construct_object(node, deep=True)
            except (yaml.YAMLError, ValueError) as exc:  # e.g. a date like 2024-13-45
                raise ScenarioError(self.file, line, f"cannot read this value: {exc}") from None
            except (KeyError, AttributeError, TypeError, OverflowError):
                # PyYAML's constructors fail untyped on a value an explicit tag cannot hold
                # (`!!bool x`: KeyError, `!!timestamp x`: AttributeError).
                raise ScenarioError(
                    self.file, line, f"cannot read {node.value[:40]!r} as {node.tag}"
                ) from None
        # The tree is finite and small: _Loader refused recursive aliases and any tree that
        # expands to more than MAX_VALUES values or deeper than MAX_DEPTH levels.
        if isinstance(node, yaml.SequenceNode):
            return [
                self.build(item, (*loc, index), item.start_mark.line + 1)
                for index, item in enumerate(node.value)
            ]
        assert isinstance(node, yaml.MappingNode)
        return self._mapping(node, loc)

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


#: The largest scenario file: 1 MiB. The bundled ones are under 4 KB; the text is read whole,
#: so this is also what reading a wrong path (a device, a capture) can cost.
MAX_FILE_BYTES: Final = 1024 * 1024
#: The most values (scalars, lists, mappings, keys included) a file may expand to, an alias
#: counting as a copy of what it names. The bundled lab is under 150; YAML's aliases let 370
#: bytes name a billion ("billion laughs"), which built 8 GB in two minutes before this bound.
MAX_VALUES: Final = 10_000
#: The deepest nesting, aliases expanded: a scenario reaches 8 levels (actors.expressway_e.turn.
#: errors[0].nth[0]); PyYAML composes and the loader builds by recursion, so a file of
#: thousands of brackets ended in RecursionError.
MAX_DEPTH: Final = 32
#: The most ancestors a scenario may have through extends (its parent, the parent's parent ...):
#: each is one more level of recursion and one more file read. The library's chains are 1 long.
MAX_EXTENDS: Final = 16


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, held to :data:`MAX_VALUES` and :data:`MAX_DEPTH` as it composes.

    An alias is one node in PyYAML's tree, shared, and only becomes copies when the tree is
    built into data; so the limits are checked here, where each alias is met, at the size and
    height of the node it names (known: YAML names only nodes written before the alias). A
    file that exceeds them fails at its line before anything is built.
    """

    def __init__(self, text: str, file: str) -> None:
        super().__init__(text)
        self.file = file
        self.values = 0
        """Values composed so far, each alias counted as the size of the node it names."""
        self._size: dict[yaml.Node, int] = {}
        self._height: dict[yaml.Node, int] = {}
        # For each collection being composed, outermost first: the height of its tallest child.
        self._open: list[int] = []

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]  # (stubs)
        line = event.start_mark.line + 1 if event.start_mark is not None else 1
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            assert node is not None  # (the stubs allow None; PyYAML always returns a node)
            if node not in self._size:
                # The anchor is still being composed: the alias is inside what it names.
                raise ScenarioError(self.file, line, "an alias refers to a node that contains it")
            what = f"the alias *{event.anchor} expands the file to"
            self._charge(self._size[node], self._height[node], line, what)
            return node
        before = self.values
        self._charge(1, 1, line, "the file holds")
        self._open.append(0)
        try:
            node = super().compose_node(parent, index)
        finally:
            height = self._open.pop() + 1
        assert node is not None
        self._size[node] = self.values - before
        self._height[node] = height
        if self._open:
            self._open[-1] = max(self._open[-1], height)
        return node

    def _charge(self, size: int, height: int, line: int, what: str) -> None:
        """Count a node of ``size`` values and ``height`` levels placed at the current depth."""
        self.values += size
        if self.values > MAX_VALUES:
            raise ScenarioError(
                self.file,
                line,
                f"YAML: {what} more than {MAX_VALUES:,} values; a scenario needs far fewer",
            )
        if len(self._open) + height > MAX_DEPTH:
            raise ScenarioError(
                self.file,
                line,
                f"YAML: nested more than {MAX_DEPTH} levels deep; a scenario needs about 8",
            )
        if self._open:
            self._open[-1] = max(self._open[-1], height)


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
    if len(text) > MAX_FILE_BYTES:  # characters: each is at least a byte
        line = text.count("\n", 0, MAX_FILE_BYTES) + 1
        raise ScenarioError(file, line, f"more than {MAX_FILE_BYTES:,} bytes; not a scenario")
    try:
        loader = _Loader(text, file)
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
        with path.open("rb") as stream:
            # One byte past the limit tells a file that is too large without reading it all.
            raw = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        where, line = opened_from
        raise ScenarioError(where, line, f"cannot read {file}: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        line = raw.count(b"\n", 0, MAX_FILE_BYTES) + 1
        raise ScenarioError(file, line, f"more than {MAX_FILE_BYTES:,} bytes; not a scenario")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ScenarioError(file, line, f"not UTF-8 text ({exc.reason})") from None


def _parse_doc(
    text: str, file: str, base: Path, chain: tuple[Path, ...], ancestors: int = 0
) -> _Doc:
    """The document in ``text`` on top of its parents; ``chain`` holds the files already open
    (for cycles), ``ancestors`` how many parents led here."""
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
    if not _is_file(parent_path) and not Path(target).is_absolute():
        # A scenario outside the repository may extend a bundled one by its name.
        bundled = library_dir() / target
        if _is_file(bundled):
            parent_path = bundled
    if not _is_file(parent_path):
        raise ScenarioError(
            file,
            pos.value_line,
            f"extends: no scenario file {target} (looked in {base} and {library_dir()})",
        )
    resolved = parent_path.resolve()
    if resolved in chain:
        loop = " -> ".join(p.name for p in (*chain[chain.index(resolved) :], resolved))
        raise ScenarioError(file, pos.value_line, f"extends: cycle {loop}")
    if ancestors == MAX_EXTENDS:
        raise ScenarioError(
            file, pos.value_line, f"extends: more than {MAX_EXTENDS} ancestors in a row"
        )
    parent_file = str(parent_path)
    text = _read(parent_path, parent_file, (file, pos.value_line))
    parent = _parse_doc(text, parent_file, parent_path.parent, (*chain, resolved), ancestors + 1)
    return _inherit(parent, doc)


def _is_file(path: Path) -> bool:
    """Whether ``path`` names a file; False for a name the system refuses (too long, a NUL),
    where ``Path.is_file`` raises."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


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


def _fields(tp: Any) -> dict[str, Any] | None:
    """The keys a model or settings type accepts, with their types; None for anything else."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {f.alias or n: f.annotation for n, f in tp.model_fields.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp, include_extras=True)
        return {f.name: hints[f.name] for f in dataclasses.fields(tp) if f.init}
    return None


def _keys_at(loc: Loc) -> list[str]:
    """The keys the model accepts at ``loc`` (for "did you mean"), or [] if not a model."""
    tp: Any = Scenario
    for part in loc:
        tp = _unwrap(tp)
        fields = _fields(tp)
        if isinstance(part, str) and fields is not None:
            if part not in fields:
                return []
            tp = fields[part]
        elif isinstance(part, int) and get_origin(tp) in (list, tuple):
            args = get_args(tp)
            # list[X] and tuple[X, ...] have one item type; tuple[X, Y] one per position.
            tp = (
                args[0] if len(args) == 1 or args[1] is Ellipsis else args[min(part, len(args) - 1)]
            )
        else:
            return []
    return list(_fields(_unwrap(tp)) or [])


def _dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "the scenario"


#: The data is validated as JSON (see _validate); YAML calls its collections lists and mappings.
_YAML_WORDS = {
    "list_type": "Input should be a valid list",
    "tuple_type": "Input should be a valid list",
    "dict_type": "Input should be a mapping",
    "model_type": "Input should be a mapping",
    "dataclass_type": "Input should be a mapping",
}


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
    elif error["type"] in _YAML_WORDS:
        message = _YAML_WORDS[error["type"]]
    # The deepest path written in some file: a missing key has no line of its own, so it is
    # reported at the mapping that lacks it.
    known = next(loc[:n] for n in range(len(loc), -1, -1) if loc[:n] in positions or n == 0)
    pos = positions.get(known, _Pos(file, 1, 1))
    # A model says extra_forbidden, a settings dataclass unexpected_keyword_argument.
    if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
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
    # Validated as JSON, strictly: YAML already typed every value, so a quoted "3478" or a
    # `yes` where a number belongs is a mistake to report, not something to coerce. (Python
    # mode in strict would want settings dataclass instances, not mappings; JSON mode takes
    # objects.) What JSON cannot hold (a YAML date) arrives as its text.
    text = json.dumps(data, default=str)
    try:
        return Scenario.model_validate_json(text, strict=True)
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
    """The bundled scenarios: package data of ``labsim`` (``labsim/scenarios``), found with
    :mod:`importlib.resources` so an installed wheel finds them as a checkout does.

    In the repository ``labsim/scenarios`` is a symlink to the top-level ``scenarios/`` folder
    (where the README, the docs and the tests name it); the path returned is resolved, so a
    checkout reports ``scenarios/…`` in its messages. labsim is installed as files, never run
    from a zip archive: the loader needs paths (``extends`` resolves against a folder).
    """
    folder = importlib.resources.files("labsim").joinpath("scenarios")
    if not isinstance(folder, Path):  # a zip import: not how labsim is installed
        raise RuntimeError(f"labsim's scenario library is not a folder: {folder}")
    return folder.resolve()


def bundled_names() -> list[str]:
    """The names of the bundled scenarios (file names without ``.yaml``), sorted."""
    return sorted(path.stem for path in library_dir().glob("*.yaml"))


def bundled(name: str) -> Path | None:
    """The bundled scenario called ``name`` (``sharing-call`` or ``sharing-call.yaml``), or
    None when the library has none of that name."""
    stem = name.removesuffix(".yaml")
    if not stem or "/" in stem or "\\" in stem or stem.startswith("."):
        return None
    path = library_dir() / f"{stem}.yaml"
    return path if _is_file(path) else None


def close_names(name: str) -> list[str]:
    """Bundled scenario names that look like ``name`` (a typo, a missing ``.yaml``), best
    first, for a "did you mean" after a name that resolves to nothing."""
    stem = Path(name).name.removesuffix(".yaml").removesuffix(".yml")
    return difflib.get_close_matches(stem, bundled_names(), n=3, cutoff=0.6)


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


if __name__ == "__main__":
    # The checking and schema commands moved into labsim's one command line (same exit codes as
    # every other command). This module cannot import labsim.cli (layers point down), so an old
    # habit gets the new spelling and a failing status rather than silently printing nothing.
    sys.stderr.write(
        "python -m labsim.scenario is now part of labsim's command line:\n"
        "  labsim check FILE...   check scenario files\n"
        "  labsim schema          print the JSON Schema of scenario files\n"
    )
    raise SystemExit(2)
