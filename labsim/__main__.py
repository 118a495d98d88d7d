"""``python -m labsim``: the same command line as ``labsim`` (for a Python without the script on
its PATH, or to pick the interpreter: ``python3.11 -m labsim run``)."""

from labsim.cli import main

main(prog_name="labsim")
