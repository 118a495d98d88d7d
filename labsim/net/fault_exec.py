"""Carrying the fault rules out, the same way on both clocks (:mod:`labsim.net.faults` decides).

* a watched end's sends are cut once (:meth:`labsim.trace.Trace.cut`) and each message is
  passed, dropped or held; what passes untouched leaves as one write, so rules that match
  nothing change no byte and no time;
* a delay holds what follows on that connection behind the held message, a Close included
  (TCP order);
* a cut resets both ends of a connection at a time after it opened, or once N bytes went one
  way (the rest of the cut write never leaves);
* every decision is a :class:`~labsim.trace.FaultRecord` (for the reader: the diagnosis never
  reads them) and, for a message, its fate in the trace (dropped by rule N, held d seconds);
* when the run ends, every rule goes into the trace with how often it acted
  (:class:`~labsim.trace.FaultRuleRecord`), so a rule that never acted (a typo'd hop or kind:
  the run was the healthy call) is reported rather than silently passed over.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from labsim.net.faults import Block, Cut, Delay, Drop, FaultPlan, Hit
from labsim.net.model import NETWORK, CutBudget, End, Held, Link
from labsim.trace import FaultRecord, FaultRuleRecord

if TYPE_CHECKING:
    from labsim.net.runtime import Runtime


class FaultExecutor:
    """The run's fault rules, carried out on the runtime's connections."""

    def __init__(self, plan: FaultPlan, runtime: Runtime) -> None:
        self.plan = plan
        self.runtime = runtime
        #: Ends a delay holds data on (closed ones too: their data still waits).
        self.holding: dict[int, End] = {}
        #: How often each rule acted (dropped, delayed, blocked, cut), by its index.
        self.acted = [0] * len(plan.rules)
        #: Cut rules: how many connections each was armed on.
        self.armed = [0] * len(plan.rules)

    # -- connections ---------------------------------------------------------------------------

    def opened(self, link: Link) -> None:
        """A connection opened: number it between its two actors, arm its cut rules."""
        client, server = link.names
        link.number = self.plan.opened(client, server)
        for hit in self.plan.cuts(client, server, link.number):
            rule = hit.rule
            assert isinstance(rule, Cut)
            self.armed[hit.number - 1] += 1
            if rule.after is not None:
                self.runtime.transport.later(rule.after, self.cut, link, hit)
            elif rule.after_bytes is not None:
                sender = rule.src if rule.dst is not None else None
                link.budgets = [*(link.budgets or []), CutBudget(hit, sender, rule.after_bytes)]

    def spend(self, end: End, data: bytes, budgets: list[CutBudget]) -> bytes:
        """Count bytes against cut-after-bytes rules; the rest of a cut write never leaves."""
        sender = end.st.name
        for budget in budgets:
            if budget.sender is not None and budget.sender != sender or budget.left < 0:
                continue
            if len(data) < budget.left:
                budget.left -= len(data)
                continue
            data = data[: budget.left]
            budget.left = -1
            self.runtime.transport.soon(self.cut, end.link, budget.hit)
        return data

    def cut(self, link: Link, hit: Hit) -> None:
        """The network cuts a connection: both ends get a reset, nothing more goes through."""
        runtime = self.runtime
        ends = [e for e in (link.client, link.server) if e is not None and e.open]
        if not ends or runtime.stopping:
            return
        now = runtime.transport.now()
        self.note(now, "cut", hit, *link.names, link.gid)
        # Both directions lose what was not yet read; the start of a message among it crossed
        # before the reset did, so it is recorded first (a capture shows it before the RST).
        for from_client in (True, False):
            runtime.trace.lost(now, link.gid, from_client)
        runtime.trace.closed(now, link.gid, NETWORK, True)
        for end in ends:
            end.outbuf = end.held = None  # not yet on the wire: lost with the connection
            runtime.transport.abort(end)
            # Not the live transport's link latency: the network cuts here, so both ends
            # learn of it now.
            runtime.peer_closed(end, True, NETWORK)

    # -- messages ------------------------------------------------------------------------------

    def send(self, end: End, data: bytes, framing: str, now: float) -> None:
        """An actor's Send on an end some rule may watch."""
        runtime = self.runtime
        if end.watched is None:
            end.watched = self.plan.watches(*end.names)
        if not end.watched and not end.held:
            runtime.pass_on(end, data, framing, now)
            return
        src, dst = end.names
        trace = runtime.trace
        budgets = end.link.budgets
        # Messages that pass untouched leave as one write, as they would have without the
        # rules (a relay's write of two framed checks stays one TCP segment).
        passing: list[bytes] = []
        for unit in trace.cut(now, end.link.gid, end.is_client, data, framing):
            record, wire = unit
            hit = None
            if end.watched:
                hit = self.plan.message(src, dst, end.link.number, record.protocol, record.facts)
            held = end.held
            if hit is None and not held:
                if budgets:
                    wire = self.spend(end, wire, budgets)
                    if not wire:
                        continue
                trace.wire((record, wire), now)
                passing.append(wire)
                continue
            if passing:
                runtime.writes.queue(end, b"".join(passing))
                passing = []
            if hit is not None and isinstance(hit.rule, Drop):
                trace.drop(unit, now, hit.number)
                self.note(now, "dropped", hit, src, dst, end.link.gid, record.summary)
            elif hit is not None and isinstance(hit.rule, Delay):
                release = now + hit.rule.seconds
                if held:
                    release = max(release, held[-1].release)
                trace.hold(unit, hit.number, release - now, now)
                self.note(now, "delayed", hit, src, dst, end.link.gid, record.summary)
                if held is None:
                    held = end.held = []
                    self.holding[id(end)] = end
                held.append(Held(release, unit))
                runtime.transport.later(release - now, self.release, end)
            elif held:
                # TCP order: behind the held bytes.
                trace.hold(unit, 0, held[-1].release - now, now)
                held.append(Held(held[-1].release, unit))
        if passing:
            runtime.writes.queue(end, b"".join(passing))

    def hold_close(self, end: End, reset: bool) -> bool:
        """The actor closes an end a delay holds data on: the FIN or RST waits behind it."""
        held = end.held
        if not held:
            return False
        held.append(Held(held[-1].release, None, reset))
        return True

    def release(self, end: End) -> None:
        """A delay is over: send what it held (and what queued behind it), in order."""
        runtime = self.runtime
        held = end.held
        now = runtime.transport.now()
        while held and held[0].release <= now:
            item = held.pop(0)
            if item.unit is None:  # the actor's Close, held behind its data
                runtime.trace.lost(now, end.link.gid, not end.is_client)
                runtime.trace.closed(now, end.link.gid, end.st.name, item.reset)
                runtime.transport.close(end, item.reset)
            elif runtime.transport.alive(end) and (end.open or held):
                runtime.trace.wire(item.unit, now)
                runtime.transport.write(end, item.unit[1])
            else:
                runtime.trace.never_sent(item.unit, now, "lost")

    def settle(self) -> None:
        """The run is over: what a delay still holds never went on the wire."""
        now = self.runtime.transport.now()
        for end in self.holding.values():
            for item in end.held or ():
                if item.unit is not None:
                    self.runtime.trace.never_sent(item.unit, now, "in-flight")
            end.held = None
        self.holding.clear()

    # -- connects ------------------------------------------------------------------------------

    def note(
        self, now: float, action: str, hit: Hit, src: str, dst: str, conn: int | None,
        summary: str = "",
    ) -> None:  # fmt: skip
        """A rule acted: its record in the trace, and one more to its count."""
        self.acted[hit.number - 1] += 1
        self.runtime.trace.fault(
            FaultRecord(now, action, hit.words(), src, dst, conn, summary, hit.number)
        )

    # -- the end of the run --------------------------------------------------------------------

    def finish(self) -> None:
        """Write every rule, with how often it acted, into the trace."""
        plan = self.plan
        records = []
        for number, rule in enumerate(plan.rules, 1):
            chance = rule.match.probability if isinstance(rule, Drop | Delay) else 1.0
            acted = self.acted[number - 1]
            words, action, matched = rule.words(), _action(rule), plan.matched(number)
            if isinstance(rule, Cut):
                matched = self.armed[number - 1]
            records.append(FaultRuleRecord(number, words, action, acted, matched, chance))
        self.runtime.trace.fault_rules = records


def _action(rule: Drop | Delay | Block | Cut) -> Literal["drop", "delay", "block", "cut"]:
    if isinstance(rule, Drop):
        return "drop"
    if isinstance(rule, Delay):
        return "delay"
    return "block" if isinstance(rule, Block) else "cut"
