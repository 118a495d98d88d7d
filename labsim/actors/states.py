"""The state diagrams of the two user agents, drawn from their tables.

``python -m labsim.actors.states --diagrams docs/`` writes ``docs/state-skype_client.md`` and
``docs/state-cms.md`` (the sharing dialog), ``docs/state-skype_client-av.md`` and
``docs/state-cms-av.md`` (the meeting's audio/video call before it) (Mermaid
``stateDiagram-v2``, the transitions row by row, and how each UA handles the events its table
does not allow); ``--check docs/`` exits 1 when a committed page
differs from what the tables give. The tables are the truth: edit them, then regenerate.

It lives with the actors because the tables do (:mod:`labsim.proto` may not import actors);
the rendering itself is :meth:`labsim.proto.sip_ua_state.Table.markdown`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from labsim.actors.av_call import AV_CLIENT_TABLE, AV_CMS_TABLE
from labsim.actors.cms import CMS_TABLE
from labsim.actors.skype_client import CLIENT_TABLE

COMMAND = "python -m labsim.actors.states --diagrams docs/"

_CLIENT_INTRO = """
The Skype client's SIP state, from `CLIENT_TABLE` in `labsim/actors/skype_client.py`. It is
the UAC of the sharing INVITE (RFC 3261 §13.2), then either end of a reINVITE (§14) and of BYE
(§15). Timers: Timer B = 64·T1 until the first answer to an INVITE or reINVITE (§17.1.1.2),
Timer F = 64·T1 for the BYE (§17.1.2.2), the 2xx to CMS's reINVITE resent at T1 doubling up to
T2 until its ACK, 64·T1 at most (§13.3.1.4); T1 = 0.5 s and T2 = 4 s unless set otherwise. After
a 491 to its reINVITE it retries in 2.1-4 s, since it chose the Call-ID (§14.1).
"""

_CMS_INTRO = """
CMS's SIP state, from `CMS_TABLE` in `labsim/actors/cms.py`. It is the UAS of the sharing
INVITE (RFC 3261 §13.3): 100 Trying, the TURN allocation, then 200 OK, resent at T1 doubling
up to T2 until the ACK arrives; 64·T1 without the ACK ends the dialog with BYE (§13.3.1.4).
Until that ACK it starts no reINVITE (§14.1) and sends no BYE (§15): the post-ICE reINVITE
waits for the ACK. After a 491 to its reINVITE it retries in 0-2 s, since the client chose the
Call-ID (§14.1). Timers as for the client: T1 = 0.5 s, T2 = 4 s, Timer B and Timer F 64·T1.
"""

_AV_CLIENT_INTRO = """
The Skype client's audio/video call, from `AV_CLIENT_TABLE` in `labsim/actors/av_call.py`: the
meeting's call it joins before it shares (`call.av_call`), a dialog of its own with its own
Call-ID (Cisco 212580: the sharing INVITE "will have a different SIP call-id than the initial
audio/video call"). It is the UAC of the INVITE (RFC 3261 §13.2; Timer B = 64·T1 until the first
answer, §17.1.1.2); `share_after` seconds after its ACK the sharing INVITE goes in a new dialog
(`state-skype_client.md`). Once the sharing dialog is over the client leaves the meeting: BYE
(§15; Timer F = 64·T1). If the call is never answered, no sharing INVITE follows.
"""

_AV_CMS_INTRO = """
CMS's side of the meeting's audio/video call, from `AV_CMS_TABLE` in `labsim/actors/av_call.py`:
the UAS of the client's audio/video INVITE (RFC 3261 §13.3), answered at once with its host
candidates and no TURN request (CMS asks Expressway-E for a relay only for the share). Its 200 OK
is resent at T1 doubling up to T2 until the ACK; 64·T1 without it ends the call with BYE
(§13.3.1.4). CMS finishes when both this call and the sharing dialog are over.
"""

PAGES = {
    "state-skype_client.md": CLIENT_TABLE.markdown(
        "SIP user agent states: the Skype client", _CLIENT_INTRO, COMMAND
    ),
    "state-cms.md": CMS_TABLE.markdown("SIP user agent states: CMS", _CMS_INTRO, COMMAND),
    "state-skype_client-av.md": AV_CLIENT_TABLE.markdown(
        "SIP user agent states: the Skype client's audio/video call", _AV_CLIENT_INTRO, COMMAND
    ),
    "state-cms-av.md": AV_CMS_TABLE.markdown(
        "SIP user agent states: CMS's side of the audio/video call", _AV_CMS_INTRO, COMMAND
    ),
}


def stale(folder: Path) -> list[str]:
    """The pages in ``folder`` that are missing or differ from the tables."""
    return [
        name for name, text in PAGES.items()
        if not (folder / name).exists() or (folder / name).read_text(encoding="utf-8") != text
    ]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m labsim.actors.states", description=__doc__.split("\n\n")[0]
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--diagrams", metavar="DIR", type=Path, help="write the pages into DIR")
    group.add_argument("--check", metavar="DIR", type=Path, help="exit 1 if a page is stale")
    args = parser.parse_args(argv)
    if args.check is not None:
        bad = stale(args.check)
        for name in bad:
            print(f"{args.check / name} is stale; regenerate with `{COMMAND}`", file=sys.stderr)
        return 1 if bad else 0
    args.diagrams.mkdir(parents=True, exist_ok=True)
    for name, text in PAGES.items():
        (args.diagrams / name).write_text(text, encoding="utf-8")
        print(args.diagrams / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
