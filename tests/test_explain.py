"""``labsim explain`` (issue 14 §2): the run walked through step by step, as Cisco 212580 tells it.

What each step says of the run is checked against the trace, read here independently by typed
facts (the Allocate Success's XOR-RELAYED-ADDRESS, the 200 OK's SDP, the CONNECTION-ID, the
connections); every filter it prints is run through tshark on the capture at CMS and must
select exactly the frames it names, which must be the step's messages as CMS's interfaces saw
them; a fault scenario is marked where it departs from the healthy call, with the run's
diagnosis; every library scenario a "what breaks" line names exists, expects the verdict the
line gives, and departs at that step.
"""

from __future__ import annotations

import functools
import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from labsim.cli import _healthy_lab, main
from labsim.report.diagnose import RULES
from labsim.report.explain import (
    BY_ID,
    STEPS,
    TECHNOTE_POINTS,
    ExplainJson,
    Explanation,
    explain,
    explanation_json,
    find_invite,
    read_call,
    render_text,
    steps_table,
)
from labsim.run import run_scenario
from labsim.scenario import bundled, load
from labsim.trace import MessageRecord, Trace
from labsim.vocabulary import VERDICTS, WORKING
from labsim.wire import sip
from labsim.wire.address import Address
from labsim.wire.facts import SipFacts, StunFacts
from labsim.wireshark import tshark_arguments

from .conftest import require_tool
from .test_cli import env, labsim

ROOT = Path(__file__).parent.parent
#: Steps every healthy call takes (the 21002 refusal is the one that must not happen).
REQUIRED = [s.id for s in STEPS if s.id != "presenter-21002"]
#: The library scenarios the steps' "what breaks" lines name, with the step and the verdict.
BREAKS = [(step.id, b.scenario, b.verdict) for step in STEPS for b in step.breaks if b.scenario]


@functools.cache
def explained(name: str) -> Explanation:
    """A bundled scenario run on the virtual clock and explained against the healthy lab, as
    ``labsim explain NAME`` does."""
    sc = load(bundled(name) or name)
    run = run_scenario(sc, "virtual")
    healthy = run_scenario(_healthy_lab(sc), "virtual")
    return explain(
        run.trace, scenario=sc.name, clock="virtual", outcome=run.outcome.name,
        reason=run.outcome.reason, diagnosis=run.diagnosis, healthy=healthy.trace,
        healthy_name="the healthy lab",
    )  # fmt: skip


def fields(ex: Explanation, step: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in ex.step(step).found.fields:
        out.setdefault(name, []).append(value)
    return out


def stun_records(trace: Trace, method: str, cls: str) -> list[MessageRecord]:
    return [
        m for m in trace.messages
        if isinstance(f := m.facts, StunFacts) and f.method == method and f.cls == cls
    ]  # fmt: skip


def text(ex: Explanation) -> str:
    return "\n".join(render_text(ex))


def flat(said: str) -> str:
    """Text with its folds undone (prose is folded at the width; a test reads sentences)."""
    return " ".join(said.split())


# --- the healthy call, step by step -----------------------------------------------------------


def test_every_step_of_the_healthy_call_happens_and_it_follows_the_healthy_lab() -> None:
    ex = explained("sharing-call")
    assert [s.step.id for s in ex.steps] == [s.id for s in STEPS]
    for step in REQUIRED:
        s = ex.step(step)
        assert s.happened, f"{step} did not happen in the healthy call"
        assert s.found.filters, f"{step} prints no filter that selects its messages"
        assert s.frames, f"{step} names no frame of the capture at CMS"
    assert ex.departure is None
    assert "it follows the healthy call at every step" in flat(text(ex))
    # The one step of a refusal did not happen, and the explanation says so, with the fix.
    presenter = ex.step("presenter-21002")
    assert not presenter.happened
    block = "\n".join(line for line in text(ex).split("\n15. ", 1)[1].split("\n16. ")[0:1])
    assert "Did not happen in this run" in block and "Make Presenter" in block


def test_the_relay_address_is_the_allocate_success_fact_and_in_the_200_ok_sdp() -> None:
    ex = explained("sharing-call")
    trace = ex.call.trace
    success = stun_records(trace, "Allocate", "Success Response")
    assert len(success) == 1
    facts = success[0].stun_facts
    assert facts is not None and facts.relayed is not None
    relayed = facts.relayed
    assert fields(ex, "relay-allocated")["XOR-RELAYED-ADDRESS"] == [str(relayed)]
    # The bytes shown are the attribute as it went on the wire: un-XOR them (RFC 5389 §15.2).
    tlv = next(h for h in ex.step("relay-allocated").found.hex if h.label == "XOR-RELAYED-ADDRESS")
    raw = bytes.fromhex(tlv.bytes.replace(" ", ""))
    assert raw[:2] == b"\x00\x16" and raw[5] == 1
    port = int.from_bytes(raw[6:8], "big") ^ 0x2112
    host = ".".join(str(b ^ c) for b, c in zip(raw[8:12], bytes.fromhex("2112a442"), strict=True))
    assert Address(host, port) == relayed
    # CMS's 200 OK offers exactly that address as its relay candidate.
    ok = next(
        m for m in trace.messages
        if m.src == "cms" and isinstance(f := m.facts, SipFacts) and f.status == 200
        and f.cseq_method == "INVITE" and f.to_tag and "applicationsharing" in f.media
    )  # fmt: skip
    body = (sip.parse_message(ok.data).body or b"").decode()
    line = next(
        x for x in body.splitlines() if x.startswith("a=candidate:") and " typ relay" in x
    )  # fmt: skip
    assert f" {relayed.host} {relayed.port} typ relay" in line
    answer = fields(ex, "answer-sdp")
    assert line in answer["SDP"]
    assert answer["Relay candidate = XOR-RELAYED-ADDRESS"] == [f"yes: {relayed}"]
    assert line in ex.step("answer-sdp").what
    assert str(relayed) in ex.step("relay-allocated").what


def test_the_call_id_connection_id_and_connections_are_the_traces() -> None:
    ex = explained("sharing-call")
    trace = ex.call.trace
    invites = [
        m for m in trace.messages
        if m.hop == 0 and isinstance(f := m.facts, SipFacts) and f.method == "INVITE"
        and f.to_tag is None
    ]  # fmt: skip
    share = next(m.sip_facts for m in invites if "applicationsharing" in m.sip_facts.media)
    av = next(m.sip_facts for m in invites if "applicationsharing" not in m.sip_facts.media)
    assert fields(ex, "sharing-invite")["Call-ID"] == [share.call_id]
    assert share.call_id in ex.step("sharing-invite").what
    # The lab's audio/video call comes first: the explanation names both dialogs' Call-IDs.
    note = ex.step("sharing-invite").found.note
    assert av.call_id != share.call_id and av.call_id in note and share.call_id in note
    allocate = stun_records(trace, "Allocate", "Request")[0]
    attempt = stun_records(trace, "ConnectionAttempt", "Indication")[0]
    bind = stun_records(trace, "ConnectionBind", "Request")[0]
    attempt_facts, bind_facts = attempt.stun_facts, bind.stun_facts
    assert attempt_facts is not None and bind_facts is not None
    # The ConnectionAttempt comes on the Allocate's connection, the ConnectionBind on another.
    assert attempt.connection == allocate.connection != bind.connection
    cid = f"0x{attempt_facts.connection_id:08x}"
    assert fields(ex, "connection-attempt")["CONNECTION-ID"] == [cid]
    assert fields(ex, "connection-bind")["CONNECTION-ID"] == [cid]
    assert fields(ex, "connection-attempt")["The Allocate's connection"] == [
        "yes: the control connection"
    ]
    assert fields(ex, "connection-attempt")["XOR-PEER-ADDRESS"] == [str(attempt_facts.peer)]
    control, data = trace.connections[allocate.connection], trace.connections[bind.connection]
    assert control.server_addr == data.server_addr and control.server_addr.port == 3478
    assert fields(ex, "connection-bind")["Not the control connection"] == [
        f"yes: source port {data.client_addr.port}, the control connection's is "
        f"{control.client_addr.port}"
    ]
    assert [c.id for c in ex.step("turn-after-invite").found.connections] == [control.id]
    assert [c.id for c in ex.step("connection-bind").found.connections] == [data.id]


def test_the_challenge_shows_the_401s_realm_and_nonce() -> None:
    ex = explained("sharing-call")
    challenge = stun_records(ex.call.trace, "Allocate", "Error Response")[0]
    decoded = challenge.decoded()
    assert decoded is not None and not isinstance(decoded, sip.SipMessage)
    from labsim.wire.stun import Message, Nonce, Realm

    assert isinstance(decoded, Message)
    realm, nonce = decoded.get(Realm), decoded.get(Nonce)
    assert realm is not None and nonce is not None
    shown = fields(ex, "challenge-401")
    assert shown["REALM"] == [realm.value] == ["TANDBERG"]
    assert shown["NONCE"] == [nonce.value]
    assert shown["NONCE echoed"] == ["yes, the 401's"]
    assert "TANDBERG" in ex.step("challenge-401").what


def test_the_framed_check_shows_the_labs_bytes() -> None:
    ex = explained("sharing-call")
    checks = ex.step("ice-checks")
    assert "00 6c 00 01 00 58 21 12 a4 42" in [h.bytes for h in checks.found.hex]
    assert fields(ex, "ice-checks")["Valid both ways"][0].startswith("yes")
    reading = ex.step("reading-the-capture")
    assert reading.found.hex[0].bytes == "00 6c 00 01 00 58 21 12 a4 42"
    # The peer's first bytes: sent before the bind, passed on after it (RFC 6062 §5.3-5.4).
    assert fields(ex, "peer-data")["Sent before the bind"][0].startswith("yes")


def test_an_earlier_audio_video_dialog_is_named_beside_the_shares() -> None:
    """When the run opens with the audio/video call (issue 14 §1), the share's INVITE is shown
    as the second dialog, with both Call-IDs."""
    share = explained("sharing-call").call.invite
    assert share is not None
    head, body = share.data.split(b"\r\n\r\n", 1)
    body = body.replace(b"m=applicationsharing 53577 TCP/RTP/SAVP 127", b"m=audio 50020 RTP/SAVP 0")
    body += b"m=video 50030 RTP/SAVP 96\r\n"
    lines = [
        b"Content-Length: %d" % len(body) if line.startswith(b"Content-Length:")
        else line.replace(b"Call-ID: ", b"Call-ID: av-") for line in head.split(b"\r\n")
    ]  # fmt: skip
    audio_video = b"\r\n".join(lines) + b"\r\n\r\n" + body
    trace = Trace()
    trace.opened(0.0, 1, "skype_client", Address("192.168.1.100", 40000), "skype_edge",
                 Address("192.168.1.252", 5060))  # fmt: skip
    trace.sent(0.001, 1, True, audio_video, "sip")
    trace.sent(1.0, 1, True, share.data, "sip")
    found = find_invite(read_call(trace))
    share_id = share.sip_facts.call_id if share.sip_facts else ""
    assert [name for name, _ in found.fields].count("Earlier dialog") == 1
    earlier = dict(found.fields)["Earlier dialog"]
    assert earlier.startswith(f"Call-ID av-{share_id} ") and "m=audio m=video" in earlier
    assert dict(found.fields)["Call-ID"] == share_id
    assert f"av-{share_id}" in found.note and share_id in found.note
    assert "not a reINVITE" in found.note


# --- a fault, against the healthy call --------------------------------------------------------


def test_one_way_binding_departs_at_the_checks_and_quotes_its_diagnosis() -> None:
    ex = explained("one-way-binding-cms-checks")
    assert ex.departure is not None and ex.departure.step == "ice-checks"
    assert [s.step.id for s in ex.steps if s.departs] == ["ice-checks"]
    # What happened instead, in typed facts: CMS's request dropped on its first hop.
    assert "Binding Request cms → expressway_e (dropped by fault rule 1)" in ex.departure.run
    assert "Binding Request cms → expressway_e (delivered)" in ex.departure.healthy
    assert fields(ex, "ice-checks")["Valid both ways"][0].startswith("no")
    # Every step before it is as in the healthy call; the ones the failure stopped are said.
    said = text(ex)
    assert "departs from it at step 12 (ICE checks both ways" in flat(said)
    assert ">> The run departs from the healthy call here" in said
    for step in ("reinvite", "keepalive"):
        assert not ex.step(step).happened
    assert said.count("Did not happen in this run") == 3  # reINVITE, 21002, keepalive
    assert ex.diagnosis.verdict == "one-way-binding"
    assert "Diagnosis: one-way-binding (step: ICE checks)" in said
    assert ex.diagnosis.failure is not None and ex.diagnosis.failure.line in flat(said)
    data = explanation_json(ex)
    assert data["departure"]["step"] == "ice-checks" and data["diagnosis"]["verdict"] == (
        "one-way-binding"
    )


@pytest.mark.parametrize(("step", "scenario", "verdict"), BREAKS, ids=lambda v: str(v))
def test_every_named_scenario_exists_expects_the_verdict_and_departs_at_the_step(
    step: str, scenario: str, verdict: str
) -> None:
    path = bundled(scenario)
    assert path is not None, f"step {step} names {scenario}, which is not in scenarios/"
    sc = load(path)
    assert sc.expect.diagnosis == verdict, f"{scenario} expects {sc.expect.diagnosis}"
    ex = explained(scenario)
    assert ex.diagnosis.verdict == verdict
    if verdict not in WORKING:  # a call that recovered has no failing step
        assert ex.diagnosis.step in BY_ID[step].diagnosis_steps
    assert ex.departure is not None
    assert ex.departure.step in (step, BY_ID[step].part_of), ex.departure
    if BY_ID[step].part_of is not None:
        assert ex.step(step).happened


def test_every_verdict_a_step_names_is_one_the_diagnosis_gives() -> None:
    given = {rule.verdict for rule in RULES}
    for step in STEPS:
        for b in step.breaks:
            assert b.verdict in VERDICTS
            assert b.verdict in given or b.verdict in WORKING, (step.id, b.verdict)


# --- the words ---------------------------------------------------------------------------------


def test_every_step_cites_its_sources_and_gives_a_filter_to_look_with() -> None:
    for step in STEPS:
        assert step.refs and step.why and step.look and step.missing and step.hint
        assert step.part_of is None or step.part_of in BY_ID
    # The references the issue asks for are all there.
    cited = " ".join(ref for step in STEPS for ref in step.refs)
    for source in ("RFC 5766", "RFC 6062 §4", "RFC 6062 §5", "RFC 4571", "RFC 5245", "MS-ICE2",
                   "MS-SDPEXT", "RFC 3261", 'MS-OCSPROT §2.5.19 "Share a Desktop"'):  # fmt: skip
        assert source in cited, source


def test_every_point_of_the_technote_is_in_its_steps_words() -> None:
    ex = explained("sharing-call")
    for point, step, words in TECHNOTE_POINTS:
        s = ex.step(step)
        said = " ".join([s.step.title, s.what, s.step.why, s.look, s.missing, s.found.note,
                         *(f"{n}: {v}" for n, v in s.found.fields)])  # fmt: skip
        assert words in said, f"{point!r}: {words!r} not in step {step}"


def test_the_steps_table_in_the_docs_is_current() -> None:
    docs = (ROOT / "docs" / "explain.md").read_text(encoding="utf-8")
    assert steps_table() in docs, "regenerate with: python -m labsim.report.explain"


# --- the command -------------------------------------------------------------------------------


def test_json_validates_and_its_indexes_point_at_the_steps_messages() -> None:
    result = labsim("explain", "--json", "-", timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert b"1. A new INVITE" in result.stderr  # the text moved to standard error
    data = json.loads(result.stdout)
    parsed = ExplainJson.model_validate(data)
    assert json.loads(parsed.model_dump_json()) == data  # round trip
    messages: list[dict[str, Any]] = data["run"]["messages"]
    steps = {s["id"]: s for s in data["steps"]}
    assert list(steps) == [s.id for s in STEPS]
    for step in data["steps"]:
        for i in step["evidence"]["messages"] + step["evidence"]["context"]:
            assert 0 <= i < len(messages)
        for f in step["wireshark"]:
            shown = step["evidence"]["messages"] + step["evidence"]["context"]
            assert set(f["messages"]) <= set(shown)

    def kinds(step: str) -> set[tuple[str, str]]:
        out = set()
        for i in steps[step]["evidence"]["messages"]:
            f = messages[i]["facts"]
            out.add((f.get("method") or f.get("cseq_method") or "", f.get("cls") or ""))
        return out

    assert kinds("relay-allocated") == {("Allocate", "Success Response")}
    assert kinds("connection-attempt") == {("ConnectionAttempt", "Indication")}
    assert kinds("keepalive") == {("Binding", "Indication")}
    assert {m for m, _ in kinds("reinvite")} == {"INVITE", "ACK"}
    relay = next(f["value"] for f in steps["relay-allocated"]["evidence"]["fields"]
                 if f["name"] == "XOR-RELAYED-ADDRESS")  # fmt: skip
    success = messages[steps["relay-allocated"]["evidence"]["messages"][0]]
    assert success["facts"]["relayed"] == relay
    assert data["departure"] is None and data["compared_with"]


def test_step_without_a_terminal_is_refused_at_once() -> None:
    """--step waits for Enter; with standard input not a terminal it must not hang: refused,
    exit 2, before anything runs."""
    started = time.monotonic()
    result = labsim("explain", "--step", timeout=30)
    assert result.returncode == 2
    assert b"--step waits for Enter" in result.stderr and result.stdout == b""
    assert time.monotonic() - started < 30
    piped = subprocess.run(
        [sys.executable, "-m", "labsim", "explain", "--step"], input=b"\n" * 40,
        capture_output=True, timeout=30, env=env(),
    )  # fmt: skip
    assert piped.returncode == 2


def run_on_terminal_stdin(*args: str, keys: bytes, timeout: float = 60) -> tuple[int, str, str]:
    """``python -m labsim ARGS`` with standard input on a pseudo-terminal fed ``keys``, its
    output in pipes; bounded in time."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "labsim", *args], stdin=slave, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=env(),
    )  # fmt: skip
    os.close(slave)
    try:
        os.write(master, keys)
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        while select.select([master], [], [], 0)[0]:
            try:
                if not os.read(master, 65536):
                    break
            except OSError:
                break
        os.close(master)
    return proc.returncode, out.decode(), err.decode()


def test_step_pauses_between_steps_on_a_terminal() -> None:
    code, out, err = run_on_terminal_stdin("explain", "--step", keys=b"\n" * 20)
    assert code == 0, err
    assert err.count("Enter for the next") == len(STEPS) - 1
    assert f"{len(STEPS)}. The hang-up" in out and "The run's diagnosis" in out
    # q stops the walk after the step it answers.
    code, out, err = run_on_terminal_stdin("explain", "--step", keys=b"\n\nq\n")
    assert code == 0, err
    assert err.count("Enter for the next") == 3
    assert "3. Allocate Request" in out and "4. 401 Unauthorized" not in out


def test_quiet_lists_the_steps_and_verbose_every_hop() -> None:
    quiet = CliRunner().invoke(main, ["explain", "-q"])
    assert quiet.exit_code == 0, quiet.output
    titles = [line for line in quiet.output.splitlines() if line[:1].isdigit()]
    assert [t.split(". ", 1)[0] for t in titles] == [str(n) for n in range(1, len(STEPS) + 1)]
    assert "What happens" not in quiet.output
    verbose = CliRunner().invoke(main, ["explain", "-v", "--width", "200"])
    assert verbose.exit_code == 0
    # Every hop of a step's messages: the sharing INVITE's last one, with its number and time.
    hop = r"#\d+ t=\d+\.\d{6} s expressway_c → cms INVITE \[expressway_c/sip:\d+\] delivered"
    assert re.search(hop, verbose.output), verbose.output[:2000]


def test_an_ascii_terminal_gets_ascii_and_nothing_is_cut(tmp_path: Path) -> None:
    result = labsim("explain", "--width", "60", cwd=tmp_path, PYTHONIOENCODING="ascii")
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode("ascii")
    assert "skype_client -> skype_edge" in out and "section 8.1.1.4" in out
    # Fields, filters and bytes are never folded or cut, whatever the width.
    assert "XOR-RELAYED-ADDRESS: 10.48.54.229:24000" in out
    assert 'sip.Method == "INVITE" && sdp.media.media == "applicationsharing" && !sip.to.tag' in out


def test_a_live_run_is_explained_and_follows_the_healthy_call() -> None:
    result = CliRunner().invoke(main, ["explain", "--clock", "live", "-q"])
    assert result.exit_code == 0, result.output
    assert "Run: live clock; outcome sharing-established" in flat(result.output)
    assert "it follows the healthy call at every step" in flat(result.output)


def test_bad_input_exits_2() -> None:
    unknown = CliRunner().invoke(main, ["explain", "no-such-scenario"])
    assert unknown.exit_code == 2 and "no scenario file or bundled scenario" in unknown.output
    same = CliRunner().invoke(main, ["explain", "--json", "x", "--pcap", "x"])
    assert same.exit_code == 2


# --- Wireshark: every filter printed, run through tshark ---------------------------------------


@pytest.fixture(scope="module")
def tshark_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """tshark's environment with an empty home: no personal plugin or preference."""
    home = tmp_path_factory.mktemp("home")
    return {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}


def frames(path: Path, expr: str, home: dict[str, str], *, plugin: bool = False,
           extra: tuple[str, ...] = ()) -> list[int]:  # fmt: skip
    tshark = require_tool("tshark")
    loads = tshark_arguments() if plugin else []
    result = subprocess.run(
        [tshark, *loads, *extra, "-r", str(path), "-Y", expr, "-T", "fields", "-e",
         "frame.number"], capture_output=True, timeout=60, env=home,
    )  # fmt: skip
    assert result.returncode == 0, f"{expr}: {result.stderr.decode()}"
    return [int(line) for line in result.stdout.decode().split()]


def at_cms(message: dict[str, Any]) -> bool:
    """Whether CMS's interfaces saw this hop: it sent it (a fault may drop it past CMS), or it
    was delivered to it."""
    return bool(message["src"] == "cms" or (message["dst"] == "cms" and
                                            message["fate"] == "delivered"))  # fmt: skip


@pytest.mark.tshark
@pytest.mark.parametrize("scenario", ["sharing-call", "one-way-binding-cms-checks"])
def test_every_filter_selects_exactly_the_steps_frames_at_cms(
    scenario: str, tmp_path: Path, tshark_home: dict[str, str]
) -> None:
    capture = tmp_path / "cms.pcapng"
    result = labsim("explain", scenario, "--json", "-", "--pcap", str(capture), timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    data = json.loads(result.stdout)
    messages = data["run"]["messages"]
    connections = {c["id"]: c for c in data["run"]["connections"]}
    checked = 0
    for step in data["steps"]:
        for f in step["wireshark"]:
            seen = frames(capture, f["filter"], tshark_home, plugin=f["plugin"])
            assert seen == f["frames_at_cms"], (step["id"], f["filter"])
            # As many frames as the step's messages CMS saw, and its connections' SYNs.
            expected = sum(at_cms(messages[i]) for i in f["messages"])
            expected += sum("cms" in (connections[c]["client"], connections[c]["server"])
                            for c in f["connections"])  # fmt: skip
            assert len(seen) == expected, (step["id"], f["filter"], seen)
            checked += 1
        if not step["happened"]:
            # The filter offered to look with finds nothing in this run either.
            assert frames(capture, step["hint"], tshark_home) == [], step["id"]
    assert checked >= 18


@pytest.mark.tshark
def test_the_plugin_filter_selects_every_check_on_every_leg(
    tmp_path: Path, tshark_home: dict[str, str]
) -> None:
    ex = explained("sharing-call")
    legs = tmp_path / "legs.pcapng"
    from labsim.report.pcap import write_pcapng

    write_pcapng(ex.call.trace, legs)
    (with_plugin,) = [f for f in ex.step("ice-checks").found.filters if f.plugin]
    on_wire = [m for m in with_plugin.records if m.on_wire]
    assert len(on_wire) == 12  # request and answer both ways, on the three legs each
    assert len(frames(legs, with_plugin.expr, tshark_home, plugin=True)) == len(on_wire)


@pytest.mark.tshark
def test_decode_as_does_not_undo_wiresharks_switch_to_data(
    tmp_path: Path, tshark_home: dict[str, str]
) -> None:
    """What the reading step says: Decode As STUN on the data connection's port changes
    nothing, and Wireshark decodes the checks itself where it never saw the ConnectionBind
    Success Response (a capture that starts later, or that frame ignored: left out here)."""
    ex = explained("sharing-call")
    capture = tmp_path / "cms.pcapng"
    from labsim.report.pcap import write_pcapng

    write_pcapng(ex.call.trace, capture, capture_at=["cms"])
    port = ex.call.data[0].client_addr.port
    checks = "stun.type == 0x0001 || stun.type == 0x0101"
    assert frames(capture, checks, tshark_home) == []
    assert frames(capture, checks, tshark_home, extra=("-d", f"tcp.port=={port},stun")) == []
    later = tmp_path / "later.pcapng"
    tshark = require_tool("tshark")
    cut = subprocess.run(
        [tshark, "-r", str(capture), "-Y", "!(stun.type == 0x010b)", "-w", str(later)],
        capture_output=True, timeout=60, env=tshark_home,
    )  # fmt: skip
    assert cut.returncode == 0, cut.stderr.decode()
    assert len(frames(later, checks, tshark_home)) == 4
