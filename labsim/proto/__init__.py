"""Sans-IO protocol machines: they take events with ``now`` and return effects
(:mod:`labsim.proto.events`); no sockets, no clocks."""
