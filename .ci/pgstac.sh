#!/usr/bin/env bash
# Installs what the real STAC API tests need: PostgreSQL 15 with PostGIS 3 (Debian packages) for pgstac.
# Idempotent: does nothing when the packages are already there. The tests (tests/eo_dataset/sources/test_stac_api.py) start their own
# throwaway cluster on 127.0.0.1, load pgstac with pypgstac and serve it with `rustac serve --pgstac`; rustac and
# pypgstac[psycopg] come from pip with the package's `test` extra. Run as root (CI is).
set -euo pipefail

pkgs=(postgresql-15 postgresql-15-postgis-3)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "pgstac.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  # the Debian package starts a system cluster on port 5432; the tests do not use it
  if command -v pg_ctlcluster >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q "^15 *main .* online"; then
    pg_ctlcluster 15 main stop || true
  fi
fi

bindir=/usr/lib/postgresql/15/bin
for tool in initdb pg_ctl postgres; do
  [ -x "$bindir/$tool" ] || { echo "pgstac.sh: $bindir/$tool is missing after the install" >&2; exit 1; }
done
[ -f /usr/share/postgresql/15/extension/postgis.control ] \
  || { echo "pgstac.sh: PostGIS is missing (/usr/share/postgresql/15/extension/postgis.control)" >&2; exit 1; }
echo "pgstac.sh: PostgreSQL 15 + PostGIS ready ($bindir)"
