"""Checks of a built config against this machine, run last by `load_config`.

They look at the filesystem but change nothing. Each raises `ConfigError`
naming the variable as the user gave it (`name_of` maps a current variable
name to that spelling). The mount policy and what a runtime can carry
(external directories, data dir, env values) is `runtimes.spec.validate_for_runtime`.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigError
from .datadir import data_dir_problem
from .model import PilotConfig

DATA_DIR_VAR = "EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST"


def check_data_dir(cfg: PilotConfig, name_of: Callable[[str], str]) -> None:
    """The parent (journal) and `ewms-pilot-data/` must be, or become, writable directories."""
    for path in (cfg.data_dir_parent, cfg.data_dir):
        problem = data_dir_problem(path)
        if problem is not None:
            raise ConfigError(name_of(DATA_DIR_VAR), str(cfg.data_dir_parent), problem)


def check_loaded(cfg: PilotConfig, name_of: Callable[[str], str]) -> None:
    """Every check of the loaded config against the machine, in order."""
    from ..runtimes.spec import validate_for_runtime  # local: runtimes import the config model

    check_data_dir(cfg, name_of)
    validate_for_runtime(cfg, name_of)  # binds and env values the runtime cannot carry
