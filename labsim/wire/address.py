"""Transport addresses in the lab's address plan (10.48.54.229:3478 …)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Address:
    """A lab transport address: what actors, STUN attributes, SDP and captures show."""

    host: str
    """IPv4 or IPv6 address as text, in the lab's address plan."""
    port: int
    """TCP port."""

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
