#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers AMQP on 127.0.0.1:5672 (or $RABBIT_PORT).
#
# Also make sure Debian's rabbitmq-server is installed: the tests start extra
# nodes ("other machines") from /usr/lib/rabbitmq/bin/rabbitmq-server, so it is
# installed even when some other broker already answers on the port (then the
# package is installed without starting its service).
#
# Fast path (binary there and a broker answers): one probe, nothing changed, < 1 s.
# Otherwise: start it (or start_app if the Erlang node runs with the app
# stopped) and wait until it answers, for at most $RABBITMQ_START_TIMEOUT
# seconds (default 120). Idempotent. Uses sudo only when not root.
set -euo pipefail

HOST=127.0.0.1
PORT="${RABBIT_PORT:-5672}"
TIMEOUT="${RABBITMQ_START_TIMEOUT:-120}"

log() { printf 'ensure_rabbitmq: %s\n' "$*" >&2; }

# True when an AMQP 0-9-1 broker answers connection.start on HOST:PORT.
amqp_answers() {
    local py
    if [ -x /usr/bin/python3 ]; then py=/usr/bin/python3; else py="$(command -v python3 || true)"; fi
    if [ -n "$py" ]; then
        "$py" - "$HOST" "$PORT" <<'PY' 2>/dev/null
import socket, struct, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)
    s.settimeout(2)
    s.sendall(b"AMQP\x00\x00\x09\x01")
    data = b""
    while len(data) < 11:
        chunk = s.recv(11 - len(data))
        if not chunk:
            sys.exit(1)
        data += chunk
except OSError:
    sys.exit(1)
kind, channel, _, cls, meth = struct.unpack("!BHIHH", data)
sys.exit(0 if (kind, channel, cls, meth) == (1, 0, 10, 10) else 1)
PY
    else
        # no python: a TCP connect is the best we can do
        timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$PORT" 2>/dev/null
    fi
}

SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
answering=false
if amqp_answers; then answering=true; fi
if $answering && [ -x "$SERVER" ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    log "need root or sudo: $($answering || echo "no broker on $HOST:$PORT; ")$([ -x "$SERVER" ] || echo "$SERVER missing (the tests' extra nodes need it)")"
    $answering && exit 0  # the tests that need extra nodes skip (fail under CI), naming it
    exit 1
fi

if ! [ -x "$SERVER" ]; then
    log "installing Debian's rabbitmq-server"
    export DEBIAN_FRONTEND=noninteractive
    policy=/usr/sbin/policy-rc.d
    made_policy=false
    if $answering && ! [ -e "$policy" ]; then
        # another broker holds the port: install the package without starting its service
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod +x "$policy"
        made_policy=true
    fi
    "${SUDO[@]}" apt-get update -qq
    # the package's own start attempt may fail without an init system: we start it below
    "${SUDO[@]}" apt-get install -y -qq rabbitmq-server >/dev/null || true
    if $made_policy; then "${SUDO[@]}" rm -f "$policy"; fi
    [ -x "$SERVER" ] || { log "apt-get install rabbitmq-server failed"; exit 1; }
    # a fresh install: keep the broker on loopback, with a fixed node name
    if ! [ -e /etc/rabbitmq/rabbitmq.conf ]; then
        printf 'listeners.tcp.local = 127.0.0.1:%s\n' "$PORT" | "${SUDO[@]}" tee /etc/rabbitmq/rabbitmq.conf >/dev/null
    fi
    if ! grep -qs '^NODENAME=' /etc/rabbitmq/rabbitmq-env.conf; then
        printf 'NODENAME=rabbit@localhost\n' | "${SUDO[@]}" tee -a /etc/rabbitmq/rabbitmq-env.conf >/dev/null
    fi
    if $answering || amqp_answers; then
        log "rabbitmq-server installed; a broker answers on $HOST:$PORT"
        exit 0
    fi
fi

# The Erlang node may be up with the rabbit app stopped (rabbitmqctl stop_app).
if "${SUDO[@]}" timeout 30 rabbitmqctl -q ping >/dev/null 2>&1; then
    log "node is up but does not answer AMQP: start_app"
    "${SUDO[@]}" timeout 60 rabbitmqctl -q start_app >/dev/null 2>&1 || true
else
    log "starting rabbitmq-server"
    "${SUDO[@]}" rabbitmq-server -detached
fi

deadline=$(( $(date +%s) + TIMEOUT ))
until amqp_answers; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
        log "RabbitMQ did not answer on $HOST:$PORT within ${TIMEOUT}s; last log lines:"
        "${SUDO[@]}" sh -c 'tail -n 30 /var/log/rabbitmq/*.log' >&2 2>/dev/null || true
        exit 1
    fi
    sleep 0.2
done
log "RabbitMQ answers on $HOST:$PORT"
