#!/usr/bin/env bash
# Entrypoint of the ewms-pilot image (installed as /usr/local/bin/ewms-pilot-entrypoint).
#
#   ewms-pilot-entrypoint            -> run the pilot (banner first)
#   ewms-pilot-entrypoint ARGS...    -> `ewms-pilot ARGS...` (e.g. `config --list`), no banner
#
# 1. Sources ./ewms_htcondor_envfile.sh when present (EWMS/HTCondor ship the
#    pilot's EWMS_PILOT_* settings in it), exporting every variable it sets.
# 2. Prints a banner and the effective configuration with every secret masked
#    (`ewms-pilot config --check`; never `env`). The pilot itself picks the data
#    dir (under HTCondor with no EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST: the
#    job's scratch dir) and checks it can write there (exit 2 if not).
# 3. Runs the pilot. process/podman/apptainer flavours: `exec`, so signals go
#    straight to the pilot. docker flavour: starts dockerd (unless a docker
#    daemon already answers, e.g. a mounted socket), runs the pilot as a child,
#    forwards SIGTERM/SIGINT to it, and stops dockerd after the pilot exits.
#
# Exit code: the pilot's (README, "Exit codes"); 2 when the configuration is
# invalid, the flavour's container tool is missing or dockerd does not start;
# 6 when stopped by a signal before the pilot ran.
#
# Knobs of the docker flavour (not pilot settings, so not EWMS_PILOT_*):
#   EWMS_DOCKERD_ARGS           extra dockerd arguments, split on whitespace
#   EWMS_DOCKERD_START_TIMEOUT  seconds to wait for dockerd to answer (default 60)
#   EWMS_DOCKERD_STOP_TIMEOUT   seconds dockerd gets to stop before SIGKILL (default 20)
#   EWMS_DOCKERD_LOG            dockerd's log file (default /var/log/ewms-dockerd.log)
set -euo pipefail

readonly ENVFILE_NAME="ewms_htcondor_envfile.sh"
readonly EXIT_CONFIG=2 EXIT_EVICTED=6
export PATH="/opt/ewms-pilot/bin:$PATH" # a site's PATH must not hide the pilot

say() { echo "ewms-pilot-entrypoint: $*" >&2; }

source_envfile() {
    local envfile="$PWD/$ENVFILE_NAME"
    [[ -f "$envfile" ]] || return 0
    say "sourcing $envfile"
    set +u -a # the file may use unset variables; plain NAME=value lines are exported
    # EWMS's task-management service writes `set -x` into the file: its trace
    # (every `export`, broker tokens included) goes to /dev/null, not the job's stderr
    local trace_fd rc=0
    exec {trace_fd}>/dev/null
    BASH_XTRACEFD=$trace_fd
    # shellcheck disable=SC1090
    . "$envfile" || rc=$?
    { set +x; } 2>/dev/null
    unset BASH_XTRACEFD # (closes trace_fd)
    if ((rc)); then
        say "$envfile failed (its last command returned non-zero)"
        exit "$EXIT_CONFIG"
    fi
    set -u +a
}

platform() { # as the pilot reads it: current name first, then the 1.x name; trimmed, lower case
    local p="${EWMS_PILOT_CONTAINER_PLATFORM-${_EWMS_PILOT_CONTAINER_PLATFORM-}}"
    p="${p//[[:space:]]/}"
    p="${p,,}"
    echo "${p:-docker}"
}

banner() {
    local line
    {
        echo "==================== ewms-pilot ===================="
        echo "pilot:     $(ewms-pilot --version)"
        echo "platform:  $(platform)"
        echo "python:    $(python3 -c 'import sys; print(sys.version.split()[0], sys.executable)')"
        echo "kernel:    $(uname -srm)"
        echo "host:      $(uname -n)"
        echo "workdir:   $PWD"
        echo "---------- effective configuration (secrets masked) ----------"
    } >&2
    # prints every EWMS_PILOT_* value with tokens and URL passwords masked; exits 2
    # (after one line saying what is wrong) when the configuration is invalid
    if ! line="$(ewms-pilot config --check)"; then
        exit "$EXIT_CONFIG"
    fi
    printf '%s\n' "$line" "=====================================================" >&2
}

require_tool() {
    local platform
    platform="$(platform)"
    case "$platform" in
    docker | podman | apptainer)
        if ! command -v "$platform" >/dev/null; then
            say "EWMS_PILOT_CONTAINER_PLATFORM=$platform but '$platform' is not on PATH in this image" \
                "(build the '$platform' flavour, or provide $platform on PATH)"
            exit "$EXIT_CONFIG"
        fi
        ;;
    esac
}

# ------------------------------------------------------------------ docker flavour
dockerd_pid=""
pilot_pid=""
got_signal=""

on_signal() { # forward to the pilot; before it runs, remember and stop
    got_signal="$1"
    if [[ -n "$pilot_pid" ]]; then
        kill -s "$1" "$pilot_pid" 2>/dev/null || true
    fi
}

stop_dockerd() {
    [[ -n "$dockerd_pid" ]] || return 0
    local deadline=$((SECONDS + ${EWMS_DOCKERD_STOP_TIMEOUT:-20}))
    kill -s TERM "$dockerd_pid" 2>/dev/null || true
    while kill -0 "$dockerd_pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if kill -0 "$dockerd_pid" 2>/dev/null; then
        say "dockerd did not stop within ${EWMS_DOCKERD_STOP_TIMEOUT:-20}s; killing it"
        kill -s KILL "$dockerd_pid" 2>/dev/null || true
    fi
    wait "$dockerd_pid" 2>/dev/null || true
    dockerd_pid=""
    say "dockerd stopped"
}

start_dockerd() {
    if docker info >/dev/null 2>&1; then
        say "a docker daemon already answers (${DOCKER_HOST:-/var/run/docker.sock}); not starting dockerd"
        return 0
    fi
    local log="${EWMS_DOCKERD_LOG:-/var/log/ewms-dockerd.log}"
    local wait_s="${EWMS_DOCKERD_START_TIMEOUT:-60}"
    local -a extra=()
    read -r -a extra <<<"${EWMS_DOCKERD_ARGS:-}"
    say "starting dockerd ${extra[*]} (log: $log)"
    dockerd "${extra[@]}" >"$log" 2>&1 &
    dockerd_pid=$!
    local deadline=$((SECONDS + wait_s))
    until docker info >/dev/null 2>&1; do
        if [[ -n "$got_signal" ]]; then
            say "got SIG$got_signal while starting dockerd"
            stop_dockerd
            exit "$EXIT_EVICTED"
        fi
        if ! kill -0 "$dockerd_pid" 2>/dev/null; then
            wait "$dockerd_pid" 2>/dev/null || true
            dockerd_pid=""
            say "dockerd exited during start-up (is the container --privileged?); last lines of $log:"
            tail -n 15 "$log" >&2 || true
            exit "$EXIT_CONFIG"
        fi
        if ((SECONDS >= deadline)); then
            say "dockerd did not answer within ${wait_s}s; last lines of $log:"
            tail -n 15 "$log" >&2 || true
            stop_dockerd
            exit "$EXIT_CONFIG"
        fi
        sleep 0.5
    done
    say "dockerd is up"
}

run_supervised() { # the pilot as a child: signals forwarded, dockerd stopped after it
    if [[ -n "$got_signal" ]]; then
        say "got SIG$got_signal before the pilot started"
        stop_dockerd
        exit "$EXIT_EVICTED"
    fi
    python3 -m ewms_pilot "$@" &
    pilot_pid=$!
    local status
    while :; do
        got_signal=""
        status=0
        wait "$pilot_pid" || status=$?
        # `wait` returns early (>128) when a trapped signal arrives; wait again
        if [[ -n "$got_signal" ]] && kill -0 "$pilot_pid" 2>/dev/null; then
            continue
        fi
        if [[ -n "$got_signal" ]] && ((status > 128)); then
            local again=0
            wait "$pilot_pid" 2>/dev/null || again=$?
            ((again == 127)) || status=$again # 127: its status was already collected
        fi
        break
    done
    pilot_pid=""
    stop_dockerd
    exit "$status"
}

# ------------------------------------------------------------------ main
source_envfile
if (($#)) && [[ "$1" != run ]]; then
    exec python3 -m ewms_pilot "$@"
fi

banner
require_tool

if [[ "$(platform)" == docker ]] && command -v dockerd >/dev/null; then
    trap 'on_signal TERM' TERM
    trap 'on_signal INT' INT
    start_dockerd
    run_supervised "$@"
fi
exec python3 -m ewms_pilot "$@"
