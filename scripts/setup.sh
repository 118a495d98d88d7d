#!/usr/bin/env bash
# Creates .venv (once) and installs labsim with its test tools into it. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "labsim needs Python 3.11 or newer ($PYTHON is $("$PYTHON" -V 2>&1))" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    # Debian's own python3 ships venv separately.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
      rm -rf .venv && "$PYTHON" -m venv .venv
    else
      echo "cannot create a virtual environment: install python3-venv" >&2
      exit 2
    fi
  fi
fi
# Install (editable, with the test tools) only when pyproject.toml changed since the last
# install: pip takes about 4 s even when there is nothing to do, and scripts/labsim.sh calls this
# before every command. An editable install picks up new and changed modules by itself.
# (rm .venv/.labsim-setup forces a reinstall.)
stamp=.venv/.labsim-setup
digest=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -x .venv/bin/labsim ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ]; then
  exit 0
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
echo "$digest" > "$stamp"
