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
    "SETTINGS_CONFIG",
    "Count",
    "IPv4",
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
#: silently ignored one.
SETTINGS_CONFIG: Final = {"extra": "forbid", "use_attribute_docstrings": True}

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

Port = Annotated[int, at.Interval(ge=1, le=65535)]
"""A TCP port."""
Seconds = Annotated[float, at.Ge(0)]
"""A duration in seconds, possibly 0."""
PositiveSeconds = Annotated[float, at.Gt(0)]
"""A duration in seconds, more than 0."""
Count = Annotated[int, at.Ge(0)]
"""A number of things, possibly 0."""
IPv4 = Annotated[str, _IPV4]
"""A lab address in dotted form: the live runtime binds each actor to a loopback address
derived from it (DESIGN.md: one address per actor)."""
SipUri = Annotated[str, _SIP_URI]
"""A SIP URI with a user part: an address of record."""
