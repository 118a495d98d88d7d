"""SDP codec: the PROTOCOL.md §5.3 bodies byte for byte, typed views, builders, and errors.

The offer, answer and reINVITE are data files in ``vectors/sdp/`` with CRLF line ends;
``rfc6544-lf.sdp`` adds RFC 6544 and Teams candidate spellings, unknown lines and attributes, LF
line ends and no final terminator.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from typing import Any

import pytest
from aioice.candidate import Candidate as AioiceCandidate
from hypothesis import example, given, settings
from hypothesis import strategies as st

from labsim.wire import SdpError
from labsim.wire.sdp import (
    ApplicationSharing,
    Candidate,
    Connection,
    Crypto,
    CryptoKey,
    Line,
    Media,
    MediaDescription,
    Mki,
    Origin,
    RemoteCandidate,
    RemoteCandidates,
    Rtcp,
    RtpMap,
    SessionDescription,
)

from .conftest import VECTORS

SDP = VECTORS / "sdp"
CRLF_VECTORS = ["offer.sdp", "answer.sdp", "reinvite.sdp"]
ALL_VECTORS = [*CRLF_VECTORS, "rfc6544-lf.sdp"]


def load(name: str) -> bytes:
    return (SDP / name).read_bytes()


def parse(name: str) -> SessionDescription:
    return SessionDescription.parse(load(name))


def only_media(name: str) -> MediaDescription:
    [section] = parse(name).media
    return section


# ---------------------------------------------------------------------------------------------
# Byte-exact round trips
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CRLF_VECTORS)
def test_section_5_3_vectors_are_stored_with_crlf(name: str) -> None:
    data = load(name)
    assert data.endswith(b"\r\n")
    assert data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r")


@pytest.mark.parametrize("name", ALL_VECTORS)
def test_vector_round_trips_byte_exact(name: str) -> None:
    data = load(name)
    sd = SessionDescription.parse(data)
    assert bytes(sd) == data
    assert sd.encode() == data
    assert str(sd) == data.decode()


@pytest.mark.parametrize("name", ALL_VECTORS)
def test_str_input_round_trips(name: str) -> None:
    text = load(name).decode()
    assert str(SessionDescription.parse(text)) == text
    assert bytes(SessionDescription.parse(text)) == text.encode()


@pytest.mark.parametrize("name", CRLF_VECTORS)
def test_lf_only_variant_round_trips(name: str) -> None:
    data = load(name).replace(b"\r\n", b"\n")
    sd = SessionDescription.parse(data)
    assert bytes(sd) == data
    assert sd.eol == "\n"
    assert {line.eol for line in sd.lines} == {"\n"}


@pytest.mark.parametrize("name", CRLF_VECTORS)
def test_mixed_endings_and_missing_final_terminator_round_trip(name: str) -> None:
    lines = load(name).split(b"\r\n")[:-1]
    data = b"".join(line + (b"\n" if i % 3 else b"\r\n") for i, line in enumerate(lines))
    assert bytes(SessionDescription.parse(data)) == data
    unterminated = data.rstrip(b"\r\n")
    sd = SessionDescription.parse(unterminated)
    assert bytes(sd) == unterminated
    assert sd.media[-1].lines[-1].eol == ""


@pytest.mark.parametrize("tail", [b"\r\n", b"\r\n\r\n", b"\n", b"\n\r\n"])
def test_trailing_empty_lines_are_kept_not_parsed(tail: bytes) -> None:
    data = load("offer.sdp") + tail
    sd = SessionDescription.parse(data)
    assert sd.trailer == tail.decode()
    assert bytes(sd) == data
    assert len(sd.media) == 1
    assert sd.media[0].lines[-1] == Line("a", "x-applicationsharing-contentflow:sendonly", "\r\n")


def test_session_without_media_round_trips() -> None:
    data = b"v=0\no=- 1 1 IN IP6 ::1\ns=x\nt=0 0"
    sd = SessionDescription.parse(data)
    assert bytes(sd) == data
    assert sd.media == []
    assert sd.origin.addrtype == "IP6"


def test_unknown_lines_and_attributes_are_kept_in_order() -> None:
    sd = parse("rfc6544-lf.sdp")
    assert sd.values("i") == ["ICE-TCP and Teams spellings, LF line ends, no final newline"]
    assert sd.session_name == " "
    assert sd.attributes("group") == ["BUNDLE 0 1"]
    assert sd.attribute("ice-lite") == ""
    audio, video = sd.media
    assert audio.attribute("x-unknown-attribute") == "anything goes here  (two spaces)"
    assert audio.attribute("rtcp-mux") == ""
    assert audio.values("y") == ["an unknown line type"]
    assert audio.values("b") == ["AS:64"]
    assert audio.attribute("absent") is None
    assert audio.attributes("absent") == []
    assert [line.type for line in video.lines] == ["m", "a"]
    assert video.media == Media("video", 0, "RTP/AVP", ("96",))


# ---------------------------------------------------------------------------------------------
# Typed views of the §5.3 bodies
# ---------------------------------------------------------------------------------------------


def test_offer_session_lines() -> None:
    sd = parse("offer.sdp")
    assert sd.origin == Origin("-", 0, 1, "198.51.100.20")
    assert sd.session_name == "session"
    assert sd.connection == Connection("198.51.100.20")
    assert sd.values("b") == ["CT:99980"]
    assert sd.values("t") == ["0 0"]
    assert sd.attributes("candidate") == []


def test_offer_media_section() -> None:
    md = only_media("offer.sdp")
    assert md.media == Media("applicationsharing", 50040, "TCP/RTP/SAVP", ("127",))
    assert str(md.media) == "applicationsharing 50040 TCP/RTP/SAVP 127"
    assert md.connection == Connection("198.51.100.20", "IN", "IP4")
    assert (md.ice_ufrag, md.ice_pwd) == ("Xa3f", "Tq9sLmN2vB7xYc4ZkP1rW8dE")
    assert md.setup == "passive"
    assert md.connection_mode == "new"
    assert md.rtcp == Rtcp(50040)
    assert md.mid == "3"
    assert md.rtpmaps == [RtpMap(127, "x-data", 90000)]
    assert md.remote_candidates is None
    assert md.applicationsharing == ApplicationSharing("1", "sharer", "rdp", "sendonly")


def test_offer_candidates() -> None:
    candidates = only_media("offer.sdp").candidates
    assert [(c.foundation, c.component) for c in candidates] == [
        ("1", 1), ("1", 2), ("2", 1), ("2", 2), ("3", 1), ("3", 2), ("4", 1), ("4", 2),
    ]  # fmt: skip
    assert [c.transport for c in candidates] == ["TCP-PASS"] * 2 + ["TCP-ACT"] * 2 + [
        "TCP-PASS"
    ] * 2 + ["TCP-ACT"] * 2
    assert [c.tcptype for c in candidates] == ["passive"] * 2 + ["active"] * 2 + ["passive"] * 2 + [
        "active"
    ] * 2
    assert {c.protocol for c in candidates} == {"tcp"}
    assert [c.type for c in candidates] == ["host"] * 4 + ["relay"] * 4
    relay = candidates[4]
    assert relay == Candidate(
        "3", 1, "TCP-PASS", 6556159, "198.51.100.20", 50040, "relay", "10.1.1.50", 50040
    )
    assert relay.tcptype == "passive"
    assert candidates[0].related_address is None and candidates[0].related_port is None
    assert candidates[3].priority == 2121006590


def test_offer_crypto() -> None:
    [crypto] = only_media("offer.sdp").crypto
    assert crypto.tag == 1
    assert crypto.suite == "AES_CM_128_HMAC_SHA1_80"
    assert crypto.key_salt == base64.b64decode("d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj")
    assert crypto.key_salt is not None and len(crypto.key_salt) == 30
    assert crypto.lifetime == 2**31
    assert crypto.mki == Mki(1, 1)
    assert crypto.session_params == ()
    assert str(crypto) == (
        "1 AES_CM_128_HMAC_SHA1_80 inline:d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj|2^31|1:1"
    )


def test_answer_typed_values() -> None:
    sd = parse("answer.sdp")
    assert sd.origin == Origin("-", 7842, 2, "10.2.2.20")
    assert sd.session_name == "-"
    assert sd.connection == Connection("203.0.113.50")
    md = only_media("answer.sdp")
    assert md.media == Media("applicationsharing", 24012, "TCP/RTP/SAVP", ("127",))
    assert md.setup == "active"
    assert md.connection_mode == "new"
    assert md.rtcp is None and md.mid is None
    assert md.applicationsharing == ApplicationSharing("1", "viewer", "rdp", "recvonly")
    host_passive, host_active, relay = md.candidates
    assert (host_passive.tcptype, host_active.tcptype, relay.tcptype) == (
        "passive",
        "active",
        "passive",
    )
    assert (relay.address, relay.port) == ("203.0.113.50", 24012)
    assert (relay.related_address, relay.related_port) == ("10.2.2.20", 33711)
    assert md.crypto[0].mki == Mki(1, 1)


def test_reinvite_typed_values() -> None:
    offer, reinvite = parse("offer.sdp"), parse("reinvite.sdp")
    assert reinvite.origin == dataclasses.replace(offer.origin, session_version=2)
    assert [line for line in reinvite.lines if line.type != "o"] == [
        line for line in offer.lines if line.type != "o"
    ]
    md = only_media("reinvite.sdp")
    assert md.media == offer.media[0].media
    assert md.candidates == [offer.media[0].candidates[4]]
    assert md.remote_candidates == RemoteCandidates((RemoteCandidate(1, "203.0.113.50", 24012),))
    assert md.remote_candidates.candidates == ((1, "203.0.113.50", 24012),)
    assert md.connection_mode == "existing"
    assert md.setup is None
    assert md.crypto == offer.media[0].crypto
    assert md.applicationsharing == ApplicationSharing("1", "sharer", "rdp", None)


# ---------------------------------------------------------------------------------------------
# Candidates: MS-ICE2, RFC 6544 and Teams spellings
# ---------------------------------------------------------------------------------------------


def test_rfc6544_active_candidate_reprints_identically() -> None:
    line = "a=candidate:1 1 TCP 2128609279 10.0.1.1 9 typ host tcptype active"
    candidate = Candidate.parse(line.removeprefix("a=candidate:"))
    assert candidate == Candidate(
        "1", 1, "TCP", 2128609279, "10.0.1.1", 9, "host", tcptype="active"
    )
    assert candidate.protocol == "tcp"
    assert f"a=candidate:{candidate}" == line
    md = MediaDescription.build(Media("audio", 9, "TCP/RTP/AVP", ("0",)))
    md.add_attribute("candidate", candidate)
    assert md.lines[-1] == Line("a", line.removeprefix("a="))


def test_teams_lower_case_tcp_pass_candidate_reprints_identically() -> None:
    value = "3 1 tcp-pass 18087935 48.208.184.155 3478 typ relay raddr 10.0.2.122 rport 3478"
    candidate = Candidate.parse(value)
    assert candidate.transport == "tcp-pass"
    assert candidate.tcptype == "passive"
    assert candidate.protocol == "tcp"
    assert (candidate.related_address, candidate.related_port) == ("10.0.2.122", 3478)
    assert str(candidate) == value


@pytest.mark.parametrize(
    "value",
    [
        "1 1 UDP 2130706431 10.1.1.50 50000 typ host",
        "1 1 udp 2130706431 10.1.1.50 50000 typ host generation 0",
        "2 1 TCP-ACT 2121006591 10.1.1.50 50040 typ host",
        "2 2 tcp-act 2121006590 10.1.1.50 50040 typ host",
        "5 1 TCP-SO 2121006591 10.1.1.50 50040 typ host",
        "1 1 TCP 2124414975 10.0.1.1 8998 typ host tcptype passive generation 0",
        "7 1 TCP 1684797695 203.0.113.7 4000 typ srflx raddr 10.0.1.1 rport 4000 tcptype so",
        "4 1 udp 1686052607 203.0.113.7 54400 typ srflx raddr 10.0.1.1 rport 54400 network-id 1",
        "a+/9 256 UDP 1 2001:db8::1 0 typ prflx",
        "842163049 1 udp 1677729535 198.51.100.20 3478 typ relay raddr 0.0.0.0 rport 0",
    ],
)
def test_canonical_candidates_reprint_identically(value: str) -> None:
    assert str(Candidate.parse(value)) == value


def test_ms_ice2_and_rfc6544_spellings_agree() -> None:
    ms = Candidate.parse("2 1 TCP-ACT 2121006591 10.1.1.50 9 typ host")
    rfc = Candidate.parse("2 1 TCP 2121006591 10.1.1.50 9 typ host tcptype active")
    assert dataclasses.replace(ms, transport="TCP") == rfc
    assert Candidate.parse("1 1 TCP 1 10.0.0.1 9 typ host").tcptype is None
    assert Candidate.parse("1 1 UDP 1 10.0.0.1 9 typ host").tcptype is None


def test_candidate_constructor_fills_tcptype_from_the_ms_token() -> None:
    built = Candidate("1", 1, "TCP-PASS", 1, "10.0.0.1", 5000, "host")
    assert built.tcptype == "passive"
    assert Candidate.parse(str(built)) == built
    with pytest.raises(SdpError, match="contradicts"):
        Candidate("1", 1, "TCP-PASS", 1, "10.0.0.1", 5000, "host", tcptype="active")


@pytest.mark.parametrize(
    "value",
    [
        "1 1 UDP 2130706431 10.1.1.50 50000 typ host",
        "1 1 TCP 2124414975 10.0.1.1 9 typ host tcptype active",
        "1 2 tcp 2124414975 10.0.1.1 8998 typ srflx raddr 1.2.3.4 rport 5 tcptype passive",
        "3 1 udp 1686052607 203.0.113.7 54400 typ relay raddr 10.0.1.1 rport 54400 generation 2",
    ],
)
def test_candidates_agree_with_aioice(value: str) -> None:
    """aioice is an independent parser of the RFC 5245/6544 forms (not of MS-ICE2 tokens)."""
    ours, theirs = Candidate.parse(value), AioiceCandidate.from_sdp(value)
    assert (ours.foundation, ours.component, ours.transport, ours.priority) == (
        theirs.foundation,
        theirs.component,
        theirs.transport,
        theirs.priority,
    )
    assert (ours.address, ours.port, ours.type, ours.tcptype) == (
        theirs.host,
        theirs.port,
        theirs.type,
        theirs.tcptype,
    )
    assert (ours.related_address, ours.related_port) == (
        theirs.related_address,
        theirs.related_port,
    )
    assert str(ours) == theirs.to_sdp()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1 1 UDP x 10.0.0.1 9 typ host", "candidate: priority 'x' is not an integer"),
        ("1 1 UDP 0 10.0.0.1 9 typ host", "priority 0 is out of range"),
        ("1 1 UDP 2147483648 10.0.0.1 9 typ host", "priority 2147483648 is out of range"),
        ("1 0 UDP 1 10.0.0.1 9 typ host", "component 0 is out of range"),
        ("1 1 UDP 1 10.0.0.1 65536 typ host", "port 65536 is out of range"),
        ("1 1 SCTP 1 10.0.0.1 9 typ host", "transport 'SCTP'"),
        ("1 1 UDP 1 10.0.0.1 9 type host", "expected 'typ'"),
        ("1 1 UDP 1 10.0.0.1 9 typ relayed", "type 'relayed'"),
        ("1 1 UDP 1 10.0.0.1 9 typ host tcptype active", "tcptype with transport 'UDP'"),
        ("1 1 TCP-ACT 1 10.0.0.1 9 typ host tcptype active", "tcptype with transport"),
        ("1 1 TCP 1 10.0.0.1 9 typ host tcptype both", "tcptype 'both'"),
        ("1 1 TCP 1 10.0.0.1 9 typ host tcptype so tcptype so", "duplicate tcptype"),
        ("1 1 UDP 1 10.0.0.1 9 typ host generation", "extension 'generation' has no value"),
        ("1 1 UDP 1 10.0.0.1 9 typ relay raddr", "raddr has no value"),
        ("1 1 UDP 1 10.0.0.1 9 typ relay rport 1 raddr 2.2.2.2", "raddr out of place"),
        ("1 1 UDP 1 10.0.0.1 9 typ relay raddr 2.2.2.2 rport x", "rport 'x' is not an integer"),
        ("1 1 UDP 1 10.0.0.1 9", "expected '<foundation>"),
        ("1 1 UDP 1  10.0.0.1 9 typ host", "empty field"),
        ("1-2 1 UDP 1 10.0.0.1 9 typ host", "foundation '1-2'"),
        ("1 1 UDP 1 10.0.0.1 9 typ host\x00", "NUL"),
        # Legacy MS-ICE (OCS 2007) writes the priority as a fraction: not this format.
        ("Xa3f 1 Tq9sLmN2vB7xYc4ZkP1rW8dE UDP 0.830 10.1.1.50 50040", "expected '<foundation>"),
        ("1 1 UDP 1 10.0.0.1 9" + "9" * 5000 + " typ host", "too large"),
    ],
)
def test_bad_candidates_raise_sdp_error(value: str, message: str) -> None:
    with pytest.raises(SdpError) as info:
        Candidate.parse(value)
    assert message in info.value.reason
    assert info.value.line is None


# ---------------------------------------------------------------------------------------------
# The other typed views
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        (Origin, "- 0 1 IN IP4 198.51.100.20"),
        (Origin, "alice 2890844526 2890844527 IN IP6 2001:db8::1"),
        (Connection, "IN IP4 203.0.113.50"),
        (Connection, "IN IP4 224.2.1.1/127/3"),
        (Media, "applicationsharing 50040 TCP/RTP/SAVP 127"),
        (Media, "audio 49170/2 RTP/AVP 0 8 101"),
        (Media, "application 9 UDP/DTLS/SCTP webrtc-datachannel"),
        (RtpMap, "127 x-data/90000"),
        (RtpMap, "101 telephone-event/8000/1"),
        (Rtcp, "50040"),
        (Rtcp, "53020 IN IP4 126.16.64.4"),
        (RemoteCandidates, "1 203.0.113.50 24012"),
        (RemoteCandidates, "1 203.0.113.50 24012 2 203.0.113.50 24013"),
        (
            Crypto,
            "1 AES_CM_128_HMAC_SHA1_80 inline:d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj|2^31|1:1",
        ),
        (Crypto, "2 AES_CM_128_HMAC_SHA1_32 inline:d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj"),
        (Crypto, "3 AES_CM_128_HMAC_SHA1_80 inline:d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj|1:4"),
        (
            Crypto,
            "1 AES_CM_128_HMAC_SHA1_80 inline:d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj|1048576"
            ";inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|2:4 KDR=1 UNENCRYPTED_SRTCP",
        ),
        (Crypto, "9 FUTURE_SUITE other:opaque-key-info"),
    ],
)
def test_typed_views_reprint_canonical_values(kind: Any, value: str) -> None:
    parsed = kind.parse(value)
    assert str(parsed) == value
    assert kind.parse(str(parsed)) == parsed


def test_crypto_details() -> None:
    key = bytes(range(30))
    built = Crypto.inline(1, "AES_CM_128_HMAC_SHA1_80", key, mki=(1, 1))
    assert (
        str(built) == f"1 AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(key).decode()}|2^31|1:1"
    )
    assert Crypto.parse(str(built)) == built
    assert (built.key_salt, built.lifetime, built.mki) == (key, 2**31, (1, 1))
    no_lifetime = Crypto.inline(2, "AES_CM_128_HMAC_SHA1_32", key, lifetime=None, mki=(7, 2))
    assert (no_lifetime.lifetime, no_lifetime.mki) == (None, Mki(7, 2))
    assert Crypto.inline(3, "AES_CM_128_HMAC_SHA1_80", key, lifetime="1024").lifetime == 1024
    multi = Crypto.parse(
        "1 AES_CM_128_HMAC_SHA1_80 inline:d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj|1048576"
        ";inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|2:4 KDR=1"
    )
    assert [k.lifetime for k in multi.keys] == [1048576, 2**20]
    assert multi.keys[1].mki == Mki(2, 4)
    assert multi.session_params == ("KDR=1",)
    opaque = CryptoKey.parse("other:opaque")
    assert (opaque.is_inline, opaque.key_salt, opaque.lifetime, opaque.mki) == (
        False,
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        (Origin, "- 0 1 IN IP4", "expected 6 fields"),
        (Origin, "- x 1 IN IP4 1.2.3.4", "origin: session id 'x' is not an integer"),
        (Origin, "- 0 1 ATM IP4 1.2.3.4", "network type 'ATM'"),
        (Connection, "IN IP5 1.2.3.4", "address type 'IP5'"),
        (Connection, "IN IP4", "expected 3 fields"),
        (Media, "applicationsharing 50040 TCP/RTP/SAVP", "expected '<media>"),
        (Media, "applicationsharing 70000 TCP/RTP/SAVP 127", "port 70000 is out of range"),
        (Media, "audio 5/0 RTP/AVP 0", "port count 0 is out of range"),
        (Media, "audio 5 RTP//AVP 0", "protocol 'RTP//AVP'"),
        (RtpMap, "128 x-data/90000", "payload type 128"),
        (RtpMap, "127 x-data", "is not '<encoding>/<rate>"),
        (RtpMap, "127 x-data/0", "clock rate 0"),
        (Rtcp, "50040 IN IP4", "expected '<port>"),
        (Rtcp, "50040 IN IP9 1.2.3.4", "rtcp: connection: address type"),
        (RemoteCandidates, "1 203.0.113.50", "triples"),
        (RemoteCandidates, "0 203.0.113.50 24012", "component 0"),
        (Crypto, "1 AES_CM_128_HMAC_SHA1_80", "expected '<tag>"),
        (Crypto, "1 AES_CM_128_HMAC_SHA1_80 inline:***", "not base64"),
        (Crypto, "1 AES_CM_128_HMAC_SHA1_80 inline:QUJD", "needs a 30-byte key+salt, got 3"),
        (Crypto, "1 AES_CM_128_HMAC_SHA1_80 nokey", "is not '<method>:<info>'"),
        (Crypto, "1 AES-CM inline:QUJD", "suite 'AES-CM'"),
        (Crypto, "1234567890 X inline:QUJD", "tag 1234567890 is out of range"),
        (Crypto, "1 X inline:QUJD|2^65", "lifetime exponent 65"),
        (Crypto, "1 X inline:QUJD|2^" + "9" * 100000, "too large"),
        (Crypto, "1 X inline:QUJD|1:200", "MKI length 200"),
        (Crypto, "1 X inline:QUJD|256:1", "does not fit in 1 bytes"),
        (Crypto, "1 X inline:QUJD|1|1", "is not '<value>:<length>'"),
        (Crypto, "1 X inline:QUJD|1|1:1|x", "too many '|'"),
        (Crypto, "1 X inline:QUJD|1:1|1", "unexpected '1' after the MKI"),
    ],
)
def test_bad_typed_values_raise_sdp_error(kind: Any, value: str, message: str) -> None:
    with pytest.raises(SdpError) as info:
        kind.parse(value)
    assert message in info.value.reason


# ---------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------

ANSWER_KEY = base64.b64decode("WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz")


def build_cms_answer() -> SessionDescription:
    """CMS's answer of PROTOCOL.md §5.3, written with the builders."""
    relay = Connection("203.0.113.50")
    media = MediaDescription.build(
        Media("applicationsharing", 24012, "TCP/RTP/SAVP", ("127",)),
        connection=relay,
        attributes=[
            ("ice-ufrag", "cM5k"),
            ("ice-pwd", "Hh3uY7pQ1wE5rT9iO2aS6dF0"),
            ("candidate", Candidate("1", 1, "TCP-PASS", 2120613887, "10.2.2.20", 33710, "host")),
            ("candidate", Candidate("2", 1, "TCP-ACT", 2121006591, "10.2.2.20", 33710, "host")),
            (
                "candidate",
                Candidate(
                    "3", 1, "TCP-PASS", 6556159, "203.0.113.50", 24012, "relay", "10.2.2.20", 33711
                ),
            ),
            ("crypto", Crypto.inline(1, "AES_CM_128_HMAC_SHA1_80", ANSWER_KEY, mki=(1, 1))),
            ("setup", "active"),
            ("connection", "new"),
            ("rtpmap", RtpMap(127, "x-data", 90000)),
            ("x-applicationsharing-session-id", 1),
            ("x-applicationsharing-role", "viewer"),
            ("x-applicationsharing-media-type", "rdp"),
            ("x-applicationsharing-contentflow", "recvonly"),
        ],
    )
    return SessionDescription.build(
        Origin("-", 7842, 2, "10.2.2.20"),
        connection=relay,
        bandwidth="CT:99980",
        media=[media],
    )


def test_built_answer_parses_back_to_equal_typed_values() -> None:
    built = build_cms_answer()
    parsed = SessionDescription.parse(bytes(built))
    expected = parse("answer.sdp")
    for sd in (built, parsed):
        assert sd.origin == expected.origin
        assert sd.session_name == expected.session_name
        assert sd.connection == expected.connection
        [md], [want] = sd.media, expected.media
        assert md.media == want.media
        assert md.connection == want.connection
        assert md.candidates == want.candidates
        assert md.crypto == want.crypto
        assert md.rtpmaps == want.rtpmaps
        assert (md.ice_ufrag, md.ice_pwd, md.setup, md.connection_mode) == (
            want.ice_ufrag,
            want.ice_pwd,
            want.setup,
            want.connection_mode,
        )
        assert md.applicationsharing == want.applicationsharing


def test_built_answer_is_the_vector_byte_for_byte() -> None:
    assert bytes(build_cms_answer()) == load("answer.sdp")


def test_reinvite_written_from_the_offer_with_builders() -> None:
    """RFC 5245 §9.1.2.2: the controlling agent re-offers only the selected pair."""
    sd = parse("offer.sdp")
    sd.set_origin(dataclasses.replace(sd.origin, session_version=sd.origin.session_version + 1))
    md = sd.media[0]
    selected = md.candidates[4]
    for name in ("candidate", "setup", "rtcp", "mid", "x-applicationsharing-contentflow"):
        md.remove_attribute(name)
    md.add_attribute("candidate", selected)
    md.add_attribute(
        "remote-candidates", RemoteCandidates((RemoteCandidate(1, "203.0.113.50", 24012),))
    )
    md.set_attribute("connection", "existing")
    want = only_media("reinvite.sdp")
    assert sd.origin == parse("reinvite.sdp").origin
    assert md.candidates == want.candidates
    assert md.remote_candidates == want.remote_candidates
    assert md.connection_mode == "existing"
    assert md.setup is None
    assert md.applicationsharing == want.applicationsharing
    assert sorted(map(str, md.lines)) == sorted(map(str, want.lines))
    # set_attribute replaced a=connection where it stood; the o= line kept its place too.
    assert [line.type for line in sd.lines] == ["v", "o", "s", "c", "b", "t"]
    assert str(md.lines[md.lines.index(Line("a", "connection:existing")) - 1]).startswith(
        "a=crypto:"
    )
    assert bytes(SessionDescription.parse(bytes(sd))) == bytes(sd)


def test_builders_insert_in_rfc_4566_order_and_default_to_crlf() -> None:
    sd = SessionDescription.build(Origin("-", 1, 1, "10.0.0.1"), session_name="session")
    sd.add_attribute("ice-lite")
    sd.set_connection(Connection("10.0.0.1"))
    sd.add_line("b", "CT:99980")
    assert [str(line) for line in sd.lines] == [
        "v=0",
        "o=- 1 1 IN IP4 10.0.0.1",
        "s=session",
        "c=IN IP4 10.0.0.1",
        "b=CT:99980",
        "t=0 0",
        "a=ice-lite",
    ]
    md = MediaDescription.build(Media("applicationsharing", 9, "TCP/RTP/SAVP", ("127",)))
    md.add_attribute("rtpmap", RtpMap(127, "x-data", 90000))
    md.set_connection(Connection("10.0.0.1"))
    md.set_media(Media("applicationsharing", 50040, "TCP/RTP/SAVP", ("127",)))
    sd.add_media(md)
    data = bytes(sd)
    assert data.count(b"\n") == data.count(b"\r\n") == 10
    assert data.endswith(
        b"m=applicationsharing 50040 TCP/RTP/SAVP 127\r\n"
        b"c=IN IP4 10.0.0.1\r\n"
        b"a=rtpmap:127 x-data/90000\r\n"
    )
    assert str(md).startswith("m=applicationsharing 50040")


def test_builders_follow_a_parsed_bodys_line_ends() -> None:
    data = load("offer.sdp").replace(b"\r\n", b"\n").rstrip(b"\n")
    sd = SessionDescription.parse(data)
    sd.media[0].add_attribute("x-ssrc-range", "100-200")
    # The old last line had no terminator; it gets one now that it is no longer last.
    assert bytes(sd) == data + b"\na=x-ssrc-range:100-200\n"
    sd.media[0].set_attribute("setup", "active")
    assert b"\na=setup:active\n" in bytes(sd)
    assert b"\r" not in bytes(sd)


def test_set_and_remove_attribute() -> None:
    md = only_media("offer.sdp")
    before = list(md.lines)
    md.set_attribute("candidate", "9 1 UDP 1 10.0.0.9 9 typ host")
    assert [c.foundation for c in md.candidates] == ["9"]
    assert md.lines.index(Line("a", "candidate:9 1 UDP 1 10.0.0.9 9 typ host")) == before.index(
        Line("a", "candidate:1 1 TCP-PASS 2120613887 10.1.1.50 50040 typ host")
    )
    md.remove_attribute("candidate").remove_attribute("nothing-like-this")
    assert md.candidates == []
    md.set_attribute("rtcp-mux")
    assert md.attribute("rtcp-mux") == ""
    assert md.lines[-1] == Line("a", "rtcp-mux")


def test_builders_refuse_what_parse_would_refuse() -> None:
    md = only_media("offer.sdp")
    lines = list(md.lines)
    with pytest.raises(SdpError, match="setup: 'sideways' is not one of") as info:
        md.add_attribute("setup", "sideways")
    assert info.value.line is None
    with pytest.raises(SdpError, match="duplicate a=ice-ufrag"):
        md.add_attribute("ice-ufrag", "abcd")
    with pytest.raises(SdpError, match="candidate: port 70000"):
        md.add_attribute("candidate", dataclasses.replace(md.candidates[0], port=70000))
    with pytest.raises(SdpError, match="not allowed in a media section"):
        md.add_line("o", "- 0 1 IN IP4 1.2.3.4")
    with pytest.raises(SdpError, match="attribute name"):
        md.add_attribute("bad name", "x")
    assert md.lines == lines  # a refused change leaves the section as it was
    sd = parse("offer.sdp")
    with pytest.raises(SdpError, match="m= may only open a media section"):
        sd.add_line("m", "audio 9 RTP/AVP 0")
    with pytest.raises(SdpError, match="empty s= line"):
        SessionDescription.build(Origin("-", 1, 1, "10.0.0.1"), session_name="")
    with pytest.raises(SdpError, match="media section must start with m="):
        MediaDescription([Line("a", "rtcp-mux")])
    with pytest.raises(SdpError, match="empty media section"):
        MediaDescription([])
    with pytest.raises(SdpError, match="missing t= line"):
        SessionDescription([Line("v", "0"), Line("o", "- 1 1 IN IP4 1.1.1.1"), Line("s", "-")])


# ---------------------------------------------------------------------------------------------
# Bad bodies: SdpError with the line number
# ---------------------------------------------------------------------------------------------

OFFER = load("offer.sdp")


def replace_line(number: int, text: bytes, data: bytes = OFFER) -> bytes:
    lines = data.split(b"\r\n")
    lines[number - 1] = text
    return b"\r\n".join(lines)


@pytest.mark.parametrize(
    ("data", "line", "message"),
    [
        (b"", 1, "empty SDP body"),
        (b"\r\n\r\n", 1, "empty SDP body"),
        (b"o=- 0 1 IN IP4 1.2.3.4\r\nv=0\r\n", 1, "first line must be v=0"),
        (b"v=1\r\n", 1, "unsupported SDP version '1'"),
        (b"\xef\xbb\xbfv=0\r\n", 1, "expected '<type>=<value>'"),
        (replace_line(12, b"a=candidate:1 2 TCP-PASS x 10.1.1.50 50040 typ host"), 12,
         "candidate: priority 'x' is not an integer"),
        (replace_line(5, b""), 5, "empty line"),
        (replace_line(9, b"a=ice-ufrag:Xa3f\rb=x"), 9, "bare CR"),
        (replace_line(10, b"a=ice-pwd:\x00"), 10, "NUL character"),
        (replace_line(4, b"c IN IP4 1.2.3.4"), 4, "expected '<type>=<value>'"),
        (replace_line(4, b"1=IN IP4 1.2.3.4"), 4, "line type '1' is not a letter"),
        (replace_line(3, b"s=caf\xe9"), 3, "invalid UTF-8"),
        (replace_line(2, b"o=- " + b"9" * 5000 + b" 1 IN IP4 1.2.3.4"), 2, "too large"),
        (replace_line(2, b"o=- 0 1 IN IP4 1.2.3.4\r\no=- 0 1 IN IP4 1.2.3.4"), 3, "duplicate o="),
        (replace_line(6, b"a=tool:x"), 7, "missing t= line"),
        (replace_line(6, b"a=tool:x", OFFER.split(b"m=")[0]), 6, "missing t= line"),
        (replace_line(7, b"m=applicationsharing 70000 TCP/RTP/SAVP 127"), 7, "port 70000"),
        (replace_line(8, b"t=0 0"), 8, "t= is not allowed in a media section"),
        (replace_line(8, b"v=0"), 8, "v= is not allowed in a media section"),
        (replace_line(20, b"a=setup:passive\r\na=setup:active"), 21, "duplicate a=setup"),
        (replace_line(20, b"a=setup"), 20, "setup: missing value"),
        (replace_line(21, b"a=connection:reused"), 21, "connection: 'reused' is not one of"),
        (replace_line(26, b"a=x-applicationsharing-role:presenter"), 26, "'presenter'"),
        (replace_line(25, b"a=x-applicationsharing-session-id:1 2"), 25, "not a valid token"),
        (replace_line(9, b"a=ice-ufrag:abc"), 9, "ice-ufrag: length 3"),
        (replace_line(10, b"a=ice-pwd:short-and-bad"), 10, "ice-pwd:"),
        (replace_line(19, b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:QUJD"), 19, "30-byte"),
        (replace_line(24, b"a=rtpmap:127 x-data"), 24, "rtpmap:"),
        (replace_line(22, b"a=:50040"), 22, "attribute name ''"),
        (replace_line(5, b"b=CT"), 5, "bandwidth:"),
        (replace_line(6, b"t=0"), 6, "timing:"),
        (replace_line(3, b"s="), 3, "empty s="),
        (replace_line(8, b"c=IN IP4 1.2.3.4 extra"), 8, "connection: expected 3 fields"),
        (OFFER + b"\r\nz=0 0", 29, "empty line"),
        (OFFER + b"\r", 29, "bare CR"),
    ],
)  # fmt: skip
def test_bad_bodies_raise_sdp_error_with_the_line(data: bytes, line: int, message: str) -> None:
    with pytest.raises(SdpError) as info:
        SessionDescription.parse(data)
    assert info.value.line == line
    assert message in info.value.reason
    assert str(info.value).startswith(f"line {line}")


def test_invalid_utf8_names_line_and_byte() -> None:
    data = replace_line(3, b"s=caf\xe9")
    with pytest.raises(SdpError) as info:
        SessionDescription.parse(data)
    assert info.value.offset == data.index(b"\xe9")


def test_unencodable_str_raises_sdp_error() -> None:
    with pytest.raises(SdpError) as info:
        SessionDescription.parse("v=0\r\ns=\ud800\r\n")
    assert info.value.line == 2


def test_first_fault_in_document_order_is_reported() -> None:
    data = replace_line(20, b"a=setup:bad", replace_line(4, b"c=IN IP9 1.2.3.4"))
    with pytest.raises(SdpError) as info:
        SessionDescription.parse(data)
    assert info.value.line == 4


def test_wrong_input_type_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        SessionDescription.parse(42)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Properties: nothing but SdpError, and whatever parses round-trips
# ---------------------------------------------------------------------------------------------


def check_parse(data: bytes | str) -> None:
    """Parse; on failure only SdpError with a plausible line; on success a byte-exact round trip
    and typed views that all work and re-parse to themselves."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    try:
        sd = SessionDescription.parse(data)
    except SdpError as exc:
        assert exc.line is not None
        assert 1 <= exc.line <= raw.count(b"\n") + 1
        return
    assert bytes(sd) == raw
    assert SessionDescription.parse(bytes(sd)).text() == sd.text()
    views: list[object] = [sd.origin, sd.connection]
    assert sd.session_name
    for md in sd.media:
        views += [md.media, md.connection, md.remote_candidates, md.rtcp, md.applicationsharing]
        views += [*md.candidates, *md.crypto, *md.rtpmaps]
        for name in ("ice-ufrag", "ice-pwd", "setup", "connection", "mid"):
            assert md.attribute(name) in (None, *md.attributes(name))
        assert md.ice_ufrag == md.attribute("ice-ufrag")
        assert (md.ice_pwd, md.setup, md.connection_mode, md.mid) == (
            md.attribute("ice-pwd"),
            md.attribute("setup"),
            md.attribute("connection"),
            md.attribute("mid"),
        )
    for view in views:
        if view is None or isinstance(view, ApplicationSharing):
            continue
        assert type(view).parse(str(view)) == view  # type: ignore[attr-defined]


VECTOR_LINES = sorted({line for name in ALL_VECTORS for line in load(name).splitlines()})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
@example(b"v=0\r\n")
@example(b"\xff")
def test_arbitrary_bytes_raise_only_sdp_error(data: bytes) -> None:
    check_parse(data)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_raises_only_sdp_error(text: str) -> None:
    check_parse(text)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(VECTOR_LINES),
            st.binary(max_size=30),
            st.sampled_from([b"a=", b"m=", b"c=", b"o=", b"t=", b""]).flatmap(
                lambda head: st.binary(max_size=20).map(lambda tail: head + tail)
            ),
        ),
        max_size=25,
    ),
    st.lists(st.sampled_from([b"\r\n", b"\n", b""]), min_size=25, max_size=25),
)
def test_shuffled_vector_lines_raise_only_sdp_error(lines: list[bytes], eols: list[bytes]) -> None:
    data = b"".join(line + eol for line, eol in zip(lines, eols, strict=False))
    check_parse(b"v=0\r\n" + data)
    check_parse(data)


# Field values that probe the typed parsers: signs, separators, Unicode digits, huge numbers.
ODD_FIELDS = [
    *(b"", b"x", b"-1", b"+5", b"0", b"1_0", "\u0665".encode(), b"0.5", b"9" * 30, b"9" * 5000),
    *(b"TCP", b"tcp-act", b"typ", b"raddr", b"tcptype", b"inline:QUJD", b"2^99", b"1:1"),
]
SEPARATORS = rb"([ :/|;=])"


@pytest.mark.parametrize("name", ["offer.sdp", "rfc6544-lf.sdp"])
def test_every_field_of_every_line_replaced_by_odd_values(name: str) -> None:
    """Deterministic sweep (the random mutations below may miss a field): one edit per body."""
    lines = load(name).splitlines(keepends=True)
    for i, line in enumerate(lines):
        content = line.rstrip(b"\r\n")
        parts = re.split(SEPARATORS, content)
        for k in range(0, len(parts), 2):
            for odd in ODD_FIELDS:
                edited = b"".join([*parts[:k], odd, *parts[k + 1 :]]) + line[len(content) :]
                check_parse(b"".join([*lines[:i], edited, *lines[i + 1 :]]))


@st.composite
def mutated_vectors(draw: st.DrawFn) -> bytes:
    """A vector with 1-4 edits, each aimed at one line so every line's parser gets its share."""
    lines = load(draw(st.sampled_from(ALL_VECTORS))).splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        line = lines[i]
        op = draw(st.sampled_from(["field", "byte", "insert", "delete", "move", "copy"]))
        if op == "field":  # replace one field between separators
            parts = re.split(SEPARATORS, line)
            k = draw(st.integers(0, len(parts) - 1))
            parts[k] = draw(st.sampled_from(ODD_FIELDS) | st.binary(max_size=6))
            lines[i] = b"".join(parts)
        elif op in ("byte", "insert", "delete"):
            at = draw(st.integers(0, len(line)))
            new = draw(
                st.sampled_from([b" ", b"\r", b"\n", b"\x00", b":", b"/"]) | st.binary(max_size=2)
            )
            cut = 0 if op == "insert" else draw(st.integers(1, 4)) if op == "delete" else 1
            lines[i] = line[:at] + (b"" if op == "delete" else new) + line[at + cut :]
        else:  # move or copy the line elsewhere
            j = draw(st.integers(0, len(lines) - 1))
            lines.insert(j, line if op == "copy" else lines.pop(i))
    return b"".join(lines)


@settings(max_examples=300, deadline=None)
@given(mutated_vectors())
def test_mutated_vectors_raise_only_sdp_error_or_round_trip(data: bytes) -> None:
    check_parse(data)


extension_pairs = st.tuples(
    st.sampled_from(["generation", "network-id", "ufrag"]), st.from_regex(r"\w+", fullmatch=True)
)
addresses = st.sampled_from(["10.1.1.50", "203.0.113.50", "2001:db8::7", "host.example"])
candidates = st.builds(
    Candidate,
    foundation=st.from_regex(r"[A-Za-z0-9+/]{1,32}", fullmatch=True),
    component=st.integers(1, 256),
    transport=st.sampled_from(["UDP", "udp", "TCP-PASS", "TCP-ACT", "tcp-pass", "TCP-SO"]),
    priority=st.integers(1, 2**31 - 1),
    address=addresses,
    port=st.integers(0, 65535),
    type=st.sampled_from(["host", "srflx", "prflx", "relay"]),
    related_address=st.none() | addresses,
    related_port=st.none() | st.integers(0, 65535),
    extensions=st.lists(extension_pairs, max_size=2).map(tuple),
)
rfc6544_candidates = st.builds(
    lambda c, tcptype: dataclasses.replace(c, transport="TCP", tcptype=tcptype),
    candidates,
    st.none() | st.sampled_from(["active", "passive", "so"]),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(candidates | rfc6544_candidates, min_size=1, max_size=5))
def test_built_candidates_parse_back_equal(built: list[Candidate]) -> None:
    md = MediaDescription.build(
        Media("applicationsharing", 50040, "TCP/RTP/SAVP", ("127",)),
        attributes=[("candidate", c) for c in built],
    )
    sd = SessionDescription.build(Origin("-", 0, 1, "10.1.1.50"), media=[md])
    assert SessionDescription.parse(bytes(sd)).media[0].candidates == built
    for candidate in built:
        assert Candidate.parse(str(candidate)) == candidate
