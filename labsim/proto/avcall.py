"""The SDP of the meeting's audio/video call, which precedes the share (Cisco 212580: "the first
invites for audio and video calls, which have already been negotiated at this stage, are not
shown"; the sharing INVITE "will have a different SIP call-id than the initial audio/video
call").

The TechNote shows none of it, so every value here is invented in the manner of Lync/SfB SDP
(MS-SDPEXT §3.1.5, MS-ICE2 candidate syntax as in PROTOCOL.md §5.1): ``m=audio`` and
``m=video`` over ``RTP/SAVP`` with SDES keys (RFC 4568), one ``a=ice-ufrag`` / ``a=ice-pwd``
per media, UDP host candidates for RTP and RTCP (components 1 and 2) and the relay candidates
the client's A/V Edge gives it (UDP, and TCP-PASS on the Edge's 443). labsim simulates no
media beyond this SDP: no RTP, no UDP, no ICE checks for the A/V streams.

CMS answers with its UDP host candidates only. A real CMS would also allocate a UDP relay on
its TURN server for audio and video; the TechNote explains only the TCP relay of the share
("It does not explain ... the use of UDP TURN for a regular audio or video call"), and labsim
lets CMS ask Expressway-E for a relay only for the sharing INVITE, so the capture at CMS keeps
the TechNote's ten STUN rows.
"""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass

from labsim.proto.events import Address
from labsim.wire import SdpError
from labsim.wire.sdp import Candidate, Connection, Media, Origin, SessionDescription

CONTENT_TYPE = "application/sdp"

#: The audio and video RTP ports of each end (RTCP on the next port, RFC 3605 ``a=rtcp``).
#: Invented: the lab's capture does not show the audio/video call.
CLIENT_PORTS = (50010, 50020)
CMS_PORTS = (33720, 33730)
#: The client's A/V Edge relay ports (UDP) and its TCP relay port (443, the A/V Edge's
#: external TCP port), invented likewise.
EDGE_UDP_PORTS = (51010, 51020)
EDGE_TCP_PORT = 443

#: Audio and video payload types the client offers (MS-SDPEXT: SILK, G.722, G.711, RFC 4733
#: events; X-H264UC for video) and those CMS answers with.
AUDIO_OFFER = (
    ("104", "SILK/16000"), ("9", "G722/8000"), ("0", "PCMU/8000"), ("8", "PCMA/8000"),
    ("101", "telephone-event/8000"),
)  # fmt: skip
AUDIO_ANSWER = (("9", "G722/8000"), ("101", "telephone-event/8000"))
VIDEO_OFFER = (("122", "X-H264UC/90000"), ("123", "x-ulpfecuc/90000"))
VIDEO_ANSWER = (("122", "X-H264UC/90000"),)

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def priority(kind: str, component: int, local: int = 65535) -> int:
    """RFC 5245 §4.1.2.1: (2^24)·type preference + (2^8)·local preference + (256 − component),
    with the recommended type preferences (host 126, relay 0)."""
    return ((126 if kind == "host" else 0) << 24) + (local << 8) + (256 - component)


@dataclass(frozen=True)
class AvSide:
    """What one end puts into its audio/video description."""

    host: str
    """Its own address (``o=``, ``c=``, the host candidates)."""
    ports: tuple[int, int]
    """The audio and video RTP ports."""
    ufrag: str
    pwd: str
    key_salt: bytes
    """30 bytes of SRTP master key and salt (RFC 4568 §6.1 inline key)."""
    relay: str | None = None
    """The A/V Edge's address of its relay candidates (the client's); None: host only."""
    session_id: int = 0


def credentials(rng: random.Random) -> tuple[str, str]:
    """A fresh ``a=ice-ufrag`` (4 characters) and ``a=ice-pwd`` (24), RFC 5245 §15.4's
    ice-char: the A/V session's own, apart from the share's."""
    ufrag = "".join(rng.choice(_ALPHABET[:62]) for _ in range(4))
    pwd = "".join(rng.choice(_ALPHABET) for _ in range(24))
    return ufrag, pwd


def _candidates(side: AvSide, index: int) -> list[str]:
    port = side.ports[index]
    lines = []
    for component in (1, 2):
        host = Candidate("1", component, "UDP", priority("host", component), side.host,
                         port + component - 1, "host")  # fmt: skip
        lines.append(f"a=candidate:{host}")
    if side.relay is not None:
        relay_port = EDGE_UDP_PORTS[index]
        for component in (1, 2):
            relay = Candidate(
                "2", component, "UDP", priority("relay", component), side.relay,
                relay_port + component - 1, "relay", side.host, port + component - 1,
            )  # fmt: skip
            lines.append(f"a=candidate:{relay}")
        tcp = Candidate("3", 1, "TCP-PASS", priority("relay", 1, 65534), side.relay,
                        EDGE_TCP_PORT, "relay", side.host, port)  # fmt: skip
        lines.append(f"a=candidate:{tcp}")
    return lines


def build(side: AvSide, *, answer: bool = False) -> bytes:
    """The offer (the Skype client's) or the answer (CMS's): ``m=audio`` then ``m=video``."""
    key = base64.b64encode(side.key_salt).decode("ascii")
    lines = [
        "v=0",
        f"o={Origin('-', side.session_id, 0, side.host)}",
        "s=session",
        f"c={Connection(side.host)}",
        "b=CT:99980",
        "t=0 0",
    ]
    media = (
        ("audio", AUDIO_ANSWER if answer else AUDIO_OFFER, "main-audio"),
        ("video", VIDEO_ANSWER if answer else VIDEO_OFFER, "main-video"),
    )
    for index, (kind, formats, label) in enumerate(media):
        port = side.ports[index]
        lines += [
            f"m={Media(kind, port, 'RTP/SAVP', tuple(pt for pt, _ in formats))}",
            f"a=ice-ufrag:{side.ufrag}",
            f"a=ice-pwd:{side.pwd}",
            *_candidates(side, index),
            f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^31",
            f"a=rtcp:{port + 1}",
            f"a=label:{label}",
            *(f"a=rtpmap:{pt} {name}" for pt, name in formats),
        ]
        if kind == "audio":
            lines += ["a=fmtp:101 0-16", "a=ptime:20"]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def media_kinds(body: bytes) -> tuple[str, ...]:
    """The ``m=`` kinds of a body, in order; () when it is empty or not SDP."""
    if not body:
        return ()
    try:
        return tuple(m.media.media for m in SessionDescription.parse(body).media)
    except SdpError:
        return ()


def is_av_offer(body: bytes) -> bool:
    """An offer for an audio/video call: ``m=audio`` or ``m=video``, no
    ``m=applicationsharing`` (MS-SDPEXT §3.1.5: a sharing offer is a new INVITE of its own)."""
    kinds = media_kinds(body)
    return "applicationsharing" not in kinds and bool({"audio", "video"} & set(kinds))


def host_address(body: bytes) -> Address | None:
    """The session's ``c=`` address and its first media port, for a log line."""
    try:
        session = SessionDescription.parse(body)
    except SdpError:
        return None
    conn = session.connection
    if conn is None or not session.media:
        return None
    return Address(conn.address, session.media[0].media.port)
