#!/usr/bin/env bash
# dist/deps.sh [BUILD_DIR] -- install the Debian packages mephisto-router
# needs and build a static libwebsockets with libevent support into
# BUILD_DIR/deps/lws (Debian's lws package lacks libevent). Idempotent.
# Env: DEPS_PACKAGES_EXTRA="pkg ..." adds packages, DEPS_SKIP_APT=1 skips them,
# DEPS_FUZZ=1 adds clang, libFuzzer and llvm-symbolizer (make fuzz).
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build}
DEPS=$PWD/$BUILD_DIR/deps
PREFIX=$DEPS/lws
LWS_VER=4.1.6
LWS_TGZ=libwebsockets_${LWS_VER}.orig.tar.gz
LWS_SHA256=402e9a8df553c9cd2aff5d7a9758e9e5285bf3070c82539082864633db3deb83
PACKAGES="build-essential pkg-config cmake libevent-dev libmsgpack-dev
  libsqlite3-dev libjansson-dev libyajl-dev libcmocka-dev zlib1g-dev libcap-dev libssl-dev
  sqlite3 python3-pytest python3-websockets python3-requests curl patch
  ca-certificates ${DEPS_PACKAGES_EXTRA:-}"
# tests/fuzz: clang, its sanitizer and libFuzzer runtimes (a recommendation
# of clang's, so named here), and llvm-symbolizer for readable stacks
if [ "${DEPS_FUZZ:-}" = 1 ]; then PACKAGES="$PACKAGES clang libclang-rt-14-dev llvm-14"; fi

say() { echo "deps: $*" >&2; }
die() { echo "deps: error: $*" >&2; exit 1; }

SUDO=()
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO=(sudo); fi
export DEBIAN_FRONTEND=noninteractive

# --- 1. Debian packages ------------------------------------------------------
install_packages() {
  local missing=() p
  for p in $PACKAGES; do
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] ||
      missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then say "packages: all present"; return; fi
  local cmd=(apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "${missing[@]}")
  if [ "$(id -u)" -ne 0 ] && [ ${#SUDO[@]} -eq 0 ]; then
    die "not root and no sudo; as root run: apt-get update && ${cmd[*]}"
  fi
  say "packages: installing ${missing[*]}"
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=300 update >&2
  fi
  if ! "${SUDO[@]}" "${cmd[@]}" >&2; then
    say "install failed; running apt-get update and retrying"
    { "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=300 update >&2 &&
      "${SUDO[@]}" "${cmd[@]}" >&2; } || die "could not install: ${missing[*]}"
  fi
}
if [ "${DEPS_SKIP_APT:-}" = 1 ]; then say "packages: skipped (DEPS_SKIP_APT=1)"; else install_packages; fi

# --- 2. static libwebsockets with libevent -----------------------------------
lws_version() { sed -n 's/^#define LWS_LIBRARY_VERSION "\(.*[^-]\)-*"/\1/p' "$PREFIX/include/lws_config.h"; }

# dist/lws-patches/*.patch are applied to the source; a build made with
# other patches (or none) is made again.
PATCH_SUM=$(cat dist/lws-patches/*.patch 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ -f "$PREFIX/lib/libwebsockets.a" ] &&
   grep -q '^#define LWS_WITH_LIBEVENT' "$PREFIX/include/lws_config.h" 2>/dev/null &&
   [ "$(cat "$PREFIX/.patches" 2>/dev/null)" = "$PATCH_SUM" ]; then
  say "libwebsockets: already built, nothing to do"
  say "ok (libwebsockets $(lws_version) with libevent at $PREFIX)"
  exit 0
fi

# Private deb-src entry copied from the system's bookworm entry; the system
# apt configuration, lists and caches are left untouched.
fetch_source() {
  local srcdir=$DEPS/apt/sources.list.d lists=$DEPS/apt/lists
  local entry uris="" comps="" key=""
  entry=$(awk 'BEGIN { RS = ""; FS = "\n" }
    /(^|\n)Types:[^\n]*(^|[ \t])deb([ \t]|\n|$)/ &&
    /(^|\n)Suites:[^\n]*[ \t]bookworm([ \t]|\n|$)/' \
    /etc/apt/sources.list.d/debian.sources 2>/dev/null | grep -v '^#' || true)
  if [ -n "$entry" ]; then
    uris=$(sed -n 's/^URIs:[[:space:]]*//p' <<<"$entry" | head -n1)
    comps=$(sed -n 's/^Components:[[:space:]]*//p' <<<"$entry" | head -n1)
    key=$(sed -n 's/^Signed-By:[[:space:]]*//p' <<<"$entry" | head -n1)
  fi
  : "${uris:=http://deb.debian.org/debian}" "${comps:=main}"
  : "${key:=/usr/share/keyrings/debian-archive-keyring.gpg}"
  mkdir -p "$srcdir" "$lists/partial"
  printf 'Types: deb-src\nURIs: %s\nSuites: bookworm\nComponents: %s\nSigned-By: %s\n' \
    "$uris" "$comps" "$key" >"$srcdir/debian-src.sources"
  say "fetching Debian source of libwebsockets from $uris bookworm"
  local apt=(apt-get -q -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$srcdir"
    -o Dir::State::Lists="$lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=)
  { "${apt[@]}" update >&2 && compgen -G "$lists/*_Sources*" >/dev/null; } ||
    die "no deb-src available: apt-get update fetched no Sources index from $uris bookworm"
  (cd "$DEPS/src" && { "${apt[@]}" source --download-only libwebsockets >&2 ||
    "${apt[@]}" -o APT::Sandbox::User=root source --download-only libwebsockets >&2; }) ||
    die "no deb-src available: apt-get source libwebsockets failed"
}

sha_ok() { echo "$LWS_SHA256  $DEPS/src/$LWS_TGZ" | sha256sum -c --status 2>/dev/null; }

mkdir -p "$DEPS/src"
if sha_ok; then say "source: $LWS_TGZ present"; else fetch_source; fi
[ -f "$DEPS/src/$LWS_TGZ" ] || die "apt-get source did not produce $LWS_TGZ (version changed?)"
sha_ok || die "sha256 mismatch for $DEPS/src/$LWS_TGZ (expected $LWS_SHA256)"

LOG=$DEPS/lws-build.log
SRC=$DEPS/src/libwebsockets-$LWS_VER
BLD=$DEPS/src/lws-build
rm -rf "$SRC" "$BLD" "$PREFIX"
tar -xzf "$DEPS/src/$LWS_TGZ" -C "$DEPS/src"
[ -d "$SRC" ] || die "$LWS_TGZ did not unpack to $SRC"
for p in dist/lws-patches/*.patch; do
  [ -f "$p" ] || continue
  say "patching libwebsockets: $p"
  patch -d "$SRC" -p1 --quiet <"$p" >&2 || die "$p does not apply"
done
say "building libwebsockets $LWS_VER (log: $LOG)"
build() {
  cmake -S "$SRC" -B "$BLD" -DCMAKE_BUILD_TYPE=Release -DLWS_WITH_LIBEVENT=ON \
    -DLWS_WITH_EVLIB_PLUGINS=OFF -DLWS_WITH_STATIC=ON -DLWS_WITH_SHARED=OFF \
    -DLWS_WITHOUT_TESTAPPS=ON -DLWS_WITH_HTTP2=OFF -DLWS_IPV6=ON -DLWS_WITH_SSL=ON \
    -DDISABLE_WERROR=ON -DLWS_WITHOUT_EXTENSIONS=OFF -DLWS_WITH_MINIMAL_EXAMPLES=OFF \
    -DCMAKE_POSITION_INDEPENDENT_CODE=ON -DCMAKE_C_FLAGS="-g -O2" \
    -DCMAKE_INSTALL_PREFIX="$PREFIX" &&
  make -C "$BLD" -j"$(nproc)" && make -C "$BLD" install
}
if ! build >"$LOG" 2>&1; then
  tail -n 30 "$LOG" >&2
  die "libwebsockets build failed, full log in $LOG"
fi
grep -q '^#define LWS_WITH_LIBEVENT' "$PREFIX/include/lws_config.h" ||
  die "built libwebsockets lacks LWS_WITH_LIBEVENT (is libevent-dev installed?)"
echo "$PATCH_SUM" >"$PREFIX/.patches"
say "ok (libwebsockets $(lws_version) with libevent at $PREFIX)"
