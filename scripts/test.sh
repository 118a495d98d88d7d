#!/usr/bin/env bash
# The test command of the README: set up .venv, lint, type-check, run every test.
# Tests run in parallel (pytest-xdist): one worker per core, at least 2, at most 4 (most of the
# suite's wall time is live runs waiting on timers, not CPU; more workers than that only add
# start-up time and contention). LABSIM_TEST_WORKERS=N sets the count; -n 0 runs serially.
# Extra arguments go to pytest (e.g. scripts/test.sh -k tshark, scripts/test.sh -n 0).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check labsim tests bench notebooks
.venv/bin/ruff format --check labsim tests bench
.venv/bin/mypy
cores=$(nproc 2>/dev/null || echo 2)
workers=${LABSIM_TEST_WORKERS:-$(( cores < 2 ? 2 : (cores > 4 ? 4 : cores) ))}
# worksteal: an idle worker takes queued tests from a busy one, so one slow module does not
# leave the other worker idle at the end.
exec .venv/bin/pytest -n "$workers" --dist worksteal "$@"
