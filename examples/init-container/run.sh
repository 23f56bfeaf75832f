#!/usr/bin/env bash
# An init container that fills the data hub, then tasks that use it.
#
#   bash examples/init-container/run.sh
#
# Needs podman (`bash scripts/test-env.sh`). Builds two images on the test
# image: the init image (fill_data_hub.py: writes stopwords.txt to the data hub)
# and the example task image (examples/task-image/). Then a pilot on the
# embedded local queue (no broker) runs the init container once and a task
# container per event; each task reads stopwords.txt from the data hub, so the
# stopwords are missing from the results' `top` lists.
#
# WORK_DIR (env): where the queue file and the pilot's data go (default: a new temp dir).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
if [[ -x "$REPO/.venv/bin/ewms-pilot" ]]; then PATH="$REPO/.venv/bin:$PATH"; fi
if [[ -z "${CONTAINERS_CONF:-}" && -f "$REPO/.test-env/containers.conf" ]]; then
    # shellcheck source=/dev/null
    . "$REPO/scripts/env.sh" # podman settings for this host (runc, cgroupfs)
fi
work="${WORK_DIR:-$(mktemp -d -t ewms-example-init.XXXXXX)}"
mkdir -p "$work"
db="$work/queue.db"

echo "==> building the init image and the task image" >&2
init_image="localhost/ewms-example-fill-data-hub:latest"
podman build --quiet \
    --build-arg "BASE_IMAGE=${BASE_IMAGE:-${EWMS_TEST_IMAGE:-localhost/ewms-pilot-test:bookworm}}" \
    --file "$HERE/Containerfile" --tag "$init_image" "$HERE" >/dev/null
task_image="$(bash "$REPO/examples/task-image/build.sh")"

echo "==> 2 events into local queue 'in' ($db)" >&2
ewms-pilot queue put --broker-type local --broker-address "$db" --queue in <<'EOF_EVENTS'
the cat and the hat
it is what it is and that is that
EOF_EVENTS

echo "==> pilot: init container $init_image, then $task_image per event" >&2
EWMS_PILOT_QUEUE_INCOMING=in \
EWMS_PILOT_QUEUE_OUTGOING=out \
EWMS_PILOT_QUEUE_INCOMING_BROKER_TYPE=local \
EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE=local \
EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS="$db" \
EWMS_PILOT_QUEUE_OUTGOING_BROKER_ADDRESS="$db" \
EWMS_PILOT_CONTAINER_PLATFORM=podman \
EWMS_PILOT_INIT_IMAGE="$init_image" \
EWMS_PILOT_INIT_ARGS="<<DATA_HUB>>" \
EWMS_PILOT_INIT_TIMEOUT=120 \
EWMS_PILOT_TASK_IMAGE="$task_image" \
EWMS_PILOT_TASK_ARGS="" \
EWMS_PILOT_OUTFILE_EXT=.json \
EWMS_PILOT_TIMEOUT_QUEUE_INCOMING=1 \
EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST="$work" \
    ewms-pilot run --no-progress

echo "==> the data hub after the run: $work/ewms-pilot-data/data-hub" >&2
ls "$work/ewms-pilot-data/data-hub" >&2
echo "==> results in local queue 'out'" >&2
ewms-pilot queue get --broker-type local --broker-address "$db" --queue out --timeout 1
