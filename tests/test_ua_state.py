"""The user agents' state tables (labsim/proto/sip_ua_state.py, the tables next to each UA):
every transition taken through the machine, every event a state does not allow refused, the
tables' own checks, the SIP timer settings, and the generated diagrams kept current."""

from __future__ import annotations

from collections import deque
from enum import StrEnum, auto
from pathlib import Path

import pytest

from labsim.actors import states
from labsim.actors.av_call import AV_CLIENT_TABLE, AV_CMS_TABLE
from labsim.actors.cms import CMS_TABLE
from labsim.actors.skype_client import CLIENT_TABLE
from labsim.proto.sip_ua_state import (
    DISALLOWED,
    Machine,
    SipTimers,
    Table,
    TransitionRefused,
    UaEvent,
    UaState,
    glare_delay,
)

DOCS = Path(__file__).parent.parent / "docs"
TABLES: list[Table[StrEnum]] = [  # type: ignore[list-item]
    CLIENT_TABLE, CMS_TABLE, AV_CLIENT_TABLE, AV_CMS_TABLE,
]  # fmt: skip


def path_to(table: Table[StrEnum], goal: StrEnum) -> list[UaEvent]:
    """The shortest list of events that leads from the initial state to ``goal``."""
    seen = {table.initial: list[UaEvent]()}
    todo = deque([table.initial])
    while todo:
        state = todo.popleft()
        if state == goal:
            return seen[state]
        for event, target in table.transitions[state].items():
            if target not in seen:
                seen[target] = [*seen[state], event]
                todo.append(target)
    raise AssertionError(f"{goal} unreachable")


def machine_in(table: Table[StrEnum], state: StrEnum) -> Machine[StrEnum]:
    """A machine brought to ``state`` by firing events (the only way it moves)."""
    machine = Machine(table)
    for event in path_to(table, state):
        machine.fire(event)
    assert machine.state == state
    return machine


EDGES = [
    pytest.param(table, source, event, target, id=f"{table.name}:{source}-{event.name}")
    for table in TABLES
    for source, event, target in table.edges()
]
REFUSED = [
    pytest.param(table, state, event, id=f"{table.name}:{state}-{event.name}")
    for table in TABLES
    for state in table.transitions
    for event in UaEvent
    if event not in table.transitions[state]
]


@pytest.mark.parametrize(("table", "source", "event", "target"), EDGES)
def test_every_transition_moves_the_machine_as_the_table_says(
    table: Table[StrEnum], source: StrEnum, event: UaEvent, target: StrEnum
) -> None:
    machine = machine_in(table, source)
    assert machine.allows(event)
    assert machine.fire(event) == target == machine.state
    assert machine.history[-1] == (source, event, target)


@pytest.mark.parametrize(("table", "state", "event"), REFUSED)
def test_an_event_the_table_does_not_allow_is_refused_and_moves_nothing(
    table: Table[StrEnum], state: StrEnum, event: UaEvent
) -> None:
    machine = machine_in(table, state)
    history = list(machine.history)
    assert not machine.allows(event)
    with pytest.raises(TransitionRefused, match=event.name):
        machine.fire(event)
    assert machine.state == state and machine.history == history


_S, _E = UaState, UaEvent
BOTH = ("skype_client", "cms")

#: What RFC 3261 asks of each end, as (ends, state, event, the state it leads to; None: the
#: event is not allowed there).
RFC_3261: list[tuple[tuple[str, ...], UaState, UaEvent, UaState | None]] = [
    # §15: the callee sends no BYE before the ACK of its 2xx (or 64·T1); §14.1: no reINVITE.
    (("cms",), _S.ACCEPTED, _E.SEND_BYE, None),
    (("cms",), _S.ACCEPTED, _E.SEND_REINVITE, None),
    (("cms",), _S.ACCEPTED, _E.ACK_TIMEOUT, _S.TERMINATING),
    (("cms",), _S.ACCEPTED, _E.RECV_ACK, _S.CONFIRMED),
    # §13.2.2 / §17.1.1.2: Timer B on the INVITE fails the attempt; on a reINVITE, BYE (§14.1).
    (("skype_client",), _S.CALLING, _E.TIMER_B, _S.TERMINATED),
    (BOTH, _S.REINVITING, _E.TIMER_B, _S.TERMINATING),
    # §14.1: a 491 means waiting, then trying again.
    (BOTH, _S.REINVITING, _E.RECV_491, _S.GLARE_WAIT),
    (BOTH, _S.GLARE_WAIT, _E.TIMER_491, _S.REINVITING),
    # §14.1: after any other error to a reINVITE the session is as it was; 481 and 408 end the
    # dialog (§12.2.1.2), 408 with BYE as after Timer B. Either end may refuse (a setting).
    (BOTH, _S.REINVITING, _E.RECV_ERROR, _S.CONFIRMED),
    (BOTH, _S.REINVITING, _E.RECV_481, _S.TERMINATED),
    (BOTH, _S.REINVITING, _E.RECV_408, _S.TERMINATING),
    (BOTH, _S.REINVITE_RECEIVED, _E.SEND_ERROR, _S.CONFIRMED),
    (BOTH, _S.REINVITE_RECEIVED, _E.SEND_481, _S.TERMINATED),
    # §13.2.2.3: a refused INVITE makes no dialog; §13.3.1: CMS is back where it was.
    (("skype_client",), _S.CALLING, _E.RECV_ERROR, _S.TERMINATED),
    (("cms",), _S.PROCEEDING, _E.SEND_ERROR, _S.IDLE),
    # No reINVITE of ours while the peer's is unanswered, in either UA.
    (("skype_client",), _S.REINVITE_RECEIVED, _E.SEND_REINVITE, None),
    (("cms",), _S.REINVITE_ACCEPTED, _E.SEND_REINVITE, None),
]


@pytest.mark.parametrize(("ends", "state", "event", "target"), RFC_3261)
def test_the_tables_say_what_rfc_3261_asks_of_each_end(
    ends: tuple[str, ...], state: UaState, event: UaEvent, target: UaState | None
) -> None:
    tables = {"skype_client": CLIENT_TABLE, "cms": CMS_TABLE}
    for end in ends:
        moves = tables[end].transitions[state]
        if target is None:
            assert event not in moves, (end, state, event)
        else:
            assert moves[event] == target, (end, state, event)


def test_every_event_says_how_it_is_handled_where_it_is_not_allowed() -> None:
    assert set(DISALLOWED) == set(UaEvent)
    assert all(text.strip() for text in DISALLOWED.values())


class _Three(StrEnum):
    A = auto()
    B = auto()
    C = auto()


@pytest.mark.parametrize(
    ("transitions", "message"),
    [
        ({_Three.A: {UaEvent.SEND_BYE: _Three.B}, _Three.C: {}}, "without an entry"),
        (
            {
                _Three.A: {UaEvent.SEND_BYE: _Three.C},
                _Three.B: {UaEvent.TIMER_F: _Three.C},
                _Three.C: {},
            },
            "unreachable",
        ),
        (
            {
                _Three.A: {UaEvent.SEND_BYE: _Three.B, UaEvent.TIMER_F: _Three.C},
                _Three.B: {UaEvent.RECV_ACK: _Three.B},
                _Three.C: {},
            },
            "never end",
        ),
        (
            {
                _Three.A: {UaEvent.SEND_BYE: _Three.B},
                _Three.B: {UaEvent.TIMER_F: _Three.C},
                _Three.C: {UaEvent.RECV_BYE: _Three.A},
            },
            "final state",
        ),
    ],
)
def test_a_broken_table_is_refused_when_built(
    transitions: dict[_Three, dict[UaEvent, _Three]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Table("broken", _Three.A, _Three.C, transitions)


def test_the_diagrams_are_drawn_from_the_tables() -> None:
    for table in TABLES:
        text = table.mermaid()
        assert text.startswith("stateDiagram-v2\n")
        assert f"[*] --> {table.initial.name}" in text and f"{table.final.name} --> [*]" in text
        for source, event, target in table.edges():
            start = f"    {source.name} --> {target.name} :"
            arrow = next(line for line in text.splitlines() if line.startswith(start))
            assert event.value in arrow


def test_the_committed_state_diagrams_are_current(tmp_path: Path) -> None:
    assert states.stale(DOCS) == [], (
        f"docs/state-*.md are stale; regenerate them with `{states.COMMAND}`"
    )
    # The command writes what the check compares, and the check notices a change.
    assert states.main(["--diagrams", str(tmp_path)]) == 0
    assert states.stale(tmp_path) == []
    page = tmp_path / "state-cms.md"
    page.write_text(page.read_text() + "edited\n")
    assert states.main(["--check", str(tmp_path)]) == 1


# -- timers -------------------------------------------------------------------------------------


def test_the_sip_timers_default_to_rfc_3261() -> None:
    timers = SipTimers()
    assert (timers.t1, timers.t2) == (0.5, 4.0)
    assert timers.timer_b == timers.timer_f == timers.ack_wait == 32.0
    # §13.3.1.4: T1, then doubling up to T2, for 64·T1.
    assert timers.retransmissions() == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert [timers.next_interval(i) for i in (None, 0.5, 1.0, 2.0, 4.0)] == [0.5, 1, 2, 4, 4]


def test_the_sip_timers_follow_their_settings() -> None:
    fast = SipTimers(t1=0.1, t2=0.4)
    assert fast.timer_b == pytest.approx(6.4)
    assert fast.retransmissions()[:4] == pytest.approx([0.1, 0.3, 0.7, 1.1])
    with pytest.raises(ValueError, match="T1"):
        SipTimers(t1=5.0, t2=4.0)
    with pytest.raises(ValueError, match="T1"):
        SipTimers(t1=0.0)


def test_the_491_wait_depends_on_who_chose_the_call_id() -> None:
    import random

    rng = random.Random(7)
    owner = [glare_delay(rng, True) for _ in range(300)]
    other = [glare_delay(rng, False) for _ in range(300)]
    # §14.1: 2.1-4 s for the Call-ID's owner, 0-2 s for the other, in units of 10 ms.
    assert 2.1 <= min(owner) and max(owner) <= 4.0
    assert 0.0 <= min(other) and max(other) <= 2.0
    assert all(round(d * 100) == pytest.approx(d * 100) for d in owner + other)
    assert len(set(owner)) > 50 and len(set(other)) > 50
