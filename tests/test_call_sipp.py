"""The call's actors against sipp, an independent SIP peer, on live loopback sockets.

- sipp as the Skype side (tests/sipp/uac-to-cms.xml) sends the applicationsharing INVITE to our
  Expressway-C, which routes it to CMS; CMS allocates its TCP relay on our Expressway-E and
  answers; sipp requires a relay candidate in the 200 OK, ACKs and hangs up along the route.
- sipp as everything behind the Skype Edge (tests/sipp/uas-behind-edge.xml) answers our Skype
  client's INVITE; the client ACKs, finds no media path (nothing listens on the Edge's media
  port) and hangs up with BYE, which sipp must receive and answer.

sipp exits 0 only when its whole scenario ran; every process is bounded in time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from labsim.actors.cms import Cms
from labsim.actors.expressway_c import ExpresswayC
from labsim.actors.expressway_e import ExpresswayE
from labsim.actors.lab import Lab, SkypeClientSettings
from labsim.actors.skype_client import SkypeClient
from labsim.net.live import LiveNetwork, claim_block
from labsim.proto.events import Address
from labsim.trace import Trace
from labsim.wire import sip

from .conftest import require_tool
from .labs import share_lab

pytestmark = pytest.mark.sipp
SIPP_DIR = Path(__file__).parent / "sipp"


async def _sipp(args: list[str], cwd: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=40)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    errors = cwd / "errors.log"
    text = out.decode(errors="replace")[-3000:]
    if errors.exists():
        text += errors.read_text(errors="replace")[-3000:]
    return proc.returncode or 0, text


def _sipp_args(sipp: str, scenario: str, tmp: Path, ip: str) -> list[str]:
    """sipp on loopback address ``ip``: an address of a block claimed for it, so its SIP,
    media (6000) and other sockets meet no parallel test's."""
    return [
        sipp, "-sf", str(SIPP_DIR / scenario), "-t", "t1", "-i", ip, "-m", "1",
        "-timeout", "30s", "-timeout_error", "-nostdin", "-trace_err", "-error_file",
        str(tmp / "errors.log"), "-trace_msg", "-message_file", str(tmp / "messages.log"),
    ]  # fmt: skip


async def test_sipp_uac_gets_a_relay_candidate_from_cms(tmp_path: Path) -> None:
    sipp = require_tool("sipp")
    cms = Cms(Lab())
    actors = [ExpresswayE(Lab()), ExpresswayC(Lab()), cms]
    trace = Trace()
    net = LiveNetwork(actors, trace)
    run = asyncio.create_task(net.arun(30, stop=lambda _t: cms.finished))
    await asyncio.sleep(0.2)  # listeners up
    expc = f"{net.loopback_of('10.48.54.228')}:5060"  # in the run's own loopback block
    with claim_block() as block:
        args = _sipp_args(sipp, "uac-to-cms.xml", tmp_path, block.address(1))
        code, log = await _sipp([*args, expc, "-p", "0"], tmp_path)
    await asyncio.wait_for(run, timeout=35)
    assert code == 0, log
    answers = [
        m for m in trace.messages
        if m.src == "cms" and m.summary == "200 OK" and b"typ relay" in m.data
    ]  # fmt: skip
    assert len(answers) == 1
    body = sip.parse_message(answers[0].data).body
    assert b"TCP-PASS 6556159 10.48.54.229 24000 typ relay" in body
    seen = (tmp_path / "messages.log").read_text(errors="replace")
    assert "typ relay" in seen and "Record-Route: <sip:10.48.54.228:5060" in seen
    # sipp's BYE reached CMS through the route, and CMS gave the allocation back.
    assert any(m.dst == "cms" and m.summary == "BYE" for m in trace.messages)
    assert [m for m in trace.find("Refresh Success Response")
            if m.stun_facts is not None and m.stun_facts.lifetime == 0]  # fmt: skip


async def test_sipp_uas_answers_our_skype_client(tmp_path: Path) -> None:
    sipp = require_tool("sipp")
    # One dialog for sipp's one-call scenario: the sharing INVITE alone (the audio/video call
    # before it has a test of its own below).
    client = SkypeClient(share_lab(skype_client=SkypeClientSettings(ice_timeout=5)))
    trace = Trace()
    with claim_block() as block:
        # The Edge's lab port on sipp's own address: free, whatever else runs.
        edge = (block.address(1), 5060)
        net = LiveNetwork([client], trace, external={Address("192.168.1.252", 5060): edge})
        args = _sipp_args(sipp, "uas-behind-edge.xml", tmp_path, edge[0])
        server = asyncio.create_task(_sipp([*args, "-p", str(edge[1])], tmp_path))
        await asyncio.sleep(0.5)  # sipp listening
        await net.arun(30, stop=lambda _t: client.finished)
        code, log = await asyncio.wait_for(server, timeout=35)
    assert code == 0, log
    sent = [m.summary for m in trace.messages if m.src == "skype_client" and m.protocol == "SIP"]
    assert sent == ["INVITE", "ACK", "BYE"]
    received = [m.summary for m in trace.messages if m.dst == "skype_client"]
    assert received == ["100 Trying", "200 OK", "200 OK"]
    assert any("media connection failed" in log.text for log in trace.logs)
