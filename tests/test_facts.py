"""labsim.wire.facts: typed facts of a message and the kinds fault rules name."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labsim.run import run_scenario
from labsim.scenario import loads
from labsim.wire.facts import (
    DataFacts,
    Kind,
    KindError,
    SipFacts,
    StunFacts,
    facts_of,
    parse_kind,
)

from .conftest import VECTORS, load_hex


@pytest.mark.parametrize(
    ("text", "protocol", "kind"),
    [
        ("Binding Request", None, Kind("STUN", method="Binding", cls="Request")),
        ("binding success response", "STUN",
         Kind("STUN", method="Binding", cls="Success Response")),
        ("Allocate Error Response 401", None,
         Kind("STUN", method="Allocate", cls="Error Response", error=401)),
        ("Allocate 438", None, Kind("STUN", method="Allocate", cls="Error Response", error=438)),
        ("ConnectionAttempt", None, Kind("STUN", method="ConnectionAttempt")),
        ("INVITE", None, Kind("SIP", method="INVITE")),
        ("200 OK", "SIP", Kind("SIP", status=200)),
        ("403", None, Kind("SIP", status=403)),
        ("TCP data", None, Kind("TCP", framed=False)),
        ("framed data", "TCP", Kind("TCP", framed=True)),
    ],
)  # fmt: skip
def test_kinds_people_write(text: str, protocol: str | None, kind: Kind) -> None:
    got = parse_kind(text, protocol)
    assert (got.protocol, got.method, got.cls, got.status, got.error, got.framed) == (
        kind.protocol, kind.method, kind.cls, kind.status, kind.error, kind.framed
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "protocol", "hint"),
    [
        ("Bindng Request", "STUN", "did you mean 'Binding'"),
        ("Binding Reqest", None, "expected Request, Success Response"),
        ("invite", "SIP", "a SIP method in capitals"),
        ("INVITE", "STUN", "names no STUN message kind"),
        ("", None, "empty"),
        ("099", "SIP", "names no SIP message kind"),
    ],
)
def test_kinds_that_name_nothing_say_why(text: str, protocol: str | None, hint: str) -> None:
    with pytest.raises(KindError, match=hint):
        parse_kind(text, protocol)


def test_every_message_of_the_call_matches_the_kind_its_facts_name() -> None:
    sc = loads("extends: sharing-call.yaml\ncall: {hold: 1.0}\n", source="t.yaml")
    trace = run_scenario(sc, "virtual").trace
    kinds: set[str] = set()
    for m in trace.messages:
        facts = m.facts
        if isinstance(facts, SipFacts):
            text = facts.method or str(facts.status)
        elif isinstance(facts, StunFacts):
            text = f"{facts.method} {facts.cls}"
        else:
            continue
        kinds.add(text)
        assert m.is_kind(text), (text, m)
        assert m.summary.startswith(text.split()[0])  # what people read says the same
    # Each kind matches exactly the messages whose facts name it.
    for text in kinds:
        kind = parse_kind(text)
        for m in trace.messages:
            facts = m.facts
            named = (
                (facts.method or str(facts.status)) if isinstance(facts, SipFacts)
                else f"{facts.method} {facts.cls}" if isinstance(facts, StunFacts) else None
            )  # fmt: skip
            assert kind.matches(m.protocol, facts) == (named == text), (text, m)


def test_facts_of_the_lab_vectors() -> None:
    allocate = facts_of("STUN", load_hex("stun/turn-allocate-request.hex"))
    assert isinstance(allocate, StunFacts)
    assert (allocate.method, allocate.cls, allocate.lifetime, allocate.integrity) == (
        "Allocate", "Request", 600, False
    )  # fmt: skip
    refusal = facts_of("SIP", (VECTORS / "sip" / "403-ms-diagnostics-public.sip").read_bytes())
    assert isinstance(refusal, SipFacts)
    assert (refusal.status, refusal.diagnostics_code) == (403, 21002)
    invite = facts_of("SIP", (VECTORS / "sip" / "invite-appsharing-cl813.sip").read_bytes())
    assert isinstance(invite, SipFacts)
    assert invite.method == "INVITE" and "applicationsharing" in invite.media
    assert invite.to_tag is None and invite.branch and invite.origin


@given(st.binary(max_size=300), st.sampled_from(["SIP", "STUN", "TCP"]))
def test_facts_never_raise(data: bytes, protocol: str) -> None:
    facts = facts_of(protocol, data)
    assert isinstance(facts, SipFacts | StunFacts | DataFacts)
