"""Runtimes that carry the actors' effects out: ``live`` (asyncio sockets on loopback) and
``virtual`` (simpy, virtual time)."""

from labsim.net.live import LiveNetwork, LoopbackBlock, claim_block
from labsim.net.virtual import VirtualNetwork

__all__ = ["LiveNetwork", "LoopbackBlock", "VirtualNetwork", "claim_block"]
