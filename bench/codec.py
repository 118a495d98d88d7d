"""STUN codec speed, against aioice's codec as the baseline measured in the same run.

Decodes and re-encodes the ICE check of the lab capture (RFC 5769 §2.1 layout, 108 bytes) and
an authenticated TURN Allocate; verifies MESSAGE-INTEGRITY and FINGERPRINT as a receiver must.
Prints messages per second for both codecs and the ratio (labsim / aioice; > 1 is faster),
from the fastest of many alternating rounds.

    .venv/bin/python bench/codec.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from aioice import stun as aioice_stun

from labsim.wire import stun

VECTORS = Path(__file__).parent.parent / "tests" / "vectors" / "stun"
ICE_KEY = stun.short_term_key("VOkJxbRl1RmTxUk/WvJxBt")
TURN_KEY = stun.long_term_key("cmsturn", "TANDBERG", "secret")


def load(name: str) -> bytes:
    lines = (VECTORS / name).read_text().splitlines()
    return bytes.fromhex(" ".join(line for line in lines if not line.startswith("#")))


def rates(
    ours: Callable[[], object], theirs: Callable[[], object], seconds: float
) -> tuple[float, float]:
    """Calls per second of each, from the fastest of many short rounds taken in alternation,
    so both see the same machine load (shared CPUs make single long runs noisy)."""
    best = [float("inf"), float("inf")]
    calls = 500
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for index, fn in enumerate((ours, theirs)):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            best[index] = min(best[index], time.perf_counter() - start)
    return calls / best[0], calls / best[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    ice = load("rfc5769-2.1-request.hex")
    allocate = load("turn-allocate-authenticated.hex")

    def ours_ice() -> None:
        msg = stun.decode(ice)
        assert msg.verify_integrity(ICE_KEY) and msg.verify_fingerprint()
        msg.encode()

    def theirs_ice() -> None:
        msg = aioice_stun.parse_message(ice)  # checks FINGERPRINT while parsing
        assert msg.check_message_integrity(ICE_KEY)
        bytes(msg)

    def ours_allocate() -> None:
        msg = stun.decode(allocate)
        assert msg.verify_integrity(TURN_KEY)
        msg.encode()

    def theirs_allocate() -> None:
        msg = aioice_stun.parse_message(allocate)
        assert msg.check_message_integrity(TURN_KEY)
        bytes(msg)

    print(f"{'case':<34}{'labsim msg/s':>14}{'aioice msg/s':>14}{'ratio':>8}")
    for name, ours, theirs in [
        ("ICE check: decode+verify+encode", ours_ice, theirs_ice),
        ("TURN Allocate: decode+MI+encode", ours_allocate, theirs_allocate),
    ]:
        a, b = rates(ours, theirs, args.seconds)
        print(f"{name:<34}{a:>14,.0f}{b:>14,.0f}{a / b:>8.2f}")


if __name__ == "__main__":
    main()
