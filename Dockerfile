# The ewms-pilot image: one pilot per container, configured by EWMS_PILOT_* variables.
#
# Flavours (build args):
#   BASE_IMAGE          a Debian/Ubuntu image; a full Python >= 3.11 is installed from
#                       its archive when it lacks one (default: python:3.12-slim-bookworm)
#   CONTAINER_PLATFORM  how the pilot runs tasks inside this container:
#                         docker    - docker.io; the entrypoint starts dockerd (run --privileged)
#                         podman    - podman + runc (nested podman: run --privileged)
#                         apptainer - apptainer when the base's archive has it, else the site
#                                     must provide it on PATH (Debian bookworm has none)
#                         process   - no inner runtime: tasks are commands in this image
#   BROKER              pip extra for the broker client: rabbitmq | nats | all
#
# Build here:  bash scripts/build-image.sh process      (podman, test base image)
# Build at a site:
#   docker build --build-arg CONTAINER_PLATFORM=apptainer -t ewms-pilot:apptainer .
#
# Run:  docker run --rm -e EWMS_PILOT_... ewms-pilot:process
# The entrypoint (container/entrypoint.sh) sources ./ewms_htcondor_envfile.sh when
# present, prints a banner with the effective configuration (secrets masked) and
# runs the pilot; its exit code is the pilot's (README, "Exit codes").

ARG BASE_IMAGE=python:3.12-slim-bookworm
FROM ${BASE_IMAGE}

ARG CONTAINER_PLATFORM=docker
ARG BROKER=rabbitmq

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/ewms-pilot/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# 1. OS packages for this flavour (cached until the script or the flavour changes)
COPY container/install-system.sh /usr/local/lib/ewms-pilot/install-system.sh
RUN bash /usr/local/lib/ewms-pilot/install-system.sh "${CONTAINER_PLATFORM}"

# 2. the pilot's dependencies, from the packaging metadata only (a placeholder
#    README and no package yet), so editing the code does not reinstall them
#    (optional build secret `ca-bundle`: a CA bundle for pip, for builds behind a
#    TLS-intercepting proxy; scripts/build-image.sh passes the host's bundle)
COPY setup.cfg pyproject.toml /tmp/ewms-pilot-src/
RUN --mount=type=secret,id=ca-bundle,required=false \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && touch /tmp/ewms-pilot-src/README.md \
    && python3 -m venv /opt/ewms-pilot \
    && /opt/ewms-pilot/bin/pip install --quiet "/tmp/ewms-pilot-src[${BROKER}]" \
    && /opt/ewms-pilot/bin/pip uninstall --quiet --yes ewms-pilot

# 3. the pilot itself
COPY README.md /tmp/ewms-pilot-src/README.md
COPY ewms_pilot /tmp/ewms-pilot-src/ewms_pilot
RUN --mount=type=secret,id=ca-bundle,required=false \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && /opt/ewms-pilot/bin/pip install --quiet --no-deps /tmp/ewms-pilot-src \
    && rm -rf /tmp/ewms-pilot-src \
    && ewms-pilot --version

COPY container/entrypoint.sh /usr/local/bin/ewms-pilot-entrypoint
RUN chmod 0755 /usr/local/bin/ewms-pilot-entrypoint

ENV EWMS_PILOT_CONTAINER_PLATFORM=${CONTAINER_PLATFORM} \
    TINI_SUBREAPER=1
LABEL org.opencontainers.image.title="ewms-pilot" \
      org.ewms-pilot.container-platform="${CONTAINER_PLATFORM}" \
      org.ewms-pilot.broker="${BROKER}"

# tini: signals reach the entrypoint (which execs the pilot) and orphans are reaped
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/ewms-pilot-entrypoint"]
