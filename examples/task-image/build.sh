#!/usr/bin/env bash
# Build the example task image with podman (quick after the first time: layers are cached).
#
#   bash examples/task-image/build.sh [TAG]     (default localhost/ewms-example-word-count:latest)
#
# BASE_IMAGE (env) picks the base; default: the test image from scripts/test-env.sh.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
TAG="${1:-localhost/ewms-example-word-count:latest}"
if [[ -z "${CONTAINERS_CONF:-}" && -f "$REPO/.test-env/containers.conf" ]]; then
    # shellcheck source=/dev/null
    . "$REPO/scripts/env.sh"
fi
podman build --quiet --network host \
    --build-arg "BASE_IMAGE=${BASE_IMAGE:-${EWMS_TEST_IMAGE:-localhost/ewms-pilot-test:bookworm}}" \
    --file "$HERE/Containerfile" --tag "$TAG" "$REPO/examples/tasks" >/dev/null
echo "$TAG"
