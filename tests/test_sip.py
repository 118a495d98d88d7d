"""Tests of labsim.wire.sip: the SIP codec on top of sipmessage (RFC 3261, PROTOCOL.md §5.4)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sipmessage import URI, Address, MediaType, Parameters, Request, Response, Via

from labsim.wire import sip
from labsim.wire.errors import SipError

from .conftest import require_tool
from .pcapwriter import TcpConversation, write_pcap

VECTORS = Path(__file__).parent / "vectors" / "sip"
INVITE_FILE = next(VECTORS.glob("invite-appsharing-cl*.sip"))
INVITE = INVITE_FILE.read_bytes()
TRYING = (VECTORS / "100-trying.sip").read_bytes()
OK_SDP = (VECTORS / "200-ok-sdp.sip").read_bytes()
FORBIDDEN = (VECTORS / "403-ms-diagnostics-public.sip").read_bytes()
BYE_FOLDED = (VECTORS / "bye-folded-compact.sip").read_bytes()
ALL_VECTORS = [INVITE, TRYING, OK_SDP, FORBIDDEN, BYE_FOLDED]

DIAG_21002 = '21002;reason="Attendees cannot share in this conference";component="ASMCU"'


def parse_request(data: bytes) -> Request:
    msg = sip.parse_message(data)
    assert isinstance(msg, Request)
    return msg


def parse_response(data: bytes) -> Response:
    msg = sip.parse_message(data)
    assert isinstance(msg, Response)
    return msg


def replace_line(data: bytes, prefix: bytes, new: bytes | None) -> bytes:
    """Replace (or with None remove) the first header line starting with ``prefix``."""
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    for i, line in enumerate(lines):
        if line.startswith(prefix):
            if new is None:
                del lines[i]
            else:
                lines[i] = new
            return b"\r\n".join(lines) + sep + body
    raise AssertionError(f"no line starts with {prefix!r}")


def line_of(data: bytes, prefix: bytes) -> int:
    """1-based number of the first line starting with ``prefix``."""
    for i, line in enumerate(data.split(b"\r\n"), start=1):
        if line.startswith(prefix):
            return i
    raise AssertionError(f"no line starts with {prefix!r}")


def raises_sip(data: bytes) -> SipError:
    with pytest.raises(SipError) as info:
        sip.parse_message(data)
    return info.value


# ------------------------------------------------------------------------------------------
# The vectors


def test_invite_vector_content_length_with_lws_matches_body_and_file_name() -> None:
    body = INVITE.split(b"\r\n\r\n", 1)[1]
    declared = int(re.search(rb"Content-Length:   (\d+)\r\n", INVITE).group(1))  # type: ignore[union-attr]
    assert declared == len(body)
    assert INVITE_FILE.name == f"invite-appsharing-cl{len(body)}.sip"


def test_invite_vector_parses_with_typed_headers() -> None:
    msg = parse_request(INVITE)
    assert msg.method == "INVITE"
    assert msg.uri == URI("sip", "cms.example.com", user="meeting",
                          parameters=Parameters(transport="tcp"))  # fmt: skip
    via = sip.top_via(msg)
    assert (via.transport, via.host, via.port) == ("TCP", "192.168.1.252", 5061)
    assert sip.via_branch(via) == "z9hG4bK8f3a1c0e7d"
    assert sip.is_rfc3261_branch(sip.via_branch(via))
    assert sip.via_received(via) == "192.168.1.252"
    second = sip.vias(msg)[1]
    assert sip.via_rport(second) == 50322
    assert sip.via_received(second) == "198.51.100.20"
    assert len(sip.vias(msg)) == 2
    assert sip.from_tag(msg) == "4f9a7c21e3"
    assert sip.from_address(msg).name == "Skype User"
    assert sip.from_address(msg).parameters["epid"] == "0a1b2c3d4e"
    assert sip.to_tag(msg) is None
    assert sip.to_address(msg).uri.user == "meeting"
    assert sip.call_id(msg) == "6b1f0e2a9c4d4e8fb3a7c5d2e1f09a8b"
    cseq = sip.cseq(msg)
    assert (cseq.sequence, cseq.method) == (1, "INVITE")
    assert sip.max_forwards(msg) == 69
    [contact] = sip.contact(msg)
    assert contact.uri.parameters["opaque"] == "user:epid:AbCdEf"
    assert "gruu" in contact.uri.parameters
    assert [r.uri.host for r in sip.route(msg)] == ["expe.example.com", "expc.example.com"]
    assert all("lr" in r.uri.parameters for r in sip.route(msg))
    [rr] = sip.record_route(msg)
    assert (rr.uri.host, rr.parameters["tag"]) == ("edge.example.net", "7A2B9C")
    ctype = sip.content_type(msg)
    assert ctype is not None and ctype.mime_type == "application/sdp"
    assert sip.content_length(msg) == len(msg.body) == 813
    assert b"m=applicationsharing 50040 TCP/RTP/SAVP 127\r\n" in msg.body
    assert sip.ms_diagnostics(msg) is None
    assert sip.ms_diagnostics_public(msg) is None


def test_response_vectors_parse() -> None:
    trying = parse_response(TRYING)
    assert (trying.code, trying.phrase) == (100, "Trying")
    assert sip.content_length(trying) == 0 and trying.body == b""
    assert sip.to_tag(trying) is None
    ok = parse_response(OK_SDP)
    assert (ok.code, ok.phrase, sip.to_tag(ok)) == (200, "OK", "cms-77c1e0")
    assert b"a=x-applicationsharing-role:viewer\r\n" in ok.body
    forbidden = parse_response(FORBIDDEN)
    assert forbidden.code == 403
    assert sip.cseq(forbidden).method == "INVITE"


def test_folded_headers_and_compact_forms() -> None:
    msg = parse_request(BYE_FOLDED)
    # "v:" with two values folded over two lines (RFC 3261 §7.3.1).
    assert [sip.via_branch(v) for v in sip.vias(msg)] == ["z9hG4bKbye0001", "z9hG4bKbye0000"]
    assert sip.max_forwards(msg) == 70  # value alone on a continuation line starting with HTAB
    assert sip.from_tag(msg) == "cms-77c1e0"  # f:
    assert sip.to_tag(msg) == "4f9a7c21e3"  # t:, display name and URI on two lines
    assert sip.to_address(msg).name == "Skype User"
    assert sip.call_id(msg) == "6b1f0e2a9c4d4e8fb3a7c5d2e1f09a8b"  # i:
    assert str(sip.cseq(msg)) == "2 BYE"  # folded CSeq
    assert sip.contact(msg)[0].uri.host == "cms.example.com"  # m:
    ctype = sip.content_type(msg)  # c:
    assert ctype is not None and ctype.mime_type == "text/plain"
    assert sip.content_length(msg) == 5 and msg.body == b"hello"  # l:


@pytest.mark.parametrize(
    ("long", "compact"),
    [
        (b"Via:", b"v:"),
        (b"From:", b"f:"),
        (b"To:", b"t:"),
        (b"Call-ID:", b"i:"),
        (b"Content-Length:", b"l:"),
        (b"Contact:", b"m:"),
        (b"Content-Type:", b"c:"),
    ],
)
def test_each_compact_form_means_its_header(long: bytes, compact: bytes) -> None:
    original = parse_request(INVITE)
    line = next(x for x in INVITE.split(b"\r\n") if x.startswith(long))
    msg = parse_request(replace_line(INVITE, long, compact + line[len(long) :]))
    assert sip.vias(msg) == sip.vias(original)
    assert sip.from_address(msg) == sip.from_address(original)
    assert sip.to_address(msg) == sip.to_address(original)
    assert sip.call_id(msg) == sip.call_id(original)
    assert sip.contact(msg) == sip.contact(original)
    assert sip.content_type(msg) == sip.content_type(original)
    assert sip.content_length(msg) == 813


def test_header_names_are_case_insensitive_and_version_too() -> None:
    data = replace_line(INVITE, b"CSeq:", b"cseq   :  1 INVITE")
    data = data.replace(b"INVITE sip:meeting@cms.example.com;transport=tcp SIP/2.0",
                        b"INVITE sip:meeting@cms.example.com;transport=tcp sip/2.0")  # fmt: skip
    msg = parse_request(data)
    assert str(sip.cseq(msg)) == "1 INVITE"
    assert sip.encode(msg).startswith(b"INVITE sip:meeting@cms.example.com;transport=tcp SIP/2.0")


def test_leading_crlf_is_ignored_and_counted_in_line_numbers() -> None:
    msg = parse_request(b"\r\n\r\n" + INVITE)
    assert sip.call_id(msg) == "6b1f0e2a9c4d4e8fb3a7c5d2e1f09a8b"
    bad = b"\r\n\r\n" + replace_line(INVITE, b"CSeq:", b"CSeq: 1 ACK")
    assert raises_sip(bad).line == line_of(INVITE, b"CSeq:") + 2


def test_encode_of_parsed_vectors_round_trips() -> None:
    for data in ALL_VECTORS:
        msg = sip.parse_message(data)
        again = sip.parse_message(sip.encode(msg))
        assert sip.summary(again) == sip.summary(msg)
        assert sip.vias(again) == sip.vias(msg)
        assert sip.contact(again) == sip.contact(msg)
        assert sip.record_route(again) == sip.record_route(msg)
        assert again.body == msg.body


def test_encode_keeps_received_header_text() -> None:
    # sipmessage's own str() would percent-encode the ':' of the GRUU and the '"<' of
    # +sip.instance; values as received must go out unchanged.
    out = sip.encode(parse_request(INVITE))
    assert b"Contact: <sip:skypeuser@example.net;opaque=user:epid:AbCdEf;gruu>;" in out
    assert b'+sip.instance="<urn:uuid:0a1b2c3d-4e5f-6789-abcd-ef0123456789>"' in out
    assert out.endswith(INVITE.split(b"\r\n\r\n", 1)[1])
    assert b"\r\nContent-Length: 813\r\n\r\n" in out


def test_format_uri_quotes_only_what_the_grammar_requires() -> None:
    uri = URI.parse("sip:skypeuser@example.net;opaque=user:epid:AbCdEf;gruu")
    assert sip.format_uri(uri) == "sip:skypeuser@example.net;opaque=user:epid:AbCdEf;gruu"
    assert sip.format_uri(URI("sip", "h", parameters=Parameters(x="a b;c"))) == "sip:h;x=a%20b%3Bc"
    addr = Address(URI.parse("sip:a@b.c"), name='Q "x"', parameters=Parameters(tag="1", p="a b"))
    assert sip.format_address(addr) == '"Q \\"x\\"" <sip:a@b.c>;tag=1;p="a b"'
    assert Address.parse(sip.format_address(addr)).parameters["tag"] == "1"


# ------------------------------------------------------------------------------------------
# ms-diagnostics (PROTOCOL.md §5.4)


def test_ms_diagnostics_public_round_trips_the_21002_string_exactly() -> None:
    msg = parse_response(FORBIDDEN)
    diag = sip.ms_diagnostics_public(msg)
    assert diag == sip.MsDiagnostics(
        21002, "Attendees cannot share in this conference", (("component", "ASMCU"),)
    )
    assert str(diag) == DIAG_21002
    assert str(sip.MsDiagnostics.parse(DIAG_21002)) == DIAG_21002
    assert diag is not None and diag.get("Component") == "ASMCU" and diag.get("source") is None
    assert sip.ms_diagnostics(msg) is None


@pytest.mark.parametrize(
    ("text", "code", "reason", "params"),
    [
        ('1020;reason="Identity of the referrer could not be verified"', 1020,
         "Identity of the referrer could not be verified", ()),
        ('1033;reason="Previous hop did not report";Domain="contoso.com";'
         'PeerServer="sip.contoso.com";source="fe.contoso.com"', 1033,
         "Previous hop did not report",
         (("Domain", "contoso.com"), ("PeerServer", "sip.contoso.com"),
          ("source", "fe.contoso.com"))),
        ("52001 ; source=edge.example.net ; reason=\"a;b,c\"", 52001, "a;b,c",
         (("source", "edge.example.net"),)),
        ('7;reason="say \\"hi\\" \\\\ bye"', 7, 'say "hi" \\ bye', ()),
        ("42", 42, None, ()),
        ('42;appName="InboundRouting";reason=""', 42, "", (("appName", "InboundRouting"),)),
    ],
)  # fmt: skip
def test_ms_diagnostics_parses_any_parameter_set(
    text: str, code: int, reason: str | None, params: tuple[tuple[str, str], ...]
) -> None:
    diag = sip.MsDiagnostics.parse(text)
    assert (diag.code, diag.reason, diag.params) == (code, reason, params)
    assert sip.MsDiagnostics.parse(str(diag)) == diag


@pytest.mark.parametrize(
    "text",
    ["", "abc", "21002;", "21002;reason", '21002;reason="open', "21002 junk", ";reason=\"x\"",
     '21002;reason="a";reason="b"', '21002;reason="a",22000', "21002;=x", "1" * 11],
)  # fmt: skip
def test_ms_diagnostics_garbage_raises_sip_error(text: str) -> None:
    with pytest.raises(SipError, match="ms-diagnostics"):
        sip.MsDiagnostics.parse(text)


def test_ms_diagnostics_accessor_raises_sip_error_on_garbage_header() -> None:
    msg = parse_response(
        replace_line(FORBIDDEN, b"ms-diagnostics-public:", b"ms-diagnostics-public: oops")
    )
    with pytest.raises(SipError):
        sip.ms_diagnostics_public(msg)


# ------------------------------------------------------------------------------------------
# Builders


def client_via(branch: str = "z9hG4bKclient1") -> Via:
    return Via("TCP", "10.1.1.50", 50322, Parameters(branch=branch, rport=None))


def build_invite() -> Request:
    return sip.build_request(
        "INVITE",
        "sip:meeting@cms.example.com;transport=tcp",
        via=client_via(),
        from_addr=sip.with_tag(Address.parse('"Skype User" <sip:skypeuser@example.net>'), "ft1"),
        to_addr="<sip:meeting@cms.example.com>",
        call_id="call-1@example.net",
        cseq=1,
        contact=Address.parse("<sip:skypeuser@example.net;opaque=user:epid:AbCdEf;gruu>"),
        route=["<sip:edge.example.net:5060;transport=tcp;lr>"],
        content_type="application/sdp",
        body=parse_request(INVITE).body,
        extra_headers=[("Supported", "ms-dialog-route-set-update")],
    )


def test_build_request_encode_parse_gives_equal_typed_values() -> None:
    built = build_invite()
    msg = parse_request(sip.encode(built))
    assert msg.method == "INVITE"
    assert msg.uri == URI.parse("sip:meeting@cms.example.com;transport=tcp")
    assert sip.vias(msg) == [client_via()]
    assert sip.from_address(msg) == sip.from_address(built)
    assert sip.from_tag(msg) == "ft1"
    assert sip.to_address(msg) == Address.parse("<sip:meeting@cms.example.com>")
    assert sip.call_id(msg) == "call-1@example.net"
    assert str(sip.cseq(msg)) == "1 INVITE"
    assert sip.max_forwards(msg) == 70
    assert sip.contact(msg) == sip.contact(built)
    assert sip.contact(msg)[0].uri.parameters["opaque"] == "user:epid:AbCdEf"
    assert [r.uri.host for r in sip.route(msg)] == ["edge.example.net"]
    assert sip.content_type(msg) == MediaType("application/sdp")
    assert sip.content_length(msg) == 813 and msg.body == built.body
    assert msg.headers.get("Supported") == "ms-dialog-route-set-update"


def test_build_request_without_body_sets_content_length_zero() -> None:
    ack = sip.build_request(
        "ACK", URI.parse("sip:cms.example.com"), via=[client_via("z9hG4bKack"), client_via()],
        from_addr="<sip:a@example.net>;tag=1", to_addr="<sip:b@example.net>;tag=2",
        call_id="c1", cseq=1, max_forwards=10,
    )  # fmt: skip
    assert ack.headers.get("Content-Length") == "0"
    assert b"\r\nContent-Length: 0\r\n\r\n" in sip.encode(ack)
    msg = parse_request(sip.encode(ack))
    assert [sip.via_branch(v) for v in sip.vias(msg)] == ["z9hG4bKack", "z9hG4bKclient1"]
    assert sip.max_forwards(msg) == 10 and sip.content_type(msg) is None


@pytest.mark.parametrize(
    "change",
    [
        {"method": "IN VITE"},
        {"uri": "http://example.com"},
        {"via": []},
        {"via": Via("TCP", "h")},
        {"call_id": ""},
        {"call_id": "a b"},
        {"cseq": -1},
        {"cseq": 2**32},
        {"from_addr": "not an address <"},
        {"body": b"x"},
        {"extra_headers": [("X-Evil", "a\r\nVia: injected")]},
        {"extra_headers": [("Bad Name", "a")]},
        {"content_type": "nonsense"},
    ],
)
def test_build_request_rejects_bad_arguments(change: dict[str, object]) -> None:
    args: dict[str, object] = {
        "method": "OPTIONS", "uri": "sip:a@b.c", "via": client_via(), "from_addr": "<sip:a@b.c>",
        "to_addr": "<sip:a@b.c>", "call_id": "c", "cseq": 1,
    }  # fmt: skip
    args.update(change)
    method, uri = args.pop("method"), args.pop("uri")
    with pytest.raises(SipError):
        sip.build_request(method, uri, **args)  # type: ignore[arg-type]


def test_build_response_copies_request_headers_and_adds_to_tag() -> None:
    request = parse_request(INVITE)
    response = sip.build_response(
        request, 200, to_tag="cms-1", contact="<sip:cms.example.com:5060;transport=tcp>",
        content_type=MediaType("application/sdp"), body=parse_response(OK_SDP).body,
    )  # fmt: skip
    assert (response.code, response.phrase) == (200, "OK")
    # RFC 3261 §8.2.6.2: header text copied unchanged, in the same order.
    for name in ("Via", "From", "Call-ID", "CSeq", "Record-Route"):
        assert response.headers.getlist(name) == request.headers.getlist(name)
    assert response.headers["To"] == request.headers["To"] + ";tag=cms-1"
    msg = parse_response(sip.encode(response))
    assert sip.vias(msg) == sip.vias(request)
    assert sip.from_address(msg) == sip.from_address(request)
    assert sip.to_tag(msg) == "cms-1"
    assert sip.to_address(msg).uri == sip.to_address(request).uri
    assert sip.call_id(msg) == sip.call_id(request)
    assert sip.cseq(msg) == sip.cseq(request)
    assert sip.record_route(msg) == sip.record_route(request)
    assert sip.content_length(msg) == len(msg.body) > 0
    assert sip.wireshark_info(msg) == "Status: 200 OK (INVITE) | "


def test_build_response_to_tag_rules_and_record_route_choice() -> None:
    request = parse_request(INVITE)
    trying = sip.build_response(request, 100, record_route=())
    assert sip.to_tag(trying) is None  # §8.2.6.2: a 100 may go without a tag
    assert trying.headers.get("Record-Route") is None
    assert trying.headers.get("Content-Length") == "0"
    explicit = sip.build_response(request, 180, to_tag="t", record_route=["<sip:x.example;lr>"])
    assert [a.uri.host for a in sip.record_route(explicit)] == ["x.example"]
    bye = parse_request(BYE_FOLDED)
    ok = sip.build_response(bye, 200, to_tag="4f9a7c21e3")  # same tag as in the request: fine
    assert sip.to_tag(ok) == "4f9a7c21e3"
    with pytest.raises(SipError, match="already has tag"):
        sip.build_response(bye, 200, to_tag="other")
    assert sip.build_response(bye, 481).phrase == "Call/Transaction Does Not Exist"
    assert sip.build_response(bye, 299, "Whatever").phrase == "Whatever"
    with pytest.raises(SipError):
        sip.build_response(bye, 299)
    with pytest.raises(SipError):
        sip.build_response(bye, 700, "Too high")
    with pytest.raises(SipError):
        sip.build_response(bye, 500, "line\r\nbreak")


def test_build_response_with_ms_diagnostics_public() -> None:
    diag = sip.MsDiagnostics.parse(DIAG_21002)
    response = sip.build_response(
        parse_request(INVITE), 403, to_tag="x",
        extra_headers=[("ms-diagnostics-public", str(diag))],
    )  # fmt: skip
    msg = parse_response(sip.encode(response))
    assert sip.ms_diagnostics_public(msg) == diag
    assert sip.summary(msg) == "403 Forbidden"


@pytest.mark.parametrize("code", sorted(sip.DEFAULT_REASONS))
def test_default_reason_phrases(code: int) -> None:
    response = sip.build_response(parse_request(INVITE), code, to_tag="t")
    assert sip.summary(response) == f"{code} {sip.DEFAULT_REASONS[code]}"


def test_encode_sets_content_length_after_the_body_changes() -> None:
    msg = parse_request(BYE_FOLDED)
    msg.body = b"hello, world"
    assert b"\r\nContent-Length: 12\r\n\r\nhello, world" in sip.encode(msg)
    assert sip.content_length(sip.parse_message(sip.encode(msg))) == 12


def test_encode_refuses_header_injection() -> None:
    msg = parse_request(BYE_FOLDED)
    msg.headers.add("Subject", "x\r\nVia: SIP/2.0/TCP evil")
    with pytest.raises(SipError):
        sip.encode(msg)


def test_summary_and_wireshark_info() -> None:
    assert sip.summary(parse_request(INVITE)) == "INVITE"
    assert sip.summary(parse_response(TRYING)) == "100 Trying"
    assert sip.summary(parse_response(OK_SDP)) == "200 OK"
    assert sip.summary(parse_request(BYE_FOLDED)) == "BYE"
    assert (
        sip.wireshark_info(parse_request(INVITE))
        == "Request: INVITE sip:meeting@cms.example.com;transport=tcp | "
    )
    assert sip.wireshark_info(parse_response(TRYING)) == "Status: 100 Trying | "
    assert sip.wireshark_info(parse_response(OK_SDP)) == "Status: 200 OK (INVITE) | "
    assert sip.wireshark_info(parse_response(FORBIDDEN)) == "Status: 403 Forbidden | "
    service = sip.build_request(
        "SERVICE", "sip:a@b.c", via=client_via(), from_addr="<sip:a@b.c>;tag=1",
        to_addr="<sip:a@b.c>", call_id="c", cseq=1,
    )  # fmt: skip
    assert sip.wireshark_info(service) == "Unknown request: SERVICE sip:a@b.c | "


# ------------------------------------------------------------------------------------------
# Proxy helpers (RFC 3261 §16)


def test_push_via_puts_the_proxy_on_top_and_pop_via_removes_it() -> None:
    request = parse_request(INVITE)
    before = sip.vias(request)
    mine = Via("TCP", "expe.example.com", 5060, Parameters(branch="z9hG4bKexpe1"))
    sip.push_via(request, mine)
    assert sip.vias(request) == [mine, *before]
    forwarded = parse_request(sip.encode(request))
    assert sip.top_via(forwarded) == mine
    response = sip.build_response(forwarded, 200, to_tag="t")
    assert sip.pop_via(response) == mine
    assert sip.vias(response) == before
    assert sip.pop_via(response) == before[0]
    assert sip.pop_via(response) == before[1]
    assert sip.vias(response) == [] and response.headers.get("Via") is None
    with pytest.raises(SipError):
        sip.pop_via(response)
    with pytest.raises(SipError):
        sip.push_via(request, Via("TCP", "nobranch"))


def test_pop_via_splits_a_comma_separated_line() -> None:
    response = sip.build_response(parse_request(BYE_FOLDED), 200)
    assert sip.via_branch(sip.pop_via(response)) == "z9hG4bKbye0001"
    assert [sip.via_branch(v) for v in sip.vias(response)] == ["z9hG4bKbye0000"]


def test_add_record_route_goes_on_top() -> None:
    request = parse_request(INVITE)
    sip.add_record_route(request, Address.parse("<sip:expe.example.com:5060;transport=tcp;lr>"))
    hosts = [a.uri.host for a in sip.record_route(parse_request(sip.encode(request)))]
    assert hosts == ["expe.example.com", "edge.example.net"]
    sip.add_record_route(request, "<sip:expc.example.com;lr>")
    assert sip.record_route(request)[0].uri.host == "expc.example.com"


def test_pop_route_if_self() -> None:
    request = parse_request(INVITE)
    assert sip.pop_route_if_self(request, lambda uri: uri.host == "expc.example.com") is None
    assert len(sip.route(request)) == 2
    popped = sip.pop_route_if_self(request, lambda uri: uri.host == "expe.example.com")
    assert popped is not None and popped.uri.host == "expe.example.com"
    assert [a.uri.host for a in sip.route(request)] == ["expc.example.com"]
    assert sip.pop_route_if_self(request, lambda uri: True) is not None
    assert sip.route(request) == [] and request.headers.get("Route") is None
    assert sip.pop_route_if_self(request, lambda uri: True) is None
    parse_request(sip.encode(request))


def test_decrement_max_forwards() -> None:
    request = parse_request(INVITE)
    assert sip.decrement_max_forwards(request) and sip.max_forwards(request) == 68
    request.headers.set("Max-Forwards", "1")
    assert sip.decrement_max_forwards(request) and sip.max_forwards(request) == 0
    # RFC 3261 §16.3 step 3: at 0 the proxy answers 483 instead of forwarding.
    assert not sip.decrement_max_forwards(request)
    assert sip.max_forwards(request) == 0
    assert sip.build_response(request, 483, to_tag="t").phrase == "Too Many Hops"
    request.headers.remove("Max-Forwards")
    assert sip.decrement_max_forwards(request) and sip.max_forwards(request) == 70


def test_stamp_received_fills_rport_and_received() -> None:
    request = sip.build_request(
        "INVITE", "sip:b@example.com", via=[client_via(), client_via("z9hG4bKolder")],
        from_addr="<sip:a@example.net>;tag=1", to_addr="<sip:b@example.com>",
        call_id="c", cseq=1,
    )  # fmt: skip
    sip.stamp_received(request, "198.51.100.20", 40123)
    top = sip.top_via(request)
    assert sip.via_received(top) == "198.51.100.20"
    assert sip.via_rport(top) == 40123
    assert sip.via_rport(sip.vias(request)[1]) is None  # only the top Via is touched
    via = Via("TCP", "10.0.0.1", 5060, Parameters(branch="z9hG4bKo"))
    same = sip.build_request(
        "OPTIONS", "sip:b@example.com", via=via,
        from_addr="<sip:a@example.net>;tag=1", to_addr="<sip:b@example.com>", call_id="c", cseq=1,
    )  # fmt: skip
    sip.stamp_received(same, "10.0.0.1", 5060)
    assert sip.via_received(sip.top_via(same)) is None  # §18.2.1: same host, no rport


# ------------------------------------------------------------------------------------------
# Bad input


MANDATORY = [b"Via:", b"From:", b"To:", b"Call-ID:", b"CSeq:"]


@pytest.mark.parametrize(
    ("message", "header"),
    [*(("request", h) for h in [*MANDATORY, b"Max-Forwards:"]),
     *(("response", h) for h in MANDATORY)],
)  # fmt: skip
def test_a_message_missing_a_mandatory_header(message: str, header: bytes) -> None:
    # RFC 3261 §8.1.1: Max-Forwards is mandatory in requests only.
    data = INVITE if message == "request" else FORBIDDEN
    while b"\r\n" + header in data:  # both Via lines
        data = replace_line(data, header, None)
    error = raises_sip(data)
    assert header.decode().rstrip(":") in str(error) and "missing" in str(error)
    if message == "request":
        assert error.line is None


def test_response_without_max_forwards_is_fine() -> None:
    assert b"Max-Forwards" not in FORBIDDEN
    parse_response(FORBIDDEN)


@pytest.mark.parametrize("delta", [1, 5, -1, -813])
def test_content_length_mismatch_names_both_numbers_and_the_line(delta: int) -> None:
    head, body = INVITE.split(b"\r\n\r\n", 1)
    data = head + b"\r\n\r\n" + (body + b"x" * delta if delta > 0 else body[:delta])
    error = raises_sip(data)
    assert "Content-Length" in str(error)
    assert "813" in str(error) and str(len(body) + delta) in str(error)
    assert error.line == line_of(INVITE, b"Content-Length:")


@pytest.mark.parametrize(
    "start",
    [
        b"INVITE sip:meeting@cms.example.com SIP/3.0",
        b"INVITE  sip:meeting@cms.example.com SIP/2.0",
        b"INVITE sip:meeting@cms.example.com",
        b"INVITE sip:meeting@cms.example.com SIP/2.0 extra",
        b"INV@TE sip:meeting@cms.example.com SIP/2.0",
        b"INVITE http://cms.example.com SIP/2.0",
        b" INVITE sip:meeting@cms.example.com SIP/2.0",
    ],
)
def test_bad_request_line(start: bytes) -> None:
    data = start + INVITE[INVITE.index(b"\r\n") :]
    error = raises_sip(data)
    assert error.line == 1


@pytest.mark.parametrize(
    "start",
    [b"SIP/2.0 20 OK", b"SIP/2.0 200", b"SIP/2.0 700 Odd", b"SIP/2.0 099 Low", b"SIP/2.1 200 OK",
     b"SIP/2.0 2OO OK", b"SIP/2.0 \xd9\xa200 OK"],
)  # fmt: skip
def test_bad_status_line(start: bytes) -> None:
    error = raises_sip(start + FORBIDDEN[FORBIDDEN.index(b"\r\n") :])
    assert error.line == 1


def test_empty_reason_phrase_is_allowed() -> None:
    msg = parse_response(b"SIP/2.0 100 " + TRYING[TRYING.index(b"\r\n") :])
    assert msg.phrase == "" and sip.summary(msg) == "100"


@pytest.mark.parametrize(
    ("line", "match"),
    [
        (b"CSeq: INVITE", "CSeq"),
        (b"CSeq: 1", "CSeq"),
        (b"CSeq: x INVITE", "CSeq"),
        (b"CSeq: 1 INVITE extra", "CSeq"),
        (b"CSeq: 4294967296 INVITE", "2\\*\\*32"),
        (b"CSeq: 1 ACK", "CSeq: method 'ACK' does not match request method 'INVITE'"),
        (b"CSeq: 1 invite", "does not match"),
    ],
)
def test_bad_cseq(line: bytes, match: str) -> None:
    with pytest.raises(SipError, match=match) as info:
        sip.parse_message(replace_line(INVITE, b"CSeq:", line))
    assert info.value.line == line_of(INVITE, b"CSeq:")


def test_response_cseq_method_is_free_but_must_parse() -> None:
    parse_response(replace_line(FORBIDDEN, b"CSeq:", b"CSeq: 7 BYE"))
    assert raises_sip(replace_line(FORBIDDEN, b"CSeq:", b"CSeq: BYE")).line == line_of(
        FORBIDDEN, b"CSeq:"
    )


@pytest.mark.parametrize(
    ("prefix", "line", "match"),
    [
        (b"From:", b"From: \xff\xfe<sip:a@b>", "UTF-8"),
        (b"Call-ID:", b"Call-ID: a b", "Call-ID"),
        (b"Call-ID:", b"Call-ID:", "Call-ID"),
        (b"Via:", b"Via:  ", "empty"),
        (b"Route:", b"Route:", "empty"),
        (b"Via:", b"Via: SIP/2.0/TCP 10.0.0.1;received=1.2.3.4", "branch"),
        (b"Via:", b"Via: SIP/2.0/TCP 10.0.0.1;branch", "branch"),
        (b"Via:", b"Via: garbage", "Via"),
        (b"Via:", b"Via: SIP/2.0/TCP 10.0.0.1:70000;branch=z9hG4bKx", "port"),
        (b"From:", b"From: <sip:a@b", "From"),
        (b"To:", b"To: nonsense <", "To"),
        (b"Contact:", b"Contact: <mailto:x@y>", "Contact"),
        (b"Route:", b"Route: <sip:x;lr>,", "Route"),
        (b"Record-Route:", b"Record-Route: <http://x>", "Record-Route"),
        (b"Content-Type:", b"Content-Type: sdp", "Content-Type"),
        (b"Content-Length:", b"Content-Length: +813", "Content-Length"),
        (b"Content-Length:", b"Content-Length: 8 13", "Content-Length"),
        (b"Max-Forwards:", b"Max-Forwards: seventy", "Max-Forwards"),
        (b"Max-Forwards:", b"Max-Forwards: 99999999999", "Max-Forwards"),
        (b"User-Agent:", b"User-Agent UCCAPI", "colon"),
        (b"User-Agent:", b"User Agent: UCCAPI", "header name"),
        (b"User-Agent:", b": UCCAPI", "header name"),
        (b"User-Agent:", b"User-Agent: a\x00b", "control"),
        (b"User-Agent:", b"User-Agent: a\nb", "bare CR or LF"),
        (b"Supported:", b"From: <sip:other@example.net>;tag=2", "appears twice"),
    ],
)
def test_bad_header_line_is_reported_on_its_line(prefix: bytes, line: bytes, match: str) -> None:
    with pytest.raises(SipError, match=match) as info:
        sip.parse_message(replace_line(INVITE, prefix, line))
    assert info.value.line == line_of(INVITE, prefix)


def test_duplicate_header_is_reported_on_the_second_occurrence() -> None:
    error = raises_sip(replace_line(INVITE, b"Supported:", b"l: 813"))
    assert error.line == line_of(INVITE, b"Content-Length:")
    assert f"first on line {line_of(INVITE, b'Supported:')}" in str(error)


def test_invalid_utf8_in_start_line_and_continuation_line() -> None:
    assert raises_sip(b"INVITE sip:\xc3\x28@x SIP/2.0" + INVITE[INVITE.index(b"\r\n") :]).line == 1
    data = replace_line(INVITE, b"Supported:", b"Supported: a\r\n \xe2\x82")
    error = raises_sip(data)
    assert error.line == line_of(INVITE, b"Supported:") + 1 and "UTF-8" in str(error)


def test_continuation_before_any_header() -> None:
    data = INVITE.replace(b"SIP/2.0\r\n", b"SIP/2.0\r\n  folded\r\n", 1)
    error = raises_sip(data)
    assert error.line == 2 and "continuation" in str(error)


def test_body_without_content_type() -> None:
    error = raises_sip(replace_line(INVITE, b"Content-Type:", None))
    assert "Content-Type" in str(error)


def test_body_bytes_need_not_be_utf8() -> None:
    head, _ = BYE_FOLDED.split(b"\r\n\r\n", 1)
    assert parse_request(head + b"\r\n\r\n\xff\xfe\x00\x01\x02").body == b"\xff\xfe\x00\x01\x02"


def test_missing_content_length_takes_the_rest_as_body() -> None:
    msg = parse_request(replace_line(INVITE, b"Content-Length:", None))
    assert len(msg.body) == 813 and sip.content_length(msg) is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\r\n\r\n",
        b"\r\n",
        b"INVITE sip:a@b SIP/2.0\r\nVia: x",
        INVITE.replace(b"\r\n\r\n", b"\n\n"),
    ],
)
def test_truncated_or_empty_input(data: bytes) -> None:
    raises_sip(data)


def test_non_bytes_input_is_a_sip_error() -> None:
    with pytest.raises(SipError):
        sip.parse_message("INVITE sip:a@b SIP/2.0\r\n\r\n")  # type: ignore[arg-type]
    assert sip.call_id(sip.parse_message(bytearray(INVITE))) == sip.call_id(parse_request(INVITE))


def test_error_line_numbers_are_in_the_message_text() -> None:
    error = raises_sip(replace_line(INVITE, b"CSeq:", b"CSeq: 1 ACK"))
    assert str(error).startswith(f"line {line_of(INVITE, b'CSeq:')}: CSeq:")


def test_accessors_translate_errors_on_hand_edited_messages() -> None:
    msg = parse_request(INVITE)
    msg.headers.set("Via", "junk")
    msg.headers.set("CSeq", "junk")
    msg.headers.set("Content-Type", "junk")
    msg.headers.set("Max-Forwards", "x")
    msg.headers.set("Content-Length", "x")
    msg.headers.remove("From")
    for accessor in (sip.vias, sip.cseq, sip.content_type, sip.max_forwards, sip.content_length,
                     sip.from_tag):  # fmt: skip
        with pytest.raises(SipError):
            accessor(msg)


# ------------------------------------------------------------------------------------------
# Property tests: whatever the bytes, only SipError comes out


def check_parse(data: bytes) -> None:
    """Parse; on success every accessor works and the message survives encode/parse."""
    try:
        msg = sip.parse_message(data)
    except SipError:
        return
    for accessor in (sip.vias, sip.from_tag, sip.to_tag, sip.call_id, sip.cseq, sip.contact,
                     sip.record_route, sip.route, sip.content_type, sip.content_length,
                     sip.max_forwards, sip.summary):  # fmt: skip
        accessor(msg)
    for diag in (sip.ms_diagnostics, sip.ms_diagnostics_public):
        try:
            diag(msg)
        except SipError:
            pass
    again = sip.parse_message(sip.encode(msg))
    assert sip.summary(again) == sip.summary(msg)
    assert sip.vias(again) == sip.vias(msg)
    assert sip.cseq(again) == sip.cseq(msg)
    assert again.body == msg.body
    sip.wireshark_info(again)


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_sip_error(data: bytes) -> None:
    check_parse(data)


@FAST
@given(st.sampled_from(ALL_VECTORS), st.data())
def test_byte_mutations_of_vectors_raise_only_sip_error(vector: bytes, data: st.DataObject) -> None:
    buf = bytearray(vector)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(buf)))
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if op == "flip" and pos < len(buf):
            buf[pos] = data.draw(st.integers(0, 255))
        elif op == "insert":
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del buf[pos : pos + data.draw(st.integers(1, 16))]
        else:
            del buf[pos:]
    check_parse(bytes(buf))


SIP_TEXT = st.text(
    alphabet=st.sampled_from(
        list("aZ09 \t:;,=<>\"@./-_%+*!~'`?[]\\\r\n") + ["é", "\x00", "\u2028"]
    ),
    max_size=40,
)


@FAST
@given(st.sampled_from(ALL_VECTORS), st.data())
def test_line_mutations_of_vectors_raise_only_sip_error(vector: bytes, data: st.DataObject) -> None:
    head, body = vector.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(lines) - 1))
        op = data.draw(st.sampled_from(["replace", "insert", "delete", "edit-value", "swap"]))
        if op == "replace":
            lines[i] = data.draw(SIP_TEXT)
        elif op == "insert":
            lines.insert(i, data.draw(SIP_TEXT))
        elif op == "delete" and len(lines) > 1:
            del lines[i]
        elif op == "edit-value" and ":" in lines[i]:
            lines[i] = lines[i].split(":", 1)[0] + ":" + data.draw(SIP_TEXT)
        elif op == "swap":
            j = data.draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
    check_parse("\r\n".join(lines).encode() + b"\r\n\r\n" + body)


@FAST
@given(st.text(max_size=60))
def test_ms_diagnostics_parse_raises_only_sip_error(text: str) -> None:
    try:
        diag = sip.MsDiagnostics.parse(text)
    except SipError:
        return
    assert sip.MsDiagnostics.parse(str(diag)) == diag


# ------------------------------------------------------------------------------------------
# tshark as the judge of wireshark_info()


@pytest.mark.tshark
def test_wireshark_info_matches_tshark(tmp_path: Path) -> None:
    invite = parse_request(INVITE)
    messages: list[sip.SipMessage] = [
        invite,
        parse_response(TRYING),
        parse_response(OK_SDP),
        parse_response(FORBIDDEN),
        sip.build_response(invite, 180, to_tag="t"),
        sip.build_response(parse_request(BYE_FOLDED), 200),
        sip.build_request(
            "SERVICE", "sip:a@b.c", via=client_via(), from_addr="<sip:a@b.c>;tag=1",
            to_addr="<sip:a@b.c>", call_id="c", cseq=1,
        ),
    ]  # fmt: skip
    tshark = require_tool("tshark")
    pcap = tmp_path / "sip.pcap"
    # One conversation per message, so each is its own TCP stream on port 5060.
    write_pcap(
        pcap,
        [
            TcpConversation(("10.0.0.1", 40000 + i), ("10.0.0.2", 5060)).send(True, sip.encode(m))
            for i, m in enumerate(messages)
        ],
    )
    out = subprocess.run(
        [tshark, "-r", str(pcap), "-Y", "tcp.len > 0", "-T", "fields", "-e", "_ws.col.Info"],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    assert out.stdout.decode().split("\n")[:-1] == [sip.wireshark_info(m) for m in messages]


def test_content_length_414_with_lws_as_sipp_sends_it() -> None:
    """The issue's case: `Content-Length:   414` (sipp pads with spaces) on a CMS 200 OK whose
    SDP carries the TURN relay candidate; the SIP splitter, the parser and the SDP model agree."""
    from labsim.wire.framing import SipSplitter
    from labsim.wire.sdp import SessionDescription

    data = (VECTORS / "200-ok-cl414.sip").read_bytes()
    assert b"\r\nContent-Length:   414\r\n" in data
    assert SipSplitter().feed(data[:100]) == []
    msg = sip.parse_message(data)
    assert isinstance(msg, Response) and msg.code == 200
    assert sip.content_length(msg) == len(msg.body) == 414
    sdp = SessionDescription.parse(msg.body)
    assert bytes(sdp) == msg.body
    (candidate,) = sdp.media[0].candidates
    assert (candidate.type, candidate.tcptype, candidate.address, candidate.port) == (
        "relay",
        "passive",
        "10.48.54.229",
        24000,
    )
