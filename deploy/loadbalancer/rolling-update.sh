#!/usr/bin/env bash
# Replace every classifier replica of the `scale` profile with one from the current compose
# configuration (a new CLASSIFIER_IMAGE, or the same tag rebuilt), one at a time, without failing
# a request: start one new replica, wait until Docker reports it healthy and the load balancer
# has had time to check it in, then stop one old replica (SIGTERM: it finishes what it holds; the
# load balancer retries anything it refuses). A new replica that never gets healthy is removed
# again and the old ones keep serving.
#
#   CLASSIFIER_IMAGE=image-classifier:v2 make rolling-update     (make passes COMPOSE and DOCKER)
set -euo pipefail

COMPOSE=${COMPOSE:-docker compose}
DOCKER=${DOCKER:-docker}
SERVICE=${SERVICE:-classifier-replica}
HEALTHY_TIMEOUT_S=${HEALTHY_TIMEOUT_S:-300}
# The load balancer needs two good checks a second apart (haproxy.cfg: inter 1s, rise 2) and a
# DNS refresh to see a new replica.
SETTLE_S=${SETTLE_S:-5}
STOP_TIMEOUT_S=${STOP_TIMEOUT_S:-70}  # above traffic.timeout (60 s): requests in flight finish

log() { echo "rolling-update: $*" >&2; }

replicas() { $COMPOSE ps -q "$SERVICE" | sort; }

wait_healthy() {  # wait_healthy <container id>
    local deadline=$((SECONDS + HEALTHY_TIMEOUT_S)) status
    while ((SECONDS < deadline)); do
        status=$($DOCKER inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$1")
        case $status in
            healthy) return 0 ;;
            none) log "$SERVICE has no healthcheck: cannot tell when a replica is ready"; return 1 ;;
        esac
        if [[ $($DOCKER inspect -f '{{.State.Running}}' "$1") != true ]]; then
            return 1
        fi
        sleep 2
    done
    return 1
}

mapfile -t old < <(replicas)
if ((${#old[@]} == 0)); then
    log "no running $SERVICE containers (is the scale profile up? COMPOSE_PROFILES=scale)"
    exit 1
fi
log "replacing ${#old[@]} replica(s) of $SERVICE"
for id in "${old[@]}"; do
    before=$(replicas)
    $COMPOSE up -d --no-deps --no-recreate --scale "$SERVICE=$((${#old[@]} + 1))" "$SERVICE" >&2
    new=$(comm -13 <(echo "$before") <(replicas))
    if [[ -z $new ]]; then
        log "compose started no new replica"
        exit 1
    fi
    if ! wait_healthy "$new"; then
        log "new replica ${new:0:12} did not get healthy within ${HEALTHY_TIMEOUT_S}s: removing it;" \
            "the old replicas keep serving ($DOCKER logs ${new:0:12} says why)"
        $DOCKER logs --tail 50 "$new" >&2 || true
        $DOCKER rm -f "$new" >/dev/null
        exit 1
    fi
    sleep "$SETTLE_S"
    log "new replica ${new:0:12} healthy; stopping old ${id:0:12}"
    $DOCKER stop -t "$STOP_TIMEOUT_S" "$id" >/dev/null
    $DOCKER rm "$id" >/dev/null
done
log "done: $(replicas | wc -l) replica(s), all from the current configuration"
