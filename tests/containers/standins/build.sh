#!/usr/bin/env bash
# Test harness only: build local stand-ins for the upstream images the project's bentofile/compose
# use, from Debian packages, because no container registry is reachable on the CI machines.
# Each is tagged with the upstream name so the real service.py IMAGE and docker-compose.yml run
# unchanged. An image already built from the same stand-in files (label = their hash) is kept.
# An image under one of these tags that is NOT a stand-in (a real upstream image on a developer's
# engine) is never replaced: the script stops and says so. Use a private engine for the tests
# (`.ci/docker-engine start`), or STANDINS_REPLACE=1 to replace them anyway.
#
#   tests/containers/standins/build.sh        (DOCKER_HOST must point at a running engine)
set -euo pipefail
cd "$(dirname "$0")"
DOCKER=${DOCKER:-/usr/bin/docker}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
LABEL=org.image-classifier.test-standin

have() {  # have <image> <label value>: true if our stand-in with that label is there
    local current
    if ! current=$($DOCKER image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null); then
        return 1  # no image under that tag
    fi
    if [[ -z $current && -z ${STANDINS_REPLACE:-} ]]; then
        echo "$1 exists on this engine and is not a test stand-in: not replacing it." >&2
        echo "Run the container tests on a private engine (.ci/docker-engine start)." >&2
        exit 1
    fi
    [[ $current == "$2" ]]
}
content_hash() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16; }

build_base() {
    have debian:bookworm-slim debootstrap && return
    local root
    root=$(mktemp -d /var/tmp/standin-rootfs.XXXXXX)
    debootstrap --variant=minbase bookworm "$root" "$MIRROR" >/dev/null
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    # The same mirror inside, so apt-get in later builds uses what this machine reaches.
    echo "deb $MIRROR bookworm main" >"$root/etc/apt/sources.list"
    tar -C "$root" -c . | $DOCKER import \
        --change "LABEL $LABEL=debootstrap" --change 'CMD ["bash"]' - debian:bookworm-slim >/dev/null
    rm -rf "$root"
    echo "built debian:bookworm-slim (debootstrap)"
}

build_standin() {  # build_standin <dir> <upstream tag>
    local hash
    hash=$(content_hash "$1")
    have "$2" "$hash" && return
    $DOCKER build --network host --label "$LABEL=$hash" -t "$2" "$1" >/dev/null
    echo "built $2 (stand-in from Debian packages)"
}

build_base
build_standin python python:3.11-slim
build_standin postgres postgres:15-bookworm
build_standin prometheus prom/prometheus:v2.53.4
build_standin nginx nginx:1.27-bookworm
build_standin haproxy haproxy:2.6-bookworm
