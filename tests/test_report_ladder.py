"""labsim.report.ladder: the ladder diagram, from hand-made traces (exact rows) and from a real
TURN flow (every message, in order)."""

from __future__ import annotations

import pytest

from labsim.report.ladder import render_ladder, render_ladder_rich
from labsim.trace import Trace
from labsim.wire.address import Address
from labsim.wire.framing import frame_rfc4571

from .test_report_pcap import ALLOCATE, CHECK, ERROR_401, run_lab

CMS = Address("10.48.54.230", 44342)
EXPE = Address("10.48.54.229", 3478)
EDGE = Address("192.168.1.252", 53577)
RELAY = Address("10.48.54.229", 24000)
ACTORS = ["skype_edge", "expressway_e", "cms"]


def small_trace() -> Trace:
    trace = Trace()
    trace.opened(0.0, 1, "cms", CMS, "expressway_e", EXPE)
    trace.sent(0.000512, 1, True, ALLOCATE, "stun")
    trace.log(0.001, "expressway_e", "401: challenge")
    trace.sent(0.0015, 1, False, ERROR_401, "stun")
    trace.opened(0.01, 2, "skype_edge", EDGE, "expressway_e", RELAY)
    trace.sent(0.011, 2, False, b"\x01" * 300, "raw")
    trace.sent(0.012, 2, False, b"\x02" * 20, "raw")
    trace.sent(0.013, 2, True, frame_rfc4571(CHECK), "rfc4571")
    trace.sent(0.014, 1, False, frame_rfc4571(CHECK), "raw")
    trace.closed(0.02, 2, "expressway_e", reset=True)
    trace.refuse(0.03, "skype_edge", "192.168.1.252", Address("10.48.54.229", 24001), "refused")
    trace.closed(0.04, 1, "cms")
    return trace


GOLDEN = """\
  time (s)          skype_edge                  expressway_e                      cms
                         │                            │                            │
  0.000000 TCP connect 10.48.54.230:44342 → 10.48.54… │◁╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌│
  0.000512         Allocate Request TCP lifetime: 600 │◀───────────────────────────│
  0.001000               │                            • 401: challenge             │
  0.001500 Allocate Error Response error-code: 401 (… │───────────────────────────▶│
  0.010000               │╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌▷│ TCP connect 192.168.1.252:53577 → 10.48.54.…
  0.011000               │◀── TCP data, 320 bytes ────│                            │
  0.013000               │───────────────────────────▶│ Binding Request user: evtj:h6vY
  0.014000  (relayed) Binding Request user: evtj:h6vY │───────────────────────────▶│
  0.020000               │✕╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌│ TCP reset (RST) 10.48.54.229:24000 → 192.16…
  0.030000               │╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌✕│ TCP connect 192.168.1.252 → 10.48.54.229:24…
  0.040000 TCP close (FIN) 10.48.54.230:44342 → 10.4… │◁╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌│
… = cut to fit 100 columns; the expanded ladder (labsim run --full) shows every field whole
"""


def test_small_trace_exactly() -> None:
    assert render_ladder(small_trace(), ACTORS, width=100) == GOLDEN


def column(text: str, name: str) -> int:
    """Where a column's lifeline is: under the middle of its name."""
    header, lifelines = text.splitlines()[:2]
    start = header.index(name)
    centre = start + len(name) // 2
    assert lifelines[centre] in "│|", (name, lifelines)
    return centre


def rows(text: str) -> list[str]:
    """The rows under the header, without the closing note on cut labels (it starts with the
    ellipsis, at the left edge: no row does)."""
    out = text.splitlines()[2:]
    legend = next((i for i, line in enumerate(out) if line.startswith(("…", "..."))), len(out))
    return out[:legend]


def test_arrows_point_from_sender_to_receiver() -> None:
    text = render_ladder(small_trace(), ACTORS, width=100)
    edge, expe, cms = (column(text, a) for a in ACTORS)
    assert edge < expe < cms
    request, error = [r for r in rows(text) if "Allocate" in r]
    # cms (right) to expressway_e: the head is next to expressway_e's lifeline.
    assert request[expe + 1] == "◀" and request[cms - 1] == "─"
    assert error[cms - 1] == "▶" and error[expe + 1] == "─"
    (connect,) = [r for r in rows(text) if "TCP connect 192.168.1.252:53577" in r]
    assert connect[expe - 1] == "▷" and connect[edge + 1] == "╌"  # dashed: a TCP event
    (reset,) = [r for r in rows(text) if "RST" in r]
    assert reset[edge + 1] == "✕"
    (note,) = [r for r in rows(text) if "401: challenge" in r]
    assert note[expe] == "•"


def test_time_column_is_seconds_from_the_start() -> None:
    lines = rows(render_ladder(small_trace(), ACTORS))
    assert lines[1].startswith("  0.000512 ")
    assert [line[:10] for line in lines[:3]] == ["  0.000000", "  0.000512", "  0.001000"]
    late = Trace()
    late.opened(1234.5, 1, "cms", CMS, "expressway_e", EXPE)
    (line,) = rows(render_ladder(late, ACTORS))
    assert line.startswith("1234.500000 ")  # the column grows; nothing is cut


@pytest.mark.parametrize("width", [50, 80, 120, 200])
def test_no_line_is_wider_than_asked_and_cut_labels_end_in_an_ellipsis(width: int) -> None:
    text = render_ladder(small_trace(), ACTORS, width=width)
    assert max(len(line) for line in text.splitlines()) <= width
    long = "Allocate Error Response error-code: 401 (Unauthenticated) Unauthorized"
    (line,) = [r for r in rows(text) if "Allocate Error" in r]
    if width < 150:
        assert long not in line and "…" in line
    else:
        assert long in line
    assert len(render_ladder(small_trace(), ACTORS).splitlines()[0]) <= 120  # default width


def test_actors_in_the_given_order_then_the_others_as_they_appear() -> None:
    text = render_ladder(small_trace(), ["expressway_e", "nobody"])
    header = text.splitlines()[0].split()
    assert header == ["time", "(s)", "expressway_e", "nobody", "cms", "skype_edge"]


def test_options_leave_out_relayed_data_and_logs() -> None:
    full = render_ladder(small_trace(), ACTORS)
    assert "(relayed) Binding Request user: evtj:h6vY" in full
    assert "TCP data, 320 bytes" in full
    assert "401: challenge" in full
    assert "(relayed)" not in render_ladder(small_trace(), ACTORS, relayed=False)
    assert "TCP data" not in render_ladder(small_trace(), ACTORS, show_data=False)
    assert "401: challenge" not in render_ladder(small_trace(), ACTORS, logs=False)
    assert len(rows(full)) == len(rows(render_ladder(small_trace(), ACTORS, logs=False))) + 1


def test_consecutive_data_collapses_only_on_the_same_connection_and_direction() -> None:
    trace = Trace()
    trace.opened(0.0, 1, "cms", CMS, "expressway_e", EXPE)
    # Writes a fault rule watches are one record each (the trace grows one record only for
    # writes that pass straight through).
    for i in range(3):
        for unit in trace.cut(0.1 + i, 1, True, b"\xff" * 10, "raw"):
            trace.wire(unit, 0.1 + i)
    for when, size in ((4.0, 7), (5.0, 8)):
        for unit in trace.cut(when, 1, False, b"\xff" * size, "raw"):
            trace.wire(unit, when)
    labels = [r for r in rows(render_ladder(trace, ["cms", "expressway_e"])) if "TCP data" in r]
    assert len(labels) == 2
    assert "TCP data ×3, 30 bytes" in labels[0] and "TCP data ×2, 15 bytes" in labels[1]


def test_refused_connect_to_an_unknown_address_gets_its_own_column() -> None:
    trace = Trace()
    trace.refuse(0.5, "cms", "10.48.54.230", Address("10.9.9.9", 3478), "timeout")
    text = render_ladder(trace, ["cms"], width=140)
    assert "10.9.9.9:3478" in text.splitlines()[0]
    (line,) = rows(text)
    assert "TCP connect 10.48.54.230 → 10.9.9.9:3478: timeout" in line and "✕" in line


def test_network_reset_and_errors_are_marked() -> None:
    trace = Trace()
    trace.opened(0.0, 1, "cms", CMS, "expressway_e", EXPE)
    trace.sent(0.1, 1, True, b"GET / HTTP/1.1\r\n\r\n", "stun")
    trace.closed(0.2, 1, "network", reset=True)
    text = render_ladder(trace, ["cms", "expressway_e"])
    cms, expe = column(text, "cms"), column(text, "expressway_e")
    garbage, reset = rows(text)[1:]
    assert "TCP data, 18 bytes (" in garbage  # the framing error follows the summary
    assert "TCP reset (RST) by network" in reset
    assert reset[cms + 1] == reset[expe - 1] == "✕"


def test_ascii_mode_is_ascii() -> None:
    text = render_ladder(small_trace(), ACTORS, width=90, ascii=True)
    assert text.isascii()
    assert "-->|" in text and "|<--" in text and "TCP data, 320 bytes" in text


def test_rich_variant_has_the_same_text_and_colours() -> None:
    trace = small_trace()
    coloured = render_ladder_rich(trace, ACTORS, width=100)
    assert coloured.plain == render_ladder(trace, ACTORS, width=100)
    styles = {str(span.style) for span in coloured.spans}
    assert {"green", "magenta", "red", "blue", "dim italic"} <= styles


def test_real_flow_every_message_in_order() -> None:
    trace, _ = run_lab()
    text = render_ladder(trace, ACTORS, width=400)
    lines = rows(text)
    position = 0
    for message in trace.messages:
        label = ("(relayed) " if message.relayed else "") + message.summary
        while label not in lines[position]:
            position += 1  # raises IndexError when a message is missing or out of order
        assert message.src in ACTORS and message.dst in ACTORS
    opened = [r for r in lines if "TCP connect" in r]
    closed = [r for r in lines if "TCP close (FIN)" in r]
    assert len(opened) == len(closed) == len(trace.connections) == 3
    assert "ConnectionAttempt Indication" in text and "(relayed) Binding Request" in text
    first_three = [r for r in lines if "•" not in r][:3]
    assert "TCP connect 10.48.54.230:" in first_three[0]
    assert "Allocate Request TCP lifetime: 600" in first_three[1]
    assert "Allocate Error Response" in first_three[2]


def test_the_expanded_ladder_prints_every_field_whole() -> None:
    long = "Allocate Error Response error-code: 401 (Unauthenticated) Unauthorized"
    for width in (50, 100):
        text = render_ladder(small_trace(), ACTORS, width=width, full=True)
        assert long in text  # the label the row cut, whole on the line under it
        for field in ("REQUESTED-TRANSPORT: 6", "LIFETIME: 600", "ERROR-CODE: 401 Unauthorized",
                      "REALM: TANDBERG", "USERNAME: evtj:h6vY", "ICE-CONTROLLED: tie-breaker",
                      "TCP connect 192.168.1.252:53577 → 10.48.54.229:24000 [skype_edge/2]",
                      "RFC 4571 frame, 110 bytes, the first 16: 00 6c 00 01 00 58 21 12 a4 42",
                      "320 bytes (the first 16): 01 01"):  # fmt: skip
            assert field in text, field
        # The rows themselves are the plain ladder's; the fields go on lines of their own.
        plain = rows(render_ladder(small_trace(), ACTORS, width=width))
        timed = [line for line in rows(text) if line[:10].strip()]
        assert timed == [line for line in plain if line[:10].strip()]
    assert "cut to fit" not in render_ladder(small_trace(), ACTORS, full=True)


def test_a_cut_always_shows() -> None:
    from labsim.report.ladder import _cut

    assert _cut("Allocate Request", 8, "…") == "Allocat…"
    assert _cut("Allocate Request", 1, "…") == "…"  # no room for text: the mark alone
    assert _cut("Allocate Request", 2, "...") == ".."
    assert _cut("ACK", 3, "…") == "ACK"
    narrow = render_ladder(small_trace(), ACTORS, width=20)
    assert max(len(line) for line in narrow.splitlines()) <= 20
    assert "…" in narrow
