"""A deterministic mutation fuzzer for the codecs (issue 12, "hostile input" at volume).

Every target takes bytes made by mutating real messages of a run and must end in one of two
ways: it accepts them, or it raises its layer's typed error (:class:`~labsim.wire.WireError` for
the wire codecs, :class:`~labsim.scenario.ScenarioError` for scenarios). Anything else is an
*escape*. Each input is timed; one whose time per byte is far above the target's median (and
long in absolute terms) is a *slow* input: a growth check, never an absolute time limit.

Why our own mutator and not a fuzzing library: atheris (libFuzzer) installs here, but its
``Fuzz()`` never returns (libFuzzer ends the process), so it cannot run inside a pytest worker
and report counts; its coverage feedback makes the inputs of a run depend on timing; and the
checks we want per input (typed errors only, chunking-independent splitters, time per byte)
need a loop of our own around it anyway. hypothesis shrinks beautifully but is built for
hundreds of examples, not 100,000. A seeded mutator (bit flips, byte insert/delete/duplicate,
splices of two seeds, interesting values in length fields, repeated runs, truncation, and a few
text-aware moves: lines, numbers, line ends) gives the same inputs for the same seed on every
machine, at a known cost.

Seeds: the messages of the default scenario run on the virtual clock, the stored corpus
(``tests/vectors/corpus/``: the distinct messages of every library scenario, refreshed with
``python -m tests.fuzz --write-corpus``), the hand-made vectors of ``tests/vectors/`` (crashers
included: a past bug is a good place to look for the next one) and the library's scenarios.

Run it at volume by hand::

    .venv/bin/python -m tests.fuzz --count 1000000 [--seed S] [TARGET ...]

Environment: ``LABSIM_FUZZ_COUNT`` (inputs per target; default 100,000 under ``CI=true``,
20,000 otherwise), ``LABSIM_FUZZ_SEED`` (default :data:`DEFAULT_SEED`),
``LABSIM_FUZZ_YAML_COUNT`` (the scenario target's count; see :func:`target_count`).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import random
import re
import statistics
import struct
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from labsim.scenario import ScenarioError, library_dir, load, loads
from labsim.wire import WireError, sdp, sip, stun
from labsim.wire.facts import facts_of
from labsim.wire.framing import (
    Rfc4571Splitter,
    SipSplitter,
    StreamSplitter,
    StunSplitter,
    frame_rfc4571,
)

ROOT = Path(__file__).parent.parent
VECTORS = Path(__file__).parent / "vectors"
CORPUS = VECTORS / "corpus"
#: Where escapes and slow inputs are written as reproducers (git ignores build/).
CRASH_DIR = ROOT / "build" / "fuzz"

DEFAULT_SEED = "issue-12"
#: Per-target inputs under CI=true, and locally (quicker; LABSIM_FUZZ_COUNT overrides both).
CI_COUNT = 100_000
LOCAL_COUNT = 20_000
#: The scenario target loads YAML with PyYAML's pure-Python parser (for line numbers) and a
#: child re-reads its parent: 2-8 ms an input, so 100,000 would take minutes of CI on its own.
#: It runs this share of the others' count (see docs/architecture.md).
YAML_SHARE = 10

#: The scenario target's inputs stay under this (see the target).
YAML_MAX_INPUT = 16 * 1024
#: A slow input: time per byte this many times the target's median, and this long in all.
SLOW_FACTOR = 1000
SLOW_FLOOR = 0.050
#: Mutated inputs never grow past this (STUN's and RFC 4571's 16-bit lengths overflow below it).
MAX_INPUT = 96 * 1024


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def fuzz_seed() -> str:
    return os.environ.get("LABSIM_FUZZ_SEED", DEFAULT_SEED)


def target_count(name: str) -> int:
    """Inputs per run for one target, from the environment (see the module doc)."""
    count = int(os.environ.get("LABSIM_FUZZ_COUNT", CI_COUNT if in_ci() else LOCAL_COUNT))
    if name == "scenario":
        return int(os.environ.get("LABSIM_FUZZ_YAML_COUNT", max(1, count // YAML_SHARE)))
    return count


# ---------------------------------------------------------------------------------------------
# Seeds
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seeds:
    """Real messages, by kind, each list sorted and without duplicates."""

    stun: tuple[bytes, ...]
    sip: tuple[bytes, ...]
    sdp: tuple[bytes, ...]
    scenarios: tuple[tuple[str, bytes], ...]
    """(source path, text) of each scenario: the path resolves its ``extends``."""


def _hex(path: Path) -> bytes:
    text = path.read_text(encoding="utf-8")
    return bytes.fromhex(" ".join(ln for ln in text.splitlines() if not ln.startswith("#")))


def _unframe(data: bytes) -> bytes:
    """A vector stored with its RFC 4571 length prefix, without it."""
    if len(data) >= 2 and int.from_bytes(data[:2], "big") == len(data) - 2:
        return data[2:]
    return data


def _sdp_body(message: bytes) -> bytes | None:
    head, sep, body = message.partition(b"\r\n\r\n")
    return body if sep and body and b"application/sdp" in head.lower() else None


def run_messages(paths: Iterable[Path]) -> list[tuple[str, str, bytes]]:
    """(protocol, scenario stem, bytes) of every SIP and STUN message of the scenarios' runs on
    the virtual clock (runs repeat: every actor's randomness is seeded)."""
    from labsim.run import run_scenario  # the runtimes are needed only here

    out = []
    for path in paths:
        result = run_scenario(load(path), "virtual")
        for m in result.trace.messages:
            if m.protocol in ("SIP", "STUN") and m.data:
                out.append((m.protocol, path.stem, m.data))
    return out


@dataclass(frozen=True)
class Note:
    """What a regression vector says of itself: the ``#`` header lines of a hex file, or the
    lines of the ``.txt`` beside a SIP, SDP or YAML one (where a header would be input)."""

    what: str
    target: str | None = None
    cuts: tuple[int, ...] = ()
    every: int = 0
    """``# chunks: every N``: pieces of N bytes (for long inputs fed in small pieces)."""
    variant: int = 0
    xfail: str | None = None
    growth: str | None = None
    """``# growth: prefix``: judge the time against the input's first eighth, fed the same
    way (for a self-similar input whose cost per byte grows with its size)."""


def note_of(path: Path) -> Note:
    if path.suffix == ".hex":
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.startswith("#")]
    else:
        companion = path.with_suffix(".txt")
        lines = companion.read_text(encoding="utf-8").splitlines() if companion.exists() else []
    fields: dict[str, str] = {}
    what: list[str] = []
    for line in lines:
        text = line.lstrip("#").strip()
        key, sep, value = text.partition(":")
        if sep and key in ("target", "chunks", "variant", "xfail", "growth"):
            fields[key] = value.strip()
        elif text:
            what.append(text)
    chunks = fields.get("chunks", "").split()
    every = int(chunks[1]) if chunks[:1] == ["every"] else 0
    return Note(
        " ".join(what),
        fields.get("target"),
        () if every else tuple(int(c) for c in chunks),
        every,
        int(fields.get("variant", "0")),
        fields.get("xfail"),
        fields.get("growth"),
    )


def is_open_bug(path: Path) -> bool:
    return path.name.startswith("regress-") and note_of(path).xfail is not None


@functools.cache
def seeds() -> Seeds:
    stun_seeds: set[bytes] = set()
    sip_seeds: set[bytes] = set()
    sdp_seeds: set[bytes] = set()
    for protocol, _, data in run_messages([library_dir() / "sharing-call.yaml"]):
        (sip_seeds if protocol == "SIP" else stun_seeds).add(data)
    for path in sorted(VECTORS.rglob("*")):
        kind = path.parent.name
        if is_open_bug(path):
            continue  # mutating a known bug finds it again; its own test keeps it in view
        if path.suffix == ".hex":
            data = _hex(path)
            if kind == "stun":
                stun_seeds.add(_unframe(data))
            elif kind in ("sip", "sdp"):
                (sip_seeds if kind == "sip" else sdp_seeds).add(data)
        elif path.suffix == ".sip":
            sip_seeds.add(path.read_bytes())
        elif path.suffix == ".sdp":
            sdp_seeds.add(path.read_bytes())
    for message in sip_seeds:
        body = _sdp_body(message)
        if body is not None:
            sdp_seeds.add(body)
    # A vector's ``extends`` resolves in the library, as if it were one of its files.
    scenario_files = [*library_dir().glob("*.yaml"), *(VECTORS / "scenario").glob("*.yaml")]
    scenarios = sorted(
        (str(library_dir() / p.name), p.read_bytes()) for p in scenario_files if not is_open_bug(p)
    )
    return Seeds(
        tuple(sorted(stun_seeds)),
        tuple(sorted(sip_seeds)),
        tuple(sorted(sdp_seeds)),
        tuple(scenarios),
    )


# ---------------------------------------------------------------------------------------------
# The mutator
# ---------------------------------------------------------------------------------------------

_INTERESTING: dict[int, tuple[int, ...]] = {
    1: (0, 1, 3, 4, 0x3F, 0x40, 0x7F, 0x80, 0xFE, 0xFF),
    2: (0, 1, 3, 4, 8, 0x7F, 0x80, 0xFF, 0x100, 0x3FFF, 0x4000, 0x7FFF, 0x8000, 0xFFFB, 0xFFFF),
    4: (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x2112A442, 0xFFFF, 0x10000),
}
_NUMBERS = (
    b"0", b"1", b"-1", b"+1", b"00", b"65535", b"65536", b"4294967296", b"1e9", b"0x10",
    b"99999999999999999999", b"1" * 40, b"1" * 4400, b"0" * 60 + b"1", b"\xc2\xb2",
    b"\xd9\xa3", b"\xef\xbc\x91", b"1.5", b".5", b"NaN", b"",
)  # fmt: skip
_RUNS = (2, 3, 4, 8, 16, 64, 100, 255, 256, 1000, 4096, 16384, 65536)
_BYTES_TOKENS = (
    b"\x00", b"\xff", b"\xc3", b"\xe2\x80\xa8", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\r\n",
    b"\r", b"\n", b" ", b"\t", b"\x7f", b"\x1b",
)  # fmt: skip
_SIP_TOKENS = (
    b":", b";", b",", b"<", b">", b'"', b"\\", b"=", b"@", b"%", b"%00", b"sip:", b"sips:",
    b"tel:", b"SIP/2.0", b"SIP/2.0/TCP ", b"Content-Length: ", b"l: ", b"Via: ", b"v: ",
    b"\r\n ", b"\r\n\t", b";branch=z9hG4bK", b";tag=", b"[", b"]", b"::1", b"[::1]:",
    b"application/sdp", b"Content-Type: application/sdp\r\n", b"CSeq: 1 INVITE\r\n",
    b"Call-ID: ", b"To: ", b"From: ", b"Contact: ", b"Record-Route: ", b"Route: ",
    b"ms-diagnostics: ", b"Reason: ", b"Max-Forwards: ", b"\r\n\r\n", b"*",
)  # fmt: skip
_SDP_TOKENS = (
    b"v=0", b"o=- 0 0 IN IP4 ", b"s=", b"c=IN IP4 ", b"c=IN IP6 ", b"t=0 0", b"b=AS:",
    b"m=applicationsharing ", b"m=audio ", b" TCP/RTP/AVP ", b"a=candidate:", b"a=crypto:",
    b"inline:", b"|", b"2^", b"|2^31", b"a=rtpmap:", b"a=rtcp:", b"a=x-ssrc-range:",
    b"a=remote-candidates:", b"a=ice-ufrag:", b"a=ice-pwd:", b"a=mid:", b"a=setup:",
    b"a=x-applicationsharing-", b"typ ", b" host", b" relay", b" srflx", b" raddr ",
    b" rport ", b" tcptype ", b"TCP-PASS", b"TCP-ACT", b"UDP", b"/", b"::", b"-", b"a=",
    b"a=sendrecv", b"a=inactive", b"a=connection:", b"a=ice-options:", b"a=label:",
)  # fmt: skip
_YAML_TOKENS = (
    b": ", b"- ", b"\n", b"\n  ", b"\n    ", b"{", b"}", b"[", b"]", b",", b"&a ", b"*a",
    b"<<: ", b"<<: *a", b"!!str ", b"!!int ", b"!!float ", b"!!binary ", b"!!set ",
    b"!!python/object/apply:os.system ", b"!!timestamp ", b"!", b"~", b"null", b"true",
    b"no", b"yes", b".inf", b".nan", b"-.inf", b"1e999", b"0x1F", b"0o17", b"0b1", b"1_000",
    b"'", b'"', b"|", b">", b"#", b"\t", b"---", b"...", b"%YAML 1.1\n", b"%TAG ! x\n",
    b"? ", b"extends: ", b"extends: sharing-call.yaml\n", b"extends: .\n", b"seed: ",
    b"deadline: ", b"latency: ", b"probability: ", b"nth: ", b"count: ", b"hold: ",
    b"faults:\n  - drop: {from: cms, to: expressway_e, stun: Allocate Request}\n",
    b"expect: {outcome: ice-failed}\n", b"from: ", b"to: ", b"port: ", b"ports: ",
    b"address: ", b"- {", b"[1, 2]", b"2001:db8::1", b"10.48.54.229", b"\\u0000", b"\\x00",
)  # fmt: skip
_DIGITS = re.compile(rb"\d+")


def _auto_tokens(texts: Iterable[bytes]) -> tuple[bytes, ...]:
    """Words of the seeds (header names, attribute names, keys, values): the mutator splices
    them in, so mutants keep looking like the protocol."""
    words: set[bytes] = set()
    for text in texts:
        words.update(w for w in re.split(rb"[\s,;<>\"]+", text) if 1 < len(w) <= 40)
    return tuple(sorted(words))


def stun_length_fields(data: bytes) -> list[int]:
    """Offsets of the 16-bit length fields of a STUN message (header, each attribute), or of
    ChannelData's: where an interesting value hurts most."""
    if len(data) < 4:
        return []
    if data[0] & 0xC0 == 0x40:
        return [2]
    out = [2]
    pos = stun.HEADER_LENGTH
    while pos + 4 <= len(data) and len(out) < 64:
        out.append(pos + 2)
        pos += 4 + ((int.from_bytes(data[pos + 2 : pos + 4], "big") + 3) & ~3)
    return out


def fix_stun_length(buf: bytearray) -> None:
    """The header's length says what follows the header (a STUN message or ChannelData)."""
    if len(buf) >= 4 and buf[0] & 0xC0 == 0x40:
        buf[2:4] = min(len(buf) - 4, 0xFFFF).to_bytes(2, "big")
    elif len(buf) >= stun.HEADER_LENGTH:
        del buf[stun.HEADER_LENGTH + 0xFFFC :]
        buf += bytes(-len(buf) % 4)
        buf[2:4] = (len(buf) - stun.HEADER_LENGTH).to_bytes(2, "big")


_CONTENT_LENGTH = re.compile(rb"(?im)^(content-length|l)([ \t]*:[ \t]*)\d*")


def fix_content_length(buf: bytearray) -> None:
    """Content-Length says the body's size (the first one; a second is left as it is)."""
    head, sep, body = bytes(buf).partition(b"\r\n\r\n")
    if sep:
        fixed = _CONTENT_LENGTH.sub(
            lambda m: m.group(1) + m.group(2) + str(len(body)).encode(), head, count=1
        )
        buf[:] = fixed + sep + body


class Mutator:
    """Seeded havoc over a list of seeds: the same seed gives the same inputs everywhere."""

    def __init__(
        self,
        rng: random.Random,
        seeds: Sequence[bytes],
        *,
        text: bool,
        tokens: Sequence[bytes] = (),
        length_fields: Callable[[bytes], list[int]] | None = None,
        fixup: Callable[[bytearray], None] | None = None,
        max_input: int = MAX_INPUT,
    ) -> None:
        if not seeds:
            raise ValueError("no seeds")
        self.rng = rng
        self.seeds = list(seeds)
        self.text = text
        self.tokens = (*_BYTES_TOKENS, *tokens)
        self.length_fields = length_fields
        #: Makes a mutant's outer length agree with its size again, half of the time: most
        #: mutants would otherwise stop at the first length check, never reaching the rest.
        self.fixup = fixup
        self.max_input = max_input
        ops: list[tuple[Callable[[bytearray], None], int]] = [
            (self._flip_bits, 4),
            (self._set_bytes, 3),
            (self._interesting, 4),
            (self._insert_random, 2),
            (self._insert_token, 5 if text else 2),
            (self._delete, 4),
            (self._duplicate, 3),
            (self._repeat, 2),
            (self._splice, 2),
            (self._truncate, 2),
        ]
        if text:
            ops += [
                (self._line_op, 5),
                (self._number, 4),
                (self._case, 1),
                (self._line_ends, 1),
            ]
        self._ops = [op for op, _ in ops]
        self._weights = [w for _, w in ops]

    def seed(self) -> bytes:
        return self.rng.choice(self.seeds)

    def mutate(self, data: bytes) -> bytes:
        buf = bytearray(data)
        rng = self.rng
        fields = self.length_fields(data) if self.length_fields is not None else []
        rounds = 1 + min(int(rng.expovariate(0.6)), 7)
        for op in rng.choices(self._ops, self._weights, k=rounds):
            if op is self._interesting and fields and rng.random() < 0.7:
                self._interesting(buf, rng.choice(fields))
            else:
                op(buf)
            if len(buf) > self.max_input:
                del buf[self.max_input :]
        if self.fixup is not None and rng.random() < 0.5:
            self.fixup(buf)
        return bytes(buf)

    def next(self) -> bytes:
        seed = self.seed()
        for _ in range(8):  # a move can undo itself (a line swapped with itself)
            data = self.mutate(seed)
            if data != seed:
                break
        return data

    # -- the moves ----------------------------------------------------------------------------

    def _pos(self, buf: bytearray, end: bool = True) -> int:
        return self.rng.randint(0, len(buf) if end else max(len(buf) - 1, 0))

    def _flip_bits(self, buf: bytearray) -> None:
        if buf:
            for _ in range(self.rng.randint(1, 4)):
                i = self._pos(buf, end=False)
                buf[i] ^= 1 << self.rng.randrange(8)

    def _set_bytes(self, buf: bytearray) -> None:
        if buf:
            for _ in range(self.rng.randint(1, 4)):
                buf[self._pos(buf, end=False)] = self.rng.randrange(256)

    def _interesting(self, buf: bytearray, at: int | None = None) -> None:
        rng = self.rng
        width = 2 if at is not None else rng.choice((1, 2, 4))
        value = rng.choice(_INTERESTING[width])
        if at is None:
            if len(buf) < width:
                return
            at = rng.randint(0, len(buf) - width)
        if at + width > len(buf):
            return
        little = rng.random() < 0.1
        buf[at : at + width] = value.to_bytes(width, "little" if little else "big")

    def _insert_random(self, buf: bytearray) -> None:
        n = self.rng.randint(1, 16)
        buf[self._pos(buf) : self._pos(buf)] = self.rng.randbytes(n)

    def _insert_token(self, buf: bytearray) -> None:
        at = self._pos(buf)
        if self.text and self.rng.random() < 0.5:
            # At a line start, where a header or an attribute begins.
            starts = [m.end() for m in re.finditer(rb"\n", buf[:4096])] or [0]
            at = self.rng.choice(starts)
        buf[at:at] = self.rng.choice(self.tokens)

    def _delete(self, buf: bytearray) -> None:
        if buf:
            i = self._pos(buf, end=False)
            n = self.rng.randint(1, 4) if self.rng.random() < 0.6 else self.rng.randint(1, 256)
            del buf[i : i + n]

    def _duplicate(self, buf: bytearray) -> None:
        if buf:
            i = self._pos(buf, end=False)
            chunk = buf[i : i + self.rng.randint(1, 128)]
            at = self._pos(buf)
            buf[at:at] = chunk

    def _repeat(self, buf: bytearray) -> None:
        rng = self.rng
        if buf and rng.random() < 0.7:
            i = self._pos(buf, end=False)
            unit = bytes(buf[i : i + rng.randint(1, 8)])
        else:
            unit = rng.choice(self.tokens)
        times = rng.choice(_RUNS)
        times = min(times, max(1, (self.max_input - len(buf)) // max(len(unit), 1)))
        at = self._pos(buf)
        buf[at:at] = unit * times

    def _splice(self, buf: bytearray) -> None:
        other = self.seed()
        head = self._pos(buf)
        tail = self.rng.randint(0, len(other))
        buf[head:] = other[tail:]

    def _truncate(self, buf: bytearray) -> None:
        del buf[self._pos(buf) :]

    def _line_op(self, buf: bytearray) -> None:
        lines = bytes(buf).split(b"\n")
        if len(lines) < 2:
            return
        rng = self.rng
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        move = rng.randrange(4)
        if move == 0:
            del lines[i]
        elif move == 1:
            lines.insert(j, lines[i])
        elif move == 2:
            lines[i], lines[j] = lines[j], lines[i]
        else:
            lines.insert(j, lines.pop(i))
        buf[:] = b"\n".join(lines)

    def _number(self, buf: bytearray) -> None:
        found = list(_DIGITS.finditer(buf[:8192]))
        if found:
            m = self.rng.choice(found)
            buf[m.start() : m.end()] = self.rng.choice(_NUMBERS)

    def _case(self, buf: bytearray) -> None:
        if buf:
            i = self._pos(buf, end=False)
            j = i + self.rng.randint(1, 32)
            chunk = bytes(buf[i:j])
            buf[i:j] = chunk.upper() if self.rng.random() < 0.5 else chunk.lower()

    def _line_ends(self, buf: bytearray) -> None:
        old, new = self.rng.choice(((b"\r\n", b"\n"), (b"\r\n", b"\r"), (b"\n", b"\r\n")))
        count = -1 if self.rng.random() < 0.3 else 1
        buf[:] = bytes(buf).replace(old, new, count)


#: At most this many pieces per stream: a splitter looks at its whole buffer again on each
#: read, so thousands of 1-byte reads of a long stream would cost an input milliseconds.
MAX_PIECES = 128


def chunkings(rng: random.Random, size: int) -> list[int]:
    """Where to cut a stream of ``size`` bytes into the pieces TCP hands over: whole, every
    byte, a fixed piece size or random cuts."""
    mode = rng.random()
    if mode < 0.15 or size < 2:
        return []
    if mode < 0.20 and size <= MAX_PIECES:
        return list(range(1, size))
    if mode < 0.45:
        step = rng.choice((1, 2, 3, 4, 7, 8, 13, 16, 20, 64, 100, 1000))
        step = max(step, -(-size // MAX_PIECES))
        return list(range(step, size, step))
    return sorted({rng.randint(1, size - 1) for _ in range(rng.randint(1, 16))})


def cut(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` in pieces ending at each of ``cuts`` (ascending offsets), and the rest."""
    pieces, last = [], 0
    for point in cuts:
        pieces.append(data[last:point])
        last = point
    pieces.append(data[last:])
    return pieces


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------


class Mismatch(AssertionError):
    """Not an exception of the codec: a check of the harness that the codec failed (a splitter
    whose messages depend on the chunking, a printed SDP that does not parse back)."""


@dataclass(frozen=True)
class Case:
    """One input: the bytes, and for a stream, where it is cut (and how the splitter is set)."""

    data: bytes
    cuts: tuple[int, ...] = ()
    variant: int = 0


@dataclass
class Target:
    """A codec entry point under fuzzing."""

    name: str
    #: The exceptions that are a typed refusal.
    typed: tuple[type[BaseException], ...]
    #: Make a mutator over this target's seeds.
    mutator: Callable[[random.Random], Mutator]
    #: One input from the mutator.
    make: Callable[[Mutator], Case]
    #: Run one input: return normally (accepted) or raise.
    run: Callable[[Case], None]
    #: A file suffix for reproducers of this target's inputs.
    suffix: str = ".hex"


def _check_stun(case: Case) -> None:
    msg = stun.decode(case.data)
    # What a receiver and the trace do with an accepted message next.
    msg.summary()
    msg.verify_fingerprint()
    msg.verify_integrity(b"key")
    facts_of("STUN", case.data)


def _check_channel_data(case: Case) -> None:
    frame = stun.decode_control(case.data)
    frame.summary()
    facts_of("STUN", case.data)


def _check_sip(case: Case) -> None:
    msg = sip.parse_message(case.data)
    sip.summary(msg)
    sip.wireshark_info(msg)
    facts_of("SIP", case.data)


def _check_sdp(case: Case) -> None:
    description = sdp.SessionDescription.parse(case.data)
    text = str(description)
    try:
        again = sdp.SessionDescription.parse(text)
    except WireError as exc:
        raise Mismatch(f"the printed description does not parse back: {exc}") from None
    if str(again) != text:
        raise Mismatch("the printed description prints differently when parsed back")


def _split(make: Callable[[], StreamSplitter], pieces: Iterable[bytes]) -> list[bytes] | None:
    """The messages of a whole stream, or None when the splitter refused it (typed)."""
    splitter = make()
    out: list[bytes] = []
    try:
        for piece in pieces:
            out += splitter.feed(piece)
        splitter.close()
    except WireError:
        return None
    return out


def _splitter_check(make: Callable[[], StreamSplitter]) -> Callable[[Case], None]:
    def check(case: Case) -> None:
        pieces = cut(case.data, case.cuts)
        splitter = make()
        out: list[bytes] = []
        for piece in pieces:
            out += splitter.feed(piece)
        splitter.close()  # raises typed if the stream ended inside a message
        # RFC 793: TCP may cut a stream anywhere, so the messages may not depend on where.
        whole = _split(make, [case.data])
        if whole != out:
            raise Mismatch(
                f"chunked: {len(out)} messages; whole: "
                f"{'refused' if whole is None else f'{len(whole)} messages'}"
            )

    return check


def _stun_splitter(variant: int) -> StreamSplitter:
    if variant == 1:
        return StunSplitter(allow_channel_data=False)
    if variant == 2:
        return StunSplitter(max_message=512)
    return StunSplitter()


def _sip_splitter(variant: int) -> StreamSplitter:
    return SipSplitter(max_header=1024, max_body=2048) if variant == 1 else SipSplitter()


def _rfc4571_splitter(variant: int) -> StreamSplitter:
    return Rfc4571Splitter(max_frame=512) if variant == 1 else Rfc4571Splitter()


def _stream(
    rng: random.Random, m: Mutator, pick: Callable[[], bytes], join: Callable[[bytes], bytes]
) -> bytes:
    """1-4 messages, each mutated (length fixed up, half of the time) or not, framed, and the
    stream itself mutated when none of them was."""
    parts, mutated = [], False
    for _ in range(rng.randint(1, 4)):
        item = pick()
        if rng.random() < 0.5:
            item, mutated = m.mutate(item)[:0xFFFF], True
        parts.append(join(item))
    stream = b"".join(parts)
    return stream if mutated and rng.random() < 0.5 else m.mutate(stream)


def _channel_frames(rng: random.Random, s: Seeds) -> list[bytes]:
    """ChannelData frames (RFC 5766 §11.4): the run has none (its allocations are TCP), so
    they are made from the run's STUN messages and a few plain payloads, padded as on TCP."""
    payloads = [*s.stun[:8], b"", b"x", b"abc", bytes(range(256))]
    return [
        stun.ChannelData(0x4000 + i * 0x101, p).encode(stream=i % 2 == 0)
        for i, p in enumerate(payloads)
    ]


@functools.cache
def _channel_seeds() -> tuple[bytes, ...]:
    return tuple(_channel_frames(random.Random(0), seeds()))


def _stun_tokens() -> tuple[bytes, ...]:
    return tuple(
        struct.pack("!HH", t, n) for t in sorted(stun.ATTRIBUTE_TYPES)[:40] for n in (0, 4, 8, 20)
    ) + (stun.MAGIC_COOKIE_BYTES,)


def _targets() -> dict[str, Target]:
    def mut(
        pool: Callable[[], Sequence[bytes]],
        text: bool,
        tokens: Sequence[bytes] = (),
        fields: Callable[[bytes], list[int]] | None = None,
        fixup: Callable[[bytearray], None] | None = None,
        max_input: int = MAX_INPUT,
    ) -> Callable[[random.Random], Mutator]:
        def make(rng: random.Random) -> Mutator:
            items = pool()
            auto = _auto_tokens(items) if text else ()
            return Mutator(
                rng, items, text=text, tokens=(*tokens, *auto), length_fields=fields,
                fixup=fixup, max_input=max_input,
            )  # fmt: skip

        return make

    def stun_pool() -> Sequence[bytes]:
        return seeds().stun

    def stream_pool() -> Sequence[bytes]:
        return (*seeds().stun, *_channel_seeds())

    def one(m: Mutator) -> Case:
        return Case(m.next())

    def stun_stream(m: Mutator) -> Case:
        rng = m.rng
        data = _stream(rng, m, m.seed, lambda b: b)
        return Case(data, tuple(chunkings(rng, len(data))), rng.choice((0, 0, 1, 2)))

    def rfc4571_stream(m: Mutator) -> Case:
        rng = m.rng
        data = _stream(rng, m, m.seed, frame_rfc4571)
        return Case(data, tuple(chunkings(rng, len(data))), rng.choice((0, 0, 0, 1)))

    def sip_stream(m: Mutator) -> Case:
        rng = m.rng
        keepalive = rng.choice((b"", b"", b"\r\n", b"\r\n\r\n"))
        data = _stream(rng, m, m.seed, lambda b: keepalive + b)
        return Case(data, tuple(chunkings(rng, len(data))), rng.choice((0, 0, 0, 1)))

    def scenario(m: Mutator) -> Case:
        return Case(m.next())

    wire = (WireError,)
    fields = stun_length_fields
    stun_fix, sip_fix = fix_stun_length, fix_content_length
    return {
        "stun": Target("stun", wire, mut(stun_pool, False, _stun_tokens(), fields, stun_fix),
                       one, _check_stun),
        "channeldata": Target("channeldata", wire,
                              mut(_channel_seeds, False, (), fields, stun_fix), one,
                              _check_channel_data),
        "stun-splitter": Target(
            "stun-splitter", wire, mut(stream_pool, False, _stun_tokens(), fields, stun_fix),
            stun_stream, lambda c: _splitter_check(lambda: _stun_splitter(c.variant))(c),
        ),
        "rfc4571-splitter": Target(
            "rfc4571-splitter", wire, mut(stream_pool, False, (), fields, stun_fix),
            rfc4571_stream,
            lambda c: _splitter_check(lambda: _rfc4571_splitter(c.variant))(c),
        ),
        "sip-splitter": Target(
            "sip-splitter", wire, mut(lambda: seeds().sip, True, _SIP_TOKENS, None, sip_fix),
            sip_stream,
            lambda c: _splitter_check(lambda: _sip_splitter(c.variant))(c),
        ),
        "sip": Target("sip", wire, mut(lambda: seeds().sip, True, _SIP_TOKENS, None, sip_fix),
                      one, _check_sip, ".sip"),
        "sdp": Target("sdp", wire, mut(lambda: seeds().sdp, True, _SDP_TOKENS), one,
                      _check_sdp, ".sdp"),
        "scenario": Target(
            "scenario", (ScenarioError,),
            # PyYAML's pure-Python scanner costs ~2 µs a byte: 16 KiB keeps an input under
            # ~40 ms and still nests and repeats far past what a scenario holds.
            mut(lambda: [text for _, text in seeds().scenarios], True, _YAML_TOKENS,
                max_input=YAML_MAX_INPUT),
            scenario, _check_scenario, ".yaml",
        ),
    }  # fmt: skip


def scenario_text(data: bytes) -> str:
    """The text a caller of :func:`loads` could hand over: UTF-8 when the bytes are, else the
    bytes as Latin-1 (every byte a character, C1 controls included)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _check_scenario(case: Case) -> None:
    # As a file of the library: an ``extends`` (mutated or not) resolves there.
    loads(scenario_text(case.data), source=str(library_dir() / "fuzz.yaml"))


#: The target of a regression vector by its suffix, when its note does not name one.
TARGET_BY_SUFFIX = {".sip": "sip", ".sdp": "sdp", ".yaml": "scenario"}


def regress_vectors() -> list[Path]:
    """Every ``tests/vectors/*/regress-*`` input (not the ``.txt`` notes)."""
    return sorted(p for p in VECTORS.glob("*/regress-*") if p.suffix != ".txt")


def regress_case(path: Path) -> tuple[str, Case, Note]:
    """The target, input and note of a regression vector."""
    note = note_of(path)
    name = note.target or TARGET_BY_SUFFIX.get(path.suffix)
    if name is None or name not in TARGETS:
        raise ValueError(f"{path}: no known target ({name!r}); add a '# target: NAME' line")
    data = _hex(path) if path.suffix == ".hex" else path.read_bytes()
    cuts = tuple(range(note.every, len(data), note.every)) if note.every else note.cuts
    return name, Case(data, cuts, note.variant), note


TARGETS: dict[str, Target] = _targets()


# ---------------------------------------------------------------------------------------------
# Known escapes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Known:
    """An escape already kept as a regression vector whose test is ``xfail(strict=True)``,
    because the fix belongs to a file another change owns. The fuzz run counts it as
    ``known`` instead of failing on it again; any other escape still fails. When the fix
    lands, the vector's test passes, strict xfail fails it, and the entry goes."""

    target: str
    exception: str
    """The escaping exception's type name."""
    message: str
    """A regular expression its message matches ("" for any)."""
    vector: str
    """The regression vector, relative to ``tests/vectors``."""

    def matches(self, target: str, exc: BaseException) -> bool:
        return (
            target == self.target
            and type(exc).__name__ == self.exception
            and re.search(self.message, str(exc)) is not None
        )


KNOWN: tuple[Known, ...] = ()


def known_escape(target: str, exc: BaseException) -> Known | None:
    return next((k for k in KNOWN if k.matches(target, exc)), None)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


@dataclass
class Finding:
    """An escape or a slow input, kept with what it takes to reproduce it."""

    kind: str  # "escape" or "slow"
    case: Case
    what: str
    seconds: float = 0.0
    path: Path | None = None


@dataclass
class Result:
    target: str
    inputs: int = 0
    typed_errors: int = 0
    accepted: int = 0
    escapes: list[Finding] = field(default_factory=list)
    slow: list[Finding] = field(default_factory=list)
    escape_count: int = 0
    known: int = 0
    """Escapes of a :data:`KNOWN` kind (each with an xfail regression vector)."""
    seconds: float = 0.0
    median_ns_per_byte: float = 0.0

    def line(self) -> str:
        return (
            f"fuzz {self.target}: inputs={self.inputs} typed_errors={self.typed_errors} "
            f"accepted={self.accepted} escapes={self.escape_count} slow={len(self.slow)} "
            f"known={self.known}"
        )

    def counts(self) -> dict[str, int | float]:
        return {
            "inputs": self.inputs, "typed_errors": self.typed_errors, "accepted": self.accepted,
            "escapes": self.escape_count, "slow": len(self.slow), "known": self.known,
            "seconds": self.seconds,
        }  # fmt: skip


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    last = frames[-1] if frames else None
    place = f" at {Path(last.filename).name}:{last.lineno}" if last else ""
    return f"{type(exc).__name__}{place}"


def run_one(target: Target, case: Case) -> BaseException | None:
    """Run one input: None when accepted, the typed error, or raise what escaped."""
    try:
        target.run(case)
    except target.typed as exc:
        return exc
    return None


def _time(target: Target, case: Case) -> float:
    start = time.perf_counter()
    try:
        run_one(target, case)
    except Exception:
        pass
    return time.perf_counter() - start


def fuzz(
    name: str,
    count: int,
    seed: str,
    *,
    shard: int = 0,
    write: bool = True,
    progress: Callable[[Result], None] | None = None,
) -> Result:
    """Run ``count`` inputs of one target; ``shard`` picks an independent stream of inputs
    (the inputs are a function of ``seed``, ``name`` and ``shard`` alone)."""
    target = TARGETS[name]
    rng = random.Random(f"{seed}:{name}:{shard}")
    mutator = target.mutator(rng)
    result = Result(name)
    per_byte: list[float] = []
    timed: list[tuple[float, Case]] = []
    started = time.perf_counter()
    seen: set[str] = set()
    case = Case(b"")
    try:
        for _ in range(count):
            case = target.make(mutator)
            start = time.perf_counter_ns()
            try:
                outcome = run_one(target, case)
            except Exception as exc:
                if known_escape(name, exc) is not None:
                    result.known += 1
                else:
                    result.escape_count += 1
                    key = _where(exc)
                    if key not in seen:  # one reproducer per kind of escape
                        seen.add(key)
                        what = f"{key}: {exc}"[:500]
                        result.escapes.append(Finding("escape", case, what))
            else:
                if outcome is None:
                    result.accepted += 1
                else:
                    result.typed_errors += 1
            elapsed = time.perf_counter_ns() - start
            size = max(len(case.data), 1)
            per_byte.append(elapsed / size)
            if elapsed > SLOW_FLOOR * 1e9:
                timed.append((elapsed / 1e9, case))
            result.inputs += 1
            if progress is not None and result.inputs % 100_000 == 0:
                progress(result)
    except BaseException:
        # A timeout (or ^C) in the middle of an input: keep that input.
        result.escapes.append(Finding("escape", case, "interrupted on this input"))
        if write:
            _write_findings(target, result)
        raise
    result.seconds = time.perf_counter() - started
    median = statistics.median(per_byte) if per_byte else 0.0
    result.median_ns_per_byte = median
    for _, case in timed:
        # Three more timings, the best counts: a busy machine is not a slow input.
        best = min(_time(target, case) for _ in range(3))
        if best > SLOW_FLOOR and best * 1e9 / max(len(case.data), 1) > SLOW_FACTOR * median:
            what = f"{best * 1e3:.0f} ms for {len(case.data)} bytes (median {median:.0f} ns/byte)"
            result.slow.append(Finding("slow", case, what, best))
    if write:
        _write_findings(target, result)
    return result


def reproducer_text(target: Target, finding: Finding) -> str:
    """A reproducer in the ``tests/vectors`` hex format: ``#`` header lines, then hex."""
    case = finding.case
    head = [f"# target: {target.name}", f"# {finding.kind}: {finding.what}"]
    if case.cuts:
        head.append(f"# chunks: {' '.join(map(str, case.cuts))}")
    if case.variant:
        head.append(f"# variant: {case.variant}")
    hex_lines = [case.data[i : i + 32].hex(" ") for i in range(0, len(case.data), 32)]
    return "\n".join(head + hex_lines) + "\n"


def _write_findings(target: Target, result: Result) -> None:
    findings = [*result.escapes, *result.slow]
    if not findings:
        return
    CRASH_DIR.mkdir(parents=True, exist_ok=True)
    for f in findings:
        digest = hashlib.sha1(f.case.data + repr(f.case.cuts).encode()).hexdigest()[:12]
        f.path = CRASH_DIR / f"{target.name}-{f.kind}-{digest}.hex"
        f.path.write_text(reproducer_text(target, f), encoding="utf-8")


def describe_findings(result: Result, limit: int = 600) -> str:
    out = []
    for f in [*result.escapes, *result.slow]:
        shown = f.case.data[:limit].hex()
        more = "…" if len(f.case.data) > limit else ""
        out.append(
            f"{f.kind}: {f.what}\n  input ({len(f.case.data)} bytes): {shown}{more}\n"
            f"  reproducer: {f.path}"
        )
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# The stored corpus and the command line
# ---------------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "message"


def _shape(protocol: str, data: bytes) -> tuple[object, ...]:
    """Messages of one shape teach the fuzzer nothing new: same kind, same fields."""
    if protocol == "STUN":
        msg = stun.decode(data)
        return ("STUN", msg.method, msg.cls, tuple(type(a).__name__ for a in msg.attributes))
    parsed = sip.parse_message(data)
    # str() of the headers is one "Name: value" line per value, in order.
    lines = str(parsed.headers).split("\r\n")
    names = tuple(sorted({ln.partition(":")[0].lower() for ln in lines if ln}))
    return ("SIP", sip.summary(parsed), names, bool(parsed.body))


def write_corpus() -> list[Path]:
    """Store one message of each shape from the runs of every library scenario."""
    written: list[Path] = []
    shapes: set[tuple[object, ...]] = set()
    paths = sorted(library_dir().glob("*.yaml"))
    for sub in ("stun", "sip", "sdp"):
        (CORPUS / sub).mkdir(parents=True, exist_ok=True)
        for old in (CORPUS / sub).iterdir():
            old.unlink()
    counters = {"stun": 0, "sip": 0, "sdp": 0}
    for protocol, stem, data in run_messages(paths):
        shape = _shape(protocol, data)
        if shape in shapes:
            continue
        shapes.add(shape)
        if protocol == "STUN":
            summary = stun.decode(data).summary()
            counters["stun"] += 1
            path = CORPUS / "stun" / f"{counters['stun']:03d}-{_slug(summary)}.hex"
            lines = [data[i : i + 32].hex(" ") for i in range(0, len(data), 32)]
            path.write_text(f"# {summary} (scenario {stem})\n" + "\n".join(lines) + "\n")
            written.append(path)
            continue
        summary = sip.summary(sip.parse_message(data))
        counters["sip"] += 1
        path = CORPUS / "sip" / f"{counters['sip']:03d}-{_slug(summary)}-{stem}.sip"
        path.write_bytes(data)
        written.append(path)
        body = _sdp_body(data)
        if body is not None:
            counters["sdp"] += 1
            path = CORPUS / "sdp" / f"{counters['sdp']:03d}-{_slug(summary)}-{stem}.sdp"
            path.write_bytes(body)
            written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("targets", nargs="*", metavar="TARGET", help=", ".join(TARGETS))
    parser.add_argument("--count", type=int, default=None)
    parser.add_argument("--seed", default=fuzz_seed())
    parser.add_argument("--shard", type=int, default=0)
    parser.add_argument("--write-corpus", action="store_true")
    args = parser.parse_args(argv)
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {', '.join(TARGETS)}")
    if args.write_corpus:
        for path in write_corpus():
            print(path.relative_to(ROOT))
        return 0
    failed = False
    for name in args.targets or list(TARGETS):
        count = args.count if args.count is not None else target_count(name)

        def show(r: Result) -> None:
            print(f"  … {r.line()}", file=sys.stderr, flush=True)

        result = fuzz(name, count, args.seed, shard=args.shard, progress=show)
        print(f"{result.line()} ({result.seconds:.1f} s)", flush=True)
        if result.escapes or result.slow:
            failed = True
            print(describe_findings(result), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
