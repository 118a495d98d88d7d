"""sipp, an independent SIP peer, at either end of the whole proxy chain (live loopback).

- sipp's UAC as the Skype client (tests/sipp/uac-to-cms.xml): its applicationsharing INVITE
  enters at our Skype Edge and crosses Expressway-E and Expressway-C to CMS, which allocates
  its TCP relay on our Expressway-E and answers; the 200 OK's relay candidate must reach sipp,
  which ACKs and hangs up along the recorded route.
- sipp's UAS standing in for CMS's SIP (tests/sipp/uas-as-cms.xml, at CMS's lab address
  10.48.54.230:5060): our Skype client's INVITE reaches it through the Edge, Expressway-E and
  Expressway-C; its 200 OK (Record-Route copied, a relay candidate on Expressway-E) comes back;
  the client's ACK and BYE follow the recorded route to sipp.

Each test checks what sipp saw (its message log) and what our proxies did (the trace): one
Via per hop pushed on the way in and popped on the way out, one Record-Route per proxy,
Max-Forwards counted down. sipp exits 0 only when its whole scenario ran; every process is
bounded in time.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from labsim.actors.cms import Cms
from labsim.actors.expressway_c import ExpresswayC
from labsim.actors.expressway_e import ExpresswayE
from labsim.actors.lab import Lab, SkypeClientSettings
from labsim.actors.skype_client import SkypeClient
from labsim.actors.skype_edge import SkypeEdge
from labsim.net.live import LiveNetwork, claim_block
from labsim.proto.events import Address
from labsim.trace import Trace
from labsim.wire import sip

from .conftest import require_tool
from .labs import share_lab
from .test_call_sipp import _sipp, _sipp_args

pytestmark = pytest.mark.sipp

EDGE, EXPE, EXPC, CMS = "192.168.1.252", "10.48.54.229", "10.48.54.228", "10.48.54.230"
#: The proxies' Record-Route entries as a request from the Skype side collects them: the last
#: proxy's on top (RFC 3261 §16.6 step 4).
ROUTE_FROM_SKYPE = [f"<sip:{host}:5060;transport=tcp;lr>" for host in (EXPC, EXPE, EDGE)]


def _messages(log: str, direction: str) -> list[str]:
    """The SIP messages sipp's -trace_msg log shows ``direction`` ("sent" or "received")."""
    log = log.replace("\r\n", "\n")
    parts = re.split(r"^-{10,} [^\n]*\n\w+ message (sent|received)[^\n]*\n", log, flags=re.M)
    pairs = zip(parts[1::2], parts[2::2], strict=True)
    return [text.strip() for kind, text in pairs if kind == direction]


def _headers(message: str, name: str) -> list[str]:
    """The values of header ``name`` in one message's text, in order (one per line)."""
    head = message.split("\n\n", 1)[0]
    found = re.findall(rf"^{name}:\s*(.*?)\s*$", head, flags=re.M | re.I)
    return [v for line in found for v in (p.strip() for p in line.split(",")) if v]


def _first(messages: list[str], start: str) -> str:
    return next(m for m in messages if m.startswith(start))


async def test_sipp_uac_shares_through_the_whole_chain(tmp_path: Path) -> None:
    sipp = require_tool("sipp")
    cms = Cms(Lab())
    actors = [SkypeEdge(Lab()), ExpresswayE(Lab()), ExpresswayC(Lab()), cms]
    trace = Trace()
    net = LiveNetwork(actors, trace)
    run = asyncio.create_task(net.arun(30, stop=lambda _t: cms.finished))
    await asyncio.sleep(0.2)  # listeners up, the traversal connection open
    edge = f"{net.loopback_of(EDGE)}:5060"  # the Edge's SIP port in the run's own block
    with claim_block() as block:
        args = _sipp_args(sipp, "uac-to-cms.xml", tmp_path, block.address(1))
        code, out = await _sipp([*args, edge, "-p", "0"], tmp_path)
    await asyncio.wait_for(run, timeout=35)
    assert code == 0, out
    seen = (tmp_path / "messages.log").read_text(errors="replace")

    # What sipp got: a 200 OK with only its own Via left, the three proxies' Record-Routes
    # and CMS's relay candidate on Expressway-E.
    ok = _first(_messages(seen, "received"), "SIP/2.0 200 OK")
    vias = _headers(ok, "Via")
    assert len(vias) == 1 and vias[0].startswith(f"SIP/2.0/TCP {block.address(1)}:"), ok
    assert _headers(ok, "Record-Route") == ROUTE_FROM_SKYPE, ok
    assert re.search(r"a=candidate:\S+ 1 TCP-PASS \d+ 10\.48\.54\.229 24000 typ relay", ok), ok

    # What the proxies did: the INVITE reached CMS with one Via per hop (Expressway-C's on
    # top, sipp's at the bottom), a Record-Route per proxy and Max-Forwards down by three.
    invite = next(m for m in trace.messages if m.dst == "cms" and m.summary == "INVITE")
    parsed = sip.parse_message(invite.data)
    via_hosts = [v.split()[1].split(":")[0] for v in _headers(invite.data.decode(), "Via")]
    assert via_hosts == [EXPC, EXPE, EDGE, block.address(1)], via_hosts
    assert _headers(invite.data.decode(), "Record-Route") == ROUTE_FROM_SKYPE
    assert _headers(invite.data.decode(), "Max-Forwards") == ["67"]
    assert b"TCP-PASS 2120613887 192.168.1.100 50040 typ host" in parsed.body
    # The hops of the INVITE and of sipp's BYE, in order along the chain.
    hops = [(m.src, m.dst) for m in trace.messages if m.summary == "INVITE"]
    assert hops == [("external", "skype_edge"), ("skype_edge", "expressway_e"),
                    ("expressway_e", "expressway_c"), ("expressway_c", "cms")]  # fmt: skip
    assert [(m.src, m.dst) for m in trace.messages if m.summary == "BYE"] == [
        ("external", "skype_edge"), ("skype_edge", "expressway_e"),
        ("expressway_e", "expressway_c"), ("expressway_c", "cms"),
    ]  # fmt: skip
    # CMS allocated on our Expressway-E for that INVITE and gave the relay back at the BYE.
    assert [m.src for m in trace.find("Allocate Success Response")] == ["expressway_e"]
    assert [m for m in trace.find("Refresh Success Response")
            if m.stun_facts is not None and m.stun_facts.lifetime == 0]  # fmt: skip


async def test_sipp_uas_stands_in_for_cms(tmp_path: Path) -> None:
    sipp = require_tool("sipp")
    # The sharing INVITE alone (sipp's scenario is one dialog); the client gives the media
    # up soon: nothing is allocated behind sipp's relay candidate.
    lab = share_lab(skype_client=SkypeClientSettings(ice_timeout=1.0))
    client, edge = SkypeClient(lab), SkypeEdge(lab)
    actors = [client, edge, ExpresswayE(lab), ExpresswayC(lab)]
    trace = Trace()
    with claim_block() as block:
        cms = (block.address(1), 5060)  # CMS's lab port on sipp's own address
        net = LiveNetwork(actors, trace, external={Address(CMS, 5060): cms})
        args = _sipp_args(sipp, "uas-as-cms.xml", tmp_path, cms[0])
        server = asyncio.create_task(_sipp([*args, "-p", str(cms[1])], tmp_path))
        await asyncio.sleep(0.5)  # sipp listening
        await net.arun(30, stop=lambda _t: client.finished)
        code, out = await asyncio.wait_for(server, timeout=35)
    assert code == 0, out
    seen = (tmp_path / "messages.log").read_text(errors="replace")
    got = _messages(seen, "received")

    # What sipp saw: the client's INVITE after three proxies, each with its Via and its
    # Record-Route, Max-Forwards down by three; then the ACK and BYE along that route.
    invite = _first(got, "INVITE ")
    via_hosts = [v.split()[1].split(":")[0] for v in _headers(invite, "Via")]
    assert via_hosts == [EXPC, EXPE, EDGE, "192.168.1.100"], invite
    assert _headers(invite, "Record-Route") == ROUTE_FROM_SKYPE, invite
    assert _headers(invite, "Max-Forwards") == ["67"], invite
    assert "m=applicationsharing" in invite
    for method in ("ACK", "BYE"):
        request = _first(got, f"{method} ")
        assert request.startswith(f"{method} sip:meeting@10.48.54.230:5060"), request
        assert [v.split()[1].split(":")[0] for v in _headers(request, "Via")] == [
            EXPC, EXPE, EDGE, "192.168.1.100"
        ], request  # fmt: skip
        # Loose routing (RFC 3261 §16.12): each proxy took its own entry off the Route set.
        assert _headers(request, "Route") == [], request

    # What our side did: sipp's 200 OK reached the client with only the client's Via, its
    # relay candidate made the Edge's media target, and the client hung up with BYE.
    ok = next(
        m for m in trace.messages
        if m.dst == "skype_client" and m.summary == "200 OK"
        and (f := m.sip_facts) is not None and f.cseq_method == "INVITE"
    )  # fmt: skip
    assert len(_headers(ok.data.decode(), "Via")) == 1
    assert _headers(ok.data.decode(), "Record-Route") == ROUTE_FROM_SKYPE
    assert edge.relay_target == Address(EXPE, 24000)
    sent = [m.summary for m in trace.messages if m.src == "skype_client" and m.protocol == "SIP"]
    assert sent == ["INVITE", "ACK", "BYE"]
    assert [(m.src, m.dst) for m in trace.messages if m.summary == "BYE"] == [
        ("skype_client", "skype_edge"), ("skype_edge", "expressway_e"),
        ("expressway_e", "expressway_c"), ("expressway_c", "external"),
    ]  # fmt: skip
