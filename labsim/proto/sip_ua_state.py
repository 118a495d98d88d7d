"""The state of a SIP user agent's dialog as a table, in the manner of h11's ``_state.py``.

Rules (h11's, adapted):

1. Every transition of a user agent lives in its table: ``state × event -> next state``. The
   Skype client's table is in :mod:`labsim.actors.skype_client`, CMS's in
   :mod:`labsim.actors.cms`; this module holds what both use: the states, the events, the
   transitions of a confirmed dialog, the table type, the machine that walks it, the SIP timer
   settings, and the Mermaid renderer that draws each table for ``docs/``.
2. This module does not know which role a UA plays. The states and events are the same for
   both ends: what the UA sends, what it receives, which timer fired. Which of them a UA may
   see in which state is its table's business; once the dialog is confirmed, both ends move
   alike (:func:`dialog_transitions`).
3. Nothing else moves the state. A UA asks :meth:`Machine.allows` before it acts; an event the
   table does not allow in the current state is handled explicitly by the UA (answered as
   RFC 3261 says, or logged), never by moving the state. :meth:`Machine.fire` on an event the
   table does not allow is a bug in the UA and raises :class:`TransitionRefused`.

The states are the dialog's (RFC 3261 §12) with the INVITE transactions that run inside it
folded in (§13, §14, §17): a UA has at most one INVITE transaction in progress in its dialog
(§14.1), so "our reINVITE is waiting for its answer" or "our 2xx is waiting for its ACK" is a
state, not a flag. Over TCP the client transaction's Calling and Proceeding states (§17.1.1.2)
differ only in Timer B, which the first provisional answer stops; they share one UA state.

Timers (RFC 3261 §17.1.1.1, Table 4) are settings, :class:`SipTimers`, with the RFC defaults:
T1 = 0.5 s (a round-trip estimate), T2 = 4 s; Timer B, Timer F and the wait for the ACK of a
2xx are 64·T1 = 32 s.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum, auto
from typing import Generic, TypeVar

from labsim.proto.settings import SETTINGS_CONFIG, PositiveSeconds, SettingError


class UaState(StrEnum):
    """A user agent's SIP state: its dialog and the INVITE transaction in it. The caller (UAC)
    passes CALLING before the dialog exists, the callee (UAS) PROCEEDING and ACCEPTED; from
    CONFIRMED on, the states are the dialog's and the same at both ends."""

    IDLE = auto()
    CALLING = auto()
    RETRY_WAIT = auto()
    PROCEEDING = auto()
    ACCEPTED = auto()
    CONFIRMED = auto()
    REINVITING = auto()
    GLARE_WAIT = auto()
    REINVITE_RECEIVED = auto()
    REINVITE_ACCEPTED = auto()
    TERMINATING = auto()
    TERMINATED = auto()


class UaEvent(StrEnum):
    """What happens to a user agent's dialog. The value is the label the diagrams print, as
    UML writes a transition: ``event / what the UA sends``."""

    # -- the initial INVITE, as its UAC (§13.2, §17.1.1) --------------------------------------
    SEND_INVITE = "send INVITE"
    """The UA sends the dialog-creating INVITE (Timer B starts)."""
    BAD_2XX = "2xx without Contact"
    """A 2xx that cannot create a dialog (no remote target, §12.1.2): the attempt fails."""
    RECV_503_RETRY = "503 with Retry-After / ACK, start the retry timer"
    """503 Service Unavailable with Retry-After to our INVITE, and the UA tries once more
    after that time (§21.5.4, §20.33; a setting)."""
    TIMER_RETRY_AFTER = "Retry-After over / INVITE again"
    """The Retry-After wait is over: the INVITE is sent again, next CSeq, new branch."""

    # -- answers to our INVITE or reINVITE (§13.2.2, §14.1) -----------------------------------
    RECV_1XX = "1xx / stop Timer B"
    """A provisional answer: the transaction leaves Calling, Timer B stops (§17.1.1.2)."""
    RECV_2XX = "2xx / ACK"
    """A 2xx to our pending INVITE or reINVITE; the UA sends its ACK (§13.2.2.4)."""
    RECV_491 = "491 / ACK, start the retry timer"
    """491 Request Pending to our reINVITE: glare, retry after a random delay (§14.1)."""
    RECV_ERROR = "3xx-6xx / ACK"
    """Any other final error answer; the ACK goes hop by hop (§17.1.1.3). To a reINVITE: the
    session stays as it was before it (§14.1)."""
    RECV_481 = "481 / ACK"
    """481 Call/Transaction Does Not Exist to our reINVITE: the peer has no such dialog, so
    ours is over (§12.2.1.2, §14.1); no BYE, which would only draw another 481."""
    RECV_408 = "408 / ACK, BYE"
    """408 Request Timeout to our reINVITE: as if Timer B had fired, the UAC terminates the
    dialog (§12.2.1.2, §14.1), with BYE since the peer may still hold it."""
    TIMER_B = "Timer B"
    """No answer at all within 64·T1 (§17.1.1.2): a timeout, treated as 408 (§8.1.3.1)."""
    TRANSPORT_ERROR = "transport error"
    """The request could not be sent at all (§8.1.3.1: treated as 503)."""

    # -- the initial INVITE, as its UAS (§13.3) -----------------------------------------------
    RECV_INVITE = "INVITE / 100"
    """A dialog-creating INVITE arrives and is taken on (100 Trying, §8.2.6.1)."""
    RECV_CANCEL = "CANCEL / 200, 487"
    """CANCEL of the INVITE before its final answer (§9.2)."""

    # -- our answer to an INVITE or reINVITE (§13.3.1.4, §14.2) -------------------------------
    SEND_2XX = "send 2xx"
    """The UA accepts: its 2xx is retransmitted from T1 doubling to T2 until the ACK."""
    SEND_ERROR = "send 3xx-6xx"
    """The UA refuses the peer's INVITE (no dialog is made, §13.3.1) or reINVITE (the session
    stays as it was, §14.2)."""
    SEND_481 = "send 481"
    """The UA answers the peer's reINVITE 481 Call/Transaction Does Not Exist: it no longer
    has the dialog (§12.2.2), so the dialog is over at this end too."""
    TIMER_2XX = "retransmit timer / 2xx again"
    """The retransmission timer of an unacknowledged 2xx fired (§13.3.1.4)."""
    RECV_ACK = "ACK"
    """The ACK of our 2xx."""
    ACK_TIMEOUT = "64·T1 without ACK / BYE"
    """64·T1 without the ACK of our 2xx: the session is ended with BYE (§13.3.1.4)."""

    # -- the dialog: reINVITE (§14) ------------------------------------------------------------
    SEND_REINVITE = "send reINVITE"
    """The UA re-offers the session (the post-ICE reINVITE; Timer B starts)."""
    TIMER_491 = "retry timer / reINVITE"
    """The randomized wait after a 491 is over: the reINVITE is sent again (§14.1)."""
    RECV_REINVITE = "reINVITE"
    """The peer's reINVITE arrives while no other INVITE transaction is in progress."""

    # -- the dialog: BYE (§15) -----------------------------------------------------------------
    SEND_BYE = "send BYE"
    """The UA ends the dialog (Timer F starts, §17.1.2.2)."""
    RECV_BYE = "BYE / 200"
    """The peer ends the dialog; the UA answers 200 (§15.1.2)."""
    RECV_BYE_ANSWER = "answer to BYE"
    """Any final answer to our BYE: the dialog is over (§15.1.1)."""
    TIMER_F = "Timer F"
    """No answer to our BYE within 64·T1 (§17.1.2.2): the dialog is over all the same."""


#: How a UA handles each event when its table does not allow it in the current state (rule 3).
#: The UAs implement this; the generated diagrams print it beside each table.
DISALLOWED: Mapping[UaEvent, str] = {
    UaEvent.SEND_INVITE: "not sent: one sharing INVITE per run",
    UaEvent.BAD_2XX: "a repeat of the answer: ignored",
    UaEvent.RECV_503_RETRY: "a repeated error answer: the hop-by-hop ACK again (§17.1.1.3); "
    "a second 503 after the retry ends the attempt",
    UaEvent.TIMER_RETRY_AFTER: "cannot fire: the timer runs only while waiting to retry",
    UaEvent.RECV_1XX: "ignored (a provisional answer after the final one, or to nothing)",
    UaEvent.RECV_2XX: "a retransmitted 2xx: ACKed again (§13.3.1.4), state unchanged",
    UaEvent.RECV_491: "a repeated error answer: the hop-by-hop ACK again (§17.1.1.3)",
    UaEvent.RECV_ERROR: "a repeated error answer: the hop-by-hop ACK again (§17.1.1.3)",
    UaEvent.RECV_481: "a repeated error answer: the hop-by-hop ACK again (§17.1.1.3)",
    UaEvent.RECV_408: "a repeated error answer: the hop-by-hop ACK again (§17.1.1.3)",
    UaEvent.TIMER_B: "cannot fire: the timer is stopped when its transaction ends",
    UaEvent.TRANSPORT_ERROR: "logged",
    UaEvent.RECV_INVITE: "the same INVITE again: 100 Trying again while proceeding "
    "(§17.2.1), else absorbed; another call: 486 Busy Here",
    UaEvent.RECV_CANCEL: "200 to the CANCEL, no other effect: the final answer is out (§9.2)",
    UaEvent.SEND_2XX: "not sent: no INVITE is waiting for an answer",
    UaEvent.SEND_ERROR: "not sent: no INVITE is waiting for an answer",
    UaEvent.SEND_481: "not sent: no reINVITE is waiting for an answer",
    UaEvent.TIMER_2XX: "cannot fire: the timer is stopped by the ACK",
    UaEvent.RECV_ACK: "absorbed and logged: it acknowledges nothing pending (§17.2.1)",
    UaEvent.ACK_TIMEOUT: "cannot fire: the timer is stopped by the ACK",
    UaEvent.SEND_REINVITE: "held until the dialog is confirmed and no INVITE transaction is in "
    "progress (§14.1), then sent unless sharing is already on",
    UaEvent.TIMER_491: "the peer's reINVITE came during the wait: ours is sent now unless "
    "sharing is on, or held until the peer's transaction ends (§14.1)",
    UaEvent.RECV_REINVITE: "491 while an INVITE transaction of ours is in progress or our 2xx "
    "is unacknowledged (§14.2, §14.1); 500 with Retry-After while the peer's earlier reINVITE "
    "is unanswered (§14.2); 481 outside a live dialog (§12.2.2)",
    UaEvent.SEND_BYE: "not sent: the dialog is not confirmed, or is already ending (the callee "
    "waits for the ACK or 64·T1 first, §15)",
    UaEvent.RECV_BYE: "481 Call/Transaction Does Not Exist (§15.1.2)",
    UaEvent.RECV_BYE_ANSWER: "ignored: no BYE of ours is waiting",
    UaEvent.TIMER_F: "cannot fire: the timer is stopped by the answer",
}


S = TypeVar("S", bound=StrEnum)
Transitions = dict[S, dict[UaEvent, S]]


def dialog_transitions() -> Transitions[UaState]:
    """The transitions of a confirmed dialog, from CONFIRMED to TERMINATED: the same at both
    ends, since either may send or receive a reINVITE (§14) or BYE (§15), and either may
    refuse the other's reINVITE (§14.2; a setting of each end)."""
    s, e = UaState, UaEvent
    return {
        s.CONFIRMED: {
            e.SEND_REINVITE: s.REINVITING,
            e.RECV_REINVITE: s.REINVITE_RECEIVED,
            e.SEND_BYE: s.TERMINATING,
            e.RECV_BYE: s.TERMINATED,
        },
        s.REINVITING: {
            e.RECV_1XX: s.REINVITING,
            e.RECV_2XX: s.CONFIRMED,
            e.RECV_491: s.GLARE_WAIT,
            e.RECV_ERROR: s.CONFIRMED,
            e.RECV_481: s.TERMINATED,
            e.RECV_408: s.TERMINATING,
            e.TIMER_B: s.TERMINATING,
            e.SEND_BYE: s.TERMINATING,
            e.RECV_BYE: s.TERMINATED,
        },
        s.GLARE_WAIT: {
            e.TIMER_491: s.REINVITING,
            e.RECV_REINVITE: s.REINVITE_RECEIVED,
            e.SEND_BYE: s.TERMINATING,
            e.RECV_BYE: s.TERMINATED,
        },
        s.REINVITE_RECEIVED: {
            e.SEND_2XX: s.REINVITE_ACCEPTED,
            e.SEND_ERROR: s.CONFIRMED,
            e.SEND_481: s.TERMINATED,
            e.SEND_BYE: s.TERMINATING,
            e.RECV_BYE: s.TERMINATED,
        },
        s.REINVITE_ACCEPTED: {
            e.TIMER_2XX: s.REINVITE_ACCEPTED,
            e.RECV_ACK: s.CONFIRMED,
            e.ACK_TIMEOUT: s.TERMINATING,
            e.SEND_BYE: s.TERMINATING,
            e.RECV_BYE: s.TERMINATED,
        },
        s.TERMINATING: {
            e.RECV_BYE_ANSWER: s.TERMINATED,
            e.TIMER_F: s.TERMINATED,
            e.RECV_BYE: s.TERMINATED,
        },
        s.TERMINATED: {},
    }


def from_every_state(transitions: Transitions[S], event: UaEvent, target: S) -> Transitions[S]:
    """``transitions`` with ``event`` leading to ``target`` from every other state, after the
    state's own events (a failure that ends the dialog whatever it was doing)."""
    return {
        state: moves if state == target else {**moves, event: target}
        for state, moves in transitions.items()
    }


class TransitionRefused(Exception):
    """A UA fired an event its table does not allow in the current state: a bug in the UA
    (it must ask :meth:`Machine.allows` and handle the event explicitly)."""


@dataclass(frozen=True)
class Table(Generic[S]):
    """One UA's transitions: ``transitions[state][event]`` is the next state.

    Every state the UA can be in has an entry (an empty one for the final state), as in h11, so
    a state nobody can leave is visible. Checked when built: the initial and final states and
    every target have an entry, the final state has no way out, every state is reachable from
    the initial one and can reach the final one.
    """

    name: str
    initial: S
    final: S
    transitions: Mapping[S, Mapping[UaEvent, S]]
    descriptions: Mapping[S, str] = field(default_factory=dict)
    """One line per state for the diagrams."""
    disallowed: Mapping[UaEvent, str] = field(default_factory=dict)
    """What this UA does with an event its table does not allow, where it differs from
    :data:`DISALLOWED` (the diagrams print it)."""

    def __post_init__(self) -> None:
        states = set(self.transitions)
        used = {self.initial, self.final} | {
            t for moves in self.transitions.values() for t in moves.values()
        }
        if not used <= states:
            missing = sorted(str(s) for s in used - states)
            raise ValueError(f"{self.name}: states without an entry {missing}")
        for source, moves in self.transitions.items():
            for event, target in moves.items():
                if target not in states or not isinstance(event, UaEvent):
                    raise ValueError(f"{self.name}: {source} --{event}--> {target} is not valid")
        if self.transitions[self.final]:
            raise ValueError(f"{self.name}: the final state {self.final} has transitions")
        reached = self._reach(self.initial, forward=True)
        if reached != states:
            raise ValueError(f"{self.name}: unreachable states {sorted(states - reached)}")
        ending = self._reach(self.final, forward=False)
        if ending != states:
            raise ValueError(f"{self.name}: states that never end {sorted(states - ending)}")

    def _reach(self, start: S, *, forward: bool) -> set[S]:
        seen = {start}
        todo = [start]
        while todo:
            state = todo.pop()
            if forward:
                nxt = set(self.transitions[state].values())
            else:
                nxt = {s for s, moves in self.transitions.items() if state in moves.values()}
            todo += [s for s in nxt if s not in seen]
            seen |= nxt
        return seen

    def target(self, state: S, event: UaEvent) -> S | None:
        """The next state, or None when the table does not allow ``event`` in ``state``."""
        return self.transitions[state].get(event)

    def edges(self) -> Iterator[tuple[S, UaEvent, S]]:
        """Every transition, in table order."""
        for source, moves in self.transitions.items():
            for event, target in moves.items():
                yield source, event, target

    def mermaid(self) -> str:
        """The table as a Mermaid ``stateDiagram-v2`` (one arrow per pair of states, the
        events that take it one per line)."""
        lines = ["stateDiagram-v2", f"    [*] --> {self.initial.name}"]
        for state in self.transitions:
            text = self.descriptions.get(state)
            if text:
                lines.append(f"    {state.name} : {state.name}<br/>{text}")
        arrows: dict[tuple[S, S], list[str]] = {}
        for source, event, target in self.edges():
            arrows.setdefault((source, target), []).append(event.value)
        for (source, target), labels in arrows.items():
            lines.append(f"    {source.name} --> {target.name} : {'<br/>'.join(labels)}")
        lines.append(f"    {self.final.name} --> [*]")
        return "\n".join(lines) + "\n"

    def markdown(self, title: str, intro: str, command: str) -> str:
        """A page for ``docs/``: the diagram, the table row by row, and what the UA does with
        the events the table does not allow."""
        out = [
            f"# {title}",
            "",
            f"<!-- Generated by `{command}` from the table in the code; do not edit. -->",
            "",
            intro.strip(),
            "",
            "```mermaid",
            self.mermaid().rstrip("\n"),
            "```",
            "",
            "## Transitions",
            "",
            "| state | event | next state |",
            "|---|---|---|",
        ]
        out += [f"| {s.name} | {e.value} | {t.name} |" for s, e, t in self.edges()]
        used = sorted({e for _, e, _ in self.edges()}, key=list(UaEvent).index)
        out += [
            "",
            "## Events a state does not allow",
            "",
            "Nothing else moves the state: an event outside the table for the current state is "
            "handled as follows.",
            "",
            "| event | allowed in | otherwise |",
            "|---|---|---|",
        ]
        for event in used:
            where = ", ".join(s.name for s, moves in self.transitions.items() if event in moves)
            otherwise = self.disallowed.get(event, DISALLOWED[event])
            out.append(f"| {event.value} | {where} | {otherwise} |")
        return "\n".join(out) + "\n"


class Machine(Generic[S]):
    """The current state of one UA, moved only by :meth:`fire` along its :class:`Table`."""

    def __init__(self, table: Table[S]) -> None:
        self.table = table
        self.state: S = table.initial
        self.history: list[tuple[S, UaEvent, S]] = []
        """Every transition taken, in order (for tests and post-mortems)."""

    def allows(self, event: UaEvent) -> bool:
        return self.table.target(self.state, event) is not None

    def fire(self, event: UaEvent) -> S:
        """Take the transition for ``event``; :class:`TransitionRefused` if there is none."""
        target = self.table.target(self.state, event)
        if target is None:
            raise TransitionRefused(
                f"{self.table.name}: {event.name} ({event.value}) is not allowed in "
                f"{self.state.name}"
            )
        self.history.append((self.state, event, target))
        self.state = target
        return target

    @property
    def ended(self) -> bool:
        return self.state == self.table.final


# ---------------------------------------------------------------------------------------------
# Timers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SipTimers:
    """RFC 3261's base timers (§17.1.1.1, Table 4); the others derive from them: Timer B,
    Timer F and the wait for the ACK of a 2xx are 64·T1."""

    __pydantic_config__ = SETTINGS_CONFIG

    t1: PositiveSeconds = 0.5
    """T1, the round-trip time estimate: the first retransmission interval of a 2xx; Timer B,
    Timer F and the ACK wait are 64·T1 (RFC 3261 default 0.5 s)."""
    t2: PositiveSeconds = 4.0
    """T2, the longest retransmission interval of a 2xx (§13.3.1.4; RFC 3261 default 4 s)."""

    def __post_init__(self) -> None:
        if not 0 < self.t1 <= self.t2:
            raise SettingError(
                ("t1",),
                f"SIP timers need 0 < T1 <= T2 (T1={self.t1:g}, T2={self.t2:g})",
                alternatives=[("t2",)],
            )

    @property
    def timer_b(self) -> float:
        """INVITE client transaction timeout, 64·T1 (§17.1.1.2)."""
        return 64 * self.t1

    @property
    def timer_f(self) -> float:
        """Non-INVITE (BYE) client transaction timeout, 64·T1 (§17.1.2.2)."""
        return 64 * self.t1

    @property
    def ack_wait(self) -> float:
        """How long a UAS retransmits its 2xx without an ACK before ending the session,
        64·T1 (§13.3.1.4)."""
        return 64 * self.t1

    def next_interval(self, interval: float | None) -> float:
        """The 2xx retransmission interval after ``interval`` (None: the first): T1, then
        doubling up to T2 (§13.3.1.4)."""
        return self.t1 if interval is None else min(2 * interval, self.t2)

    def retransmissions(self) -> list[float]:
        """Times (from the first send of a 2xx) of its retransmissions while no ACK arrives,
        all before :attr:`ack_wait`: 0.5, 1.5, 3.5, 7.5, 11.5 … 31.5 s with the defaults."""
        times: list[float] = []
        t, interval = 0.0, self.next_interval(None)
        while t + interval < self.ack_wait:
            t += interval
            times.append(t)
            interval = self.next_interval(interval)
        return times


def glare_delay(rng: random.Random, owns_call_id: bool) -> float:
    """RFC 3261 §14.1: after a 491 the UAC waits a random time in units of 10 ms: 2.1 to 4 s
    when it generated the dialog's Call-ID, 0 to 2 s otherwise, so the two ends do not collide
    again."""
    if owns_call_id:
        return rng.randint(210, 400) / 100
    return rng.randint(0, 200) / 100
