#!/usr/bin/env bash
# Replace every classifier replica of the `scale` profile with one from the current compose
# configuration (a new CLASSIFIER_IMAGE, or the same tag rebuilt), one at a time, without failing
# a request: start one new replica, wait until Docker reports it healthy and the load balancer
# has it up (its stats page, when reachable), then stop one old replica (SIGTERM: it finishes
# what it holds; the load balancer retries anything it refuses). A new replica that never gets
# healthy is removed again and the old ones keep serving.
#
#   CLASSIFIER_IMAGE=image-classifier:v2 make rolling-update     (make passes COMPOSE and DOCKER)
#
# Put the new CLASSIFIER_IMAGE in .env as well: a later `docker compose up -d` recreates the
# replicas from whatever the configuration then says.
set -euo pipefail

COMPOSE=${COMPOSE:-docker compose}
DOCKER=${DOCKER:-docker}
SERVICE=${SERVICE:-classifier-replica}
HEALTHY_TIMEOUT_S=${HEALTHY_TIMEOUT_S:-300}
LB_STATS_URL=${LB_STATS_URL:-http://127.0.0.1:${LB_STATS_PORT:-8404}/stats;csv}
# Without the stats page: the load balancer needs a DNS refresh and two good checks a second
# apart (haproxy.cfg: inter 1s, rise 2) to take a new replica in.
SETTLE_S=${SETTLE_S:-5}
STOP_TIMEOUT_S=${STOP_TIMEOUT_S:-70}  # above traffic.timeout (60 s): requests in flight finish
# The replicas belong to the scale profile, whatever .env starts by default.
export COMPOSE_PROFILES=scale

log() { echo "rolling-update: $*" >&2; }

running() { $COMPOSE ps -q "$SERVICE" | sort; }
every() { $COMPOSE ps -a -q "$SERVICE" | sort; }

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

lb_servers_up() {  # replicas the load balancer has UP; fails if its stats page is unreachable
    command -v curl >/dev/null || return 1
    curl -fsS --max-time 2 "$LB_STATS_URL" 2>/dev/null |
        awk -F, '$1 == "replicas" && $2 != "BACKEND" && $18 ~ /^UP/ { n++ } END { print n + 0 }'
}

wait_taken_in() {  # wait_taken_in <replicas expected up>
    local up deadline=$((SECONDS + 60))
    if ! up=$(lb_servers_up); then
        sleep "$SETTLE_S"  # no stats page here: give the checks their time
        return 0
    fi
    while ((up < $1)); do
        if ((SECONDS > deadline)); then
            log "the load balancer has $up of $1 replicas up after 60 s (see $LB_STATS_URL)"
            return 1
        fi
        sleep 0.5
        up=$(lb_servers_up)
    done
}

mapfile -t old < <(running)
if ((${#old[@]} == 0)); then
    log "no running $SERVICE containers: is the scale profile up (COMPOSE_PROFILES=scale)?"
    exit 1
fi
if [[ $(every) != "$(running)" ]]; then
    # compose --scale would restart a stopped old replica instead of creating a new one.
    log "some $SERVICE containers are stopped: start them (docker compose start $SERVICE) or" \
        "remove them (docker compose rm -f $SERVICE) first"
    exit 1
fi
log "replacing ${#old[@]} replica(s) of $SERVICE"
done_count=0
for id in "${old[@]}"; do
    before=$(every)
    $COMPOSE up -d --no-deps --no-recreate --scale "$SERVICE=$((${#old[@]} + 1))" "$SERVICE" >&2
    mapfile -t new < <(comm -13 <(echo "$before") <(every))
    if ((${#new[@]} != 1)); then
        log "expected one new replica, compose started ${#new[@]}: stopping here"
        exit 1
    fi
    if ! wait_healthy "${new[0]}" || ! wait_taken_in $((${#old[@]} + 1)); then
        log "new replica ${new[0]:0:12} did not get healthy within ${HEALTHY_TIMEOUT_S}s:" \
            "removing it; the other replicas keep serving ($done_count of ${#old[@]} replaced;" \
            "its last log lines follow)"
        $DOCKER logs --tail 50 "${new[0]}" >&2 || true
        $DOCKER rm -f "${new[0]}" >/dev/null
        exit 1
    fi
    log "new replica ${new[0]:0:12} healthy and taken in; stopping old ${id:0:12}"
    $DOCKER stop -t "$STOP_TIMEOUT_S" "$id" >/dev/null
    $DOCKER rm "$id" >/dev/null
    done_count=$((done_count + 1))
done
log "done: $(running | wc -l) replica(s), all from the current configuration"
