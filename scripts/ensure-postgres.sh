#!/usr/bin/env bash
# Makes sure PostgreSQL's server binaries (initdb, pg_ctl) are installed for the test suite.
# Idempotent: does nothing when /usr/lib/postgresql/*/bin/initdb exists. Installs Debian's package as root
# without creating or starting the default cluster (the tests start their own throwaway cluster).
set -euo pipefail

have_postgres() { compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; }

if have_postgres; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "PostgreSQL server binaries not found (no initdb under /usr/lib/postgresql/*/bin)." >&2
    echo "Install them as root, e.g.: sudo apt-get install -y postgresql" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# No 'main' cluster on port 5432: the tests only need the binaries.
mkdir -p /etc/postgresql-common
if ! grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf; then
    echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf
fi
apt-get update
apt-get install -y --no-install-recommends -o Dpkg::Options::=--force-confold postgresql

if ! have_postgres; then
    echo "postgresql was installed but no initdb is under /usr/lib/postgresql/*/bin" >&2
    exit 1
fi
