"""Renderers of a run: they read a :class:`labsim.trace.Trace` and nothing else.

* :func:`render_ladder` / :func:`render_ladder_rich` — the ladder diagram (plain / coloured);
* :func:`write_pcapng` — a capture with the lab's addresses and real TCP semantics;
* :func:`trace_to_json` / :func:`write_json` — the JSON other tools read.
"""

from labsim.report.json_out import trace_to_json, write_json
from labsim.report.ladder import render_ladder, render_ladder_rich
from labsim.report.pcap import LAB_CAPTURE_START, wire_payload, write_pcapng

__all__ = [
    "LAB_CAPTURE_START",
    "render_ladder",
    "render_ladder_rich",
    "trace_to_json",
    "wire_payload",
    "write_json",
    "write_pcapng",
]
