"""The diagnosis tells the truth about any fault, not only the library's: the sweep.

Every message of the healthy call, on every hop it crosses, is dropped, and again held past
the timers that guard it (40 s: past 64·T1 = 32 s, the client's ICE wait and a STUN
transaction's 39.5 s), one run each on the virtual clock. For every run the diagnosis must:

1. name the message and the hop where it was lost or held;
2. not be ``healthy``; when the outcome is untouched (the sharing was established and ended as
   planned) say what recovered, or why the loss cost nothing; when it is not, give no verdict of
   a working call;
3. never say the sender did not send what it sent.

A property test then throws random faults (any kind, hop, occurrence, drop or delay, one or two
rules at once) at the call and holds the diagnosis to the same rules.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labsim.report.diagnose import Diagnosis
from labsim.run import RunResult, run_scenario
from labsim.trace import MessageRecord
from tests.labs import variant

#: The verdicts of a call that worked.
WORKING = {"healthy", "stale-nonce-recovered", "glare-recovered", "recovered", "slow-network"}

Case = tuple[str, str, str, str, int]


def kind_of(record: MessageRecord) -> tuple[str, str, str] | None:
    """(rule key, kind for the rule, the words the diagnosis must use)."""
    sip = record.sip_facts
    if sip is not None:
        if sip.method is not None:
            return "sip", sip.method, sip.method
        return "sip", str(sip.status), f"{sip.status} {sip.reason}"
    stun = record.stun_facts
    if stun is not None:
        kind = f"{stun.method} {stun.cls}"
        return "stun", kind, kind
    return None


@pytest.fixture(scope="module")
def cases() -> list[tuple[Case, str]]:
    healthy = run_scenario(variant(""), "virtual")
    assert healthy.diagnosis.verdict == "healthy"
    seen: Counter[tuple[str, str, str]] = Counter()
    out = []
    for m in healthy.trace.messages:
        kind = kind_of(m)
        if kind is None:
            continue
        key, rule_kind, words = kind
        seen[(m.src, m.dst, rule_kind)] += 1
        out.append(((m.src, m.dst, key, rule_kind, seen[(m.src, m.dst, rule_kind)]), words))
    return out


def run_fault(case: Case, action: str) -> RunResult:
    src, dst, key, kind, nth = case
    extra = ", by: 40" if action == "delay" else ""
    rule = f"{{from: {src}, to: {dst}, {key}: '{kind}', nth: {nth}{extra}}}"
    return run_scenario(variant(f"deadline: 120\nfaults:\n  - {action}: {rule}\n"), "virtual")


def truthful(result: RunResult, sender: str, words: str, hop: tuple[str, str]) -> list[str]:
    """What is false in the diagnosis of a run in which ``sender``'s ``words`` message was
    lost or held on ``hop`` (empty: it is true)."""
    diagnosis: Diagnosis = result.diagnosis
    text = diagnosis.text()
    wrong = []
    where = f"{hop[0]} → {hop[1]}"
    # 1. the message and the hop, on one line of the diagnosis
    if not any(words in line and where in line for line in text.splitlines()):
        wrong.append(f"does not name {words!r} on {where}")
    # 2. healthy never; a working verdict only for a working call, saying what recovered
    if diagnosis.verdict == "healthy":
        wrong.append("says healthy")
    established = result.outcome.name == "sharing-established"
    if diagnosis.verdict in WORKING:
        if not established:
            wrong.append(f"working verdict {diagnosis.verdict} for {result.outcome.name}")
        elif "recovered" not in text and "no consequence" not in text:
            wrong.append("a working verdict that does not say what recovered")
    # 3. never that the sender did not send it
    never = re.compile(rf"{sender}\b[^.;]*\b(sent no|never sent|did not send)\b[^.;]*{words}")
    if never.search(text):
        wrong.append(f"says {sender} did not send {words!r}")
    return wrong


@pytest.mark.parametrize("action", ["drop", "delay"])
def test_every_message_lost_or_held_on_every_hop_is_diagnosed_truthfully(
    cases: list[tuple[Case, str]], action: str
) -> None:
    assert len(cases) > 50  # every hop of every message of the call
    verdicts: Counter[str] = Counter()
    false: list[str] = []
    for case, words in cases:
        src, dst, _, kind, nth = case
        result = run_fault(case, action)
        hit = [m for m in result.trace.messages if m.rule == 1]
        assert hit, (case, "the rule acted on nothing")
        journey = hit[0].journey
        sender = journey.sender if journey is not None else src
        verdicts[result.diagnosis.verdict] += 1
        for problem in truthful(result, sender, words, (src, dst)):
            false.append(f"{action} {kind} #{nth} on {src} → {dst}: {problem}\n"
                         f"{result.diagnosis.text()}")  # fmt: skip
    assert not false, "\n\n".join(false[:5]) + f"\n({len(false)} false of {len(cases)})"
    # The sweep's counts, for the record (pytest -s shows them).
    print(f"\n{action}: {len(cases)} runs, all truthful; by verdict: {dict(verdicts)}")


@st.composite
def faults(draw: st.DrawFn, cases: list[tuple[Case, str]]) -> list[tuple[Case, str, str]]:
    n = draw(st.integers(1, 2))
    picked = draw(st.lists(st.sampled_from(cases), min_size=n, max_size=n, unique=True))
    return [(case, words, draw(st.sampled_from(["drop", "delay"]))) for case, words in picked]


def test_random_faults_are_diagnosed_truthfully(cases: list[tuple[Case, str]]) -> None:
    @settings(max_examples=60, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(faults(cases))
    def check(picked: list[tuple[Case, str, str]]) -> None:
        rules = []
        for (src, dst, key, kind, nth), _, action in picked:
            extra = ", by: 40" if action == "delay" else ""
            rule = f"{{from: {src}, to: {dst}, {key}: '{kind}', nth: {nth}{extra}}}"
            rules.append(f"  - {action}: {rule}")
        sc = variant("deadline: 120\nfaults:\n" + "\n".join(rules) + "\n")
        result = run_scenario(sc, "virtual")
        assert result.diagnosis.verdict != "healthy", result.diagnosis.text()
        # The first rule's message always acts (two rules may hit one message: then the
        # first decides); what it hit must be named, hop and all, unless a rule before it in
        # call order already ended the call.
        for i, ((src, dst, _, _, _), words, _) in enumerate(picked, start=1):
            hit = [m for m in result.trace.messages if m.rule == i]
            if not hit:
                continue
            journey = hit[0].journey
            sender = journey.sender if journey is not None else src
            problems = truthful(result, sender, words, (src, dst))
            assert not problems, (problems, picked, result.diagnosis.text())

    check()
