"""A transaction-stateful SIP proxy over TCP (RFC 3261 §16), as the Skype Edge, Expressway-E
and Expressway-C are on the signalling path of the call.

What it does for a request (§16.3-§16.6): checks Max-Forwards (483 at 0), stamps the top Via
with ``received``/``rport`` (§18.2.1, RFC 3581), answers an INVITE with ``100 Trying`` at once
(§16.2: hop by hop, never forwarded), removes its own Route value (§16.4, loose routing), adds
Record-Route to a dialog-creating INVITE (§16.6 step 4), pushes its own Via with a fresh branch
(§16.6 step 8) and sends the request to the next hop: the first remaining Route, else the route
table entry for the Request-URI's host (the domain the call is for), else the Request-URI itself.

For a response (§16.7): removes its Via, finds the transaction by branch, drops ``100``
(hop by hop) and forwards the rest on the connection the request came in on (§18.2.2). A
non-2xx final answer to an INVITE is acknowledged hop by hop (§17.1.1.3: the proxy's client
transaction sends the ACK) and the ACK the caller sends for it is absorbed (§16.3: it matches
the server transaction); the ACK for a 2xx is a new request that follows the route set.
When the next hop cannot be reached the proxy answers the request itself (``503``, or ``408``
on a timeout), as §16.7 step 6 does for a client transaction that got no response.

Headers it does not need to touch (``ms-diagnostics-public``, SDP bodies) pass unchanged.

The proxy is one machine (:mod:`labsim.proto.machine`) with its :class:`SipTransport` inside:
its :meth:`SipProxy.handle` takes the transport's events and acts on the transport's notices
itself, so the router sees one machine owning the SIP listeners and connections. It tells its
owner one thing, :class:`ResponseForwarded` (the Skype Edge reads the answer's SDP there).
"""

from __future__ import annotations

from dataclasses import dataclass

from sipmessage import URI, Parameters, Request, Response, Via

from labsim.proto.events import Address, ConnId, Effect, Event, Log
from labsim.proto.machine import Step
from labsim.proto.sip_transport import ConnectionLost, Incoming, Notice, SendFailed, SipTransport
from labsim.wire import WireError, sip

SIP_PORT = 5060


#: How many INVITE transactions ended by a 2xx a proxy remembers, to pass resent 2xx on.
ACCEPTED_KEEP = 1024


@dataclass(frozen=True)
class ProxySettings:
    host: str
    """The proxy's lab address, as it writes it in Via and Record-Route."""
    port: int = SIP_PORT
    """The SIP port it writes in Via and Record-Route."""
    routes: tuple[tuple[str, Address], ...] = ()
    """Request-URI host (a domain such as ``cms.lab``) → next hop."""
    other_ports: tuple[int, ...] = ()
    """More ports of this proxy that a Route value may name (Expressway-E's traversal port)."""
    record_route: bool = True


@dataclass(frozen=True)
class ResponseForwarded:
    """A response this proxy passes back upstream."""

    response: Response
    toward: Address | None
    """The address it goes back to (the upstream connection's peer)."""


@dataclass
class _Transaction:
    upstream: ConnId
    request: Request
    """The request as forwarded (for a hop-by-hop ACK)."""
    upstream_branch: str
    next_hop: Address
    downstream: ConnId | None = None
    """The connection the request went out on (its loss ends the transaction with 503)."""


def uri_target(uri: URI) -> Address:
    """The address a SIP URI points at (RFC 3263 reduced to the lab: no DNS, port 5060)."""
    return Address(uri.host, uri.port or SIP_PORT)


class SipProxy:
    """One proxy and its transport, as one machine; notices: :class:`ResponseForwarded`."""

    def __init__(self, name: str, settings: ProxySettings, transport: SipTransport) -> None:
        self.name = name
        self.settings = settings
        self.transport = transport
        self._transactions: dict[str, _Transaction] = {}
        self._absorb_ack: set[str] = set()
        #: INVITE transactions ended by a 2xx: our branch -> the upstream connection. The UAS
        #: resends its 2xx until the ACK comes (RFC 3261 §13.3.1.4) and those resends must
        #: still reach the caller, whose ACK stops them: RFC 6026 §7.2 keeps such a
        #: transaction "Accepted" for 64·T1 and forwards every 2xx on it. Bounded by count
        #: (:data:`ACCEPTED_KEEP`) instead of a timer.
        self._accepted: dict[str, ConnId] = {}
        #: (upstream branch, method) -> our branch, to recognise a request seen before.
        self._upstream: dict[tuple[str, str], str] = {}
        self._branches = 0
        self._forwarded: list[ResponseForwarded] = []
        self._tags = 0

    # -- helpers -------------------------------------------------------------------------------

    def _branch(self) -> str:
        self._branches += 1
        return f"{sip.MAGIC_COOKIE}{self.name.replace('_', '')}{self._branches:x}"

    def _is_self(self, uri: URI) -> bool:
        ports = (self.settings.port, *self.settings.other_ports)
        return uri.host == self.settings.host and (uri.port or SIP_PORT) in ports

    def _next_hop(self, request: Request) -> Address:
        routes = sip.route(request)
        if routes:
            return uri_target(routes[0].uri)
        for domain, hop in self.settings.routes:
            if request.uri.host == domain:
                return hop
        return uri_target(request.uri)

    def record_route_value(self) -> str:
        return f"<sip:{self.settings.host}:{self.settings.port};transport=tcp;lr>"

    # -- the machine ---------------------------------------------------------------------------

    def handle(self, event: Event, now: float) -> Step[ResponseForwarded]:
        """An event of the SIP side: through the transport, then what its notices ask."""
        step = self.transport.handle(event, now)
        effects = list(step.effects)
        for notice in step.notices:
            effects += self._on_notice(notice, now)
        forwarded, self._forwarded = self._forwarded, []
        return Step(tuple(effects), tuple(forwarded))

    def open(self, to: Address) -> Step[ResponseForwarded]:
        """Open a SIP connection ahead of any message (a traversal zone's link)."""
        return Step(self.transport.open(to).effects)

    # The transport's commands tell nothing (their notices come from events), so the proxy
    # takes their effects alone.
    def _send(self, message: sip.SipMessage, to: Address) -> list[Effect]:
        return list(self.transport.send(message, to).effects)

    def _send_on(self, conn: ConnId, message: sip.SipMessage) -> list[Effect]:
        return list(self.transport.send_on(conn, message).effects)

    def _on_notice(self, notice: Notice, now: float) -> list[Effect]:
        if isinstance(notice, Incoming):
            try:
                if isinstance(notice.message, Request):
                    return self._request(notice.conn, notice.message, notice.source)
                return self._response(notice.message)
            except WireError as exc:
                return [Log(f"dropped a SIP message: {exc}", "warn")]
        if isinstance(notice, SendFailed):
            return self._unreachable(notice)
        if isinstance(notice, ConnectionLost):
            return self._connection_lost(notice)
        return []  # pragma: no cover

    def _request(self, conn: ConnId, request: Request, source: Address) -> list[Effect]:
        top = sip.top_via(request)
        # §17.2.3: a request matches a server transaction by the top Via's branch *and*
        # sent-by: two upstream elements may number their branches alike (two Skype Edges
        # calling one Expressway-E, labsim.serve). The key below is only ever compared.
        branch = f"{sip.via_branch(top) or ''} {top.host}:{top.port}"
        if request.method == "ACK" and branch in self._absorb_ack:
            # §16.3 / §17.2.1: the ACK for a non-2xx answer ends the INVITE server transaction.
            self._absorb_ack.discard(branch)
            return []
        effects: list[Effect] = []
        if request.method == "CANCEL":
            return self._cancel(conn, request, branch)
        if request.method != "ACK" and (branch, request.method) in self._upstream:
            # §17.2.3: the same request again (same branch): it belongs to the transaction
            # already forwarded, and is not forwarded a second time.
            return [Log(f"repeated {request.method} (branch and sent-by {branch}) absorbed")]
        if request.method != "ACK" and not sip.route(request) and self._is_self(request.uri):
            # §16.4/§16.5: addressed to this element itself (an OPTIONS ping, say), not to be
            # forwarded: answer it here.
            code, reason = (
                (200, None) if request.method == "OPTIONS" else (405, "Method Not Allowed")
            )
            return self._send_on(conn, self._answer(request, code, reason))
        if not sip.decrement_max_forwards(request):
            if request.method == "ACK":
                return []  # an ACK is never answered
            return self._send_on(conn, self._answer(request, 483))
        sip.stamp_received(request, source.host, source.port)
        if request.method == "INVITE":
            effects += self._send_on(conn, sip.build_response(request, 100))
        sip.pop_route_if_self(request, self._is_self)
        initial = request.method == "INVITE" and sip.to_tag(request) is None
        if initial and self.settings.record_route:
            sip.add_record_route(request, self.record_route_value())
        hop = self._next_hop(request)
        ours = self._branch()
        # Built, not parsed from text: the value is known, and parsing costs a regex per hop.
        sip.push_via(
            request, Via("TCP", self.settings.host, self.settings.port, Parameters(branch=ours))
        )
        effects += self._send(request, hop)
        if request.method != "ACK":
            txn = _Transaction(conn, request, branch, hop, self.transport.connection_to(hop))
            self._transactions[ours] = txn
            self._upstream[(branch, request.method)] = ours
        return effects

    def _cancel(self, conn: ConnId, cancel: Request, branch: str) -> list[Effect]:
        """§16.10: answer the CANCEL here (200, hop by hop) and cancel the INVITE's pending
        client transaction downstream with a CANCEL of the same branch (§9.1)."""
        ours = self._upstream.get((branch, "INVITE"))
        txn = self._transactions.get(ours) if ours is not None else None
        if txn is None:
            return self._send_on(conn, self._answer(cancel, 481))
        effects = self._send_on(conn, sip.build_response(cancel, 200))
        forwarded = txn.request
        downstream = sip.build_request(
            "CANCEL",
            forwarded.uri,
            via=[sip.top_via(forwarded)],
            from_addr=sip.from_address(forwarded),
            to_addr=sip.to_address(forwarded),
            call_id=sip.call_id(forwarded),
            cseq=sip.cseq(forwarded).sequence,
            route=list(forwarded.headers.getlist("Route")),
        )
        return [*effects, *self._send(downstream, txn.next_hop)]

    def _end(self, branch: str) -> _Transaction | None:
        txn = self._transactions.pop(branch, None)
        if txn is not None:
            self._upstream.pop((txn.upstream_branch, txn.request.method), None)
        return txn

    def _answer(self, request: Request, code: int, reason: str | None = None) -> Response:
        """A response this proxy makes itself; as a UAS would, it tags To (§8.2.6.2)."""
        self._tags += 1
        tag = None if sip.to_tag(request) else f"{self.name.replace('_', '')}{self._tags:x}"
        return sip.build_response(request, code, reason, to_tag=tag)

    def _connection_lost(self, notice: ConnectionLost) -> list[Effect]:
        """The transactions that went out on (or came in on) a connection that is gone."""
        effects: list[Effect] = []
        for branch, txn in list(self._transactions.items()):
            if txn.upstream == notice.conn:
                self._end(branch)  # nobody is left to answer
            elif txn.downstream == notice.conn:
                self._end(branch)
                # §16.7 step 6 / §18.4: the request can get no answer any more.
                effects += [
                    Log(f"connection to {notice.remote} lost: 503 for {txn.request.method}",
                        "warn"),
                    *self._answer_upstream(txn, 503),
                ]  # fmt: skip
        return effects

    def _answer_upstream(self, txn: _Transaction, code: int) -> list[Effect]:
        """Answer a forwarded request ourselves (its downstream side is gone), as the upstream
        side sent it: without this proxy's Via; the caller's ACK of an INVITE's answer ends
        here (§16.7 step 6)."""
        upstream = txn.request
        sip.pop_via(upstream)
        if upstream.method == "INVITE":
            self._absorb_ack.add(txn.upstream_branch)
        return self._send_on(txn.upstream, self._answer(upstream, code))

    def _response(self, response: Response) -> list[Effect]:
        via = sip.pop_via(response)
        branch = sip.via_branch(via) or ""
        if sip.cseq(response).method == "CANCEL":
            return []  # the answer to our own CANCEL (§16.10): hop by hop, ends here
        txn = self._transactions.get(branch)
        if txn is None and via.host == self.settings.host and 200 <= response.code < 300:
            upstream = self._accepted.get(branch)
            if upstream is not None:  # a resent 2xx (RFC 6026 §7.2): on to the caller
                return self._send_on(upstream, response)
        if txn is None or via.host != self.settings.host:
            return [Log(f"{sip.summary(response)} matches no transaction here; dropped", "warn")]
        if response.code < 200:
            # §16.7 step 5 would forward 101-199 too; 100 is hop by hop (§16.2).
            return [] if response.code == 100 else self._send_on(txn.upstream, response)
        self._end(branch)
        if txn.request.method == "INVITE" and response.code < 300:
            self._accepted[branch] = txn.upstream
            if len(self._accepted) > ACCEPTED_KEEP:
                del self._accepted[next(iter(self._accepted))]
        effects: list[Effect] = []
        if txn.request.method == "INVITE" and response.code >= 300:
            effects += self._send(sip.build_failure_ack(txn.request, response), txn.next_hop)
            self._absorb_ack.add(txn.upstream_branch)
        self._forwarded.append(ResponseForwarded(response, self.transport.remote_of(txn.upstream)))
        effects += self._send_on(txn.upstream, response)
        return effects

    def _unreachable(self, notice: SendFailed) -> list[Effect]:
        effects: list[Effect] = [Log(f"next hop {notice.to} unreachable ({notice.reason})", "warn")]
        for message in notice.messages:
            if not isinstance(message, Request) or message.method == "ACK":
                continue
            branch = sip.via_branch(sip.top_via(message)) or ""
            txn = self._end(branch)
            if txn is None:
                continue
            effects += self._answer_upstream(txn, 408 if notice.reason == "timeout" else 503)
        return effects
