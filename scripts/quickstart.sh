#!/usr/bin/env bash
# Fresh machine -> a running kernel, on embedded defaults (SQLite store, local
# provisioner): installs everything, then starts a kernel, runs code in it from two
# separate CLI processes, and shuts it down.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
KO=.venv/bin/kernel-orchestrator

echo "== starting a kernel (each command below is its own process)"
id=$($KO start python3)
echo "kernel id: $id"
$KO exec "$id" 'x = 41'
echo "== x + 1 computed in a later process:"
$KO exec "$id" 'print(x + 1)'
$KO list
$KO shutdown "$id"
echo "== done; try: $KO --help"
