#!/usr/bin/env bash
# make-offline-base.sh - build a local Debian base image without any container
# registry: debootstrap (minbase) + `docker import`.
#
#   image:    kernel-orchestrator/debian-base:bookworm   (override: BASE_TAG)
#   contains: python3, python3-venv, python3-pip, ca-certificates, tini, libpq5
#
# The Debian mirror is taken from this machine's apt configuration
# (/etc/apt/sources.list and /etc/apt/sources.list.d/*.list|*.sources),
# override with DEBIAN_MIRROR=http://.../debian.  Security updates come from
# the configured debian-security mirror (if any) and are applied before the
# import.
#
# Idempotent: if the image already exists the script exits at once
# (pass --force to rebuild).  Needs root (debootstrap, chroot).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SUITE=${DEBIAN_SUITE:-bookworm}
BASE_TAG=${BASE_TAG:-kernel-orchestrator/debian-base:$SUITE}
PACKAGES=python3,python3-venv,python3-pip,ca-certificates,tini,libpq5
FORCE=0

say() { echo "make-offline-base: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) die "unknown argument: $arg" ;;
    esac
done

"$HERE/ensure-engine.sh"

if [ "$FORCE" = 0 ] && docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
    say "$BASE_TAG already exists (use --force to rebuild)"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap/chroot)"

# ---------------------------------------------------------------- mirror discovery
# Prints "URI SUITE" pairs from one-line and deb822 apt sources (type deb only).
apt_sources() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                           print $i, $(i + 1) }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # deb822: paragraphs separated by blank lines; Enabled: no skips one.
        awk 'function flush() { if (types ~ /(^| )deb( |$)/ && enabled != "no")
                                  for (u in U) for (s in S) print U[u], S[s];
                                delete U; delete S; types = ""; enabled = "" }
             /^[ \t]*$/ { flush(); next }
             /^#/ { next }
             tolower($1) == "types:"   { types = $0; sub(/^[^:]*:[ \t]*/, "", types) }
             tolower($1) == "enabled:" { enabled = tolower($2) }
             tolower($1) == "uris:"    { for (i = 2; i <= NF; i++) U[i] = $i }
             tolower($1) == "suites:"  { for (i = 2; i <= NF; i++) S[i] = $i }
             END { flush() }' "$f"
    done
}

SOURCES=$(apt_sources | sed 's#/*[[:space:]]# #' | sort -u)
MIRROR=${DEBIAN_MIRROR:-$(awk -v s="$SUITE" '$2 == s { print $1; exit }' <<<"$SOURCES")}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-$(awk -v s="$SUITE-security" '$2 == s { print $1; exit }' <<<"$SOURCES")}
[ -n "$MIRROR" ] || die "no apt source for suite '$SUITE' found in /etc/apt; set DEBIAN_MIRROR"
say "mirror: $MIRROR  security: ${SECURITY_MIRROR:-<none>}"

# ---------------------------------------------------------------- debootstrap
if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap >/dev/null \
        || die "apt-get install debootstrap failed"
fi
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
KEYRING_OPT=()
[ -f "$KEYRING" ] && KEYRING_OPT=(--keyring="$KEYRING")

WORK=$(mktemp -d /var/tmp/ko-debootstrap.XXXXXX)
ROOTFS=$WORK/rootfs
cleanup() {
    # never rm -rf while something is mounted inside the rootfs
    for m in "$ROOTFS/proc" "$ROOTFS/dev/pts" "$ROOTFS/dev"; do
        mountpoint -q "$m" 2>/dev/null && umount -l "$m"
    done
    if ! grep -q " $ROOTFS/" /proc/mounts; then rm -rf "$WORK"; else say "warning: mounts left under $ROOTFS, not removing it"; fi
}
trap cleanup EXIT

start=$(date +%s)
say "debootstrap --variant=minbase $SUITE (this takes a few minutes)"
debootstrap --variant=minbase "${KEYRING_OPT[@]}" --include="$PACKAGES" \
    "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 30 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log above)"; }

# ---------------------------------------------------------------- slim + update
# Same path excludes as the official debian:*-slim images, for later installs.
mkdir -p "$ROOTFS/etc/dpkg/dpkg.cfg.d" "$ROOTFS/etc/apt/apt.conf.d"
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
cat >"$ROOTFS/etc/apt/apt.conf.d/docker-slim" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
EOF
{
    echo "deb $MIRROR $SUITE main"
    echo "deb $MIRROR $SUITE-updates main"
    [ -n "$SECURITY_MIRROR" ] && echo "deb $SECURITY_MIRROR $SUITE-security main"
} >"$ROOTFS/etc/apt/sources.list"

cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
mount -t proc proc "$ROOTFS/proc"
say "applying $SUITE-updates / security updates inside the rootfs"
chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -c 'apt-get update -qq && apt-get -y -qq upgrade && apt-get clean' >>"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 30 "$WORK/debootstrap.log" >&2; die "apt-get upgrade inside the rootfs failed (log above)"; }
umount "$ROOTFS/proc"

find "$ROOTFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$ROOTFS"/usr/share/{man,info,groff,lintian,linda,locale}/* \
       "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
       "$ROOTFS"/var/cache/debconf/*-old "$ROOTFS"/var/lib/dpkg/*-old \
       "$ROOTFS"/var/log/* "$ROOTFS"/tmp/* "$ROOTFS"/root/.cache
find "$ROOTFS/usr/lib" -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
: >"$ROOTFS/etc/resolv.conf"    # docker bind-mounts its own at run time
: >"$ROOTFS/etc/machine-id" 2>/dev/null || true
echo "$SUITE-offline-base" >"$ROOTFS/etc/hostname"

# sanity: everything the Dockerfiles rely on is there
for b in /usr/bin/python3 /usr/bin/tini; do
    [ -x "$ROOTFS$b" ] || die "$b missing from the rootfs"
done
chroot "$ROOTFS" /usr/bin/python3 -c 'import venv, ensurepip, ssl' \
    || die "python3 in the rootfs lacks venv/ensurepip/ssl"

# ---------------------------------------------------------------- import
say "docker import -> $BASE_TAG"
tar --numeric-owner --xattrs -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["bash"]' \
    --change "LABEL org.opencontainers.image.title=kernel-orchestrator-debian-base org.opencontainers.image.description=debootstrap-$SUITE-minbase-python3-tini" \
    --message "debootstrap --variant=minbase $SUITE from $MIRROR" \
    - "$BASE_TAG" >/dev/null
say "done in $(( $(date +%s) - start ))s: $BASE_TAG ($(docker image inspect --format '{{.Size}}' "$BASE_TAG" | awk '{ printf "%.0f MB", $1 / 1e6 }'))"
