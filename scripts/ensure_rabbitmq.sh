#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers AMQP on 127.0.0.1:5672 (or $RABBIT_PORT).
#
# Debian's rabbitmq-server is installed even when some other broker already
# answers on the port (then without starting its service): the tests start
# extra nodes ("other machines") from /usr/lib/rabbitmq/bin/rabbitmq-server.
#
# Fast path (a broker already answers, the binary is there): one probe, nothing
# changed, < 1 s. Otherwise: install Debian's rabbitmq-server if it is missing, then start it
# (or start_app if the Erlang node runs with the app stopped) and wait until it
# answers, for at most $RABBITMQ_START_TIMEOUT seconds (default 120).
# Then make sure the scout account exists (docs/security.md, "The scout
# account"): a login check over AMQP first (fast path, nothing changed); only
# when it is refused, `rabbitmqctl add_user` + `set_permissions` (publish to
# miros.scout.exchange only). $SCOUT_USER / $SCOUT_PASSWORD override the
# well-known miros_scout account. An existing user of that name with another
# password is left alone (reported).
# Idempotent. Uses sudo only when not root.
set -euo pipefail

HOST=127.0.0.1
PORT="${RABBIT_PORT:-5672}"
TIMEOUT="${RABBITMQ_START_TIMEOUT:-120}"
SCOUT_USER="${SCOUT_USER:-miros_scout}"
if [ "$SCOUT_USER" = miros_scout ]; then SCOUT_PASSWORD="${SCOUT_PASSWORD:-miros_scout}"; fi

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

# True when the broker takes SCOUT_USER's login on vhost / (AMQP PLAIN, then a clean close).
scout_logs_in() {
    local py
    if [ -x /usr/bin/python3 ]; then py=/usr/bin/python3; else py="$(command -v python3 || true)"; fi
    [ -n "$py" ] || return 1
    "$py" - "$HOST" "$PORT" "$SCOUT_USER" "${SCOUT_PASSWORD:-}" <<'PY' 2>/dev/null
import socket, struct, sys
host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def shortstr(t): b = t.encode(); return bytes([len(b)]) + b
def longstr(b): return struct.pack("!I", len(b)) + b
def frame(cls, meth, args):
    payload = struct.pack("!HH", cls, meth) + args
    return struct.pack("!BHI", 1, 0, len(payload)) + payload + b"\xce"
def method(s):
    head = b""
    while len(head) < 7:
        chunk = s.recv(7 - len(head))
        if not chunk:
            raise OSError("closed")
        head += chunk
    kind, _, size = struct.unpack("!BHI", head)
    body = b""
    while len(body) < size + 1:
        chunk = s.recv(size + 1 - len(body))
        if not chunk:
            raise OSError("closed")
        body += chunk
    return struct.unpack("!HH", body[:4]) if kind == 1 else (0, 0)
try:
    s = socket.create_connection((host, port), timeout=3)
    s.sendall(b"AMQP\x00\x00\x09\x01")
    assert method(s) == (10, 10)  # start
    s.sendall(frame(10, 11, struct.pack("!I", 0) + shortstr("PLAIN")
                    + longstr(b"\x00" + user.encode() + b"\x00" + password.encode())
                    + shortstr("en_US")))
    assert method(s) == (10, 30)  # tune: the login was taken
    s.sendall(frame(10, 31, struct.pack("!HIH", 1, 131072, 0)))
    s.sendall(frame(10, 40, shortstr("/") + shortstr("") + b"\x00"))
    assert method(s) == (10, 41)  # open-ok: vhost / is allowed
    s.sendall(frame(10, 50, struct.pack("!H", 200) + shortstr("") + struct.pack("!HH", 0, 0)))
    method(s)  # close-ok
except (OSError, AssertionError, struct.error):
    sys.exit(1)
PY
}

ensure_scout_account() {
    if scout_logs_in; then
        return 0
    fi
    if [ -z "${SCOUT_PASSWORD:-}" ]; then
        log "SCOUT_USER=$SCOUT_USER does not log in here and SCOUT_PASSWORD is not set: not created"
        return 0
    fi
    local out
    if out="$("${SUDO[@]}" timeout 60 rabbitmqctl -q add_user "$SCOUT_USER" "$SCOUT_PASSWORD" 2>&1)"; then
        log "created the scout account $SCOUT_USER"
    elif grep -qi "already exists" <<<"$out"; then
        log "the scout account $SCOUT_USER exists with another password or without vhost /: left as is (see docs/security.md)"
    else
        log "could not create the scout account $SCOUT_USER (scouts will be refused here): $out"
        return 0
    fi
    "${SUDO[@]}" timeout 60 rabbitmqctl -q set_permissions -p / "$SCOUT_USER" \
        '^$' '^miros\.scout\.exchange$' '^$' >/dev/null 2>&1 \
        || log "could not set the permissions of $SCOUT_USER"
}

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -n)
else
    SUDO=(false)  # nothing to run rabbitmqctl with: reported by the steps that need it
fi

SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
if amqp_answers; then
    if ! [ -x "$SERVER" ]; then
        if [ "${SUDO[0]:-}" = false ]; then
            log "$SERVER missing (the tests' extra nodes need it) and neither root nor sudo to install it"
        else
            log "installing Debian's rabbitmq-server (for the tests' extra nodes; its service is not started)"
            export DEBIAN_FRONTEND=noninteractive
            policy=/usr/sbin/policy-rc.d
            made_policy=false
            if ! [ -e "$policy" ]; then  # another broker holds the port: do not start the service
                printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
                "${SUDO[@]}" chmod +x "$policy"
                made_policy=true
            fi
            "${SUDO[@]}" apt-get update -qq
            "${SUDO[@]}" apt-get install -y -qq rabbitmq-server >/dev/null || true
            if $made_policy; then "${SUDO[@]}" rm -f "$policy"; fi
            [ -x "$SERVER" ] || log "apt-get install rabbitmq-server failed"
        fi
    fi
    ensure_scout_account
    exit 0
fi

if [ "${SUDO[0]:-}" = false ]; then
    log "no broker on $HOST:$PORT, and neither root nor sudo to start one"
    exit 1
fi

if ! [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
    log "installing Debian's rabbitmq-server"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq
    # the package's own start attempt may fail without an init system: we start it below
    "${SUDO[@]}" apt-get install -y -qq rabbitmq-server >/dev/null || {
        [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || { log "apt-get install rabbitmq-server failed"; exit 1; }
    }
    # a fresh install: keep the broker on loopback, with a fixed node name
    if ! [ -e /etc/rabbitmq/rabbitmq.conf ]; then
        printf 'listeners.tcp.local = 127.0.0.1:%s\n' "$PORT" | "${SUDO[@]}" tee /etc/rabbitmq/rabbitmq.conf >/dev/null
    fi
    if ! grep -qs '^NODENAME=' /etc/rabbitmq/rabbitmq-env.conf; then
        printf 'NODENAME=rabbit@localhost\n' | "${SUDO[@]}" tee -a /etc/rabbitmq/rabbitmq-env.conf >/dev/null
    fi
    if amqp_answers; then
        log "rabbitmq-server installed and running"
        ensure_scout_account
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
ensure_scout_account
