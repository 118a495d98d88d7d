"""``labsim diagnose FILE``: a capture read back gives the run's diagnosis, or says what its
point cannot see (issue 13, part 3).

* The whole library, each scenario captured at CMS and at Expressway-E (labsim's own capture
  points): the diagnosis of the file is the run's wherever the point sees the fault; where it
  does not (a message lost past the point), the verdict is ``beyond-capture``, never another
  one, and it names the path past the point.
* Reading is robust: segments shuffled, retransmitted, split, mixed with unrelated traffic,
  a capture that starts mid-call, a hole, pcap and pcapng, Linux cooked and raw-IP link
  layers, IPv6 — the same messages come out (a hypothesis property over perturbations).
* A file that is not a capture, or is cut short, exits 2 with one line, never a traceback.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labsim.report.capture import (
    CaptureDiagnosis,
    CaptureError,
    diagnose_capture,
    parse_actor_options,
    read_capture,
)
from labsim.report.evidence import Anomaly
from labsim.report.pcap import write_pcapng
from labsim.run import ACTORS, RunResult, run_scenario
from labsim.scenario import library_dir, load
from labsim.vocabulary import WORKING
from tests.test_diagnosis_sweep import Case, cases, run_fault

__all__ = ["cases"]  # the sweep's fixture: every message of the call, on every hop

LIBRARY = sorted(library_dir().glob("*.yaml"))
POINTS = ("cms", "expressway_e")


@pytest.fixture(scope="module")
def runs() -> dict[str, RunResult]:
    return {f.stem: run_scenario(load(f), "virtual") for f in LIBRARY}


def _pairs(path: tuple[str, ...]) -> set[frozenset[str]]:
    return {frozenset(p) for p in zip(path, path[1:], strict=False)}


def _visible(failure: Anomaly, point: str) -> bool:
    """Whether a capture at ``point`` shows the run's first failure itself, not only its
    consequences: an error answer that crosses the point, a connect the point made or
    refused, a connection the point is an end of that closed, a step the point never took,
    a message the point left unanswered. A message lost on a hop is never seen being lost
    from one end: it leaves the sender whole, and the receiver sees nothing."""
    hop = failure.hop or ()
    if failure.what == "error":
        return point in hop or point in {r.src for r in failure.records} | {
            r.dst for r in failure.records
        }
    if failure.what in ("connect-failed", "closed"):
        return point in hop
    if failure.what == "missing":
        return failure.sender == point
    if failure.what == "lost":
        return failure.how == "unanswered" and point in hop
    return False


@dataclass
class Tally:
    same: int = 0
    located: int = 0
    """beyond-capture, the run's fault on the path it names past the point."""
    elsewhere: int = 0
    """beyond-capture, the run's fault past the point but on another path (a consequence
    came back on the path named)."""


@pytest.mark.parametrize("point", POINTS)
def test_every_library_scenario_diagnosed_from_a_capture_point(
    runs: dict[str, RunResult], point: str, tmp_path: Path,
    record_property: pytest.RecordProperty,
) -> None:  # fmt: skip
    tally, wrong = Tally(), []
    for name, run in runs.items():
        path = tmp_path / f"{name}.pcapng"
        write_pcapng(run.trace, path, capture_at=[point], scenario=name)
        capture = read_capture(path)
        assert capture.point == point, name
        got = diagnose_capture(capture)
        verdict = got.diagnosis.verdict
        if verdict == run.diagnosis.verdict:
            tally.same += 1
            continue
        failure = run.diagnosis.failure
        beyond = got.diagnosis.failure
        if verdict != "beyond-capture" or failure is None or beyond is None:
            wrong.append(f"{name}: {verdict}, the run {run.diagnosis.verdict}\n{got.text()}")
            continue
        if _visible(failure, point):
            wrong.append(f"{name}: beyond-capture for a fault {point} sees ({failure.line})")
            continue
        assert beyond.beyond and beyond.hop is not None and beyond.hop[0] == point, beyond
        assert " → ".join(beyond.beyond) in got.text()  # the path past the point, said
        assert got.blind, "a point view says what it cannot see"
        # The actors the run's fault names (a failed connect names its target's address),
        # all on the path the capture's verdict names past the point: located.
        named = {a for a in (*(failure.hop or ()), failure.sender) if a in ACTORS}
        on_path = _pairs((point, *beyond.beyond))
        if failure.hop is not None and frozenset(failure.hop) in on_path:
            tally.located += 1
        elif named and named <= {point, *beyond.beyond}:
            tally.located += 1
        else:
            tally.elsewhere += 1
    assert not wrong, "\n\n".join(wrong)
    total = tally.same + tally.located + tally.elsewhere
    assert total == len(runs)
    # Most faults are seen at one point or the other; the bundled library is not the measure
    # (the sweeps below are), but a point that could see nothing would be a bug.
    assert tally.same > len(runs) // 2
    record_property("capture_points", {point: vars(tally)})
    print(f"\n{point}: {vars(tally)} of {len(runs)}")


def test_both_points_together_see_every_library_fault(
    runs: dict[str, RunResult], tmp_path: Path
) -> None:
    """A fault past one point is seen at the other, or is a loss between them that neither
    sees being lost (the verdict then names it at one of them)."""
    blind_both = []
    for name, run in runs.items():
        verdicts = []
        for point in POINTS:
            path = tmp_path / f"{name}-{point}.pcapng"
            write_pcapng(run.trace, path, capture_at=[point], scenario=name)
            verdicts.append(diagnose_capture(read_capture(path)).diagnosis.verdict)
        if run.diagnosis.verdict not in verdicts and run.diagnosis.failure is not None:
            failure = run.diagnosis.failure
            if failure.what not in ("lost", "held", "connect-failed"):
                blind_both.append(f"{name}: {verdicts}, the run {run.diagnosis.verdict}")
    assert not blind_both, blind_both


# -- reading: the same messages whatever the capture's shape ----------------------------------


def _frames(path: Path) -> list[tuple[float, bytes]]:
    with path.open("rb") as fh:
        return [(float(ts), bytes(buf)) for ts, buf in dpkt.pcapng.Reader(fh)]


def _write_pcap(frames: list[tuple[float, bytes]], path: Path, linktype: int = 1) -> None:
    with path.open("wb") as fh:
        writer = dpkt.pcap.Writer(fh, snaplen=65535, linktype=linktype)
        for ts, buf in frames:
            writer.writepkt(buf, ts=ts)


def _messages(path: Path) -> dict[tuple[str, str], list[tuple[str, str, str]]]:
    """Each direction of each connection (by its addresses): its messages in stream order
    (who sent, to whom, what). Messages of different connections captured at one instant have
    no order a capture can be held to."""
    out: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
    for m in read_capture(path).trace.messages:
        key = (str(m.src_addr), str(m.dst_addr))
        out.setdefault(key, []).append((m.src, m.dst, m.summary))
    return out


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lab") / "lab.pcapng"
    run = run_scenario(load(library_dir() / "sharing-call.yaml"), "virtual")
    write_pcapng(run.trace, path, scenario="sharing-call")
    return path


def test_the_lab_capture_reads_back_as_the_run(lab: Path) -> None:
    run = run_scenario(load(library_dir() / "sharing-call.yaml"), "virtual")
    capture = read_capture(lab)
    assert [(m.src, m.dst, m.summary) for m in capture.trace.messages if m.protocol != "TCP"] == [
        (m.src, m.dst, m.summary) for m in run.trace.messages if m.protocol != "TCP"
    ]
    assert capture.naming.actors.keys() == {
        "192.168.1.100", "192.168.1.252", "10.48.54.229", "10.48.54.228", "10.48.54.230"
    }  # fmt: skip
    assert diagnose_capture(capture).diagnosis.verdict == "healthy"


def _tcp_of(buf: bytes) -> dpkt.tcp.TCP | None:
    ip = dpkt.ethernet.Ethernet(buf).data
    return ip.data if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.tcp.TCP) else None


def _split(buf: bytes, at: int) -> list[bytes]:
    """A data segment cut in two at payload offset ``at``."""
    eth = dpkt.ethernet.Ethernet(buf)
    ip, tcp = eth.data, eth.data.data
    out = []
    for seq, part in ((tcp.seq, tcp.data[:at]), ((tcp.seq + at) % (1 << 32), tcp.data[at:])):
        t2 = dpkt.tcp.TCP(sport=tcp.sport, dport=tcp.dport, seq=seq, ack=tcp.ack, flags=tcp.flags,
                          off=5, win=tcp.win, data=part)  # fmt: skip
        ip2 = dpkt.ip.IP(src=ip.src, dst=ip.dst, p=ip.p, ttl=ip.ttl, id=ip.id, data=t2)
        ip2.len = 20 + len(bytes(t2))
        out.append(bytes(dpkt.ethernet.Ethernet(src=eth.src, dst=eth.dst, type=eth.type, data=ip2)))
    return out


@st.composite
def perturbed(draw: st.DrawFn, frames: list[tuple[float, bytes]]) -> list[tuple[float, bytes]]:
    """The capture with data segments split, duplicated (retransmitted) and swapped with
    their neighbour (out of order), and unrelated frames (UDP, other TCP) mixed in."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    out: list[tuple[float, bytes]] = []
    for ts, buf in frames:
        tcp = _tcp_of(buf)
        pieces = [buf]
        if tcp is not None and len(tcp.data) > 2 and rng.random() < 0.3:
            pieces = _split(buf, rng.randrange(1, len(tcp.data)))
        for piece in pieces:
            out.append((ts, piece))
            if rng.random() < 0.1:
                out.append((ts, piece))  # a retransmission
    for _ in range(rng.randrange(0, 20)):
        i = rng.randrange(0, len(out) - 1)
        if _tcp_of(out[i][1]) is not None and _tcp_of(out[i + 1][1]) is not None:
            (t1, a), (t2, b) = out[i], out[i + 1]
            out[i], out[i + 1] = (t1, b), (t2, a)  # captured out of order, same stamps kept
    for _ in range(rng.randrange(0, 5)):
        udp = dpkt.udp.UDP(sport=5353, dport=5353, data=b"unrelated")
        udp.ulen = 8 + 9
        ip = dpkt.ip.IP(src=b"\x0a\x00\x00\x01", dst=b"\x0a\x00\x00\x02", p=17, data=udp)
        ip.len = 20 + len(bytes(udp))
        eth = dpkt.ethernet.Ethernet(src=b"\x00" * 6, dst=b"\x00" * 6, data=ip)
        out.insert(rng.randrange(0, len(out)), (out[0][0], bytes(eth)))
    return out


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_reading_survives_reordering_retransmission_splits_and_noise(
    lab: Path, tmp_path: Path, data: st.DataObject
) -> None:
    frames = _frames(lab)
    changed = data.draw(perturbed(frames))
    path = tmp_path / "perturbed.pcap"
    _write_pcap(changed, path)
    assert _messages(path) == _messages(lab)


def test_a_capture_that_starts_mid_call_resynchronises(lab: Path, tmp_path: Path) -> None:
    frames = _frames(lab)
    # Drop everything before the first ACK of the INVITE dialog's answer: the SYNs and the
    # first messages are gone, and some streams start inside a message.
    start = len(frames) // 3
    cut = frames[start:]
    first = next(i for i, (_, b) in enumerate(cut) if (t := _tcp_of(b)) is not None and t.data)
    eth = dpkt.ethernet.Ethernet(cut[first][1])
    tcp = eth.data.data
    cut[first] = (cut[first][0], _split(cut[first][1], len(tcp.data) // 2)[1])  # mid-message
    path = tmp_path / "late.pcap"
    _write_pcap(cut, path)
    capture = read_capture(path)
    full = _messages(lab)
    got = _messages(path)
    decoded = 0
    for key, messages in got.items():
        # On each direction, what decoded is the end of what the whole capture shows: the
        # stream picks up at the first message start after the cut.
        # (Its hosts may go unnamed: the INVITEs that tell the SIP hops apart are cut off.)
        whole = [m[2] for m in messages if not m[2].startswith("TCP data")]
        assert whole == [m[2] for m in full[key][len(full[key]) - len(whole) :]], key
        decoded += len(whole)
    assert decoded > sum(map(len, full.values())) // 2
    assert any("capture starts after" in n for n in capture.notes)
    assert any("TCP data" in m[2] for ms in got.values() for m in ms)  # the cut message


def test_a_hole_in_a_stream_is_skipped_and_said(lab: Path, tmp_path: Path) -> None:
    frames = _frames(lab)
    i = next(
        i for i, (_, b) in enumerate(frames)
        if (t := _tcp_of(b)) is not None and t.data.startswith(b"ACK ")
    )  # fmt: skip
    path = tmp_path / "hole.pcap"
    _write_pcap(frames[:i] + frames[i + 1 :], path)
    capture = read_capture(path)
    assert any("never captured" in n for n in capture.notes)
    summaries = [m.summary for m in capture.trace.messages]
    before = read_capture(lab).trace.messages
    assert summaries.count("ACK") == [m.summary for m in before].count("ACK") - 1


def _cooked(buf: bytes) -> bytes:
    """The frame as ``tcpdump -i any`` saves it: Linux cooked header v1 (16 bytes)."""
    eth = dpkt.ethernet.Ethernet(buf)
    return b"\x00\x00\x00\x01\x00\x06" + eth.src + b"\x00\x00" + b"\x08\x00" + bytes(eth.data)


def test_linux_cooked_and_raw_ip_captures_read_the_same(lab: Path, tmp_path: Path) -> None:
    frames = _frames(lab)
    sll = tmp_path / "any.pcap"
    _write_pcap([(ts, _cooked(b)) for ts, b in frames], sll, linktype=113)
    raw = tmp_path / "raw.pcap"
    _write_pcap([(ts, bytes(dpkt.ethernet.Ethernet(b).data)) for ts, b in frames], raw, 101)
    assert _messages(sll) == _messages(lab) == _messages(raw)


def test_actors_named_on_the_command_line_win(lab: Path) -> None:
    capture = read_capture(lab, parse_actor_options(["10.48.54.230=expressway_c"]))
    assert capture.naming.actors["10.48.54.230"] == "expressway_c"
    assert capture.naming.why["10.48.54.230"] == "named on the command line"
    with pytest.raises(ValueError, match="ADDRESS=ACTOR"):
        parse_actor_options(["cms"])
    with pytest.raises(ValueError, match="not an IP address"):
        parse_actor_options(["host=cms"])
    with pytest.raises(ValueError, match="the actors are"):
        parse_actor_options(["10.0.0.1=bob"])


# -- bad files --------------------------------------------------------------------------------


def _bad_files(lab: Path, tmp: Path) -> dict[str, Path]:
    data = lab.read_bytes()
    files = {
        "empty": b"",
        "text": b"INVITE sip:meeting@example.com SIP/2.0\r\n\r\n",
        "random": random.Random(1).randbytes(4096),
        "cut-in-a-block": data[: len(data) // 2 + 3],
        "cut-in-the-header": data[:20],
        "pcap-header-only": bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000"),
        "bad-linktype": bytes.fromhex("d4c3b2a1020004000000000000000000ffff0000e3000000"),
    }
    out = {}
    for name, content in files.items():
        out[name] = tmp / f"{name}.pcapng"
        out[name].write_bytes(content)
    out["missing"] = tmp / "nothing-here.pcapng"
    out["a-folder"] = tmp
    return out


def test_bad_files_are_typed_errors(lab: Path, tmp_path: Path) -> None:
    for name, path in _bad_files(lab, tmp_path).items():
        try:
            read_capture(path)
        except CaptureError as exc:
            assert str(path) in str(exc), name
        else:
            # A capture cut short inside a frame keeps the frames before it, and says so.
            assert name == "cut-in-a-block", name
            assert any("cut short" in n for n in read_capture(path).notes)


def test_labsim_diagnose_exits_2_on_bad_files_without_a_traceback(
    lab: Path, tmp_path: Path
) -> None:
    for name, path in _bad_files(lab, tmp_path).items():
        done = subprocess.run(
            [sys.executable, "-m", "labsim", "diagnose", str(path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2, (name, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr and done.stderr.startswith("labsim: "), name
        assert len(done.stderr.strip().splitlines()) == 1, (name, done.stderr)
        # A file cut inside a frame is reported up to the cut, as tshark does, then exits 2.
        assert ("Diagnosis:" in done.stdout) == (name == "cut-in-a-block"), name


def test_labsim_diagnose_prints_the_ladder_view_and_verdict(lab: Path, tmp_path: Path) -> None:
    out = tmp_path / "d.json"
    done = subprocess.run(
        [sys.executable, "-m", "labsim", "diagnose", str(lab), "--json", str(out),
         "--width", "140"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Allocate Request" in done.stdout and "Diagnosis: healthy" in done.stdout
    assert "10.48.54.229 is expressway_e: answers Allocate requests" in done.stdout
    got = json.loads(out.read_text())
    assert got["diagnosis"]["verdict"] == "healthy" and got["capture"]["point"] is None
    assert got["capture"]["actors"]["10.48.54.230"] == "cms"
    assert got["outcome"] == "sharing-established"
    assert [m["summary"] for m in got["messages"]][:2] == ["INVITE", "100 Trying"]


def test_labsim_diagnose_exits_1_on_a_failure_and_says_why(tmp_path: Path) -> None:
    run = run_scenario(load(library_dir() / "wrong-turn-credentials.yaml"), "virtual")
    path = tmp_path / "creds.pcapng"
    write_pcapng(run.trace, path, capture_at=["cms"], scenario="wrong-turn-credentials")
    done = subprocess.run(
        [sys.executable, "-m", "labsim", "diagnose", str(path), "--quiet"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Diagnosis: turn-auth-failed" in done.stdout
    assert "captured at cms" in done.stdout and "What cms cannot see" in done.stdout


# -- the sweep: every message lost or held on every hop, read at both points ------------------


def _covered(run: RunResult) -> bool:
    """The message the fault dropped on its hop was followed on its connection, the same way,
    by one the receiver got: the receiver's TCP acknowledged past it (labsim's capture point
    keeps each end's numbering whole, as a middlebox that removes a message must), so at its
    sender it looks delivered. The meeting's audio/video call hangs up after the share, so a
    lost answer to the share's BYE is followed by the audio/video call's own."""
    dropped = [m for m in run.trace.messages if m.rule == 1 and m.fate == "dropped"]
    return any(
        later.connection == m.connection and later.src == m.src and later.t > m.t
        and later.delivered
        for m in dropped for later in run.trace.messages
    )  # fmt: skip


def _judge(run: RunResult, got: CaptureDiagnosis, point: str, hop: tuple[str, str]) -> str:
    """How the capture's diagnosis stands against the run's (``hop``: where the fault acted):
    ``same`` verdict; ``working`` (both say the call worked); ``located`` (beyond-capture, the
    fault's hop on the path past the point it names); ``unseen-hang-up`` (the call worked as
    far as the point saw, and the fault came after its last message: a hang-up's answer lost
    past it, one the point's TCP saw acknowledged (:func:`_covered`), or the meeting's
    audio/video call's hang-up, which a capture at one point cannot tell from a call that
    stays up: users stay in a meeting after they share); else ``wrong: …``."""
    verdict, expected = got.diagnosis.verdict, run.diagnosis.verdict
    if verdict == expected:
        return "same"
    if verdict in WORKING and expected in WORKING:
        return "working"
    if verdict in WORKING and got.outcome.name == "sharing-established":
        failure = run.diagnosis.failure
        if (
            failure is not None
            and failure.step == "hang-up"
            and (point not in hop or "A/V " in failure.kind or _covered(run))
        ):
            return "unseen-hang-up"
        return f"wrong: {verdict} (the call worked) for the run's {expected}"
    beyond = got.diagnosis.failure
    if verdict == "beyond-capture" and beyond is not None:
        if set(hop) <= {point, *beyond.beyond}:
            return "located"
        return f"wrong: beyond-capture on {(point, *beyond.beyond)}, the fault on {hop}"
    return f"wrong: {verdict} for the run's {expected}"


@pytest.mark.parametrize("action", ["drop", "delay"])
def test_every_message_lost_or_held_on_every_hop_read_at_both_points(
    cases: list[tuple[Case, str]], action: str, tmp_path: Path,
    record_property: pytest.RecordProperty,
) -> None:  # fmt: skip
    tally: Counter[str] = Counter()
    wrong = []
    for case, _words in cases:
        src, dst = case[0], case[1]
        run = run_fault(case, action)
        for point in POINTS:
            path = tmp_path / f"{point}.pcapng"
            write_pcapng(run.trace, path, capture_at=[point])
            got = diagnose_capture(read_capture(path))
            judged = _judge(run, got, point, (src, dst))
            tally[judged.split(":")[0]] += 1
            if judged.startswith("wrong"):
                wrong.append(f"{action} {case} at {point}: {judged}")
    record_property(f"sweep_{action}", dict(tally))
    print(f"\n{action} at {', '.join(POINTS)}: {dict(tally)}")
    if action == "drop":
        assert not wrong, "\n".join(wrong)
    else:
        # Held messages: labsim's capture point draws a message queued behind a held one on
        # its connection, and a held message whose sender heard back meanwhile, when it went
        # on the wire rather than when it left its sender (docs/diagnosis.md, "Read from a
        # capture"), and a few verdicts then read the late message as the fault. Bounded here
        # so that it cannot grow unseen.
        assert tally["wrong"] <= len(cases) * len(POINTS) // 10, "\n".join(wrong)


# -- captures as customers have them ------------------------------------------------------------


def _readdress(buf: bytes, change: dict[tuple[bytes, bytes], tuple[bytes, bytes]]) -> bytes:
    """The frame with (src, dst) IPv4 pairs replaced as ``change`` says."""
    eth = dpkt.ethernet.Ethernet(buf)
    ip = eth.data
    if isinstance(ip, dpkt.ip.IP) and (ip.src, ip.dst) in change:
        ip.src, ip.dst = change[(ip.src, ip.dst)]
        ip.sum = 0
        if isinstance(ip.data, dpkt.tcp.TCP):
            ip.data.sum = 0
        return bytes(eth)
    return buf


def _ip(text: str) -> bytes:
    return bytes(int(x) for x in text.split("."))


@pytest.mark.parametrize("at", [None, "expressway_e"])
def test_a_dual_homed_expressway_e_is_one_actor(tmp_path: Path, at: str | None) -> None:
    """Expressway-E with an inside (10.48.54.229, toward CMS and Expressway-C) and an outside
    address (192.168.1.229, toward the Edge): both are named expressway_e, and its capture
    point is found on either."""
    run = run_scenario(load(library_dir() / "sharing-call.yaml"), "virtual")
    lab = tmp_path / "lab.pcapng"
    write_pcapng(run.trace, lab, capture_at=[at] if at else None)
    inside, outside, edge = _ip("10.48.54.229"), _ip("192.168.1.229"), _ip("192.168.1.252")
    change = {(edge, inside): (edge, outside), (inside, edge): (outside, edge)}
    path = tmp_path / "dual.pcap"
    _write_pcap([(ts, _readdress(b, change)) for ts, b in _frames(lab)], path)
    capture = read_capture(path, at=at)
    assert capture.naming.actors["192.168.1.229"] == "expressway_e", capture.naming.why
    assert capture.naming.actors["10.48.54.229"] == "expressway_e"
    assert capture.point == at
    assert diagnose_capture(capture).diagnosis.verdict == "healthy"


def test_unrelated_tcp_is_left_out_and_tls_is_said(lab: Path, tmp_path: Path) -> None:
    frames = _frames(lab)
    extra = []
    for i, payload in enumerate((b"\x16\x03\x01\x00\x05hello", b"GET / HTTP/1.1\r\n\r\n")):
        for seq, data in ((1000, payload), (1000 + len(payload), b"more")):
            flags = dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH
            port = 5061 if i == 0 else 80
            tcp = dpkt.tcp.TCP(sport=40000 + i, dport=port, seq=seq, flags=flags, off=5, data=data)
            src = _ip("10.48.54.230") if i == 0 else _ip("172.16.0.1")
            ip = dpkt.ip.IP(src=src, dst=_ip("172.16.0.2"), p=6, data=tcp)
            ip.len = 20 + len(bytes(tcp))
            eth = dpkt.ethernet.Ethernet(src=b"\x00" * 6, dst=b"\x00" * 6, data=ip)
            extra.append((frames[5][0], bytes(eth)))
    path = tmp_path / "noisy.pcap"
    _write_pcap(frames[:5] + extra + frames[5:], path)
    capture = read_capture(path)
    assert any("between hosts not in the call" in n for n in capture.notes), capture.notes
    assert any("carries TLS" in n for n in capture.notes), capture.notes
    assert "172.16.0.1" not in {c.client_addr.host for c in capture.trace.connections.values()}
    # The TLS connection is CMS's: kept, and its unacknowledged bytes are all it departs by.
    assert diagnose_capture(capture).diagnosis.verdict in WORKING
