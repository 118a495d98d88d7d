#!/usr/bin/env bash
# The test command of the README: set up .venv, lint, type-check, run every test.
# Extra arguments go to pytest (e.g. scripts/test.sh -k tshark).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check labsim tests bench
.venv/bin/ruff format --check labsim tests bench
.venv/bin/mypy
exec .venv/bin/pytest "$@"
