#!/usr/bin/env bash
# Installs what the browser tests need: Debian's Chromium (tests/eo_dataset/view/test_browse_pages.py drives it with
# Playwright from the `test` extra, launched with executable_path=/usr/bin/chromium). Never `playwright install`: it
# downloads a browser build from the internet. Idempotent: does nothing when chromium is already there. Run as root
# (CI is); without it the browser tests skip and say so.
set -euo pipefail

if ! dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q "install ok installed"; then
  echo "chromium.sh: installing chromium"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends chromium
fi
[ -x /usr/bin/chromium ] || { echo "chromium.sh: /usr/bin/chromium is missing after the install" >&2; exit 1; }
echo "chromium.sh: $(/usr/bin/chromium --version 2>/dev/null | head -1) ready"
