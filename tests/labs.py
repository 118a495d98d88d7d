"""Variants of the lab for tests: the lab scenario plus a few YAML lines, run and checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labsim.actors.lab import CallSettings, Lab
from labsim.run import Clock, RunResult, run_scenario
from labsim.scenario import Scenario, loads
from labsim.trace import MessageRecord, Trace

LAB = Path(__file__).parent.parent / "scenarios" / "sharing-call.yaml"


def variant(extra: str = "", *, hold: float | None = None, name: str = "variant.yaml") -> Scenario:
    """The lab with ``extra`` YAML lines (``hold``: the call's hold time, when given)."""
    head = f"extends: {LAB}\n" + (f"call: {{hold: {hold}}}\n" if hold is not None else "")
    return loads(head + extra, source=name)


def run_variant(extra: str, outcome: str, clock: Clock = "virtual") -> RunResult:
    """Run a variant that expects ``outcome`` and check it met every expectation."""
    result = run_scenario(variant(f"{extra}\nexpect: {{outcome: {outcome}}}\n"), clock)
    assert result.outcome.name == outcome, result.outcome
    assert result.failures == [], result.failures
    return result


#: The call without the meeting's audio/video call before the share: for the sans-IO tests of
#: the sharing dialog, which drive one user agent from its first INVITE (the share's then).
NO_AV_CALL = CallSettings(av_call=False)


def share_lab(**sections: Any) -> Lab:
    """The lab of :data:`NO_AV_CALL`, with the actors' settings given."""
    return Lab(call=NO_AV_CALL, **sections)


def av_call_ids(trace: Trace) -> set[str]:
    """The Call-IDs of the meeting's audio/video calls in ``trace`` (an INVITE offering audio or
    video, no application sharing)."""
    return {
        f.call_id for m in trace.messages
        if (f := m.sip_facts) is not None and f.method == "INVITE" and f.to_tag is None
        and "applicationsharing" not in f.media and {"audio", "video"} & set(f.media)
    }  # fmt: skip


def share_sip(trace: Trace) -> list[MessageRecord]:
    """Every hop of every SIP message but the audio/video call's: the sharing dialog's (and
    any other the trace holds)."""
    av = av_call_ids(trace)
    return [
        m for m in trace.messages
        if m.protocol == "SIP" and (f := m.sip_facts) is not None and f.call_id not in av
    ]  # fmt: skip


def av_sip(trace: Trace) -> list[MessageRecord]:
    """Every hop of every SIP message of the audio/video call."""
    av = av_call_ids(trace)
    return [m for m in trace.messages if (f := m.sip_facts) is not None and f.call_id in av]
