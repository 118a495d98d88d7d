"""The JSON Schema of ``labsim run --json``: ``labsim schema run`` prints it; the copy shipped
with the package is ``labsim/report/run.schema.json`` (a test keeps it current).
``python -m labsim.report.schema`` prints it too, for the commands that regenerate the file."""

from __future__ import annotations

import json
import sys

from labsim.report.json_out import json_schema


def schema_text() -> str:
    """The schema as committed in ``labsim/report/run.schema.json``."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    sys.stdout.write(schema_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
