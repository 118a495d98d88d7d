"""A real TURN server in the call: coturn stands in for Expressway-E's TURN service
(``actors.expressway_e.turn.external``).

coturn runs on a loopback block of its own with TCP relays (RFC 6062, on by default), the lab's
credentials and realm, ``--server-relay`` (no permission check on peers connecting to a relay,
as the lab's Expressway-E relays without a CreatePermission) and ``--external-ip
10.48.54.229/ITS-ADDRESS``, so its XOR-RELAYED-ADDRESS reads as the lab's Expressway-E. The
whole sharing call runs through it on the live clock: CMS allocates there, the Skype Edge
connects to its relay (the run carries Expressway-E's lab address to coturn for the relay
port) and the ICE checks cross coturn's relay. tshark reads the run's capture.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from labsim.cli import main
from labsim.report.pcap import write_pcapng
from labsim.run import NeedsLiveClock, RunResult, run_scenario
from labsim.scenario import ScenarioError, loads
from labsim.wire import sip

from .conftest import require_tool
from .coturn import Coturn, coturn
from .labs import LAB
from .stun_client import PASSWORD, REALM, USER

EXPE = "10.48.54.229"
#: coturn's relays are reported at Expressway-E's lab address, as Expressway-E reports its own.
COTURN_FLAGS = ("--server-relay", "--verbose")


def _scenario_text(
    server: Coturn | None,
    *,
    password: str = PASSWORD,
    realm: str = REALM,
    expect: str = "",
    clock: str = "live",
    address: str | None = None,
) -> str:
    host = address or (server.host if server is not None else "127.0.0.1")
    port = server.port if server is not None else 3478
    return f"""extends: {LAB}
name: external-turn
clock: {clock}
deadline: 15
actors:
  expressway_e:
    turn:
      external: {{address: {host}, port: {port}, username: {USER}, password: {password},
                 realm: {realm}}}
  cms:
    turn: {{keepalive_first: 0.3}}
  skype_client: {{ice_timeout: 1.0}}
call: {{hold: 1.0}}
{expect}
"""  # fmt: skip


def _run(server: Coturn, **kw: str) -> RunResult:
    return run_scenario(loads(_scenario_text(server, **kw), source="external-turn.yaml"))


def _tshark(path: Path, *args: str) -> list[str]:
    exe = require_tool("tshark")
    out = subprocess.run(
        [exe, "-r", str(path), *args], capture_output=True, text=True, timeout=30, check=True
    )
    return out.stdout.splitlines()


@pytest.mark.coturn
@pytest.mark.tshark
def test_the_sharing_call_runs_through_coturn(tmp_path: Path) -> None:
    with coturn(tmp_path, *COTURN_FLAGS, external_ip=EXPE) as server:
        result = _run(server)
    log = server.log.read_text(errors="replace")  # complete once coturn has stopped
    # The lab's expectations hold as written (their expressway_e is coturn's TURN service):
    # Allocate, ConnectionAttempt, ConnectionBind, the Binding Indication keepalive.
    assert result.failures == [], result.failures
    assert result.outcome.name == "sharing-established"
    assert result.diagnosis.verdict == "healthy", result.diagnosis
    trace = result.trace
    stun = [(m.src, m.dst, m.summary) for m in trace.messages if m.protocol == "STUN"]
    # Expressway-E ran no TURN server: every TURN message went to or came from coturn.
    assert not [s for s in stun if "expressway_e" in s[:2]]
    turn = [(src, dst, s.split(" XOR")[0]) for src, dst, s in stun
            if not s.startswith("Binding")]  # fmt: skip
    assert turn[:4] == [
        ("cms", "external", "Allocate Request TCP lifetime: 600"),
        ("external", "cms", turn[1][2]),
        ("cms", "external", "Allocate Request user: turn realm: TANDBERG with nonce TCP"),
        ("external", "cms", "Allocate Success Response"),
    ]
    assert turn[1][2].startswith("Allocate Error Response error-code: 401")
    assert ("external", "cms", "ConnectionBind Success Response") in turn
    # coturn's relay, at the lab address, is CMS's candidate in the 200 OK the Skype side got.
    allocated = next(m for m in trace.find("Allocate Success Response"))
    relayed = allocated.stun_facts.relayed if allocated.stun_facts is not None else None
    assert relayed is not None and relayed.host == EXPE and relayed.port in server.relay_ports
    ok = next(
        m for m in trace.messages
        if m.dst == "skype_client" and m.summary == "200 OK" and b"typ relay" in m.data
    )  # fmt: skip
    assert f"{EXPE} {relayed.port} typ relay".encode() in sip.parse_message(ok.data).body
    # The Edge's media connection went to that relay: a connection to coturn from the Edge's
    # relay port, carrying both ICE checks.
    edge_conns = [c for c in trace.connections.values()
                  if c.client == "skype_edge" and c.server == "external"]  # fmt: skip
    assert [(c.server_addr.host, c.server_addr.port, c.client_addr.port) for c in edge_conns] == [
        (EXPE, relayed.port, 53577)
    ]
    # CMS dialled Expressway-E's lab TURN port; the run carried it to coturn.
    cms_conns = {(c.server_addr.host, c.server_addr.port) for c in trace.connections.values()
                 if c.client == "cms" and c.server == "external"}  # fmt: skip
    assert cms_conns == {(EXPE, 3478)}
    # coturn itself saw the TCP allocation and the peer's connection bound to it.
    assert re.search(r"realm <TANDBERG> user <turn>: incoming packet ALLOCATE processed, success",
                     log), log[-3000:]  # fmt: skip
    assert "CONNECTION_BIND processed, success" in log, log[-3000:]

    pcap = tmp_path / "external-turn.pcapng"
    write_pcapng(trace, pcap, scenario="external-turn")
    rows = _tshark(pcap, "-Y", "stun", "-T", "fields", "-e", "ip.src", "-e", "ip.dst",
                   "-e", "stun.type.method")  # fmt: skip
    methods = {tuple(r.split("\t")) for r in rows}
    cms, allocate, connection_bind = "10.48.54.230", "0x0003", "0x000b"
    assert (cms, EXPE, allocate) in methods, rows
    assert (cms, EXPE, connection_bind) in methods, rows
    assert (EXPE, cms, connection_bind) in methods, rows
    info = _tshark(pcap, "-Y", "stun")
    assert any("Allocate Success Response" in line for line in info), info
    assert any("ConnectionBind Success Response" in line for line in info), info
    assert _tshark(pcap, "-Y", "_ws.malformed || _ws.expert.severity >= error") == []


@pytest.mark.coturn
def test_wrong_credentials_on_coturn_are_diagnosed(tmp_path: Path) -> None:
    expect = "expect: {outcome: turn-failed, diagnosis: turn-auth-failed, messages: []}"
    with coturn(tmp_path, *COTURN_FLAGS) as server:
        result = _run(server, password="not-the-secret", expect=expect)
    log = server.log.read_text(errors="replace")
    assert result.failures == [], result.failures
    assert result.diagnosis.verdict == "turn-auth-failed"
    errors = [m.summary for m in result.trace.find("Allocate Error Response")]
    assert len(errors) == 2 and all("401" in e for e in errors), errors
    assert "Allocate Success Response" not in {m.summary for m in result.trace.messages}
    # coturn refused the key made with the wrong password (not a missing user).
    assert "user turn credentials are incorrect" in log, log[-3000:]
    assert "user <turn>: incoming packet message processed, error 401" in log, log[-3000:]


@pytest.mark.coturn
def test_a_realm_the_server_does_not_use_fails_before_any_credentials(tmp_path: Path) -> None:
    expect = "expect: {outcome: turn-failed, messages: []}"
    with coturn(tmp_path, *COTURN_FLAGS) as server:
        result = _run(server, realm="example.org", expect=expect)
    assert result.failures == [], result.failures
    allocates = [m for m in result.trace.find("Allocate Request") if m.src == "cms"]
    assert len(allocates) == 1  # the unauthenticated one: no key was sent to a strange realm
    assert any("the server's realm is 'TANDBERG', not 'example.org'" in log.text
               for log in result.trace.logs)  # fmt: skip


def test_the_virtual_clock_cannot_hold_a_real_server(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError) as err:
        loads(_scenario_text(None, clock="virtual"), source="external-turn.yaml")
    assert "external-turn.yaml:8: actors.expressway_e.turn.external: an external TURN server" \
        in str(err.value)  # fmt: skip
    sc = loads(_scenario_text(None), source="external-turn.yaml")
    with pytest.raises(NeedsLiveClock):
        run_scenario(sc, "virtual")
    path = tmp_path / "external-turn.yaml"
    path.write_text(_scenario_text(None))
    for args in (
        ["run", str(path), "--clock", "virtual"],
        ["test", str(path), "--clock", "virtual"],
    ):
        out = CliRunner().invoke(main, args)
        assert out.exit_code == 2, out.output
        assert "runs in real time: run it with --clock live" in out.output, out.output


def test_an_external_server_off_loopback_is_refused() -> None:
    with pytest.raises(ScenarioError) as err:
        loads(_scenario_text(None, address="192.0.2.7"), source="external-turn.yaml")
    assert "external-turn.yaml:8: actors.expressway_e.turn.external.address: 192.0.2.7 is not " \
        "a loopback address" in str(err.value)  # fmt: skip
