"""Cross-check with aioice's STUN codec, an independent implementation, on the subset it knows.

aioice packs REQUESTED-TRANSPORT as a 32-bit number (protocol << 24) and NONCE as bytes; it has
no RFC 6062 methods and a 2-byte CHANNEL-NUMBER, so those stay out of the comparison.
"""

from __future__ import annotations

from typing import Any

from aioice import stun as aioice_stun
from hypothesis import given, settings
from hypothesis import strategies as st

from labsim.wire import stun

from .strategies import addresses, ports, tids, u32, u64

_SIMPLE = st.text(max_size=30)

# (our attribute strategy, how aioice names and represents the same value)
_PAIRS: list[st.SearchStrategy[tuple[stun.Attribute, str, Any]]] = [
    st.builds(lambda a, p: (stun.MappedAddress(a, p), "MAPPED-ADDRESS", (a, p)), addresses, ports),
    st.builds(
        lambda a, p: (stun.XorMappedAddress(a, p), "XOR-MAPPED-ADDRESS", (a, p)), addresses, ports
    ),
    st.builds(
        lambda a, p: (stun.XorPeerAddress(a, p), "XOR-PEER-ADDRESS", (a, p)), addresses, ports
    ),
    st.builds(
        lambda a, p: (stun.XorRelayedAddress(a, p), "XOR-RELAYED-ADDRESS", (a, p)), addresses, ports
    ),
    st.builds(
        lambda a, p: (stun.ResponseOrigin(a, p), "RESPONSE-ORIGIN", (a, p)), addresses, ports
    ),
    st.builds(lambda a, p: (stun.OtherAddress(a, p), "OTHER-ADDRESS", (a, p)), addresses, ports),
    st.builds(lambda s: (stun.Username(s), "USERNAME", s), _SIMPLE),
    st.builds(lambda s: (stun.Realm(s), "REALM", s), _SIMPLE),
    st.builds(lambda s: (stun.Nonce(s), "NONCE", s.encode()), _SIMPLE),
    st.builds(lambda s: (stun.Software(s), "SOFTWARE", s), _SIMPLE),
    st.builds(lambda n: (stun.Lifetime(n), "LIFETIME", n), u32),
    st.builds(lambda n: (stun.Priority(n), "PRIORITY", n), u32),
    st.builds(lambda n: (stun.IceControlled(n), "ICE-CONTROLLED", n), u64),
    st.builds(lambda n: (stun.IceControlling(n), "ICE-CONTROLLING", n), u64),
    st.just((stun.UseCandidate(), "USE-CANDIDATE", None)),
    st.builds(lambda b: (stun.Data(b), "DATA", b), st.binary(max_size=40)),
    st.builds(
        lambda p: (stun.RequestedTransport(p), "REQUESTED-TRANSPORT", p << 24),
        st.sampled_from([6, 17]),
    ),
    st.builds(
        lambda c, r: (stun.ErrorCode(c, r), "ERROR-CODE", (c, r)),
        st.integers(300, 699),
        st.text(max_size=20).filter(lambda s: not s.endswith("\x00")),
    ),
]

_METHODS = [
    stun.Method.BINDING,
    stun.Method.ALLOCATE,
    stun.Method.REFRESH,
    stun.Method.SEND,
    stun.Method.DATA,
    stun.Method.CREATE_PERMISSION,
    stun.Method.CHANNEL_BIND,
]
_CLASS = {
    stun.Class.REQUEST: aioice_stun.Class.REQUEST,
    stun.Class.INDICATION: aioice_stun.Class.INDICATION,
    stun.Class.SUCCESS: aioice_stun.Class.RESPONSE,
    stun.Class.ERROR: aioice_stun.Class.ERROR,
}


@st.composite
def pairs(draw: st.DrawFn) -> tuple[stun.Message, aioice_stun.Message]:
    method = draw(st.sampled_from(_METHODS))
    cls = draw(st.sampled_from(list(stun.Class)))
    tid = draw(tids)
    chosen = draw(st.lists(st.one_of(*_PAIRS), max_size=8, unique_by=lambda p: p[1]))
    ours = stun.Message(method, cls, tid, [attr for attr, _, _ in chosen])
    theirs = aioice_stun.Message(
        aioice_stun.Method(method), _CLASS[cls], tid, {name: value for _, name, value in chosen}
    )
    return ours, theirs


@settings(max_examples=300, deadline=None)
@given(pairs())
def test_same_bytes_both_ways(pair: tuple[stun.Message, aioice_stun.Message]) -> None:
    ours, theirs = pair
    assert ours.encode() == bytes(theirs)
    parsed = aioice_stun.parse_message(ours.encode())
    assert parsed.attributes == theirs.attributes
    assert stun.decode(bytes(theirs)) == ours


@settings(max_examples=150, deadline=None)
@given(pairs(), st.binary(min_size=1, max_size=24))
def test_integrity_and_fingerprint_agree(
    pair: tuple[stun.Message, aioice_stun.Message], key: bytes
) -> None:
    ours, theirs = pair
    theirs.add_message_integrity(key)
    ours.attributes += [stun.MessageIntegrity(), stun.Fingerprint()]
    assert ours.encode(key) == bytes(theirs)
    # aioice checks the fingerprint while parsing and the integrity on request.
    assert aioice_stun.parse_message(ours.encode(key)).check_message_integrity(key)
    decoded = stun.decode(bytes(theirs))
    assert decoded.verify_integrity(key) and decoded.verify_fingerprint()


def test_rfc5769_request_through_aioice() -> None:
    from .conftest import load_hex

    data = load_hex("stun/rfc5769-2.1-request.hex")
    parsed = aioice_stun.parse_message(data)
    assert parsed.check_message_integrity(stun.short_term_key("VOkJxbRl1RmTxUk/WvJxBt"))
    assert parsed.attributes["USERNAME"] == stun.decode(data).get(stun.Username).value  # type: ignore[union-attr]
