"""The run as one self-contained HTML page (``labsim run --html FILE``), for a trainer's screen
or a ticket: open it from disk, no network, nothing loaded from anywhere.

What it shows, top to bottom: the outcome and whether the scenario's expectations held; the
diagnosis in the run's words (verdict, step, evidence, likely cause, what to check); the
topology (the actors with their lab addresses, every connection from the actor that opened it
to the one that accepted it, on the SIP path or the media path, and connects that never
opened); the ladder (:mod:`labsim.report.svg`), each message a link; and, collapsed, the list of
messages. Opening a message (a click, Tab and Enter, or ``page.html#msg-12``) shows its details
beside the ladder: where and when it went, its fate on that hop and its journey across the
others, its typed facts, the decoded message (a SIP start line, headers and body; a STUN
header, its attributes with their offsets and the FINGERPRINT check) and its bytes as hex, an
RFC 4571 frame's 2-byte length shown before them.

Everything comes from the trace (DESIGN.md, "the trace is the truth"): the page carries the
run's JSON exactly as ``labsim run --json`` writes it (``<script type="application/json"
id="labsim-run">``), and beside it what the codecs decode of each message
(``id="labsim-decoded"``). The page's script builds each detail panel from those two with
``textContent`` only, never as markup; the static parts are written here with every piece of
text escaped. A Content-Security-Policy allows only this page's own script and style (by their
SHA-256) and no network at all, so even text that got past the escaping could not run a script
or fetch anything.

Hand-written HTML, CSS and a little plain JavaScript (no framework, no template engine): the
page must work offline and from a file, and it is small enough that a dependency would weigh
more than it.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from labsim.report.diagnose import Diagnosis
from labsim.report.json_out import trace_to_json
from labsim.report.outcome import Outcome
from labsim.report.pictures import (
    Ladder,
    Topology,
    fmt_t,
    ladder,
    printable,
    rule_words,
    topology,
)
from labsim.report.svg import (
    FONT,
    STYLE,
    Geometry,
    body_height,
    esc,
    header_height,
    ladder_body,
    ladder_header,
    topology_svg,
)
from labsim.trace import MessageRecord, Trace
from labsim.vocabulary import WORKING
from labsim.wire import WireError, sip, stun
from labsim.wire.address import Address
from labsim.wire.facts import DataFacts

#: A section of the page beside the diagnosis: a heading and its lines (``labsim diagnose``
#: adds where the capture was taken and what its point cannot see).
Section = tuple[str, Sequence[str]]

# -- what a message's panel shows ---------------------------------------------------------------


def _value(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "—"
    if isinstance(value, int) and value > 0xFFFF:
        return f"{value} (0x{value:x})"
    if isinstance(value, tuple):
        return ", ".join(map(str, value)) or "—"
    return printable(str(value))


def attribute_text(attr: stun.Attribute) -> str:
    """An attribute's value as people read it: an address as ``ip:port``, bytes as hex (a
    MESSAGE-INTEGRITY is an HMAC, not text), large numbers in hex too (CONNECTION-ID)."""
    if not dataclasses.is_dataclass(attr):
        return ""
    fields = [f.name for f in dataclasses.fields(attr)]
    values = {name: getattr(attr, name) for name in fields}
    if fields == ["address", "port"]:
        return f"{values['address']}:{values['port']}"
    if isinstance(attr, stun.UnknownAttribute):
        return bytes(attr.value).hex()
    if len(fields) == 1:
        value = _value(values[fields[0]])
        # Wireshark's words when they say more than the number (REQUESTED-TRANSPORT 6: TCP).
        words = attr.info().strip()
        return f"{value} ({words})" if words and value not in words else value
    return ", ".join(f"{name}={_value(value)}" for name, value in values.items())


def _stun_sections(msg: stun.Message | stun.ChannelData) -> list[dict[str, Any]]:
    if isinstance(msg, stun.ChannelData):
        rows = [["channel", f"0x{msg.channel:04x}"], ["length", f"{len(msg.data)} bytes"]]
        return [{"title": "ChannelData (RFC 5766 §11.4)", "rows": rows}]
    raw = msg.raw or b""
    header = [
        ["type", f"0x{msg.type:04x}: {msg.method_name} {stun.CLASS_NAMES[msg.cls]}"],
        ["length", f"{max(0, len(raw) - 20)} bytes of attributes"],
        ["magic cookie", stun.MAGIC_COOKIE_BYTES.hex()],
        ["transaction id", msg.transaction_id.hex()],
    ]
    attributes = [
        [f"@{offset}", f"0x{attr.type:04x}", printable(attr.name), attribute_text(attr)]
        for attr, offset in zip(msg.attributes, msg.offsets, strict=False)
    ]
    checks = []
    if msg.get(stun.Fingerprint) is not None:
        checks.append(["FINGERPRINT", "good" if msg.verify_fingerprint() else "bad"])
    if msg.get(stun.MessageIntegrity) is not None:
        checks.append(["MESSAGE-INTEGRITY", "present; its key is the password's (labsim decode "
                       "--password checks it)"])  # fmt: skip
    sections: list[dict[str, Any]] = [
        {"title": "STUN header (RFC 5389 §6)", "rows": header},
        {"title": "Attributes", "head": ["offset", "type", "name", "value"], "rows": attributes},
    ]
    if checks:
        sections.append({"title": "Checks", "rows": checks})
    return sections


def _sip_sections(msg: sip.SipMessage, data: bytes) -> list[dict[str, Any]]:
    start = data.split(b"\r\n", 1)[0].decode("utf-8", "replace")
    rows = [["(start line)", printable(start)]]
    headers = msg.headers
    assert isinstance(headers, sip.HeaderStore)  # parse_message's messages all carry one
    for name, values in headers.items():
        rows += [[printable(name), printable(value)] for value in values]
    sections: list[dict[str, Any]] = [
        {"title": "SIP start line and headers (RFC 3261 §7)", "rows": rows}
    ]
    body = msg.body or b""
    if body:
        kind = msg.headers.get("Content-Type")
        what = kind.split(";", 1)[0].strip() if kind else "no Content-Type"
        text = body.decode("utf-8", "replace").replace("\r\n", "\n")
        sections.append({"title": f"Body ({printable(what)}, {len(body)} bytes)",
                         "text": printable(text)})  # fmt: skip
    return sections


def _decoded_sections(m: MessageRecord) -> list[dict[str, Any]]:
    if m.protocol == "TCP":
        facts = m.facts
        assert isinstance(facts, DataFacts)
        what = "an RFC 4571 frame that is not STUN" if facts.framed else "opaque TCP data"
        words = f"{what}: relayed as it is, not decoded"
        if m.error is not None:
            words = f"bytes that did not decode: {printable(m.error)}"
        return [{"title": "Payload", "text": words}]
    if m.error is not None:
        return [{"title": f"Malformed {m.protocol}", "text": printable(m.error)}]
    try:
        decoded = m.decoded()
    except WireError as exc:  # the trace decoded it once; a codec that changes its mind
        return [{"title": f"Malformed {m.protocol}", "text": printable(str(exc))}]
    if isinstance(decoded, stun.Message | stun.ChannelData):
        return _stun_sections(decoded)
    if decoded is not None:
        return _sip_sections(decoded, m.data)
    return []


def _facts_rows(m: MessageRecord) -> list[list[str]]:
    """The typed fields that are set; the names of those that are not, in one last row (what
    a fact of this protocol could say, without a screen of dashes)."""
    facts = m.facts
    rows, unset = [], []
    for f in dataclasses.fields(facts):
        value = getattr(facts, f.name)
        if value is None or value == "" or value == ():
            unset.append(f.name)
        else:
            rows.append([f.name, _value(value)])
    if unset:
        rows.append(["(not set)", ", ".join(unset)])
    return rows


def _where(actor: str, address: Address) -> str:
    return f"{actor} {address}"


def message_details(trace: Trace, m: MessageRecord, number: dict[int, int]) -> dict[str, Any]:
    """What a message's panel shows, as data the page's script writes out: rows of text, the
    RFC 4571 prefix of a framed message, and the other hops of its journey."""
    conn = trace.connections.get(m.connection)
    fate: str = m.fate
    if m.fate == "dropped":
        words = rule_words(trace, m.rule)
        fate = f"dropped by fault rule {m.rule}" + (f" ({words})" if words else "")
    if m.fate_t is not None:
        fate += f" at {fmt_t(m.fate_t)} s"
    size = f"{m.size} bytes"
    if m.wire_size != m.size:
        size += f" ({m.wire_size} on the wire: the RFC 4571 length first)"
    if m.protocol == "TCP" and len(m.data) < m.size:
        size += f"; the trace keeps the first {len(m.data)}"
    rows = [
        ["time", f"{fmt_t(m.t)} s" + (f" (sent {fmt_t(m.sent_t)} s)" if m.sent_t != m.t else "")],
        ["from", _where(m.src, m.src_addr)],
        ["to", _where(m.dst, m.dst_addr)],
        ["connection", f"{m.connection} {printable(conn.name)}" if conn else str(m.connection)],
        ["protocol", m.protocol + (" (relayed as opaque bytes)" if m.relayed else "")],
        ["framing", m.framing],
        ["size", size],
        ["fate on this hop", fate],
    ]
    if m.delay:
        rows.append(["held", f"{m.delay:g} s by fault rule {m.rule}"])
    journey = m.journey
    hops = []
    if journey is not None:
        rows.append(["journey", f"{journey.id}: hop {m.hop + 1} of {len(journey.hops)}"])
        hops = [[number[id(h)], f"{h.src} → {h.dst}", h.fate] for h in journey.hops]
    return {
        "n": number[id(m)],
        "title": printable(m.summary),
        "sections": [
            {"title": "On the wire", "rows": rows},
            {"title": "Typed facts (labsim.wire.facts)", "rows": _facts_rows(m)},
            *_decoded_sections(m),
        ],
        "hops": hops,
        "prefix": _prefix(m),
    }


def _prefix(m: MessageRecord) -> str:
    """The RFC 4571 length a framed message went on the wire behind, as hex ("" if none)."""
    return m.size.to_bytes(2, "big").hex() if m.framed and m.size <= 0xFFFF else ""


# -- the page -------------------------------------------------------------------------------------

PAGE_STYLE = """
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans",
  sans-serif; color: #1d2329; background: #fff; }
main { padding: 12px 16px 40px; max-width: 1296px; }
header.top { padding: 12px 16px; background: #1f2d3d; color: #fff; }
header.top h1 { margin: 0; font-size: 20px; }
header.top p { margin: 4px 0 0; color: #d5dde6; }
h2 { font-size: 17px; margin: 22px 0 8px; border-bottom: 1px solid #dde3ea; padding-bottom: 3px; }
.pill { display: inline-block; padding: 1px 10px; border-radius: 11px; font-weight: bold; }
.ok { background: #d9f2dd; color: #145c22; }
.bad { background: #fbdcdc; color: #8c1616; }
.verdict { font-size: 16px; }
ul { margin: 4px 0 8px 0; padding-left: 22px; }
dl { margin: 0; }
dt { font-weight: bold; margin-top: 6px; }
dd { margin: 2px 0 0 0; }
table { border-collapse: collapse; font-size: 13px; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid #e6eaef;
  vertical-align: top; }
th { background: #f3f5f8; }
td.mono, .mono, pre { font-family: $FONT; font-size: 12px; }
.ladder-wrap { position: relative; }
.ladder-head { position: sticky; top: 0; background: #fff; z-index: 2;
  border-bottom: 1px solid #dde3ea; }
svg { display: block; }
.hint { color: #555; margin: 4px 0 8px; }
kbd { border: 1px solid #bbb; border-bottom-width: 2px; border-radius: 3px; padding: 0 4px;
  font-size: 12px; }
#detail { position: fixed; top: 0; right: 0; width: 560px; max-width: 48vw; height: 100vh;
  overflow: auto; background: #fff; border-left: 3px solid #1f2d3d; z-index: 5;
  box-shadow: -6px 0 18px rgba(0,0,0,.18); padding: 0 14px 24px; }
#detail[hidden] { display: none; }
#detail .bar { position: sticky; top: 0; background: #fff; padding: 10px 0 6px;
  border-bottom: 1px solid #dde3ea; display: flex; gap: 6px; align-items: center; }
#detail .bar h2 { margin: 0; border: 0; font-size: 15px; flex: 1; outline: none; }
#detail h3 { font-size: 13px; margin: 14px 0 4px; color: #33414f; }
#detail td:first-child { white-space: nowrap; color: #445; }
#detail td { font-family: $FONT; font-size: 12px; word-break: break-all; }
#detail pre { background: #f6f8fa; padding: 6px 8px; overflow-x: auto; white-space: pre; }
#detail .prefix { background: #ffe7a3; }
#detail pre.hex { font-size: 11px; }
#detail table.cols td { white-space: nowrap; word-break: normal; }
#detail table.cols td:last-child { white-space: normal; word-break: break-all; }
td.t { white-space: nowrap; }
button { font: inherit; padding: 3px 10px; border: 1px solid #8a98a8; background: #f3f5f8;
  border-radius: 4px; cursor: pointer; }
button:focus-visible, a:focus-visible { outline: 3px solid #e0a800; outline-offset: 1px; }
.msgs td { font-family: $FONT; font-size: 12px; }
.fate-dropped, .fate-lost, .fate-in-flight { color: #ad1457; font-weight: bold; }
details summary { cursor: pointer; font-weight: bold; margin: 18px 0 6px; }
""".replace("$FONT", FONT)

#: The page's script: reads the two JSON blocks, writes the summary line, and opens a message's
#: panel when the address says ``#msg-N`` (a click on an arrow is a link there, so clicks, the
#: keyboard, the back button and a bookmark all take the same road). Every text goes in with
#: ``textContent``: nothing from the run is ever parsed as markup.
SCRIPT = r"""
(function () {
  "use strict";
  var run = JSON.parse(document.getElementById("labsim-run").textContent);
  var decoded = JSON.parse(document.getElementById("labsim-decoded").textContent);
  var panel = document.getElementById("detail");
  var content = document.getElementById("detail-content");
  var heading = document.getElementById("detail-title");
  var arrows = document.querySelectorAll("#ladder g.msg");
  var current = 0;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = String(text); }
    return e;
  }

  function table(head, rows) {
    var t = el("table", head ? "cols" : "");
    if (head) {
      var hr = el("tr");
      head.forEach(function (h) { hr.appendChild(el("th", "", h)); });
      t.appendChild(hr);
    }
    rows.forEach(function (row) {
      var tr = el("tr");
      row.forEach(function (cell) { tr.appendChild(el("td", "", cell)); });
      t.appendChild(tr);
    });
    return t;
  }

  function hexdump(hex, prefix) {
    var all = prefix + hex;
    var pre = el("pre", "hex");
    pre.id = "detail-hex";
    var skip = prefix.length / 2;
    for (var off = 0; off < all.length / 2; off += 16) {
      var line = el("span", "row");
      line.appendChild(document.createTextNode(("000" + off.toString(16)).slice(-4) + "  "));
      var text = "";
      for (var i = off; i < off + 16; i++) {
        var b = i < all.length / 2 ? all.substr(i * 2, 2) : "  ";
        var cell = document.createTextNode(b + (i === off + 7 ? "  " : " "));
        if (i < skip) {
          var mark = el("span", "prefix");
          mark.appendChild(cell);
          line.appendChild(mark);
        } else {
          line.appendChild(cell);
        }
        if (i < all.length / 2) {
          var code = parseInt(b, 16);
          text += code >= 32 && code < 127 ? String.fromCharCode(code) : ".";
        }
      }
      line.appendChild(document.createTextNode(" " + text + "\n"));
      pre.appendChild(line);
    }
    return pre;
  }

  function show(n) {
    var msg = run.messages[n - 1];
    var info = decoded[n - 1];
    current = n;
    heading.textContent = n + ". " + info.title;
    content.textContent = "";
    info.sections.forEach(function (s) {
      content.appendChild(el("h3", "", s.title));
      if (s.rows) { content.appendChild(table(s.head, s.rows)); }
      if (s.text !== undefined) { content.appendChild(el("pre", "", s.text)); }
    });
    if (info.hops.length > 1) {
      content.appendChild(el("h3", "", "Its journey, hop by hop"));
      var list = el("ol", "hops");
      info.hops.forEach(function (h) {
        var li = el("li");
        var a = el("a", "", h[0] + ". " + h[1] + " (" + h[2] + ")");
        a.href = "#msg-" + h[0];
        if (h[0] === n) { li.appendChild(el("strong", "", "this: " + h[1] + " (" + h[2] + ")")); }
        else { li.appendChild(a); }
        list.appendChild(li);
      });
      content.appendChild(list);
    }
    var bytes = msg.hex.length / 2;
    var words = bytes + " bytes";
    if (info.prefix) {
      words = "RFC 4571 length 0x" + info.prefix + " (" + parseInt(info.prefix, 16) +
        "), then the " + words;
    }
    content.appendChild(el("h3", "", "Bytes: " + words));
    content.appendChild(hexdump(msg.hex, info.prefix));
    panel.hidden = false;
    panel.setAttribute("data-open", String(n));
    document.querySelectorAll("#ladder g.msg.selected").forEach(function (g) {
      g.classList.remove("selected");
    });
    var arrow = document.getElementById("arrow-" + n);
    if (arrow) {
      arrow.classList.add("selected");
      arrow.scrollIntoView({block: "nearest"});
    }
    heading.focus({preventScroll: true});
  }

  function hide() {
    var was = current;
    current = 0;
    panel.hidden = true;
    panel.removeAttribute("data-open");
    content.textContent = "";
    var link = was && document.querySelector('a[href="#msg-' + was + '"]');
    if (link) { link.focus({preventScroll: true}); }
  }

  function go(n) {
    if (n >= 1 && n <= run.messages.length) { location.hash = "#msg-" + n; }
  }

  function close() {
    try {
      history.pushState(null, "", location.pathname + location.search);
    } catch (e) {
      location.hash = "";
    }
    hide();
  }

  function route() {
    var m = /^#msg-(\d+)$/.exec(location.hash);
    var n = m ? parseInt(m[1], 10) : 0;
    if (n >= 1 && n <= run.messages.length) { show(n); } else if (current) { hide(); }
  }

  var verdict = run.diagnosis ? run.diagnosis.verdict : "none";
  var lost = run.messages.filter(function (m) {
    return m.fate !== "delivered" && m.fate !== "outside";
  }).length;
  document.getElementById("summary").textContent =
    arrows.length + " messages on " + run.connections.length + " connections" +
    (lost ? " (" + lost + " never arrived)" : "") + "; outcome " + run.outcome +
    "; diagnosis " + verdict + ". Click a message for its fields and bytes.";
  document.body.setAttribute("data-messages", String(arrows.length));
  document.body.setAttribute("data-verdict", verdict);
  document.body.setAttribute("data-outcome", run.outcome);

  document.getElementById("detail-prev").addEventListener("click", function () {
    go(current - 1);
  });
  document.getElementById("detail-next").addEventListener("click", function () {
    go(current + 1);
  });
  document.getElementById("detail-close").addEventListener("click", close);
  document.addEventListener("keydown", function (e) {
    if (!current || e.altKey || e.ctrlKey || e.metaKey) { return; }
    if (e.key === "Escape") { close(); e.preventDefault(); }
    else if (e.key === "j" || e.key === "n") { go(current + 1); e.preventDefault(); }
    else if (e.key === "k" || e.key === "p") { go(current - 1); e.preventDefault(); }
  });
  window.addEventListener("hashchange", route);
  route();
  document.body.setAttribute("data-ready", "yes");
})();
"""


def _json_block(data: object) -> str:
    """JSON for a ``<script type="application/json">`` block: ``<``, ``>`` and ``&`` as JSON
    escapes, so no text from the run can close the block (``</script>``) or open a comment."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    # What is not printable (a bidi override, a line separator) as an escape too: the same
    # string once parsed, but a reader of the file sees it.
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in text)


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()


def content_security_policy(style: str, script: str) -> str:
    """No network, no other script or style than the page's own (by hash), no plug-ins, no
    forms, no base URL."""
    return (
        f"default-src 'none'; script-src '{_sha256(script)}'; style-src '{_sha256(style)}'; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )


def _list(items: Sequence[str]) -> str:
    return "<ul>" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>"


def _diagnosis_html(diagnosis: Diagnosis | None, sections: Sequence[Section]) -> list[str]:
    out = ['<section id="diagnosis" aria-labelledby="diagnosis-h">',
           '<h2 id="diagnosis-h">Diagnosis</h2>']  # fmt: skip
    if diagnosis is None:
        out.append("<p>No diagnosis.</p>")
    else:
        cls = "ok" if diagnosis.verdict in WORKING else "bad"
        out += [
            f'<p class="verdict"><span class="pill {cls}" id="verdict">{esc(diagnosis.verdict)}'
            f"</span> at step <strong>{esc(diagnosis.step)}</strong></p>",
            f"<p>{esc(diagnosis.summary)}</p>",
            "<dl>",
        ]
        parts: list[tuple[str, str]] = [
            ("Evidence", _list(diagnosis.evidence) if diagnosis.evidence else ""),
            ("Who ended the call", esc(diagnosis.ended) if diagnosis.ended else ""),
            ("Likely cause", esc(diagnosis.cause) if diagnosis.cause else ""),
            ("What to check on the real systems",
             _list(diagnosis.advice) if diagnosis.advice else ""),
            ("Recovered on the way", _list(diagnosis.recovered) if diagnosis.recovered else ""),
            ("Also found after the first failure (often its consequences)",
             _list(diagnosis.also) if diagnosis.also else ""),
        ]  # fmt: skip
        out += [f"<dt>{esc(title)}</dt><dd>{body}</dd>" for title, body in parts if body]
        out.append("</dl>")
    for title, lines in sections:
        out += [f"<h3>{esc(title)}</h3>", _list(lines)]
    out.append("</section>")
    return out


def _lost_html(trace: Trace) -> list[str]:
    """The messages that never arrived, each a link to its panel: where a trainer starts."""
    number = {id(m): i for i, m in enumerate(trace.messages, 1)}
    lost = [m for m in trace.messages if m.fate not in ("delivered", "outside")]
    if not lost:
        return []
    out = ['<section id="lost" aria-labelledby="lost-h">',
           '<h2 id="lost-h">Messages that never arrived</h2><ul>']  # fmt: skip
    for m in lost:
        n = number[id(m)]
        why = f"dropped by fault rule {m.rule}" if m.fate == "dropped" else m.fate
        words = rule_words(trace, m.rule) if m.fate == "dropped" else ""
        out.append(
            f'<li><a href="#msg-{n}">{n}. {esc(printable(m.summary))}</a> at {fmt_t(m.t)} s, '
            f"{esc(m.src)} → {esc(m.dst)}: <strong>{esc(why)}</strong>"
            + (f" ({esc(words)})" if words else "")
            + "</li>"
        )
    out += ["</ul>", "</section>"]
    return out


def _topology_html(topo: Topology) -> list[str]:
    out = [
        '<section id="topology" aria-labelledby="topology-h">',
        '<h2 id="topology-h">Topology: who connected to whom</h2>',
        '<p class="hint">Each arrow is a TCP connection, from the actor that opened it to the one '
        "that accepted it, with the port it went to and what crossed it. Above the actors: "
        "the SIP path, hop by hop. Below: the media path (TURN control and data connections, "
        "the relayed port, the ICE checks).</p>",
        topology_svg(topo),
        '<table class="links"><tr><th>connection</th><th>opened by</th><th>accepted by</th>'
        "<th>path</th><th>carried</th><th>messages</th><th>opened</th><th>ended</th></tr>",
    ]
    for link in topo.links:
        out.append(
            f'<tr><td class="mono">{esc(link.name)}</td>'
            f'<td class="mono">{esc(link.client)} {esc(link.client_addr)}</td>'
            f'<td class="mono">{esc(link.server)} {esc(link.server_addr)}</td>'
            f"<td>{esc(link.path)}</td><td>{esc(link.carries)}</td><td>{link.messages}</td>"
            f'<td class="t">{fmt_t(link.opened)} s</td><td>{esc(link.ended)}</td></tr>'
        )
    out.append("</table>")
    if topo.attempts:
        out.append("<h3>Connects that never opened</h3>")
        out.append(_list([
            f"{fmt_t(a.t)} s: {a.client} → {a.address} ({a.target}): {a.how}, {a.reason}"
            for a in topo.attempts
        ]))  # fmt: skip
    out.append("</section>")
    return out


def _ladder_html(lad: Ladder) -> list[str]:
    geo = Geometry.of(lad.columns)
    head_h = header_height(lad.columns)
    body_h = body_height(lad, geo)
    return [
        '<section id="ladder" aria-labelledby="ladder-h">',
        '<h2 id="ladder-h">Ladder</h2>',
        '<p class="hint">Time goes down, one row per event; a message is an arrow from sender '
        "to receiver with its Wireshark-style summary. A message that never arrived stops where "
        "it was lost, marked ✕. Click a message, or <kbd>Tab</kbd> to it and press "
        "<kbd>Enter</kbd>, for its fields and bytes; <kbd>j</kbd>/<kbd>k</kbd> step through "
        "the messages, <kbd>Esc</kbd> closes.</p>",
        '<div class="ladder-wrap">',
        f'<div class="ladder-head"><svg class="ladder" width="{geo.width}" height="{head_h}" '
        f'viewBox="0 0 {geo.width} {head_h}" aria-hidden="true">',
        *ladder_header(geo),
        "</svg></div>",
        f'<svg class="ladder" width="{geo.width}" height="{body_h}" '
        f'viewBox="0 0 {geo.width} {body_h}" role="group" aria-label="ladder of the run">',
        *ladder_body(lad, geo, links=True),
        "</svg>",
        "</div>",
        "</section>",
    ]


def _messages_table(trace: Trace) -> list[str]:
    out = [
        '<details id="messages"><summary>Every message as a list</summary>',
        '<table class="msgs"><tr><th>No.</th><th>time (s)</th><th>from</th><th>to</th>'
        "<th>summary</th><th>fate</th></tr>",
    ]
    for n, m in enumerate(trace.messages, 1):
        out.append(
            f'<tr><td><a href="#msg-{n}">{n}</a></td><td>{fmt_t(m.t)}</td><td>{esc(m.src)}</td>'
            f"<td>{esc(m.dst)}</td><td>{esc(printable(m.summary))}</td>"
            f'<td class="fate-{esc(m.fate)}">{esc(m.fate)}</td></tr>'
        )
    out += ["</table>", "</details>"]
    return out


def render_html(
    trace: Trace,
    actors: Sequence[str],
    *,
    scenario: str,
    outcome: Outcome | None,
    diagnosis: Diagnosis | None,
    extra: Mapping[str, object] | None = None,
    sections: Sequence[Section] = (),
    logs: bool = True,
) -> str:
    """The page. ``extra`` goes into the embedded JSON as into ``labsim run --json``'s
    (``clock``, ``expected``, ``failures``, ``reason``); ``sections`` are shown with the
    diagnosis; ``logs=False`` leaves the actors' notes out of the ladder."""
    run = trace_to_json(
        trace, scenario=scenario, outcome=outcome.name if outcome else "unknown",
        diagnosis=diagnosis.as_dict() if diagnosis else None,
        extra={"reason": outcome.reason, **(extra or {})} if outcome else extra,
    )  # fmt: skip
    number = {id(m): i for i, m in enumerate(trace.messages, 1)}
    decoded = [message_details(trace, m, number) for m in trace.messages]
    lad = ladder(trace, actors, logs=logs)
    topo = topology(trace, actors)
    style = STYLE + PAGE_STYLE
    given = dict(extra or {})
    listed = given.get("failures")
    failures = [str(f) for f in listed] if isinstance(listed, list | tuple) else []
    title = f"labsim: {scenario} — {outcome.name if outcome else 'no outcome'}"
    if outcome is None:
        outcome_html = "<p>No outcome.</p>"
    else:
        good = outcome.name == "sharing-established"
        outcome_html = (
            f'<p><span class="pill {"ok" if good else "bad"}" id="outcome-name">'
            f"{esc(outcome.name)}</span> {esc(outcome.reason)}</p>"
        )
    expected = given.get("expected")
    if expected is not None:
        if failures:
            outcome_html += "<p><strong>Expectations not met:</strong></p>" + _list(failures)
        else:
            outcome_html += f"<p>Expectations met (expected {esc(str(expected))}).</p>"
    clock = given.get("clock")
    meta = f"{len(trace.messages)} messages on {len(trace.connections)} connections"
    if clock:
        meta += f", {esc(str(clock))} clock"
    page = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" '
        f'content="{content_security_policy(style, SCRIPT)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="labsim">',
        f"<title>{esc(title)}</title>",
        f"<style>{style}</style>",
        "</head>",
        "<body>",
        '<header class="top">',
        f"<h1>labsim · {esc(scenario)}</h1>",
        f'<p id="summary">{meta}.</p>',
        "<noscript><p>JavaScript is off: the ladder, topology and diagnosis are all here; the "
        "panels with each message's fields and bytes need it.</p></noscript>",
        "</header>",
        "<main>",
        '<section id="outcome" aria-labelledby="outcome-h">',
        '<h2 id="outcome-h">Outcome</h2>',
        outcome_html,
        "</section>",
        *_diagnosis_html(diagnosis, sections),
        *_lost_html(trace),
        *_topology_html(topo),
        *_ladder_html(lad),
        *_messages_table(trace),
        "</main>",
        '<aside id="detail" hidden aria-labelledby="detail-title">',
        '<div class="bar"><h2 id="detail-title" tabindex="-1">Message</h2>',
        '<button type="button" id="detail-prev" title="previous message (k)">◀ prev</button>',
        '<button type="button" id="detail-next" title="next message (j)">next ▶</button>',
        '<button type="button" id="detail-close" title="close (Esc)">close ✕</button></div>',
        '<div id="detail-content"></div>',
        "</aside>",
        f'<script type="application/json" id="labsim-run">{_json_block(run)}</script>',
        f'<script type="application/json" id="labsim-decoded">{_json_block(decoded)}</script>',
        f"<script>{SCRIPT}</script>",
        "</body>",
        "</html>",
    ]  # fmt: skip
    return "\n".join(page) + "\n"
