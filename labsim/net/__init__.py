"""Runtimes that carry the actors' effects out: ``live`` (asyncio sockets on loopback) and
``virtual`` (simpy, virtual time)."""
