"""Hypothesis strategies for STUN messages built from every typed attribute."""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

from labsim.wire import stun

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
ports = st.integers(0, 0xFFFF)
ipv4 = st.builds(lambda n: str(ipaddress.IPv4Address(n)), u32)
ipv6 = st.builds(lambda n: str(ipaddress.IPv6Address(n)), st.integers(0, 2**128 - 1))
addresses = st.one_of(ipv4, ipv6)
text = st.text(max_size=40).filter(lambda s: len(s.encode()) <= 512)
tids = st.binary(min_size=12, max_size=12)

_address_kinds = [
    stun.MappedAddress,
    stun.AlternateServer,
    stun.ResponseOrigin,
    stun.OtherAddress,
    stun.MsAlternateServer,
    stun.DestinationAddress,
    stun.MsAltMappedAddress,
    stun.XorMappedAddress,
    stun.XorPeerAddress,
    stun.XorRelayedAddress,
    stun.MsXorMappedAddress,
]
_text_kinds = [stun.Username, stun.Realm, stun.Nonce, stun.Software]
_u32_kinds = [
    stun.Lifetime,
    stun.Priority,
    stun.ConnectionId,
    stun.MsVersion,
    stun.MsImplementationVersion,
    stun.MagicCookieAttribute,
    stun.Bandwidth,
]

# Attribute types without a typed class, in both comprehension ranges.
unknown_types = st.integers(0, 0xFFFF).filter(lambda t: t not in stun.ATTRIBUTE_TYPES)

attributes: st.SearchStrategy[stun.Attribute] = st.one_of(
    *(st.builds(kind, addresses, ports) for kind in _address_kinds),
    *(st.builds(kind, text) for kind in _text_kinds),
    *(st.builds(kind, u32) for kind in _u32_kinds),
    st.builds(stun.IceControlled, u64),
    st.builds(stun.IceControlling, u64),
    st.builds(stun.UseCandidate),
    st.builds(stun.DontFragment),
    st.builds(
        stun.ErrorCode,
        st.integers(300, 699),
        st.text(max_size=30).filter(lambda s: not s.endswith("\x00")),
    ),
    st.builds(stun.UnknownAttributes, st.lists(st.integers(0, 0xFFFF), max_size=5).map(tuple)),
    st.builds(stun.ChannelNumber, st.integers(0x4000, 0x7FFF)),
    st.builds(stun.Data, st.binary(max_size=64)),
    st.builds(stun.RequestedAddressFamily, st.sampled_from([1, 2])),
    st.builds(stun.EvenPort, st.booleans()),
    st.builds(stun.RequestedTransport, st.integers(0, 255)),
    st.builds(stun.ReservationToken, st.binary(min_size=8, max_size=8)),
    st.builds(stun.MessageIntegrity, st.binary(min_size=20, max_size=20)),
    st.builds(stun.MessageIntegritySha256, st.binary(min_size=32, max_size=32)),
    st.builds(stun.Userhash, st.binary(min_size=32, max_size=32)),
    st.builds(stun.PasswordAlgorithm, st.binary(max_size=12)),
    st.builds(stun.MsSequenceNumber, st.binary(min_size=20, max_size=20), u32),
    st.builds(stun.MsCandidateIdentifier, st.binary(min_size=4, max_size=4)),
    st.builds(stun.MsServiceQuality, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
    st.builds(stun.MsMultiplexedTurnSessionId, st.binary(min_size=8, max_size=8)),
    st.builds(stun.Fingerprint, u32),
    st.builds(stun.UnknownAttribute, unknown_types, st.binary(max_size=24)),
)

messages = st.builds(
    stun.Message,
    st.sampled_from(list(stun.Method)),
    st.sampled_from(list(stun.Class)),
    tids,
    st.lists(attributes, max_size=8),
)
