"""What the settings types of the protocol machines and actors share.

Every machine and actor owns one settings type: a frozen stdlib dataclass whose defaults are
the lab of Cisco TAC document 212580, each attribute documented by the string under it. A
scenario file validates straight into these types (:mod:`labsim.scenario`), so a default is
written once, here below, and its docstring is what the scenario's JSON Schema says of the key.

Nothing here imports pydantic. The scenario loader reads three plain things from a settings
type:

- ``__pydantic_config__ = SETTINGS_CONFIG``: unknown keys are errors, attribute docstrings
  become the schema's descriptions;
- constraints written with ``typing.Annotated`` and ``annotated_types`` (:data:`Port`,
  :data:`Seconds` ...), which pydantic understands;
- :class:`SettingError` from ``__post_init__``: an invariant of the type that names the key it
  is about, so a scenario reports it at that key's line (and direct construction in code fails
  the same way).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final

import annotated_types as at

__all__ = [
    "MAX_BYTES",
    "MAX_COUNT",
    "MAX_SECONDS",
    "MIN_SECONDS",
    "SETTINGS_CONFIG",
    "Bytes",
    "Count",
    "IPv4",
    "Ordinal",
    "PositiveCount",
    "PositiveSeconds",
    "Port",
    "Seconds",
    "SettingError",
    "SipUri",
    "TextForm",
    "Where",
]

#: The ``__pydantic_config__`` of every settings type (a plain dict: pydantic reads it, nothing
#: here imports pydantic). extra=forbid: a misspelt key is an error with its line, never a
#: silently ignored one. allow_inf_nan=False: YAML reads ``.inf`` and ``.nan`` as floats, and an
#: infinite hold or deadline is a run that never ends, NaN a timer no comparison can order.
SETTINGS_CONFIG: Final = {
    "extra": "forbid",
    "use_attribute_docstrings": True,
    "allow_inf_nan": False,
}

Where = tuple[str | int, ...]


class SettingError(ValueError):
    """A settings value a machine cannot work with, and the key it is about.

    ``where`` is a path below the settings object that raised it (``("relay_ports", 1)``);
    when two values clash, ``alternatives`` name the other one, so a scenario reports the one
    the user actually wrote rather than a default they never saw.
    """

    def __init__(self, where: Where, message: str, alternatives: Sequence[Where] = ()) -> None:
        super().__init__(message)
        self.where = where
        self.alternatives = tuple(alternatives)


@dataclass(frozen=True)
class _SchemaHint:
    """What editors are told of a text setting (pydantic calls ``__get_pydantic_json_schema__``
    on ``Annotated`` metadata that has one)."""

    items: tuple[tuple[str, Any], ...]

    def __get_pydantic_json_schema__(
        self, core_schema: Any, handler: Callable[[Any], dict[str, Any]]
    ) -> dict[str, Any]:
        return {**handler(core_schema), **dict(self.items)}


@dataclass(frozen=True)
class TextForm(at.GroupedMetadata):
    """The form a text setting must have, as ``Annotated`` metadata.

    ``check`` raises :class:`SettingError` saying what is wrong, and a scenario reports that
    sentence: pydantic runs it as an ``annotated_types.Predicate``, whose plain False would
    only say "Predicate failed". ``json_schema`` is what the JSON Schema adds for editors.
    """

    check: Callable[[str], None]
    json_schema: tuple[tuple[str, Any], ...] = ()

    def __iter__(self) -> Iterator[object]:
        check = self.check

        def holds(value: str) -> bool:
            check(value)
            return True

        yield at.Predicate(holds)
        yield _SchemaHint(self.json_schema)

    @classmethod
    def pattern(cls, regex: str, what: str) -> TextForm:
        """Text matching ``regex`` in full; ``what`` says in words what it must be."""
        compiled = re.compile(regex)

        def check(value: str) -> None:
            if compiled.fullmatch(value) is None:
                raise SettingError((), f"{value!r} is not {what}")

        return cls(check, (("pattern", f"^{regex}$"),))


def _ipv4(value: str) -> None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError as exc:
        raise SettingError((), f"not an IPv4 address in dotted form ({exc})") from None


_IPV4 = TextForm(_ipv4, (("format", "ipv4"),))
# RFC 3261 §19.1: sip:user@host (what the call needs: a user part and a host to route on).
_SIP_URI = TextForm.pattern(r"sips?:[^@\s]+@[^@\s]+", "a SIP URI (sip:user@host)")

# Bounds of every time, count and size a scenario can set. Scenario files are user input: the
# virtual clock runs a timer of a microsecond or a hold of 1e9 s as faithfully as the lab's 5 s
# keepalive, so without them one file could keep a run busy for hours or fill memory. Each is
# far beyond what a real lab needs (docs/architecture.md, "Bounds").

MIN_SECONDS: Final = 0.001
"""The shortest positive time: 1 ms. Below it a periodic timer (a keepalive, a permission
refresh, a retransmission) fires so often that the run does nothing else; the lab's shortest
time is its 0.5 ms link latency, which may be 0 and is a :data:`Seconds`."""
MAX_SECONDS: Final = 86_400.0
"""The longest time: a day. Lifetimes and timeouts may outlast a run (a nonce that never turns
stale in it, RFC 5766's 3600 s maximum lifetime); none needs more than a day. How long a run
lasts is the scenario's ``deadline``, bounded on its own."""
MAX_COUNT: Final = 1_000_000
"""The most of anything counted (allocations, expected messages, an occurrence): Expressway-E
holds 6000 relays at most."""
MAX_BYTES: Final = 64 * 1024 * 1024
"""The largest size in bytes: 64 MiB, 256 times the TURN server's default early-data buffer."""

Port = Annotated[int, at.Interval(ge=1, le=65535)]
"""A TCP port."""
Seconds = Annotated[float, at.Interval(ge=0, le=MAX_SECONDS)]
"""A duration in seconds, 0 to a day (:data:`MAX_SECONDS`); finite (``SETTINGS_CONFIG``)."""
PositiveSeconds = Annotated[float, at.Interval(ge=MIN_SECONDS, le=MAX_SECONDS)]
"""A duration in seconds, 1 ms to a day (:data:`MIN_SECONDS`, :data:`MAX_SECONDS`)."""
Count = Annotated[int, at.Interval(ge=0, le=MAX_COUNT)]
"""A number of things, 0 to a million (:data:`MAX_COUNT`)."""
PositiveCount = Annotated[int, at.Interval(ge=1, le=MAX_COUNT)]
"""A number of things, at least 1 (a limit that must let one through), at most a million."""
Ordinal = Annotated[int, at.Interval(ge=1, le=MAX_COUNT)]
"""Which one of several, counting from 1 (the n-th request, the n-th connection)."""
Bytes = Annotated[int, at.Interval(ge=0, le=MAX_BYTES)]
"""A size in bytes, 0 to 64 MiB (:data:`MAX_BYTES`)."""
IPv4 = Annotated[str, _IPV4]
"""A lab address in dotted form: the live runtime binds each actor to a loopback address
derived from it (DESIGN.md: one address per actor)."""
SipUri = Annotated[str, _SIP_URI]
"""A SIP URI with a user part: an address of record."""
