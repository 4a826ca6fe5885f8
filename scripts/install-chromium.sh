#!/usr/bin/env bash
# Install Debian's Chromium for the page's browser tests (tests/web) and print its path on stdout
# (everything else goes to stderr, so `export IBRNET_TEST_CHROMIUM="$(scripts/install-chromium.sh)"`
# works). Idempotent: installs only when /usr/bin/chromium is missing. Needs root (CI, a fresh VM).
#
# Debian's package, not a browser download: test tools' own browser downloads (`playwright
# install`) need hosts that CI cannot reach; Playwright drives this executable instead.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

log() { echo "install-chromium: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [[ ! -x "$CHROMIUM" ]]; then
    [[ "$(id -u)" -eq 0 ]] || die "Chromium is missing and installing it needs root"
    command -v apt-get >/dev/null || die "Chromium is missing and apt-get is missing (not Debian?)"
    log "installing chromium from Debian's packages"
    env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
    env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2 \
        || die "apt-get install chromium failed"
fi
"$CHROMIUM" --version >&2 || die "$CHROMIUM does not run"
echo "$CHROMIUM"
