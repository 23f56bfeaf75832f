"""Run a pilot process and record what only the kernel knows: exit time, peak RSS, CPU time.

Peak RSS is `VmHWM` from /proc/<pid>/status (the pilot process itself, not
its containers), sampled until it exits: the kernel keeps the high-water mark,
so a sample every few ms misses only growth in the last few ms of life. CPU
time is utime+stime from /proc/<pid>/stat, read once more while the exited
process is still a zombie (`waitid(WNOWAIT)` waits without reaping it), so
all of it is counted and none of its children's.
"""

from __future__ import annotations

import dataclasses as dc
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

SAMPLE_EVERY = 0.02  # s between VmHWM samples
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dc.dataclass(frozen=True)
class ProcResult:
    """How one watched process ended."""

    returncode: int | None  # None: it overran its time limit and was killed
    exited_at: float  # time.monotonic() when it became a zombie
    peak_rss_kib: int | None  # VmHWM; None if never sampled
    cpu_s: float | None  # utime + stime of the process itself


def _read_hwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None  # a zombie has no memory map any more


def _read_cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()  # the command name may contain spaces
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


class WatchedProcess:
    """`Popen` in its own session plus a sampler thread; `wait()` returns a `ProcResult`."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        stdout: Path,
        stderr: Path,
    ) -> None:
        self._out = stdout.open("wb")
        self._err = stderr.open("wb")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
            start_new_session=True,  # so a hung pilot can be killed with everything it started
        )
        self.exited = threading.Event()
        self._result: ProcResult | None = None
        self._hwm: int | None = None
        self._thread = threading.Thread(target=self._watch, name=f"watch-{self.proc.pid}", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        pid = self.proc.pid
        while True:
            hwm = _read_hwm_kib(pid)
            if hwm is not None:
                self._hwm = max(self._hwm or 0, hwm)
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
            if info is not None and info.si_pid == pid:
                exited_at = time.monotonic()
                cpu = _read_cpu_s(pid)  # zombie: final numbers, not yet reaped
                returncode = self.proc.wait()
                self._result = ProcResult(returncode, exited_at, self._hwm, cpu)
                self.exited.set()
                return
            time.sleep(SAMPLE_EVERY)

    def kill(self) -> None:
        """SIGKILL the whole process group (the pilot and whatever it started)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def wait(self, timeout: float) -> ProcResult:
        """Block until it exits (killing it after `timeout` s); run it in a thread from async code."""
        if not self.exited.wait(timeout):
            self.kill()
            self.exited.wait(30)
            done = self._result
            self._close()
            return ProcResult(None, time.monotonic(), done.peak_rss_kib if done else self._hwm, done.cpu_s if done else None)
        self._close()
        assert self._result is not None
        return self._result

    def _close(self) -> None:
        self._out.close()
        self._err.close()
