"""The one place a container (or host process) spec is made: tasks, warm workers, init, teardown.

So all of them carry the same labels, get their binds through the mount
policy (`mounts`), and get their environment the same way: the pilot's
`EWMS_TASK_*` paths plus the configured env JSON, in an owner-only env file
for container runtimes (`envfile`). `validate_for_runtime` runs the same
rules on a freshly loaded config, so what a spec would refuse is a config
error (exit 2) before any event is taken.
"""

from __future__ import annotations

import dataclasses as dc
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from ..config.model import ContainerConfig, ContainerPlatform, PilotConfig
from ..errors import ConfigError
from ..resources.gpus import GpuPool, device_id
from ..tasks.args import ENV_INFILE, ENV_OUTFILE, split_args, substitute, task_env
from ..tasks.taskdir import DATA_DIR_VAR, TaskDir
from .base import (
    CONTAINER_DATA_HUB,
    CONTAINER_DATA_ROOT,
    CONTAINER_TASK_IO,
    Mount,
    RunSpec,
    Runtime,
)
from .mounts import MountProblem, external_mounts, path_problem, validate_mounts

#: label naming which of the pilot's containers this is (task id, warm worker, init, teardown)
ROLE_LABEL = "ewms-pilot.task"
#: the variable CUDA reads to pick its devices
CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
#: the env file's name next to the container's pilot-side files
ENV_FILE_SUFFIX = ".env"


def _container_name(pilot_id: str, what: str) -> str:
    return f"ewms-pilot-{pilot_id}-{what}"


@dc.dataclass(frozen=True)
class SpecBuilder:
    """Makes every `RunSpec` of one pilot; build it with `for_pilot` (which checks the binds)."""

    runtime: Runtime
    pilot_id: str
    labels: Mapping[str, str]  # the pilot's owner labels, on every container
    data_dir: Path  # as configured: where the pilot's files are on the host
    real_data_dir: Path  # symlinks resolved: what is bound
    external: tuple[Mount, ...]  # validated, read-only
    task_memory: int | None = None  # bytes per task and warm worker (not init/teardown)
    gpus: GpuPool = dc.field(default_factory=lambda: GpuPool((), 0))  # leased per one-shot task

    @classmethod
    def for_pilot(cls, cfg: PilotConfig, runtime: Runtime, pilot_id: str) -> SpecBuilder:
        """Check the binds (reads the file system: symlinks, existence) and keep the result.

        The data dir must exist (the pilot makes it first). ConfigError for a
        setting the policy refuses (checked at load already: only a change since).
        """
        from ..pilot.ownership import owner_labels  # local: the pilot imports this module

        real = Path(os.path.realpath(cfg.data_dir))
        external: tuple[Mount, ...] = ()
        if not runtime.uses_host_paths:
            _raise_data_dir_problem(cfg, path_problem(cfg.data_dir, runtime.mount_forbidden_chars))
            external = external_mounts(cfg.external_directories, runtime.mount_forbidden_chars)
        gpus = GpuPool(cfg.slot.gpus if cfg.slot else (), cfg.task_gpus)
        return cls(
            runtime, pilot_id, owner_labels(pilot_id), cfg.data_dir, real, external, cfg.task_memory, gpus
        )

    # -- the three kinds -------------------------------------------------------

    def task(
        self, image: str, container: ContainerConfig, task_id: str, tdir: TaskDir, gpus: tuple[str, ...] = ()
    ) -> RunSpec:
        """A one-shot task: its task-io and the data hub writable, external dirs read-only.

        With its memory limit, and `gpus` (a lease from `self.gpus`) as the only GPUs it sees.
        """
        if self.runtime.uses_host_paths:
            spec = self._spec(
                image, container, task_id, (),
                infile=str(tdir.infile), outfile=str(tdir.outfile), hub=str(self._hub_host()),
                private_dir=tdir.outputs,
            )  # fmt: skip
        else:
            io = Mount(self._bound(tdir.task_io), CONTAINER_TASK_IO)
            hub = Mount(self._bound(self._hub_host()), CONTAINER_DATA_HUB)
            spec = self._spec(
                image, container, task_id, (io, hub),
                infile=str(CONTAINER_TASK_IO / tdir.infile.name),
                outfile=str(CONTAINER_TASK_IO / tdir.outfile.name),
                hub=str(CONTAINER_DATA_HUB),
                private_dir=tdir.outputs,
            )  # fmt: skip
        if not gpus:
            return spec
        env = dict(spec.env)
        if self.runtime.sees_host_gpus:  # a container runtime exposes only these (numbered from 0)
            env[CUDA_VISIBLE_DEVICES] = ",".join(device_id(g) for g in gpus)
        return dc.replace(spec, gpus=gpus, env=env)

    def warm_worker(
        self,
        image: str,
        container: ContainerConfig,
        worker_id: str,
        private_dir: Path,
        extra_env: Mapping[str, str],
        client_dir: Path,
    ) -> RunSpec:
        """A warm worker: the whole data dir writable (each event's paths come on its stdin).

        So `private_dir` (under the data dir) is the worker's to see; its client runs in
        `client_dir`, outside the data dir.
        """
        own: tuple[Mount, ...] = ()
        if not self.runtime.uses_host_paths:
            own = (Mount(self.real_data_dir, CONTAINER_DATA_ROOT),)
        spec = self._spec(
            image, container, worker_id, own,
            infile="", outfile="", hub=self.hub_path(), private_dir=private_dir, interactive=True,
            client_dir=client_dir,
        )  # fmt: skip
        env = {k: v for k, v in spec.env.items() if k not in (ENV_INFILE, ENV_OUTFILE)}
        return dc.replace(spec, env={**env, **extra_env})

    def once(self, image: str, container: ContainerConfig, role: str, private_dir: Path) -> RunSpec:
        """The init or teardown container: the data hub writable, external dirs read-only."""
        own: tuple[Mount, ...] = ()
        if not self.runtime.uses_host_paths:
            own = (Mount(self._bound(self._hub_host()), CONTAINER_DATA_HUB),)
        return self._spec(
            image, container, role, own, infile="", outfile="", hub=self.hub_path(), private_dir=private_dir,
            limited=False,
        )  # fmt: skip

    # -- paths as the task sees them ------------------------------------------------

    def hub_path(self) -> str:
        """The data hub as every task of this pilot sees it."""
        return str(self._hub_host()) if self.runtime.uses_host_paths else str(CONTAINER_DATA_HUB)

    def warm_path(self, host_path: Path) -> str:
        """A file under the data dir as a warm worker (whole data dir bound) sees it."""
        if self.runtime.uses_host_paths:
            return str(host_path)
        return str(CONTAINER_DATA_ROOT / host_path.relative_to(self.data_dir))

    # -- internals ---------------------------------------------------------------------

    def _hub_host(self) -> Path:
        return self.data_dir / "data-hub"

    def _bound(self, host_path: Path) -> Path:
        """Where a path under the data dir is bound from (the data dir's symlinks resolved)."""
        return self.real_data_dir / host_path.relative_to(self.data_dir)

    def _spec(
        self,
        image: str,
        container: ContainerConfig,
        what: str,
        own: tuple[Mount, ...],
        *,
        infile: str,
        outfile: str,
        hub: str,
        private_dir: Path,
        interactive: bool = False,
        limited: bool = True,  # the per-task memory limit (init/teardown: the whole slot is theirs)
        client_dir: Path | None = None,  # where the client runs; default `private_dir`, which no task sees
    ) -> RunSpec:
        name = _container_name(self.pilot_id, what)
        # the external dirs were checked once (`for_pilot`); the pilot's own dirs are checked per spec
        mounts = (*validate_mounts(own, self.runtime.mount_forbidden_chars), *self.external)
        return RunSpec(
            image=image,
            argv=tuple(substitute(split_args(container.args), infile=infile, outfile=outfile, data_hub=hub)),
            env=task_env(container.env, infile=infile, outfile=outfile, data_hub=hub),
            mounts=mounts,
            name=name,
            labels={**self.labels, ROLE_LABEL: what},
            workdir=None,  # process runtime: the pilot's cwd, so relative task paths work
            interactive=interactive,
            env_file=None if self.runtime.uses_host_paths else private_dir / f"{name}{ENV_FILE_SUFFIX}",
            client_dir=private_dir if client_dir is None else client_dir,
            memory_limit=self.task_memory if limited else None,
        )


def _same_name(name: str) -> str:
    return name


def _raise_data_dir_problem(
    cfg: PilotConfig, problem: MountProblem | None, name_of: Callable[[str], str] = _same_name
) -> None:
    if problem is not None:
        raise ConfigError(
            name_of(DATA_DIR_VAR),
            str(cfg.data_dir_parent),
            f"{problem.expected} for {cfg.data_dir}, which is bound into every task ({problem.reason})",
        )


def validate_for_runtime(cfg: PilotConfig, name_of: Callable[[str], str] = _same_name) -> None:
    """Refuse at load what no container of `cfg` could be given: ConfigError (exit 2), nothing consumed.

    The binds (data dir, external directories: policy and mount syntax) and
    every env value (what the runtime's env file can carry). `name_of`: a
    variable's name as the user gave it (config/checks.py).
    """
    from . import get_runtime  # local: the runtimes package imports the config model

    runtime = get_runtime(cfg)
    if cfg.container_platform is not ContainerPlatform.PROCESS:
        chars = runtime.mount_forbidden_chars
        _raise_data_dir_problem(cfg, path_problem(cfg.data_dir, chars, must_exist=False), name_of)
        external_mounts(cfg.external_directories, chars)
    for variable, container in (
        ("EWMS_PILOT_TASK_ENV_JSON", cfg.task),
        ("EWMS_PILOT_INIT_ENV_JSON", cfg.init),
        ("EWMS_PILOT_TEARDOWN_ENV_JSON", cfg.teardown),
    ):
        for key, value in (container.env if container else {}).items():
            problem = runtime.env_value_problem(value)
            if problem is not None:
                raise ConfigError(
                    name_of(variable), f"{{{key!r}: ...}}", f"values a task can be given: {key} {problem}"
                )

