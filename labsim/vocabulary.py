"""The words every layer shares, written once: a run's outcomes and the diagnosis's verdicts.

The scenario validates ``expect:`` against them and the reports produce them; neither may import
the other, so they live here, below both (imports nothing).
"""

from __future__ import annotations

from typing import Literal, get_args

#: What became of the sharing call (``labsim.report.outcome``).
OutcomeName = Literal[
    "sharing-established", "call-rejected", "ice-failed", "turn-failed", "no-answer", "call-failed"
]
OUTCOMES: tuple[OutcomeName, ...] = get_args(OutcomeName)

#: The diagnosis's verdicts, in the order of the call's steps (``labsim.report.diagnose``).
Verdict = Literal[
    # the call worked
    "healthy", "stale-nonce-recovered", "glare-recovered", "recovered", "slow-network",
    # the first failure, in call order
    "no-sip-path", "presenter-not-allowed", "call-rejected", "turn-port-refused",
    "turn-port-blocked", "no-turn-server", "turn-auth-failed", "tcp-relay-unsupported",
    "turn-no-capacity", "turn-error", "turn-connection-reset", "turn-no-answer", "ack-lost",
    "relay-refused", "relay-unreachable", "permission-missing", "connection-bind-failed",
    "connection-bind-missing", "ice-not-started", "one-way-binding", "reinvite-missing",
    "reinvite-lost", "allocation-expired", "refresh-refused", "sip-connection-lost",
    "media-path-lost",
    "hang-up-incomplete", "message-lost", "message-delayed",
    # a capture read back at one point: the fault lies past it
    "beyond-capture",
    # nothing found explains it
    "unknown",
]  # fmt: skip
VERDICTS: tuple[Verdict, ...] = get_args(Verdict)
#: The verdicts of a call that worked (the first group above).
WORKING: tuple[Verdict, ...] = VERDICTS[:5]
