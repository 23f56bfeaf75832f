"""A `docker` command for ewms-pilot 1.0.5 when only podman is installed.

1.0.5 runs `docker pull IMAGE` once and `docker run --rm [--shm-size=S]
--mount type=bind,source=..,target=..[,readonly] --env K=V IMAGE ARGS` per task
(through a shell). podman takes those exact flags, so the shim forwards the
argv unchanged to `podman --runtime runc`, with the project's containers.conf,
and turns a pull of an image podman already has into a no-op (1.0.5 would
otherwise contact the registry every start). Any other docker verb is
forwarded as is. A POSIX sh script, so each task pays no interpreter start-up
beyond what a real `docker` client would.
"""

from __future__ import annotations

import shlex
import stat
from pathlib import Path

_TEMPLATE = """#!/bin/sh
# docker -> podman shim for benchmarking ewms-pilot 1.0.5 (written by benchmarks/shim.py)
CONTAINERS_CONF={conf}
export CONTAINERS_CONF
if [ "$1" = pull ] && [ "$#" -eq 2 ] && {podman} image exists "$2" 2>/dev/null; then
    exit 0
fi
exec {podman} --runtime runc "$@"
"""


def write_docker_shim(bin_dir: Path, podman: str, containers_conf: Path) -> Path:
    """Create `bin_dir/docker`; put `bin_dir` first on the reference pilot's PATH."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "docker"
    path.write_text(
        _TEMPLATE.format(conf=shlex.quote(str(containers_conf)), podman=shlex.quote(podman))
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path
