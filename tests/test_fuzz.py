"""Fuzzing at volume (issue 12): every codec takes mutated real messages and either accepts
them or raises its typed error, in time that grows with the input's size like the others'.

Each target runs in :data:`SHARDS` independent shards (so two xdist workers share the load);
the counts of all shards are summed in the run's closing summary (tests/conftest.py), one line a
target: ``fuzz <target>: inputs=N typed_errors=E accepted=A escapes=0 slow=0 known=K``.
The harness is :mod:`tests.fuzz`; its module doc says how to run it at volume by hand.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from labsim.wire import WireError

from . import fuzz
from .fuzz import TARGETS, Case, Mutator, Target, fuzz_seed, target_count

SHARDS = 4
#: A generous bound per input for the shard's timeout (the YAML target's inputs cost the most):
#: a hung input fails the test (and leaves its reproducer) instead of hanging CI.
BOUND_PER_INPUT = {"scenario": 0.05}


def shard_count(total: int, shard: int) -> int:
    return total // SHARDS + (1 if shard < total % SHARDS else 0)


def _timeout(name: str) -> float:
    per_shard = shard_count(target_count(name), 0)
    return max(120.0, per_shard * BOUND_PER_INPUT.get(name, 0.005))


@pytest.mark.parametrize(
    ("name", "shard"),
    [
        pytest.param(name, shard, marks=pytest.mark.timeout(_timeout(name)))
        for name in TARGETS
        for shard in range(SHARDS)
    ],
)
def test_fuzz(name: str, shard: int, record_property: Callable[[str, object], None]) -> None:
    count = shard_count(target_count(name), shard)
    result = fuzz.fuzz(name, count, fuzz_seed(), shard=shard)
    record_property("fuzz", {"target": name, "shard": shard, **result.counts()})
    assert result.inputs == count
    assert result.inputs == result.accepted + result.typed_errors + result.escape_count + (
        result.known
    )
    assert not result.escapes and not result.slow, (
        f"{result.line()} (seed {fuzz_seed()!r}, shard {shard})\n" + fuzz.describe_findings(result)
    )


# -- the harness itself ------------------------------------------------------------------------


def test_the_inputs_are_a_function_of_the_seed_alone() -> None:
    for name in TARGETS:
        target = TARGETS[name]
        runs = []
        for _ in range(2):
            mutator = target.mutator(random.Random(f"same:{name}"))
            runs.append([target.make(mutator) for _ in range(200)])
        assert runs[0] == runs[1], name
        other = target.mutator(random.Random(f"other:{name}"))
        assert [target.make(other) for _ in range(200)] != runs[0], name


def test_every_target_has_seeds_and_mutants_differ_from_them() -> None:
    s = fuzz.seeds()
    assert len(s.stun) >= 10 and len(s.sip) >= 10 and len(s.sdp) >= 3 and len(s.scenarios) >= 10
    mutator = Mutator(random.Random(1), [b"INVITE sip:b@lab SIP/2.0\r\n\r\n"], text=True)
    assert all(mutator.next() != mutator.seeds[0] for _ in range(100))


def _plain(seeds: list[bytes]) -> Callable[[random.Random], Mutator]:
    return lambda rng: Mutator(rng, seeds, text=False)


def _pick(m: Mutator) -> Case:
    """The seeds unmutated: the test decides which input does what."""
    return Case(m.seed())


def _broken(case: Case) -> None:
    if case.data[:1] == b"A":
        raise TypeError("an untyped failure")
    raise WireError("typed")


def test_an_untyped_exception_is_an_escape_with_its_input_and_a_reproducer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seeds = [b"ABC", b"XYZ"]
    target = Target("broken", (WireError,), _plain(seeds), _pick, _broken)
    monkeypatch.setitem(fuzz.TARGETS, "broken", target)
    result = fuzz.fuzz("broken", 200, "x", write=False)
    assert result.escape_count > 0 and result.typed_errors > 0
    assert result.escape_count + result.typed_errors == 200
    assert [f.case.data for f in result.escapes] == [b"ABC"]
    assert "TypeError" in result.escapes[0].what
    text = fuzz.reproducer_text(target, result.escapes[0])
    assert "# target: broken" in text and "41 42 43" in text


def test_a_slow_input_is_found_by_its_time_per_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    def slow_on_z(case: Case) -> None:
        if case.data == b"Z":
            time.sleep(fuzz.SLOW_FLOOR * 1.5)

    seeds = [b"a" * 100, b"b" * 100, b"Z"]
    target = Target("slowish", (WireError,), _plain(seeds), _pick, slow_on_z)
    monkeypatch.setitem(fuzz.TARGETS, "slowish", target)
    result = fuzz.fuzz("slowish", 12, "x", write=False)
    assert result.escape_count == 0
    assert result.slow and all(f.case.data == b"Z" for f in result.slow)


def test_a_splitter_whose_messages_depend_on_the_chunking_is_caught() -> None:
    from labsim.wire.framing import StreamSplitter

    class EveryPiece(StreamSplitter):
        """Wrong on purpose: one message per piece fed."""

        def feed(
            self, data: bytes | bytearray | memoryview, *, max_messages: int | None = None
        ) -> list[bytes]:
            return [bytes(data)]

        def close(self) -> None:
            pass

    check = fuzz._splitter_check(EveryPiece)
    check(Case(b"abcdef"))
    with pytest.raises(fuzz.Mismatch):
        check(Case(b"abcdef", (3,)))


def test_the_count_follows_ci_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LABSIM_FUZZ_COUNT", raising=False)
    monkeypatch.delenv("LABSIM_FUZZ_YAML_COUNT", raising=False)
    monkeypatch.setenv("CI", "true")
    assert fuzz.target_count("sip") == fuzz.CI_COUNT == 100_000
    assert fuzz.target_count("scenario") == fuzz.CI_COUNT // fuzz.YAML_SHARE
    monkeypatch.setenv("CI", "")
    assert fuzz.target_count("sip") == fuzz.LOCAL_COUNT
    monkeypatch.setenv("LABSIM_FUZZ_COUNT", "7")
    assert fuzz.target_count("sdp") == 7 and fuzz.target_count("scenario") == 1
    monkeypatch.setenv("LABSIM_FUZZ_YAML_COUNT", "9")
    assert fuzz.target_count("scenario") == 9
    assert sum(shard_count(10, s) for s in range(SHARDS)) == 10
