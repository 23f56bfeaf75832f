"""Task failure types and the one stderr line a failure message quotes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ewms_pilot.tasks.errors import (
    MAX_ERROR_LINE_CHARS,
    ContainerRunError,
    FailurePatternError,
    InvalidDataForInfileException,
    InvalidDataFromOutfileException,
    TaskCancelledError,
    TaskFailure,
    TaskTimeoutError,
    describe_failure,
    extract_error_line,
    read_tail,
)


def real_stderr(code: str) -> str:
    """The stderr of a real Python process running `code` (it must fail)."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0
    return proc.stderr


# --- names (EWMS_PILOT_OKAY_ERRORS) --------------------------------------------------


def test_names_cover_leaf_and_bases_for_okay_errors() -> None:
    err = TaskTimeoutError.after(5.0)
    # TimeoutError: what 1.x users wrote in OKAY_ERRORS to keep a pilot going after a timeout
    assert err.names() == {"TaskTimeoutError", "ContainerRunError", "TaskFailure", "TimeoutError"}
    assert FailurePatternError.names() == {
        "FailurePatternError",
        "ContainerRunError",
        "TaskFailure",
    }
    # a site listing the 1.x name still matches
    assert "ContainerRunError" in ContainerRunError.from_exit(1, "x").names()


@pytest.mark.parametrize(
    "cls",
    [InvalidDataForInfileException, InvalidDataFromOutfileException, TaskCancelledError],
)
def test_names_are_1x_compatible_and_exclude_builtins(cls: type[TaskFailure]) -> None:
    assert cls.names() == {cls.__name__, "TaskFailure"}
    assert "Exception" not in cls.names()


# --- messages ------------------------------------------------------------------------


def test_describe_failure_names_task_exit_code_and_line() -> None:
    err = ContainerRunError.from_exit(3, "ValueError: bad input")
    assert (err.exit_code, err.stderr_line) == (3, "ValueError: bad input")
    msg = describe_failure("a1b2c3d4e5f6", err)
    assert msg == (
        "task a1b2c3d4e5f6 failed: ContainerRunError: exited with code 3: ValueError: bad input"
    )


def test_killed_task_names_the_signal() -> None:
    err = ContainerRunError.from_exit(-9, "")
    assert err.reason == "was killed by SIGKILL (exit code -9): (no stderr output)"
    assert err.exit_code == -9


def test_timeout_and_pattern_messages() -> None:
    t = TaskTimeoutError.after(90.0, "still working")
    assert t.timeout == 90.0 and t.exit_code is None
    assert describe_failure("t1", t) == (
        "task t1 failed: TaskTimeoutError: timed out after 90 s; last stderr line: still working"
    )
    p = FailurePatternError.matched(r"FATAL\b", "  FATAL: detector offline\n")
    assert p.exit_code == 0
    assert p.stderr_line == "FATAL: detector offline"
    assert "FATAL: detector offline" in describe_failure("t2", p)
    assert "'FATAL\\\\b'" in p.reason


def test_reason_is_always_one_line() -> None:
    err = InvalidDataFromOutfileException("first\nsecond\r\n\nthird", Path("x"))
    assert err.reason == "first | second | third"
    assert str(err) == err.reason
    assert "\n" not in describe_failure("t", err)


def test_plain_reason_constructors_for_callers_with_their_own_message() -> None:
    err = ContainerRunError("exited with code 2: usage", exit_code=2, stderr_line="usage")
    assert (err.reason, err.exit_code, err.stderr_line) == ("exited with code 2: usage", 2, "usage")
    assert TaskTimeoutError("timed out after 5s").exit_code is None
    assert FailurePatternError("matched", stderr_line="x").exit_code == 0
    assert InvalidDataForInfileException("not mqclient format").path is None


def test_cancelled_has_a_default_reason() -> None:
    assert "shutting down" in describe_failure("t", TaskCancelledError())


# --- extract_error_line --------------------------------------------------------------


def test_plain_last_line_without_traceback() -> None:
    assert extract_error_line("starting\nreading input\n\nerror: no such file: x.i3\n\n") == (
        "error: no such file: x.i3"
    )
    assert extract_error_line("") == ""
    assert extract_error_line("\n  \n") == ""


def test_real_traceback_with_output_after_it() -> None:
    stderr = real_stderr(
        """
        import sys, atexit
        atexit.register(lambda: print("cleanup done", file=sys.stderr))
        def reco():
            raise RuntimeError("Error reading table coefficients")
        reco()
        """
    )
    assert stderr.rstrip().endswith("cleanup done")  # the line a naive "last line" would pick
    assert extract_error_line(stderr) == "RuntimeError: Error reading table coefficients"


def test_chained_exceptions_the_last_one_wins() -> None:
    stderr = real_stderr(
        """
        try:
            {}["missing"]
        except KeyError:
            try:
                raise ValueError("first handler failed")
            except ValueError:
                raise OSError(107, "Transport endpoint is not connected")
        """
    )
    assert stderr.count("Traceback (most recent call last):") == 3
    assert extract_error_line(stderr) == "OSError: [Errno 107] Transport endpoint is not connected"


def test_multiline_message_and_caret_lines() -> None:
    stderr = real_stderr(
        """
        x = [1]
        def f():
            return x[0] + x[1]
        f()
        """
    )
    assert extract_error_line(stderr) == "IndexError: list index out of range"
    stderr = real_stderr('raise ValueError("line one\\nline two")')
    assert extract_error_line(stderr) == "ValueError: line one"


def test_exception_group_traceback() -> None:
    stderr = real_stderr('raise ExceptionGroup("two failures", [ValueError("a"), TypeError("b")])')
    assert extract_error_line(stderr) == "ExceptionGroup: two failures (2 sub-exceptions)"


def test_truncated_traceback_falls_back_to_last_line() -> None:
    stderr = 'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
    assert extract_error_line(stderr) == 'File "x.py", line 1, in <module>'


def test_apptainer_noise_is_skipped() -> None:
    python_tb = real_stderr('raise SystemExit(__import__("json").loads("{"))')
    stderr = (
        "INFO:    Converting SIF file to temporary sandbox...\n"
        "WARNING: underlay of /etc/localtime required more than 50 (78) bind mounts\n"
        + python_tb
        + "INFO:    Cleaning up image...\n"
        "DEBUG   [U=613,P=47]       CleanupContainer()            Cleanup container\n"
        "VERBOSE [U=613,P=1]        Master()                      Child exited with exit status 1\n"
    )
    expected = "json.decoder.JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    assert extract_error_line(stderr, apptainer=True) == expected
    plain = "INFO:    Converting SIF file...\nhello: cannot open detector.gcd\nINFO:    Cleaning up image...\n"
    assert extract_error_line(plain, apptainer=True) == "hello: cannot open detector.gcd"
    # without the flag, the noise is taken at face value
    assert extract_error_line(plain) == "INFO:    Cleaning up image..."


def test_apptainer_fatal_lines_are_kept_and_all_noise_gives_last_line() -> None:
    stderr = (
        "INFO:    Converting SIF file to temporary sandbox...\n"
        "FATAL:   could not open image /cvmfs/x.sif: no such file\n"
        "INFO:    Cleaning up image...\n"
    )
    assert extract_error_line(stderr, apptainer=True) == (
        "FATAL:   could not open image /cvmfs/x.sif: no such file"
    )
    only_noise = "INFO:    Converting SIF file...\nDEBUG   [U=1,P=2]   Master()   Child exited with exit status 255\n"
    assert extract_error_line(only_noise, apptainer=True).endswith(
        "Child exited with exit status 255"
    )


def test_line_is_limited_and_ansi_colors_removed() -> None:
    assert len(extract_error_line("x" * 100_000)) == MAX_ERROR_LINE_CHARS
    assert extract_error_line("x" * 100_000).endswith("…")
    assert extract_error_line("\x1b[31mERROR\x1b[0m: boom\n") == "ERROR: boom"


# --- read_tail -----------------------------------------------------------------------


def test_huge_non_utf8_stderr_tail(tmp_path: Path) -> None:
    tb = real_stderr('raise MemoryError("cannot allocate 9 GB")').encode()
    path = tmp_path / "stderrfile"
    with path.open("wb") as f:
        for _ in range(300):  # ~20 MB of progress noise with invalid UTF-8 in it
            f.write(b"progress \xff\xfe\x80 " * 5000 + b"\n")
        f.write(tb)
    tail = read_tail(path)
    assert len(tail.encode()) <= 64 * 1024 * 3  # bounded (replacement chars are 3 bytes)
    assert not tail.startswith("ss ")  # the line cut by the window is dropped
    assert "\ufffd" in tail
    assert extract_error_line(tail) == "MemoryError: cannot allocate 9 GB"


def test_tail_of_one_huge_line_and_of_small_or_missing_files(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"a" * 1_000_000 + b"\n")
    assert read_tail(big, max_bytes=1000) == "a" * 999 + "\n"
    small = tmp_path / "small"
    small.write_bytes("héllo\nwörld\n".encode())
    assert read_tail(small) == "héllo\nwörld\n"
    assert read_tail(tmp_path / "never-written") == ""
    assert read_tail(tmp_path) == ""  # a directory: still no exception


# --- reasons aggregate across pilots; detail keeps the task's own text ----------------


def test_identical_failures_on_different_pilots_have_the_same_reason() -> None:
    """TMS counts identical HTChirpEWMSPilotError strings: task ids, task dirs, temp names, times differ per pilot."""

    def stderr(scratch: str, task_id: str, when: str) -> str:
        return (
            f"{when} INFO starting\n"
            f"{when} ERROR cannot open {scratch}/ewms-pilot-data/{task_id}/task-io/infile-{task_id}.json "
            f"(cache {scratch}/tmp/tmpk3j_x9aq/table.fits)\n"
        )

    one = ContainerRunError.from_exit(1, stderr("/var/lib/condor/execute/dir_4711", "1a2b3c4d5e6f", "2026-12-01 08:00:01,123"))
    two = ContainerRunError.from_exit(1, stderr("/var/lib/condor/execute/dir_99", "0f9e8d7c6b5a", "2026-12-02T17:45:09"))
    assert one.reason == two.reason == (
        "exited with code 1: <time> ERROR cannot open <task dir>/task-io/infile-<id>.json "
        "(cache /var/lib/condor/execute/dir_<n>/tmp/tmp<x>/table.fits)"
    )
    assert "1a2b3c4d5e6f" not in one.reason and "dir_4711" not in one.reason and "08:00" not in one.reason
    # the detail is the task's own text, for whoever debugs it
    assert "1a2b3c4d5e6f" in one.detail and "0f9e8d7c6b5a" in two.detail


def test_detail_is_the_last_traceback_else_the_stderr_tail() -> None:
    chained = real_stderr(
        """
        import sys
        try:
            {}["missing"]
        except KeyError:
            raise OSError(107, "Transport endpoint is not connected")
        """
    )
    err = ContainerRunError.from_exit(1, "some progress output\n" + chained)
    assert err.detail.startswith("Traceback (most recent call last):")
    assert "KeyError" not in err.detail  # the earlier traceback of the chain is not the last one
    assert err.detail.endswith("OSError: [Errno 107] Transport endpoint is not connected")

    group = real_stderr(
        """
        def a(): raise ValueError("a")
        def b(): raise TypeError("b")
        errors = []
        for f in (a, b):
            try:
                f()
            except Exception as e:
                errors.append(e)
        raise ExceptionGroup("two failures", errors)
        """
    )
    assert group.count("Traceback (most recent call last):") == 3  # the group's, and one per member
    detail = ContainerRunError.from_exit(1, group).detail
    assert detail.startswith("  + Exception Group Traceback (most recent call last):")
    assert "ValueError: a" in detail and "TypeError: b" in detail

    plain = "".join(f"step {i}\n" for i in range(100)) + "curl: (22) The requested URL returned error: 404\n"
    tail = TaskTimeoutError.after(5, plain).detail.splitlines()
    assert len(tail) == 20 and tail[-1].startswith("curl: (22)") and tail[0] == "step 81"

    huge = "Traceback (most recent call last):\n" + "".join(f'  File "m{i}.py", line 1, in f\n' for i in range(5000)) + "ValueError: deep\n"
    cut = ContainerRunError.from_exit(1, huge).detail
    assert len(cut) < 17_000 and "characters cut]" in cut
    assert cut.startswith("Traceback (most recent call last):") and cut.endswith("ValueError: deep")
