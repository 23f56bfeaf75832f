#!/usr/bin/env bash
# A one-machine HTCondor pool (HTCondor 23.9 from Debian trixie, apptainer 1.4
# from Debian sid) in a privileged podman container on the host network, to run
# the pilot the way EWMS runs it. Run as root.
#
#   bash scripts/htcondor-pool.sh up        build the rootfs once (cached), start the pool,
#                                           wait until its slot is up (idempotent)
#   bash scripts/htcondor-pool.sh down      stop and remove the pool container
#   bash scripts/htcondor-pool.sh status    exit 0 and "up: ..." when the slot is up, else 1
#   bash scripts/htcondor-pool.sh submit    the demo (examples/htcondor/demo.py): 12 events on
#                                           RabbitMQ 127.0.0.1, one pilot job (pilot.sub, container
#                                           universe), its chirp status from condor_q as it runs
#   bash scripts/htcondor-pool.sh exec CMD  run CMD inside the pool container (e.g. condor_q)
#
# Cache (outside the repo, reused by every clone): $EWMS_POOL_CACHE, default
# /var/cache/ewms-pilot-test: rootfs-<hash of the recipe below>/ and the task
# sandbox converted from the test image. Shared job dir (same path inside and
# outside the pool): $EWMS_POOL_WORK, default /var/lib/ewms-pilot-pool/work.
# The repo that ran `up` is mounted read-only at /opt/ewms-pilot-src; jobs run
# its code with /usr/local/bin/ewms-pilot (the deps live in /opt/ewms-pilot).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${EWMS_POOL_CACHE:-/var/cache/ewms-pilot-test}"
WORK="${EWMS_POOL_WORK:-/var/lib/ewms-pilot-pool/work}"
SITE="${EWMS_POOL_SITE:-/var/lib/ewms-pilot-pool/site}" # read-only in jobs, like site data
NAME="${EWMS_POOL_NAME:-ewms-htcondor-pool}"
MIRROR="${EWMS_POOL_MIRROR:-http://deb.debian.org/debian}"
CA_BUNDLE="${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"
SUBMITTER="ewms" # the ordinary user jobs are submitted as (uid 1500)
UP_TIMEOUT="${EWMS_POOL_UP_TIMEOUT:-120}"
TEST_IMAGE="${EWMS_TEST_IMAGE:-localhost/ewms-pilot-test:bookworm}"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
if [[ -z "${CONTAINERS_CONF:-}" && -f "$REPO/.test-env/containers.conf" ]]; then
    # shellcheck source=scripts/env.sh
    . "$REPO/scripts/env.sh" # this host's podman settings (runc, cgroupfs)
fi

say() { echo "htcondor-pool: $*" >&2; }
die() {
    echo "htcondor-pool: ERROR: $*" >&2
    exit 1
}

# ---------------------------------------------------------------- the pool's config
# Written into the rootfs at every `up` (not part of the cache key); a running
# pool with another config is restarted.
CONDOR_CONFIG_LOCAL='# written by scripts/htcondor-pool.sh
use ROLE: Personal
CONDOR_HOST = 127.0.0.1
NETWORK_INTERFACE = 127.0.0.1
USE_SHARED_PORT = False
# the pool container has no room for per-job /tmp mounts or pid namespaces
MOUNT_UNDER_SCRATCH =
USE_PID_NAMESPACES = False
# one machine, one slot per core; match (and rematch an evicted job) fast
NEGOTIATOR_INTERVAL = 2
NEGOTIATOR_MIN_INTERVAL = 1
SCHEDD_INTERVAL = 2
STARTER_UPDATE_INTERVAL = 2
UPDATE_INTERVAL = 5
# 4 one-core pilots at once on a 2-core machine: pilots mostly wait on brokers
NUM_CPUS = 4
START = TRUE
SUSPEND = FALSE
PREEMPT = FALSE
KILL = FALSE
# condor_vacate_job gives the job this long between SIGTERM and SIGKILL (tests set
# job_max_vacate_time lower than the pilot grace to check the pilot obeys it)
MachineMaxVacateTime = 60
UID_DOMAIN = ewms-pilot-pool
TRUST_UID_DOMAIN = True
SOFT_UID_DOMAIN = True
SEC_DEFAULT_AUTHENTICATION_METHODS = FS
# container-universe jobs see the cache read-only, as jobs at a site see /cvmfs
# (the task sandbox the pilot runs its tasks from lives there), and a site data dir
SINGULARITY_BIND_EXPR = "'"$CACHE:$CACHE:ro,$SITE:$SITE:ro"'"
ALLOW_WRITE = *
ALLOW_READ = *
'

# ---------------------------------------------------------------- the recipe
# Everything that shapes the rootfs is hashed into its cache key (recipe_hash):
# change it and the next `up` builds a new rootfs.
trixie_with_apptainer() { # DIR [PACKAGE...]: debootstrap trixie + apptainer from sid (+ PACKAGEs from trixie)
    local dir="$1"
    shift
    debootstrap --variant=minbase \
        --include=ca-certificates,python3,python3-venv,procps,tini \
        trixie "$dir" "$MIRROR"
    cat >"$dir/etc/apt/sources.list" <<EOF
deb $MIRROR trixie main
deb $MIRROR sid main
EOF
    # sid only for what is asked for by name (-t sid); its Release file reads as
    # expired against some clocks, hence Check-Valid-Until=false
    cat >"$dir/etc/apt/preferences.d/sid" <<'EOF'
Package: *
Pin: release n=sid
Pin-Priority: 100
EOF
    podman run --rm --network=host --rootfs "$dir" /bin/bash -euc '
        export DEBIAN_FRONTEND=noninteractive
        apt-get -o Acquire::Check-Valid-Until=false update -qq
        if (($#)); then apt-get install -y -qq --no-install-recommends "$@" >/dev/null; fi
        apt-get -o Acquire::Check-Valid-Until=false install -y -qq --no-install-recommends \
            -t sid apptainer >/dev/null
        apt-get clean
        rm -rf /var/lib/apt/lists/*
        apptainer --version' bash "$@"
}

build_rootfs() { # DIR: the pool: condor from trixie, apptainer from sid, a venv for the pilot's deps
    local dir="$1"
    trixie_with_apptainer "$dir" condor
    cp "$CA_BUNDLE" "$dir/etc/ssl/certs/host-ca-bundle.crt"
    podman run --rm --network=host --rootfs "$dir" /bin/bash -euc '
        useradd --uid 1500 --create-home --shell /bin/bash '"$SUBMITTER"'
        python3 -m venv /opt/ewms-pilot
        for d in /var/lib/condor/execute /var/lib/condor/spool /var/log/condor \
                 /var/run/condor /var/lock/condor; do
            mkdir -p "$d"; chown condor:condor "$d"
        done
        condor_version | head -1'
    # the pilot's code: the repo mounted at /opt/ewms-pilot-src (deps in the venv), laid
    # out as in the pilot image (/opt/ewms-pilot, the entrypoint, `ewms-pilot` on PATH)
    local site
    site="$(echo "$dir"/opt/ewms-pilot/lib/python3*/site-packages)"
    echo /opt/ewms-pilot-src >"$site/ewms-pilot-src.pth"
    printf '#!/bin/sh\nexec /opt/ewms-pilot/bin/python3 -m ewms_pilot "$@"\n' \
        >"$dir/usr/local/bin/ewms-pilot"
    chmod 0755 "$dir/usr/local/bin/ewms-pilot"
    ln -s /opt/ewms-pilot-src/container/entrypoint.sh "$dir/usr/local/bin/ewms-pilot-entrypoint"
}

recipe_hash() {
    { declare -f trixie_with_apptainer "$@"; printf '%s\n' "$MIRROR" "$SUBMITTER"; } |
        sha256sum | cut -c1-16
}

ROOTFS="$CACHE/rootfs-$(recipe_hash build_rootfs)"

build_pilot_base() { # DIR: what the apptainer-flavour pilot image is built FROM
    local dir="$1"
    trixie_with_apptainer "$dir"
    # the image build's own apt (container/install-system.sh) sees trixie only;
    # apptainer stays installed
    echo "deb $MIRROR trixie main" >"$dir/etc/apt/sources.list"
    rm -f "$dir/etc/apt/preferences.d/sid"
}

PILOT_BASE="localhost/ewms-pilot-base:trixie-apptainer-$(recipe_hash build_pilot_base)"
PILOT_TAG="localhost/ewms-pilot:apptainer-trixie"

# The apptainer-flavour pilot image (scripts/build-image.sh apptainer, on a trixie
# base: apptainer needs glibc >= 2.38) as a sandbox, the way a site has it
# unpacked on CVMFS: $CACHE/pilot-sandbox-<image id>, printed by `pilot-image`.
ensure_pilot_sandbox() {
    if ! podman image exists "$PILOT_BASE"; then
        local tmp="$CACHE/pilot-base.partial"
        rm -rf "$tmp"
        mkdir -p "$tmp"
        say "building the pilot image's base $PILOT_BASE (once; log: $CACHE/build.log)"
        build_pilot_base "$tmp" >>"$CACHE/build.log" 2>&1 || die "pilot base build failed, see $CACHE/build.log"
        tar -C "$tmp" -c . | podman import --quiet - "$PILOT_BASE" >/dev/null || die "podman import failed"
        rm -rf "$tmp"
    fi
    local id dir
    bash "$REPO/scripts/build-image.sh" apptainer --base "$PILOT_BASE" --tag "$PILOT_TAG" \
        >/dev/null 2>>"$CACHE/build.log" || die "scripts/build-image.sh apptainer failed, see $CACHE/build.log"
    id="$(podman image inspect --format '{{.Id}}' "$PILOT_TAG")"
    dir="$CACHE/pilot-sandbox-${id:0:16}"
    if [[ ! -f "$dir/.singularity.d/runscript" ]]; then
        say "converting $PILOT_TAG to the apptainer sandbox $dir"
        rm -rf "$dir" "$dir.tar"
        podman save --quiet --format docker-archive -o "$dir.tar" "$PILOT_TAG" || die "podman save $PILOT_TAG failed"
        pool_exec apptainer --quiet build --fix-perms --sandbox "$dir" "docker-archive:$dir.tar" \
            >>"$CACHE/build.log" 2>&1 || die "apptainer build of $dir failed, see $CACHE/build.log"
        rm -f "$dir.tar"
        local old # earlier builds of the pilot (each code change makes one)
        for old in "$CACHE"/pilot-sandbox-*; do
            [[ "$old" == "$dir" ]] || rm -rf "$old"
        done
    fi
    echo "$dir"
}

ensure_rootfs() {
    mkdir -p "$CACHE"
    exec 8>"$CACHE/.build.lock"
    flock -w 1800 8 || die "another build has held $CACHE/.build.lock for 30 min"
    if [[ ! -f "$ROOTFS/.complete" ]]; then
        command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"
        local tmp="$ROOTFS.partial"
        rm -rf "$tmp"
        mkdir -p "$tmp"
        say "building the pool rootfs in $ROOTFS (once, a few minutes; log: $CACHE/build.log)"
        if ! build_rootfs "$tmp" >"$CACHE/build.log" 2>&1; then
            tail -n 20 "$CACHE/build.log" >&2
            die "rootfs build failed, see $CACHE/build.log"
        fi
        touch "$tmp/.complete"
        mv "$tmp" "$ROOTFS"
        local old # rootfs of earlier recipes (a running pool keeps its files until `down`)
        for old in "$CACHE"/rootfs-*; do
            [[ "$old" == "$ROOTFS" ]] || rm -rf "$old"
        done
    fi
    ensure_deps
    flock -u 8
}

# The pilot's dependencies (from setup.cfg: they change more often than the
# rootfs), reinstalled into the rootfs's venv only when setup.cfg changed.
ensure_deps() {
    local want have
    want="$(sha256sum <"$REPO/setup.cfg" | cut -c1-16)"
    have="$(cat "$ROOTFS/opt/ewms-pilot/.deps" 2>/dev/null || true)"
    [[ "$want" == "$have" ]] && return 0
    say "installing the pilot's dependencies into the pool rootfs (setup.cfg changed)"
    rm -rf "$ROOTFS/tmp/ewms-pilot-src"
    mkdir -p "$ROOTFS/tmp/ewms-pilot-src"
    cp "$REPO/setup.cfg" "$REPO/pyproject.toml" "$ROOTFS/tmp/ewms-pilot-src/"
    touch "$ROOTFS/tmp/ewms-pilot-src/README.md"
    podman run --rm --network=host --rootfs "$ROOTFS" /bin/bash -euc '
        export PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt PIP_DISABLE_PIP_VERSION_CHECK=1
        /opt/ewms-pilot/bin/pip install -q "/tmp/ewms-pilot-src[rabbitmq,nats]"
        /opt/ewms-pilot/bin/pip uninstall -q -y ewms-pilot
        rm -rf /tmp/ewms-pilot-src' >>"$CACHE/build.log" 2>&1 ||
        die "pip install of the pilot's dependencies failed, see $CACHE/build.log"
    echo "$want" >"$ROOTFS/opt/ewms-pilot/.deps"
}

# ---------------------------------------------------------------- the pool
running() { [[ "$(podman inspect --format '{{.State.Running}}' "$NAME" 2>/dev/null)" == true ]]; }
pool_exec() { podman exec "$NAME" "$@"; }

slot_up() { # the startd advertises a slot to the collector
    local n
    n="$(pool_exec condor_status -af Name 2>/dev/null | wc -l)" || return 1
    ((n > 0))
}

cmd_up() {
    ensure_rootfs
    local conf="$ROOTFS/etc/condor/config.d/99-ewms-pilot-pool.conf"
    [[ "$(cat "$conf" 2>/dev/null)" == "$CONDOR_CONFIG_LOCAL" ]] || printf '%s' "$CONDOR_CONFIG_LOCAL" >"$conf"
    local label want_label
    want_label="$REPO|$ROOTFS|$(printf '%s' "$CONDOR_CONFIG_LOCAL" | sha256sum | cut -c1-16)"
    if running; then
        label="$(podman inspect --format '{{ index .Config.Labels "org.ewms-pilot.pool" }}' "$NAME")"
        if [[ "$label" != "$want_label" ]]; then
            say "the running pool was started for another repo/rootfs/config ($label); restarting it"
            cmd_down
        fi
    fi
    if ! running; then
        podman rm -f "$NAME" >/dev/null 2>&1 || true
        mkdir -p "$WORK" "$SITE" && chmod 1777 "$WORK" && chmod 0755 "$SITE"
        grep -qw "$(hostname)" "$ROOTFS/etc/hosts" 2>/dev/null ||
            echo "127.0.0.1 $(hostname)" >>"$ROOTFS/etc/hosts"
        # stale daemon state of a previous run (pids, addresses, jobs of another pool)
        rm -rf "$ROOTFS"/var/run/condor/* "$ROOTFS"/var/lock/condor/* \
            "$ROOTFS"/var/lib/condor/execute/* "$ROOTFS"/var/lib/condor/spool/*
        say "starting $NAME"
        podman run -d --name "$NAME" --privileged --network=host \
            --label "org.ewms-pilot.pool=$want_label" \
            -v "$REPO:/opt/ewms-pilot-src:ro" \
            -v "$WORK:$WORK" \
            -v "$SITE:$SITE" \
            -v "$CACHE:$CACHE" \
            --rootfs "$ROOTFS" condor_master -f >/dev/null ||
            die "podman run of the pool container failed"
    fi
    ensure_task_sandbox
    local deadline=$((SECONDS + UP_TIMEOUT))
    until slot_up; do
        running || die "the pool container exited: $(podman logs --tail 20 "$NAME" 2>&1)"
        ((SECONDS < deadline)) || die "no slot in condor_status after ${UP_TIMEOUT}s" \
            "(logs: podman exec $NAME tail /var/log/condor/StartLog)"
        sleep 1
    done
    cmd_status
}

# The test image ($EWMS_TEST_IMAGE, made by scripts/test-env.sh) as an apptainer
# sandbox, the shape of an unpacked image on CVMFS: $CACHE/task-sandbox-<image id>,
# also printed by `sandbox`.
task_sandbox_path() {
    local id
    id="$(podman image inspect --format '{{.Id}}' "$TEST_IMAGE" 2>/dev/null)" ||
        die "podman image $TEST_IMAGE is missing (run bash scripts/test-env.sh)"
    echo "$CACHE/task-sandbox-${id:0:16}"
}

ensure_task_sandbox() {
    local dir
    dir="$(task_sandbox_path)"
    [[ -f "$dir/.singularity.d/runscript" ]] && return 0
    say "converting $TEST_IMAGE to the apptainer sandbox $dir"
    rm -rf "$dir" "$dir.tar"
    podman save --quiet --format docker-archive -o "$dir.tar" "$TEST_IMAGE" ||
        die "podman save $TEST_IMAGE failed"
    pool_exec apptainer --quiet build --fix-perms --sandbox "$dir" "docker-archive:$dir.tar" \
        >>"$CACHE/build.log" 2>&1 || die "apptainer build of $dir failed, see $CACHE/build.log"
    rm -f "$dir.tar"
}

cmd_down() {
    podman rm -f -t 10 "$NAME" >/dev/null 2>&1 || true
    say "$NAME stopped"
}

cmd_status() {
    if ! running; then
        echo "down: no running container $NAME"
        return 1
    fi
    if ! slot_up; then
        echo "starting: $NAME runs but no slot is advertised yet"
        return 1
    fi
    echo "up: $(pool_exec condor_status -af Name State Activity HasSingularity | tr '\n' ';')" \
        "($(pool_exec condor_version | head -1))"
}

cmd_submit() { # the demo: 12 events through one pilot job in the container universe, chirp on
    cmd_up >/dev/null
    local pilot_image task_image
    pilot_image="$(ensure_pilot_sandbox)"
    task_image="$(task_sandbox_path)"
    pool_exec su "$SUBMITTER" -c "$(printf '%q ' /opt/ewms-pilot/bin/python3 \
        /opt/ewms-pilot-src/examples/htcondor/demo.py --pilot-image "$pilot_image" \
        --task-image "$task_image" --work "$WORK" "$@")"
}

[[ "$(id -u)" == 0 ]] || die "must run as root (debootstrap, privileged podman container)"
case "${1:-}" in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
submit) shift; cmd_submit "$@" ;;
exec) shift; pool_exec "$@" ;;
rootfs) ensure_rootfs; echo "$ROOTFS" ;;
sandbox) task_sandbox_path ;;
pilot-image) running || die "the pool is not running (up first)"; ensure_pilot_sandbox ;;
*) sed -n '2,20s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
esac
