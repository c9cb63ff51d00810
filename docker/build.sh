#!/usr/bin/env bash
# docker/build.sh - build the kernel-orchestrator container images.
#
# usage: docker/build.sh [--offline-base] [--only IMAGE]
#
#   kernel-orchestrator/kernel-python:{latest,VERSION}   docker/kernel-python/Dockerfile
#   kernel-orchestrator/kernel-multi:{latest,VERSION}    the same, with bash_kernel and
#                                                        xeus-python beside ipykernel
#   kernel-orchestrator/kernel-r:{latest,VERSION}        docker/kernel-r/Dockerfile
#   kernel-orchestrator/kernel-octave:{latest,VERSION}   docker/kernel-octave/Dockerfile
#   kernel-orchestrator/orchestrator:{latest,VERSION}    docker/orchestrator/Dockerfile
#
# IMAGE is one of kernel-python, kernel-multi, kernel-r, kernel-octave, orchestrator; without
# --only, kernel-python and orchestrator are built (the others on request).
#
# VERSION is read from pyproject.toml (`version = "..."`), 0.1.0 if absent.
#
# --offline-base  build kernel-orchestrator/debian-base:bookworm with
#                 scripts/docker/make-offline-base.sh (debootstrap, no registry
#                 needed) and use it as BASE_IMAGE.  Without it the Dockerfiles'
#                 default (python:3.12-slim, pulled from Docker Hub) is used,
#                 unless BASE_IMAGE is set in the environment.
#
# Works with the legacy builder (DOCKER_BUILDKIT=0), e.g. Debian's docker.io.
# Each image is built from a small temporary context assembled here, so .git,
# .venv and caches are never sent to the daemon.  Into that context goes the
# host CA bundle (build-ca/ca.crt), which the Dockerfiles use for pip in their
# build stage only; the final images do not contain it.
#
# Environment:
#   BASE_IMAGE            base image for both Dockerfiles
#   BUILD_CA_FILE         CA bundle for pip during the build ("none" = don't pass
#                         one); default: $PIP_CERT, $REQUESTS_CA_BUNDLE,
#                         $SSL_CERT_FILE or /etc/ssl/certs/ca-certificates.crt
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST
#                         default: taken from the host's `pip config`; only
#                         http(s) URLs are passed (file:// paths of the host
#                         do not exist inside the build container)
#   DOCKER_BUILD_NETWORK  network for RUN steps (default "host": works even
#                         when dockerd runs with --iptables=false; set to
#                         "default" for docker's bridge network)
#   DOCKER_BUILD_ARGS     extra arguments for every `docker build`
set -euo pipefail
umask 022

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=kernel-orchestrator
OFFLINE_BASE=0
ONLY=

say() { echo "build.sh: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --offline-base) OFFLINE_BASE=1 ;;
        --only) shift; ONLY=${1:-}
                case "$ONLY" in kernel-python|kernel-multi|kernel-r|kernel-octave|orchestrator) ;; *) die "--only takes kernel-python, kernel-multi, kernel-r, kernel-octave or orchestrator";; esac ;;
        --only=*) ONLY=${1#--only=}
                case "$ONLY" in kernel-python|kernel-multi|kernel-r|kernel-octave|orchestrator) ;; *) die "--only takes kernel-python, kernel-multi, kernel-r, kernel-octave or orchestrator";; esac ;;
        -h|--help) sed -n '2,42p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done

"$REPO/scripts/docker/ensure-engine.sh"

# The legacy builder: no buildx plugin needed, works with every daemon.
export DOCKER_BUILDKIT=0

VERSION=
if [ -f "$REPO/pyproject.toml" ]; then
    VERSION=$(sed -n 's/^version[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$REPO/pyproject.toml" | head -n 1)
fi
VERSION=${VERSION:-0.1.0}

if [ "$OFFLINE_BASE" = 1 ]; then
    "$REPO/scripts/docker/make-offline-base.sh"
    BASE_IMAGE=${BASE_IMAGE:-$PREFIX/debian-base:bookworm}
fi

# ---------------------------------------------------------------- build args
BUILD_ARGS=()
if [ -n "${BASE_IMAGE:-}" ]; then
    BUILD_ARGS+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
    EFFECTIVE_BASE=$BASE_IMAGE
else
    EFFECTIVE_BASE=python:3.12-slim
fi
if ! docker image inspect "$EFFECTIVE_BASE" >/dev/null 2>&1; then
    say "note: base image $EFFECTIVE_BASE is not local and will be pulled; with no registry access use --offline-base"
fi

# One `pip config list` call (pip is slow to start); lines look like
# global.index-url='https://...'  (install.* wins over global.*)
PIP_CONFIG=$(python3 -m pip config list 2>/dev/null || true)
pip_cfg() {
    local k v=
    for k in install global; do
        [ -n "$v" ] || v=$(printf '%s\n' "$PIP_CONFIG" | sed -n "s/^$k\\.$1='\\(.*\\)'\$/\\1/p" | tail -n 1)
    done
    echo "$v"
}
only_http() { tr ' ' '\n' | grep -E '^https?://' | paste -sd ' ' - || true; }

INDEX_URL=$(printf '%s' "${PIP_INDEX_URL:-$(pip_cfg index-url)}" | only_http)
EXTRA_INDEX_URL=$(printf '%s' "${PIP_EXTRA_INDEX_URL:-$(pip_cfg extra-index-url)}" | only_http)
TRUSTED_HOST=${PIP_TRUSTED_HOST:-$(pip_cfg trusted-host)}
[ -n "$INDEX_URL" ] && BUILD_ARGS+=(--build-arg "PIP_INDEX_URL=$INDEX_URL")
[ -n "$EXTRA_INDEX_URL" ] && BUILD_ARGS+=(--build-arg "PIP_EXTRA_INDEX_URL=$EXTRA_INDEX_URL")
[ -n "$TRUSTED_HOST" ] && BUILD_ARGS+=(--build-arg "PIP_TRUSTED_HOST=$(echo "$TRUSTED_HOST" | paste -sd ' ' -)")

CA_FILE=${BUILD_CA_FILE:-}
if [ -z "$CA_FILE" ]; then
    for c in "${PIP_CERT:-}" "${REQUESTS_CA_BUNDLE:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
        if [ -n "$c" ] && [ -r "$c" ] && [ -f "$c" ]; then CA_FILE=$c; break; fi
    done
fi
[ "$CA_FILE" = none ] && CA_FILE=
[ -z "$CA_FILE" ] || [ -r "$CA_FILE" ] || die "BUILD_CA_FILE=$CA_FILE is not readable"

NETWORK=${DOCKER_BUILD_NETWORK:-host}
[ "$NETWORK" = default ] || BUILD_ARGS+=(--network "$NETWORK")
# shellcheck disable=SC2206
BUILD_ARGS+=(${DOCKER_BUILD_ARGS:-})

say "version $VERSION, base ${EFFECTIVE_BASE}, network ${NETWORK}, CA ${CA_FILE:-<none>}, index ${INDEX_URL:-<pip default>}"

# ---------------------------------------------------------------- contexts
CTX_ROOT=$(mktemp -d "${TMPDIR:-/tmp}/ko-docker-build.XXXXXX")
trap 'rm -rf "$CTX_ROOT"' EXIT

add_ca() {  # $1 = build-ca directory inside a context
    mkdir -p "$1"
    [ -z "$CA_FILE" ] || cat "$CA_FILE" >"$1/ca.crt"
}

copy_tree() {  # $1 src dir, $2 dest dir: without caches / build droppings
    mkdir -p "$2"
    tar -C "$1" -c --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' \
        --exclude=.mypy_cache --exclude=.pytest_cache --exclude=.ruff_cache . | tar -C "$2" -x
}

build() {  # $1 name, $2 context dir, $3 Dockerfile (relative to the context), $4... more args
    local name=$1 ctx=$2 dockerfile=$3 t0
    shift 3
    t0=$(date +%s)
    say "building $PREFIX/$name:$VERSION"
    docker build -f "$ctx/$dockerfile" \
        -t "$PREFIX/$name:latest" -t "$PREFIX/$name:$VERSION" \
        --label "org.opencontainers.image.version=$VERSION" \
        "${BUILD_ARGS[@]}" "$@" "$ctx" \
        || die "docker build of $name failed"
    say "built $PREFIX/$name:$VERSION in $(( $(date +%s) - t0 ))s"
}

build_kernel_python() {
    local ctx=$CTX_ROOT/kernel-python
    mkdir -p "$ctx"
    cp "$REPO/docker/kernel-python/Dockerfile" "$ctx/Dockerfile"
    add_ca "$ctx/build-ca"
    build kernel-python "$ctx" Dockerfile
}

# Kernels beyond ipykernel on the same venv image: bash_kernel (on ipykernel) and
# xeus-python (its own C++ ZMQ stack, encrypted through the relay, which uses the
# venv's pyzmq).
MULTI_PACKAGES="ipykernel>=7,<8 bash_kernel==0.10.0 xeus-python==0.19.0"

build_kernel_multi() {
    local ctx=$CTX_ROOT/kernel-multi
    mkdir -p "$ctx"
    cp "$REPO/docker/kernel-python/Dockerfile" "$ctx/Dockerfile"
    add_ca "$ctx/build-ca"
    build kernel-multi "$ctx" Dockerfile --build-arg "KERNEL_PACKAGES=$MULTI_PACKAGES"
}

build_kernel_r() {
    local ctx=$CTX_ROOT/kernel-r
    mkdir -p "$ctx"
    cp "$REPO/docker/kernel-r/Dockerfile" "$ctx/Dockerfile"
    build kernel-r "$ctx" Dockerfile
}

build_kernel_octave() {
    local ctx=$CTX_ROOT/kernel-octave
    mkdir -p "$ctx"
    cp "$REPO/docker/kernel-octave/Dockerfile" "$ctx/Dockerfile"
    build kernel-octave "$ctx" Dockerfile
}

build_orchestrator() {
    [ -f "$REPO/pyproject.toml" ] || die "no pyproject.toml in $REPO: cannot build the orchestrator image yet"
    local ctx=$CTX_ROOT/orchestrator d f
    mkdir -p "$ctx/docker/orchestrator"
    cp "$REPO/pyproject.toml" "$ctx/"
    for d in orchestrator provisioners; do
        [ -d "$REPO/$d" ] || die "missing package directory $REPO/$d"
        copy_tree "$REPO/$d" "$ctx/$d"
    done
    if [ -f "$REPO/README.md" ]; then
        cp "$REPO/README.md" "$ctx/"
    else  # pyproject declares readme = "README.md"; setuptools needs the file
        echo "# kernel-orchestrator" >"$ctx/README.md"
    fi
    for f in "$REPO"/LICENSE* "$REPO"/COPYING*; do
        [ -f "$f" ] && cp "$f" "$ctx/"
    done
    cp "$REPO/docker/orchestrator/Dockerfile" "$REPO/docker/orchestrator/pyproject-reqs.py" "$ctx/docker/orchestrator/"
    add_ca "$ctx/docker/orchestrator/build-ca"
    build orchestrator "$ctx" docker/orchestrator/Dockerfile
}

case "$ONLY" in
    kernel-python) build_kernel_python ;;
    kernel-multi) build_kernel_multi ;;
    kernel-r) build_kernel_r ;;
    kernel-octave) build_kernel_octave ;;
    orchestrator) build_orchestrator ;;
    *) build_kernel_python; build_orchestrator ;;
esac
say "done"
