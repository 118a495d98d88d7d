"""Static NAT: a public address in front of one actor, as a firewall's destination NAT maps it.

Expressway-E is often deployed behind a static NAT: the Skype side reaches it at a public
address the firewall forwards to its own (RFC 2663 §4.1, "basic NAT" of the destination), and
its TURN server advertises that public address in XOR-RELAYED-ADDRESS. The runtime core asks
:meth:`StaticNat.translate` for every connect to the public address: forwarded ports reach the
actor behind at the same port; any other port is dropped (the SYN never gets an answer), as a
firewall without a forwarding rule does. The trace and the capture show the connection as the
actor behind accepted it (its own address).
"""

from __future__ import annotations

from dataclasses import dataclass

from labsim.proto.events import Address


@dataclass(frozen=True)
class StaticNat:
    """Connects to ``public`` on ``ports`` go to ``private`` at the same port."""

    public: str
    """The public address (a lab address no actor has)."""
    private: str
    """The address of the actor behind the NAT."""
    ports: tuple[int, int] | None
    """[first, last] port forwarded, inclusive; None: none is."""

    def translate(self, remote: Address) -> Address | None:
        """Where a connect to ``remote`` (on the public address) goes; None: dropped."""
        if self.ports is not None and self.ports[0] <= remote.port <= self.ports[1]:
            return Address(self.private, remote.port)
        return None
