"""What the actors of the call share: the three SIP proxies (a transport, a proxy and the
dispatch of runtime events), the two user agents (:class:`UserAgent`), and the ICE check step
both ends run (:func:`check_step`)."""

from __future__ import annotations

import random

from labsim.proto.events import ConnId, Effect, Event, Log, Send, Started, StartTimer
from labsim.proto.ice import CheckAnswered, CheckFailed, CheckReceived, CheckStream
from labsim.proto.sip_proxy import ProxySettings, SipProxy
from labsim.proto.sip_transport import ConnectionLost, Incoming, SendFailed, SipTransport
from labsim.wire import WireError, sip


class ProxyElement:
    """An actor whose SIP side is a :class:`SipProxy`; subclasses add their other machines by
    overriding :meth:`other` (return None when the event is not theirs)."""

    def __init__(self, name: str, host: str, settings: ProxySettings, ports: tuple[int, ...]):
        self.name = name
        self.host = host
        self.transport = SipTransport(host, ports)
        self.proxy = SipProxy(name, settings, self.transport)

    def start(self, now: float) -> list[Effect]:
        return self.transport.start()

    def other(self, event: Event, now: float) -> list[Effect] | None:
        return None

    def handle(self, event: Event, now: float) -> list[Effect]:
        if isinstance(event, Started):
            return self.start(now)
        if self.transport.wants(event):
            effects, notices = self.transport.handle(event, now)
            for notice in notices:
                effects += self.proxy.on_notice(notice, now)
            return effects
        return self.other(event, now) or []


class UserAgent:
    """What the two ends of the call (the Skype client and CMS) share: a SIP transport, branch
    numbering, the linger before ``finished``, and the dispatch of the transport's notices.

    Subclasses implement :meth:`on_sip` (a parsed message) and may override
    :meth:`on_send_failed` / :meth:`on_connection_lost`.
    """

    name: str
    host: str
    finished: bool
    #: Seconds between the last act and ``finished`` (lets closes reach the trace).
    linger: float = 0.05
    branch_tag: str = "ua"

    def __init__(self, host: str, sip_port: int, rng: random.Random) -> None:
        self.host = host
        self.rng = rng
        self.transport = SipTransport(host, (sip_port,))
        self.finished = False
        self._branches = 0

    def branch(self) -> str:
        """A new RFC 3261 §8.1.1.7 branch: magic cookie, a counter, random bits."""
        self._branches += 1
        tail = f"{self._branches:x}{self.rng.getrandbits(24):06x}"
        return f"{sip.MAGIC_COOKIE}{self.branch_tag}{tail}"

    def done(self, why: str) -> list[Effect]:
        return [Log(why), StartTimer("finish", self.linger)]

    def on_sip(self, conn: ConnId, message: sip.SipMessage, now: float) -> list[Effect]:
        raise NotImplementedError

    def on_send_failed(self, notice: SendFailed) -> list[Effect]:
        return [Log(f"cannot reach {notice.to}: {notice.reason}", "warn")]

    def on_connection_lost(self, notice: ConnectionLost) -> list[Effect]:
        return []

    def sip_event(self, event: Event, now: float) -> list[Effect]:
        """An event :meth:`SipTransport.wants`: carry it through and act on what it reports."""
        effects, notices = self.transport.handle(event, now)
        for notice in notices:
            if isinstance(notice, Incoming):
                try:
                    effects += self.on_sip(notice.conn, notice.message, now)
                except WireError as exc:
                    effects.append(Log(f"cannot use {sip.summary(notice.message)}: {exc}", "warn"))
            elif isinstance(notice, SendFailed):
                effects += self.on_send_failed(notice)
            elif isinstance(notice, ConnectionLost):
                effects += self.on_connection_lost(notice)
        return effects


def check_step(
    checks: CheckStream, conn: ConnId, data: bytes, peer: str
) -> tuple[list[Effect], bool]:
    """Feed the ICE check stream on ``conn``: the framed answers to send and notes on what
    happened; True when the pair has just become valid in both directions."""
    was_valid = checks.valid
    out, notices = checks.feed(data)
    effects: list[Effect] = [Send(conn, frame, "rfc4571") for frame in out]
    for notice in notices:
        if isinstance(notice, CheckFailed):
            effects.append(Log(f"ICE: {notice.reason}", "warn"))
        elif isinstance(notice, CheckAnswered):
            effects.append(Log("ICE: our check answered"))
        elif isinstance(notice, CheckReceived):
            effects.append(Log(f"ICE: {peer}'s check answered"))
    became_valid = checks.valid and not was_valid
    if became_valid:
        effects.append(Log("ICE: candidate pair valid in both directions"))
    return effects, became_valid
