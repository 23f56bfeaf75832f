#!/usr/bin/env bash
# A pilot against RabbitMQ, running each task in a podman container.
#
#   bash examples/rabbitmq-podman/run.sh
#
# Needs RabbitMQ on 127.0.0.1:5672 (guest/guest) and podman, as set up by
# `bash scripts/test-env.sh`. Builds the example task image
# (examples/task-image/, on the test image), sends 3 events, runs a pilot with
# EWMS_PILOT_CONTAINER_PLATFORM=podman (2 tasks at a time, .json outfile) and
# prints the results.
#
# Env overrides: BROKER_ADDRESS (127.0.0.1:5672), QUEUE_IN (ewms-example-in),
# QUEUE_OUT (ewms-example-out), WORK_DIR (a new temp dir).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
if [[ -x "$REPO/.venv/bin/ewms-pilot" ]]; then PATH="$REPO/.venv/bin:$PATH"; fi
if [[ -z "${CONTAINERS_CONF:-}" && -f "$REPO/.test-env/containers.conf" ]]; then
    # shellcheck source=/dev/null
    . "$REPO/scripts/env.sh" # podman settings for this host (runc, cgroupfs)
fi

address="${BROKER_ADDRESS:-127.0.0.1:5672}"
q_in="${QUEUE_IN:-ewms-example-in}"
q_out="${QUEUE_OUT:-ewms-example-out}"
work="${WORK_DIR:-$(mktemp -d -t ewms-example-rmq.XXXXXX)}"
mkdir -p "$work"

echo "==> building the task image" >&2
image="$(bash "$REPO/examples/task-image/build.sh")"

echo "==> 3 events into RabbitMQ queue '$q_in' at $address" >&2
ewms-pilot queue put --broker-type rabbitmq --broker-address "$address" --queue "$q_in" <<'EOF_EVENTS'
the quick brown fox jumps over the lazy dog
to be or not to be that is the question
the cat sat on the mat
EOF_EVENTS

echo "==> pilot: podman runtime, image $image" >&2
EWMS_PILOT_QUEUE_INCOMING="$q_in" \
EWMS_PILOT_QUEUE_OUTGOING="$q_out" \
EWMS_PILOT_QUEUE_INCOMING_BROKER_TYPE=rabbitmq \
EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE=rabbitmq \
EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS="$address" \
EWMS_PILOT_QUEUE_OUTGOING_BROKER_ADDRESS="$address" \
EWMS_PILOT_CONTAINER_PLATFORM=podman \
EWMS_PILOT_TASK_IMAGE="$image" \
EWMS_PILOT_TASK_ARGS="<<INFILE>> <<OUTFILE>>" \
EWMS_PILOT_OUTFILE_EXT=.json \
EWMS_PILOT_MAX_CONCURRENT_TASKS=2 \
EWMS_PILOT_TIMEOUT_QUEUE_WAIT_FOR_FIRST_MESSAGE=30 \
EWMS_PILOT_TIMEOUT_QUEUE_INCOMING=2 \
EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST="$work" \
    ewms-pilot run --no-progress

echo "==> results in RabbitMQ queue '$q_out'" >&2
ewms-pilot queue get --broker-type rabbitmq --broker-address "$address" --queue "$q_out" --timeout 2
