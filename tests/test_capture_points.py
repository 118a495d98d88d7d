"""Capture points (issue 13): the pcapng as one actor's interfaces saw the run.

The lab's capture was taken at CMS, so `--capture-at cms` must show its ten rows and nothing in
between; every library scenario, at every actor, must show exactly what that actor sent and was
delivered; a dropped message shows at its sender only."""

from __future__ import annotations

import struct
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import dpkt
import pytest
from click.testing import CliRunner

from labsim import __version__
from labsim.cli import main
from labsim.report.pcap import write_pcapng
from labsim.run import ACTORS, RunResult, run_scenario
from labsim.scenario import library_dir, load, loads
from labsim.trace import ClosedRecord, MessageRecord, Trace
from labsim.wire.framing import frame_rfc4571

from .conftest import require_tool
from .test_call import LAB, LAB_ROWS

CMS, EXPRESSWAY_E = "10.48.54.230", "10.48.54.229"
LIBRARY = sorted(p for p in library_dir().glob("*.yaml"))


# -- a pcapng reader of our own: blocks, options, interfaces (pcapng §3, §4.1, §4.2, §4.3) --------


@dataclass
class Pcapng:
    section: dict[int, list[bytes]]
    """Section header options by code (2: shb_hardware … 4: shb_userappl, 1: comment)."""
    interfaces: list[dict[int, list[bytes]]] = field(default_factory=list)
    packets: list[tuple[int, bytes]] = field(default_factory=list)
    """(interface id, frame) in file order."""


def _options(body: bytes) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = defaultdict(list)
    at = 0
    while at + 4 <= len(body):
        code, length = struct.unpack_from("<HH", body, at)
        if code == 0:
            break
        out[code].append(body[at + 4 : at + 4 + length])
        at += 4 + (length + 3) // 4 * 4
    return out


def read_pcapng(path: Path) -> Pcapng:
    data = path.read_bytes()
    assert data[8:12] == b"\x4d\x3c\x2b\x1a", "little-endian section expected on this machine"
    result: Pcapng | None = None
    at = 0
    while at < len(data):
        kind, length = struct.unpack_from("<II", data, at)
        body = data[at + 8 : at + length - 4]
        if kind == 0x0A0D0D0A:
            result = Pcapng(_options(body[16:]))
        elif kind == 1:
            assert result is not None
            result.interfaces.append(_options(body[8:]))
        elif kind == 6:
            assert result is not None
            iface, _, _, caplen, _ = struct.unpack_from("<IIIII", body)
            result.packets.append((iface, body[20 : 20 + caplen]))
        at += length
    assert result is not None
    return result


# -- what a point must show -----------------------------------------------------------------------


def _bytes_of(message: MessageRecord) -> bytes:
    data = message.data + bytes(max(0, message.size - len(message.data)))
    return frame_rfc4571(message.data) if message.framed else data


def expected_streams(trace: Trace, actor: str) -> dict[tuple[str, int, str, int], list[bytes]]:
    """Per (src host, src port, dst host, dst port): the messages ``actor``'s interface must
    show, in order: all it sent on its connections, dropped ones too, and those delivered to it."""
    out: dict[tuple[str, int, str, int], list[bytes]] = defaultdict(list)
    # TCP carries nothing after a reset, nor from a side after its own FIN (the writer's rule:
    # such a send is in the trace, in flight, but no segment leaves).
    ended = {
        r.connection.id: i for i, r in enumerate(trace.timeline) if isinstance(r, ClosedRecord)
    }
    for index, m in enumerate(trace.timeline):
        if not isinstance(m, MessageRecord):
            continue
        conn = trace.connections.get(m.connection)
        if conn is None or actor not in (conn.client, conn.server):
            continue
        if index > ended.get(conn.id, len(trace.timeline)) and conn.closed_by is not None:
            closer = conn.server if conn.closed_by == conn.server else conn.client
            if conn.reset or m.src == closer:
                continue
        if m.src == actor or (m.dst == actor and m.fate == "delivered"):
            key = (m.src_addr.host, m.src_addr.port, m.dst_addr.host, m.dst_addr.port)
            out[key].append(_bytes_of(m))
            journey = m.journey
            assert journey is not None
            assert any(actor in (h.src, h.dst) for h in journey.hops), m
    return out


def captured_streams(pcap: Pcapng) -> dict[tuple[str, int, str, int], bytes]:
    """Per direction, the TCP payload in sequence order, checking it has neither gap nor
    overlap (the numbering a point shows is consistent)."""
    streams: dict[tuple[str, int, str, int], bytes] = defaultdict(bytes)
    next_seq: dict[tuple[str, int, str, int], int] = {}
    for _, frame in pcap.packets:
        ip = dpkt.ethernet.Ethernet(frame).data
        tcp = ip.data
        key = (dpkt.utils.inet_to_str(ip.src), tcp.sport, dpkt.utils.inet_to_str(ip.dst), tcp.dport)
        if tcp.flags & dpkt.tcp.TH_SYN:
            next_seq[key] = (tcp.seq + 1) % 2**32
            continue
        if tcp.data:
            assert next_seq.get(key) == tcp.seq, (key, "a gap or an overlap")
            next_seq[key] = (tcp.seq + len(tcp.data)) % 2**32
            streams[key] += bytes(tcp.data)
    return streams


@pytest.fixture(scope="module")
def library_runs() -> dict[str, RunResult]:
    return {p.stem: run_scenario(load(p), "virtual") for p in LIBRARY}


@pytest.mark.parametrize("actor", ACTORS)
def test_every_point_shows_what_its_actor_sent_and_was_delivered(
    library_runs: dict[str, RunResult], actor: str, tmp_path: Path
) -> None:
    for name, result in library_runs.items():
        pcap = tmp_path / f"{name}.pcapng"
        write_pcapng(result.trace, pcap, capture_at=[actor], scenario=name)
        got = captured_streams(read_pcapng(pcap))
        want = expected_streams(result.trace, actor)
        assert set(got) == {k for k, v in want.items() if any(v)}, name
        for key, messages in want.items():
            assert got.get(key, b"") == b"".join(messages), (name, actor, key)
        # Every interface holds frames of this actor's connections only.
        hosts = {c.client_addr.host for c in result.trace.connections.values() if c.client == actor}
        hosts |= {
            c.server_addr.host for c in result.trace.connections.values() if c.server == actor
        }
        for _, frame in read_pcapng(pcap).packets:
            ip = dpkt.ethernet.Ethernet(frame).data
            src, dst = dpkt.utils.inet_to_str(ip.src), dpkt.utils.inet_to_str(ip.dst)
            assert hosts & {src, dst}, (name, actor, src, dst)


def test_the_sweep_would_see_a_missing_message(library_runs: dict[str, RunResult]) -> None:
    # The sweep's expectation is not vacuous: CMS sends and is delivered messages on the
    # TURN connection, and the every-leg capture holds other actors' legs a point must not.
    trace = library_runs["sharing-call"].trace
    want = expected_streams(trace, "cms")
    assert sum(len(v) for v in want.values()) >= 20
    assert (CMS, 40000, EXPRESSWAY_E, 3478) in want


# -- the lab's ten rows at CMS ---------------------------------------------------------------------


#: A file of several points holds each segment between two of them twice, and tshark (4.0)
#: analyses TCP across interfaces: it would take the second copy for a retransmission and not
#: decode its payload. Reading such a file, turn that analysis off.
SEVERAL_POINTS = ("-o", "tcp.analyze_sequence_numbers:FALSE")


def _tshark(
    pcap: Path, display: str, *names: str, options: tuple[str, ...] = ()
) -> list[list[str]]:
    cmd = [require_tool("tshark"), "-r", str(pcap), *options, "-Y", display, "-T", "fields"]
    for name in names:
        cmd += ["-e", name]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    return [line.split("\t") for line in out.stdout.splitlines()]


def _is_lab_row(row: list[str], want: tuple[str, int, list[str]]) -> bool:
    src, dst, length, info = row
    want_src, want_len, phrases = want
    want_dst = EXPRESSWAY_E if want_src == CMS else CMS
    if (src, dst, int(length)) != (want_src, want_dst, want_len):
        return False
    at = 0
    for phrase in phrases:  # each phrase present, in the lab's order
        found = info.find(phrase, at)
        if found < 0:
            return False
        at = found + len(phrase)
    return True


@pytest.mark.tshark
@pytest.mark.parametrize("clock", ["virtual", "live"])
def test_cms_point_shows_the_lab_rows_and_nothing_between(clock: str, tmp_path: Path) -> None:
    result = run_scenario(load(LAB), clock)  # type: ignore[arg-type]
    pcap = tmp_path / "cms.pcapng"
    write_pcapng(result.trace, pcap, capture_at=["cms"], scenario="sharing-call")
    fields = ("ip.src", "ip.dst", "frame.len", "_ws.col.Info")
    rows = _tshark(pcap, "tcp and stun", *fields)
    # The ten rows, consecutive from the first STUN row on: nothing before or between them.
    assert len(rows) >= 10, rows
    for row, want in zip(rows[:10], LAB_ROWS, strict=True):
        assert _is_lab_row(row, want), (row, want)
    # The lab's capture stopped before the call ended; this one runs to the end, where CMS
    # deallocates (RFC 5766 §7: a Refresh with lifetime 0) and nothing else.
    tail = [(src, info.split(" user:")[0]) for src, _, _, info in rows[10:]]
    assert tail == [
        (CMS, "Refresh Request"),
        (EXPRESSWAY_E, "Refresh Success Response lifetime: 0"),
    ]
    assert "lifetime: 0" in rows[10][3]
    # The README's filter for the ten rows alone.
    ten = _tshark(pcap, "tcp and stun and !(stun.att.lifetime == 0)", *fields)
    assert len(ten) == 10 and all(map(_is_lab_row, ten, LAB_ROWS))
    assert _tshark(pcap, "_ws.malformed || _ws.expert.severity >= warning || tcp.analysis.flags",
                   "frame.number") == []  # fmt: skip


@pytest.mark.tshark
def test_every_leg_interleaves_the_skype_side(tmp_path: Path) -> None:
    # Why the capture point matters: without it, the Skype-side legs' STUN rows sit between
    # the lab's rows (what the README used to claim away).
    result = run_scenario(load(LAB), "virtual")
    pcap = tmp_path / "all.pcapng"
    write_pcapng(result.trace, pcap)
    rows = _tshark(pcap, "tcp and stun", "ip.src", "ip.dst", "frame.len", "_ws.col.Info")
    assert not all(map(_is_lab_row, rows[:10], LAB_ROWS))


# -- a dropped message: at its sender, not at its receiver -----------------------------------------


@pytest.mark.tshark
def test_a_dropped_message_shows_at_its_sender_only(tmp_path: Path) -> None:
    result = run_scenario(load(library_dir() / "refresh-dropped.yaml"), "virtual")
    dropped = [m for m in result.trace.messages if m.fate == "dropped"]
    assert dropped and all(m.is_kind("Refresh Request") for m in dropped)
    pcap = tmp_path / "both.pcapng"
    write_pcapng(result.trace, pcap, capture_at=["cms"], scenario="refresh-dropped")
    at_cms = _tshark(pcap, "stun.type == 0x0004 && stun.type.class == 0", "frame.comment")
    pcap_e = tmp_path / "e.pcapng"
    write_pcapng(result.trace, pcap_e, capture_at=["expressway_e"], scenario="refresh-dropped")
    at_e = _tshark(pcap_e, "stun.type == 0x0004 && stun.type.class == 0", "frame.comment")
    # Each point's own copy of the Refresh Requests: the dropped ones only at CMS.
    assert len(at_cms) == len(at_e) + len(dropped)
    assert sum("dropped by fault rule 1" in row[0] for row in at_cms) == len(dropped)
    assert not any("dropped" in row[0] for row in at_e)
    for path in (pcap, pcap_e):
        # Each end's sequence numbers stay whole: the sender counts the dropped bytes, the
        # receiver never saw them, and neither point shows a TCP analysis flag.
        assert _tshark(path, "tcp.analysis.flags || _ws.malformed", "frame.number") == []


# -- the pcapng's section header and interfaces --------------------------------------------------


@pytest.mark.tshark
def test_section_header_and_interfaces_name_labsim_the_scenario_and_the_points(
    tmp_path: Path,
) -> None:
    result = run_scenario(load(LAB), "virtual")
    pcap = tmp_path / "two.pcapng"
    write_pcapng(result.trace, pcap, capture_at=["cms", "expressway_e"], scenario="sharing-call")
    read = read_pcapng(pcap)
    assert read.section[4] == [f"labsim {__version__}".encode()]
    assert read.section[1] == [b"scenario: sharing-call"]
    assert [i[2] for i in read.interfaces] == [[b"cms"], [b"expressway_e"]]
    assert read.interfaces[0][3] == [b"cms (10.48.54.230): what cms sent and received"]
    # The TURN control connection crosses both points: each of its frames is on both.
    names = _tshark(pcap, "tcp.port == 3478", "frame.interface_name")
    counts = {name: names.count([name]) for name in ("cms", "expressway_e")}
    assert counts["cms"] > 0 and counts["cms"] == counts["expressway_e"]
    # A connection of the Skype side only reaches Expressway-E's interface.
    assert {row[0] for row in _tshark(pcap, "ip.addr == 192.168.1.252",
                                      "frame.interface_name")} == {"expressway_e"}  # fmt: skip
    every = tmp_path / "all.pcapng"
    write_pcapng(result.trace, every)
    assert [i[2] for i in read_pcapng(every).interfaces] == [[b"all-legs"]]


# -- the command line and the scenario key ---------------------------------------------------------


def test_capture_at_on_the_command_line_and_in_the_scenario(tmp_path: Path) -> None:
    runner = CliRunner()
    pcap = tmp_path / "c.pcapng"
    args = ["run", "--clock", "virtual", "-q", "--pcap", str(pcap), "--capture-at", "cms"]
    done = runner.invoke(main, [*args])
    assert done.exit_code == 0, done.output
    assert [i[2] for i in read_pcapng(pcap).interfaces] == [[b"cms"]]
    scenario = tmp_path / "at-e.yaml"
    scenario.write_text(f"extends: {LAB}\ncapture:\n  at: [expressway_e, cms]\n")
    assert runner.invoke(main, ["run", "-q", "--pcap", str(pcap), str(scenario)]).exit_code == 0
    assert [i[2] for i in read_pcapng(pcap).interfaces] == [[b"expressway_e"], [b"cms"]]
    # The command line overrides the scenario.
    done = runner.invoke(main, [*args[:-1], "skype_edge", str(scenario)])
    assert done.exit_code == 0, done.output
    assert [i[2] for i in read_pcapng(pcap).interfaces] == [[b"skype_edge"]]


def test_an_unknown_capture_point_is_refused(tmp_path: Path) -> None:
    runner = CliRunner()
    pcap = tmp_path / "c.pcapng"
    done = runner.invoke(main, ["run", "--pcap", str(pcap), "--capture-at", "cms,expresway_e"])
    assert done.exit_code == 2
    assert "'expresway_e' is not an actor" in done.output
    assert not pcap.exists()
    scenario = tmp_path / "bad.yaml"
    scenario.write_text(f"extends: {LAB}\ncapture:\n  at: [cms, expresway_e]\n")
    done = runner.invoke(main, ["run", "--pcap", str(pcap), str(scenario)])
    assert done.exit_code == 2
    assert f"{scenario}:3: capture.at[1]" in done.output


def test_the_scenario_key_takes_actor_names_only() -> None:
    sc = loads(f"extends: {LAB}\ncapture: {{at: [cms]}}\n", source="x.yaml")
    assert sc.capture.at == ["cms"]
    assert load(LAB).capture.at == []


def _numbering_differs(path: Path) -> bool:
    """Whether the two ends of some connection of this scenario saw different bytes: a message
    dropped, lost with its connection or still in flight, or a connection reset."""
    trace = run_scenario(load(path), "virtual").trace
    return any(m.fate != "delivered" for m in trace.messages) or any(
        c.reset for c in trace.connections.values()
    )


@pytest.mark.tshark
@pytest.mark.parametrize(
    "path", [p for p in LIBRARY if _numbering_differs(p)], ids=lambda p: p.stem
)
def test_no_point_shows_a_tcp_analysis_flag(path: Path, tmp_path: Path) -> None:
    # Where the ends saw different bytes, each point numbers its connections its own way; tshark
    # must find every point's streams whole. A SYN a firewall swallowed is retransmitted, as
    # Linux does, and flagged so on purpose (the every-leg capture shows the same).
    result = run_scenario(load(path), "virtual")
    for actor in ACTORS:
        pcap = tmp_path / f"{actor}.pcapng"
        write_pcapng(result.trace, pcap, capture_at=[actor], scenario=path.stem)
        display = (
            "(tcp.analysis.flags && !(tcp.analysis.retransmission && tcp.flags.syn == 1))"
            " || _ws.malformed"
        )
        assert _tshark(pcap, display, "frame.number", "_ws.col.Info") == [], actor


@pytest.mark.tshark
def test_a_held_message_is_stamped_when_it_left_and_when_it_arrived(tmp_path: Path) -> None:
    # A fault rule holds the first Allocate 2 s on the hop: CMS's interface shows it when CMS
    # sent it, Expressway-E's when it arrived (virtual time: the trace's own numbers).
    text = (
        f"extends: {LAB}\nclock: virtual\nfaults:\n"
        "  - delay: {from: cms, to: expressway_e, stun: Allocate Request, nth: 1, by: 2}\n"
        "expect: {diagnosis: null}\n"
    )
    result = run_scenario(loads(text, source=str(tmp_path / "held.yaml")), "virtual")
    held = next(m for m in result.trace.messages if m.delay)
    assert held.fate == "delivered" and held.fate_t is not None
    pcap = tmp_path / "held.pcapng"
    write_pcapng(result.trace, pcap, capture_at=["cms", "expressway_e"], start=0.0)
    rows = _tshark(pcap, "stun.type == 0x0003 && !stun.att.username", "frame.interface_name",
                   "frame.time_epoch", options=SEVERAL_POINTS)  # fmt: skip
    stamped = {name: float(t) for name, t in rows}
    assert stamped == pytest.approx({"cms": held.sent_t, "expressway_e": held.fate_t}, abs=2e-6)
    assert held.fate_t - held.sent_t >= 2.0
