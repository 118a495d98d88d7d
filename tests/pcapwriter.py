"""A small capture writer for tests: TCP conversations with real handshakes, seq/ack and FIN,
over Ethernet/IPv4 headers without options (54 bytes, as in the lab capture), written with dpkt.

Test-only: the simulator's own capture renderer (labsim/report/pcap.py) reads a trace; this
helper lets the wire-codec tests hand tshark exactly the bytes they encoded.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

import dpkt


@dataclass
class TcpConversation:
    client: tuple[str, int]
    server: tuple[str, int]
    #: (from_client, payload) segments in order, each one TCP segment.
    segments: list[tuple[bool, bytes]] = field(default_factory=list)

    def send(self, from_client: bool, payload: bytes) -> TcpConversation:
        self.segments.append((from_client, payload))
        return self


def _mac(ip: str) -> bytes:
    return b"\x00\x50\x56" + socket.inet_aton(ip)[1:]


def _packet(
    src: tuple[str, int], dst: tuple[str, int], seq: int, ack: int, flags: int, payload: bytes = b""
) -> bytes:
    tcp = dpkt.tcp.TCP(
        sport=src[1], dport=dst[1], seq=seq, ack=ack, flags=flags, win=29312, data=payload
    )
    tcp.off = 5  # no options: 20-byte TCP header
    ip = dpkt.ip.IP(
        src=socket.inet_aton(src[0]),
        dst=socket.inet_aton(dst[0]),
        p=dpkt.ip.IP_PROTO_TCP,
        ttl=64,
        data=tcp,
    )
    ip.len = 20 + 20 + len(payload)
    eth = dpkt.ethernet.Ethernet(
        src=_mac(src[0]), dst=_mac(dst[0]), type=dpkt.ethernet.ETH_TYPE_IP, data=ip
    )
    return bytes(eth)


def write_pcap(
    path: Path, conversations: list[TcpConversation], start: float = 1_500_000_000.0
) -> None:
    """Write each conversation in turn: handshake, its segments (each acknowledged), FIN."""
    t = start
    SYN, ACK, PSH, FIN = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH, dpkt.tcp.TH_FIN
    with path.open("wb") as fh:
        writer = dpkt.pcap.Writer(fh, linktype=dpkt.pcap.DLT_EN10MB, snaplen=65535)

        def emit(frame: bytes) -> None:
            nonlocal t
            t += 0.001
            writer.writepkt(frame, ts=t)

        for conv in conversations:
            c, s = conv.client, conv.server
            cseq, sseq = 1000, 5000
            emit(_packet(c, s, cseq, 0, SYN))
            emit(_packet(s, c, sseq, cseq + 1, SYN | ACK))
            cseq, sseq = cseq + 1, sseq + 1
            emit(_packet(c, s, cseq, sseq, ACK))
            for from_client, payload in conv.segments:
                if from_client:
                    emit(_packet(c, s, cseq, sseq, PSH | ACK, payload))
                    cseq += len(payload)
                    emit(_packet(s, c, sseq, cseq, ACK))
                else:
                    emit(_packet(s, c, sseq, cseq, PSH | ACK, payload))
                    sseq += len(payload)
                    emit(_packet(c, s, cseq, sseq, ACK))
            emit(_packet(c, s, cseq, sseq, FIN | ACK))
            emit(_packet(s, c, sseq, cseq + 1, FIN | ACK))
            emit(_packet(c, s, cseq + 1, sseq + 1, ACK))
