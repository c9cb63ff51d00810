#!/usr/bin/env bash
# Fresh machine -> the kernel gateway running on embedded defaults (SQLite store,
# local kernels, Docker kernels too when an engine answers): installs everything,
# shows the CLI on one kernel (start, code from two separate processes, shutdown),
# then serves kernels on http://127.0.0.1:8888 until Ctrl-C (the token is printed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
KO=.venv/bin/kernel-orchestrator
[ "$(id -u)" = 0 ] && ALLOW_ROOT=1

echo "== starting a kernel (each command below is its own process)"
id=$($KO start python3)
echo "kernel id: $id"
$KO exec "$id" 'x = 41'
echo "== x + 1 computed in a later process:"
$KO exec "$id" 'print(x + 1)'
$KO list
$KO shutdown "$id"
echo "== serving kernels (Jupyter Server: --gateway-url=http://127.0.0.1:8888"
echo "   --GatewayClient.auth_token=<the token below>); Ctrl-C stops the gateway, not the kernels"
exec $KO serve --port "${PORT:-8888}" ${ALLOW_ROOT:+--allow-root} "$@"
