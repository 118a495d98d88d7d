"""The SIP and SDP codecs against sipp, an independent SIP peer.

sipp plays a Skype-like UAC over TCP (tests/sipp/uac-appsharing.xml): INVITE with
m=applicationsharing and MS-ICE2 candidates, `Content-Length:` padded with spaces as sipp does.
A small UAS written with labsim's SIP splitter, parser, response builder and SDP builder answers
100 Trying and a 200 OK carrying a TURN relay candidate, then 200 to the BYE. sipp checks our
responses (it fails the call on anything it cannot match) and exits 0 only when the call
completed.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from pathlib import Path

import pytest
from sipmessage import Request, Via

from labsim.net.live import claim_block
from labsim.wire import sip
from labsim.wire.framing import SipSplitter
from labsim.wire.sdp import (
    Candidate,
    Connection,
    Media,
    MediaDescription,
    Origin,
    SessionDescription,
)

from .conftest import require_tool

pytestmark = pytest.mark.sipp
SCENARIO = Path(__file__).parent / "sipp" / "uac-appsharing.xml"


def cms_answer() -> bytes:
    relay = Candidate("3", 1, "TCP-PASS", 6556159, "10.48.54.229", 24000, "relay",
                      related_address="10.48.54.230", related_port=44340)  # fmt: skip
    media = MediaDescription.build(
        Media("applicationsharing", 24000, "TCP/RTP/SAVP", ("127",)),
        connection=Connection("10.48.54.229"),
        attributes=[
            ("ice-ufrag", "cM5k"),
            ("ice-pwd", "Hh3uY7pQ1wE5rT9iO2aS6dF0"),
            ("candidate", relay),
            ("connection", "new"),
            ("rtpmap", "127 x-data/90000"),
            ("x-applicationsharing-session-id", "1"),
            ("x-applicationsharing-role", "viewer"),
            ("x-applicationsharing-media-type", "rdp"),
            ("x-applicationsharing-contentflow", "recvonly"),
        ],
    )
    return SessionDescription.build(
        Origin("-", 7842, 2, "10.48.54.230"), connection=Connection("10.48.54.229"), media=[media]
    ).encode()


class Uas(threading.Thread):
    """Answers one TCP connection with labsim's codec; records what it parsed."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(20)
        self.port: int = self.listener.getsockname()[1]
        self.received: list[sip.SipMessage] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn, _ = self.listener.accept()
            conn.settimeout(20)
            with conn:
                self.serve(conn)
        except BaseException as exc:  # reported by the test thread
            self.error = exc
        finally:
            self.listener.close()

    def serve(self, conn: socket.socket) -> None:
        splitter = SipSplitter()
        while True:
            data = conn.recv(65536)
            if not data:
                return
            for raw in splitter.feed(data):
                msg = sip.parse_message(raw)
                self.received.append(msg)
                assert isinstance(msg, Request)
                if msg.method == "INVITE":
                    conn.sendall(sip.encode(sip.build_response(msg, 100)))
                    ok = sip.build_response(
                        msg,
                        200,
                        to_tag="cms-1",
                        contact="<sip:cms@127.0.0.1;transport=tcp>",
                        content_type="application/sdp",
                        body=cms_answer(),
                    )
                    conn.sendall(sip.encode(ok))
                elif msg.method == "BYE":
                    conn.sendall(sip.encode(sip.build_response(msg, 200)))
                    return


def test_sipp_uac_completes_an_appsharing_call_against_our_codec(tmp_path: Path) -> None:
    sipp = require_tool("sipp")
    uas = Uas()
    uas.start()
    with claim_block() as block:  # sipp's own address: its sockets meet no parallel test's
        cmd = [
            sipp, f"127.0.0.1:{uas.port}", "-sf", str(SCENARIO), "-t", "t1",
            "-i", block.address(1), "-p", "0", "-m", "1", "-timeout", "20s", "-timeout_error",
            "-nostdin", "-trace_err", "-error_file", str(tmp_path / "sipp-errors.log"),
            "-trace_msg", "-message_file", str(tmp_path / "sipp-messages.log"),
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, timeout=60, cwd=tmp_path)
    uas.join(timeout=20)
    errors = (
        (tmp_path / "sipp-errors.log").read_text(errors="replace")
        if (tmp_path / "sipp-errors.log").exists()
        else ""
    )
    assert result.returncode == 0, (result.stdout[-2000:], errors)
    assert uas.error is None, uas.error
    methods = [m.method for m in uas.received if isinstance(m, Request)]
    assert methods == ["INVITE", "ACK", "BYE"]
    invite = uas.received[0]
    assert sip.content_length(invite) == len(invite.body)
    offer = SessionDescription.parse(invite.body)
    assert bytes(offer) == invite.body
    (media,) = offer.media
    assert media.media is not None and media.media.media == "applicationsharing"
    assert [c.tcptype for c in media.candidates] == ["passive", "active", "passive"]
    # What sipp saw of our 200 OK: the relay candidate in the SDP answer.
    seen = (tmp_path / "sipp-messages.log").read_text(errors="replace")
    assert "a=candidate:3 1 TCP-PASS 6556159 10.48.54.229 24000 typ relay" in seen


def skype_offer() -> bytes:
    return (Path(__file__).parent / "vectors" / "sdp" / "offer.sdp").read_bytes()


def test_sipp_uas_answers_our_invite(tmp_path: Path) -> None:
    """Our requests, built with labsim's builders, through sipp acting as CMS."""
    sipp = require_tool("sipp")
    # sipp on an address of a block of our own, at the SIP port: no parallel test or live run
    # can take it between our choice and sipp's bind (a probed free port could be).
    block = claim_block()
    host, port = block.address(1), 5060
    cmd = [
        sipp, "-sf", str(SCENARIO.with_name("uas-appsharing.xml")), "-t", "t1",
        "-i", host, "-p", str(port), "-m", "1", "-timeout", "20s", "-timeout_error",
        "-nostdin", "-trace_err", "-error_file", str(tmp_path / "sipp-errors.log"),
    ]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        conn = _connect_when_listening((host, port))
        with conn:
            local = conn.getsockname()
            via = f"SIP/2.0/TCP {local[0]}:{local[1]};branch=z9hG4bK-labsim-1"
            invite = sip.build_request(
                "INVITE", f"sip:meeting@{host}:{port};transport=tcp", via=Via.parse(via),
                from_addr="<sip:presenter@example.com>;tag=skype-1",
                to_addr="<sip:meeting@cms.example.com>", call_id="appsharing-1", cseq=1,
                contact=f"<sip:presenter@{local[0]}:{local[1]};transport=tcp>",
                content_type="application/sdp", body=skype_offer(),
            )  # fmt: skip
            conn.sendall(sip.encode(invite))
            splitter = SipSplitter()
            responses = []
            while not responses or responses[-1].code < 200:
                data = conn.recv(65536)
                assert data, "sipp closed the connection"
                responses += [sip.parse_message(raw) for raw in splitter.feed(data)]
            assert [r.code for r in responses] == [100, 200]
            ok = responses[-1]
            answer = SessionDescription.parse(ok.body)
            assert answer.media[0].candidates[0].type == "relay"
            to_tag = sip.to_tag(ok)
            assert to_tag
            for method, cseq, branch in (
                ("ACK", 1, "z9hG4bK-labsim-2"),
                ("BYE", 2, "z9hG4bK-labsim-3"),
            ):
                request = sip.build_request(
                    method, f"sip:cms@{host}:{port};transport=tcp",
                    via=Via.parse(via.replace("z9hG4bK-labsim-1", branch)),
                    from_addr="<sip:presenter@example.com>;tag=skype-1",
                    to_addr=sip.format_address(sip.to_address(ok)), call_id="appsharing-1",
                    cseq=cseq,
                )  # fmt: skip
                conn.sendall(sip.encode(request))
            bye_ok: list[sip.SipMessage] = []
            while not bye_ok:
                data = conn.recv(65536)
                assert data, "sipp closed before answering BYE"
                bye_ok += [sip.parse_message(raw) for raw in splitter.feed(data)]
            assert sip.summary(bye_ok[0]) == "200 OK" and sip.cseq(bye_ok[0]).method == "BYE"
        out, _ = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
        block.release()
    errors_file = tmp_path / "sipp-errors.log"
    errors = errors_file.read_text(errors="replace") if errors_file.exists() else ""
    assert server.returncode == 0, (out[-2000:], errors)


def _connect_when_listening(address: tuple[str, int]) -> socket.socket:
    import time

    deadline = time.monotonic() + 10
    while True:
        try:
            return socket.create_connection(address, timeout=20)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
