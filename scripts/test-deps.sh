#!/usr/bin/env bash
# Make the machine able to run `make test`: install the Debian packages of the binaries the
# integration tests drive (when root), and start the local PostgreSQL cluster if none answers.
set -euo pipefail

declare -A binary_of=( [postgresql]=pg_ctlcluster [prometheus]=prometheus [prometheus-alertmanager]=prometheus-alertmanager [chromium]=chromium [kubectl]=kubectl [btrfs-progs]=mkfs.btrfs )
missing=()
for pkg in "${!binary_of[@]}"; do
  command -v "${binary_of[$pkg]}" >/dev/null 2>&1 || missing+=("$pkg")
done

if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "test-deps: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "test-deps: missing Debian packages: ${missing[*]} (run as root or install them; tests that need them fail under CI=true)" >&2
  fi
fi

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if command -v pg_isready >/dev/null 2>&1 && ! pg_up; then
  if [ "$(id -u)" = 0 ] && command -v pg_lsclusters >/dev/null 2>&1; then
    pg_lsclusters --no-header | while read -r version cluster _; do
      echo "test-deps: starting PostgreSQL cluster $version/$cluster"
      pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start || true
    done
    for _ in $(seq 1 30); do pg_up && break; sleep 1; done
  fi
  pg_up || echo "test-deps: PostgreSQL does not answer on 127.0.0.1:5432" >&2
fi
if pg_up && [ "$(id -u)" = 0 ] && ! psql -h 127.0.0.1 -U postgres -d test -Atc 'select 1' >/dev/null 2>&1; then
  echo "test-deps: creating database test"
  su postgres -c "createdb test" || true
fi
exit 0
