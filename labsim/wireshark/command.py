"""``labsim wireshark-plugin``: where the Wireshark plugin is and how to load it.

A click command of its own; the command line registers it with ``main.add_command``.
"""

from __future__ import annotations

import shlex

import click

from labsim.wireshark import ENABLE_PREFERENCE, PERSONAL_PLUGINS, plugin_path, tshark_arguments


def instructions() -> str:
    """What the command prints: the path, then how tshark and Wireshark load the plugin."""
    path = plugin_path()
    quoted = shlex.quote(str(path))
    load = shlex.join(tshark_arguments(path))
    return "\n".join(
        [
            str(path),
            "",
            "A Wireshark Lua dissector for RFC 4571-framed STUN over TCP: the ICE checks that",
            "Wireshark shows as plain TCP on the TURN data connection (00 6c 00 01 ...) become",
            "Binding Request / Binding Success Response rows, there and on the relay port's leg.",
            "",
            "tshark, for one run:",
            f"  tshark {load} -r call.pcapng -Y stun",
            "Wireshark, from its next start: copy it into your personal plugins folder",
            f"  mkdir -p {PERSONAL_PLUGINS} && cp {quoted} {PERSONAL_PLUGINS}",
            "  (Help > About Wireshark > Folders shows the folder: Personal Lua Plugins)",
            f"Turn it off for one run: -o {ENABLE_PREFERENCE}:FALSE",
            "More: docs/wireshark.md",
        ]
    )


@click.command(name="wireshark-plugin")
@click.option(
    "--path",
    "path_only",
    is_flag=True,
    help="Print the plugin's path alone, for scripts: tshark -X lua_script:$(labsim "
    "wireshark-plugin --path) ...",
)
def wireshark_plugin(path_only: bool) -> None:
    """Where the Wireshark plugin that decodes the RFC 4571-framed ICE checks is, and how to
    load it into tshark or Wireshark."""
    click.echo(str(plugin_path()) if path_only else instructions())
