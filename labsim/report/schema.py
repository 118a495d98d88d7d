"""Print the JSON Schema of ``labsim run --json`` (``python -m labsim.report.schema``); the
copy shipped with the package is ``labsim/report/run.schema.json`` (a test keeps it current)."""

from __future__ import annotations

import json
import sys

from labsim.report.json_out import json_schema


def main() -> int:
    sys.stdout.write(json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
