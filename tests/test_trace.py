"""The trace cuts and decodes each direction of each connection by the sender's framing."""

from __future__ import annotations

from labsim.trace import ClosedRecord, ConnectionRecord, MessageRecord, Trace
from labsim.wire.address import Address
from labsim.wire.framing import frame_rfc4571

from .conftest import load_hex

CMS = Address("10.48.54.230", 44340)
EXPE = Address("10.48.54.229", 3478)
ALLOCATE = load_hex("stun/turn-allocate-request.hex")
ERROR_401 = load_hex("stun/turn-allocate-401.hex")
CHECK = load_hex("stun/rfc5769-2.1-request.hex")


def new_trace() -> Trace:
    trace = Trace()
    trace.opened(0.0, 1, "cms", CMS, "expressway_e", EXPE)
    return trace


def test_messages_split_over_sends_are_recorded_once_whole() -> None:
    trace = new_trace()
    assert trace.sent(0.1, 1, True, ALLOCATE[:7], "stun") == []
    (record,) = trace.sent(0.2, 1, True, ALLOCATE[7:] + ERROR_401[:3], "stun")
    assert record.t == 0.2 and record.data == ALLOCATE
    assert (record.src, record.dst, record.src_addr, record.dst_addr) == (
        "cms", "expressway_e", CMS, EXPE
    )  # fmt: skip
    assert record.summary == "Allocate Request TCP lifetime: 600"
    (reply,) = trace.sent(0.3, 1, False, ERROR_401, "stun")
    assert reply.src == "expressway_e" and reply.summary.startswith("Allocate Error Response")
    assert trace.sequence() == [
        ("Allocate Request TCP lifetime: 600", "cms", "expressway_e"),
        (reply.summary, "expressway_e", "cms"),
    ]


def test_framing_switch_and_relayed_checks() -> None:
    trace = new_trace()
    trace.sent(0.1, 1, True, ALLOCATE, "stun")
    # After the switch to raw (a relay pipe), framed ICE checks are still recognised.
    records = trace.sent(0.2, 1, True, frame_rfc4571(CHECK) + frame_rfc4571(b"\x80rtp"), "raw")
    # The check is a message of its own; what follows it is opaque from then on.
    assert [r.protocol for r in records] == ["STUN", "TCP"]
    assert records[0].relayed and records[0].summary == "Binding Request user: evtj:h6vY"
    assert records[0].is_kind("Binding Request") and records[1].size == 6
    assert ("Binding Request user: evtj:h6vY", "cms", "expressway_e") not in trace.sequence(
        relayed=False
    )


def test_garbage_is_recorded_not_raised() -> None:
    trace = new_trace()
    (record,) = trace.sent(0.1, 1, True, b"GET / HTTP/1.1\r\n\r\n", "stun")
    assert record.protocol == "TCP" and record.error
    (later,) = trace.sent(0.2, 1, True, ALLOCATE, "stun")
    assert later.error == "framing lost earlier"


def test_rfc4571_framed_check_and_sip() -> None:
    trace = new_trace()
    (check,) = trace.sent(0.1, 1, True, frame_rfc4571(CHECK), "rfc4571")
    assert check.summary == "Binding Request user: evtj:h6vY" and not check.relayed
    invite = (load_hex.__globals__["VECTORS"] / "sip" / "200-ok-cl414.sip").read_bytes()
    (sip,) = trace.sent(0.2, 1, False, invite, "sip")
    assert (sip.protocol, sip.summary) == ("SIP", "200 OK")
    assert isinstance(sip, MessageRecord) and sip.decoded() is not None


def test_close_is_recorded_once_in_the_timeline() -> None:
    trace = new_trace()
    trace.closed(1.0, 1, "cms", reset=True)
    trace.closed(2.0, 1, "expressway_e")
    record = trace.connections[1]
    assert (record.closed, record.closed_by, record.reset) == (1.0, "cms", True)
    kinds = [type(r) for r in trace.timeline]
    assert kinds == [ConnectionRecord, ClosedRecord]


def test_relayed_bulk_data_is_kept_short_and_sniffing_stops() -> None:
    trace = new_trace()
    big = bytes(64 * 1024)  # zeros: 32768 empty RFC 4571 frames if sniffing went on
    (record,) = trace.sent(0.1, 1, True, big, "raw")
    assert record.size == len(big) and len(record.data) == 256
    # No longer sniffed, and the next bulk write on that direction grows the same record.
    assert trace.sent(0.2, 1, True, frame_rfc4571(CHECK), "raw") == []
    assert record.size == len(big) + len(CHECK) + 2
    assert record.summary == f"TCP data, {record.size} bytes"
    assert [m for m in trace.messages if m.protocol == "STUN"] == []
    # Anything recorded in between starts a new record (the ladder and the capture keep order).
    (other,) = trace.sent(0.3, 1, False, b"reply", "raw")
    (later,) = trace.sent(0.4, 1, True, big, "raw")
    assert later is not record and later.size == len(big)
    assert trace.sent(0.5, 1, True, big, "raw") == [] and later.size == 2 * len(big)
    # Records on another connection (the relay's other leg) do not interrupt the merge.
    trace.opened(0.6, 2, "expressway_e", EXPE, "cms", CMS)
    assert len(trace.sent(0.6, 2, True, big, "raw")) == 1
    assert trace.sent(0.7, 1, True, big, "raw") == [] and later.size == 3 * len(big)


def test_bulk_data_to_a_peer_outside_the_run_or_already_read_still_grows_one_record() -> None:
    trace = Trace()
    trace.opened(0.0, 1, "expressway_e", EXPE, "external", CMS)
    big = bytes(64 * 1024)
    (record,) = trace.sent(0.1, 1, True, big, "raw")
    assert record.fate == "outside"  # nobody in the run reads it
    for i in range(10):
        assert trace.sent(0.2 + i, 1, True, big, "raw") == []
    assert record.size == 11 * len(big) and len(trace.messages) == 1
    # Read, then grown again: it is delivered once its new last byte is read.
    trace.opened(0.0, 2, "cms", CMS, "expressway_e", EXPE)
    (mine,) = trace.sent(1.0, 2, True, big, "raw")
    trace.delivered(1.1, 2, True, len(big))
    assert mine.fate == "delivered"
    assert trace.sent(1.2, 2, True, big, "raw") == [] and mine.fate == "in-flight"
    trace.delivered(1.3, 2, True, len(big))
    assert (mine.fate, mine.fate_t, mine.size) == ("delivered", 1.3, 2 * len(big))
