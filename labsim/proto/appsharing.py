"""The SDP of an application-sharing (RDP) session: offer, answer and the post-ICE reINVITE
(MS-SDPEXT §3.1.5, MS-ICE2, RFC 5245 §9.1.2.2). PROTOCOL.md §5.3 holds the facts and the
UNSURE points; the layouts here follow its examples.

- ``m=applicationsharing <port> TCP/RTP/SAVP 127`` with ``a=rtpmap:127 x-data/90000`` and the
  three ``x-applicationsharing-*`` attributes (session id, role, media type), plus
  ``x-applicationsharing-contentflow``;
- MS-ICE2 TCP candidates (``TCP-PASS`` / ``TCP-ACT`` tokens, no ``tcptype``), component 1 only
  (whether SfB lists component 2 for application sharing over TCP is UNSURE);
- ``a=connection:new`` in the first offer and answer (MS-SDPEXT §3.1.5.10.2), and a setting for
  the reINVITE (``existing`` by default, UNSURE);
- the reINVITE lists only the selected local candidate on the m/c lines and names the selected
  remote one in ``a=remote-candidates`` (RFC 5245 §9.1.2.2).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from labsim.proto.events import Address
from labsim.wire import SdpError
from labsim.wire.cache import cached
from labsim.wire.sdp import (
    Candidate,
    Connection,
    Media,
    Origin,
    RemoteCandidate,
    RemoteCandidates,
    SessionDescription,
)

#: Candidate priorities as in PROTOCOL.md §5.3's example (RFC 5245 §4.1.2.1 formula with
#: RFC 6544 §4.2 direction preferences; the exact type preferences SfB uses are UNSURE).
PRIORITIES = {
    ("host", "TCP-PASS"): 2120613887,
    ("host", "TCP-ACT"): 2121006591,
    ("relay", "TCP-PASS"): 6556159,
    ("relay", "TCP-ACT"): 7081983,
}

CONTENT_TYPE = "application/sdp"


def candidate(foundation: int, transport: str, kind: str, at: Address,
              related: Address | None = None) -> Candidate:  # fmt: skip
    """An MS-ICE2 TCP candidate for component 1."""
    return Candidate(
        str(foundation), 1, transport, PRIORITIES[(kind, transport)], at.host, at.port, kind,
        related.host if related else None, related.port if related else None,
    )  # fmt: skip


@dataclass(frozen=True)
class ShareSide:
    """What one side puts into its application-sharing media description."""

    host: str
    """Host of ``o=``."""
    active: Address
    """The address on the m= and c= lines (the candidate media is expected on)."""
    ufrag: str
    pwd: str
    candidates: tuple[Candidate, ...]
    role: str
    """``sharer`` or ``viewer``."""
    contentflow: str
    key_salt: bytes
    """30 bytes of SRTP master key and salt (RFC 4568 §6.1 inline key)."""
    session_name: str = "session"
    session_id: int = 0
    version: int = 1


def build(
    side: ShareSide,
    *,
    connection: str = "new",
    remote: Address | None = None,
) -> bytes:
    """The body: the offer/answer (``remote`` None) or a post-ICE reINVITE offer.

    Written as text from the typed values (the line-by-line builders re-check the whole section
    on every line, which costs milliseconds per body).
    """
    key = base64.b64encode(side.key_salt).decode("ascii")
    lines = [
        "v=0",
        f"o={Origin('-', side.session_id, side.version, side.host)}",
        f"s={side.session_name}",
        f"c={Connection(side.active.host)}",
        "b=CT:99980",
        "t=0 0",
        f"m={Media('applicationsharing', side.active.port, 'TCP/RTP/SAVP', ('127',))}",
        f"c={Connection(side.active.host)}",
        f"a=ice-ufrag:{side.ufrag}",
        f"a=ice-pwd:{side.pwd}",
        *(f"a=candidate:{cand}" for cand in side.candidates),
    ]
    if remote is not None:
        remote_value = RemoteCandidates((RemoteCandidate(1, remote.host, remote.port),))
        lines.append(f"a=remote-candidates:{remote_value}")
    lines += [
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^31",
        f"a=connection:{connection}",
        "a=rtpmap:127 x-data/90000",
        "a=x-applicationsharing-session-id:1",
        f"a=x-applicationsharing-role:{side.role}",
        "a=x-applicationsharing-media-type:rdp",
        f"a=x-applicationsharing-contentflow:{side.contentflow}",
    ]
    # Every piece went through a typed value's str() above; tests/test_appsharing.py parses
    # each kind of body this writes, so a run does not re-check its own output.
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


@dataclass(frozen=True)
class RemoteShare:
    """What an application-sharing body tells the other side."""

    ufrag: str
    pwd: str
    candidates: tuple[Candidate, ...]
    active: Address
    remote_candidates: tuple[RemoteCandidate, ...]

    def relay(self) -> Candidate | None:
        """The passive TCP relay candidate of component 1 (for the Skype side: CMS's TURN relay
        on Expressway-E), the one a peer can connect to (RFC 6544 §4.5)."""
        return next(
            (c for c in self.candidates
             if c.type == "relay" and c.component == 1 and c.tcptype == "passive"),
            None,
        )  # fmt: skip

    def passive(self) -> Candidate | None:
        """The candidate a peer opens its connection to: the passive relay candidate when there
        is one, else the first passive candidate of component 1 (CMS's host candidate when it
        has no relay); only a passive candidate accepts connections (RFC 6544 §4.5)."""
        return self.relay() or next(
            (c for c in self.candidates if c.component == 1 and c.tcptype == "passive"), None
        )


@cached(maxsize=256, max_key=16 * 1024)
def parse(body: bytes) -> RemoteShare:
    """Read the application-sharing section; :class:`SdpError` when there is none or it lacks
    ICE credentials. Cached: the Edge and the client read the same answer (RemoteShare is
    immutable)."""
    session = SessionDescription.parse(body)
    for media in session.media:
        if media.media.media != "applicationsharing":
            continue
        ufrag, pwd = media.ice_ufrag, media.ice_pwd
        if ufrag is None or pwd is None:
            raise SdpError("m=applicationsharing without a=ice-ufrag / a=ice-pwd")
        conn = media.connection or session.connection
        host = conn.address if conn is not None else session.origin.address
        remote = media.remote_candidates
        return RemoteShare(
            ufrag, pwd, tuple(media.candidates), Address(host, media.media.port),
            remote.candidates if remote is not None else (),
        )  # fmt: skip
    raise SdpError("no m=applicationsharing section")
