#!/usr/bin/env bash
# Make the machine able to run `make test`: install the Debian packages of the binaries the
# integration tests drive (when root), and start the local PostgreSQL cluster if none answers.
set -euo pipefail

declare -A binary_of=( [postgresql]=pg_ctlcluster [prometheus]=prometheus [prometheus-alertmanager]=prometheus-alertmanager [chromium]=chromium [kubectl]=kubectl [btrfs-progs]=mkfs.btrfs [podman]=podman [buildah]=buildah [runc]=runc [debootstrap]=debootstrap )
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

# The container image test builds on a Debian base made here with debootstrap, because no container
# registry is reachable; podman keeps it, so only the first run pays (about a minute).
base_image=localhost/controlplane-base:bookworm
export CONTAINERS_CONF="$(cd "$(dirname "$0")" && pwd)/containers.conf"
if [ "$(id -u)" = 0 ] && command -v podman >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 \
    && ! podman image exists "$base_image"; then
  echo "test-deps: making the container base image $base_image with debootstrap"
  root=$(mktemp -d)
  log="$root.log"
  if debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" >"$log" 2>&1; then
    # What an image needs not: package caches and lists, documentation, translations.
    rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
      "$root"/usr/share/locale/*
    if tar -C "$root" -c . | podman import --message "debootstrap --variant=minbase bookworm + python3" \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$base_image" >>"$log" 2>&1; then
      rm -f "$log"
    else
      echo "test-deps: podman import failed (log: $log)" >&2
    fi
  else
    echo "test-deps: debootstrap failed (log: $log); the container image test fails under CI=true" >&2
    umount "$root/proc" "$root/sys" 2>/dev/null || true  # left mounted when it stops half-way
  fi
  rm -rf --one-file-system "$root"
fi
exit 0
