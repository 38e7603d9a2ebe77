#!/usr/bin/env bash
# tests/browser/deps.sh -- what `make test-browser` needs beyond the router's
# own dependencies (dist/deps.sh): Debian's chromium at /usr/bin/chromium
# (installed when missing; the test never downloads a browser of its own), and
# Node.js >= 20 with npm, which are checked, not installed (Debian 12's nodejs
# is 18, too old for playwright-core 1.65; the machines here ship Node.js 20).
# Env: CHROMIUM_BIN names another Chromium (then nothing is installed).
set -euo pipefail

say() { echo "browser-deps: $*" >&2; }
die() { echo "browser-deps: error: $*" >&2; exit 1; }

SUDO=()
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO=(sudo); fi
export DEBIAN_FRONTEND=noninteractive

if [ -n "${CHROMIUM_BIN:-}" ]; then
  [ -x "$CHROMIUM_BIN" ] || die "CHROMIUM_BIN=$CHROMIUM_BIN is not executable"
elif [ -x /usr/bin/chromium ]; then
  say "chromium: present"
else
  cmd=(apt-get -o DPkg::Lock::Timeout=300 install -y chromium)
  if [ "$(id -u)" -ne 0 ] && [ ${#SUDO[@]} -eq 0 ]; then
    die "chromium is missing; as root run: apt-get update && ${cmd[*]}"
  fi
  say "chromium: installing Debian's package"
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=300 update >&2
  fi
  if ! "${SUDO[@]}" "${cmd[@]}" >&2; then
    say "install failed; running apt-get update and retrying"
    { "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=300 update >&2 &&
      "${SUDO[@]}" "${cmd[@]}" >&2; } || die "could not install chromium"
  fi
  [ -x /usr/bin/chromium ] || die "chromium installed but /usr/bin/chromium is missing"
fi

command -v node >/dev/null || die "node not found: Node.js >= 20 with npm is needed"
command -v npm >/dev/null || die "npm not found: Node.js >= 20 with npm is needed"
major=$(node -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 20 ] || die "Node.js $(node --version) is too old: playwright-core 1.65 needs >= 20"
say "ok (node $(node --version), npm $(npm --version), $("${CHROMIUM_BIN:-/usr/bin/chromium}" --version 2>/dev/null | head -n1))"
