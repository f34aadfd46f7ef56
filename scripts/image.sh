#!/usr/bin/env bash
# image.sh - builds Herald's container image (deploy/container/Containerfile) with podman and
# tags it herald:<git-sha>-<env>-<build>. The tag is also the version compiled into the
# binaries (`herald --version`, the herald_build_info metric).
#
#   <git-sha>  12-digit short sha of HEAD, with "-dirty" appended when the working tree has
#              changes (tracked or untracked, .gitignore respected): the image is built from
#              the working tree, not from HEAD
#   <env>      HERALD_ENV (default dev)
#   <build>    BUILD_NUMBER (CI's build number; default: the UTC time, YYYYMMDDhhmmss)
#   e.g. herald:4ae5fd4c1d2e-dev-20260507101500, herald:4ae5fd4c1d2e-prod-1234
#
# The only line on stdout is the tag (herald:...); everything else goes to stderr. The tag is
# also written to .herald/image.tag (scripts/image-test.sh --reuse tests that image).
#
# Tools: installs buildah, podman, mmdebstrap and runc with apt-get where missing (as root or
# with sudo). Builds run with `--runtime runc` (crun fails on hosts with hybrid cgroups).
#
# Base image (both stages), BASE_IMAGE unset:
#   docker.io/library/debian:bookworm-slim, pulled if a registry answers (or already present);
#   otherwise a local base: `mmdebstrap --variant=minbase bookworm` with bookworm-updates and
#   bookworm-security, docs/man pages/locales left out like the slim image (35-90 s, cached as
#   ~/.cache/herald/image/debian-bookworm-minbase.tar and remade after HERALD_BASE_MAX_AGE_DAYS),
#   `podman import`ed as localhost/debian:bookworm-minbase.
#
# Rust: the toolchain of this machine, as CI uses it (`rustc --version` here, e.g. 1.95.0), is
# installed in the builder with rustup (minimal profile). RUST_VERSION overrides it.
#
# Caches: podman's layer cache (base packages, the Rust toolchain), and two cache mounts in
# /var/tmp/buildah-cache (herald-cargo-registry: the crates; herald-target: cargo's target dir,
# ~1.5 GB), so a rebuild compiles Herald's own crates only. --no-cache skips the layer cache,
# not the cache mounts (delete /var/tmp/buildah-cache/herald-* for a cold build). Every build
# leaves an untagged builder image behind; `podman image prune` removes them (the next build
# then installs the toolchain again).
#
# Environment (all optional):
#   HERALD_ENV, BUILD_NUMBER     the tag's <env> and <build> (see above)
#   IMAGE_NAME                   image name (default herald)
#   BASE_IMAGE                   base of both stages (default: as above)
#   HERALD_REGISTRY_TIMEOUT      seconds for the pull of debian:bookworm-slim (default 60)
#   HERALD_BASE_MAX_AGE_DAYS     age after which the local base is remade (default 7)
#   HERALD_DEBIAN_MIRROR         mirror for the local base (default http://deb.debian.org/debian)
#   HERALD_IMAGE_CACHE           cache dir (default ~/.cache/herald/image)
#   RUST_VERSION                 toolchain for the builder (default: this machine's rustc)
#   HERALD_SOURCE                org.opencontainers.image.source (default: git remote origin)
#   HERALD_BUILD_CA_BUNDLE       CA bundle the builder's HTTPS trusts (default: this machine's,
#                                /etc/ssl/certs/ca-certificates.crt)
#
# Usage: scripts/image.sh [EXTRA PODMAN BUILD ARGS...]
#   e.g. --no-cache, or --build-arg STRIP_DEBUG=0 to keep the binaries' debug info (+~120 MB)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

say() { echo "image.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

case ${1:-} in -h | --help)
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
  exit 0
  ;;
esac

IMAGE_NAME=${IMAGE_NAME:-herald}
HERALD_ENV=${HERALD_ENV:-dev}
BUILD_NUMBER=${BUILD_NUMBER:-$(date -u +%Y%m%d%H%M%S)}
REGISTRY_BASE=docker.io/library/debian:bookworm-slim
LOCAL_BASE=localhost/debian:bookworm-minbase
CACHE=${HERALD_IMAGE_CACHE:-$HOME/.cache/herald/image}
MIRROR=${HERALD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
MAX_AGE=${HERALD_BASE_MAX_AGE_DAYS:-7}
RUNTIME=(--runtime runc)

for part in "$HERALD_ENV" "$BUILD_NUMBER"; do
  [[ $part =~ ^[A-Za-z0-9_.]+$ ]] ||
    die "HERALD_ENV and BUILD_NUMBER may hold letters, digits, '_' and '.' only (got '$part')"
done

SUDO=()
if [[ $(id -u) != 0 ]]; then
  command -v sudo >/dev/null || die "not root and no sudo (needed for apt-get and podman)"
  SUDO=(sudo)
fi

# --- tools ----------------------------------------------------------------------------------

missing=()
for tool in buildah podman mmdebstrap runc; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! "${SUDO[@]}" apt-get install -y -qq "${missing[@]}" >&2; then
    "${SUDO[@]}" apt-get update -qq >&2
    "${SUDO[@]}" apt-get install -y -qq "${missing[@]}" >&2
  fi
fi
PODMAN=("${SUDO[@]}" podman)

# --- tag ------------------------------------------------------------------------------------

sha=$(git rev-parse --short=12 HEAD 2>/dev/null) || die "not a git checkout: the tag needs HEAD's sha"
revision=$(git rev-parse HEAD)
if [[ -n $(git status --porcelain 2>/dev/null) ]]; then
  sha+=-dirty
  say "the working tree has changes: tagging $sha (the image holds the working tree)"
fi
version=$sha-$HERALD_ENV-$BUILD_NUMBER
tag=$IMAGE_NAME:$version
source_url=${HERALD_SOURCE:-$(git remote get-url origin 2>/dev/null || true)}

# --- Rust toolchain -------------------------------------------------------------------------

if [[ -z ${RUST_VERSION:-} ]]; then
  if rustc_out=$(rustc --version 2>/dev/null); then
    # "rustc 1.95.0 (59807616e 2026-04-14)"; only a stable release names a rustup toolchain.
    RUST_VERSION=$(sed -n -E 's/^rustc ([0-9]+\.[0-9]+\.[0-9]+) .*/\1/p' <<<"$rustc_out")
    [[ -n $RUST_VERSION ]] ||
      die "this machine's '$rustc_out' is not a stable release: set RUST_VERSION (e.g. nightly-2026-05-01)"
  else
    RUST_VERSION=stable
    say "warning: no rustc on this machine; the builder uses the current stable Rust"
  fi
fi

# --- base image -----------------------------------------------------------------------------

# Make (or refresh) the local base with mmdebstrap and import it.
local_base() {
  local tar=$CACHE/debian-bookworm-minbase.tar t0
  mkdir -p "$CACHE"
  if [[ -s $tar ]] && [[ -n $(find "$tar" -mtime +"$MAX_AGE" 2>/dev/null) ]]; then
    say "local base $tar is older than $MAX_AGE days: remaking it"
    rm -f "$tar"
  fi
  if [[ ! -s $tar ]]; then
    say "making a Debian bookworm minbase root filesystem with mmdebstrap (about 35 s)"
    t0=$SECONDS
    # Like the official slim image: no man pages, docs (copyrights kept), info, locales; /usr
    # merged by mmdebstrap's hook rather than the usrmerge package (which pulls in perl).
    # The options land in /etc/dpkg/dpkg.cfg.d, so they also hold for packages the
    # Containerfile installs.
    "${SUDO[@]}" mmdebstrap --variant=minbase --format=tar --quiet \
      --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/info/*' \
      --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      --dpkgopt='path-exclude=/usr/share/lintian/*' \
      --aptopt='Acquire::Languages "none"' \
      --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
      bookworm "$tar.tmp" \
      "deb $MIRROR bookworm main" \
      "deb $MIRROR bookworm-updates main" \
      "deb ${MIRROR%/debian}/debian-security bookworm-security main" >&2 ||
      { rm -f "$tar.tmp"; die "mmdebstrap failed"; }
    mv -f "$tar.tmp" "$tar"
    say "local base made in $((SECONDS - t0)) s ($(du -h "$tar" | cut -f1))"
    "${PODMAN[@]}" rmi -f "$LOCAL_BASE" >/dev/null 2>&1 || true
  fi
  if ! "${PODMAN[@]}" image exists "$LOCAL_BASE"; then
    say "importing $tar as $LOCAL_BASE"
    "${PODMAN[@]}" import -q \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["bash"]' \
      "$tar" "$LOCAL_BASE" >/dev/null
  fi
}

if [[ -n ${BASE_IMAGE:-} ]]; then
  [[ $BASE_IMAGE != "$LOCAL_BASE" ]] || local_base
  base=$BASE_IMAGE
elif timeout "${HERALD_REGISTRY_TIMEOUT:-60}" "${PODMAN[@]}" pull -q "$REGISTRY_BASE" >/dev/null 2>&1; then
  base=$REGISTRY_BASE
elif "${PODMAN[@]}" image exists "$REGISTRY_BASE"; then
  say "no registry reachable; using the $REGISTRY_BASE already here"
  base=$REGISTRY_BASE
else
  say "no container registry reachable: using a local base image"
  local_base
  base=$LOCAL_BASE
fi

# --- build ----------------------------------------------------------------------------------

# The builder's HTTPS (rustup, crates.io) trusts what this machine trusts: its CA bundle goes in
# as a build secret (never stored in a layer), for builds behind a TLS-inspecting proxy.
ca_bundle=${HERALD_BUILD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
secret=()
[[ ! -s $ca_bundle ]] || secret=(--secret "id=build-ca,src=$ca_bundle")

say "building $tag (base $base, Rust $RUST_VERSION)"
t0=$SECONDS
# nice: the release build takes every core; it should not starve other work on the machine.
nice -n 10 "${PODMAN[@]}" build "${RUNTIME[@]}" --layers --force-rm \
  -f deploy/container/Containerfile \
  --build-arg BASE_IMAGE="$base" \
  --build-arg RUST_VERSION="$RUST_VERSION" \
  --build-arg HERALD_BUILD_VERSION="$version" \
  --build-arg HERALD_BUILD_REVISION="$revision" \
  --build-arg HERALD_BUILD_CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  --build-arg HERALD_SOURCE="$source_url" \
  "${secret[@]}" \
  -t "$tag" "$@" . >&2
size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$tag")
say "built $tag in $((SECONDS - t0)) s, $((size / 1000000)) MB"

mkdir -p .herald
echo "$tag" >.herald/image.tag
echo "$tag"
