"""The Wireshark plugin labsim ships (docs/wireshark.md).

``rfc4571_stun.lua`` is a Lua dissector for RFC 4571-framed STUN over TCP: the ICE checks the
TechNote's capture shows as plain TCP (``00 6c 00 01 00 58 21 12 a4 42 …`` on the TURN data
connection, after ConnectionBind) become ``Binding Request`` / ``Binding Success Response`` rows,
each one decoded by Wireshark's own STUN dissector. It is package data, so an installed labsim
carries it; this module says where it is and how to load it (``labsim wireshark-plugin``).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

PLUGIN_NAME = "rfc4571_stun.lua"
"""The plugin's file name, in this package."""

PERSONAL_PLUGINS = "~/.local/lib/wireshark/plugins/"
"""Wireshark's personal plugins folder on Linux and macOS, where a Lua plugin loads from at
every start (Help › About Wireshark › Folders, "Personal Lua Plugins", shows it)."""

ENABLE_PREFERENCE = "rfc4571stun.enabled"
"""The plugin's one preference: ``-o rfc4571stun.enabled:FALSE`` turns it off."""


def plugin_path() -> Path:
    """The plugin's path on this machine: a file of the installed (or checked-out) package."""
    path = Path(str(files(__name__).joinpath(PLUGIN_NAME)))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the Wireshark plugin is missing from this install")
    return path


def tshark_arguments(path: Path | None = None) -> list[str]:
    """The tshark arguments that load the plugin for one run: ``-X lua_script:PATH``."""
    return ["-X", f"lua_script:{path or plugin_path()}"]
