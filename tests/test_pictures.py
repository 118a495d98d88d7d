"""labsim.report.svg / mermaid / html (issue 14 §4): the pictures of a run, checked against the
trace they are drawn from.

The SVG must parse as XML and hold one arrow per message of the trace, those that never arrived
stopped short of their receiver and marked; the Mermaid text must follow the grammar of what it
emits (every participant declared, one line per message, nothing Mermaid would read as syntax);
the HTML must be well formed, load nothing from anywhere, and carry the trace's messages as the
JSON output has them. Text from the wire (a SIP display name, a header, a reason phrase, a STUN
user name) must come out as text in all three, never as markup or script. The page as a browser
shows it is tested in ``test_html_chromium.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from functools import cache
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from labsim.cli import main
from labsim.report.html import SCRIPT, render_html
from labsim.report.json_out import trace_to_json
from labsim.report.mermaid import participant_ids, render_mermaid, text
from labsim.report.pictures import GAP, ladder, printable, topology
from labsim.report.svg import Geometry, ladder_svg
from labsim.run import ACTORS, RunResult, run_scenario
from labsim.scenario import library_dir, load
from labsim.trace import Trace
from labsim.wire import stun
from labsim.wire.address import Address
from tests.labs import variant

SVG = "{http://www.w3.org/2000/svg}"

#: Scenarios whose runs show every kind of row: the healthy call; one message dropped by a fault
#: rule; a connect refused and a connection reset, a message lost with it (the Edge's check
#: that reached the reset end); many drops and retransmissions; a message still in flight at
#: the end.
SCENARIOS = ["sharing-call", "one-way-binding-cms-checks", "relay-ports-rejected",
             "permission-required", "ack-lost", "cut-inside-a-message",
             "held-past-the-end"]  # fmt: skip

#: Not a library scenario: the TURN data connection cut by the network inside Expressway-E's
#: second message, so a message is lost with its connection (no library scenario loses one).
CUT_INSIDE_A_MESSAGE = (
    "actors: {skype_client: {ice_timeout: 2.0}}\n"
    "faults: [{cut: {from: expressway_e, to: cms, connection: 2, after_bytes: 100}}]\n"
)

#: Not a library scenario: the answer to the client's last BYE held on the Edge's hop past the
#: run's end, so it is still in flight when the run stops.
HELD_PAST_THE_END = (
    "faults: [{delay: {from: skype_edge, to: skype_client, sip: 200 OK, nth: 4, by: 100}}]\n"
)


@cache
def ran(name: str) -> RunResult:
    if name == "cut-inside-a-message":
        return run_scenario(variant(CUT_INSIDE_A_MESSAGE), "virtual")
    if name == "held-past-the-end":
        return run_scenario(variant(HELD_PAST_THE_END), "virtual")
    return run_scenario(load(library_dir() / f"{name}.yaml"), "virtual")


def html_of(result: RunResult) -> str:
    return render_html(
        result.trace, ACTORS, scenario=result.scenario.name, outcome=result.outcome,
        diagnosis=result.diagnosis,
        extra={"clock": result.clock, "expected": result.scenario.expect.outcome,
               "failures": result.failures},
    )  # fmt: skip


def svg_of(trace: Trace) -> ET.Element:
    return ET.fromstring(ladder_svg(ladder(trace, ACTORS), title="test"))


def classes(element: ET.Element) -> set[str]:
    return set(element.get("class", "").split())


def message_groups(root: ET.Element) -> list[ET.Element]:
    return [g for g in root.iter(f"{SVG}g") if "msg" in classes(g)]


# -- SVG ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCENARIOS)
def test_svg_has_one_arrow_per_message_in_order_with_its_summary(name: str) -> None:
    trace = ran(name).trace
    groups = message_groups(svg_of(trace))
    assert len(groups) == len(trace.messages)
    for n, (group, record) in enumerate(zip(groups, trace.messages, strict=True), 1):
        assert group.get("id") == f"arrow-{n}" and group.get("data-n") == str(n)
        assert record.fate in classes(group) and record.protocol.lower() in classes(group)
        title = group.find(f"{SVG}title")
        assert title is not None and title.text is not None
        # The whole summary, never cut, in the tooltip; the label on the arrow too.
        assert printable(record.summary) in title.text
        assert f"{record.src} → {record.dst}" in title.text
        label = group.find(f"{SVG}text[@class='lbl']")
        assert label is not None and label.text is not None
        assert label.text.startswith(("(relayed) " if record.relayed else "") + record.summary[:20])


def _line(group: ET.Element) -> tuple[float, float]:
    line = group.find(f"{SVG}line[@class='ln']")
    assert line is not None
    return float(line.get("x1", "0")), float(line.get("x2", "0"))


@pytest.mark.parametrize("name", SCENARIOS)
def test_svg_stops_what_never_arrived_where_it_was_lost_and_marks_it(name: str) -> None:
    trace = ran(name).trace
    geo = Geometry.of(ladder(trace, ACTORS).columns)
    groups = message_groups(svg_of(trace))
    for group, record in zip(groups, trace.messages, strict=True):
        if record.src == record.dst:
            continue
        x1, x2 = _line(group)
        src, dst = geo.x(record.src), geo.x(record.dst)
        gone = abs(x2 - src) / abs(dst - src)  # how far along it went
        crosses = group.findall(f"{SVG}path[@class='x']")
        label = group.find(f"{SVG}text[@class='lbl']")
        assert label is not None and label.text is not None
        if record.fate in ("delivered", "outside"):
            assert gone > 0.97 and not crosses
        elif record.fate == "dropped":
            # Dropped by a rule on the hop: the arrow stops halfway, a cross and the rule there.
            assert 0.4 < gone < 0.6 and len(crosses) == 1
            assert f"✕ dropped by fault rule {record.rule}" in label.text
        elif record.fate == "lost":
            assert 0.7 < gone < 0.9 and len(crosses) == 1
            assert "lost with its connection" in label.text
        else:
            assert record.fate == "in-flight" and gone < 0.7 and "still in flight" in label.text


def test_the_scenarios_cover_every_fate_and_tcp_event() -> None:
    """The parametrized tests above see each kind of row at least once."""
    fates = {m.fate for name in SCENARIOS for m in ran(name).trace.messages}
    assert {"delivered", "dropped", "lost", "in-flight"} <= fates
    assert any(ran(name).trace.refused for name in SCENARIOS)
    assert any(c.reset for name in SCENARIOS for c in ran(name).trace.connections.values())


@pytest.mark.parametrize("name", SCENARIOS)
def test_svg_draws_tcp_events_refused_connects_and_columns_with_addresses(name: str) -> None:
    trace = ran(name).trace
    root = svg_of(trace)
    groups = list(root.iter(f"{SVG}g"))
    connects = [g for g in groups if "connect" in classes(g)]
    closes = [g for g in groups if classes(g) & {"close", "reset"}]
    refused = [g for g in groups if "refused" in classes(g)]
    assert len(connects) == len(trace.connections)
    assert len(closes) == sum(c.closed is not None for c in trace.connections.values())
    assert sum("reset" in classes(g) for g in closes) == sum(
        c.reset for c in trace.connections.values()
    )
    assert len(refused) == len(trace.refused)
    # Each actor's column names it and the lab address the trace shows it on.
    heads = [g for g in groups if "actor" in classes(g)]
    shown = {"".join(t.text or "" for t in g.iter(f"{SVG}text")) for g in heads}
    for conn in trace.connections.values():
        assert f"{conn.client}{conn.client_addr.host}" in shown
        assert f"{conn.server}{conn.server_addr.host}" in shown


def test_svg_marks_a_pause_of_a_second_or_more() -> None:
    trace = ran("sharing-call").trace  # CMS's keepalive 5 s after the allocation
    gaps = [g for g in svg_of(trace).iter(f"{SVG}g") if "gap" in classes(g)]
    assert gaps
    steps = ladder(trace, ACTORS).steps
    for i, step in enumerate(steps):
        if step.kind == "gap":
            assert step.t - max(s.t for s in steps[:i]) >= GAP


def test_svg_labels_stay_inside_the_page() -> None:
    """Laid out for a 1280 px screen: nothing starts left of the page or runs past it."""
    trace = ran("one-way-binding-cms-checks").trace
    root = svg_of(trace)
    width = float(root.get("width", "0"))
    assert width <= 1280
    labels = [(t, 12.0) for t in root.iter(f"{SVG}text") if t.get("class") == "lbl"]
    notes = [g for g in root.iter(f"{SVG}g") if "note" in classes(g)]
    labels += [(t, 11.0) for g in notes for t in g.iter(f"{SVG}text")]
    assert len(labels) > len(trace.messages)
    for label, px in labels:
        x = float(label.get("x", "0"))
        size = px * 0.61 * len(label.text or "")
        anchor = label.get("text-anchor", "start")
        start = x - size if anchor == "end" else x - size / 2 if anchor == "middle" else x
        assert start >= 0 and start + size <= width + 1, label.text


# -- Mermaid ---------------------------------------------------------------------------------------

#: What labsim writes in Mermaid's sequence grammar: label text is printable characters but the
#: ones Mermaid reads as syntax (``;`` and ``#`` end a message, ``<``, ``>``, ``&``, ``"`` are
#: HTML), which appear only as entity codes (``#59;``).
LABEL = r"(?:[^;#<>&\"\n\r\u2028\u2029]|#[0-9]+;)+"
ID = r"[A-Za-z][A-Za-z0-9_]*"
ARROW = r"(?:->>|-->>|-x|--x|-\)|--\))"
GRAMMAR = {
    "participant": re.compile(rf"    participant ({ID}) as ({LABEL}(?:<br/>{LABEL})*)"),
    "message": re.compile(rf"    ({ID})({ARROW})({ID}): ({LABEL})"),
    "note": re.compile(rf"    Note over ({ID})(?:,({ID}))?: ({LABEL})"),
    "comment": re.compile(r"    %% [^\n]*"),
}


def parse_mermaid(source: str) -> list[tuple[str, tuple[str, ...]]]:
    """The lines of ``source`` by kind, each checked against :data:`GRAMMAR`; participants
    must be declared before any other line and used ones must exist."""
    lines = source.split("\n")
    assert lines[0] == "sequenceDiagram" and lines[-1] == ""
    out: list[tuple[str, tuple[str, ...]]] = []
    declared: list[str] = []
    for line in lines[1:-1]:
        matches = [(k, m) for k, p in GRAMMAR.items() if (m := p.fullmatch(line))]
        assert matches, f"not in the grammar: {line!r}"
        kind, match = matches[0]
        groups = tuple(g for g in match.groups() if g is not None)
        if kind == "participant":
            assert not [k for k, _ in out if k != "participant" and k != "comment"]
            assert groups[0] not in declared
            declared.append(groups[0])
        elif kind == "message":
            assert groups[0] in declared and groups[2] in declared
        elif kind == "note":
            assert all(g in declared for g in groups[:-1])
        out.append((kind, groups))
    return out


@pytest.mark.parametrize("name", SCENARIOS)
def test_mermaid_declares_every_actor_and_has_one_line_per_message(name: str) -> None:
    trace = ran(name).trace
    lad = ladder(trace, ACTORS)
    parsed = parse_mermaid(render_mermaid(lad, title=name))
    ids = participant_ids(lad.columns)
    assert [g[0] for k, g in parsed if k == "participant"] == [ids[c.name] for c in lad.columns]
    numbered = [g for k, g in parsed if k == "message" and re.match(r"\[\d+\] ", g[3])]
    assert len(numbered) == len(trace.messages)
    for n, (groups, record) in enumerate(zip(numbered, trace.messages, strict=True), 1):
        src, arrow, dst, label = groups
        assert (src, dst) == (ids[record.src], ids[record.dst])
        assert label.startswith(f"[{n}] ")
        assert arrow == ("-x" if record.fate in ("dropped", "lost") else
                         "--)" if record.fate == "in-flight" else
                         "-->>" if record.protocol == "TCP" else "->>")  # fmt: skip
        if record.fate == "dropped":
            assert f"✕ dropped by fault rule {record.rule}" in label
    connects = [g for k, g in parsed if k == "message" and "TCP connect " in g[3]]
    assert len(connects) == len(trace.connections) + len(trace.refused)


def test_mermaid_text_escapes_what_its_grammar_reads() -> None:
    assert text('a;b#c<d>e&f"g') == "a#59;b#35;c#60;d#62;e#38;f#34;g"
    # A control character is shown as Python writes it, not obeyed (the backslash escaped).
    assert text("line\nbreak") == "line#92;nbreak"
    assert text("wrap: x") == "#32;wrap: x"  # not Mermaid's wrap directive
    assert text("→ ✕ é") == "→ ✕ é"


def test_mermaid_names_a_column_that_is_no_identifier() -> None:
    """A connect refused by an address no actor holds gets a column named by the address; a
    Mermaid id cannot be ``10.9.9.9:5060`` (nor a keyword such as ``end``)."""
    trace = Trace()
    trace.opened(0.0, 1, "cms", Address("10.48.54.230", 40000), "end", Address("10.0.0.1", 1))
    trace.refuse(0.1, "cms", "10.48.54.230", Address("10.9.9.9", 5060), "refused")
    lad = ladder(trace, ["cms"])
    ids = participant_ids(lad.columns)
    assert ids == {"cms": "cms", "end": "p2", "10.9.9.9:5060": "p3"}
    parsed = parse_mermaid(render_mermaid(lad, title="t"))
    assert ("message", ("cms", "--x", "p3", parsed[-1][1][3])) == parsed[-1]


def test_an_empty_trace_draws_empty_pictures() -> None:
    """A capture with no message in it (or a run that never started) still gives pictures."""
    for actors in ([], ["cms"]):
        lad = ladder(Trace(), actors)
        assert not message_groups(ET.fromstring(ladder_svg(lad, title="empty")))
        parse_mermaid(render_mermaid(lad, title="empty"))
        assert_safe(parse_page(render_html(Trace(), actors, scenario="empty", outcome=None,
                                           diagnosis=None)))  # fmt: skip


# -- HTML -----------------------------------------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}  # fmt: skip


@dataclass
class Page(HTMLParser):
    """What the checks need of a page: its elements (tag, attributes), the text inside each
    script element, all text, and whether every element that was opened was closed in order."""

    elements: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    scripts: list[tuple[dict[str, str], str]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    """Text outside script and style elements."""
    stack: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    styles: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(convert_charrefs=True)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))  # <path/> in inline SVG

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:]}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        inside = self.stack[-1] if self.stack else ""
        if inside == "script":
            self.scripts.append((self.elements_of("script")[-1], data))
        elif inside == "style":
            self.styles.append(data)
        else:
            self.text.append(data)  # what the page shows

    def elements_of(self, tag: str) -> list[dict[str, str]]:
        return [a for t, a in self.elements if t == tag]


def parse_page(source: str) -> Page:
    page = Page()
    page.feed(source)
    page.close()
    assert not page.problems and not page.stack, (page.problems, page.stack)
    return page


def embedded(page: Page, ident: str) -> object:
    found = [body for attrs, body in page.scripts if attrs.get("id") == ident]
    assert len(found) == 1
    return json.loads(found[0])


def assert_safe(page: Page) -> None:
    """Loads nothing from anywhere; runs no script but its own, allowed by hash."""
    for tag, attrs in page.elements:
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)  # no event handler attributes
            if name in ("src", "href", "xlink:href", "action", "poster", "data"):
                assert not re.match(r"\s*(https?:|//|javascript:)", value, re.I), (tag, value)
        assert tag not in ("iframe", "object", "embed", "img", "link", "base", "form"), tag
    scripts = page.elements_of("script")
    assert len(scripts) == 3 and all("src" not in s for s in scripts)
    assert [s.get("type") for s in scripts] == ["application/json", "application/json", None]
    code = [body for attrs, body in page.scripts if "type" not in attrs]
    assert code == [SCRIPT]
    csp = [m["content"] for m in page.elements_of("meta") if m.get("http-equiv") ==
           "Content-Security-Policy"]  # fmt: skip
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    assert len(csp) == 1 and "default-src 'none'" in csp[0]
    assert f"script-src 'sha256-{digest}'" in csp[0]
    styles = page.styles
    assert len(styles) == 1 and "@import" not in styles[0] and "url(" not in styles[0]


@pytest.mark.parametrize("name", SCENARIOS)
def test_html_is_well_formed_offline_and_carries_the_traces_messages(name: str) -> None:
    result = ran(name)
    trace = result.trace
    page = parse_page(html_of(result))
    assert_safe(page)
    run = embedded(page, "labsim-run")
    assert isinstance(run, dict)
    expected = trace_to_json(
        trace, scenario=result.scenario.name, outcome=result.outcome.name,
        diagnosis=result.diagnosis.as_dict(),
        extra={"reason": result.outcome.reason, "clock": result.clock,
               "expected": result.scenario.expect.outcome, "failures": result.failures},
    )  # fmt: skip
    assert run == json.loads(json.dumps(expected))  # the --json output, as it is
    assert [m["hex"] for m in run["messages"]] == [m.data.hex() for m in trace.messages]
    decoded = embedded(page, "labsim-decoded")
    assert isinstance(decoded, list) and len(decoded) == len(trace.messages)
    for n, (info, record) in enumerate(zip(decoded, trace.messages, strict=True), 1):
        assert info["n"] == n and info["title"] == printable(record.summary)
        assert info["prefix"] == (f"{record.size:04x}" if record.framed else "")
    # Every message is a link to its panel; the list of messages has them too.
    links = [a["href"] for a in page.elements_of("a")]
    for n in range(1, len(trace.messages) + 1):
        assert links.count(f"#msg-{n}") >= 2
    body = " ".join(page.text)
    assert result.diagnosis.summary in body and result.outcome.reason in body


def test_html_panel_data_decodes_sip_and_framed_stun() -> None:
    trace = ran("sharing-call").trace
    decoded = embedded(parse_page(html_of(ran("sharing-call"))), "labsim-decoded")
    assert isinstance(decoded, list)

    def section(n: int, title: str) -> dict[str, object]:
        found = [s for s in decoded[n - 1]["sections"] if s["title"].startswith(title)]
        assert len(found) == 1, [s["title"] for s in decoded[n - 1]["sections"]]
        return found[0]

    # The sharing INVITE (the lab's audio/video call's comes first).
    invite = 1 + next(
        i for i, m in enumerate(trace.messages)
        if m.is_kind("INVITE") and "applicationsharing" in m.sip_facts.media  # type: ignore[union-attr]
    )  # fmt: skip
    headers = section(invite, "SIP start line and headers")["rows"]
    assert isinstance(headers, list) and headers[0][1] == "INVITE sip:meeting@cms.lab SIP/2.0"
    assert ["Call-ID", trace.messages[invite - 1].facts.call_id] in headers  # type: ignore[union-attr]
    sdp = section(invite, "Body (application/sdp")["text"]
    assert isinstance(sdp, str) and "m=applicationsharing" in sdp
    check = 1 + next(i for i, m in enumerate(trace.messages) if m.framed and m.src == "cms")
    record = trace.messages[check - 1]
    assert decoded[check - 1]["prefix"] == f"{record.size:04x}"
    attributes = section(check, "Attributes")["rows"]
    assert isinstance(attributes, list)
    assert ["@20", "0x0025", "USE-CANDIDATE", ""] == attributes[0]  # CMS controls
    assert [row[1:] for row in attributes if row[2] == "USERNAME"] == [
        ["0x0006", "USERNAME", "Xa3f:cM5k"]
    ]
    assert ["FINGERPRINT", "good"] in section(check, "Checks")["rows"]  # type: ignore[operator]


def test_topology_has_every_connection_on_its_path_and_every_refused_connect() -> None:
    for name in SCENARIOS:
        trace = ran(name).trace
        topo = topology(trace, ACTORS)
        assert [link.id for link in topo.links] == list(trace.connections)
        for link in topo.links:
            on = [m for m in trace.messages if m.connection == link.id]
            assert link.messages == len(on)
            assert link.path == ("SIP" if any(m.protocol == "SIP" for m in on) else
                                 "media" if on else "none")  # fmt: skip
        assert len(topo.attempts) == len(trace.refused)
    sharing = topology(ran("sharing-call").trace, ACTORS)
    data = next(link for link in sharing.links if link.name == "cms/turn:data:1")
    assert data.carries == "STUN/TURN + ICE checks (RFC 4571)" and data.path == "media"


# -- what came off the wire stays text ----------------------------------------------------------

HOSTILE_SIP = (
    b"INVITE sip:meeting@cms.lab SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 192.168.1.100:5060;branch=z9hG4bKevil1\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "<script>document.title=\'pwned\'</script>" <sip:alice@skype.lab>;tag=1\r\n'
    b"To: <sip:meeting@cms.lab>\r\n"
    b"Call-ID: evil@192.168.1.100\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"X-Evil: </script><img src=x onerror=\"document.body.setAttribute('data-pwned','1')\"><!--\r\n"
    b"Content-Length: 0\r\n\r\n"
)  # fmt: skip
HOSTILE_USER = "<svg onload=alert(1)>]]>&amp;"
HOSTILE_NOTE = "note <iframe src=//evil.example/></iframe> \u202ereversed\u202c end\x07"


def hostile_trace() -> Trace:
    """A hand-made trace whose every text field a peer controls is hostile: a SIP INVITE with a
    script in the display name and markup in a header, a STUN request whose USERNAME is markup,
    a log line with an iframe, a bidi override and a control character."""
    trace = Trace()
    client, edge = Address("192.168.1.100", 40000), Address("192.168.1.252", 5060)
    trace.opened(0.0, 1, "skype_client", client, "skype_edge", edge)
    trace.sent(0.001, 1, True, HOSTILE_SIP, "sip")
    trace.delivered(0.0015, 1, True, len(HOSTILE_SIP))
    cms, expe = Address("10.48.54.230", 40000), Address("10.48.54.229", 3478)
    trace.opened(0.002, 2, "cms", cms, "expressway_e", expe)
    request = stun.Message.request(stun.Method.BINDING, [stun.Username(HOSTILE_USER)])
    trace.sent(0.003, 2, True, request.encode(), "stun")
    trace.log(0.004, "expressway_e", HOSTILE_NOTE)
    return trace


def hostile_html(trace: Trace) -> str:
    return render_html(trace, ACTORS, scenario="<b>hostile</b>", outcome=None, diagnosis=None)


def test_hostile_text_in_the_html_stays_text() -> None:
    trace = hostile_trace()
    assert trace.messages[0].summary == "INVITE" and trace.messages[1].error is None
    source = hostile_html(trace)
    page = parse_page(source)
    assert_safe(page)  # no element, attribute or script came in with the text
    assert "<iframe" not in source and "<svg onload" not in source and "<b>" not in source
    body = "".join(page.text)
    assert "\u202e" not in body and "\\u202ereversed" in body  # the override is shown, inert
    # The data blocks hold the text as it was: the panel shows it, as text.
    decoded = embedded(page, "labsim-decoded")
    assert isinstance(decoded, list)
    headers = decoded[0]["sections"][2]["rows"]
    assert ["X-Evil", HOSTILE_SIP.split(b"X-Evil: ")[1].split(b"\r\n")[0].decode()] in headers
    assert any(row[3] == HOSTILE_USER for row in decoded[1]["sections"][3]["rows"])


def test_hostile_text_in_the_svg_and_mermaid_stays_text() -> None:
    trace = hostile_trace()
    lad = ladder(trace, ACTORS)
    root = ET.fromstring(ladder_svg(lad, title="<script>x</script>"))
    tags = {element.tag for element in root.iter()}
    assert f"{SVG}script" not in tags and f"{SVG}foreignObject" not in tags
    assert not [k for e in root.iter() for k in e.attrib if k.lower().startswith("on")]
    notes = ["".join(g.itertext()) for g in root.iter(f"{SVG}g") if "note" in classes(g)]
    assert any("<iframe src=//evil.example/>" in n and "\\u202e" in n for n in notes)
    mermaid = render_mermaid(lad, title="<script>x</script>")
    parse_mermaid(mermaid)  # every line in the grammar: nothing closed a line or a label
    assert "<iframe" not in mermaid and "<script" not in mermaid


def test_a_hostile_reason_phrase_from_a_run_stays_text(tmp_path: Path) -> None:
    """The same through a real run: CMS refuses the INVITE with a reason phrase that is markup
    (the scenario allows any printable ASCII phrase), and the phrase crosses every hop."""
    phrase = "<script>document.title='pwned'</script>"
    scenario = tmp_path / "hostile.yaml"
    scenario.write_text(
        f"extends: {library_dir() / 'sharing-call.yaml'}\nname: hostile\n"
        f'actors:\n  cms:\n    refuse_invite: {{status: 488, reason: "{phrase}"}}\n'
        "expect:\n  outcome: call-rejected\n",
        encoding="utf-8",
    )
    out = {kind: tmp_path / f"run.{kind}" for kind in ("svg", "html", "mermaid")}
    result = CliRunner().invoke(main, [
        "run", str(scenario), "--clock", "virtual", "-q",
        *(a for kind, path in out.items() for a in (f"--{kind}", str(path))),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    page = parse_page(out["html"].read_text(encoding="utf-8"))
    assert_safe(page)
    assert f"488 {phrase}" in "".join(page.text)  # shown, as text
    root = ET.fromstring(out["svg"].read_text(encoding="utf-8"))
    assert f"{SVG}script" not in {e.tag for e in root.iter()}
    assert any(f"488 {phrase}" in (e.text or "") for e in root.iter(f"{SVG}text"))
    mermaid = out["mermaid"].read_text(encoding="utf-8")
    parse_mermaid(mermaid)
    assert "488 #60;script#62;document.title='pwned'#60;/script#62;" in mermaid


# -- the command line -----------------------------------------------------------------------------


def test_run_writes_the_three_pictures_and_says_where(tmp_path: Path) -> None:
    out = {kind: tmp_path / f"call.{kind}" for kind in ("svg", "html", "mermaid")}
    args = [a for kind, path in out.items() for a in (f"--{kind}", str(path))]
    result = CliRunner().invoke(main, ["run", "--clock", "virtual", *args])
    assert result.exit_code == 0, result.output
    for kind, path in out.items():
        assert f"{kind}: {path}" in result.output
    trace = ran("sharing-call").trace
    assert len(message_groups(ET.fromstring(out["svg"].read_text("utf-8")))) == len(trace.messages)
    assert out["mermaid"].read_text("utf-8").startswith("sequenceDiagram\n")
    assert out["html"].read_text("utf-8").startswith("<!DOCTYPE html>")


def test_run_picture_to_standard_output_moves_the_report_to_standard_error() -> None:
    result = CliRunner().invoke(main, ["run", "--clock", "virtual", "--svg", "-"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    ET.fromstring(result.stdout.split("\n", 1)[1])  # all of standard output is the SVG
    assert "outcome sharing-established" in result.stderr


@pytest.mark.parametrize("option", ["--svg", "--html", "--mermaid"])
def test_picture_options_are_checked_before_the_run(option: str, tmp_path: Path) -> None:
    target = tmp_path / "no-such-folder" / "out"
    result = CliRunner().invoke(main, ["run", "--clock", "virtual", option, str(target)])
    assert result.exit_code == 2, result.output
    assert f"{option} {target}: cannot write" in result.output and "outcome" not in result.output
    same = tmp_path / "same"
    twice = CliRunner().invoke(main, ["run", "--json", str(same), option, str(same)])
    assert twice.exit_code == 2 and f"--json and {option} both name {same}" in twice.output
    dashes = CliRunner().invoke(main, ["run", "--pcap", "-", option, "-"])
    assert dashes.exit_code == 2 and f"--pcap and {option} both name -" in dashes.output


def test_diagnose_draws_the_capture_with_what_its_point_cannot_see(tmp_path: Path) -> None:
    pcap = tmp_path / "cms.pcapng"
    made = CliRunner().invoke(main, ["run", "one-way-binding-cms-checks", "--clock", "virtual",
                                     "-q", "--pcap", str(pcap), "--capture-at", "cms"])  # fmt: skip
    assert made.exit_code == 0, made.output
    page_file, svg_file = tmp_path / "cap.html", tmp_path / "cap.svg"
    result = CliRunner().invoke(main, ["diagnose", "-q", str(pcap), "--html", str(page_file),
                                       "--svg", str(svg_file)])  # fmt: skip
    assert result.exit_code == 1, result.output  # a failure found
    page = parse_page(page_file.read_text("utf-8"))
    assert_safe(page)
    text_ = " ".join(page.text)
    assert "What cms cannot see" in text_ and "beyond-capture" in text_
    run = embedded(page, "labsim-run")
    assert isinstance(run, dict) and run["messages"]
    assert len(message_groups(ET.fromstring(svg_file.read_text("utf-8")))) == len(run["messages"])
