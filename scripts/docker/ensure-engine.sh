#!/usr/bin/env bash
# ensure-engine.sh - make a working Docker Engine available (idempotent).
#
#   1. If `docker info` already works: exit 0 (nothing else is touched).
#   2. If `dockerd` is missing: apt-get install Debian's `docker.io`
#      (pulls containerd, runc, iptables, tini as dependencies).
#   3. Start dockerd in the background (pidfile + log file), choosing flags
#      that work on this host, and wait (bounded) until `docker info` works.
#
# Flag selection (each can be forced through the environment):
#   storage driver  DOCKERD_STORAGE_DRIVER  probe: overlay2 if an overlay mount
#                   works on the data-root filesystem, else fuse-overlayfs if
#                   the binary and /dev/fuse exist, else vfs (slow, always works)
#   iptables        DOCKERD_IPTABLES=true|false  probe: true if `iptables -t nat
#                   -L` works (needed for NAT of bridge containers), else false
#                   (published ports then go through docker-proxy; builds use
#                   --network host, see docker/build.sh)
#   extra flags     DOCKERD_EXTRA_FLAGS (appended verbatim)
# If the daemon does not come up with the probed settings, the script falls
# back to the most conservative set (vfs + --iptables=false) once.
#
# Client/daemon API versions: /usr/local/bin/docker may be a newer CLI than
# Debian's dockerd (e.g. CLI 28.x = API 1.50, dockerd 20.10 = API 1.41).  The
# CLI negotiates the API version down automatically when DOCKER_API_VERSION is
# unset, so we leave it unset; if negotiation fails the script reports it and
# suggests /usr/bin/docker (Debian's client, same version as the daemon).
#
# Other environment knobs:
#   DOCKERD_LOG      (default /var/log/kernel-orchestrator-dockerd.log)
#   DOCKERD_PIDFILE  (default /var/run/docker.pid, dockerd's own default)
#   DOCKERD_WAIT     seconds to wait for the daemon (default 60)
set -euo pipefail

LOG=${DOCKERD_LOG:-/var/log/kernel-orchestrator-dockerd.log}
PIDFILE=${DOCKERD_PIDFILE:-/var/run/docker.pid}
WAIT=${DOCKERD_WAIT:-60}
DATA_ROOT=${DOCKERD_DATA_ROOT:-/var/lib/docker}

say() { echo "ensure-engine: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

docker_ok() { docker info >/dev/null 2>&1; }

if command -v docker >/dev/null 2>&1 && docker_ok; then
    say "docker engine already available"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "docker engine not reachable and not root: cannot install/start dockerd (try: sudo $0)"

# ---------------------------------------------------------------- install
if ! command -v dockerd >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "dockerd missing and apt-get not available; install Docker Engine manually"
    say "dockerd not found: installing Debian package docker.io"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    # fuse-overlayfs is only a fallback storage driver; small, install it too.
    apt-get install -y -qq --no-install-recommends docker.io iptables ca-certificates fuse-overlayfs >/dev/null \
        || die "apt-get install docker.io failed"
    command -v dockerd >/dev/null 2>&1 || die "docker.io installed but dockerd still not on PATH"
fi
command -v docker >/dev/null 2>&1 || die "no docker client on PATH (Debian's docker.io ships /usr/bin/docker)"

# ---------------------------------------------------------------- already starting?
pid_alive() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE" 2>/dev/null)" 2>/dev/null; }

wait_ready() {  # $1 = pid to watch (may be empty)
    local i
    for ((i = 0; i < WAIT; i++)); do
        docker_ok && return 0
        if [ -n "${1:-}" ] && ! kill -0 "$1" 2>/dev/null; then
            return 1
        fi
        sleep 1
    done
    return 1
}

if pid_alive; then
    say "dockerd already running (pid $(cat "$PIDFILE")), waiting for it"
    if wait_ready "$(cat "$PIDFILE")"; then say "docker engine ready"; exit 0; fi
    die "dockerd (pid $(cat "$PIDFILE")) is running but 'docker info' fails: see $LOG; $(docker info 2>&1 | tail -n 2)"
fi

# ---------------------------------------------------------------- host probes
# cgroups: dockerd needs them mounted (cgroup v1 hierarchy or cgroup2).
if [ -z "$(ls -A /sys/fs/cgroup 2>/dev/null)" ]; then
    say "/sys/fs/cgroup empty: mounting cgroup2"
    mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null || say "warning: could not mount cgroup2"
fi

probe_storage_driver() {
    if [ -n "${DOCKERD_STORAGE_DRIVER:-}" ]; then echo "$DOCKERD_STORAGE_DRIVER"; return; fi
    mkdir -p "$DATA_ROOT"
    local t
    t=$(mktemp -d "$DATA_ROOT/.overlay-probe.XXXXXX")
    mkdir -p "$t/l" "$t/u" "$t/w" "$t/m"
    if grep -qw overlay /proc/filesystems 2>/dev/null || modprobe overlay 2>/dev/null; then
        if mount -t overlay overlay -o "lowerdir=$t/l,upperdir=$t/u,workdir=$t/w" "$t/m" 2>/dev/null; then
            umount "$t/m"; rm -rf "$t"; echo overlay2; return
        fi
    fi
    rm -rf "$t"
    if command -v fuse-overlayfs >/dev/null 2>&1 && [ -c /dev/fuse ]; then echo fuse-overlayfs; return; fi
    echo vfs
}

probe_iptables() {
    if [ -n "${DOCKERD_IPTABLES:-}" ]; then echo "$DOCKERD_IPTABLES"; return; fi
    if command -v iptables >/dev/null 2>&1 && iptables -t nat -L -n >/dev/null 2>&1 \
       && iptables -t filter -L -n >/dev/null 2>&1; then
        echo true
    else
        echo false
    fi
}

start_dockerd() {  # $1 storage driver, $2 iptables true|false
    local flags=(--pidfile "$PIDFILE" --data-root "$DATA_ROOT" --storage-driver "$1"
                 --exec-opt native.cgroupdriver=cgroupfs)
    if [ "$2" = false ]; then
        flags+=(--iptables=false --ip-masq=false)
    fi
    # shellcheck disable=SC2206
    flags+=(${DOCKERD_EXTRA_FLAGS:-})
    say "starting: dockerd ${flags[*]}  (log: $LOG)"
    mkdir -p "$(dirname "$LOG")"
    echo "==== $(date -Is) dockerd ${flags[*]}" >>"$LOG"
    # setsid + nohup: the daemon must outlive this script and its shell.
    setsid nohup dockerd "${flags[@]}" >>"$LOG" 2>&1 </dev/null &
    DOCKERD_PID=$!
}

stop_dockerd() {
    [ -n "${DOCKERD_PID:-}" ] || return 0
    kill "$DOCKERD_PID" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$DOCKERD_PID" 2>/dev/null || true
    rm -f "$PIDFILE"
}

DRIVER=$(probe_storage_driver)
IPT=$(probe_iptables)
say "probed: storage-driver=$DRIVER iptables=$IPT"

start_dockerd "$DRIVER" "$IPT"
if ! wait_ready "$DOCKERD_PID"; then
    say "dockerd did not become ready with storage-driver=$DRIVER iptables=$IPT; last log lines:"
    tail -n 15 "$LOG" >&2 || true
    stop_dockerd
    if [ "$DRIVER" = vfs ] && [ "$IPT" = false ]; then
        die "dockerd failed to start; see $LOG"
    fi
    say "falling back to storage-driver=vfs iptables=false"
    start_dockerd vfs false
    if ! wait_ready "$DOCKERD_PID"; then
        tail -n 15 "$LOG" >&2 || true
        stop_dockerd
        die "dockerd failed to start even with the fallback flags; see $LOG"
    fi
fi

# ---------------------------------------------------------------- client check
if ! docker version >/dev/null 2>&1; then
    say "warning: 'docker version' failed with $(command -v docker):"
    docker version 2>&1 | tail -n 3 >&2 || true
    say "hint: use /usr/bin/docker (Debian's client) or set DOCKER_API_VERSION to the daemon's API version"
fi
say "docker engine ready: $(docker version --format 'client {{.Client.Version}} (API {{.Client.APIVersion}}), server {{.Server.Version}} (API {{.Server.APIVersion}}), driver '"$(docker info --format '{{.Driver}}' 2>/dev/null)" 2>/dev/null || echo '?')"
