"""Codecs for every byte the actors exchange: STUN/TURN/RFC 6062, stream framing, SIP, SDP.

This layer does no IO and reads no clock (DESIGN.md, layers).
"""

from labsim.wire.errors import FramingError, SdpError, SipError, StunError, WireError

__all__ = ["FramingError", "SdpError", "SipError", "StunError", "WireError"]
