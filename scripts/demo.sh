#!/usr/bin/env bash
# The README's first command: install the pilot in .venv and run it end to end on
# the embedded defaults — the local SQLite queue and the `process` runtime — so no
# broker and no container engine are needed. Needs only Python 3.11+ and PyPI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

pick_python() {
    local py
    for py in python3 python3.13 python3.12 python3.11; do
        if command -v "$py" >/dev/null && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$py"; return 0
        fi
    done
    echo "demo.sh: need Python >= 3.11" >&2; return 1
}
if [[ ! -x .venv/bin/python ]]; then
    "$(pick_python)" -m venv .venv
fi
# Installed = the console script is there and the package (with its broker client) imports
# from the venv; -I keeps the source tree in the working directory off sys.path, from
# where `import ewms_pilot` succeeds in a bare venv too (and the install was skipped).
if [[ ! -x .venv/bin/ewms-pilot ]] || ! .venv/bin/python -I -c 'import ewms_pilot.cli.main, mqclient' 2>/dev/null; then
    echo "==> installing ewms-pilot into .venv" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check -e .
fi
PILOT=.venv/bin/ewms-pilot
PY="$(pwd)/.venv/bin/python"

work="$(mktemp -d -t ewms-pilot-demo.XXXXXX)"
db="$work/queue.db"
echo "==> putting 6 events into the local queue $db (queue 'demo-in')" >&2
"$PILOT" queue put --broker-type local --broker-address "$db" --queue demo-in <<'EVENTS'
the quick brown fox jumps over the lazy dog
to be or not to be that is the question
all happy families are alike
it was the best of times it was the worst of times
call me ishmael
in the beginning was the word
EVENTS

echo "==> running a pilot: 'process' runtime, example task examples/tasks/word_count.py, 3 at a time" >&2
EWMS_PILOT_QUEUE_INCOMING=demo-in \
EWMS_PILOT_QUEUE_OUTGOING=demo-out \
EWMS_PILOT_QUEUE_INCOMING_BROKER_TYPE=local \
EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE=local \
EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS="$db" \
EWMS_PILOT_QUEUE_OUTGOING_BROKER_ADDRESS="$db" \
EWMS_PILOT_CONTAINER_PLATFORM=process \
EWMS_PILOT_TASK_ARGS="$PY examples/tasks/word_count.py <<INFILE>> <<OUTFILE>>" \
EWMS_PILOT_OUTFILE_EXT=.json \
EWMS_PILOT_MAX_CONCURRENT_TASKS=3 \
EWMS_PILOT_TIMEOUT_QUEUE_INCOMING=1 \
EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST="$work" \
    "$PILOT" run

echo "==> results from the local queue 'demo-out' (one JSON line per event)" >&2
"$PILOT" queue get --broker-type local --broker-address "$db" --queue demo-out --timeout 1
echo "==> demo files are in $work" >&2
