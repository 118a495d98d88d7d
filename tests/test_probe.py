"""``labsim probe`` (labsim/probe.py): CMS's side of the relay against real TURN servers.

Every server here is on loopback and bounded in time: Debian's coturn (tests/coturn.py), labsim's
own Expressway-E TurnServer on the live runtime in a child process (as bench/turn.py runs it),
with and without injected errors, and small scripted servers in threads that stall, hang up or
send garbage at a chosen step. Each probe step has its own deadline, so a stalling server costs
at most one ``timeout``; no test asserts a time.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from labsim.cli import main
from labsim.net.live import claim_block
from labsim.probe import (
    STEP_NAMES,
    ProbeConfig,
    ProbeInputError,
    ProbeResult,
    parse_target,
    run_probe,
)
from labsim.wire import stun
from labsim.wire.framing import StunSplitter
from labsim.wire.stun import Class, Message, Method

from .coturn import coturn
from .stun_client import KEY, PASSWORD, REALM, USER, free_port, free_range, wait_listening

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def probe(host: str, port: int, *, password: str = PASSWORD, timeout: float = 5.0,
          **kw: Any) -> ProbeResult:  # fmt: skip
    return run_probe(ProbeConfig(host, port, USER, password, timeout=timeout, **kw))


def statuses(result: ProbeResult) -> dict[str, str]:
    return {s.name: s.status for s in result.steps}


def assert_all_passed(result: ProbeResult) -> None:
    assert statuses(result) == dict.fromkeys(STEP_NAMES, "passed"), result.verdict()
    assert all(s.ms is not None and s.ms >= 0 for s in result.steps)
    assert result.verdict().startswith("verdict: PASS")
    assert result.failed is None


def assert_fails_at(result: ProbeResult, name: str, *words: str) -> None:
    """``name`` is the first failed step, the steps before it passed, those after it did not
    run (the release may run as cleanup), and the cause says ``words``."""
    failed = result.failed
    assert failed is not None and failed.name == name, result.verdict()
    index = STEP_NAMES.index(name)
    assert all(s.status == "passed" for s in result.steps[:index])
    after = [s for s in result.steps[index + 1 :] if s.name != "release"]
    assert all(s.status == "skipped" for s in after)
    verdict = result.verdict()
    assert verdict.startswith(f"verdict: FAIL at {name} - ")
    for word in words:
        assert word in verdict, verdict


def sent_and_received(result: ProbeResult, conn: str) -> list[tuple[str, str]]:
    return [(m.direction, m.summary) for m in result.messages if m.conn == conn]


# Our Expressway-E TurnServer alone on the live runtime, in a child Python (bench/turn.py's
# way: the server does not share the probe's loop or GIL). argv: host port low high until
# settings-json. It lives at most `until` seconds even if the test dies without killing it.
OURS_CHILD = """
import json, sys
from labsim.net.live import LiveNetwork
from labsim.proto.turn_server import InjectedError, TurnServer, TurnServerSettings
from labsim.trace import Trace

host, port, low, high, until = sys.argv[1], *map(int, sys.argv[2:5]), float(sys.argv[5])
extra = json.loads(sys.argv[6])
errors = tuple(InjectedError(**e) for e in extra.pop("errors", []))
settings = TurnServerSettings(port=port, relay_ports=(low, high), errors=errors, **extra)
LiveNetwork([TurnServer("expressway_e", host, settings).actor()], Trace()).run(until=until)
"""


@contextmanager
def ours(tmp_path: Path, **settings: Any) -> Iterator[tuple[str, int, range]]:
    """labsim's TurnServer (lab realm TANDBERG, user turn:secret) on an address of a loopback
    block of this test's; (host, port, relay ports)."""
    with claim_block() as block:
        host = block.address(1)
        port = free_port(host)
        relays = free_range(10, host, avoid=port)
        err = tmp_path / "turnserver.stderr"
        args = [host, str(port), str(relays.start), str(relays.stop - 1), "60"]
        with err.open("wb") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-c", OURS_CHILD, *args, json.dumps(settings)],
                stdout=subprocess.DEVNULL, stderr=sink,
            )  # fmt: skip
        try:
            wait_listening(host, port, f"labsim TurnServer ({err})", 30.0, proc)
            yield host, port, relays
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


# A scripted TURN server in threads: right answers up to the step it stalls, hangs up or talks
# nonsense at. Its relay port is a second listener that accepts and never relays.
Behaviour = Callable[[socket.socket, "Scripted"], None]


class Scripted:
    def __init__(self, host: str, behave: Behaviour) -> None:
        self.host = host
        self.behave = behave
        self.listener = socket.create_server((host, 0))
        self.relay = socket.create_server((host, 0))
        self.port = self.listener.getsockname()[1]
        self.relay_port = self.relay.getsockname()[1]
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.held: list[socket.socket] = []

    def start(self) -> None:
        for listener, fn in ((self.listener, self._serve), (self.relay, self._hold)):
            listener.settimeout(0.1)
            thread = threading.Thread(target=self._accept, args=(listener, fn), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _accept(self, listener: socket.socket, fn: Callable[[socket.socket], None]) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(0.1)
            self.held.append(conn)
            thread = threading.Thread(target=fn, args=(conn,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.behave(conn, self)
        except OSError:
            pass

    def _hold(self, conn: socket.socket) -> None:
        self.stop.wait(30)  # a relay port that takes peers and never tells anyone

    def messages(self, conn: socket.socket) -> Iterator[Message]:
        """The requests arriving on ``conn`` until it closes or the server stops."""
        splitter = StunSplitter(allow_channel_data=False)
        while not self.stop.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return
            for frame in splitter.feed(data):
                yield stun.decode(frame)

    def wait_closed(self, conn: socket.socket) -> None:
        for _ in self.messages(conn):
            pass

    def close(self) -> None:
        self.stop.set()
        for s in [self.listener, self.relay, *self.held]:
            s.close()
        for thread in self.threads:
            thread.join(timeout=5)


@contextmanager
def scripted(behave: Behaviour) -> Iterator[Scripted]:
    with claim_block() as block:
        server = Scripted(block.address(1), behave)
        server.start()
        try:
            yield server
        finally:
            server.close()


def answer(request: Message, server: Scripted, peer: tuple[str, int]) -> bytes | None:
    """What a right TURN server says to ``request`` (None: nothing, for an indication)."""
    if request.cls is not Class.REQUEST:
        return None
    if request.method == Method.ALLOCATE and stun.MessageIntegrity not in request:
        return request.error(401, [stun.Realm(REALM), stun.Nonce("0123456789abcdef"),
                                   stun.Fingerprint()]).encode()  # fmt: skip
    attrs: list[stun.Attribute] = []
    if request.method == Method.ALLOCATE:
        attrs = [stun.XorRelayedAddress(server.host, server.relay_port),
                 stun.XorMappedAddress(*peer), stun.Lifetime(600)]  # fmt: skip
    elif request.method == Method.REFRESH:
        attrs = [stun.Lifetime(0)]
    return request.success([*attrs, stun.MessageIntegrity(), stun.Fingerprint()]).encode(KEY)


def turn_until(stall_at: int) -> Behaviour:
    """Answer right until the request of method ``stall_at``, then say nothing more."""

    def behave(conn: socket.socket, server: Scripted) -> None:
        peer = conn.getpeername()
        for request in server.messages(conn):
            if request.method == stall_at and stun.MessageIntegrity in request:
                server.wait_closed(conn)
                return
            reply = answer(request, server, peer)
            if reply is not None:
                conn.sendall(reply)

    return behave


# ---------------------------------------------------------------------------------------------
# coturn
# ---------------------------------------------------------------------------------------------


@pytest.mark.coturn
def test_every_step_passes_against_coturn(tmp_path: Path) -> None:
    with coturn(tmp_path) as server:
        result = probe(server.host, server.port, realm=REALM)
    assert_all_passed(result)
    assert result.relayed is not None and result.relayed.host == server.host
    assert result.relayed.port in server.relay_ports
    assert result.mapped is not None
    assert result.realm == REALM
    control = sent_and_received(result, "control")
    assert control[0] == ("sent", "Allocate Request TCP lifetime: 600")
    assert control[1][1].startswith("Allocate Error Response error-code: 401")
    assert ("sent", f"CreatePermission Request XOR-PEER-ADDRESS: {result.mapped.host}:0 user: "
            f"{USER} realm: {REALM} with nonce") in control  # fmt: skip
    assert any(s.startswith("ConnectionAttempt Indication") for _, s in control)
    assert control[-1] == ("received", "Refresh Success Response lifetime: 0")
    assert ("sent", f"ConnectionBind Request user: {USER} realm: {REALM} with nonce") in (
        sent_and_received(result, "data")
    )
    # The checks crossed coturn's relay both ways: each end received the other's request and
    # its answer.
    for conn in ("data", "peer"):
        got = [s for d, s in sent_and_received(result, conn) if d == "received"]
        assert any(s.startswith("framed Binding Request") for s in got), got
        assert any(s.startswith("framed Binding Success Response") for s in got), got


@pytest.mark.coturn
def test_wrong_password_is_named_authentication(tmp_path: Path) -> None:
    with coturn(tmp_path) as server:
        out = CliRunner().invoke(main, [
            "probe", "--turn", f"{server.host}:{server.port}", "--user", USER,
            "--password", "not-the-password", "--realm", "OTHER",
            "--json", str(tmp_path / "p.json"),
        ])  # fmt: skip
    assert out.exit_code == 1, out.output
    assert "verdict: FAIL at allocate - authentication failed: wrong username or password" in (
        out.stdout
    )
    assert "the server's realm is 'TANDBERG', not 'OTHER'" in out.stdout
    assert "Traceback" not in out.output
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["failed_step"] == "allocate" and data["passed"] is False
    assert "not-the-password" not in (tmp_path / "p.json").read_text()
    assert [s["status"] for s in data["steps"]][:3] == ["passed", "failed", "skipped"]


@pytest.mark.coturn
def test_coturn_without_tcp_relay_fails_the_allocation(tmp_path: Path) -> None:
    with coturn(tmp_path, "--no-tcp-relay") as server:
        result = probe(server.host, server.port)
    assert_fails_at(result, "allocate", "does not relay TCP (442)")
    assert result.step("release").status == "skipped"  # nothing was allocated


@pytest.mark.coturn
def test_relay_address_nobody_listens_on_fails_the_peer_connect(tmp_path: Path) -> None:
    """coturn advertises an external address it does not listen on (a static NAT that does not
    forward the relay range): the peer's connect is refused, and the allocation is released."""
    with claim_block() as elsewhere, coturn(tmp_path, "-X", elsewhere.address(9)) as server:
        result = probe(server.host, server.port)
    assert_fails_at(result, "peer-connect", "nothing accepts on", elsewhere.address(9))
    assert result.step("release").status == "passed"


@pytest.mark.coturn
def test_relay_host_reaches_the_relay_behind_the_advertised_address(tmp_path: Path) -> None:
    """The same coturn, probed with --relay-host its own address (as from inside a static NAT
    that does not hairpin): every step passes, and the peer step says where it connected."""
    with claim_block() as elsewhere, coturn(tmp_path, "-X", elsewhere.address(9)) as server:
        out = CliRunner().invoke(main, [
            "probe", "--turn", f"{server.host}:{server.port}", "--user", USER,
            "--password", PASSWORD, "--relay-host", server.host,
        ])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert f"(--relay-host, instead of {elsewhere.address(9)}:" in out.stdout


@pytest.mark.coturn
def test_permission_for_another_address_is_named(tmp_path: Path) -> None:
    """--peer-address names an address the peer does not come from: coturn accepts the peer and
    resets it without a ConnectionAttempt (RFC 6062 §5.3), during or just after the connect."""
    with coturn(tmp_path) as server:
        other = server.block.address(7)
        result = probe(server.host, server.port, peer_address=other, timeout=2.0)
    failed = result.failed
    assert failed is not None and failed.name in ("peer-connect", "connection-attempt")
    assert "no permission for the peer's address" in failed.cause
    assert f"the permission was for {other}" in failed.cause
    assert result.step("permission").detail == f"permission for {other} (given with --peer-address)"


# ---------------------------------------------------------------------------------------------
# labsim's own Expressway-E
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["rfc", "lab"])
def test_every_step_passes_against_our_expressway_e(tmp_path: Path, policy: str) -> None:
    with ours(tmp_path, permission_policy=policy) as (host, port, relays):
        result = probe(host, port)
    assert_all_passed(result)
    assert result.relayed is not None and result.relayed.port in relays
    # Expressway-E's answers, in the lab's words.
    control = [s for _, s in sent_and_received(result, "control")]
    assert control[1].startswith("Allocate Error Response error-code: 401")
    assert "realm: TANDBERG" in control[1]


@pytest.mark.parametrize(
    ("error", "step", "words"),
    [
        ({"request": "Allocate", "code": 508}, "allocate", ("no relay ports left (508)",)),
        ({"request": "Allocate", "code": 486}, "allocate", ("quota", "(486)")),
        ({"request": "CreatePermission", "code": 403}, "permission", ("forbids the peer",)),
        ({"request": "ConnectionBind", "code": 447}, "connection-bind", ("(447)",)),
        ({"request": "Refresh", "code": 437}, "release", ("already gone",)),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_an_injected_error_is_named_at_its_step(
    tmp_path: Path, error: dict[str, Any], step: str, words: tuple[str, ...]
) -> None:
    with ours(tmp_path, errors=[error]) as (host, port, _):
        result = probe(host, port)
    assert_fails_at(result, step, *words)
    assert str(error["code"]) in result.step(step).detail


def test_no_tcp_relay_on_our_expressway_e(tmp_path: Path) -> None:
    with ours(tmp_path, tcp_relay=False) as (host, port, _):
        result = probe(host, port)
    assert_fails_at(result, "allocate", "Expressway-E before X8.9")


# ---------------------------------------------------------------------------------------------
# Servers that stall, hang up or talk nonsense
# ---------------------------------------------------------------------------------------------


def test_nothing_listening_fails_the_control_step() -> None:
    with claim_block() as block:
        host = block.address(3)
        port = free_port(host)
        result = probe(host, port, timeout=1.0)
    assert_fails_at(result, "control", "nothing listens on TCP")
    assert result.step("release").status == "skipped"


def test_a_server_that_accepts_and_never_answers_times_out_the_allocation() -> None:
    with scripted(lambda conn, server: server.wait_closed(conn)) as server:
        result = probe(server.host, server.port, timeout=0.5)
    assert_fails_at(result, "allocate", "never answered", "not a TURN server over TCP")
    assert "no answer to the Allocate within 0.5 s" in result.step("allocate").detail


@pytest.mark.parametrize(
    ("stall_at", "step", "words", "release"),
    [
        # Nothing allocated, nothing to release.
        (Method.ALLOCATE, "allocate", ("stalls after its challenge",), "skipped"),
        # The server says nothing more: the cleanup's release times out too.
        (Method.CREATE_PERMISSION, "permission", ("stalls on CreatePermission",), "failed"),
        # The relay port takes the peer, and the server never sends ConnectionAttempt; it
        # answers the release.
        (None, "connection-attempt", ("never told the client",), "passed"),
    ],
    ids=["authenticated-allocate", "create-permission", "connection-attempt"],
)
def test_a_stall_is_a_timeout_of_its_own_step(
    stall_at: int | None, step: str, words: tuple[str, ...], release: str
) -> None:
    with scripted(turn_until(stall_at if stall_at is not None else -1)) as server:
        result = probe(server.host, server.port, timeout=0.5)
    assert_fails_at(result, step, *words)
    assert result.step("release").status == release


def test_a_stale_nonce_loop_is_named() -> None:
    """Every authenticated Allocate gets 438 Stale Nonce with a new NONCE: the client retries a
    bounded number of times (RFC 5389 §10.2.3), then the step fails naming the loop."""
    answers: list[int] = []

    def behave(conn: socket.socket, server: Scripted) -> None:
        for request in server.messages(conn):
            if stun.MessageIntegrity not in request:
                reply = answer(request, server, conn.getpeername())
            else:
                nonce = stun.Nonce(f"nonce{len(answers)}")
                reply = request.error(438, [stun.Realm(REALM), nonce, stun.Fingerprint()]).encode()
                answers.append(438)
            assert reply is not None
            conn.sendall(reply)

    with scripted(behave) as server:
        result = probe(server.host, server.port, timeout=2.0)
    assert_fails_at(result, "allocate", "Stale Nonce (438)")
    assert len(answers) == 4  # the first try and three retries (TurnClientSettings)


def test_a_stalling_release_is_bounded() -> None:
    """Every step right until the peer connects; the release then gets no answer."""

    def behave(conn: socket.socket, server: Scripted) -> None:
        peer = conn.getpeername()
        for request in server.messages(conn):
            if request.method == Method.REFRESH:
                server.wait_closed(conn)
                return
            reply = answer(request, server, peer)
            if reply is not None:
                conn.sendall(reply)

    with scripted(behave) as server:
        result = probe(server.host, server.port, timeout=0.5)
    # The scripted relay never sends a ConnectionAttempt: that step fails first, then the
    # cleanup release waits its own deadline and fails too.
    assert_fails_at(result, "connection-attempt")
    release = result.step("release")
    assert release.status == "failed"
    assert "no answer to Refresh LIFETIME 0 within 0.5 s" in release.detail


GARBAGE = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"


def test_garbage_is_a_clear_failure_without_traceback() -> None:
    def behave(conn: socket.socket, server: Scripted) -> None:
        conn.sendall(GARBAGE)
        server.wait_closed(conn)

    with scripted(behave) as server:
        target = f"{server.host}:{server.port}"
        out = CliRunner().invoke(
            main, ["probe", "--turn", target, "--user", "u", "--password", "p", "--timeout", "1"]
        )
    assert out.exit_code == 1, out.output
    assert "Traceback" not in out.output and "internal error" not in out.output
    assert f"verdict: FAIL at allocate - {target} is not a TURN server over TCP" in out.stdout
    assert "bytes that are not STUN" in out.stdout


def test_a_server_that_hangs_up_at_once() -> None:
    with scripted(lambda conn, server: conn.close()) as server:
        result = probe(server.host, server.port, timeout=1.0)
    assert_fails_at(result, "allocate", "hung up")


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    move = rng.randrange(4)
    if move == 0:
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
    elif move == 1:
        out = out[: rng.randrange(len(out))]
    elif move == 2:
        i = rng.randrange(len(out))
        out[i:i] = rng.randbytes(rng.randint(1, 40))
    else:
        out = bytearray(rng.randbytes(rng.randint(1, 200)))
    return bytes(out)


def test_mutated_answers_never_escape() -> None:
    """The first answer on each connection is a right one mutated (bit flips, cuts, inserted or
    random bytes); whatever it becomes, the probe ends with a verdict (a failed step with its
    cause, or every step passed), never an exception."""
    rng = random.Random("issue-15-probe")

    def behave(conn: socket.socket, server: Scripted) -> None:
        peer = conn.getpeername()
        first = True
        for request in server.messages(conn):
            reply = answer(request, server, peer)
            if reply is None:
                continue
            if first:
                reply, first = _mutate(rng, reply), False
            conn.sendall(reply)

    with scripted(behave) as server:
        results = [probe(server.host, server.port, timeout=0.3) for _ in range(24)]
    for result in results:
        failed = result.failed
        assert result.passed or (failed is not None and failed.cause), result.verdict()
        assert result.verdict().startswith("verdict: ")
        # The server always answered something: the verdict says what was wrong with it.
        assert "never answered" not in result.verdict()
    # Most mutants break the allocation; a verdict never blames a later step for it.
    assert sum(r.failed is not None and r.failed.name == "allocate" for r in results) >= 12


# ---------------------------------------------------------------------------------------------
# Input and output
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("expe.example.com:3478", ("expe.example.com", 3478)),
        ("203.0.113.5", ("203.0.113.5", 3478)),
        ("[2001:db8::1]:443", ("2001:db8::1", 443)),
        ("[::1]", ("::1", 3478)),
    ],
)
def test_targets(text: str, expected: tuple[str, int]) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize(
    "args",
    [
        ["--turn", "host:notaport"],
        ["--turn", "host:0"],
        ["--turn", "host:70000"],
        ["--turn", "2001:db8::1:3478"],
        ["--turn", "[2001:db8::1"],
        ["--turn", "[not-an-ip]:3478"],
        ["--turn", ":3478"],
        ["--turn", ""],
        ["--turn", "127.0.0.1:3478", "--timeout", "0"],
        ["--turn", "127.0.0.1:3478", "--timeout", "x"],
        ["--turn", "127.0.0.1:3478", "--peer-address", "not-an-ip"],
        ["--turn", "127.0.0.1:3478", "--relay-host", "relay.example.com"],
        ["--turn", "127.0.0.1:3478", "--user", ""],
    ],
)
def test_bad_input_exits_2(args: list[str]) -> None:
    full = ["probe", "--user", "u", "--password", "p", *args]
    out = CliRunner().invoke(main, full)
    assert out.exit_code == 2, out.output
    assert "Traceback" not in out.output
    assert out.stdout == ""


def test_bad_input_is_a_typed_error() -> None:
    with pytest.raises(ProbeInputError, match="IPv6"):
        parse_target("::1")
    with pytest.raises(ProbeInputError, match="--timeout"):
        ProbeConfig("h", 1, "u", "p", timeout=1000)


def test_json_on_standard_output_and_the_report_on_standard_error(tmp_path: Path) -> None:
    with ours(tmp_path) as (host, port, _):
        out = CliRunner().invoke(main, [
            "probe", "--turn", f"{host}:{port}", "--user", USER, "--password", PASSWORD,
            "--json", "-",
        ])  # fmt: skip
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["passed"] is True and data["failed_step"] is None
    assert [s["name"] for s in data["steps"]] == list(STEP_NAMES)
    assert all(s["status"] == "passed" and s["ms"] >= 0 for s in data["steps"])
    assert data["target"] == {"host": host, "port": port, "address": [host, port]}
    assert PASSWORD not in out.stdout
    assert "verdict: PASS" in out.stderr
    assert "ok    connection-attempt" in out.stderr


def test_quiet_and_verbose(tmp_path: Path) -> None:
    with ours(tmp_path) as (host, port, _):
        base = ["probe", "--turn", f"{host}:{port}", "--user", USER, "--password", PASSWORD]
        quiet = CliRunner().invoke(main, [*base, "-q"])
        verbose = CliRunner().invoke(main, [*base, "-v"])
    assert quiet.exit_code == 0 and verbose.exit_code == 0
    assert quiet.stdout.splitlines() == [quiet.stdout.strip()]
    assert quiet.stdout.startswith("verdict: PASS")
    assert "messages:" in verbose.stdout and "TURN client notes:" in verbose.stdout
    assert "control <- ConnectionAttempt Indication XOR-PEER-ADDRESS" in verbose.stdout
