"""Tests of labsim.wire.sip.HeaderStore and of what parse_message shares between calls.

The store must behave as sipmessage's own ``Headers`` does (it replaces it in every message
labsim parses or builds), so most tests here run the same steps on both and compare.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sipmessage import URI, Address, Message, Request, Via
from sipmessage.message import Headers

from labsim.wire import sip
from labsim.wire.errors import SipError

VECTORS = Path(__file__).parent / "vectors" / "sip"
INVITE = next(VECTORS.glob("invite-appsharing-cl*.sip")).read_bytes()
ALL_VECTORS = [p.read_bytes() for p in sorted(VECTORS.glob("*.sip"))]


def lines(headers: Headers) -> list[tuple[str, list[str]]]:
    return [(name, list(headers.getlist(name))) for name in headers.keys()]


def test_names_are_case_insensitive_and_keep_their_first_spelling() -> None:
    h = sip.HeaderStore()
    h.add("Via", "a")
    h.add("VIA", "b")
    h.add("via", "c")
    assert h.keys() == ["Via"]
    assert h.getlist("vIa") == ["a", "b", "c"]
    assert h.get("VIA") == "a" and h["via"] == "a"
    h.set("VIA", "d")
    assert h.keys() == ["Via"] and h.getlist("via") == ["d"]
    assert str(h) == "Via: d\r\n\r\n"


def test_order_is_insertion_order_and_set_keeps_the_position() -> None:
    h = sip.HeaderStore([("To", "t"), ("From", "f"), ("Call-ID", "c")])
    h.set("to", "t2")
    h.setlist("FROM", ["f1", "f2"])
    h.add("CSeq", "1 INVITE")
    assert h.keys() == ["To", "From", "Call-ID", "CSeq"]
    assert str(h) == "To: t2\r\nFrom: f1\r\nFrom: f2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n"
    h.remove("from")
    h.add("From", "f3")  # back, at the end
    assert h.keys() == ["To", "Call-ID", "CSeq", "From"]
    assert h.items() == [("To", ["t2"]), ("Call-ID", ["c"]), ("CSeq", ["1 INVITE"]),
                         ("From", ["f3"])]  # fmt: skip


def test_missing_and_empty_headers_behave_as_sipmessage_s() -> None:
    for h in (sip.HeaderStore(), Headers()):
        assert h.get("X") is None and h.get("X", "d") == "d"
        assert h.getlist("X") == []
        with pytest.raises(KeyError):
            h["X"]
        h.remove("X")  # no error
        h.setlist("X", [])
        assert h.keys() == ["X"] and h.getlist("X") == []
        with pytest.raises(IndexError):
            h.get("X")
        assert str(h) == "\r\n"


def test_getlist_returns_the_stored_list_as_sipmessage_does() -> None:
    for h in (sip.HeaderStore(), Headers()):
        h.add("Route", "<sip:a;lr>")
        h.getlist("route").append("<sip:b;lr>")
        assert h.getlist("Route") == ["<sip:a;lr>", "<sip:b;lr>"]
        values = ["v"]
        h.setlist("Via", values)
        values.append("w")
        assert h.getlist("Via") == ["v", "w"]


OPS = st.lists(
    st.tuples(
        st.sampled_from(["add", "set", "setlist", "remove"]),
        st.sampled_from(["Via", "via", "VIA", "To", "t", "Content-Length", "X-A", "x-a"]),
        st.lists(st.sampled_from(["1", "2", "a b", ""]), max_size=3),
    ),
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(OPS)
def test_same_results_as_sipmessage_headers_for_any_steps(
    ops: list[tuple[str, str, list[str]]],
) -> None:
    ours, theirs = sip.HeaderStore(), Headers()
    for op, name, values in ops:
        for h in (ours, theirs):
            if op == "add":
                h.add(name, values[0] if values else "")
            elif op == "set":
                h.set(name, values[0] if values else "")
            elif op == "setlist":
                h.setlist(name, list(values))
            else:
                h.remove(name)
        assert lines(ours) == lines(theirs)
        assert str(ours) == str(theirs)
        for probe in ("via", "To", "x-A", "nope"):
            assert ours.getlist(probe) == theirs.getlist(probe)
            if ours.getlist(probe) or probe == "nope":
                assert ours.get(probe) == theirs.get(probe)


def test_copy_is_independent() -> None:
    h = sip.HeaderStore([("Via", "a"), ("To", "t")])
    c = h.copy()
    c.add("Via", "b")
    c.set("To", "t2")
    c.add("From", "f")
    c.getlist("Via").append("x")
    assert h.items() == [("Via", ["a"]), ("To", ["t"])]
    assert c.items() == [("Via", ["a", "b", "x"]), ("To", ["t2"]), ("From", ["f"])]


def test_parse_gives_the_headers_sipmessage_gives_for_unfolded_messages() -> None:
    for data in ALL_VECTORS:
        if b"\r\n " in data or b"\r\n\t" in data or b" :" in data.split(b"\r\n\r\n")[0]:
            continue  # folded lines and LWS before the colon are ours to normalize
        ours, theirs = sip.parse_message(data), Message.parse(data)
        assert isinstance(ours.headers, sip.HeaderStore)
        assert lines(ours.headers) == lines(theirs.headers)
        assert ours.body == theirs.body
        if isinstance(ours, Request):
            assert isinstance(theirs, Request)
            assert (ours.method, ours.uri) == (theirs.method, theirs.uri)


def test_compact_forms_are_stored_under_the_full_name() -> None:
    data = INVITE.replace(b"\r\nCall-ID:", b"\r\ni:").replace(b"\r\nVia:", b"\r\nv:")
    msg = sip.parse_message(data)
    assert "Call-ID" in msg.headers.keys() and "i" not in msg.headers.keys()
    assert msg.headers.get("call-id") == sip.call_id(sip.parse_message(INVITE))
    assert msg.headers.getlist("Via") == sip.parse_message(INVITE).headers.getlist("Via")


def test_changing_a_parsed_message_changes_neither_the_cache_nor_other_copies() -> None:
    first = sip.parse_message(INVITE)
    before = lines(first.headers)
    second = sip.parse_message(INVITE)
    sip.push_via(second, Via.parse("SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bKx"))
    sip.decrement_max_forwards(second)
    second.headers.getlist("Route").clear()
    second.headers.add("X-New", "1")
    second.body = b""
    assert lines(first.headers) == before
    third = sip.parse_message(INVITE)
    assert lines(third.headers) == before and third.body == first.body
    assert third is not first and third.headers is not first.headers


def test_built_messages_carry_a_store() -> None:
    invite = sip.parse_message(INVITE)
    assert isinstance(invite, Request)
    assert isinstance(sip.build_response(invite, 180).headers, sip.HeaderStore)
    ack = sip.build_request(
        "ACK", invite.uri, via=sip.top_via(invite), from_addr=sip.from_address(invite),
        to_addr=sip.to_address(invite), call_id="c1", cseq=1,
    )  # fmt: skip
    assert isinstance(ack.headers, sip.HeaderStore)


@pytest.mark.parametrize("store", [sip.HeaderStore, Headers])
@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("X-A", "ok\r\nInjected: 1", "X-A: control character"),
        ("X-A", "tab\tis fine but not \x7f", "X-A: control character"),
        ("Bad Name", "v", "bad header name 'Bad Name'"),
        ("Bad: x", "v", "bad header name 'Bad: x'"),
        ("", "v", "bad header name ''"),
        ("X-\n", "v", "bad header name"),
    ],
)
def test_encode_names_the_bad_header(
    store: type[Headers], name: str, value: str, match: str
) -> None:
    msg = sip.parse_message(INVITE)
    headers = store()
    for key in msg.headers.keys():
        for v in msg.headers.getlist(key):
            headers.add(key, v)
    headers.add("X-Good", "\tvalue with a tab and é")
    headers.add(name, value)
    msg.headers = headers
    with pytest.raises(SipError, match=match):
        sip.encode(msg)


def test_encode_accepts_tabs_and_non_ascii_in_values() -> None:
    msg = sip.parse_message(INVITE)
    msg.headers.add("Subject", "\tpartagé\u2028ok")
    assert b"Subject: \tpartag\xc3\xa9\xe2\x80\xa8ok\r\n" in sip.encode(msg)


def test_formatters_remembered_by_identity_stay_right() -> None:
    # format_uri/format_address remember results per object (URI and Address cannot be
    # hashed); distinct objects, equal or not, and more of them than the table holds, must
    # each still get their own text.
    uris = [URI.parse(f"sip:u{i}@h{i % 7}.example;transport=tcp") for i in range(1200)]
    for _ in range(2):
        for i, uri in enumerate(uris):
            assert sip.format_uri(uri) == f"sip:u{i}@h{i % 7}.example;transport=tcp"
    a, b = Address.parse("<sip:a@x>;tag=1"), Address.parse("<sip:a@x>;tag=2")
    assert (sip.format_address(a), sip.format_address(b)) == ("<sip:a@x>;tag=1", "<sip:a@x>;tag=2")
    assert sip.format_address(sip.with_tag(a, "3")) == "<sip:a@x>;tag=3"


def test_parse_address_is_sipmessage_s_parse_with_sip_errors() -> None:
    text = "<sip:10.48.54.228:5060;transport=tcp;lr>"
    assert sip.parse_address(text) == Address.parse(text)
    assert sip.parse_address(text) is sip.parse_address(text)  # cached: a dialog asks per request
    with pytest.raises(SipError, match="address"):
        sip.parse_address("<sip:")
