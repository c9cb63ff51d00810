#!/usr/bin/env bash
# Install kernel-orchestrator and its test tools into ./.venv (idempotent, fast when
# nothing changed). System components that only some tests need (Docker Engine, sshd,
# Slurm) are installed by the test setup that needs them, see scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "install: Python >= 3.10 is required (found: $("$PYTHON" --version 2>&1))" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.kernel-orchestrator-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    # This machine's pip config names local wheel folders that may not exist; pip's
    # warnings about them are noise, real errors still show.
    quiet() { "$@" 2>&1 | grep -v -e "^WARNING: Location 'file:" -e "BuildBackendWarning" || true; return "${PIPESTATUS[0]}"; }
    quiet .venv/bin/python -m pip install --quiet --upgrade pip
    quiet .venv/bin/python -m pip install --quiet -e '.[test,hub]'
    echo "$want" > "$stamp"
fi
