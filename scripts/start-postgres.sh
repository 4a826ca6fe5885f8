#!/usr/bin/env bash
# Start a local PostgreSQL for the store tests and print its URL on stdout (everything else goes to
# stderr, so `export IBRNET_TEST_POSTGRES_URL="$(scripts/start-postgres.sh)"` works).
#
# Idempotent: installs PostgreSQL from Debian's packages only when it is missing, creates a cluster
# only when there is none, starts it only when it is down, and creates (or re-passwords) the role and
# database. Meant for root on a Debian 12 machine or container (CI, a fresh VM); exits non-zero with a
# message saying what went wrong otherwise.
#
# Settings (environment): IBRNET_PG_USER, IBRNET_PG_PASSWORD, IBRNET_PG_DATABASE (default: ibrnet).
set -euo pipefail

PG_USER="${IBRNET_PG_USER:-ibrnet}"
PG_PASSWORD="${IBRNET_PG_PASSWORD:-ibrnet}"
PG_DATABASE="${IBRNET_PG_DATABASE:-ibrnet}"
READY_TIMEOUT_S=30

log() { echo "start-postgres: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The names go into SQL and the password into a URL: refuse anything that would need quoting.
[[ "$PG_USER" =~ ^[a-z_][a-z0-9_]*$ ]] || die "IBRNET_PG_USER must match [a-z_][a-z0-9_]*, got '$PG_USER'"
[[ "$PG_DATABASE" =~ ^[a-z_][a-z0-9_]*$ ]] || die "IBRNET_PG_DATABASE must match [a-z_][a-z0-9_]*, got '$PG_DATABASE'"
[[ "$PG_PASSWORD" =~ ^[A-Za-z0-9._~-]+$ ]] || die "IBRNET_PG_PASSWORD must match [A-Za-z0-9._~-]+ (URL-safe)"

if [[ "$(id -u)" -eq 0 ]]; then
    as_root() { "$@"; }
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root() { sudo -n "$@"; }
else
    die "must run as root (or with passwordless sudo) to install and start PostgreSQL"
fi

if ! command -v pg_ctlcluster >/dev/null || ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
    command -v apt-get >/dev/null || die "PostgreSQL is not installed and apt-get is missing (not Debian?)"
    log "installing PostgreSQL from Debian's packages"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 \
        || die "apt-get update failed (no network or broken sources?)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2 \
        || die "apt-get install postgresql failed"
fi

# The newest installed major version; Debian 12 ships 15.
PG_VERSION="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)"
[[ -n "$PG_VERSION" ]] || die "no PostgreSQL server found under /usr/lib/postgresql"

# Packages normally create the "main" cluster; some images disable that (create_main_cluster = false).
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$PG_VERSION main"; then
    log "creating cluster $PG_VERSION/main"
    as_root pg_createcluster "$PG_VERSION" main >&2 || die "pg_createcluster $PG_VERSION main failed"
fi

if ! as_root pg_ctlcluster "$PG_VERSION" main status >/dev/null 2>&1; then
    log "starting cluster $PG_VERSION/main"
    as_root pg_ctlcluster "$PG_VERSION" main start >&2 \
        || die "could not start cluster $PG_VERSION/main (see /var/log/postgresql/postgresql-$PG_VERSION-main.log)"
fi

PG_PORT="$(pg_lsclusters -h | awk -v v="$PG_VERSION" '$1 == v && $2 == "main" {print $3}')"
for _ in $(seq "$READY_TIMEOUT_S"); do
    pg_isready -q -h 127.0.0.1 -p "$PG_PORT" && break
    sleep 1
done
pg_isready -q -h 127.0.0.1 -p "$PG_PORT" || die "PostgreSQL did not accept connections on 127.0.0.1:$PG_PORT within ${READY_TIMEOUT_S}s"

# psql only interpolates :'var' / :"var" in scripts read from stdin, not in -c.
run_sql() { as_root runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" \
    -v user="$PG_USER" -v password="$PG_PASSWORD" -v database="$PG_DATABASE" "$@"; }

# CREATEDB lets the tests make throwaway databases; the password is reset on every run so a rerun
# with a new IBRNET_PG_PASSWORD takes effect.
run_sql >&2 <<'SQL' || die "could not create role/database"
SELECT format('CREATE ROLE %I LOGIN CREATEDB', :'user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'user') \gexec
ALTER ROLE :"user" WITH LOGIN CREATEDB PASSWORD :'password';
SELECT format('CREATE DATABASE %I OWNER %I', :'database', :'user')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'database') \gexec
SQL

URL="postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DATABASE"
psql -X -q -d "$URL" -c 'SELECT 1' >/dev/null || die "cannot log in as $PG_USER over TCP ($URL)"
log "PostgreSQL $PG_VERSION is ready"
echo "$URL"
