#!/usr/bin/env bash
# Build the pilot image (../Dockerfile) with podman on this machine.
#
#   bash scripts/build-image.sh [FLAVOUR] [--base IMAGE] [--broker B] [--tag TAG] [--force]
#
#   FLAVOUR   process (default) | docker | podman | apptainer  (CONTAINER_PLATFORM)
#   --base    base image (default: $EWMS_TEST_IMAGE, else localhost/ewms-pilot-test:bookworm;
#             at a site with registry access e.g. python:3.12-slim-bookworm)
#   --broker  rabbitmq (default) | nats | all   (pip extra)
#   --tag     image name (default: localhost/ewms-pilot:FLAVOUR)
#   --force   rebuild even when the image is up to date
#
# The image carries a label with a hash of the build context and the build
# arguments; when an image with the same tag and hash exists, nothing is built.
# Prints the tag on stdout (progress goes to stderr). Builds use the host
# network (apt and pip reach their archives from the build containers).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HASH_LABEL="org.ewms-pilot.context-hash"

say() { echo "build-image: $*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}
usage() {
    sed -n '2,16s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit "${1:-2}"
}

flavour="process"
base="${EWMS_TEST_IMAGE:-localhost/ewms-pilot-test:bookworm}"
broker="rabbitmq"
tag=""
force=0
while (($#)); do
    case "$1" in
    docker | podman | apptainer | process) flavour="$1" ;;
    --base) base="${2:?--base needs an image}"; shift ;;
    --broker) broker="${2:?--broker needs rabbitmq|nats|all}"; shift ;;
    --tag) tag="${2:?--tag needs a name}"; shift ;;
    --force) force=1 ;;
    -h | --help) usage 0 ;;
    *) say "unknown argument '$1'"; usage ;;
    esac
    shift
done
case "$broker" in rabbitmq | nats | all) ;; *) die "--broker must be rabbitmq, nats or all (got '$broker')" ;; esac
tag="${tag:-localhost/ewms-pilot:$flavour}"

command -v podman >/dev/null || die "podman is not on PATH (bash scripts/test-env.sh installs it)"
if [[ -z "${CONTAINERS_CONF:-}" && -f "$REPO/.test-env/containers.conf" ]]; then
    # shellcheck source=scripts/env.sh
    . "$REPO/scripts/env.sh" # this host's podman settings (runc, cgroupfs)
fi

# Everything the Dockerfile can see (.dockerignore is an allow-list of these).
context_hash() {
    (
        cd "$REPO"
        printf 'base=%s platform=%s broker=%s\n' "$base" "$flavour" "$broker"
        find Dockerfile .dockerignore setup.cfg pyproject.toml README.md container ewms_pilot \
            -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 |
            LC_ALL=C sort -z | xargs -0 sha256sum
    ) | sha256sum | cut -c1-32
}

# one build per tag at a time (tests and people may run this concurrently)
lock="${TMPDIR:-/tmp}/ewms-pilot-build-$(printf '%s' "$tag" | sha256sum | cut -c1-12).lock"
exec 9>"$lock"
flock -w 900 9 || die "another build of $tag has held $lock for 15 min"

want="$(context_hash)"
old_id="$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
if ((!force)) && [[ -n "$old_id" ]]; then
    have="$(podman image inspect --format "{{ index .Labels \"$HASH_LABEL\" }}" "$tag" 2>/dev/null || true)"
    if [[ "$have" == "$want" ]]; then
        say "$tag is up to date (context $want)"
        echo "$tag"
        exit 0
    fi
fi

# pip inside the build trusts what pip on this host trusts (e.g. a proxy's CA)
secret=()
ca="${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"
[[ -s "$ca" ]] && secret=(--secret "id=ca-bundle,src=$ca")

say "building $tag: CONTAINER_PLATFORM=$flavour BROKER=$broker BASE_IMAGE=$base"
podman build \
    "${secret[@]}" \
    --network host \
    --build-arg "BASE_IMAGE=$base" \
    --build-arg "CONTAINER_PLATFORM=$flavour" \
    --build-arg "BROKER=$broker" \
    --label "$HASH_LABEL=$want" \
    --tag "$tag" \
    --file "$REPO/Dockerfile" \
    "$REPO" >&2 || die "podman build failed (see above)"
new_id="$(podman image inspect --format '{{.Id}}' "$tag")"
if [[ -n "$old_id" && "$old_id" != "$new_id" ]]; then
    # the previous build of this tag is now untagged: drop it (layers still in use stay)
    podman image rm "$old_id" >/dev/null 2>&1 || true
fi
say "built $tag"
echo "$tag"
