# shellcheck shell=bash
# Source me (`. scripts/env.sh`): points podman at the repo's test config and
# names the test image, so tests and manual runs use the same setup that
# scripts/test-env.sh prepared.
_ewms_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CONTAINERS_CONF="$_ewms_repo/.test-env/containers.conf"
export EWMS_TEST_IMAGE="localhost/ewms-pilot-test:bookworm"
unset _ewms_repo
