"""Network fault rules: which messages to drop or delay, which connects to block, which
connections to cut. Both runtimes apply the same :class:`FaultPlan` (DESIGN.md: faults live in
the network layer and in actor settings, never as branches in protocol code).

This module only decides; :mod:`labsim.net.fault_exec` carries the decisions out, in both
runtimes, and writes a :class:`~labsim.trace.FaultRecord` for each one (the ladder shows them;
the diagnosis never reads them, it must find the fault from what the messages show).

Matching is on one hop: ``src`` and ``dst`` are the two actors of the TCP connection a message
travels on (a check from CMS to the Skype client crosses three hops: CMS → Expressway-E,
Expressway-E → Skype Edge, Skype Edge → Skype client). A message is what the trace shows as one
message on that hop (a SIP message, a STUN message, an RFC 4571 frame, or a relay's write of
opaque TCP data), cut once by :meth:`labsim.trace.Trace.cut`; rules compare its typed facts
(:mod:`labsim.wire.facts`), never its summary text. Rules are tried in order; the first that
matches a message decides.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from labsim.trace import ConnectFailure
from labsim.wire.facts import Facts, Kind

#: How a blocked connect fails: a RST at once (``refuse``, a firewall that rejects), or
#: nothing at all until the connect times out (``blackhole``, a firewall that drops the SYN).
BlockHow = Literal["refuse", "blackhole"]

#: What the trace records for a connect a block stops (:attr:`labsim.trace.RefusedRecord.how`):
#: a rejecting firewall's RST reads as ``refused``, a dropping one's silence as ``timeout``.
FAILS_AS: dict[BlockHow, ConnectFailure] = {"refuse": "refused", "blackhole": "timeout"}


def role(actor: str) -> str:
    """The role an actor plays, which rules name: ``skype_client`` for every client of a load
    run (``skype_client/17``, :mod:`labsim.actors.meeting`); a one-call run's actors are their
    roles."""
    return actor.split("/", 1)[0]


@dataclass(frozen=True)
class MessageMatch:
    """Which messages a :class:`Drop` or :class:`Delay` applies to (None: any)."""

    src: str | None = None
    dst: str | None = None
    protocol: str | None = None
    """``SIP``, ``STUN`` or ``TCP`` (opaque data)."""
    kind: Kind | None = None
    """The kind of message (typed, :func:`labsim.wire.facts.parse_kind`): ``Binding Success
    Response``, ``INVITE``, ``200``, ``ConnectionBind Request``."""
    connection: int | None = None
    """Only on the n-th connection (1-based) opened between ``src`` and ``dst``."""
    nth: tuple[int, ...] = ()
    """Only the n-th (1-based) of the messages the rest of the match selects."""
    probability: float = 1.0
    """Each matching message is hit with this probability (seeded: runs repeat)."""

    def hop(self, src: str, dst: str) -> bool:
        return (self.src is None or self.src == role(src)) and (
            self.dst is None or self.dst == role(dst)
        )

    def words(self) -> str:
        parts = [f"{self.src or 'any'} → {self.dst or 'any'}"]
        protocol = self.protocol or (self.kind.protocol if self.kind is not None else None)
        if protocol:
            parts.append(protocol)
        if self.kind is not None:
            parts.append(repr(self.kind.text))
        if self.connection is not None:
            parts.append(f"connection #{self.connection}")
        if self.nth:
            parts.append("occurrence " + ",".join(map(str, self.nth)))
        if self.probability < 1.0:
            parts.append(f"p={self.probability:g}")
        return " ".join(parts)


@dataclass(frozen=True)
class Drop:
    match: MessageMatch

    def words(self) -> str:
        return f"drop {self.match.words()}"


@dataclass(frozen=True)
class Delay:
    match: MessageMatch
    seconds: float
    """Held this long; what follows on the same connection waits behind it (TCP order)."""

    def words(self) -> str:
        return f"delay {self.match.words()} by {self.seconds:g} s"


@dataclass(frozen=True)
class Block:
    src: str | None = None
    """The connecting actor (None: any)."""
    dst: str | None = None
    """The actor connected to (None: any)."""
    ports: tuple[int, int] | None = None
    """Only connects to a port in this range (inclusive)."""
    how: BlockHow = "blackhole"

    def words(self) -> str:
        where = f" ports {self.ports[0]}-{self.ports[1]}" if self.ports else ""
        return f"block ({self.how}) {self.src or 'any'} → {self.dst or 'any'}{where}"


@dataclass(frozen=True)
class Cut:
    src: str | None = None
    dst: str | None = None
    connection: int | None = None
    """The n-th connection (1-based) between ``src`` and ``dst`` (None: every one)."""
    after: float | None = None
    """Seconds after the connection opened."""
    after_bytes: int | None = None
    """Once this many bytes went from ``src`` to ``dst`` (both ways when either is None)."""

    def words(self) -> str:
        when = (
            f"{self.after:g} s after it opened"
            if self.after is not None
            else f"after {self.after_bytes} bytes"
        )
        which = f" #{self.connection}" if self.connection is not None else ""
        return f"cut connection{which} {self.src or 'any'} ↔ {self.dst or 'any'} {when}"


Rule = Drop | Delay | Block | Cut


@dataclass(frozen=True)
class Hit:
    """A rule that decided: its 1-based number in the scenario and the rule."""

    number: int
    rule: Rule

    def words(self) -> str:
        return f"fault {self.number}: {self.rule.words()}"


class FaultPlan:
    """The rules of one run and their state (occurrence counters, the seeded random draws)."""

    def __init__(self, rules: list[Rule] | tuple[Rule, ...], seed: int = 0) -> None:
        self.rules = tuple(rules)
        self._seen = [0] * len(self.rules)
        # One generator per rule, so adding a rule does not change another rule's draws.
        self._random = [random.Random(f"{seed}:{i}") for i in range(len(self.rules))]
        self._pairs: dict[frozenset[str], int] = {}
        self._message_rules = [
            (i, r) for i, r in enumerate(self.rules) if isinstance(r, Drop | Delay)
        ]

    def __bool__(self) -> bool:
        return bool(self.rules)

    def matched(self, number: int) -> int | None:
        """Drop and delay rules: how many messages rule ``number`` (1-based) matched before its
        ``nth`` and ``probability`` chose; None for block and cut rules."""
        rule = self.rules[number - 1]
        return self._seen[number - 1] if isinstance(rule, Drop | Delay) else None

    # -- connections ---------------------------------------------------------------------------

    def opened(self, client: str, server: str) -> int:
        """A connection between two actors opened: its number between them (1-based)."""
        key = frozenset((client, server))
        n = self._pairs.get(key, 0) + 1
        self._pairs[key] = n
        return n

    def block(self, client: str, server: str | None, port: int) -> Hit | None:
        """The rule that blocks a connect from ``client`` to ``server``'s ``port``, if any."""
        for i, rule in enumerate(self.rules):
            if not isinstance(rule, Block):
                continue
            if rule.src is not None and rule.src != role(client):
                continue
            if rule.dst is not None and (server is None or rule.dst != role(server)):
                continue
            if rule.ports is not None and not rule.ports[0] <= port <= rule.ports[1]:
                continue
            return Hit(i + 1, rule)
        return None

    def cuts(self, client: str, server: str, number: int) -> list[Hit]:
        """The cut rules for the ``number``-th connection between ``client`` and ``server``."""
        out: list[Hit] = []
        for i, rule in enumerate(self.rules):
            if not isinstance(rule, Cut):
                continue
            ends = {rule.src, rule.dst} - {None}
            if not ends <= {role(client), role(server)}:
                continue
            if rule.connection is not None and rule.connection != number:
                continue
            out.append(Hit(i + 1, rule))
        return out

    # -- messages ------------------------------------------------------------------------------

    def watches(self, src: str, dst: str) -> bool:
        """Whether any drop or delay rule can match a message on this hop (the fast path)."""
        return any(r.match.hop(src, dst) for _, r in self._message_rules)

    def message(
        self, src: str, dst: str, connection: int, protocol: str, facts: Facts
    ) -> Hit | None:
        """The drop or delay rule that takes this message, if any (counts occurrences)."""
        for i, rule in self._message_rules:
            assert isinstance(rule, Drop | Delay)
            m = rule.match
            if not m.hop(src, dst):
                continue
            if m.protocol is not None and m.protocol != protocol:
                continue
            if m.kind is not None and not m.kind.matches(protocol, facts):
                continue
            if m.connection is not None and m.connection != connection:
                continue
            self._seen[i] += 1
            if m.nth and self._seen[i] not in m.nth:
                continue
            if m.probability < 1.0 and self._random[i].random() >= m.probability:
                continue
            return Hit(i + 1, rule)
        return None


class Reachability:
    """The one answer to "does a connect from this actor to that one's port get through?",
    in both runtimes: the scenario's topology (pairs with no path: black-holed; pairs refused:
    a RST) and its ``block`` fault rules, rules first (their hits are recorded as faults)."""

    def __init__(
        self,
        blocked: Iterable[tuple[str, str]] = (),
        refused: Iterable[tuple[str, str]] = (),
        plan: FaultPlan | None = None,
    ) -> None:
        #: (client actor, server actor) pairs whose SYNs are dropped (connect times out).
        self.blocked = set(blocked)
        #: (client actor, server actor) pairs answered with a RST (connect refused).
        self.refused = set(refused)
        self.plan = plan

    def check(
        self, client: str, server: str | None, port: int
    ) -> tuple[BlockHow, Hit | None] | None:
        """How a connect from ``client`` to ``server``'s ``port`` fails, and the fault rule
        that says so (None: the topology); None when it gets through."""
        hit = self.plan.block(client, server, port) if self.plan is not None else None
        if hit is not None:
            assert isinstance(hit.rule, Block)
            return hit.rule.how, hit
        if server is not None and (client, server) in self.refused:
            return "refuse", None
        if server is not None and (client, server) in self.blocked:
            return "blackhole", None
        return None
