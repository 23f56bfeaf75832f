"""A container client's relative paths made absolute against the pilot's start dir.

podman/docker do not run in the pilot's cwd (see `OCIRuntime.process_cwd` for
why), nor does apptainer's image build (it runs in its build workdir), so what
they would read relative to their cwd is made absolute first, once: the start
dir is taken when the runtime is made, an image reference when it is prepared
at start (`prepare_image`), and the client's environment is the pilot's own
with these variables rewritten. Everything else the pilot hands a client
(binds, env file, data dir) is absolute already.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

#: variables podman, docker, apptainer and their libraries read as one file or directory path
PATH_VARIABLES = (
    "APPTAINER_CACHEDIR",
    "APPTAINER_CONFIGDIR",
    "APPTAINER_TMPDIR",
    "SINGULARITY_CACHEDIR",
    "SINGULARITY_CONFIGDIR",
    "SINGULARITY_TMPDIR",
    "CONTAINERS_CONF",
    "CONTAINERS_CONF_OVERRIDE",
    "CONTAINERS_STORAGE_CONF",
    "CONTAINERS_REGISTRIES_CONF",
    "REGISTRIES_CONFIG_PATH",
    "REGISTRY_AUTH_FILE",
    "CONTAINER_SSHKEY",
    "DOCKER_CONFIG",
    "DOCKER_CERT_PATH",
    "HOME",
    "TMPDIR",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "XDG_CACHE_HOME",
    "XDG_RUNTIME_DIR",
)
#: variables holding a `:`-separated list of directories (an empty entry in PATH is the cwd)
PATH_LIST_VARIABLES = ("PATH",)
#: image transports whose reference starts with a host path (containers-transports(5))
PATH_TRANSPORTS = frozenset({"dir", "docker-archive", "oci", "oci-archive", "sif"})
#: apptainer's build sources whose reference is a host path (`transport:path` or `transport://path`)
APPTAINER_PATH_TRANSPORTS = frozenset({"docker-archive", "oci", "oci-archive"})


def start_dir() -> Path | None:
    """The pilot's cwd now (None: it was removed, so nothing relative can be found anyway)."""
    try:
        return Path.cwd()
    except FileNotFoundError:
        return None


def _absolute(path: str, base: Path | None) -> str:
    # join, not abspath: the text is kept as given (an image's `:reference` tail included)
    return path if base is None or os.path.isabs(path) else os.path.join(base, path)


def absolute_env(env: Mapping[str, str], base: Path | None) -> dict[str, str]:
    """`env` with each path-valued variable above absolute against `base` (empty values stay unset)."""
    out = dict(env)
    for name in PATH_VARIABLES:
        if out.get(name):
            out[name] = _absolute(out[name], base)
    for name in PATH_LIST_VARIABLES:
        if name in out:
            out[name] = os.pathsep.join(_absolute(entry, base) for entry in out[name].split(os.pathsep))
    return out


def absolute_image(image: str, base: Path | None, transports: frozenset[str] = PATH_TRANSPORTS) -> str:
    """`docker-archive:x.tar` -> `docker-archive:<base>/x.tar` (any of `transports`); others as given."""
    transport, sep, rest = image.partition(":")
    if not sep or transport not in transports or not rest:
        return image
    return f"{transport}:{_absolute(rest, base)}"


def absolute_apptainer_source(source: str, base: Path | None) -> str:
    """`absolute_image` for apptainer's build sources, which also take `docker-archive://x.tar`."""
    transport, _, rest = source.partition(":")
    if transport in APPTAINER_PATH_TRANSPORTS and rest.startswith("//") and rest[2:]:
        source = f"{transport}:{rest[2:]}"
    return absolute_image(source, base, APPTAINER_PATH_TRANSPORTS)
