"""The application-sharing bodies the call's actors write: each parses with the strict SDP
parser, round-trips byte for byte, and reads back what was put in (MS-SDPEXT §3.1.5)."""

from __future__ import annotations

import pytest

from labsim.proto import appsharing
from labsim.proto.events import Address
from labsim.wire import SdpError
from labsim.wire.sdp import RemoteCandidate, SessionDescription

HOST = Address("192.168.1.100", 50040)
EDGE = Address("192.168.1.252", 53577)
RELAY = Address("10.48.54.229", 24000)


def side(candidates: tuple[appsharing.Candidate, ...], version: int) -> appsharing.ShareSide:
    return appsharing.ShareSide(
        "192.168.1.100", EDGE, "Xa3f", "Tq9sLmN2vB7xYc4ZkP1rW8dE", candidates, "sharer",
        "sendonly", bytes(range(30)), version=version,
    )  # fmt: skip


OFFER = side(
    (
        appsharing.candidate(1, "TCP-PASS", "host", HOST),
        appsharing.candidate(2, "TCP-ACT", "host", HOST),
        appsharing.candidate(3, "TCP-PASS", "relay", EDGE, HOST),
        appsharing.candidate(4, "TCP-ACT", "relay", EDGE, HOST),
    ),
    1,
)
REOFFER = side((appsharing.candidate(4, "TCP-ACT", "relay", EDGE, HOST),), 2)


@pytest.mark.parametrize(
    ("share", "connection", "remote"),
    [(OFFER, "new", None), (REOFFER, "existing", RELAY), (REOFFER, "new", RELAY)],
)
def test_bodies_parse_strictly_and_read_back(
    share: appsharing.ShareSide, connection: str, remote: Address | None
) -> None:
    body = appsharing.build(share, connection=connection, remote=remote)
    parsed = SessionDescription.parse(body)
    assert bytes(parsed) == body
    (media,) = parsed.media
    assert str(media.media) == f"applicationsharing {EDGE.port} TCP/RTP/SAVP 127"
    assert media.attribute("connection") == connection
    info = media.applicationsharing
    assert info is not None and info.role == "sharer" and info.media_type == "rdp"
    back = appsharing.parse(body)
    assert back.candidates == share.candidates
    assert back.active == EDGE
    assert back.remote_candidates == (
        () if remote is None else (RemoteCandidate(1, remote.host, remote.port),)
    )
    # relay() is the passive TCP relay of component 1: the one a peer can connect to.
    passive = [c for c in share.candidates if c.type == "relay" and c.tcptype == "passive"]
    assert back.relay() == (passive[0] if passive else None)


def test_a_body_without_applicationsharing_is_refused() -> None:
    with pytest.raises(SdpError):
        appsharing.parse(b"v=0\r\no=- 0 0 IN IP4 10.0.0.1\r\ns=-\r\nt=0 0\r\n")


def test_a_check_with_a_bad_fingerprint_is_dropped_unanswered() -> None:
    import random

    from labsim.proto.ice import CheckFailed, CheckSettings, CheckStream, IceCredentials

    cms = IceCredentials("cM5k", "Hh3uY7pQ1wE5rT9iO2aS6dF0")
    skype = IceCredentials("Xa3f", "Tq9sLmN2vB7xYc4ZkP1rW8dE")
    layout = ("USERNAME", "PRIORITY", "ICE-CONTROLLED", "MESSAGE-INTEGRITY", "FINGERPRINT")
    sender = CheckStream(CheckSettings(skype, False, 1, layout), cms, EDGE, random.Random(1))
    receiver = CheckStream(CheckSettings(cms, True, 1, layout), skype, EDGE, random.Random(2))
    framed = bytearray(sender.request())
    framed[-1] ^= 0xFF  # the CRC's last byte
    out, notices = receiver.feed(bytes(framed))
    assert out == [] and not receiver.received
    assert isinstance(notices[0], CheckFailed) and "FINGERPRINT" in notices[0].reason
    good, _ = receiver.feed(sender.request())
    assert len(good) == 1 and receiver.received  # the intact check is answered
