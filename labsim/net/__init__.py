"""Runtimes that carry the actors' effects out: ``live`` (asyncio sockets on loopback) and
``virtual`` (simpy, virtual time)."""

from labsim.net.live import LiveNetwork, loopback
from labsim.net.virtual import VirtualNetwork

__all__ = ["LiveNetwork", "VirtualNetwork", "loopback"]
