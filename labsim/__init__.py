"""labsim: an end-to-end lab simulator of a Skype for Business screen share into a Cisco Meeting
Server meeting through Skype Edge, Expressway-E (TURN, RFC 6062) and Expressway-C."""

__version__ = "0.1.0"
