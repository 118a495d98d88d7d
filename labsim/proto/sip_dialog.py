"""A SIP dialog (RFC 3261 §12) as the two user agents of the call keep it: the Skype client
(UAC of the INVITE) and CMS (its UAS). Both later send in-dialog requests (the reINVITE, its
ACK, the BYE), which follow the route set the proxies recorded.

Route set (§12.1): the UAS takes the Record-Route values of the INVITE in order, the UAC those
of the 2xx in reverse order. A request inside the dialog (§12.2.1.1) goes to the remote target
(the peer's Contact) with the route set as Route headers; since every proxy here uses loose
routing (``;lr``), the Request-URI stays the remote target and the request is sent to the first
Route value.

Target refresh (§12.2.1.2, §12.2.2): a reINVITE and the 2xx to one carry the sender's Contact,
which replaces the remote target. Remote CSeq (§12.2.2): requests from the peer come in order;
one with a lower CSeq than the last is refused with 500.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sipmessage import URI, Parameters, Request, Response, Via

from labsim.proto.events import Address
from labsim.proto.sip_proxy import uri_target
from labsim.wire import SipError, sip


def _target(msg: Request | Response) -> URI:
    """The remote target: the first Contact (RFC 3261 §12.1.1/§12.1.2), which a dialog needs."""
    contacts = sip.contact(msg)
    if not contacts:
        raise SipError("no Contact: a dialog needs the remote target (RFC 3261 §8.1.1.8, §12.1)")
    return contacts[0].uri


@dataclass
class Dialog:
    call_id: str
    local: str
    """Our From (or To) value, with our tag."""
    remote: str
    """The peer's value, with its tag."""
    remote_target: URI
    route_set: list[str] = field(default_factory=list)
    local_cseq: int = 1
    remote_cseq: int | None = None
    """The peer's last CSeq number (None: none seen yet, as for the caller, §12.1.2)."""
    via_host: str = ""
    via_port: int = 5060
    contact: str = ""

    @classmethod
    def as_uac(cls, invite: Request, response: Response, contact: str) -> Dialog:
        """§12.1.2: the dialog the caller gets from a 2xx to its INVITE."""
        via = sip.top_via(invite)
        return cls(
            call_id=sip.call_id(invite),
            local=sip.format_address(sip.from_address(invite)),
            remote=sip.format_address(sip.to_address(response)),
            remote_target=_target(response),
            route_set=[sip.format_address(a) for a in reversed(sip.record_route(response))],
            local_cseq=sip.cseq(invite).sequence,
            via_host=via.host,
            via_port=via.port or 5060,
            contact=contact,
        )

    @classmethod
    def as_uas(cls, invite: Request, local: str, host: str, port: int, contact: str) -> Dialog:
        """§12.1.1: the dialog the callee gets when it answers 2xx (``local`` carries its tag)."""
        return cls(
            call_id=sip.call_id(invite),
            local=local,
            remote=sip.format_address(sip.from_address(invite)),
            remote_target=_target(invite),
            route_set=[sip.format_address(a) for a in sip.record_route(invite)],
            local_cseq=0,
            remote_cseq=sip.cseq(invite).sequence,
            via_host=host,
            via_port=port,
            contact=contact,
        )

    def refresh_target(self, msg: Request | Response) -> None:
        """§12.2.1.2 / §12.2.2: a target refresh request (reINVITE) or its 2xx replaces the
        remote target with its Contact, when it has one."""
        contacts = sip.contact(msg)
        if contacts:
            self.remote_target = contacts[0].uri

    def accept_remote_cseq(self, request: Request) -> bool:
        """§12.2.2: False when the peer's request is out of order (a CSeq lower than the last
        one), else remember its CSeq. ACK and CANCEL carry their INVITE's and are not
        counted."""
        if request.method in ("ACK", "CANCEL"):
            return True
        seq = sip.cseq(request).sequence
        if self.remote_cseq is not None and seq < self.remote_cseq:
            return False
        self.remote_cseq = seq
        return True

    def next_hop(self) -> Address:
        """Where an in-dialog request goes first: the first Route value, else the target."""
        if self.route_set:
            return uri_target(sip.parse_address(self.route_set[0]).uri)
        return uri_target(self.remote_target)

    def request(
        self,
        method: str,
        branch: str,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        cseq: int | None = None,
        extra_headers: tuple[tuple[str, str], ...] = (),
    ) -> Request:
        """§12.2.1.1: a request inside the dialog. ACK passes the INVITE's ``cseq``."""
        if cseq is None:
            self.local_cseq += 1
            cseq = self.local_cseq
        return sip.build_request(
            method,
            self.remote_target,
            via=Via("TCP", self.via_host, self.via_port, Parameters(branch=branch, rport=None)),
            from_addr=self.local,
            to_addr=self.remote,
            call_id=self.call_id,
            cseq=cseq,
            contact=self.contact if method in ("INVITE", "UPDATE") else None,
            route=self.route_set,
            content_type=content_type,
            body=body,
            extra_headers=extra_headers,
        )
