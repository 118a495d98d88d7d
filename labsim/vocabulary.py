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
    "healthy", "stale-nonce-recovered", "glare-recovered", "slow-network", "presenter-not-allowed",
    "turn-auth-failed", "tcp-relay-unsupported", "relay-unreachable", "permission-missing",
    "connection-bind-missing", "one-way-binding", "allocation-expired", "media-path-lost",
    "no-sip-path", "call-rejected", "unknown",
]  # fmt: skip
VERDICTS: tuple[Verdict, ...] = get_args(Verdict)
