"""The HTML page as a browser shows it (issue 14 §4): headless Chromium (Debian's ``chromium``,
installed by ``.ci/run``) loads the page from a file:// URL with no network, runs its script, and
the tests read back what it shows: the DOM after the script ran (``--dump-dom``) and a picture
of the screen (``--screenshot``).

Clicking is the address: an arrow is a link to ``#msg-N``, so loading ``page.html#msg-N`` is
what a click does, and the dumped DOM then holds that message's panel (its decoded fields and
its bytes). Every Chromium process runs in a session of its own with its own profile folder,
bounded in time; on a timeout the test kills that session (only what it started) and fails.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import zlib
from html import unescape
from pathlib import Path

import pytest

from labsim.report.mermaid import render_mermaid
from labsim.report.pictures import ladder, printable
from labsim.run import ACTORS, RunResult, run_scenario
from tests.labs import variant

from .conftest import require_tool
from .test_pictures import SCENARIOS, hostile_html, hostile_trace, html_of, ran

#: Seconds one Chromium run may take (it needs about one; a loaded CI machine more).
TIMEOUT = 120

#: Flags for a browser in a test: no sandbox (root cannot have one), no GPU, a profile of its
#: own, nothing fetched on its own behalf (updates, field trials, safe browsing).
FLAGS = [
    "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--no-default-browser-check",
    "--disable-extensions", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-default-apps", "--metrics-recording-only", "--mute-audio",
    "--hide-scrollbars",
]  # fmt: skip


def chromium(tmp_path: Path, url: str, *args: str) -> str:
    """Run headless Chromium on ``url``; its standard output (the DOM for ``--dump-dom``)."""
    exe = require_tool("chromium")
    profile = tmp_path / "chromium-profile"
    command = [exe, *FLAGS, f"--user-data-dir={profile}", *args, url]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        start_new_session=True,  # its renderers and helpers share the session: killed together
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish {url} in {TIMEOUT} s")
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode("utf-8")


def page_file(tmp_path: Path, source: str, name: str = "page.html") -> Path:
    path = tmp_path / name
    path.write_text(source, encoding="utf-8")
    return path


def dom(tmp_path: Path, path: Path, fragment: str = "") -> str:
    return chromium(tmp_path, path.as_uri() + fragment, "--dump-dom")


def element(html: str, ident: str) -> str:
    """The opening tag of the element with this id."""
    found = re.search(rf'<[a-z]+ [^>]*id="{re.escape(ident)}"[^>]*>', html)
    assert found, ident
    return found.group()


def inner_text(html: str, ident: str, tag: str) -> str:
    found = re.search(rf'<{tag} [^>]*id="{re.escape(ident)}"[^>]*>(.*?)</{tag}>', html, re.S)
    assert found, ident
    return unescape(re.sub(r"<[^>]+>", "", found.group(1)))


def healthy(tmp_path: Path) -> tuple[RunResult, Path]:
    result = ran("sharing-call")
    return result, page_file(tmp_path, html_of(result))


def test_the_script_runs_and_writes_the_summary(tmp_path: Path) -> None:
    result, path = healthy(tmp_path)
    shown = dom(tmp_path, path)
    body = re.search(r"<body[^>]*>", shown)
    assert body is not None
    tag = body.group()
    n = len(result.trace.messages)
    assert 'data-ready="yes"' in tag and f'data-messages="{n}"' in tag
    assert f'data-verdict="{result.diagnosis.verdict}"' in tag
    assert f'data-outcome="{result.outcome.name}"' in tag
    summary = inner_text(shown, "summary", "p")
    assert summary.startswith(f"{n} messages on {len(result.trace.connections)} connections")
    assert "outcome sharing-established; diagnosis healthy" in summary
    # No message asked for: the panel stays closed and empty.
    assert " hidden" in element(shown, "detail") and "data-open" not in element(shown, "detail")


def test_the_address_opens_a_framed_checks_panel_with_its_fields_and_bytes(
    tmp_path: Path,
) -> None:
    """``#msg-N`` (what a click on the arrow does) opens CMS's framed Binding Request: its
    hop, its facts, its decoded attributes, and its bytes behind the RFC 4571 length."""
    result, path = healthy(tmp_path)
    trace = result.trace
    n = 1 + next(i for i, m in enumerate(trace.messages) if m.framed and m.src == "cms")
    record = trace.messages[n - 1]
    shown = dom(tmp_path, path, f"#msg-{n}")
    panel = element(shown, "detail")
    assert f'data-open="{n}"' in panel and " hidden" not in panel
    assert inner_text(shown, "detail-title", "h2") == f"{n}. {record.summary}"
    content = inner_text(shown, "detail-content", "div")
    conn = trace.connections[record.connection]
    assert f"{record.connection} {conn.name}" in content
    assert f"{record.src} {record.src_addr}" in content and "delivered at" in content
    assert "transaction_id" in content and "use_candidatetrue" in content  # typed facts
    assert "USE-CANDIDATE" in content and "ICE-CONTROLLING" in content  # decoded attributes
    assert "FINGERPRINTgood" in content
    prefix = f"{record.size:04x}"
    assert f"RFC 4571 length 0x{prefix} ({record.size}), then the {record.size} bytes" in content
    hexdump = inner_text(shown, "detail-hex", "pre")
    first = " ".join(f"{b:02x}" for b in record.data[:6])
    assert hexdump.startswith(f"0000  {prefix[:2]} {prefix[2:]} {first}")
    # Every byte is there, after the two of the length.
    shown_bytes = "".join(
        re.sub(r"\s", "", line[6:55]) for line in hexdump.splitlines() if line.strip()
    )
    assert shown_bytes == prefix + record.data.hex()
    assert '<span class="prefix">' in shown  # the length marked apart from the message
    # The arrow clicked is marked in the ladder.
    assert re.search(rf'<g class="[^"]*\bselected\b[^"]*" id="arrow-{n}"', shown)


def test_the_address_opens_a_sip_panel_with_its_headers_body_and_journey(
    tmp_path: Path,
) -> None:
    result, path = healthy(tmp_path)
    trace = result.trace
    n = 1 + next(
        i for i, m in enumerate(trace.messages)
        if m.is_kind("INVITE") and "applicationsharing" in m.sip_facts.media  # type: ignore[union-attr]
    )  # fmt: skip
    record = trace.messages[n - 1]
    shown = dom(tmp_path, path, f"#msg-{n}")
    content = inner_text(shown, "detail-content", "div")
    assert "(start line)INVITE sip:meeting@cms.lab SIP/2.0" in content
    assert f"Call-ID{record.sip_facts.call_id}" in content  # type: ignore[union-attr]
    assert "m=applicationsharing" in content and "a=x-applicationsharing" in content
    journey = record.journey
    assert journey is not None and len(journey.hops) == 4  # client, Edge, Expressway-E, -C
    hops = re.findall(r'<a href="#msg-(\d+)"', shown.split('id="detail-content"')[1])
    others = [1 + trace.messages.index(h) for h in journey.hops if h is not record]
    assert [int(h) for h in hops[: len(others)]] == others


def test_a_dropped_message_is_marked_in_the_page(tmp_path: Path) -> None:
    result = ran("one-way-binding-cms-checks")
    path = page_file(tmp_path, html_of(result))
    n = 1 + next(i for i, m in enumerate(result.trace.messages) if m.fate == "dropped")
    shown = dom(tmp_path, path, f"#msg-{n}")
    assert re.search(rf'<g class="msg [^"]*\bdropped\b[^"]*" id="arrow-{n}"', shown)
    content = inner_text(shown, "detail-content", "div")
    assert "fate on this hopdropped by fault rule 1 (" in content
    assert "(1 never arrived)" in inner_text(shown, "summary", "p")


def test_hostile_text_runs_no_script_in_the_browser(tmp_path: Path) -> None:
    """A hostile INVITE, STUN user name and log line (see ``hostile_trace``): the page's own
    script runs, the hostile markup does not, even with the INVITE's panel open (its header
    written into the page by the script)."""
    path = page_file(tmp_path, hostile_html(hostile_trace()))
    for fragment in ("", "#msg-1", "#msg-2"):
        shown = dom(tmp_path, path, fragment)
        body = re.search(r"<body[^>]*>", shown)
        assert body is not None and 'data-ready="yes"' in body.group()  # our script ran
        assert "data-pwned" not in body.group()  # the hostile onerror never did
        assert "<title>labsim: &lt;b&gt;hostile&lt;/b&gt; — no outcome</title>" in shown
        assert len(re.findall(r"<script\b", shown)) == 3
        assert not re.search(r"<(img|iframe|svg onload)\b", shown)
    content = inner_text(dom(tmp_path, path, "#msg-1"), "detail-content", "div")
    assert "X-Evil</script><img src=x onerror=" in content  # shown, as text
    assert "<script>document.title='pwned'</script>" in content
    user = inner_text(dom(tmp_path, path, "#msg-2"), "detail-content", "div")
    assert printable("<svg onload=alert(1)>]]>&amp;") in user


# -- the screenshot ----------------------------------------------------------------------------


def png_pixels(data: bytes) -> tuple[int, int, list[bytes], int]:
    """(width, height, rows of pixels, bytes per pixel) of an 8-bit RGB or RGBA PNG, the
    filters undone (PNG spec §9: None, Sub, Up, Average, Paeth)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, head = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            head = body
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", head[:10])
    assert depth == 8 and colour in (2, 6), (depth, colour)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, rows, bpp


def test_the_page_on_a_1280_px_screen(tmp_path: Path) -> None:
    """A screenshot at 1280 × 2200 with CMS's first Allocate Request (high enough on
    the page that nothing scrolls) open: a picture of the page, not of an empty screen, with
    the detail panel drawn at the right."""
    # The share alone (no audio/video call before it), so that the row is on the first screen:
    # headless Chromium draws a page it had to scroll to an anchor blank.
    result = run_scenario(variant("call: {av_call: false}\n"), "virtual")
    path = page_file(tmp_path, html_of(result))
    n = 1 + next(i for i, m in enumerate(result.trace.messages) if m.is_kind("Allocate Request"))
    assert n == 9, n
    shot = tmp_path / "page.png"
    chromium(tmp_path, path.as_uri() + f"#msg-{n}", f"--screenshot={shot}",
             "--window-size=1280,2200")  # fmt: skip
    width, height, rows, bpp = png_pixels(shot.read_bytes())
    assert (width, height) == (1280, 2200)
    colours = {row[i : i + 3] for row in rows[::7] for i in range(0, len(row), bpp * 5)}
    assert len(colours) > 64  # text, lines, boxes in many colours: not one flat colour
    white = sum(row[i : i + 3] == b"\xff\xff\xff" for row in rows[::7]
                for i in range(0, len(row), bpp * 5))  # fmt: skip
    assert white < 0.97 * len(rows[::7]) * (width // 5)
    # The panel's left border (3 px of #1f2d3d) runs down the screen where the panel starts.
    edge = [x for x in range(600, width) if sum(
        row[x * bpp : x * bpp + 3] == b"\x1f\x2d\x3d" for row in rows[::10]
    ) > 0.9 * len(rows[::10])]  # fmt: skip
    assert edge and 700 <= edge[0] <= 740, edge[:5]
    # The header bar, dark, across the top.
    assert rows[5][10 * bpp : 10 * bpp + 3] == b"\x1f\x2d\x3d"


# -- the Mermaid text, read by Mermaid -----------------------------------------------------------

#: Mermaid's standalone bundle, one pinned release (``.ci/run`` fetches it with ``npm pack``).
MERMAID_JS = Path(__file__).parent.parent / "build/mermaid/package/dist/mermaid.min.js"
FETCH_MERMAID = (
    "mkdir -p build/mermaid && cd build/mermaid && npm pack mermaid@11.17.2 && "
    "tar -xzf mermaid-11.17.2.tgz package/dist/mermaid.min.js"
)

#: Parses and draws each diagram with Mermaid, then writes what became of it into the page.
MERMAID_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>
<pre id="result">pending</pre>
<script src="%(src)s"></script>
<script>
const diagrams = %(diagrams)s;
mermaid.initialize({startOnLoad: false, securityLevel: "strict"});
(async () => {
  const out = [];
  for (const [name, text] of Object.entries(diagrams)) {
    try {
      await mermaid.parse(text);
      const {svg} = await mermaid.render("d" + out.length, text);
      const drawn = document.createElement("div");
      drawn.innerHTML = svg;
      out.push([name, "ok", drawn.querySelectorAll(".messageText").length,
                drawn.querySelectorAll("script, iframe, img, foreignObject script").length]);
    } catch (e) {
      out.push([name, "error: " + String(e).slice(0, 400), 0, 0]);
    }
  }
  document.getElementById("result").textContent = JSON.stringify(out);
})();
</script></body></html>
"""


def test_mermaid_itself_reads_and_draws_the_diagrams(tmp_path: Path) -> None:
    """Mermaid 11 (in Chromium) parses and renders the --mermaid output of runs with every
    kind of row, and of the hostile trace: one drawn message text per arrow line, and nothing
    from the wire became an element."""
    if not MERMAID_JS.exists():
        message = f"{MERMAID_JS} is missing (.ci/run fetches it: {FETCH_MERMAID})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    diagrams = {
        name: render_mermaid(ladder(ran(name).trace, ACTORS), title=name) for name in SCENARIOS
    }
    diagrams["hostile"] = render_mermaid(ladder(hostile_trace(), ACTORS), title="<b>x</b>")
    data = json.dumps(diagrams).replace("<", "\\u003c")
    path = page_file(tmp_path, MERMAID_PAGE % {"src": MERMAID_JS.as_uri(), "diagrams": data},
                     "mermaid.html")  # fmt: skip
    shown = chromium(tmp_path, path.as_uri(), "--dump-dom", "--virtual-time-budget=60000")
    results = json.loads(inner_text(shown, "result", "pre"))
    assert [r[0] for r in results] == list(diagrams)
    for name, status, texts, elements in results:
        arrows = [line for line in diagrams[name].splitlines() if re.match(
            r"    \w+(->>|-->>|-x|--x|-\)|--\))\w+: ", line)]  # fmt: skip
        assert (name, status) == (name, "ok")
        assert texts == len(arrows) and elements == 0, name
