"""``labsim explain``: one run walked through step by step, as Cisco TAC document 212580 tells it.

For each step of the sharing call — the new INVITE and its Call-ID, CMS's TURN allocation over
TCP to port 3478, the 401 challenge, the relay candidate in the Allocate Success and in the
200 OK's SDP, the ACK, the ConnectionAttempt on the control connection, the ConnectionBind on a
new one, the peer's first bytes through the pipe, the RFC 4571-framed checks both ways, the
reINVITE, the keepalive, the Refresh, the 21002 refusal — the explanation says what happens
(naming the actors and their addresses), the fields and bytes of *this run* that show it, why
(with the section of the RFC or Microsoft document), what to look for in Wireshark (display
filters that select exactly those messages, and their frame numbers in the run's capture at
CMS), and what breaks when the step fails (the library scenario that shows it, and the verdict
its diagnosis gives). A step that did not happen in the run is said so.

The steps are data (:data:`STEPS`), as the diagnosis's verdicts are (:data:`labsim.report
.diagnose.RULES`): each a finder over the trace's typed facts (:mod:`labsim.wire.facts`),
never its summaries, plus its words. :func:`explain` applies them to a trace;
:func:`departure` compares the run with the healthy lab's (run alongside by the caller, on the
virtual clock) step by step, by typed facts, and marks the first step that differs;
:func:`render_text` and :func:`explanation_json` write it for people and for tools.

Like every renderer, this reads the trace only (DESIGN.md: "the trace is the truth"); the
command line runs the scenario and the healthy lab and hands both traces in.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from labsim.report.diagnose import Diagnosis
from labsim.report.evidence import Step as DiagnosisStep
from labsim.report.pcap import wire_payload
from labsim.trace import ConnectionRecord, MessageRecord, RefusedRecord, Trace
from labsim.vocabulary import Verdict
from labsim.wire import WireError, sip, stun
from labsim.wire.address import Address
from labsim.wire.facts import SipFacts, StunFacts

# ---------------------------------------------------------------------------------------------
# The cast: who is who in the lab (DESIGN.md's picture)
# ---------------------------------------------------------------------------------------------

CLIENT, EDGE, EXPE, EXPC, CMS = "skype_client", "skype_edge", "expressway_e", "expressway_c", "cms"

#: How people name the actors.
ROLE = {
    CLIENT: "the Skype client", EDGE: "the Skype Edge", EXPE: "Expressway-E",
    EXPC: "Expressway-C", CMS: "CMS",
}  # fmt: skip

#: The capture point whose frames the explanation numbers: CMS, as the TechNote's lab captured.
POINT = CMS

#: The Cisco TechNote this explains.
TECHNOTE = "Cisco TAC document 212580"


# ---------------------------------------------------------------------------------------------
# What a step found in a run
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hex:
    """A short excerpt of a message's bytes as they went on the wire, and what they say."""

    label: str
    bytes: str
    """Lower-case hex, a space between bytes (``00 6c 00 01 00 58 21 12 a4 42``)."""
    note: str


@dataclass
class Filter:
    """A Wireshark display filter and the messages of the run it selects."""

    expr: str
    records: list[MessageRecord] = field(default_factory=list)
    """The messages it selects (every hop; a capture point shows the hops that touch it)."""
    connections: list[ConnectionRecord] = field(default_factory=list)
    """Connections whose opening SYN it selects."""
    plugin: bool = False
    """Needs labsim's Lua plugin (``labsim wireshark-plugin``) loaded."""
    note: str = ""
    frames: list[int] = field(default_factory=list)
    """Its frames in the run's capture at :data:`POINT` (filled in by :func:`explain`)."""


@dataclass
class Found:
    """What a step's finder found in one run: the messages and connections the step is about,
    the fields and bytes that show it, and the filters that select them."""

    records: list[MessageRecord] = field(default_factory=list)
    connections: list[ConnectionRecord] = field(default_factory=list)
    refused: list[RefusedRecord] = field(default_factory=list)
    """Connects that never opened (a refused or unanswered SYN)."""
    context: list[MessageRecord] = field(default_factory=list)
    """Messages shown beside the step's own, not compared (the INVITE that TURN waits for)."""
    fields: list[tuple[str, str]] = field(default_factory=list)
    hex: list[Hex] = field(default_factory=list)
    filters: list[Filter] = field(default_factory=list)
    slots: dict[str, str] = field(default_factory=dict)
    """Words for the step's templates that only this step's finder knows."""
    note: str = ""
    """A sentence about this run in particular (said after what happens)."""

    @property
    def happened(self) -> bool:
        return bool(self.records or self.connections)


# ---------------------------------------------------------------------------------------------
# The call, read once from the trace
# ---------------------------------------------------------------------------------------------


@dataclass
class Call:
    """The trace with the call's landmarks named: the sharing INVITE and its dialog, CMS's TURN
    connections, the relayed address, the actors' lab addresses."""

    trace: Trace
    hosts: dict[str, str]
    index: dict[int, int]
    """Message record (by ``id``) → its index in ``trace.messages`` (the run's JSON)."""
    invite: MessageRecord | None = None
    """The sharing INVITE as its sender sent it (hop 0)."""
    earlier: list[MessageRecord] = field(default_factory=list)
    """Initial INVITEs of other dialogs sent before it (the audio/video call)."""
    control: list[ConnectionRecord] = field(default_factory=list)
    """CMS's TURN control connections (where it sent Allocate)."""
    data: list[ConnectionRecord] = field(default_factory=list)
    """CMS's TURN data connections (where it sent ConnectionBind)."""
    relay: Address | None = None
    """XOR-RELAYED-ADDRESS of the first Allocate Success Response."""
    turn_server: Address | None = None
    """Where CMS reached (or tried to reach) its TURN server."""
    peer: Address | None = None
    """XOR-PEER-ADDRESS of the first ConnectionAttempt: who connected to the relay."""

    @property
    def facts(self) -> SipFacts | None:
        return self.invite.sip_facts if self.invite is not None else None

    @property
    def call_id(self) -> str:
        facts = self.facts
        return facts.call_id if facts is not None else ""

    def sip(self) -> list[tuple[MessageRecord, SipFacts]]:
        """Every SIP message of the sharing dialog, every hop."""
        return [
            (m, f) for m in self.trace.messages
            if (f := m.sip_facts) is not None and f.call_id == self.call_id and self.call_id
        ]  # fmt: skip

    def stun(self) -> list[tuple[MessageRecord, StunFacts]]:
        return [(m, f) for m in self.trace.messages if (f := m.stun_facts) is not None]

    def who(self, actor: str) -> str:
        """``the Skype Edge (192.168.1.252)``."""
        host = self.hosts.get(actor)
        role = ROLE.get(actor, actor)
        return f"{role} ({host})" if host else role

    def actor_at(self, host: str) -> str:
        return next((a for a, h in self.hosts.items() if h == host), host)


def read_call(trace: Trace) -> Call:
    hosts: dict[str, str] = {}
    for conn in trace.connections.values():
        hosts.setdefault(conn.client, conn.client_addr.host)
        hosts.setdefault(conn.server, conn.server_addr.host)
    call = Call(trace, hosts, {id(m): i for i, m in enumerate(trace.messages)})
    initial = [
        m for m in trace.messages
        if m.hop == 0 and (sf := m.sip_facts) is not None and sf.method == "INVITE"
        and sf.to_tag is None
    ]  # fmt: skip
    sharing = [m for m in initial if "applicationsharing" in _sip_facts(m).media]
    if sharing:
        call.invite = sharing[0]
        call.earlier = [
            m for m in initial
            if _sip_facts(m).call_id != call.call_id and m.sent_t <= sharing[0].sent_t
        ]  # fmt: skip
    for m, facts in call.stun():
        turn = trace.connections.get(m.connection)
        if turn is None or m.src != CMS or m.hop != 0:
            continue
        if facts.method == "Allocate" and facts.is_request and turn not in call.control:
            call.control.append(turn)
        if facts.method == "ConnectionBind" and facts.is_request and turn not in call.data:
            call.data.append(turn)
        if call.turn_server is None and m.dst == EXPE:
            call.turn_server = m.dst_addr
    if call.turn_server is None:
        tried = [r for r in trace.refused if r.client == CMS]
        if tried:
            call.turn_server = tried[0].server_addr
    for m, facts in call.stun():
        if facts.method == "Allocate" and facts.is_success and m.dst == CMS and facts.relayed:
            call.relay = facts.relayed
            break
    for _, facts in call.stun():
        if facts.method == "ConnectionAttempt" and facts.peer is not None:
            call.peer = facts.peer
            break
    return call


def _sip_facts(m: MessageRecord) -> SipFacts:
    facts = m.sip_facts
    assert facts is not None
    return facts


def _stun_facts(m: MessageRecord) -> StunFacts:
    facts = m.stun_facts
    assert facts is not None
    return facts


# ---------------------------------------------------------------------------------------------
# Small readers of one message
# ---------------------------------------------------------------------------------------------


def _stun_message(m: MessageRecord) -> stun.Message | None:
    decoded = m.decoded()
    return decoded if isinstance(decoded, stun.Message) else None


def _sdp_lines(m: MessageRecord) -> list[str]:
    """The SDP body's lines (none when it has no body or does not parse)."""
    try:
        body = sip.parse_message(m.data).body or b""
    except WireError:
        return []
    return [line for line in body.decode("utf-8", "replace").splitlines() if line]


def _start_line(m: MessageRecord) -> str:
    return m.data.split(b"\r\n", 1)[0].decode("utf-8", "replace")


def _spaced(data: bytes) -> str:
    return " ".join(f"{b:02x}" for b in data)


def _wire(m: MessageRecord) -> bytes:
    """The bytes it took on the wire (an RFC 4571 frame with its length; a dropped message's
    bytes as its sender sent them)."""
    return wire_payload(m, dropped=True) or b""


def _tlv(msg: stun.Message, kind: type[stun.Attribute]) -> bytes:
    """One attribute as it sits on the wire: type, length, value (RFC 5389 §15)."""
    attr = msg.get(kind)
    if attr is None:
        return b""
    value = attr.wire_value(msg.transaction_id)
    return attr.type.to_bytes(2, "big") + len(value).to_bytes(2, "big") + value


def _header_hex(m: MessageRecord) -> Hex:
    """The start of a STUN message on the wire: RFC 4571 length (when framed), type, length,
    magic cookie (RFC 5389 §6)."""
    data = _wire(m)
    facts = _stun_facts(m)
    if m.framed:
        length = int.from_bytes(data[0:2], "big")
        kind = int.from_bytes(data[2:4], "big")
        body = int.from_bytes(data[4:6], "big")
        note = (
            f"RFC 4571 length 0x{length:04x} = {length}; type 0x{kind:04x} = {facts.method} "
            f"{facts.cls}; STUN length 0x{body:04x} = {body}; magic cookie 21 12 a4 42 at "
            "offset 6, not 4"
        )
        return Hex("start of the frame", _spaced(data[:10]), note)
    kind = int.from_bytes(data[0:2], "big")
    body = int.from_bytes(data[2:4], "big")
    note = (
        f"type 0x{kind:04x} = {facts.method} {facts.cls}; length 0x{body:04x} = {body} bytes "
        "of attributes; magic cookie"
    )
    return Hex("STUN header", _spaced(data[:8]), note)


def _attr_hex(m: MessageRecord, kind: type[stun.Attribute], note: str) -> list[Hex]:
    msg = _stun_message(m)
    if msg is None:
        return []
    tlv = _tlv(msg, kind)
    return [Hex(kind.NAME, _spaced(tlv), note)] if tlv else []


def kind_of(m: MessageRecord) -> str:
    """A message's name as people say it, from its typed facts: ``INVITE``, ``reINVITE``,
    ``200 OK (INVITE)``, ``Allocate Error Response 401``, ``data``."""
    facts = m.facts
    if isinstance(facts, SipFacts):
        if facts.method is not None:
            return "reINVITE" if facts.method == "INVITE" and facts.to_tag else facts.method
        return f"{facts.status} {facts.reason} ({facts.cseq_method})".replace("  ", " ")
    if isinstance(facts, StunFacts):
        base = f"{facts.method} {facts.cls}"
        return f"{base} {facts.error}" if facts.error is not None else base
    return "framed data" if m.framed else "data"


def _fate(m: MessageRecord) -> str:
    if m.fate == "dropped":
        return f"dropped by fault rule {m.rule}" if m.rule else "dropped"
    if m.fate == "lost":
        return "lost with its connection"
    if m.fate == "in-flight":
        return "still in flight at the end"
    return m.fate


def _conn_words(conn: ConnectionRecord) -> str:
    return f"{conn.client_addr} → {conn.server_addr} ({conn.name})"


def _tcp_filter(conn: ConnectionRecord) -> str:
    """A display filter for one TCP connection, by its two ends."""
    a, b = conn.client_addr, conn.server_addr
    return (
        f"ip.addr == {a.host} && ip.addr == {b.host} && tcp.port == {a.port} && "
        f"tcp.port == {b.port}"
    )


def _syn_filter(conn: ConnectionRecord) -> str:
    a, b = conn.client_addr, conn.server_addr
    return (
        f"tcp.flags.syn == 1 && tcp.flags.ack == 0 && ip.src == {a.host} && tcp.srcport == "
        f"{a.port} && ip.dst == {b.host} && tcp.dstport == {b.port}"
    )


def _colons(data: bytes) -> str:
    return ":".join(f"{b:02x}" for b in data)


def _stun_type_filter(*types: int) -> str:
    return " || ".join(f"stun.type == 0x{t:04x}" for t in types)


def _error_filter(stun_type: int, code: int) -> str:
    """An error response with one ERROR-CODE: Wireshark splits it into class and number
    (RFC 5389 §15.6: 401 is class 4, number 1)."""
    return (
        f"stun.type == 0x{stun_type:04x} && stun.att.error.class == {code // 100} && "
        f"stun.att.error == {code % 100}"
    )


def _type_of(m: MessageRecord) -> int:
    msg = _stun_message(m)
    return msg.type if msg is not None else -1


def _responses_to(call: Call, requests: Sequence[MessageRecord]) -> list[MessageRecord]:
    """Every hop of the responses that answer these STUN requests (same transaction id)."""
    ids = {_stun_facts(r).transaction_id for r in requests}
    return [
        m for m, f in call.stun()
        if f.transaction_id in ids and not f.is_request and f.cls != "Indication"
    ]  # fmt: skip


def _by_time(records: Iterable[MessageRecord], index: Mapping[int, int]) -> list[MessageRecord]:
    return sorted(records, key=lambda m: index[id(m)])


# -- 1. the sharing INVITE ---------------------------------------------------------------------


def find_invite(call: Call) -> Found:
    """The sharing INVITE on every hop: a new dialog, its own Call-ID (RFC 3261 §8.1.1.4)."""
    found = Found()
    facts = call.facts
    if call.invite is None or facts is None:
        return found
    journey = call.invite.journey
    found.records = list(journey.hops) if journey is not None else [call.invite]
    path = " → ".join([found.records[0].src, *(h.dst for h in found.records)])
    found.fields += [
        ("Request line", _start_line(call.invite)),
        ("Call-ID", facts.call_id),
        ("From tag", facts.from_tag or ""),
        ("To tag", "none: outside any dialog, so this INVITE starts one"),
        ("CSeq", f"{facts.cseq} {facts.cseq_method}"),
        ("Path", path),
    ]
    lines = _sdp_lines(call.invite)
    found.fields += [("SDP", line) for line in lines if line.startswith("m=")]
    found.fields += [("SDP", line) for line in lines if line.startswith("a=candidate:")]
    found.fields += [
        ("SDP", line) for line in lines
        if line.startswith(("a=connection:", "a=x-applicationsharing-role:"))
    ]  # fmt: skip
    if call.earlier:
        for m in call.earlier:
            f = _sip_facts(m)
            media = " ".join(f"m={kind}" for kind in f.media) or "no SDP"
            found.fields.append(
                ("Earlier dialog", f"Call-ID {f.call_id} (INVITE at t={m.sent_t:.6f} s, {media})")
            )
        found.note = (
            f"This run has the audio/video call before it: its dialog's Call-ID is "
            f"{_sip_facts(call.earlier[0]).call_id}, the share's is {facts.call_id}. Two "
            "dialogs, not a reINVITE of the first."
        )
    else:
        found.note = (
            "This run has no audio/video dialog before the share; the TechNote's lab has one, "
            'already negotiated and not shown: "It will have a different SIP call-id than '
            'the initial audio/video call."'
        )
    found.filters.append(Filter(
        'sip.Method == "INVITE" && sdp.media.media == "applicationsharing" && !sip.to.tag',
        found.records,
    ))  # fmt: skip
    return found


# -- 2. TURN only after the INVITE, over TCP to 3478 -------------------------------------------


def find_turn_after_invite(call: Call) -> Found:
    """CMS's first TURN connection, opened once the INVITE reached it."""
    found = Found()
    at_cms = [
        m for m in (call.invite.journey.hops if call.invite and call.invite.journey else [])
        if m.dst == CMS and m.delivered
    ]  # fmt: skip
    found.context = at_cms
    found.connections = call.control[:1]
    server = call.turn_server
    found.refused = [
        r for r in call.trace.refused if r.client == CMS and server is not None
        and r.server_addr == server
    ]  # fmt: skip
    if at_cms:
        found.fields.append(("INVITE reached CMS", f"t={at_cms[0].fate_t or at_cms[0].t:.6f} s"))
    for conn in found.connections:
        if at_cms:
            delta = conn.opened - (at_cms[0].fate_t or at_cms[0].t)
            found.fields.append(("After the INVITE", f"{delta * 1000:.3f} ms"))
        found.fields.append(("Transport", f"TCP to port {conn.server_addr.port}"))
    earlier = [
        m for m, f in call.stun()
        if m.src == CMS and at_cms and m.t < (at_cms[0].fate_t or at_cms[0].t)
    ]  # fmt: skip
    found.fields.append(
        ("TURN before the INVITE", f"{len(earlier)} messages" if earlier else "none")
    )
    for r in found.refused:
        found.fields.append(
            ("Connect failed", f"{r.client_host} → {r.server_addr}: {r.how} ({r.reason}) at "
                               f"t={r.t:.6f} s")
        )  # fmt: skip
    if found.connections and at_cms:
        conn = found.connections[0]
        found.filters.append(Filter(
            f'(sip.Method == "INVITE" && sdp.media.media == "applicationsharing" && '
            f"!sip.to.tag) || ({_syn_filter(conn)})",
            at_cms, found.connections,
            note="the INVITE's row comes first, then CMS's SYN to the TURN port",
        ))  # fmt: skip
    return found


# -- 3. the first Allocate: a TCP relay, no credentials yet ------------------------------------


def _allocates(call: Call, authenticated: bool | None) -> list[MessageRecord]:
    return [
        m for m, f in call.stun()
        if f.method == "Allocate" and f.is_request and m.src == CMS
        and (authenticated is None or f.integrity == authenticated)
    ]  # fmt: skip


def find_allocate(call: Call) -> Found:
    found = Found()
    first = _allocates(call, False)[:1]
    found.records = first
    if not first:
        return found
    m = first[0]
    msg = _stun_message(m)
    transport = msg.get(stun.RequestedTransport) if msg is not None else None
    facts = _stun_facts(m)
    conn = call.trace.connections[m.connection]
    found.fields += [
        ("On", _conn_words(conn)),
        ("REQUESTED-TRANSPORT", f"{transport.protocol} (TCP)" if transport else "absent"),
        ("LIFETIME", f"{facts.lifetime} s" if facts.lifetime is not None else "absent"),
        ("USERNAME, REALM, NONCE, MESSAGE-INTEGRITY", "absent: the first request"),
        ("Size", f"{m.size} bytes of STUN, {m.size + 54} bytes in the frame (the lab: 98)"),
    ]
    found.hex.append(_header_hex(m))
    found.hex += _attr_hex(
        m, stun.RequestedTransport, "REQUESTED-TRANSPORT (0x0019): protocol 6 = TCP, then RFFU"
    )
    found.filters.append(Filter("stun.type == 0x0003 && !stun.att.username", first))
    return found


# -- 4. the 401 challenge and the authenticated Allocate ---------------------------------------


def find_challenge(call: Call) -> Found:
    found = Found()
    errors = [
        m for m, f in call.stun()
        if f.method == "Allocate" and f.is_error and f.error == 401 and m.dst == CMS
    ]  # fmt: skip
    retries = _allocates(call, True)
    found.records = _by_time([*errors, *retries], call.index)
    if errors:
        challenge = _stun_message(errors[0])
        realm = challenge.get(stun.Realm) if challenge else None
        nonce = challenge.get(stun.Nonce) if challenge else None
        found.fields += [
            ("ERROR-CODE", "401 (Unauthorized)"),
            ("REALM", realm.value if realm else "absent"),
            ("NONCE", nonce.value if nonce else "absent"),
        ]
        if realm is not None:
            found.slots["realm"] = realm.value
        found.hex.append(_header_hex(errors[0]))
    if retries:
        retry = _stun_message(retries[0])
        user = retry.get(stun.Username) if retry else None
        echoed = retry.get(stun.Nonce) if retry else None
        first_nonce = _stun_message(errors[0]).get(stun.Nonce) if errors else None  # type: ignore[union-attr]
        found.fields += [
            ("USERNAME", user.value if user else "absent"),
            ("NONCE echoed", "yes, the 401's" if echoed is not None and first_nonce is not None
             and echoed.value == first_nonce.value else "no"),
            ("MESSAGE-INTEGRITY", "HMAC-SHA1 over the message, key MD5(username:realm:password) "
                                  "(RFC 5389 §15.4): the password never crosses the wire"),
        ]  # fmt: skip
        if user is not None:
            found.slots["user"] = user.value
    again = [m for m in errors if m.t > min((r.t for r in retries), default=float("inf"))]
    if again:
        found.fields.append(("401 again", "the authenticated Allocate was refused too: "
                                          "the credentials do not match"))  # fmt: skip
    parts = []
    if errors:
        parts.append(_error_filter(0x0113, 401))
    if retries:
        parts.append("stun.type == 0x0003 && stun.att.username")
    if parts:
        found.filters.append(Filter(_any_of(parts), found.records))
    return found


# -- 5. the relay: Allocate Success with XOR-RELAYED-ADDRESS -----------------------------------


def find_relay(call: Call) -> Found:
    found = Found()
    answers = [
        m for m, f in call.stun()
        if f.method == "Allocate" and m.dst == CMS
        and (f.is_success or (f.is_error and f.error != 401))
    ]  # fmt: skip
    found.records = answers
    successes = [m for m in answers if _stun_facts(m).is_success]
    for m in successes[:1]:
        facts = _stun_facts(m)
        found.fields += [
            ("XOR-RELAYED-ADDRESS", str(facts.relayed)),
            ("XOR-MAPPED-ADDRESS", f"{facts.mapped} (CMS as Expressway-E sees it)"),
            ("LIFETIME", f"{facts.lifetime} s"),
            ("Size", f"{m.size} bytes of STUN, {m.size + 54} in the frame (the lab: 166)"),
        ]
        found.hex.append(_header_hex(m))
        found.hex += _attr_hex(
            m, stun.XorRelayedAddress,
            "XOR-RELAYED-ADDRESS (0x0016): family 01 (IPv4), then port and address XORed with "
            "the magic cookie 21 12 a4 42 (RFC 5389 §15.2), so no middlebox rewrites them",
        )  # fmt: skip
    for m in answers:
        facts = _stun_facts(m)
        if facts.is_error:
            found.fields.append(("Refused", f"Allocate Error Response {facts.error}"))
    parts = ["stun.type == 0x0103"] if successes else []
    codes = sorted({_stun_facts(m).error or 0 for m in answers if _stun_facts(m).is_error})
    parts += [_error_filter(0x0113, code) for code in codes]
    if parts:
        found.filters.append(Filter(_any_of(parts), answers))
    return found


# -- 6. the Refresh ----------------------------------------------------------------------------


def _refreshes(call: Call, release: bool) -> tuple[list[MessageRecord], list[MessageRecord]]:
    """CMS's Refresh requests that keep the allocation (``release`` False) or give it back
    (LIFETIME 0, RFC 5766 §7.1), and every answer to them."""
    requests = [
        m for m, f in call.stun()
        if f.method == "Refresh" and f.is_request and m.src == CMS
        and (f.lifetime == 0) == release
    ]  # fmt: skip
    return requests, _responses_to(call, requests)


def _refresh_filter(requests: list[MessageRecord], answers: list[MessageRecord],
                    release: bool) -> str:  # fmt: skip
    lifetime = "stun.att.lifetime == 0" if release else "!(stun.att.lifetime == 0)"
    parts = [f"(stun.type == 0x0004 || stun.type == 0x0104) && {lifetime}"]
    # Error answers carry no LIFETIME: named by their transaction (Wireshark's stun.id).
    parts += [
        f"stun.type == 0x0114 && stun.id == {_colons(bytes.fromhex(facts.transaction_id))}"
        for m in answers if (facts := _stun_facts(m)).is_error
    ]  # fmt: skip
    return _any_of(parts)


def _any_of(parts: Sequence[str]) -> str:
    """Filters joined with ||, each in parentheses when there are several."""
    return parts[0] if len(parts) == 1 else " || ".join(f"({p})" for p in parts)


def find_refresh(call: Call) -> Found:
    found = Found()
    requests, answers = _refreshes(call, release=False)
    found.records = _by_time([*requests, *answers], call.index)
    success = [m for m, f in call.stun() if f.method == "Allocate" and f.is_success]
    for m in requests[:1]:
        after = (
            f"{(m.t - success[0].t) * 1000:.3f} ms after the Allocate Success" if success else ""
        )
        found.fields += [
            ("First Refresh", f"t={m.t:.6f} s, {after}".rstrip(", ")),
            ("LIFETIME asked", f"{_stun_facts(m).lifetime} s"),
        ]
    granted = [m for m in answers if _stun_facts(m).is_success]
    for m in granted[:1]:
        found.fields.append(("LIFETIME granted", f"{_stun_facts(m).lifetime} s"))
    found.fields.append(("Refreshes in this run", str(len(requests))))
    for m in answers:
        facts = _stun_facts(m)
        if facts.is_error:
            found.fields.append(("Refused", f"Refresh Error Response {facts.error} at "
                                            f"t={m.t:.6f} s"))  # fmt: skip
    if found.records:
        found.filters.append(Filter(_refresh_filter(requests, answers, False), found.records))
    return found


# -- 7. the answer: 200 OK with the relay candidate --------------------------------------------


def _initial_transaction(call: Call) -> tuple[str | None, int]:
    facts = call.facts
    return (facts.from_tag, facts.cseq) if facts is not None else (None, -1)


def find_answer(call: Call) -> Found:
    found = Found()
    tag, cseq = _initial_transaction(call)
    finals = [
        m for m, f in call.sip()
        if f.status is not None and f.status >= 200 and f.cseq_method == "INVITE"
        and (f.from_tag, f.cseq) == (tag, cseq)
    ]  # fmt: skip
    found.records = finals
    first = next((m for m in finals if m.hop == 0), finals[0] if finals else None)
    if first is None:
        return found
    facts = _sip_facts(first)
    found.fields += [
        ("Status", f"{facts.status} {facts.reason}"),
        ("From", f"{first.src} (the answering end), t={first.t:.6f} s"),
        ("To tag", f"{facts.to_tag} (CMS's half of the dialog's id)" if facts.to_tag else "none"),
    ]
    lines = _sdp_lines(first)
    relay_lines = [
        line for line in lines if line.startswith("a=candidate:") and " typ relay" in line
    ]
    found.fields += [("SDP", line) for line in lines if line.startswith(("m=", "c="))]
    found.fields += [("SDP", line) for line in lines if line.startswith("a=candidate:")]
    if call.relay is not None:
        wanted = f" {call.relay.host} {call.relay.port} typ relay"
        match = [line for line in relay_lines if wanted in line]
        found.fields.append((
            "Relay candidate = XOR-RELAYED-ADDRESS",
            f"yes: {call.relay}" if match else f"no: the SDP does not offer {call.relay}",
        ))  # fmt: skip
        if match:
            found.slots["candidate"] = match[0]
    elif facts.status == 200:
        found.fields.append(("Relay candidate", "none: CMS has no relayed address to offer"))
    if facts.diagnostics:
        found.fields.append(("ms-diagnostics", facts.diagnostics))
    found.filters.append(Filter(
        f'sip.Status-Code >= 200 && sip.CSeq.method == "INVITE" && sip.from.tag == "{tag}" '
        f"&& sip.CSeq.seq == {cseq}",
        finals,
    ))  # fmt: skip
    return found


# -- 8. ACK ------------------------------------------------------------------------------------


def find_ack(call: Call) -> Found:
    found = Found()
    tag, cseq = _initial_transaction(call)
    acks = [
        m for m, f in call.sip()
        if f.method == "ACK" and (f.from_tag, f.cseq) == (tag, cseq)
    ]  # fmt: skip
    found.records = acks
    if not acks:
        return found
    first = acks[0]
    finals = [
        f"{f.status} {f.reason}" for _, f in call.sip()
        if f.status is not None and f.status >= 200 and (f.from_tag, f.cseq) == (tag, cseq)
        and f.cseq_method == "INVITE"
    ]  # fmt: skip
    try:
        routes = [str(r) for r in sip.route(sip.parse_message(first.data))]
    except WireError:
        routes = []
    found.fields += [
        ("ACK", f"CSeq {_sip_facts(first).cseq} ACK, t={first.t:.6f} s from {first.src}"),
        ("Acknowledges", f"{finals[0]}" if finals else "?"),
        ("Route", ", ".join(routes) if routes else "none (hop by hop)"),
        ("Reached CMS", "yes" if any(m.dst == CMS and m.delivered for m in acks) else "no"),
    ]
    found.filters.append(Filter(
        f'sip.Method == "ACK" && sip.from.tag == "{tag}" && sip.CSeq.seq == {cseq}', acks
    ))  # fmt: skip
    return found


# -- 9. the peer connects; ConnectionAttempt on the control connection -------------------------


def find_connection_attempt(call: Call) -> Found:
    found = Found()
    attempts = [
        m for m, f in call.stun() if f.method == "ConnectionAttempt" and m.dst == CMS
    ]  # fmt: skip
    permissions = [m for m, f in call.stun() if f.method == "CreatePermission"]
    found.records = _by_time([*permissions, *attempts], call.index)
    relay = call.relay
    found.connections = [
        c for c in call.trace.connections.values()
        if relay is not None and c.server == EXPE and c.server_addr.port == relay.port
        and c.client != CMS
    ] if relay is not None else []  # fmt: skip
    if relay is not None:
        found.refused = [
            r for r in call.trace.refused if r.server_addr == relay
            or (r.client != CMS and r.server_addr.port == relay.port)
        ]  # fmt: skip
    for conn in found.connections[:1]:
        found.fields.append(
            ("Peer connection", f"{_conn_words(conn)} at t={conn.opened:.6f} s"
             + (f", reset at t={conn.closed:.6f} s" if conn.reset and conn.closed else ""))
        )  # fmt: skip
        found.slots["peer_actor"] = call.who(conn.client)
    for r in found.refused:
        found.fields.append(("Peer connect failed", f"{r.client_host} → {r.server_addr}: "
                                                    f"{r.how} at t={r.t:.6f} s"))  # fmt: skip
    if permissions:
        found.fields.append(("CreatePermission", ", ".join(kind_of(m) for m in permissions
                                                           if m.hop == 0)))  # fmt: skip
    else:
        found.fields.append(("CreatePermission", "none: this Expressway-E lets the peer in "
                                                 "without one, as the lab's did"))  # fmt: skip
    for m in attempts[:1]:
        facts = _stun_facts(m)
        conn = call.trace.connections[m.connection]
        allocate = call.control[0] if call.control else None
        same = allocate is not None and conn.id == allocate.id
        found.fields += [
            ("XOR-PEER-ADDRESS", str(facts.peer)),
            ("CONNECTION-ID", f"0x{facts.connection_id:08x}" if facts.connection_id is not None
             else "absent"),
            ("On", _conn_words(conn)),
            ("The Allocate's connection", "yes: the control connection" if same
             else "no"),
        ]  # fmt: skip
        if facts.peer is not None:
            found.slots["peer"] = str(facts.peer)
        found.hex.append(_header_hex(m))
        found.hex += _attr_hex(
            m, stun.XorPeerAddress, "XOR-PEER-ADDRESS (0x0012): the peer's address, XORed"
        )
        found.hex += _attr_hex(
            m, stun.ConnectionId, "CONNECTION-ID (0x002a): names the peer's connection"
        )
    types = sorted({_type_of(m) for m in found.records})
    if types:
        found.filters.append(Filter(_stun_type_filter(*types), found.records))
    return found


# -- 10. ConnectionBind on a new connection ----------------------------------------------------


def find_connection_bind(call: Call) -> Found:
    found = Found()
    binds = [
        m for m, f in call.stun() if f.method == "ConnectionBind" and f.is_request and m.src == CMS
    ]  # fmt: skip
    answers = _responses_to(call, binds)
    found.records = _by_time([*binds, *answers], call.index)
    found.connections = list(call.data)
    attempts = [m for m, f in call.stun() if f.method == "ConnectionAttempt" and m.dst == CMS]
    for m in binds[:1]:
        facts = _stun_facts(m)
        conn = call.trace.connections[m.connection]
        control = call.control[0] if call.control else None
        found.fields += [
            ("New connection", f"{_conn_words(conn)}, opened t={conn.opened:.6f} s"),
            ("Not the control connection", (
                f"yes: source port {conn.client_addr.port}, the control connection's is "
                f"{control.client_addr.port}") if control is not None
                and control.id != conn.id else "no"),
            ("CONNECTION-ID", f"0x{facts.connection_id:08x}" if facts.connection_id is not None
             else "absent"),
        ]  # fmt: skip
        if attempts:
            wanted = _stun_facts(attempts[0]).connection_id
            found.fields.append(("= the ConnectionAttempt's", "yes" if wanted ==
                                 facts.connection_id else "no"))  # fmt: skip
            found.fields.append((
                "After the ConnectionAttempt",
                f"{(m.t - attempts[0].t) * 1000:.3f} ms (the lab: 51 ms)",
            ))  # fmt: skip
        found.fields.append(("Credentials", f"USERNAME {facts.username}, REALM {facts.realm}, "
                                            "the control connection's NONCE, "
                                            "MESSAGE-INTEGRITY"))  # fmt: skip
        found.hex.append(_header_hex(m))
    for m in answers:
        facts = _stun_facts(m)
        word = "Success Response" if facts.is_success else f"Error Response {facts.error}"
        if m.hop == 0:
            found.fields.append(("Answer", f"ConnectionBind {word} at t={m.t:.6f} s"))
    types = sorted({_type_of(m) for m in found.records})
    if types:
        found.filters.append(Filter(_stun_type_filter(*types), found.records))
    return found


# -- 11. the peer's first bytes through the pipe -----------------------------------------------


def find_peer_data(call: Call) -> Found:
    found = Found()
    for conn in call.data:
        arrived = [
            m for m in call.trace.messages
            if m.connection == conn.id and m.relayed and m.src == EXPE and m.dst == CMS
        ]  # fmt: skip
        if not arrived:
            continue
        first = arrived[0]
        journey = first.journey
        # The step is the pipe's hop; the hops before it (the Skype side to the relay) are
        # context: they happen whether or not a data connection is ever bound.
        hops = list(journey.hops) if journey is not None else [first]
        found.records = [first]
        found.context = [h for h in hops if h is not first]
        bound = [
            m for m, f in call.stun()
            if f.method == "ConnectionBind" and f.is_success and m.connection == conn.id
        ]  # fmt: skip
        at_relay = [h for h in hops if h.dst == EXPE]
        found.fields += [
            ("Path", " → ".join([hops[0].src, *(h.dst for h in hops)])),
            ("What it is", kind_of(first)),
            ("On", _conn_words(conn)),
            ("Size on the wire", f"{first.wire_size} bytes (the lab's frame 2596: Len=90)"),
        ]
        if at_relay and bound:
            early = at_relay[0].t < bound[0].t
            found.fields.append((
                "Sent before the bind",
                f"yes: it reached the relay at t={at_relay[0].t:.6f} s, Expressway-E held it "
                f"and passed it on right after the ConnectionBind Success Response "
                f"(t={bound[0].t:.6f} s)" if early else "no: it came after the bind",
            ))  # fmt: skip
        facts = first.stun_facts
        if facts is not None and facts.username:
            found.fields.append(("USERNAME", f"{facts.username} (CMS's ufrag : the Skype "
                                             "side's, RFC 5245 §7.1.2.3)"))  # fmt: skip
        found.hex.append(_header_hex(first) if facts is not None else
                         Hex("start", _spaced(_wire(first)[:10]), "opaque bytes"))  # fmt: skip
        head = _wire(first)[:4]
        found.filters.append(Filter(
            f"ip.src == {conn.server_addr.host} && tcp.srcport == {conn.server_addr.port} && "
            f"ip.dst == {conn.client_addr.host} && tcp.dstport == {conn.client_addr.port} && "
            f"tcp.payload[0:4] == {_colons(head)}",
            [m for m in arrived if _wire(m)[:4] == head],
            note="without the plugin Wireshark shows it as TCP data (Len=" f"{first.wire_size})",
        ))  # fmt: skip
        break
    return found


# -- 12. the checks, both ways -----------------------------------------------------------------


def _checks(call: Call) -> list[MessageRecord]:
    return [
        m for m, f in call.stun()
        if f.method == "Binding" and f.cls != "Indication" and m.framed
    ]  # fmt: skip


def _answered(call: Call, end: str, checks: list[MessageRecord]) -> tuple[int, int]:
    """(requests ``end`` sent, of which a success response came back to it)."""
    sent = [m for m in checks if m.src == end and m.hop == 0 and _stun_facts(m).is_request]
    ids = {_stun_facts(m).transaction_id for m in sent}
    back = {
        _stun_facts(m).transaction_id for m in checks
        if m.dst == end and m.delivered and _stun_facts(m).is_success
        and _stun_facts(m).transaction_id in ids
    }  # fmt: skip
    return len(sent), len(back)


def find_checks(call: Call) -> Found:
    found = Found()
    checks = _checks(call)
    found.records = checks
    if not checks:
        return found
    skype_end = CLIENT if any(m.src == CLIENT and m.hop == 0 for m in checks) else EDGE
    for end, other in ((skype_end, CMS), (CMS, skype_end)):
        sent, back = _answered(call, end, checks)
        mine = [m for m in checks if m.src == end and m.hop == 0 and _stun_facts(m).is_request]
        user = _stun_facts(mine[0]).username if mine else None
        nominate = any(_stun_facts(m).use_candidate for m in mine)
        words = (
            f"{sent} Binding Request(s), {back} answered by a Binding Success Response"
            if sent
            else "no Binding Request sent"
        )
        extra = f"; USERNAME {user}" if user else ""
        extra += "; USE-CANDIDATE (it nominates the pair)" if nominate else ""
        found.fields.append((_sentence(f"{ROLE[end]} → {ROLE[other]}"), words + extra))
    both = all(_answered(call, end, checks)[1] for end in (skype_end, CMS))
    found.fields.append((
        "Valid both ways",
        "yes: a request and a success response in each direction" if both
        else "no: one direction has no answered request",
    ))  # fmt: skip
    found.slots["both"] = "yes" if both else "no"
    cms_requests = [m for m in checks if m.src == CMS and m.hop == 0 and _stun_facts(m).is_request]
    for m in cms_requests[:1]:
        found.hex.append(_header_hex(m))
    for m in checks:
        if m.src == CMS and m.hop == 0 and _stun_facts(m).is_success:
            found.hex.append(_header_hex(m))
            break
    on_data = [m for m in checks if m.connection in {c.id for c in call.data}]
    for conn in call.data[:1]:
        mine = [m for m in on_data if m.connection == conn.id]
        found.filters.append(Filter(
            f"{_tcp_filter(conn)} && data", mine,
            note="without the plugin: the framed checks on CMS's data connection, as TCP data",
        ))  # fmt: skip
    types = sorted({_type_of(m) for m in checks})
    found.filters.append(Filter(
        _stun_type_filter(*types), checks, plugin=True,
        note="with the plugin: every check on every leg is a STUN row",
    ))  # fmt: skip
    return found


# -- 13. reading the capture: why TCP, and how to decode ---------------------------------------


def find_reading(call: Call) -> Found:
    found = Found()
    control = {c.id for c in call.control}
    data = {c.id for c in call.data}
    rows = [
        m for m, f in call.stun()
        if m.connection in control | data and not m.framed and (m.src == CMS or m.dst == CMS)
    ]  # fmt: skip
    framed = [m for m in call.trace.messages if m.connection in data and m.framed]
    found.records = framed
    found.context = rows
    found.fields.append((
        "tcp and stun at CMS",
        f"{len(rows)} rows (the TechNote's capture shows ten: from the Allocate Request to the "
        "Binding Indication; it stopped before the release)",
    ))  # fmt: skip
    for conn in call.data[:1]:
        found.fields.append(("Data connection", _conn_words(conn)))
    if rows:
        found.filters.append(Filter("tcp and stun", [m for m in rows if m.src == CMS
                                                     or m.delivered],
                                    note="the TechNote's quick overview"))  # fmt: skip
    requests = [m for m in framed if m.src == CMS and _stun_facts_or_none(m, "Request")]
    if requests and call.data:
        conn = call.trace.connections[requests[0].connection]
        head = _wire(requests[0])[:10]
        lab = head[:6] == bytes.fromhex("006c00010058")
        found.hex.append(Hex(
            "CMS's check, as the TechNote's frame 2597 shows it", _spaced(head),
            "00 6c: RFC 4571 length 108; 00 01: Binding Request; 00 58: 88 bytes of "
            "attributes; 21 12 a4 42: the magic cookie" if lab
            else "RFC 4571 length, STUN type, STUN length, magic cookie",
        ))  # fmt: skip
        found.filters.append(Filter(
            f"{_tcp_filter(conn)} && tcp.payload[0:10] == {_colons(head)}",
            [m for m in framed if _wire(m)[:10] == head],
            note="the payload bytes, matched without any STUN dissector",
        ))  # fmt: skip
        successes = [m for m in framed if _wire(m)[2:4] == b"\x01\x01"]
        if successes:
            found.filters.append(Filter(
                f"{_tcp_filter(conn)} && tcp.payload[2:2] == 01:01", successes,
                note="01 01 in the 3rd and 4th bytes: Binding Success Response",
            ))  # fmt: skip
        found.filters.append(Filter("rfc4571stun", framed, plugin=True,
                                    note="with the plugin: every frame it decoded"))  # fmt: skip
    return found


def _stun_facts_or_none(m: MessageRecord, cls: str) -> bool:
    facts = m.stun_facts
    return facts is not None and facts.cls == cls


# -- 14. the reINVITE --------------------------------------------------------------------------


def _reinvite_records(call: Call) -> list[MessageRecord]:
    initial = _initial_transaction(call)
    return [
        m for m, f in call.sip()
        if (f.method or f.cseq_method) in ("INVITE", "ACK") and f.status != 100
        and (f.from_tag, f.cseq) != initial
    ]  # fmt: skip


def find_reinvite(call: Call) -> Found:
    found = Found()
    records = _reinvite_records(call)
    found.records = records
    requests = [m for m in records if _sip_facts(m).method == "INVITE" and m.hop == 0]
    for m in requests:
        facts = _sip_facts(m)
        found.fields.append(("reINVITE", f"from {m.src} at t={m.t:.6f} s, CSeq {facts.cseq} "
                                         f"INVITE, To tag {facts.to_tag}"))  # fmt: skip
    if requests:
        first = requests[0]
        found.slots["reinviter"] = call.who(first.src)
        found.fields.append(("Call-ID", f"{_sip_facts(first).call_id} (the same dialog)"))
        lines = _sdp_lines(first)
        found.fields += [
            ("SDP", line) for line in lines
            if line.startswith(("m=", "a=candidate:", "a=remote-candidates:", "a=connection:"))
        ]  # fmt: skip
        checks = _checks(call)
        valid = [
            m.fate_t or m.t for m in checks
            if m.dst == first.src and m.delivered and _stun_facts(m).is_success
        ]  # fmt: skip
        if valid:
            found.fields.append(("After its check was answered",
                                 f"{(first.t - min(valid)) * 1000:.3f} ms"))  # fmt: skip
    answers = [m for m in records if _sip_facts(m).status is not None and m.hop == 0]
    for m in answers:
        facts = _sip_facts(m)
        found.fields.append(("Answer", f"{facts.status} {facts.reason} from {m.src}"
                                       + (f" ({facts.diagnostics})" if facts.diagnostics
                                          else "")))  # fmt: skip
    transactions = sorted({(_sip_facts(m).from_tag, _sip_facts(m).cseq) for m in records},
                          key=str)  # fmt: skip
    if transactions:
        which = " || ".join(
            f'(sip.from.tag == "{tag}" && sip.CSeq.seq == {cseq})' for tag, cseq in transactions
        )
        found.filters.append(Filter(
            f'(sip.CSeq.method == "INVITE" || sip.CSeq.method == "ACK") && '
            f"!(sip.Status-Code == 100) && ({which})",
            records,
        ))  # fmt: skip
    return found


# -- 15. 21002: attendees cannot share ---------------------------------------------------------


def find_presenter(call: Call) -> Found:
    found = Found()
    refusals = [
        m for m in call.trace.messages
        if (f := m.sip_facts) is not None and f.diagnostics_code == 21002
    ]  # fmt: skip
    found.records = refusals
    initial = _initial_transaction(call)
    for m in refusals[:1]:
        facts = _sip_facts(m)
        to = "INVITE" if (facts.from_tag, facts.cseq) == initial else "reINVITE"
        found.fields += [
            ("Status", f"{facts.status} {facts.reason}, the answer to the {to}"),
            ("ms-diagnostics-public", facts.diagnostics),
            ("From", f"{m.src}, t={m.t:.6f} s"),
        ]
        found.filters.append(Filter(
            f'sip.Status-Code == {facts.status} && sip.msg_hdr contains "21002"', refusals
        ))  # fmt: skip
    return found


# -- 16. the keepalive -------------------------------------------------------------------------


def find_keepalive(call: Call) -> Found:
    found = Found()
    control = {c.id for c in call.control}
    indications = [
        m for m, f in call.stun()
        if f.method == "Binding" and f.cls == "Indication" and m.src == CMS
        and m.connection in control
    ]  # fmt: skip
    found.records = indications
    success = [m for m, f in call.stun() if f.method == "Allocate" and f.is_success]
    for m in indications[:1]:
        after = f", {m.t - success[0].t:.3f} s after the Allocate Success" if success else ""
        found.fields += [
            ("First", f"t={m.t:.6f} s{after}"),
            ("On", _conn_words(call.trace.connections[m.connection]) + ": the control connection"),
            (
                "Size",
                f"{m.size} bytes: the 20-byte header and FINGERPRINT (the lab: 82-byte frame)",
            ),
            ("Answered", "never: an indication gets no response"),
        ]
        found.hex.append(Hex("the whole message", _spaced(_wire(m)),
                             "type 0x0011 = Binding Indication, length 8, cookie, transaction "
                             "id, then FINGERPRINT (0x8028)"))  # fmt: skip
    found.fields.append(("Keepalives in this run", str(len(indications))))
    if indications:
        found.filters.append(Filter("stun.type == 0x0011", indications))
    return found


# -- 17. the hang-up and the release -----------------------------------------------------------


def find_hang_up(call: Call) -> Found:
    found = Found()
    byes = [m for m, f in call.sip() if f.cseq_method == "BYE"]
    requests, answers = _refreshes(call, release=True)
    found.records = _by_time([*byes, *requests, *answers], call.index)
    for m in byes:
        facts = _sip_facts(m)
        if facts.method == "BYE" and m.hop == 0:
            found.fields.append(("BYE", f"from {m.src} at t={m.t:.6f} s"
                                        + (f", Reason: {facts.cause}" if facts.cause
                                           else ", no Reason: the user's hang-up")))  # fmt: skip
    for m in requests[:1]:
        found.fields.append(("Release", f"Refresh with LIFETIME 0 at t={m.t:.6f} s"))
    parts = []
    if byes:
        parts.append(f'sip.CSeq.method == "BYE" && sip.Call-ID == "{call.call_id}"')
    if requests or answers:
        parts.append(_refresh_filter(requests, answers, True))
    if parts:
        found.filters.append(Filter(_any_of(parts), found.records))
    return found


# ---------------------------------------------------------------------------------------------
# The steps: finders and words, in the TechNote's order
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Break:
    """What a step's failure looks like: the library scenario that shows it (None: no scenario
    of the library does) and the verdict its diagnosis gives."""

    scenario: str | None
    verdict: Verdict
    what: str


@dataclass(frozen=True)
class Step:
    """One step of the call: a finder over the trace's typed facts, and its words.

    Templates (``what``, ``look``, ``missing``) name the run's facts in braces: ``{client}``,
    ``{edge}``, ``{expe}``, ``{expc}``, ``{cms}`` (the actor and its address), ``{turn}``
    (the TURN server's address), ``{relay}`` (XOR-RELAYED-ADDRESS), ``{peer}``
    (XOR-PEER-ADDRESS), ``{call_id}``, ``{ctl}`` and ``{data}`` (CMS's control and data
    connections), and what the step's finder adds (:attr:`Found.slots`)."""

    id: str
    title: str
    find: Callable[[Call], Found]
    what: str
    why: str
    refs: tuple[str, ...]
    look: str
    """What to look for in Wireshark."""
    missing: str
    """What it means when the step did not happen in the run."""
    hint: str
    """A display filter to look with when the run has nothing to select."""
    breaks: tuple[Break, ...] = ()
    lab_frames: tuple[int, ...] = ()
    """The TechNote capture's frame numbers of the step's messages."""
    part_of: str | None = None
    """A step about reading another step's messages (the capture, a refusal's words): its
    messages belong to that step, which the comparison with the healthy call judges."""
    diagnosis_steps: tuple[DiagnosisStep, ...] = ()
    """The diagnosis's call steps a failure of this step falls in."""


NO_SCENARIO = (
    "no library scenario shows it; a fault rule on that message does (scenarios/README.md)"
)

STEPS: tuple[Step, ...] = (
    Step(
        "sharing-invite",
        "A new INVITE with m=applicationsharing: the share is a dialog of its own, with its "
        "own Call-ID",
        find_invite,
        what=(
            "{client} starts the share with a new INVITE, not a reINVITE of a call already up: "
            "a new Call-ID ({call_id}), its From tag, no To tag. The SDP offers "
            "m=applicationsharing (RDP over TCP) and the Skype side's MS-ICE2 TCP candidates "
            "(TCP-PASS and TCP-ACT: the client's host address and the Edge's relay). The "
            "INVITE goes hop by hop: {edge}, {expe}, over the traversal zone to {expc}, then "
            "{cms}; each proxy adds its Via and Record-Route and answers 100 Trying."
        ),
        why=(
            "A SIP dialog is named by its Call-ID and the two tags (RFC 3261 §12); a request "
            "outside any dialog carries a new Call-ID (§8.1.1.4) and no To tag, so CMS takes "
            "the share as a new call into the meeting, beside the audio/video one. Microsoft's "
            'own sharing scenario starts the same way (MS-OCSPROT §2.5.19 "Share a Desktop", '
            "step 1: an INVITE with an application-sharing offer, MS-SDPEXT). Application "
            "sharing runs MS-ICE2 over TCP, so its candidates are TCP (MS-SDPEXT §3.1.5.9), "
            "and a=connection:new asks for a new TCP connection (§3.1.5.10.2)."
        ),
        refs=(
            "RFC 3261 §8.1.1.4",
            "RFC 3261 §12",
            "MS-SDPEXT §3.1.5.9",
            "MS-SDPEXT §3.1.5.10.2",
            'MS-OCSPROT §2.5.19 "Share a Desktop"',
        ),
        look=(
            "one INVITE row per hop (SIP/SDP); in the one at CMS: the Call-ID, no tag in To, "
            "m=applicationsharing and the a=candidate lines (the TechNote's first screenshot)"
        ),
        missing="No sharing INVITE in this run: nothing else can follow.",
        hint='sip.Method == "INVITE" && sdp.media.media == "applicationsharing" && !sip.to.tag',
        breaks=(
            Break(
                None,
                "no-sip-path",
                "a SIP hop does not forward it: the traversal zone, a search rule, a "
                "firewall on 5060/5061 or 7001; " + NO_SCENARIO,
            ),
        ),
        diagnosis_steps=("SIP INVITE",),
    ),
    Step(
        "turn-after-invite",
        "CMS goes to its TURN server only now, over TCP to port 3478",
        find_turn_after_invite,
        what=(
            "Only once the INVITE has reached it does {cms} ask for a relay: it opens a TCP "
            "connection to its TURN server, {expe} at {turn}. This is the allocation's "
            "control connection ({ctl}): every TURN request for the allocation goes on it. "
            "TCP, not UDP: the share's media is TCP, so its relay must be a TCP relay "
            "(RFC 6062), and a TCP allocation is asked for over TCP."
        ),
        why=(
            "CMS needs a candidate the Skype side can reach: it sits on the internal network, "
            "and from the Edge only Expressway-E's relay range is reachable. It allocates per "
            'call, when the offer arrives (the TechNote: "After CMS receives the call, it will '
            "reach out to its TURN server (Expressway-E) to get its own TURN relay "
            'candidates"). A TCP allocation is requested on a TCP (or TLS) connection to the '
            "server, which stays the allocation's control connection (RFC 6062 §4.1); 3478 is "
            "the default STUN and TURN port, for TCP and UDP alike (RFC 5389 §9). Expressway "
            "relays TCP since X8.9."
        ),
        refs=("RFC 6062 §4.1", "RFC 5389 §9"),
        look=(
            "at CMS the INVITE's row, then CMS's SYN to {turn}: no TURN traffic before the INVITE"
        ),
        missing=(
            "CMS opened no connection to a TURN server: it has none configured, or its connect "
            "failed. Its answer can then offer only its own address, which the Skype side "
            "cannot reach."
        ),
        hint="tcp.flags.syn == 1 && tcp.flags.ack == 0 && tcp.dstport == 3478",
        breaks=(
            Break(
                "cms-no-turn-server",
                "no-turn-server",
                "CMS has no TURN server configured: no Allocate at all",
            ),
            Break(
                "turn-service-off",
                "turn-port-refused",
                "nothing listens on 3478: CMS's SYN is answered with a RST",
            ),
            Break(
                "turn-port-firewalled",
                "turn-port-blocked",
                "a firewall drops TCP to 3478: CMS's SYNs go unanswered",
            ),
        ),
        diagnosis_steps=("TURN allocation",),
    ),
    Step(
        "allocate-request",
        "Allocate Request: a TCP relay, asked for without credentials",
        find_allocate,
        what=(
            "On the control connection {cms} sends its first Allocate Request: "
            "REQUESTED-TRANSPORT TCP (protocol 6) and LIFETIME 600 s, and no credentials."
        ),
        why=(
            "REQUESTED-TRANSPORT 6 asks for a TCP relayed address instead of TURN's usual UDP "
            "(RFC 6062 §4.1, RFC 5766 §14.7). A client that has not yet completed a "
            "transaction with the server sends its first request without USERNAME, REALM, "
            "NONCE and MESSAGE-INTEGRITY (RFC 5389 §10.2.1.1): it cannot know the realm and "
            "the nonce until the server names them."
        ),
        refs=("RFC 6062 §4.1", "RFC 5766 §6.1", "RFC 5766 §14.7", "RFC 5389 §10.2.1.1"),
        look="'Allocate Request TCP lifetime: 600', the TechNote's frame 2394 (98 bytes)",
        missing="CMS sent no Allocate Request: no TURN connection (the step before).",
        hint="stun.type == 0x0003 && !stun.att.username",
        lab_frames=(2394,),
        diagnosis_steps=("TURN allocation",),
    ),
    Step(
        "challenge-401",
        "401 Unauthorized: the long-term credential challenge (realm TANDBERG, a nonce), and "
        "the Allocate again",
        find_challenge,
        what=(
            "{expe} answers 401 Unauthorized with its REALM ({realm}) and a NONCE. {cms} sends "
            "the Allocate again as a new transaction, now with USERNAME ({user}), the REALM and "
            "NONCE copied from the 401, and MESSAGE-INTEGRITY computed with its password."
        ),
        why=(
            "TURN authenticates with STUN's long-term credentials (RFC 5766 §4, RFC 5389 "
            "§10.2). A request without MESSAGE-INTEGRITY is answered 401 with a REALM, which "
            "tells the client which credentials to use (Expressway-E's is TANDBERG), and a "
            "NONCE, the server's replay protection: it decides how long a nonce stays valid "
            "and then answers 438 Stale Nonce (§10.2.2). The client retries with USERNAME, "
            "REALM, NONCE and MESSAGE-INTEGRITY (§10.2.3), an HMAC keyed with "
            "MD5(username:realm:password) (§15.4), so the password itself never crosses the "
            "network. The 401 is the normal first answer, not a failure: the diagnosis does "
            "not count it."
        ),
        refs=(
            "RFC 5389 §10.2",
            "RFC 5389 §10.2.2",
            "RFC 5389 §10.2.3",
            "RFC 5389 §15.4",
            "RFC 5766 §4",
        ),
        look=(
            "the TechNote's frames 2397 ('Allocate Error Response … with nonce realm: "
            "TANDBERG'; a newer Wireshark adds 'error-code: 401') and 2399 ('Allocate Request "
            "user: turn realm: TANDBERG with nonce TCP')"
        ),
        missing="No challenge and no authenticated Allocate in this run.",
        hint=_any_of([_error_filter(0x0113, 401), "stun.type == 0x0003 && stun.att.username"]),
        breaks=(
            Break(
                "wrong-turn-credentials",
                "turn-auth-failed",
                "CMS's password differs from Expressway-E's local database: the "
                "authenticated Allocate is answered 401 again",
            ),
        ),
        lab_frames=(2397, 2399),
        diagnosis_steps=("TURN allocation",),
    ),
    Step(
        "relay-allocated",
        "Allocate Success Response: the relayed address, XOR-RELAYED-ADDRESS",
        find_relay,
        what=(
            "{expe} creates the allocation and answers Allocate Success Response with "
            "XOR-RELAYED-ADDRESS {relay}: an address and port of its relay range that now "
            "belongs to {cms}. XOR-MAPPED-ADDRESS is CMS's own address as Expressway-E sees "
            "it, LIFETIME the allocation's. The relayed address is CMS's relay candidate."
        ),
        why=(
            "A successful Allocate gives the client its relayed transport address "
            "(XOR-RELAYED-ADDRESS, RFC 5766 §14.5), its server-reflexive address "
            "(XOR-MAPPED-ADDRESS) and the lifetime (RFC 5766 §6.3); for a TCP allocation the "
            "relayed address is a TCP port the server listens on for peers (RFC 6062 §5.1). "
            "Addresses travel XORed with the magic cookie (RFC 5389 §15.2), so an ALG that "
            "rewrites IP addresses in payloads leaves them alone. The TechNote's Info column "
            "cuts this row before XOR-RELAYED-ADDRESS ('XOR-MAPPED-ADDRESS: 10.48.…'): here "
            "it is in full."
        ),
        refs=("RFC 5766 §6.3", "RFC 5766 §14.5", "RFC 6062 §5.1", "RFC 5389 §15.2"),
        look=(
            "the TechNote's frame 2427; expand XOR-RELAYED-ADDRESS in the packet details, "
            "where Wireshark shows the address un-XORed"
        ),
        missing=(
            "No relayed address in this run: CMS has no relay candidate to offer, and its "
            "answer carries only its host candidates."
        ),
        hint="stun.type == 0x0103",
        breaks=(
            Break(
                "tcp-relay-unsupported",
                "tcp-relay-unsupported",
                "an Expressway-E before X8.9 has no TCP relays: 442 Unsupported Transport Protocol",
            ),
            Break(
                "turn-allocate-508", "turn-no-capacity", "no relay left: 508 Insufficient Capacity"
            ),
        ),
        lab_frames=(2427,),
        diagnosis_steps=("TURN allocation",),
    ),
    Step(
        "refresh",
        "Refresh: CMS keeps its allocation alive",
        find_refresh,
        what=(
            "Right after the allocation succeeds {cms} sends a Refresh Request (LIFETIME 600), "
            "answered Refresh Success Response with the lifetime granted. An allocation lives "
            "only as long as its lifetime unless it is refreshed; CMS refreshes before it runs "
            "out, and gives it back with LIFETIME 0 when the call ends (the hang-up step)."
        ),
        why=(
            "A client refreshes its allocation with Refresh requests before its lifetime ends "
            "(RFC 5766 §7.1); the server restarts the allocation's timer with the lifetime it "
            "grants, and a Refresh with LIFETIME 0 deletes the allocation (§7.2). An "
            "allocation that runs out takes its relayed port, and with it the TCP connections "
            "of the share, away."
        ),
        refs=("RFC 5766 §7", "RFC 5766 §7.1", "RFC 5766 §7.2"),
        look=(
            "the TechNote's frames 2428 ('Refresh Request user: turn realm: TANDBERG with nonce "
            "lifetime: 600', cut in its Info column) and 2447 ('Refresh Success Response "
            "lifetime: 600')"
        ),
        missing="CMS sent no Refresh in this run (before the hang-up).",
        hint="(stun.type == 0x0004 || stun.type == 0x0104) && !(stun.att.lifetime == 0)",
        breaks=(
            Break(
                "refresh-dropped",
                "allocation-expired",
                "every Refresh is lost on the way: the allocation expires after 600 s",
            ),
            Break(
                "allocation-expiry",
                "allocation-expired",
                "CMS never refreshes: the allocation expires after 600 s",
            ),
            Break(
                "turn-refresh-437",
                "refresh-refused",
                "a Refresh answered 437 Allocation Mismatch: the allocation is gone",
            ),
        ),
        lab_frames=(2428, 2447),
        diagnosis_steps=("call up",),
    ),
    Step(
        "answer-sdp",
        "200 OK: CMS answers with the relay candidate in its SDP",
        find_answer,
        what=(
            "{cms} answers the INVITE 200 OK. Its SDP makes the relayed address the default "
            "(c= and the m=applicationsharing port name {relay}) and offers it as a candidate "
            "of type relay ({candidate}), beside CMS's host candidates, which the Skype side "
            "cannot reach. The 200 OK goes back along the Via path: {expc}, {expe}, {edge}, "
            "{client}."
        ),
        why=(
            "The answer carries the answerer's candidates (RFC 5245 §4.3, in MS-ICE2's TCP "
            "form); the default destination in c= and m= should be the candidate most likely "
            "to work, the relayed one (RFC 5245 §4.1.4). Microsoft's scenario: the server "
            "answers with its media description (MS-OCSPROT §2.5.19, step 2). The TechNote: "
            '"CMS adds TURN relay candidate to SDP in its 200 OK SIP response."'
        ),
        refs=(
            "RFC 5245 §4.1.4",
            "RFC 5245 §4.3",
            "MS-SDPEXT §3.1.5.9",
            'MS-OCSPROT §2.5.19 "Share a Desktop"',
        ),
        look=(
            "the 200 OK leaving CMS; in its SDP the a=candidate line with 'typ relay' and the "
            "Allocate Success's XOR-RELAYED-ADDRESS"
        ),
        missing="CMS did not answer the INVITE with a final response in this run.",
        hint='sip.Status-Code == 200 && sip.CSeq.method == "INVITE" && sdp contains "typ relay"',
        breaks=(
            Break(
                "invite-refused-488",
                "call-rejected",
                "CMS refuses the offer: 488 Not Acceptable Here, no TURN at all",
            ),
            Break(
                "invite-refused-503", "call-rejected", "CMS is out of service: 503 with Retry-After"
            ),
        ),
        diagnosis_steps=("SIP answer",),
    ),
    Step(
        "ack",
        "ACK: the INVITE's three-way handshake ends",
        find_ack,
        what=(
            "{client} acknowledges the 200 OK with an ACK. The ACK of a 2xx is a request of "
            "its own, sent end to end along the route the 200 OK's Record-Route set "
            "({edge}, {expe}, {expc}) to {cms}. The dialog is confirmed; the media path is "
            "not up yet."
        ),
        why=(
            "The caller sends the ACK of a 2xx itself, end to end, in the dialog (RFC 3261 "
            "§13.2.2.4), along the route set taken from the Record-Route (§12.1.2); a non-2xx "
            "final answer is acknowledged hop by hop inside the INVITE transaction instead "
            "(§17.1.1.3). Until the ACK arrives CMS resends its 200 OK at T1 doubling to T2 "
            "and after 64·T1 = 32 s ends the dialog with BYE (§13.3.1.4), and it holds its "
            'reINVITE back (§14.1). The TechNote: "SIP dialog finishes with the ACK".'
        ),
        refs=(
            "RFC 3261 §13.2.2.4",
            "RFC 3261 §12.1.2",
            "RFC 3261 §17.1.1.3",
            "RFC 3261 §13.3.1.4",
            "RFC 3261 §14.1",
        ),
        look="one ACK row per hop, the one at CMS last",
        missing="No ACK of the INVITE's answer in this run.",
        hint='sip.Method == "ACK" && !(sip.CSeq.method == "BYE")',
        breaks=(
            Break(
                "ack-lost",
                "ack-lost",
                "the ACK is lost on its last hop: CMS resends its 200 OK and ends the "
                "call after 32 s",
            ),
        ),
        diagnosis_steps=("SIP answer",),
    ),
    Step(
        "connection-attempt",
        "The Skype side connects to the relay; ConnectionAttempt on the control connection",
        find_connection_attempt,
        what=(
            "The Skype side takes CMS's relay candidate from the 200 OK and connects to it: "
            "{peer_actor} opens a TCP connection from {peer} to {relay}. (The Skype client has "
            "no IP path to Expressway-E: its media goes through the Edge, whose address is the "
            "peer's.) {expe} accepts it on the relayed port, holds whatever the peer sends, "
            "and tells {cms} on the control connection, the one that carried the Allocate, "
            "with a ConnectionAttempt Indication: XOR-PEER-ADDRESS {peer}, and a CONNECTION-ID "
            "that names the peer's connection."
        ),
        why=(
            "RFC 6062 §5.3: the server accepts a TCP connection on a relayed address, buffers "
            "the peer's data, closes the connection at once when no permission exists for the "
            "peer, and otherwise sends ConnectionAttempt with XOR-PEER-ADDRESS and "
            "CONNECTION-ID (§6.2.1) on the control connection; the peer's connection then "
            "waits 30 s for its bind. The client's side is §4.4. The lab's Expressway-E let "
            "the Edge in without any CreatePermission (RFC 5766 §9), and CMS sends none; a "
            "server that enforces the permission check resets the peer (permission-required). "
            'The TechNote: "This is done over the same TCP connection where Allocate Request '
            'was sent."'
        ),
        refs=("RFC 6062 §5.3", "RFC 6062 §4.4", "RFC 6062 §6.2.1", "RFC 5766 §9"),
        look=(
            "'ConnectionAttempt Indication XOR-PEER-ADDRESS: 192.168.1.252:53577', the "
            "TechNote's frame 2526, on the same TCP stream as the Allocate (the same "
            "tcp.stream)"
        ),
        missing=(
            "No ConnectionAttempt in this run: no peer connection reached the relay, or "
            "Expressway-E turned it away."
        ),
        hint="stun.type == 0x001c",
        breaks=(
            Break(
                "relay-ports-blocked",
                "relay-unreachable",
                "a firewall drops TCP to the relay range: the Edge's connect times out",
            ),
            Break(
                "static-nat-not-forwarded",
                "relay-unreachable",
                "the relayed address is a static NAT's public address the firewall does not "
                "forward",
            ),
            Break(
                "relay-ports-rejected",
                "relay-refused",
                "a firewall rejects TCP to the relay range with a RST",
            ),
            Break(
                "permission-required",
                "permission-missing",
                "Expressway-E enforces permissions and CMS installs none: the Edge is reset",
            ),
            Break(
                "turn-createpermission-403",
                "permission-missing",
                "CMS's CreatePermission is refused 403: the Edge is reset",
            ),
            Break(
                "two-faults", "connection-bind-missing", "the ConnectionAttempt never reaches CMS"
            ),
        ),
        lab_frames=(2526,),
        diagnosis_steps=("relay connection",),
    ),
    Step(
        "connection-bind",
        "ConnectionBind on a new TCP connection",
        find_connection_bind,
        what=(
            "{cms} answers the ConnectionAttempt by opening a second TCP connection to the "
            "same {turn}, the data connection ({data}), and sends ConnectionBind on it with "
            "the CONNECTION-ID and the control connection's credentials. {expe} answers "
            "ConnectionBind Success Response and from then on pipes that connection to the "
            "peer's: no more STUN from Expressway-E on it, only the peer's bytes."
        ),
        why=(
            "To accept the peer the client opens a new TCP connection to the server's address "
            "from another local port, authenticates as on the control connection, and sends "
            "ConnectionBind with the CONNECTION-ID; on success that connection is the data "
            "connection for that peer (RFC 6062 §4.4). The server then relays bytes as they "
            "are, both ways (§5.4). A connection per peer keeps the peer's byte stream apart "
            "from TURN's own messages. The TechNote: \"TURN client (CMS) creates a new TCP "
            "connection to TURN server to request the remote XOR-PEER-ADDRESS connection to "
            'be bridged to this new TCP connection."'
        ),
        refs=("RFC 6062 §4.4", "RFC 6062 §5.4", "RFC 6062 §6.2.1"),
        look=(
            "the TechNote's frames 2540 ('ConnectionBind Request user: turn realm: TANDBERG "
            "with nonce') and 2552 ('ConnectionBind Success Response'), on a new tcp.stream "
            "(another source port than the control connection's)"
        ),
        missing="No ConnectionBind in this run.",
        hint="stun.type == 0x000b || stun.type == 0x010b",
        breaks=(
            Break(
                "connection-bind-never-sent",
                "connection-bind-missing",
                "CMS never binds: Expressway-E closes the peer's connection after 30 s",
            ),
            Break(
                "turn-connectionbind-447",
                "connection-bind-failed",
                "the ConnectionBind is answered 447 Connection Timeout or Failure",
            ),
        ),
        lab_frames=(2540, 2552),
        diagnosis_steps=("relay connection",),
    ),
    Step(
        "peer-data",
        "The peer's first bytes reach CMS through the pipe",
        find_peer_data,
        what=(
            "The first bytes through the pipe are the Skype side's own connectivity check: "
            "sent to the relay at once, held by {expe} until the bind, then delivered on the "
            "data connection as they are: an RFC 4571 frame, a 2-byte length and a STUN "
            'Binding Request. The TechNote: "From now on the traffic from remote peer {peer} '
            "hitting port {relay_port} on TURN server will be forwarded over this TCP "
            'connection to CMS."'
        ),
        why=(
            "Data received on the peer's connection goes as-is to the client's data "
            "connection, including what arrived before the ConnectionBind (RFC 6062 §5.4; the "
            "server buffers it, §5.3), and the client reads it as the peer sent it (§4.5). "
            "ICE over TCP frames every STUN message and media packet with a 16-bit length "
            "(RFC 4571 §2, required by RFC 6544 §3), so the receiver finds message boundaries "
            "in the byte stream."
        ),
        refs=("RFC 6062 §5.3", "RFC 6062 §5.4", "RFC 6062 §4.5", "RFC 4571 §2", "RFC 6544 §3"),
        look=(
            "the TechNote's frame 2596: 3478 → 44342 [PSH, ACK] Len=90, Expressway-E to CMS "
            "on the data connection, shown as TCP, not STUN"
        ),
        missing="Nothing from the peer came through a data connection in this run.",
        hint="tcp.srcport == 3478 && data",
        lab_frames=(2596,),
        diagnosis_steps=("relay connection", "ICE checks"),
    ),
    Step(
        "ice-checks",
        "ICE checks both ways: a Binding Request and a Binding Success Response in each direction",
        find_checks,
        what=(
            "Through the pipe both ends check the candidate pair. The Skype side's Binding "
            "Request reaches {cms}, which answers Binding Success Response with the address it "
            "saw (XOR-MAPPED-ADDRESS {peer}), and sends its own Binding Request the other way, "
            "answered by the Skype side. CMS is the controlling agent: its request carries "
            "USE-CANDIDATE (the 00 25 right after the transaction id in the TechNote's frame "
            "2597). Every message is RFC 4571-framed; CMS's 108-byte request starts "
            "00 6c 00 01 00 58 21 12 a4 42."
        ),
        why=(
            "A pair becomes valid for an agent only when its own check gets a success response "
            "(RFC 5245 §7.1.3.2.2): the answer proves its packets reach the peer and come "
            "back, and its MESSAGE-INTEGRITY (short-term credentials from the SDP's ice-ufrag "
            "and ice-pwd, §7.1.2.3) proves the peer is the one in the SDP. The Skype side's "
            "answered check makes the pair valid for the Skype side alone; CMS needs its own "
            "check answered (a check received triggers one back, §7.2.1.4), and only then does "
            "the controlling agent nominate (USE-CANDIDATE, §8.1.1) and re-offer. Hence the "
            'TechNote: "Bidirectional Binding Requests and Binding Success Responses are '
            'required for this candidate pair to be considered valid." A firewall or ALG that '
            "lets the TCP connection through but drops framed STUN one way leaves one side "
            "without a valid pair, and no reINVITE follows. Microsoft's scenario has the same "
            "connectivity tests and responses (MS-OCSPROT §2.5.19, steps 3-4, MS-ICE2)."
        ),
        refs=(
            "RFC 5245 §7.1.2.3",
            "RFC 5245 §7.1.3.2.2",
            "RFC 5245 §7.2.1.4",
            "RFC 5245 §8.1.1",
            "RFC 6544 §3",
            "RFC 4571 §2",
            "MS-ICE2",
            'MS-OCSPROT §2.5.19 "Share a Desktop"',
        ),
        look=(
            "without the plugin, at CMS, [PSH, ACK] segments on the data connection shown as "
            "TCP data (the TechNote's 2596 and 2597): bytes 3-4 of the payload say 00 01 "
            "Binding Request, 01 01 Binding Success Response; there must be one of each in "
            "each direction. With the plugin they are STUN rows on every leg"
        ),
        missing=(
            "No check crossed in this run: there was no media path (no peer connection, or no "
            "bind)."
        ),
        hint="stun.type == 0x0001 || stun.type == 0x0101",
        breaks=(
            Break(
                "one-way-binding-cms-checks",
                "one-way-binding",
                "CMS's Binding Requests never leave its data connection: its check is never "
                "answered",
            ),
            Break(
                "one-way-binding-skype-answers",
                "one-way-binding",
                "CMS's Binding Success Responses are lost: the Skype side's check is never "
                "answered",
            ),
        ),
        lab_frames=(2596, 2597),
        diagnosis_steps=("ICE checks",),
    ),
    Step(
        "reading-the-capture",
        "Reading the capture: 'tcp and stun', and why Wireshark shows the checks as TCP",
        find_reading,
        what=(
            "'tcp and stun' at CMS is the TechNote's quick overview: the Allocate exchange, "
            "the Refresh, the ConnectionAttempt, the ConnectionBind and the Binding "
            "Indication. The checks are not among its rows: on CMS's data connection "
            "Wireshark shows them as TCP data ([PSH, ACK], Len=90 and Len=110 in the lab)."
        ),
        why=(
            "Wireshark's STUN dissector owns TCP port 3478, and when it sees the ConnectionBind "
            "Success Response it hands the rest of that TCP conversation to the 'data' "
            "dissector (the connection is a raw pipe from then on, RFC 6062 §5.4). A "
            "conversation's dissector comes before Decode As, so Decode As STUN on the data "
            "connection's port changes nothing (tshark 4.0.17). Read the payload by hand: "
            "bytes 1-2 are the RFC 4571 length (RFC 4571 §2), bytes 3-4 the STUN type (00 01 "
            "Binding Request, 01 01 Binding Success Response), and the magic cookie 21 12 a4 "
            "42 sits at offset 6 instead of 4 (RFC 5389 §6). Or load a plugin, as the TechNote "
            "advises: labsim's Lua dissector (`labsim wireshark-plugin` prints its path), and "
            "`tshark -X lua_script:PATH -r cms.pcapng -Y stun` shows the checks as Binding "
            "rows. Without a plugin: Wireshark decodes them itself where it never saw the "
            "ConnectionBind Success Response (a capture started later), so mark that frame "
            "Edit › Ignore Packet and the checks become STUN rows; on the relay port's leg (the "
            "Edge to 24000) its own heuristic finds them."
        ),
        refs=("RFC 6062 §5.4", "RFC 4571 §2", "RFC 5389 §6", "docs/wireshark.md"),
        look=(
            "the filters below: the ten rows, CMS's check by its payload bytes (the TechNote's "
            "frame 2597), the success responses by their 01 01, and every framed check with "
            "the plugin"
        ),
        missing="No framed check on a data connection in this run: nothing to read.",
        hint="tcp and stun",
        lab_frames=(2596, 2597, 2608),
        part_of="ice-checks",
    ),
    Step(
        "reinvite",
        "The reINVITE: the controlling agent confirms the media route",
        find_reinvite,
        what=(
            "With its check answered, {reinviter} sends a reINVITE in the same dialog (the "
            "same Call-ID, a To tag): its SDP keeps only the selected candidate, the relay, "
            "names the Skype side's in a=remote-candidates, and says a=connection:existing. "
            "The Skype client answers 200 OK and the ACK follows: the sharing is established."
        ),
        why=(
            "Once ICE completes, the controlling agent sends an updated offer when the selected "
            "pair differs from the default of the last offer/answer (RFC 5245 §8.1.2); that "
            "offer lists only the selected candidate and, from the controlling agent, "
            "a=remote-candidates (§9.1.2.2). A reINVITE changes the session inside its dialog "
            "(RFC 3261 §14). In Microsoft's own scenario the client sends the updated offer "
            "(MS-OCSPROT §2.5.19, step 6); in the lab CMS does, as the controlling agent. The "
            'TechNote: "After Binding Success Response was received in both directions, there '
            "will be SIP reINVITE dialog between CMS and Skype to establish the new media "
            'route."'
        ),
        refs=(
            "RFC 5245 §8.1.2",
            "RFC 5245 §9.1.2.2",
            "RFC 3261 §14",
            'MS-OCSPROT §2.5.19 "Share a Desktop"',
        ),
        look="an INVITE row marked 'in-dialog' from CMS, its 200 OK and its ACK",
        missing=(
            "No reINVITE in this run: the pair never became valid for the controlling agent, "
            "or the call ended first."
        ),
        hint='sip.Method == "INVITE" && sip.to.tag',
        breaks=(
            Break(
                "reinvite-answer-lost",
                "reinvite-lost",
                "the client's 200 OK never gets past Expressway-E",
            ),
            Break(
                "reinvite-refused-488",
                "call-rejected",
                "the client refuses the reINVITE: 488 Not Acceptable Here",
            ),
            Break(
                "reinvite-refused-500",
                "call-rejected",
                "the client answers the reINVITE 500 Server Internal Error",
            ),
            Break(
                "presenter-not-allowed",
                "presenter-not-allowed",
                "the meeting refuses the share: 403 with ms-diagnostics 21002",
            ),
            Break(
                "reinvite-glare",
                "glare-recovered",
                "both ends re-offer at once: 491 both ways, then a retry (it recovers)",
            ),
            Break(
                "reinvite-491-once",
                "recovered",
                "the client answers 491 once: CMS waits and retries (it recovers)",
            ),
        ),
        diagnosis_steps=("reINVITE",),
    ),
    Step(
        "presenter-21002",
        "403 with ms-diagnostics 21002: attendees cannot share; Make Presenter",
        find_presenter,
        what=(
            "The Skype side refuses CMS's share: 403 Forbidden with ms-diagnostics-public "
            '21002 "Attendees cannot share in this conference" (component ASMCU). The Skype '
            "for Business meeting lets only presenters share, and CMS joined it as an "
            "attendee. The fix is in the meeting, not on CMS: right-click the CMS participant "
            "in the Skype client and choose Make Presenter, or let everyone present."
        ),
        why=(
            "Skype for Business meetings do not let everyone share by default (the TechNote, "
            "\"Gebruiker kan niet delen\" / user can't share: check CMS's traces for "
            "ms-diagnostics-public 21002 and make the participant a presenter). "
            "ms-diagnostics-public is Skype for Business's diagnostic header, the variant that "
            "crosses the Edge: a code and a reason."
        ),
        refs=(f'{TECHNOTE}, "Gebruiker kan niet delen"',),
        look=(
            "the refusal's ms-diagnostics-public header in the packet details (and the same "
            "line in CMS's logs)"
        ),
        missing=(
            "The Skype side accepted the share. When a meeting lets only "
            "presenters share and CMS is an attendee, the Skype side refuses CMS's sharing "
            "with 403 and 'ms-diagnostics-public: 21002;reason=\"Attendees cannot share in "
            'this conference";component="ASMCU"\': the TechNote\'s "User can\'t share"; the '
            "fix is Make Presenter."
        ),
        hint='sip.Status-Code == 403 && sip.msg_hdr contains "21002"',
        breaks=(
            Break(
                "presenter-not-allowed",
                "presenter-not-allowed",
                "CMS joined as an attendee of a presenters-only meeting",
            ),
        ),
        part_of="reinvite",
        diagnosis_steps=("reINVITE",),
    ),
    Step(
        "keepalive",
        "Binding Indication: the keepalive on the control connection",
        find_keepalive,
        what=(
            "{cms} sends a STUN Binding Indication on the control connection, 5 s after "
            "allocating in the lab: 28 bytes, the header and FINGERPRINT. Nobody answers it; it "
            "keeps the TCP connection, and every firewall and NAT on its way, from going idle."
        ),
        why=(
            "STUN is also a way to keep NAT bindings alive (RFC 5389 §1): an indication gets "
            "no response, and its mere arrival refreshes the state of the boxes in between "
            "(§7.3.2). If the control connection dies the allocation goes with it. The "
            "TechNote's last 'tcp and stun' row (frame 3209, 82 bytes)."
        ),
        refs=("RFC 5389 §1", "RFC 5389 §7.3.2"),
        look="'Binding Indication', an 82-byte frame, on the control connection's stream",
        missing=(
            "No keepalive in this run: CMS sends its first one 5 s after allocating, and the "
            "call did not last that long."
        ),
        hint="stun.type == 0x0011",
        lab_frames=(3209,),
        diagnosis_steps=("call up",),
    ),
    Step(
        "hang-up",
        "The hang-up: BYE, and CMS gives its allocation back (Refresh with LIFETIME 0)",
        find_hang_up,
        what=(
            "The call ends with a BYE through the same proxies, answered 200 OK. {cms} "
            "releases its relay with a Refresh of LIFETIME 0, answered with lifetime 0, and "
            "closes its TURN connections; Expressway-E closes the peer's."
        ),
        why=(
            "BYE ends the dialog (RFC 3261 §15.1). A Refresh with LIFETIME 0 deletes the "
            "allocation at once instead of letting it run out (RFC 5766 §7.1), and closing "
            "either side of a data connection closes the other (RFC 6062 §5.5). The "
            "TechNote's capture stops before this."
        ),
        refs=("RFC 3261 §15.1", "RFC 5766 §7.1", "RFC 6062 §5.5"),
        look="the BYE rows, then 'Refresh Request … lifetime: 0' and its answer at CMS",
        missing="No hang-up in this run: the run's deadline stopped it first.",
        hint='sip.Method == "BYE"',
        breaks=(
            Break(
                "bye-lost",
                "hang-up-incomplete",
                "the BYE is lost at the Edge: CMS keeps the content session up",
            ),
            Break(
                "stale-nonce",
                "stale-nonce-recovered",
                "Expressway-E's nonce went stale before the release: 438 Stale Nonce, and CMS "
                "sends the Refresh again with the new nonce (RFC 5389 §10.2.3)",
            ),
        ),
        diagnosis_steps=("hang-up",),
    ),
)

#: The steps by id.
BY_ID: dict[str, Step] = {step.id: step for step in STEPS}

#: What the TechNote shows and says, each with the step that covers it (tests hold every
#: step id real and every point's words in that step's text).
TECHNOTE_POINTS: tuple[tuple[str, str, str], ...] = (
    ("New INVITE with m=applicationsharing to share the presentation", "sharing-invite",
     "m=applicationsharing"),
    ("The first audio/video invites, already negotiated, are not shown", "sharing-invite",
     "audio/video"),
    ("SDP from Skype contains remote ICE candidates", "sharing-invite", "candidates"),
    ("A different SIP Call-ID than the initial audio/video call", "sharing-invite", "Call-ID"),
    ("After CMS receives the call it reaches out to its TURN server", "turn-after-invite",
     "Only once the INVITE has reached it"),
    ("CMS makes a TCP connection to the TURN server", "turn-after-invite", "TCP"),
    ("TCP relay is an extension to TURN: RFC 6062", "allocate-request", "RFC 6062"),
    ("Expressway X8.9 introduces TCP relay for CMS-Skype sharing", "turn-after-invite", "X8.9"),
    ("Allocate Success Response contains the TURN relay candidate", "relay-allocated",
     "XOR-RELAYED-ADDRESS"),
    ("CMS adds the relay candidate to the SDP of its 200 OK", "answer-sdp", "relay"),
    ("The SIP dialog finishes with the ACK", "ack", "ACK"),
    ("The TURN server notifies CMS of a connection to the relay (XOR-PEER-ADDRESS)",
     "connection-attempt", "XOR-PEER-ADDRESS"),
    ("… over the same TCP connection where the Allocate Request was sent",
     "connection-attempt", "the one that carried the Allocate"),
    ("CMS creates a new TCP connection to bridge the peer's connection", "connection-bind",
     "second TCP connection"),
    ("From now on the peer's traffic on the relay port is forwarded to CMS", "peer-data",
     "From now on"),
    ("The Skype client has no IP path to Expressway-E; media goes via the Skype Edge",
     "connection-attempt", "no IP path"),
    ("Binding Request from Skype is sent to CMS", "peer-data", "Binding Request"),
    ("Bidirectional Binding Requests and Success Responses make the pair valid", "ice-checks",
     "Bidirectional"),
    ("After success both ways, a SIP reINVITE establishes the new media route", "reinvite",
     "reINVITE"),
    ("Filter 'tcp and stun' for a quick overview: the ten rows", "reading-the-capture",
     "tcp and stun"),
    ("Wireshark may not decode the TCP payload as STUN: look at [PSH, ACK] payloads",
     "reading-the-capture", "[PSH, ACK]"),
    ("00 6c 00 01 … ; 00 01 Binding Request, 01 01 Binding Success Response",
     "reading-the-capture", "01 01"),
    ("For the STUN pair to work there must be one in each direction", "ice-checks",
     "each direction"),
    ("A Wireshark plugin makes the capture readable", "reading-the-capture", "plugin"),
    ("User can't share: ms-diagnostics-public 21002 … component ASMCU", "presenter-21002",
     "21002"),
    ("Meetings do not let everyone share by default: Make Presenter", "presenter-21002",
     "Make Presenter"),
    ("The Refresh right after the Allocate (frames 2428, 2447)", "refresh", "Refresh"),
    ("The 401 with nonce and realm TANDBERG (frames 2397, 2399)", "challenge-401", "TANDBERG"),
    ("ConnectionBind Request and Success (frames 2540, 2552)", "connection-bind",
     "ConnectionBind"),
    ("The Binding Indication (frame 3209)", "keepalive", "Binding Indication"),
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Applying the steps to a run
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Departure:
    """Where a run first departs from the healthy call: the step, when (seconds after the
    sharing INVITE left the client, in the run or the healthy call), and what differs, in
    typed facts (kind, hop, fate), not summaries."""

    step: str
    t: float
    healthy: tuple[str, ...]
    """What the healthy call has there and this run has not."""
    run: tuple[str, ...]
    """What this run has there instead."""


@dataclass
class Explained:
    """One step applied to a run."""

    step: Step
    number: int
    found: Found
    what: str
    look: str
    missing: str
    frames: list[int] = field(default_factory=list)
    """The step's messages (and opening SYNs) in the run's capture at :data:`POINT`."""
    departs: Departure | None = None

    @property
    def happened(self) -> bool:
        return self.found.happened


@dataclass
class Explanation:
    scenario: str
    clock: str
    outcome: str
    reason: str
    diagnosis: Diagnosis
    steps: list[Explained]
    call: Call
    departure: Departure | None = None
    compared: str = ""
    """What the run was compared with (empty: not compared)."""

    def step(self, step_id: str) -> Explained:
        return next(s for s in self.steps if s.step.id == step_id)


#: The template words that name an actor (``{expe}``: ``Expressway-E (10.48.54.229)``).
SLOT_ACTORS = {"client": CLIENT, "edge": EDGE, "expe": EXPE, "expc": EXPC, "cms": CMS}


class _Slots(dict[str, str]):
    """Template words: the run's, else the generic ones (a step that did not happen)."""

    GENERIC = {
        "relay": "its relayed address", "relay_port": "the relayed port",
        "peer": "the Skype side's address", "peer_actor": "the Skype Edge",
        "call_id": "a new Call-ID", "realm": "TANDBERG", "user": "turn",
        "candidate": "a=candidate:… typ relay", "reinviter": "CMS (the controlling agent)",
        "ctl": "CMS's first TCP connection to the TURN port",
        "data": "a new connection from another local port", "turn": "its TURN port 3478",
        "both": "?",
    }  # fmt: skip

    def __missing__(self, key: str) -> str:
        return self.GENERIC.get(key, "?")


def _slots(call: Call, found: Found) -> _Slots:
    slots = _Slots({key: call.who(actor) for key, actor in SLOT_ACTORS.items()})
    if call.peer is not None:
        slots["peer"] = str(call.peer)
    if call.relay is not None:
        slots["relay"] = str(call.relay)
        slots["relay_port"] = str(call.relay.port)
    if call.turn_server is not None:
        slots["turn"] = str(call.turn_server)
    if call.call_id:
        slots["call_id"] = call.call_id
    if call.control:
        slots["ctl"] = _conn_words(call.control[0])
    if call.data:
        slots["data"] = _conn_words(call.data[0])
    slots.update(found.slots)
    return slots


def frames_at(trace: Trace, actor: str = POINT) -> tuple[dict[int, int], dict[int, int]]:
    """Frame numbers in the run's capture at ``actor`` (``labsim run --pcap F --capture-at
    cms``): each message record's (by ``id``) and each connection's opening SYN (by connection
    id), from the frames :func:`labsim.report.pcap.write_pcapng` writes."""
    from labsim.report.pcap import frame_numbers

    return frame_numbers(trace, actor)


def explain(
    trace: Trace, *, scenario: str, clock: str, outcome: str, reason: str,
    diagnosis: Diagnosis, healthy: Trace | None = None, healthy_name: str = "",
) -> Explanation:  # fmt: skip
    """Apply :data:`STEPS` to a run's trace; with ``healthy`` (the healthy lab's trace, run on
    the virtual clock), mark the first step where the run departs from it."""
    call = read_call(trace)
    by_message, by_syn = frames_at(trace)
    steps = []
    for number, step in enumerate(STEPS, start=1):
        found = step.find(call)
        slots = _slots(call, found)
        for f in found.filters:
            f.frames = _frames(f.records, f.connections, by_message, by_syn)
        steps.append(Explained(
            step, number, found, _sentence(step.what.format_map(slots)),
            step.look.format_map(slots), _sentence(step.missing.format_map(slots)),
            _frames([*found.context, *found.records], found.connections, by_message, by_syn),
        ))  # fmt: skip
    out = Explanation(scenario, clock, outcome, reason, diagnosis, steps, call)
    if healthy is not None:
        out.compared = healthy_name or "the healthy lab"
        out.departure = departure(call, read_call(healthy))
        for s in steps:
            if out.departure is not None and s.step.id == out.departure.step:
                s.departs = out.departure
    return out


def _sentence(text: str) -> str:
    """A template's text with its first letter capitalised (a slot may open the sentence:
    ``the Skype client (192.168.1.100) starts …``)."""
    return text[:1].upper() + text[1:]


def _frames(records: Iterable[MessageRecord], connections: Iterable[ConnectionRecord],
            by_message: Mapping[int, int], by_syn: Mapping[int, int]) -> list[int]:  # fmt: skip
    found = {by_message[id(m)] for m in records if id(m) in by_message}
    found |= {by_syn[c.id] for c in connections if c.id in by_syn}
    return sorted(found)


# ---------------------------------------------------------------------------------------------
# Where a run departs from the healthy call
# ---------------------------------------------------------------------------------------------

Entry = tuple[str, ...]


def _entries(call: Call, found: Found) -> list[tuple[Entry, float]]:
    """The step's typed facts, one entry per message hop, connection and failed connect, each
    with its time after the sharing INVITE left its sender."""
    t0 = call.invite.sent_t if call.invite is not None else 0.0
    out: list[tuple[Entry, float]] = []
    for m in found.records:
        out.append((("message", kind_of(m), m.src, m.dst, _fate(m)), m.t - t0))
    for c in found.connections:
        out.append((("connection", c.client, c.server, "reset" if c.reset else "opened"),
                    c.opened - t0))  # fmt: skip
    for r in found.refused:
        out.append((("connect", r.client, call.actor_at(r.server_addr.host), r.how),
                    r.began - t0))  # fmt: skip
    return out


def entry_words(entry: Entry) -> str:
    match entry:
        case ("message", kind, src, dst, fate):
            return f"{kind} {src} → {dst} ({fate})"
        case ("connection", client, server, how):
            return f"TCP connection {client} → {server} ({how})"
        case ("connect", client, server, how):
            return f"TCP connect {client} → {server} failed ({how})"
    return " ".join(entry)


def _surplus(mine: list[tuple[Entry, float]], theirs: Counter[Entry]) -> list[tuple[Entry, float]]:
    """Occurrences in ``mine`` beyond the count ``theirs`` has of each entry, in time order."""
    seen: Counter[Entry] = Counter()
    out = []
    for entry, t in sorted(mine, key=lambda e: e[1]):
        seen[entry] += 1
        if seen[entry] > theirs[entry]:
            out.append((entry, t))
    return out


def departure(run: Call, healthy: Call) -> Departure | None:
    """The first step (by the time of its first difference, then call order) whose typed facts
    differ between the run and the healthy call: kinds, hops and fates, counted. Reading steps
    (``part_of``) are judged with the step they read. None: the run follows the healthy call
    at every step."""
    best: tuple[float, int, Departure] | None = None
    for number, step in enumerate(STEPS):
        if step.part_of is not None:
            continue
        mine, theirs = _entries(run, step.find(run)), _entries(healthy, step.find(healthy))
        mine_count = Counter(e for e, _ in mine)
        theirs_count = Counter(e for e, _ in theirs)
        if mine_count == theirs_count:
            continue
        extra, missing = _surplus(mine, theirs_count), _surplus(theirs, mine_count)
        t = min(t for _, t in [*extra, *missing])
        found = Departure(
            step.id, t, tuple(_counted(missing)), tuple(_counted(extra))
        )  # fmt: skip
        # Microseconds: two runs' clocks add their latencies in another order.
        t = round(t, 6)
        if best is None or (t, number) < best[:2]:
            best = (t, number, found)
    return best[2] if best is not None else None


def _counted(entries: list[tuple[Entry, float]]) -> list[str]:
    counts = Counter(e for e, _ in entries)
    order = list(dict.fromkeys(e for e, _ in entries))
    return [entry_words(e) + (f" ×{counts[e]}" if counts[e] > 1 else "") for e in order]


# ---------------------------------------------------------------------------------------------
# Plain text, for people
# ---------------------------------------------------------------------------------------------

Level = Literal["quiet", "normal", "verbose"]

#: Prose is folded to this width unless told otherwise; filters, hex and fields never are.
WIDTH = 100


def _fold(text: str, indent: str, width: int, then: str | None = None) -> list[str]:
    """Prose folded at ``width``; words are never cut (a filter or an address stays whole)."""
    return textwrap.wrap(
        text, width=max(width, len(indent) + 20), initial_indent=indent,
        subsequent_indent=indent if then is None else then, break_long_words=False,
        break_on_hyphens=False,
    )  # fmt: skip


def header_lines(ex: Explanation, width: int = WIDTH, say: Level = "normal") -> list[str]:
    lines = [f"labsim explain {ex.scenario}: the sharing call of {TECHNOTE}, step by step"]
    lines += _fold(f"Run: {ex.clock} clock; outcome {ex.outcome} ({ex.reason}); diagnosis "
                   f"{ex.diagnosis.verdict}.", "  ", width)  # fmt: skip
    lines += [] if say == "quiet" else _fold(
        "Each step: what happens, the fields and bytes of this run that show it, why, what to "
        "look for in Wireshark, and what breaks when it fails. Message numbers (#N) index the "
        "run's JSON messages (labsim explain --json); frame numbers are this run's capture at "
        "CMS (labsim explain --pcap FILE writes it; on the virtual clock `labsim run --clock "
        "virtual --pcap FILE --capture-at cms` gives the same frames).", "  ", width,
    )  # fmt: skip
    if ex.compared:
        if ex.departure is None:
            said = f"Compared with {ex.compared}: it follows the healthy call at every step."
        else:
            s = ex.step(ex.departure.step)
            said = (f"Compared with {ex.compared}: it departs from it at step {s.number} "
                    f"({s.step.title}).")  # fmt: skip
        lines += _fold(said, "  ", width)
    return lines


def _evidence_lines(ex: Explanation, s: Explained, say: Level) -> list[str]:
    """One line per message (its hops joined), or per hop with --verbose."""
    index = ex.call.index
    out: list[str] = []
    records = s.found.records
    if say == "verbose":
        for m in records:
            out.append(f"#{index[id(m)]} t={m.t:.6f} s {m.src} → {m.dst} {kind_of(m)} "
                       f"[{ex.call.trace.connections[m.connection].name}] {_fate(m)}: "
                       f"{m.summary}")  # fmt: skip
    else:
        groups: dict[int, list[MessageRecord]] = {}
        for m in records:
            journey = m.journey
            groups.setdefault(journey.id if journey is not None else -id(m), []).append(m)
        for hops in groups.values():
            first = hops[0]
            path = first.src
            for h in hops:
                path += f" → {h.dst}" + ("" if h.delivered else f" ({_fate(h)})")
            numbers = " ".join(f"#{index[id(h)]}" for h in hops)
            out.append(f"{kind_of(first)}: {path}, t={first.t:.6f} s [{numbers}]")
            if isinstance(first.facts, StunFacts):
                # Wireshark's Info column for it, whole (the TechNote's capture cut some).
                out.append(f"  Info: {first.summary}")
    for c in s.found.connections:
        out.append(f"TCP connection {_conn_words(c)}, opened t={c.opened:.6f} s")
    return out


def step_lines(
    ex: Explanation, s: Explained, width: int = WIDTH, say: Level = "normal"
) -> list[str]:
    """The text of one step."""
    step, found = s.step, s.found
    mark = "" if s.happened or say != "quiet" else "  (did not happen in this run)"
    lines = _fold(f"{s.number}. {step.title}{mark}", "", width, "    ")
    if s.departs is not None:
        d = s.departs
        lines.append(f"  >> The run departs from the healthy call here ({d.t * 1000:.3f} ms "
                     "after the sharing INVITE):")  # fmt: skip
        lines += [f"     the healthy call: {w}" for w in d.healthy] or [
            "     the healthy call: nothing more"
        ]
        lines += [f"     this run instead: {w}" for w in d.run] or [
            "     this run instead: nothing"
        ]
    if say == "quiet":
        return lines
    if s.happened:
        lines.append("  What happens:")
        lines += _fold(s.what, "    ", width)
        if found.note:
            lines += _fold(found.note, "    ", width)
    else:
        lines.append("  Did not happen in this run:")
        lines += _fold(s.missing, "    ", width)
        lines.append("  What happens when it does:")
        lines += _fold(s.what, "    ", width)
    evidence = _evidence_lines(ex, s, say)
    if evidence or found.fields or found.hex or found.refused:
        lines.append("  In this run:")
        lines += [f"    {e}" for e in evidence]
        lines += [f"    {name}: {value}" for name, value in found.fields]
        for h in found.hex:
            lines.append(f"    bytes ({h.label}): {h.bytes}")
            lines += _fold(h.note, "      ", width)
    lines.append("  Why:")
    lines += _fold(step.why, "    ", width)
    lines += _fold("References: " + "; ".join(step.refs), "    ", width)
    lines.append("  In Wireshark:")
    if found.filters:
        for f in found.filters:
            plugin = " (with labsim's plugin loaded)" if f.plugin else ""
            lines.append(f"    {f.expr}")
            where = (f"at CMS: frame{'s' if len(f.frames) != 1 else ''} "
                     f"{', '.join(map(str, f.frames))}" if f.frames
                     else "at CMS: no frame (not on CMS's interfaces)")  # fmt: skip
            lines += _fold(f"{where}{plugin}" + (f"; {f.note}" if f.note else ""), "      ",
                           width)  # fmt: skip
    else:
        lines.append(f"    {step.hint}")
        lines.append("      nothing to select in this run")
    if step.lab_frames:
        lab = ", ".join(map(str, step.lab_frames))
        lines += _fold(f"The TechNote's capture: frame{'s' if len(step.lab_frames) > 1 else ''} "
                       f"{lab}.", "    ", width)  # fmt: skip
    lines += _fold(f"Look for: {s.look}.", "    ", width)
    if step.breaks:
        lines.append("  When it fails:")
        for b in step.breaks:
            name = b.scenario or "(no library scenario)"
            run = f"; labsim explain {b.scenario}" if b.scenario else ""
            lines += _fold(
                f"- {name}: {b.what}; diagnosis {b.verdict}{run}", "    ", width, "      "
            )
    return lines


def render_text(ex: Explanation, width: int = WIDTH, say: Level = "normal") -> Iterable[str]:
    """The explanation as text, a block per step (the command pauses between blocks with
    ``--step``): the header, each step, then the diagnosis."""
    yield "\n".join(header_lines(ex, width, say))
    for s in ex.steps:
        yield "\n".join(step_lines(ex, s, width, say))
    yield "\n".join(diagnosis_lines(ex, width, say))


def diagnosis_lines(ex: Explanation, width: int = WIDTH, say: Level = "normal") -> list[str]:
    """The run's diagnosis, quoted whole (as ``labsim run`` prints it), then its first
    failure (--quiet: its first two lines)."""
    d = ex.diagnosis
    lines = ["The run's diagnosis, as labsim run gives it:"]
    text = d.text().splitlines()
    lines += ["  " + line for line in (text[:2] if say == "quiet" else text)]
    if d.failure is not None:
        lines += _fold(f"First failure (where the diagnosis starts): {d.failure.line}", "  ",
                       width, "    ")  # fmt: skip
    return lines


# ---------------------------------------------------------------------------------------------
# JSON, for tools
# ---------------------------------------------------------------------------------------------

#: The layout's version (raised when a field changes meaning or goes away).
VERSION: Literal[1] = 1


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldJson(_Out):
    name: str
    value: str


class HexJson(_Out):
    label: str
    bytes: str = Field(description="Lower-case hex, a space between bytes.")
    note: str


class FilterJson(_Out):
    filter: str = Field(description="A Wireshark display filter.")
    plugin: bool = Field(description="Needs labsim's Lua plugin (labsim wireshark-plugin).")
    note: str
    messages: list[int] = Field(description="The messages it selects (indexes into run.messages).")
    connections: list[int] = Field(description="Connections whose opening SYN it selects.")
    frames_at_cms: list[int] = Field(description="Its frames in this run's capture at CMS.")


class BreakJson(_Out):
    scenario: str | None = Field(description="The bundled scenario that shows it, or null.")
    verdict: str = Field(description="The verdict that scenario's diagnosis gives.")
    what: str


class EvidenceJson(_Out):
    messages: list[int] = Field(description="Indexes into run.messages: the step's messages.")
    context: list[int] = Field(description="Messages shown beside them (not compared).")
    connections: list[int] = Field(description="Ids into run.connections.")
    refused: list[str] = Field(description="Connects that never opened, in words.")
    fields: list[FieldJson]
    hex: list[HexJson]
    frames_at_cms: list[int]


class DepartureJson(_Out):
    step: str
    t: float = Field(description="Seconds after the sharing INVITE left its sender.")
    healthy: list[str] = Field(description="What the healthy call has there, and the run not.")
    run: list[str] = Field(description="What the run has there instead.")


class StepJson(_Out):
    id: str
    number: int
    title: str
    happened: bool
    departs: bool = Field(description="The first step where the run departs from the "
                                      "healthy call.")  # fmt: skip
    part_of: str | None = Field(description="The step whose messages it reads, or null.")
    what: str = Field(description="What happens (in this run's terms).")
    note: str
    missing: str | None = Field(description="Why it did not happen; null when it did.")
    evidence: EvidenceJson
    why: str
    refs: list[str]
    wireshark: list[FilterJson]
    hint: str = Field(description="A filter to look with when the run has nothing to select.")
    look: str
    lab_frames: list[int] = Field(description="The TechNote capture's frames of the step.")
    breaks: list[BreakJson]
    diagnosis_steps: list[str]


class ExplainJson(_Out):
    """``labsim explain --json``."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="labsim explain")

    version: Literal[1]
    scenario: str
    clock: str
    outcome: str
    reason: str
    diagnosis: dict[str, Any]
    failure: str | None = Field(description="The diagnosis's first failure, in words.")
    compared_with: str | None
    departure: DepartureJson | None
    steps: list[StepJson]
    run: dict[str, Any] = Field(description="The run as labsim run --json writes it.")


def explanation_json(ex: Explanation) -> dict[str, Any]:
    """The explanation as JSON-ready data (the layout of :class:`ExplainJson`)."""
    from labsim.report.json_out import trace_to_json

    index = ex.call.index
    steps = []
    for s in ex.steps:
        found = s.found
        steps.append(StepJson(
            id=s.step.id, number=s.number, title=s.step.title, happened=s.happened,
            departs=s.departs is not None, part_of=s.step.part_of, what=s.what,
            note=found.note, missing=None if s.happened else s.missing,
            evidence=EvidenceJson(
                messages=[index[id(m)] for m in found.records],
                context=[index[id(m)] for m in found.context],
                connections=[c.id for c in found.connections],
                refused=[f"{r.client} → {r.server_addr}: {r.how}" for r in found.refused],
                fields=[FieldJson(name=n, value=v) for n, v in found.fields],
                hex=[HexJson(label=h.label, bytes=h.bytes, note=h.note) for h in found.hex],
                frames_at_cms=s.frames,
            ),
            why=s.step.why, refs=list(s.step.refs),
            wireshark=[
                FilterJson(filter=f.expr, plugin=f.plugin, note=f.note,
                           messages=[index[id(m)] for m in f.records],
                           connections=[c.id for c in f.connections], frames_at_cms=f.frames)
                for f in found.filters
            ],
            hint=s.step.hint, look=s.look, lab_frames=list(s.step.lab_frames),
            breaks=[BreakJson(scenario=b.scenario, verdict=b.verdict, what=b.what)
                    for b in s.step.breaks],
            diagnosis_steps=list(s.step.diagnosis_steps),
        ))  # fmt: skip
    d = ex.departure
    out = ExplainJson(
        version=VERSION, scenario=ex.scenario, clock=ex.clock, outcome=ex.outcome,
        reason=ex.reason, diagnosis=ex.diagnosis.as_dict(),
        failure=ex.diagnosis.failure.line if ex.diagnosis.failure is not None else None,
        compared_with=ex.compared or None,
        departure=DepartureJson(step=d.step, t=d.t, healthy=list(d.healthy), run=list(d.run))
        if d is not None else None,
        steps=steps,
        run=trace_to_json(ex.call.trace, scenario=ex.scenario, outcome=ex.outcome,
                          diagnosis=ex.diagnosis.as_dict()),
    )  # fmt: skip
    return out.model_dump(mode="json")


# ---------------------------------------------------------------------------------------------
# The steps table, for docs/explain.md
# ---------------------------------------------------------------------------------------------


def steps_table() -> str:
    """The steps as Markdown, for docs/explain.md (a test keeps that copy current):
    ``python -m labsim.report.explain``."""
    rows = ["| # | step | references | what breaks it (scenario: verdict) |", "|---|---|---|---|"]
    for n, step in enumerate(STEPS, start=1):
        breaks = "; ".join(f"`{b.scenario}`: `{b.verdict}`" if b.scenario else f"(none): "
                           f"`{b.verdict}`" for b in step.breaks) or "—"  # fmt: skip
        title = step.title.replace("|", "\\|")
        read = f" (reads step `{step.part_of}`)" if step.part_of else ""
        rows.append(f"| {n} | `{step.id}`: {title}{read} | {'; '.join(step.refs)} | {breaks} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(steps_table(), end="")
