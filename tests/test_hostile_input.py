"""Hostile input the SIP codecs must survive (issue 12, first part): inputs that took seconds
or minutes now end in a typed error, in time that grows at most linearly with their size.

The growth is judged by two sizes in one run (the best of three timings of each, so a busy
machine slows both alike), never by an absolute time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from labsim.wire import WireError, sip
from labsim.wire.framing import SipSplitter

HEAD = (
    "Via: SIP/2.0/TCP 10.48.54.2;branch=z9hG4bK1\r\nFrom: <sip:a@lab>;tag=1\r\n"
    "Call-ID: x\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n"
)


def best_of_three(run: Callable[[], None]) -> float:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def growth(make: Callable[[int], bytes], parse: Callable[[bytes], object], n: int) -> float:
    """How much longer a typed failure takes on an input 10 times larger."""

    def fails(data: bytes) -> Callable[[], None]:
        def run() -> None:
            with pytest.raises(WireError):
                parse(data)

        return run

    small, big = make(n), make(10 * n)
    return best_of_three(fails(big)) / max(best_of_three(fails(small)), 1e-6)


def splitter_feed(data: bytes) -> object:
    return SipSplitter(max_header=len(data) + 1).feed(data)


SLOW_INPUTS: dict[str, tuple[Callable[[int], bytes], Callable[[bytes], object], int]] = {
    # The splitter's Content-Length search backtracked: 19.6 s at 1,600 spaces.
    "splitter: l: + spaces + CR X": (
        lambda n: b"INVITE sip:b@lab SIP/2.0\r\nl:" + b" " * n + b"\rX\r\n\r\n",
        splitter_feed,
        20_000,
    ),
    # sipmessage's URI grammar is quadratic: 19 s for 32,000 digits; refused by length now.
    "parser: tel: Request-URI": (
        lambda n: f"INVITE tel:+{'1' * n}! SIP/2.0\r\nTo: <sip:b@lab>\r\n{HEAD}\r\n".encode(),
        sip.parse_message,
        3_200,
    ),
    "parser: tel: in To": (
        lambda n: f"INVITE sip:b@lab SIP/2.0\r\nTo: <tel:+{'1' * n}!>\r\n{HEAD}\r\n".encode(),
        sip.parse_message,
        1_600,
    ),
}


@pytest.mark.parametrize("name", list(SLOW_INPUTS))
def test_a_known_slow_input_fails_typed_in_linear_time(name: str) -> None:
    make, parse, n = SLOW_INPUTS[name]
    # Linear growth is 10x; quadratic would be 100x and the old splitter's far more. The
    # margin absorbs timer noise on small inputs.
    assert growth(make, parse, n) < 40


def fed_in_pieces(
    head_pad: int, body: int, piece: int, *, head_whole: bool = False
) -> Callable[[], None]:
    """Feeding one message in ``piece``-byte reads: the splitter must not search the header
    block again from its start on each read (a 60 KB header and a 1 MiB body fed byte by byte
    took about 71 s)."""
    head = (
        b"MESSAGE sip:b@lab SIP/2.0\r\nX-Pad: " + b"a" * head_pad
        + b"\r\nContent-Length: %d\r\n\r\n" % body
    )  # fmt: skip
    data = memoryview(head + b"b" * body)

    def run() -> None:
        splitter = SipSplitter(max_header=len(head) + 1, max_body=body + 1)
        out = []
        start = len(head) if head_whole else 0
        if head_whole:
            out += splitter.feed(data[:start])
        for i in range(start, len(data), piece):
            out += splitter.feed(data[i : i + piece])
        assert len(out) == 1 and len(out[0]) == len(data)

    return run


@pytest.mark.parametrize(
    ("what", "n", "make"),
    [
        ("a header block fed byte by byte", 3_000, lambda n: fed_in_pieces(n, 0, 1)),
        # Header and body grow together: searching the header again for every body byte made
        # this quadratic.
        (
            "a body fed byte by byte behind as large a header",
            6_000,
            lambda n: fed_in_pieces(n, n, 1, head_whole=True),
        ),
    ],
)
def test_a_message_in_many_reads_is_split_in_linear_time(
    what: str, n: int, make: Callable[[int], Callable[[], None]]
) -> None:
    ratio = best_of_three(make(10 * n)) / max(best_of_three(make(n)), 1e-6)
    assert ratio < 40, (what, ratio)


def test_a_content_length_of_thousands_of_digits_is_a_framing_error_not_a_value_error() -> None:
    digits = b"1" * 4301  # past Python's int() digit limit, which raises a bare ValueError
    with pytest.raises(WireError, match="Content-Length"):
        SipSplitter().feed(b"INVITE sip:b@lab SIP/2.0\r\nContent-Length: " + digits + b"\r\n\r\n")
    with pytest.raises(WireError):
        sip.parse_message(
            f"INVITE sip:b@lab SIP/2.0\r\nTo: <sip:b@lab>\r\n{HEAD}".replace(
                "Content-Length: 0", "Content-Length: " + "1" * 4301
            ).encode()
            + b"\r\n"
        )


def test_the_splitter_still_reads_content_length_as_rfc_3261_writes_it() -> None:
    # Compact form, any case, white space around the colon and the value (sipp pads it).
    for line in (b"Content-Length: 3", b"l:3", b"CONTENT-LENGTH :   3  ", b"content-length:\t3"):
        splitter = SipSplitter()
        out = splitter.feed(b"MESSAGE sip:b@lab SIP/2.0\r\n" + line + b"\r\n\r\nabcNEXT")
        assert [bytes(m) for m in out] == [
            b"MESSAGE sip:b@lab SIP/2.0\r\n" + line + b"\r\n\r\nabc"
        ], line


# -- the messages before garbage reach the machines ----------------------------------------------


def test_the_sip_transport_delivers_the_message_before_garbage_then_resets() -> None:
    from labsim.proto.events import Accepted, Address, Close, Received
    from labsim.proto.sip_transport import ConnectionLost, Incoming, SipTransport

    transport = SipTransport("10.48.54.229", (5060,))
    peer = Address("10.48.54.228", 40000)
    transport.handle(Accepted("sip:1", Address("10.48.54.229", 5060), peer), 0.0)
    ack = (
        "ACK sip:meeting@cms.lab SIP/2.0\r\n"
        + HEAD.replace("INVITE", "ACK")
        + "To: <sip:meeting@cms.lab>\r\n\r\n"
    ).encode()
    garbage = b"INVITE sip:a SIP/2.0\r\nVia: x\r\n\r\n"  # no Content-Length (RFC 3261 §18.3)
    step = transport.handle(Received("sip:1", ack + garbage), 0.0)
    incoming = [n for n in step.notices if isinstance(n, Incoming)]
    assert [sip.summary(n.message) for n in incoming] == ["ACK"]
    assert any(isinstance(n, ConnectionLost) for n in step.notices)
    assert Close("sip:1", reset=True) in step.effects


def test_the_turn_server_answers_the_request_before_garbage_then_resets() -> None:
    from labsim.proto.events import Close
    from labsim.wire.stun import Class, Lifetime, Message, Method

    from .test_turn_server import Lab, authed, stun

    lab = Lab()
    lab.allocate("in:ctl")
    refresh = authed(Message.request(Method.REFRESH, [Lifetime(600)]), lab.nonce, "turn", "secret")
    effects = lab.send("in:ctl", refresh + b"\xc0garbage")
    answers = stun(effects, "in:ctl")
    assert [(a.method, a.cls) for a in answers] == [(Method.REFRESH, Class.SUCCESS)]
    assert Close("in:ctl", reset=True) in effects


# -- caches bounded by bytes -------------------------------------------------------------------


def test_distinct_large_messages_are_not_kept_by_the_parser_caches() -> None:
    import gc
    import tracemalloc

    def message(i: int) -> bytes:
        body = b"x" * 200_000 + str(i).encode()
        head = HEAD.replace("Content-Length: 0", f"Content-Length: {len(body)}")
        head = head.replace("1 INVITE", "1 MESSAGE")
        return (
            f"MESSAGE sip:a@lab SIP/2.0\r\n{head}To: <sip:a@lab>\r\n"
            "Content-Type: text/plain\r\n\r\n"
        ).encode() + body

    sip.parse_message(message(-1))  # warm the header caches with the small values
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(150):  # 30 MB of distinct messages
            sip.parse_message(message(i))
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # lru_cache(512) keyed by whole messages kept all 150 (30 MB).
    assert kept < 2_000_000, kept


def test_the_codecs_line_and_message_memos_stay_bounded() -> None:
    # The plain-dict memos of the hot paths (header lines, whole messages, SDP lines, From/To
    # tags) are bounded in entries and in key size by their own code: a peer sending ever new
    # text must not grow them past that.
    from labsim.wire import framing, sdp

    for i in range(5000):
        data = (
            f"MESSAGE sip:a@lab SIP/2.0\r\nVia: SIP/2.0/TCP 10.48.54.2;branch=z9hG4bK{i}\r\n"
            f"From: <sip:a@lab>;tag={i}\r\nTo: <sip:b@lab>;tag=t{i}\r\nCall-ID: x{i}\r\n"
            f"CSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nX-Lab: {'y' * 2000}{i}\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        SipSplitter().feed(data)
        msg = sip.parse_message(data)
        assert sip.from_tag(msg) == str(i) and sip.to_tag(msg) == f"t{i}"
        sdp.SessionDescription.parse(f"v=0\r\no=- {i} 0 IN IP4 10.0.0.1\r\ns=-\r\nt=0 0\r\n")
    assert 0 < len(sip._LINES) <= sip._LINES_SIZE
    assert all(len(text) <= sip._LINE_KEY for text in sip._LINES)
    assert 0 < len(sip._TAGS) <= 4096
    assert 0 < len(framing._WHOLE) <= framing._WHOLE_SIZE
    assert all(len(data) <= framing._WHOLE_KEY for data in framing._WHOLE)
    assert 0 < len(sdp._CHECKED) <= sdp._CHECKED_SIZE and 0 < len(sdp._LINES) <= sdp._CHECKED_SIZE


def test_every_codec_cache_has_a_byte_bound() -> None:
    import functools
    import inspect

    from labsim.proto import appsharing
    from labsim.wire import facts, stun
    from labsim.wire.cache import SizedCache, TextMemo

    # Keyed by a STUN type's bits (16 at most): bounded by their domain, not by peers.
    by_domain = {"message_type", "split_type"}
    for module in (sip, stun, facts, appsharing):
        for name, value in inspect.getmembers(module):
            # functools.lru_cache bounds entries, not bytes: a codec fed by peers uses cached().
            if isinstance(value, functools._lru_cache_wrapper):
                assert name in by_domain, f"{module.__name__}.{name}"
            if isinstance(value, SizedCache | TextMemo):
                assert value.max_bytes <= 8 * 1024 * 1024, f"{module.__name__}.{name}"


def test_a_sip_peer_that_stalls_inside_a_message_is_reset_after_64_t1() -> None:
    from labsim.proto.events import (
        Accepted,
        Address,
        Close,
        Received,
        StartTimer,
        StopTimer,
        TimerFired,
    )
    from labsim.proto.sip_transport import (
        INCOMPLETE_TIMEOUT,
        ConnectionLost,
        Incoming,
        IncompleteTimer,
        SipTransport,
    )

    transport = SipTransport("10.48.54.229", (5060,))
    local, peer = Address("10.48.54.229", 5060), Address("192.168.1.252", 40000)
    whole = (
        "ACK sip:meeting@cms.lab SIP/2.0\r\n" + HEAD.replace("INVITE", "ACK")
        + "To: <sip:meeting@cms.lab>\r\n\r\n"
    ).encode()  # fmt: skip
    timer = IncompleteTimer("sip:1")
    transport.handle(Accepted("sip:1", local, peer), 0.0)
    # Part of a message starts the wait; the rest stops it and the message goes up.
    first = transport.handle(Received("sip:1", whole[:30]), 0.0)
    assert StartTimer(timer, INCOMPLETE_TIMEOUT) in first.effects
    rest = transport.handle(Received("sip:1", whole[30:]), 1.0)
    assert StopTimer(timer) in rest.effects
    assert [type(n) for n in rest.notices] == [Incoming]
    # Half a message, then silence: reset when the wait is over.
    transport.handle(Received("sip:1", whole[:30]), 2.0)
    step = transport.handle(TimerFired(timer), 2.0 + INCOMPLETE_TIMEOUT)
    assert Close("sip:1", reset=True) in step.effects
    assert [type(n) for n in step.notices] == [ConnectionLost]
    assert "still incomplete after 32 s" in " ".join(str(e) for e in step.effects)
