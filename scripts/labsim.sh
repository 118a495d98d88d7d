#!/usr/bin/env bash
# Set up .venv if needed, then run the labsim command with the given arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/labsim "$@"
