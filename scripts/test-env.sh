#!/usr/bin/env bash
# Prepare everything the test suite talks to for real: RabbitMQ, NATS JetStream,
# podman (with a config that works on this host's hybrid cgroups) and a tiny
# Debian image with python3 for task containers.
# Idempotent and quick when all is already in place; run as root.
#
# Self-healing, because runs get killed and the brokers are shared: a RabbitMQ
# that accepts TCP but completes no AMQP login (seen with ~300 leftover quorum
# queues) is restarted (never wiped: it is shared; the error says how to);
# a policy expires test queues nobody used for TEST_QUEUE_IDLE_MS, and test
# streams on NATS older than TEST_STREAM_MAX_AGE s are deleted, so queues of a
# killed run never pile up (the session fixtures delete them on a normal end).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_DIR="$REPO/.test-env"
CONF="$ENV_DIR/containers.conf"
IMAGE="localhost/ewms-pilot-test:bookworm"
SUITE="bookworm"
WAIT_SECONDS="${EWMS_TEST_ENV_WAIT:-90}"
# Names of the queues tests create (tests/conftest.py `queue_name`: t + 16 hex;
# tests/faults/conftest.py `new_queue`: f + 12 hex; both with suffixes; NATS
# streams are `<name>-stream`); tests/test_environment.py checks the policy reaches
# them and that the NATS sweep uses this pattern. The pool demo's queues
# (examples/htcondor/demo.py: demo-<8 hex>-in/-out) get their own, long expiry: a
# demo whose job sits idle in the pool for a while must not lose its events.
TEST_QUEUE_RE='^(t[0-9a-f]{16}|f[0-9a-f]{12})'
TEST_QUEUE_IDLE_MS=600000 # 10 min unused: no test waits that long (pytest timeout 300 s)
DEMO_QUEUE_RE='^demo-[0-9a-f]{8}-'
DEMO_QUEUE_IDLE_MS=604800000 # 7 days unused
TEST_STREAM_MAX_AGE=1800  # s
VPY="$REPO/.venv/bin/python" # pika and nats-py for the checks (scripts/test.sh makes it first)
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

say() { echo "test-env: $*" >&2; }
die() {
    echo "test-env: ERROR: $*" >&2
    exit 1
}

[[ "$(id -u)" == 0 ]] || die "must run as root (installs packages, starts brokers, builds a podman image)"
command -v python3 >/dev/null || die "python3 is needed for the broker probes"

mkdir -p "$ENV_DIR"
# Serialise concurrent runs (several engineers/CI clones may call this at once: the
# brokers and the image are the machine's, so the lock is too).
LOCK="${EWMS_TEST_ENV_LOCK:-/tmp/ewms-test-env.lock}"
exec 9>"$LOCK"
flock -w 900 9 || die "another scripts/test-env.sh has held $LOCK for 15 min"

# ---------------------------------------------------------------- packages
PACKAGES=(rabbitmq-server nats-server podman runc debootstrap)
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" </dev/null >/dev/null
fi
for exe in rabbitmq-server rabbitmq-diagnostics nats-server podman runc debootstrap; do
    command -v "$exe" >/dev/null || die "$exe not found on PATH after install"
done

# ---------------------------------------------------------------- brokers
# probe KIND PORT -> exit 0: answers; 1: nothing listening / wrong protocol;
# 3: NATS answers but JetStream is off.
probe() {
    python3 - "$1" "$2" <<'PY'
import json, socket, sys

kind, port = sys.argv[1], int(sys.argv[2])
try:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.settimeout(3)
        if kind == "amqp":
            # protocol header -> the broker must answer with Connection.Start
            # (method frame on channel 0, class 10, method 10)
            s.sendall(b"AMQP\x00\x00\x09\x01")
            buf = b""
            while len(buf) < 11:
                chunk = s.recv(64)
                if not chunk:
                    break
                buf += chunk
            sys.exit(0 if buf[:1] == b"\x01" and buf[7:11] == b"\x00\x0a\x00\x0a" else 1)
        # NATS greets every client with one `INFO {json}` line
        buf = b""
        while b"\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                sys.exit(1)
            buf += chunk
        line = buf.split(b"\r\n", 1)[0]
        if not line.startswith(b"INFO "):
            sys.exit(1)
        sys.exit(0 if json.loads(line[5:]).get("jetstream") else 3)
except OSError:
    sys.exit(1)
PY
}

listening() { # port -> true when something accepts TCP on 127.0.0.1:port
    python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2).close()' "$1" 2>/dev/null
}

answers_within() { # kind port seconds -> 0 once the probe answers, 1 when it never did
    local kind="$1" port="$2" rc deadline=$((SECONDS + $3))
    while :; do
        rc=0
        probe "$kind" "$port" || rc=$?
        case "$rc" in
        0) return 0 ;;
        3) die "a NATS server on 127.0.0.1:$port runs WITHOUT JetStream; stop it and rerun this script (it starts nats-server with -js)" ;;
        esac
        ((SECONDS < deadline)) || return 1
        sleep 1
    done
}

wait_for() { # kind port name
    answers_within "$1" "$2" "$WAIT_SECONDS" || die "$3 did not answer on 127.0.0.1:$2 within ${WAIT_SECONDS}s"
}

if ! listening 5672; then
    say "starting RabbitMQ"
    # a node that is still booting makes this fail; wait_for below decides
    rabbitmq-server -detached </dev/null >/dev/null 2>&1 9>&- || say "rabbitmq-server -detached failed (a node may already be booting; see /var/log/rabbitmq/)"
fi
if ! listening 4222; then
    say "starting NATS JetStream"
    mkdir -p /var/lib/nats-server
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
        -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log 9>&- \
        || die "could not start nats-server (see /var/log/nats-server.log)"
fi
wait_for nats 4222 "NATS JetStream"

# ---------------------------------------------------------------- broker health
clients=0
[[ -x "$VPY" ]] && "$VPY" -c 'import pika, nats' 2>/dev/null && clients=1
have_clients() { ((clients)); }

amqp_login() { # one real login + channel open (guest/guest) within 10 s
    "$VPY" "$REPO/scripts/broker_checks.py" amqp-login 127.0.0.1 5672 10
}

amqp_login_within() { # SECONDS: log in, retrying until it works or SECONDS passed
    local deadline=$((SECONDS + $1))
    until amqp_login 2>/dev/null; do
        ((SECONDS < deadline)) || return 1
        sleep 2
    done
}

rabbitmq_stop() { # stop the node; kill it when it does not answer (a hung node)
    timeout 60 rabbitmqctl stop >/dev/null 2>&1 && return 0
    local pidfile pid
    for pidfile in /var/lib/rabbitmq/mnesia/*.pid; do
        pid="$(cat "$pidfile" 2>/dev/null || true)"
        if [[ -n "$pid" && "$(cat "/proc/$pid/comm" 2>/dev/null || true)" == beam.smp ]]; then
            say "rabbitmqctl stop did not work: killing the node (pid $pid)"
            kill -KILL "$pid" 2>/dev/null || true
            while [[ -e "/proc/$pid" ]]; do sleep 0.5; done
        fi
    done
}

rabbitmq_start() {
    rabbitmq-server -detached </dev/null >/dev/null 2>&1 9>&- || true
}

rabbitmq_usable() { # SECONDS: answers AMQP, and (with the clients) a login completes
    answers_within amqp 5672 "$1" || return 1
    ! have_clients || amqp_login_within "$1"
}

# a node that was just started (above) gets WAIT_SECONDS to boot
if ! rabbitmq_usable "$WAIT_SECONDS"; then
    have_clients && { amqp_login || true; } # its reason, once
    say "RabbitMQ on 127.0.0.1:5672 is not usable (accepts TCP, no AMQP login within ${WAIT_SECONDS}s): restarting it"
    rabbitmq_stop
    rabbitmq_start
    # never wiped automatically: the broker is shared, its data dir holds every
    # queue (other engineers' and demos' too, not only test queues)
    rabbitmq_usable "$WAIT_SECONDS" || die "RabbitMQ is still not usable after a restart (see /var/log/rabbitmq/).
  If its data must go (this drops EVERY queue on the machine's broker, ask the others first):
    rabbitmqctl stop; mv /var/lib/rabbitmq/mnesia /var/lib/rabbitmq/mnesia.broken-\$(date +%s); rerun this script"
fi
rabbitmqctl set_policy --apply-to queues ewms-test-queues "$TEST_QUEUE_RE" \
    "{\"expires\": $TEST_QUEUE_IDLE_MS}" >/dev/null || die "rabbitmqctl set_policy failed"
rabbitmqctl set_policy --apply-to queues ewms-demo-queues "$DEMO_QUEUE_RE" \
    "{\"expires\": $DEMO_QUEUE_IDLE_MS}" >/dev/null || die "rabbitmqctl set_policy failed"
if have_clients; then
    swept="$("$VPY" "$REPO/scripts/broker_checks.py" sweep-nats nats://127.0.0.1:4222 \
        "$TEST_QUEUE_RE.*-stream\$" "$TEST_STREAM_MAX_AGE")" || die "could not sweep leftover NATS test streams"
    ((swept == 0)) || say "deleted $swept leftover NATS test stream(s) older than ${TEST_STREAM_MAX_AGE}s"
else
    say "no $VPY with pika and nats-py yet: no AMQP login check, no sweep of leftover NATS test streams"
fi

# ---------------------------------------------------------------- podman
# crun fails on this host's hybrid cgroup layout; runc + cgroupfs work, and
# the default ulimits cannot be raised inside the sandbox.
conf_text='# written by scripts/test-env.sh
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
'
if [[ ! -f "$CONF" ]] || [[ "$(cat "$CONF")" != "${conf_text%$'\n'}" ]]; then
    printf '%s' "$conf_text" >"$CONF"
fi
export CONTAINERS_CONF="$CONF"

debian_mirror() { # first URI that serves $SUITE in the machine's apt sources
    python3 - "$SUITE" <<'PY'
import glob, re, sys

suite = sys.argv[1]
for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError:
        continue
    for line in lines:
        m = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
        if m and m.group(2) == suite:
            print(m.group(1)); sys.exit(0)
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    text = open(path, encoding="utf-8").read()
    for stanza in re.split(r"\n\s*\n", text):
        fields = {}
        for line in stanza.splitlines():
            m = re.match(r"([A-Za-z-]+):\s*(.*)", line)
            if m:
                fields[m.group(1).lower()] = m.group(2).split()
        if "deb" in fields.get("types", []) and suite in fields.get("suites", []) \
                and fields.get("enabled", ["yes"]) != ["no"] and fields.get("uris"):
            print(fields["uris"][0]); sys.exit(0)
sys.exit(1)
PY
}

if ! podman image exists "$IMAGE"; then
    mirror="$(debian_mirror)" || die "no 'deb ... $SUITE' source in /etc/apt/sources.list{,.d/*} to debootstrap from"
    rootfs="$ENV_DIR/cache/rootfs-$SUITE"
    rm -rf "$rootfs"
    mkdir -p "$rootfs"
    say "building $IMAGE with debootstrap from $mirror (takes a few minutes, once)"
    debootstrap --variant=minbase --include=python3-minimal "$SUITE" "$rootfs" "$mirror" \
        >"$ENV_DIR/debootstrap.log" 2>&1 || die "debootstrap failed, see $ENV_DIR/debootstrap.log"
    tar -C "$rootfs" -c . | podman import --quiet - "$IMAGE" >/dev/null || die "podman import failed"
    rm -rf "$rootfs"
fi
out="$(podman run --rm "$IMAGE" python3 -c 'print(1)' 2>&1)" || die "podman run of $IMAGE failed: $out"
[[ "$out" == 1 ]] || die "podman run of $IMAGE printed '$out' instead of '1'"

say "ready: RabbitMQ 127.0.0.1:5672, NATS JetStream 127.0.0.1:4222, podman image $IMAGE"
echo "export CONTAINERS_CONF=$CONF EWMS_TEST_IMAGE=$IMAGE   # or: . scripts/env.sh"
