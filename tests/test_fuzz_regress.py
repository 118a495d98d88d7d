"""The fuzzer's finds, one file per bug (SIPp's ``regress/`` style), and its stored corpus.

Every ``tests/vectors/<codec>/regress-NNN-<name>.{hex,sip,sdp,yaml}`` goes through its target
as the fuzzer ran it and must be accepted or refused with the typed error, in time per byte
within :data:`tests.fuzz.SLOW_FACTOR` of the target's seeds (a growth check, not a time
limit). A vector whose note says ``xfail:`` is a bug whose fix belongs to a file another change
owns: its test is ``xfail(strict=True)``, so it fails loudly the day the bug is fixed.
"""

from __future__ import annotations

import functools
import re
import statistics
import time
from pathlib import Path

import pytest

from labsim.wire import sdp, sip, stun
from labsim.wire.framing import frame_rfc4571

from . import fuzz
from .fuzz import TARGETS, Case, regress_case, regress_vectors

VECTORS = fuzz.VECTORS


def _params() -> list[object]:
    params: list[object] = []
    for path in regress_vectors():
        note = fuzz.note_of(path)
        marks = [pytest.mark.xfail(strict=True, reason=note.xfail)] if note.xfail else []
        params.append(pytest.param(path, marks=marks, id=f"{path.parent.name}/{path.stem}"))
    return params


def _seconds(name: str, case: Case) -> float:
    start = time.perf_counter()
    fuzz.run_one(TARGETS[name], case)
    return time.perf_counter() - start


@functools.cache
def _median_per_byte(name: str) -> float:
    """Seconds per byte of the target's own seeds, as the fuzzer feeds them (unmutated)."""
    s = fuzz.seeds()
    pool: list[bytes] = {
        "stun": list(s.stun),
        "channeldata": list(fuzz._channel_seeds()),
        "stun-splitter": list(s.stun),
        "rfc4571-splitter": [frame_rfc4571(m) for m in s.stun],
        "sip-splitter": list(s.sip),
        "sip": list(s.sip),
        "sdp": list(s.sdp),
        # Only scenarios that extend nothing: one that does costs its parent's bytes too,
        # which its own size does not count.
        "scenario": [text for _, text in s.scenarios if not re.search(rb"(?m)^extends:", text)],
    }[name]
    costs = []
    for data in pool:
        try:
            seconds = min(_seconds(name, Case(data)) for _ in range(3))
        except Exception:  # a seed that fails is not this test's subject
            continue
        costs.append(seconds / max(len(data), 1))
    return statistics.median(costs)


def _best_of_three(name: str, case: Case) -> float:
    return min(_seconds(name, case) for _ in range(3))


#: ``growth: prefix``: the input is 8 times its first eighth; linear time is 8 times as long,
#: quadratic 64. The margin absorbs timer noise.
PREFIX_GROWTH_LIMIT = 24


@pytest.mark.parametrize("path", _params())
def test_a_regression_vector_ends_typed_in_bounded_time(path: Path) -> None:
    name, case, note = regress_case(path)
    assert note.what, f"{path.name}: say what it broke in its header or .txt note"
    if note.growth == "prefix":
        size = len(case.data) // 8
        cuts = tuple(c for c in case.cuts if c < size)
        small = Case(case.data[:size], cuts, case.variant)
        ratio = _best_of_three(name, case) / max(_best_of_three(name, small), 1e-6)
        assert ratio < PREFIX_GROWTH_LIMIT, f"8 times the input took {ratio:.0f} times as long"
        return
    bound = fuzz.SLOW_FACTOR * _median_per_byte(name) * max(len(case.data), 1)
    for _ in range(3):  # a busy machine: the best of three counts
        # Accepted or the typed error: anything else raises here and fails the test.
        seconds = _seconds(name, case)
        if seconds <= max(bound, fuzz.SLOW_FLOOR):
            return
        if seconds > 10 * max(bound, fuzz.SLOW_FLOOR):
            break  # no busy machine makes ten times: do not wait for two more
    pytest.fail(
        f"{seconds:.3f} s for {len(case.data)} bytes: over {fuzz.SLOW_FACTOR}x the seeds' "
        f"time per byte ({bound:.3f} s) and {fuzz.SLOW_FLOOR} s"
    )


def test_a_message_too_long_to_encode_is_a_stun_error_not_a_struct_error() -> None:
    # Found next to the fuzzer (issue 12): attributes adding up past 65,535 bytes made
    # Message.encode raise struct.error from packing the header.
    attrs = [
        stun.UnknownAttribute(0x8099, bytes(60_000)),
        stun.UnknownAttribute(0x8098, b"x" * 8_000),
    ]
    with pytest.raises(stun.StunError, match="16-bit message length"):
        stun.Message.request(stun.Method.BINDING, attrs).encode()
    with pytest.raises(stun.StunError):
        stun.Message.request(stun.Method.BINDING, [*attrs, stun.Fingerprint(None)]).encode()


def test_every_known_escape_has_an_xfail_vector() -> None:
    for known in fuzz.KNOWN:
        path = VECTORS / known.vector
        assert path.exists(), known
        assert fuzz.note_of(path).xfail, f"{known.vector} is known to escape: mark it xfail"
        name, case, _ = regress_case(path)
        assert name == known.target
        with pytest.raises(Exception) as caught:
            fuzz.run_one(TARGETS[name], case)
        assert known.matches(name, caught.value), caught.value


def test_every_xfail_vector_is_a_known_escape_or_slow() -> None:
    """An open bug without a :data:`tests.fuzz.KNOWN` entry would fail every fuzz run; one
    with an entry but no escape is a slow input (the fuzzer's rarest find)."""
    known = {k.vector for k in fuzz.KNOWN}
    for path in regress_vectors():
        if fuzz.note_of(path).xfail:
            rel = str(path.relative_to(VECTORS))
            name, case, _ = regress_case(path)
            try:
                fuzz.run_one(TARGETS[name], case)
            except Exception:
                assert rel in known, f"{rel} escapes but is not in tests.fuzz.KNOWN"


# -- the stored corpus: real messages, so every one of them is accepted ----------------------


def _corpus(kind: str, suffix: str) -> list[Path]:
    return sorted((VECTORS / "corpus" / kind).glob(f"*{suffix}"))


def test_the_corpus_holds_messages_of_every_kind() -> None:
    assert len(_corpus("stun", ".hex")) >= 10
    assert len(_corpus("sip", ".sip")) >= 10
    assert len(_corpus("sdp", ".sdp")) >= 3


@pytest.mark.parametrize("path", _corpus("stun", ".hex"), ids=lambda p: p.stem)
def test_a_stun_corpus_message_decodes(path: Path) -> None:
    assert stun.decode(fuzz._hex(path)).summary()


@pytest.mark.parametrize("path", _corpus("sip", ".sip"), ids=lambda p: p.stem)
def test_a_sip_corpus_message_parses(path: Path) -> None:
    assert sip.summary(sip.parse_message(path.read_bytes()))


@pytest.mark.parametrize("path", _corpus("sdp", ".sdp"), ids=lambda p: p.stem)
def test_an_sdp_corpus_body_parses(path: Path) -> None:
    sdp.SessionDescription.parse(path.read_bytes())
