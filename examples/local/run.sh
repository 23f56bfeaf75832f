#!/usr/bin/env bash
# A pilot on your machine: no broker, no container engine.
#
#   bash examples/local/run.sh
#
# 1. `ewms-pilot queue put` puts 3 JSON events into the embedded local queue
#    (a SQLite file),
# 2. a pilot runs examples/tasks/word_count.py for each as a plain host
#    process (EWMS_PILOT_CONTAINER_PLATFORM=process), JSON infile, text outfile,
# 3. `ewms-pilot queue get` prints the results, one JSON line each.
#
# WORK_DIR (env): where the queue file and the pilot's data go (default: a new temp dir).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
if [[ -x "$REPO/.venv/bin/ewms-pilot" ]]; then PATH="$REPO/.venv/bin:$PATH"; fi
command -v ewms-pilot >/dev/null || {
    echo "run.sh: ewms-pilot not found; install it first (pip install -e . in $REPO)" >&2
    exit 1
}

work="${WORK_DIR:-$(mktemp -d -t ewms-example-local.XXXXXX)}"
mkdir -p "$work"
db="$work/queue.db"

echo "==> 3 events into local queue 'in' ($db)" >&2
ewms-pilot queue put --json --broker-type local --broker-address "$db" --queue in <<'EOF_EVENTS'
"the quick brown fox jumps over the lazy dog"
["first line", "second line"]
"hello"
EOF_EVENTS

echo "==> pilot: process runtime, word_count.py, .json infile, .txt outfile" >&2
EWMS_PILOT_QUEUE_INCOMING=in \
EWMS_PILOT_QUEUE_OUTGOING=out \
EWMS_PILOT_QUEUE_INCOMING_BROKER_TYPE=local \
EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE=local \
EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS="$db" \
EWMS_PILOT_QUEUE_OUTGOING_BROKER_ADDRESS="$db" \
EWMS_PILOT_CONTAINER_PLATFORM=process \
EWMS_PILOT_TASK_ARGS="python3 $REPO/examples/tasks/word_count.py <<INFILE>> <<OUTFILE>>" \
EWMS_PILOT_INFILE_EXT=.json \
EWMS_PILOT_OUTFILE_EXT=.txt \
EWMS_PILOT_TIMEOUT_QUEUE_INCOMING=1 \
EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST="$work" \
    ewms-pilot run --no-progress

echo "==> results in local queue 'out'" >&2
ewms-pilot queue get --broker-type local --broker-address "$db" --queue out --timeout 1
