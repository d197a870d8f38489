#!/usr/bin/env bash
# Make sure PostgreSQL, Redis and Mosquitto accept connections on loopback. Each one that
# does not is started with the command this machine uses for it; where it is
# not installed and we are root on Debian, it is installed first.
set -u

log() { printf 'services: %s\n' "$*"; }

can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

apt_install() {
    if ! can_apt; then
        return 1
    fi
    if [ -z "${APT_UPDATED:-}" ]; then
        apt-get update -qq >/dev/null && APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() {
    local port=$1
    for _ in $(seq 1 30); do
        port_open "$port" && return 0
        sleep 0.5
    done
    return 1
}

ensure_postgres() {
    if port_open 5432; then
        return 0
    fi
    log "PostgreSQL is not answering on 127.0.0.1:5432; starting it"
    if ! command -v pg_ctlcluster >/dev/null 2>&1; then
        apt_install postgresql || { log "PostgreSQL is missing: install it (apt-get install postgresql) and start it"; return 1; }
    fi
    local version
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$version" ]; then
        log "no PostgreSQL cluster under /etc/postgresql; create one with pg_createcluster"
        return 1
    fi
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_for_port 5432 || { log "PostgreSQL did not start; see /var/log/postgresql/"; return 1; }
}

ensure_redis() {
    if port_open 6379; then
        return 0
    fi
    log "Redis is not answering on 127.0.0.1:6379; starting it"
    if ! command -v redis-server >/dev/null 2>&1; then
        apt_install redis-server || { log "Redis is missing: install it (apt-get install redis-server) and start it"; return 1; }
    fi
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_for_port 6379 || { log "Redis did not start; see /var/log/redis/ci.log"; return 1; }
}

ensure_mosquitto() {
    if port_open 1883; then
        return 0
    fi
    log "Mosquitto is not answering on 127.0.0.1:1883; starting it"
    if ! command -v mosquitto >/dev/null 2>&1; then
        apt_install mosquitto || { log "Mosquitto is missing: install it (apt-get install mosquitto) and start it"; return 1; }
    fi
    mosquitto -d -c /etc/mosquitto/mosquitto.conf
    wait_for_port 1883 || { log "Mosquitto did not start"; return 1; }
}

status=0
ensure_postgres || status=1
ensure_redis || status=1
ensure_mosquitto || status=1
[ "$status" = 0 ] && log "PostgreSQL, Redis and Mosquitto are answering on loopback"
exit "$status"
