#!/usr/bin/env bash
# Build the Dockerfile's `cpu` image and prove that it serves: /health answers, a /predict answers,
# the container's user is not root, the image's own HEALTHCHECK passes, and with
# IBRNET_DATABASE_URL pointing at a PostgreSQL the same prediction comes back `cached: true` after
# the container restarts. `.ci/run` runs it after `make test`; `make container-check` runs it here.
#
# No Docker engine and no image registry are needed: Debian's podman + runc build and run the image
# (as root), and the Python base image is bootstrapped from Debian's own packages with debootstrap
# (bookworm, Python 3.11, the host's CA bundle so pip trusts what the host trusts), then passed as
# --build-arg PYTHON_IMAGE. The base is built once and kept in podman's store.
#
# Settings (environment): IBRNET_CONTAINER_PORT (default 8000: the image's HEALTHCHECK asks
# 127.0.0.1:8000, and the container shares the host's network), IBRNET_CONTAINER_DB (default
# ibrnet_container: dropped and recreated, so the first prediction is a cache miss).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PORT="${IBRNET_CONTAINER_PORT:-8000}"
DATABASE="${IBRNET_CONTAINER_DB:-ibrnet_container}"
IMAGE=localhost/ibrnet-service:cpu
BASE=localhost/ibrnet-python:3.11-bookworm
NAME="ibrnet-container-check-$$"
WORK="$(mktemp -d)"
FORMULA=Fe2O3
MIRROR="${IBRNET_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

log() { echo "container-check: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
step() { log "--- $*"; }

[[ "$(id -u)" -eq 0 ]] || die "must run as root (podman builds and runs the image as root here)"
[[ "$DATABASE" =~ ^[a-z_][a-z0-9_]*$ ]] || die "IBRNET_CONTAINER_DB must match [a-z_][a-z0-9_]*"

missing=()
for tool in podman buildah runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
    step "installing ${missing[*]} from Debian's packages"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        podman buildah runc debootstrap uidmap >&2 || die "apt-get install podman buildah runc debootstrap failed"
fi

# Inside a CI container podman can set neither rlimits nor a pids cgroup; systemd is not there either.
cat >"$WORK/containers.conf" <<'CONF'
[containers]
default_ulimits = []
pids_limit = 0
CONF
export CONTAINERS_CONF="$WORK/containers.conf"
pod() { podman --runtime runc --cgroup-manager cgroupfs "$@"; }
# run/restart: podman 4.3 still asks systemd to schedule health checks and logs an error per try
# when there is none (the checks are run by hand below); only those lines are dropped.
pod_quiet() { pod "$@" 2> >(grep -v 'unable to get systemd connection' >&2); }

cleanup() {
    pod rm -f -t 5 "$NAME" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

if ! pod image exists "$BASE"; then
    step "bootstrapping the Python base image $BASE (debootstrap bookworm minbase)"
    started=$SECONDS
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
    ln -sf python3 "$WORK/rootfs/usr/bin/python"
    ln -sf pip3 "$WORK/rootfs/usr/bin/pip"
    cp /etc/ssl/certs/ca-certificates.crt "$WORK/rootfs/etc/ssl/certs/ca-certificates.crt"
    rm -f "$WORK"/rootfs/usr/lib/python3*/EXTERNALLY-MANAGED  # pip into the image's venv and build stage
    rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
    tar -C "$WORK/rootfs" -c . | pod import --change 'CMD ["python3"]' - "$BASE" >"$WORK/import.log" 2>&1 \
        || { cat "$WORK/import.log" >&2; die "podman import of the base image failed"; }
    rm -rf "$WORK/rootfs"
    log "base image ready in $((SECONDS - started)) s"
fi

step "building $IMAGE (target cpu)"
started=$SECONDS
# --format docker keeps the HEALTHCHECK (the OCI image format has no field for it).
pod build --format docker --network host --target cpu --build-arg "PYTHON_IMAGE=$BASE" \
    -t "$IMAGE" . >"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log" >&2; die "the image did not build"; }
log "built in $((SECONDS - started)) s: $(pod image inspect --format '{{.Id}}' "$IMAGE" | cut -c1-12)," \
    "$(pod image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}')"

step "a fresh PostgreSQL database for the container's cache: $DATABASE"
# Started first (it may be down after a reboot), then the database dropped and made again: the first
# prediction must be a miss.
bash scripts/start-postgres.sh >/dev/null || die "PostgreSQL did not start"
runuser -u postgres -- dropdb --if-exists "$DATABASE" || die "could not drop the old $DATABASE database"
DB_URL="$(IBRNET_PG_DATABASE="$DATABASE" bash scripts/start-postgres.sh)" || die "PostgreSQL did not start"
[[ -n "$DB_URL" ]] || die "start-postgres.sh printed no URL"

if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    die "port $PORT is taken; the container shares the host's network (set IBRNET_CONTAINER_PORT)"
fi

step "starting the container (PostgreSQL cache)"
# --health-interval disable: no systemd here to schedule the checks; `podman healthcheck run` below
# runs the image's HEALTHCHECK command itself.
pod_quiet run -d --name "$NAME" --network host --health-interval disable \
    -e IBRNET_DATABASE_URL="$DB_URL" \
    "$IMAGE" ibrnet serve --host 127.0.0.1 --port "$PORT" >/dev/null

BASE_URL="http://127.0.0.1:$PORT"
wait_healthy() {
    for _ in $(seq 120); do
        if curl -fsS -o /dev/null "$BASE_URL/health" 2>/dev/null; then return 0; fi
        [[ "$(pod inspect --format '{{.State.Running}}' "$NAME")" == true ]] \
            || { pod logs "$NAME" >&2; die "the container exited"; }
        sleep 1
    done
    pod logs "$NAME" >&2
    die "/health did not answer within 120 s"
}
predict() {
    curl -fsS -X POST "$BASE_URL/predict" -H 'Content-Type: application/json' \
        -d "{\"formula\": \"$FORMULA\"}" || { pod logs --tail 30 "$NAME" >&2; die "POST /predict failed"; }
}
# Every property's "cached" flag of one /predict answer, e.g. "false false false".
cached_flags() { python3 -c 'import json, sys
answer = json.load(sys.stdin)
print(" ".join(str(p["cached"]).lower() for p in answer["predictions"].values()))'; }

wait_healthy
log "GET /health: $(curl -fsS "$BASE_URL/health")"

first="$(predict)"
log "POST /predict $FORMULA: $first"
[[ "$(cached_flags <<<"$first")" =~ ^(false ?)+$ ]] || die "the first prediction should be computed, not cached"

user="$(pod exec "$NAME" id -u)"
log "the container's user: uid $user ($(pod exec "$NAME" id -un 2>/dev/null || echo unnamed))"
[[ "$user" != 0 ]] || die "the container runs as root"

health_cmd="$(pod inspect --format '{{json .Config.Healthcheck.Test}}' "$NAME" 2>/dev/null \
    || pod image inspect --format '{{json .HealthCheck.Test}}' "$IMAGE")"
log "HEALTHCHECK: $health_cmd"
[[ "$health_cmd" == *healthcheck.py* ]] || die "the image has no HEALTHCHECK (built without --format docker?)"
if [[ "$PORT" == 8000 ]]; then
    pod healthcheck run "$NAME" >&2 || die "the image's HEALTHCHECK command failed"
    log "podman healthcheck run: healthy"
else  # the HEALTHCHECK asks port 8000; run the same command against this port
    pod exec "$NAME" python /opt/ibrnet/healthcheck.py "$BASE_URL/health" || die "the health check failed"
    log "healthcheck.py against port $PORT: healthy"
fi

step "restarting the container"
pod_quiet restart -t 10 "$NAME" >/dev/null
wait_healthy
second="$(predict)"
log "POST /predict $FORMULA after the restart: $second"
[[ "$(cached_flags <<<"$second")" =~ ^(true ?)+$ ]] || die "after a restart the prediction should come from PostgreSQL"
python3 - "$first" "$second" <<'PY' || die "the cached answer differs from the computed one"
import json, sys
first, second = (json.loads(a)["predictions"] for a in sys.argv[1:])
for name in first:
    assert first[name]["value"] == second[name]["value"], name
    assert first[name]["version"] == second[name]["version"], name
PY
log "OK: built, started, answered, not root, healthy, and cached: true after a restart (same values)"
