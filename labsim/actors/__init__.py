"""The five actors of the call (DESIGN.md): each composes protocol machines from
:mod:`labsim.proto` and does no IO."""
