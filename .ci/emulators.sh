#!/usr/bin/env bash
# Installs the object-storage emulator that the cube tests start on 127.0.0.1 themselves: Azurite, the Azure Storage
# emulator (npm), for cubes at az:// URLs (tests/eo_dataset/cube/test_storage_azure.py; tests/servers.py starts it).
# S3 needs nothing here: moto's server comes from pip with the package's `test` extra. GCS has no emulator that
# icechunk's client works with (see docs/planet.md), so gs:// is not tested.
# Idempotent: does nothing when azurite-blob is already on PATH. Run as root (CI is): Node.js/npm from Debian when
# missing, Azurite installed globally (npm install -g).
set -euo pipefail

AZURITE_VERSION=3.35.0

if command -v azurite-blob >/dev/null; then
  echo "emulators.sh: Azurite ready ($(command -v azurite-blob))"
  exit 0
fi
if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
  echo "emulators.sh: installing Node.js and npm (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends nodejs npm
fi
echo "emulators.sh: installing azurite@${AZURITE_VERSION} (npm)"
npm install -g --no-audit --no-fund --loglevel=error "azurite@${AZURITE_VERSION}"
command -v azurite-blob >/dev/null \
  || { echo "emulators.sh: azurite-blob is not on PATH after npm install -g (npm prefix: $(npm prefix -g))" >&2; exit 1; }
echo "emulators.sh: Azurite ready ($(command -v azurite-blob))"
