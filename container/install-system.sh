#!/usr/bin/env bash
# Build step of the pilot image (see ../Dockerfile): the OS packages one flavour
# needs, from the base image's own Debian/Ubuntu archive.
#
#   install-system.sh PLATFORM     PLATFORM: docker | podman | apptainer | process
#
# Installs a full Python with venv/ensurepip only when the base lacks one (a
# python:3.x-slim base has it; a Debian base with python3-minimal does not), tini
# (PID 1: forwards signals, reaps orphans), CA certificates (TLS brokers) and the
# flavour's container engine. Leaves no apt lists behind.
set -euo pipefail

platform="${1:?usage: install-system.sh docker|podman|apptainer|process}"
export DEBIAN_FRONTEND=noninteractive

command -v apt-get >/dev/null || {
    echo "install-system.sh: BASE_IMAGE must be Debian/Ubuntu based (no apt-get found)" >&2
    exit 1
}

pkgs=(tini ca-certificates)
if ! python3 -c 'import asyncio, ensurepip, sqlite3, ssl, venv' 2>/dev/null; then
    pkgs+=(python3 python3-venv)
fi

apt-get update -qq

has_candidate() { # PACKAGE -> true when the configured archive offers it
    local cand
    cand="$(apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: *//p')"
    [[ -n "$cand" && "$cand" != "(none)" ]]
}

case "$platform" in
docker)
    # dockerd + CLI; the entrypoint starts dockerd (the container must run --privileged)
    pkgs+=(docker.io iptables)
    ;;
podman)
    # fuse-overlayfs: the kernel's overlay cannot stack on the container's own overlay root
    pkgs+=(podman runc fuse-overlayfs catatonit)
    ;;
apptainer)
    if has_candidate apptainer; then
        pkgs+=(apptainer)
    else
        # Debian bookworm has no apptainer package. We do not download a binary
        # from elsewhere: the site must provide apptainer (see README, "Container image").
        echo "install-system.sh: NOTE: no 'apptainer' package in this base image's archive;" \
            "the site must put an apptainer install on PATH at run time (e.g. from CVMFS)" >&2
    fi
    ;;
process) ;;
*)
    echo "install-system.sh: unknown CONTAINER_PLATFORM '$platform' (docker|podman|apptainer|process)" >&2
    exit 1
    ;;
esac

apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
apt-get clean
rm -rf /var/lib/apt/lists/*

if [[ "$platform" == podman ]]; then
    # Nested podman: cgroupfs (no systemd in here), runc, file-based events, and
    # overlay storage through fuse-overlayfs (needs /dev/fuse: run --privileged).
    mkdir -p /etc/containers
    cat >/etc/containers/containers.conf <<'CONF'
# written by ewms-pilot's container/install-system.sh
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
CONF
    cat >/etc/containers/storage.conf <<'CONF'
# written by ewms-pilot's container/install-system.sh
[storage]
driver = "overlay"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"

[storage.options.overlay]
mount_program = "/usr/bin/fuse-overlayfs"
CONF
fi
