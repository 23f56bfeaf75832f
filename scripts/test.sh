#!/usr/bin/env bash
# The one test command (README, CI): venv + deps, test environment, ruff, mypy,
# pytest. Arguments go to pytest, e.g. `bash scripts/test.sh tests/test_x.py -k foo`.
# Every step runs even if an earlier check failed, so one run shows all problems;
# the exit status is non-zero if any step failed (pytest's "no tests ran" too).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

# ---------------------------------------------------------------- venv
pick_python() {
    local py
    for py in python3 python3.13 python3.12 python3.11; do
        if command -v "$py" >/dev/null &&
            "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$py"
            return 0
        fi
    done
    return 1
}
if [[ ! -x .venv/bin/python ]]; then
    py="$(pick_python)" || {
        echo "test.sh: need python >= 3.11 (python3/python3.1x) to create .venv" >&2
        exit 1
    }
    step "creating .venv with $py"
    "$py" -m venv .venv
fi
PY=.venv/bin/python

# Reinstall only when the packaging metadata changed (or the install is broken):
# `pip install -e` costs several seconds even when nothing is to do.
stamp=.venv/.ewms-pilot-test-install
want="$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]] ||
    ! "$PY" - <<'PY' 2>/dev/null; then
# installed (without importing ewms_pilot: a half-written module must not force a reinstall)
import importlib.metadata, importlib.util, sys
importlib.metadata.version("ewms-pilot")
mods = ["mqclient", "pika", "nats", "pytest", "pytest_asyncio", "pytest_timeout", "mypy", "ruff"]
sys.exit(any(importlib.util.find_spec(m) is None for m in mods))
PY
    step "pip install -e '.[test]'"
    "$PY" -m pip install -q --disable-pip-version-check -e '.[test]'
    echo "$want" >"$stamp"
fi

# ---------------------------------------------------------------- checkout access
# Some tests run the pilot as another user (`nobody`, and the HTCondor pool's job
# user, which sees this checkout through a bind mount). A clone into a `mktemp -d`
# directory is 0700: then nobody else can reach the code. Grant the least that is
# needed: read on the checkout's root, traverse (not list) on its ancestors.
here="$(pwd -P)"
if [[ "$(id -u)" == 0 ]]; then
    [[ -n "$(find "$here" -maxdepth 0 -perm -o=rx)" ]] || { chmod o+rx "$here"; echo "test.sh: made $here readable by other users (tests run code as nobody)" >&2; }
    d="$(dirname "$here")"
    while [[ "$d" != / ]]; do
        [[ -n "$(find "$d" -maxdepth 0 -perm -o=x)" ]] || { chmod o+x "$d"; echo "test.sh: made $d traversable by other users" >&2; }
        d="$(dirname "$d")"
    done
fi

# ---------------------------------------------------------------- services
step "test environment (scripts/test-env.sh)"
bash scripts/test-env.sh >/dev/null
# shellcheck source=scripts/env.sh
. scripts/env.sh

# The HTCondor pool for tests/htcondor (cached rootfs: seconds once built), when
# the run includes those tests: the whole suite, or arguments naming them. A
# pool that cannot start is not an error here: its tests fail with the reason.
wants_pool=$(( $# == 0 ))
for arg in "$@"; do [[ "$arg" == *htcondor* ]] && wants_pool=1; done
if ((wants_pool)); then
    step "HTCondor pool (scripts/htcondor-pool.sh up)"
    bash scripts/htcondor-pool.sh up >&2 || echo "test.sh: the HTCondor pool did not start (see above)" >&2
fi

# ---------------------------------------------------------------- checks
failed=()
pytest_rc() { # NAME RC: record a pytest exit status
    case "$2" in
    0) ;;
    5) echo "test.sh: $1 collected no tests - that is a failure" >&2; failed+=("$1(no tests)") ;;
    *) failed+=("$1(exit $2)") ;;
    esac
}

# The whole suite runs as two pytest processes at once (the machine has 2 cores and
# many tests mostly wait). ALONGSIDE is started now (first the HTCondor pool tests,
# which wait on negotiation, job starts, a vacate, and rebuild the pilot image when
# the code changed; then other long tests that mostly wait on containers and
# brokers); the rest runs after ruff and mypy. LAST runs only once ALONGSIDE has
# ended, with nothing else of this run beside it: what measures time (exits
# within grace + 5 s), the timing-sensitive fault suite, and
# test_orphans, whose leftover containers any other podman pilot of this run would
# sweep (pilot/ownership.py) before its own sweeper could. The ALONGSIDE
# report is printed before LAST runs.
ALONGSIDE=(tests/htcondor tests/test_image.py tests/test_examples.py tests/test_benchmarks_smoke.py
    tests/faults/test_faults_brokers.py)
LAST=(tests/faults tests/test_orphans.py)
pool_pid=""
# A stopped run stops ALONGSIDE as a whole: it runs in its own process group (its
# pilots, containers' clients and test_faults_brokers' RabbitMQ node with it);
# SIGINT lets pytest run its session teardown (queue deletion), then whatever is
# left of the group is killed.
stop_alongside() {
    [[ -n "$pool_pid" ]] || return 0
    kill -INT -- "-$pool_pid" 2>/dev/null || return 0
    local i
    for ((i = 0; i < 120; i++)); do # up to 60 s for pytest's teardown
        kill -0 "$pool_pid" 2>/dev/null || break
        sleep 0.5
    done
    kill -KILL -- "-$pool_pid" 2>/dev/null || true
}
if (($# == 0)); then
    pool_log="$(mktemp "${TMPDIR:-/tmp}/ewms-alongside-tests.XXXXXX")"
    step "pytest ${ALONGSIDE[*]} (in the background; its report comes before ${LAST[*]})"
    # job control: the job gets its own process group (pid == group id), and SIGINT
    # is not ignored in it as in a plain background job (pytest's teardown needs it)
    set -m
    "$PY" -m pytest "${ALONGSIDE[@]}" >"$pool_log" 2>&1 &
    pool_pid=$!
    set +m
    trap stop_alongside EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
fi

step "ruff check ewms_pilot tests"
"$PY" -m ruff check ewms_pilot tests || failed+=(ruff)

step "mypy"
"$PY" -m mypy || failed+=(mypy)

if [[ -n "$pool_pid" ]]; then
    rest=() # every test file and dir under tests/ that is not run alongside or last
    ignore=()
    for path in "${ALONGSIDE[@]}" "${LAST[@]}"; do ignore+=("--ignore=$path"); done
    shopt -s nullglob
    for path in tests/test_*.py tests/*_test.py tests/*/; do
        path="${path%/}"
        [[ "$path" != tests/__pycache__ && " ${ALONGSIDE[*]} ${LAST[*]} " != *" $path "* ]] || continue
        rest+=("$path")
    done
    shopt -u nullglob
    step "pytest (everything else but ${LAST[*]})"
    rc=0
    "$PY" -m pytest "${ignore[@]}" "${rest[@]}" || rc=$?
    pytest_rc pytest "$rc"
    step "waiting for the pytest run alongside to end"
    rc=0
    wait "$pool_pid" || rc=$?
    pool_pid=""
    step "pytest ${ALONGSIDE[*]} (ran alongside)"
    cat "$pool_log"
    rm -f "$pool_log"
    pytest_rc "pytest (alongside)" "$rc"
    ignore=()
    for path in "${ALONGSIDE[@]}"; do ignore+=("--ignore=$path"); done
    step "pytest ${LAST[*]} (alone)"
    rc=0
    "$PY" -m pytest "${ignore[@]}" "${LAST[@]}" || rc=$?
    pytest_rc "pytest (last)" "$rc"
else
    step "pytest $*"
    rc=0
    "$PY" -m pytest "$@" || rc=$?
    pytest_rc pytest "$rc"
fi

if ((${#failed[@]})); then
    echo "test.sh: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "test.sh: all checks passed" >&2
