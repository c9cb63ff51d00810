#!/usr/bin/env bash
# cluster.sh up|down|status - a real single-node Kubernetes cluster for the tests.
#
#   up      builds the pinned release once (build.sh, cached), then starts etcd,
#           kube-apiserver, kube-controller-manager, kube-scheduler, a private
#           containerd and the real kubelet on this machine; imports the project's
#           kernel images into the node; prints the admin kubeconfig path last.
#   down    stops everything `up` started and removes its state.
#   status  prints the admin kubeconfig path if the cluster is up, else fails.
#   restart COMPONENT   stops one component and starts it again as it was.
#
# Needs root (kubelet, containerd, CNI). State lives in $KUBE_STATE
# (default /var/lib/kernel-orchestrator-kube); see cluster.py for the layout.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case "${1:-}" in
    up)
        bin=$(bash "$HERE/build.sh" | tail -n 1)
        exec python3 "$HERE/cluster.py" up --bin "$bin" ;;
    down|status|restart)
        exec python3 "$HERE/cluster.py" "$@" ;;
    *)
        echo "usage: $0 up|down|status|restart COMPONENT" >&2; exit 2 ;;
esac
