"""Infile/outfile formats and the per-task directory layout."""

from __future__ import annotations

import errno
import math
import os
import re
import shutil
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ewms_pilot.pilot.task_handler import _stage_files
from ewms_pilot.tasks import io as task_io_module
from ewms_pilot.tasks.errors import (
    InvalidDataForInfileException,
    InvalidDataFromOutfileException,
    aggregatable,
)
from ewms_pilot.tasks.io import (
    NO_OUTFILE,
    ensure_publishable,
    read_outfile,
    read_outfile_sized,
    write_infile,
)
from ewms_pilot.tasks.taskdir import (
    TaskDir,
    new_task_id,
    normalize_ext,
    remove_warm_root,
    warm_root,
)


@pytest.fixture
def lax_umask() -> Iterator[None]:
    """A umask that lets others read: what the pilot's own modes must not depend on."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# --- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, name",
    [
        ("plain text\nwith ünïcödé ✓\r\nand CRLF kept\n", "infile.txt"),
        ("", "infile.in"),
        ('{"a json": "string stays text"}', "infile.json"),
        ("no extension at all", "infile"),
    ],
)
def test_text_round_trip(tmp_path: Path, data: str, name: str) -> None:
    path = tmp_path / name
    write_infile(data, path)
    assert path.read_bytes() == data.encode("utf-8")
    if name.endswith(".json"):
        assert read_outfile(path) == {"a json": "string stays text"}
    else:
        assert read_outfile(path) == data


def test_bytes_round_trip_and_binary_results_cannot_be_published(tmp_path: Path) -> None:
    path = tmp_path / "infile.pkl"
    data = bytes(range(256))
    write_infile(data, path)
    assert path.read_bytes() == data
    back = read_outfile(path)
    assert back == data  # not UTF-8: read as bytes
    with pytest.raises(InvalidDataFromOutfileException) as ei:
        ensure_publishable(back, path)
    assert ei.value.reason.startswith("outfile is not UTF-8 text (infile.pkl)")
    assert "base64" in ei.value.reason
    assert ei.value.path == path


def test_utf8_bytes_come_back_as_publishable_text(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    write_infile("grüße".encode(), path)
    assert read_outfile(path) == "grüße"
    assert ensure_publishable(read_outfile(path), path) == "grüße"


@pytest.mark.parametrize(
    "data",
    [{"event": [1, 2.5, None, True], "ü": {"nested": "x"}}, [1, "two"], 42, 3.5, None, False],
)
@pytest.mark.parametrize("ext", [".json", ".JSON"])
def test_json_round_trip(tmp_path: Path, data: Any, ext: str) -> None:
    path = tmp_path / f"infile{ext}"
    write_infile(data, path)
    back = read_outfile(path)
    assert back == data and type(back) is type(data)
    assert ensure_publishable(back, path) == data


def test_null_json_outfile_is_data_not_missing(tmp_path: Path) -> None:
    path = tmp_path / "outfile.json"
    path.write_text("null\n")
    result = read_outfile(path)
    assert result is None
    assert result is not NO_OUTFILE
    assert ensure_publishable(result, path) is None


def test_missing_outfile_gives_the_sentinel(tmp_path: Path) -> None:
    result = read_outfile(tmp_path / "outfile-never-written.json")
    assert result is NO_OUTFILE
    assert result is not None and repr(result) == "<NO_OUTFILE>"
    with pytest.raises(TypeError):
        ensure_publishable(result, tmp_path / "x")


# --- infile errors -------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".txt", ".in", ""])
def test_structured_data_needs_a_json_infile(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"infile-abc{ext}"
    with pytest.raises(InvalidDataForInfileException) as ei:
        write_infile({"a": 1}, path)
    want = f"a '{ext}' infile" if ext else "an infile without an extension"
    assert ei.value.reason == (
        f"event data is a dict; only str or bytes can go to {want}, use a .json extension for JSON data"
    )
    assert not path.exists()


def test_unserializable_json_data(tmp_path: Path) -> None:
    path = tmp_path / "infile.json"
    with pytest.raises(InvalidDataForInfileException) as ei:
        write_infile({"s": {1, 2}}, path)
    assert "infile.json" in ei.value.reason and "set" in ei.value.reason
    assert not path.exists()  # nothing half-written
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(InvalidDataForInfileException, match="Circular reference"):
        write_infile(loop, path)


@pytest.mark.parametrize("name", ["infile.in", "infile.json"])
def test_lone_surrogate_text_fails_the_task_not_the_pilot(tmp_path: Path, name: str) -> None:
    """JSON's `"\\udc80"` decodes to a str that UTF-8 cannot encode."""
    path = tmp_path / name
    with pytest.raises(InvalidDataForInfileException) as ei:
        write_infile("ok \udc80 broken", path)
    assert ei.value.reason == (
        "event text is not valid Unicode (lone surrogate at position 3); it cannot be written as UTF-8"
    )
    assert ei.value.path == path
    assert not path.exists()


def test_lone_surrogates_inside_json_data_are_escaped(tmp_path: Path) -> None:
    path = tmp_path / "infile.json"
    write_infile({"k\ud800": ["\udc80"]}, path)
    assert path.read_bytes() == b'{"k\\ud800": ["\\udc80"]}'
    assert read_outfile(path) == {"k\ud800": ["\udc80"]}


def _nested(depth: int) -> Any:
    data: Any = []
    for _ in range(depth):
        data = [data]
    return data


@pytest.mark.parametrize(
    "data, reason",
    [
        (
            _nested(100_000),
            "event data is nested too deeply to be written as JSON to infile infile.json",
        ),
        (10**5000, "event data cannot be written as JSON to infile infile.json: Exceeds the limit"),
        ({(1, 2): "x"}, "event data cannot be written as JSON to infile infile.json: keys must be"),
    ],
    ids=["deeply-nested", "huge-int", "tuple-key"],
)
def test_data_json_cannot_write_fails_the_task(tmp_path: Path, data: Any, reason: str) -> None:
    path = tmp_path / "infile.json"
    with pytest.raises(InvalidDataForInfileException) as ei:
        write_infile(data, path)
    assert ei.value.reason.startswith(reason)
    assert not path.exists()


def test_nan_is_written_as_1x_writes_it(tmp_path: Path) -> None:
    """Not strict JSON, but what Python's json (and so 1.x and mqclient) writes and reads."""
    path = tmp_path / "infile.json"
    write_infile({"x": float("nan"), "y": float("-inf")}, path)
    assert path.read_text() == '{"x": NaN, "y": -Infinity}'
    back = read_outfile(path)
    assert math.isnan(back["x"]) and back["y"] == float("-inf")


@pytest.mark.timeout(30)
def test_infile_is_never_written_through_a_planted_link_or_fifo(tmp_path: Path) -> None:
    """A warm worker sees the data dir: a link at the next infile's path must not redirect the write."""
    host = tmp_path / "host.txt"
    host.write_text("host file")
    task_io = tmp_path / "task" / "task-io"
    task_io.mkdir(parents=True)
    link = task_io / "infile-a.txt"
    link.symlink_to(host)
    with pytest.raises(OSError, match="infile-a.txt is a symlink; only a regular file is written"):
        write_infile("event", link)
    assert host.read_text() == "host file"
    fifo = task_io / "infile-b.txt"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="infile-b.txt is a FIFO"):
        _within(5, lambda: write_infile("event", fifo))
    (tmp_path / "task" / "task-io").rename(tmp_path / "task" / "real-io")
    (tmp_path / "task" / "task-io").symlink_to(tmp_path / "task" / "real-io")
    with pytest.raises(OSError, match="directory 'task-io' on its path is a symlink"):
        write_infile("event", task_io / "infile-c.txt")
    assert not (tmp_path / "task" / "real-io" / "infile-c.txt").exists()


def test_a_kept_shared_dir_is_used_only_while_its_path_still_leads_to_it(tmp_path: Path) -> None:
    """Warm mode keeps its shared dir's fd per thread: a worker that swaps, replaces or removes the dir
    between events never gets the pilot to write, read or delete through a link, nor into a dir the
    path no longer shows."""
    td = TaskDir.in_shared(warm_root(tmp_path / "data", "pilot123"), "a", ".txt", ".txt")
    td.make()
    assert write_infile("event a", td.infile, shared_dir=True) == len("event a")
    td.outfile.write_text("result a")
    assert read_outfile_sized(td.outfile, shared_dir=True) == ("result a", len("result a"))
    # swapped for a link to a host dir: refused, and nothing goes to the host or to the kept dir
    host = tmp_path / "host"
    host.mkdir()
    (host / "outfile-b.txt").write_text("HOST-SECRET")
    moved = td.root / "moved-io"
    td.task_io.rename(moved)
    td.task_io.symlink_to(host)
    b = TaskDir.in_shared(td.root, "b", ".txt", ".txt")
    with pytest.raises(OSError, match="directory 'task-io' on its path is a symlink"):
        write_infile("event b", b.infile, shared_dir=True)
    with pytest.raises(InvalidDataFromOutfileException, match="directory 'task-io' on its path is a symlink"):
        read_outfile_sized(b.outfile, shared_dir=True)
    (moved / "outfile-b.txt").write_text("kept dir")
    with pytest.raises(OSError):
        b.remove()
    assert sorted(p.name for p in host.iterdir()) == ["outfile-b.txt"]
    assert (host / "outfile-b.txt").read_text() == "HOST-SECRET"
    assert not (moved / "infile-b.txt").exists() and (moved / "outfile-b.txt").exists()
    # replaced by a new real dir: the file goes where the path leads
    td.task_io.unlink()
    td.task_io.mkdir()
    write_infile("event b", b.infile, shared_dir=True)
    assert b.infile.read_text() == "event b"
    b.remove()
    assert not b.infile.exists() and (moved / "outfile-b.txt").exists()
    # removed: the write says so (the warm stage then makes the dir again)
    td.task_io.rmdir()
    with pytest.raises(FileNotFoundError):
        write_infile("event c", td.task_io / "infile-c.txt", shared_dir=True)
    assert read_outfile_sized(td.task_io / "outfile-c.txt", shared_dir=True) == (NO_OUTFILE, None)


def _kept_shared(tmp_path: Path) -> TaskDir:
    """A warm event's files whose shared dir this thread has kept (one write through it)."""
    td = TaskDir.in_shared(warm_root(tmp_path / "data", "p1"), "a", ".txt", ".txt")
    td.make()
    write_infile("x", td.infile, shared_dir=True)
    return td


@pytest.mark.parametrize("target", ["moved root", "nowhere"])
def test_a_link_planted_at_the_root_of_a_kept_shared_dir_is_refused(tmp_path: Path, target: str) -> None:
    """Both task-writable levels are checked on every use: a worker's link at warm-<id> is refused as before."""
    td = _kept_shared(tmp_path)
    td.outfile.write_text("the result")
    moved = td.root.with_name("moved-root")
    td.root.rename(moved)
    td.root.symlink_to(moved if target == "moved root" else tmp_path / "nowhere")
    with pytest.raises(OSError, match="directory 'warm-p1' on its path is a symlink"):
        write_infile("y", td.root / "task-io" / "infile-b.txt", shared_dir=True)
    with pytest.raises(InvalidDataFromOutfileException, match="directory 'warm-p1' on its path is a symlink"):
        read_outfile_sized(td.outfile, shared_dir=True)  # never "no outfile": the event must not be acked empty
    assert not (moved / "task-io" / "infile-b.txt").exists()


def test_a_shared_dir_is_never_made_through_a_link_planted_at_its_root(tmp_path: Path) -> None:
    """Before: `make` found warm-<id> existing and made task-io wherever the link pointed."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    td = TaskDir.in_shared(warm_root(tmp_path / "data", "p1"), "a", ".txt", ".txt")
    td.root.parent.mkdir()
    td.root.symlink_to(elsewhere)
    with pytest.raises(OSError, match="task directory task-io was not made: directory 'warm-p1' on its path is a symlink"):
        td.make()
    assert list(elsewhere.iterdir()) == []
    td.root.unlink()
    td.make()  # the worker's link gone: made as usual
    assert td.task_io.is_dir() and not td.task_io.is_symlink()


def test_a_kept_shared_dir_replaced_by_a_file_says_so_as_before(tmp_path: Path) -> None:
    td = _kept_shared(tmp_path)
    shutil.rmtree(td.root)
    td.root.write_text("")
    messages = []
    for shared in (False, True):
        with pytest.raises(OSError) as ei:
            write_infile("y", td.infile, shared_dir=shared)
        messages.append(str(ei.value))
    assert messages[0] == messages[1] and "directory 'warm-p1' on its path is a regular file" in messages[0]


def test_a_kept_fd_that_went_stale_is_dropped_after_one_error(tmp_path: Path) -> None:
    """Emulates a network filesystem that gives a removed directory's inode number to its replacement:
    the identity check passes, the fd is dead; the event's staging recovers, and so do later events."""
    td = _kept_shared(tmp_path)
    gone = tmp_path / "gone"
    gone.mkdir()
    stale = os.open(gone, os.O_RDONLY | os.O_DIRECTORY)
    gone.rmdir()
    kept = task_io_module._kept.dir
    os.close(kept.fd)
    kept.fd = stale  # same identity as the real dir, but a removed one
    for i in range(3):
        event = TaskDir.in_shared(td.root, f"e{i}", ".txt", ".txt")
        assert _stage_files(event, "data", []) == 4
        assert event.infile.read_text() == "data"


def test_a_failed_infile_write_in_a_shared_dir_still_finds_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk fails the write: the task dir is known, so the handler can free its files (and say where)."""
    td = _kept_shared(tmp_path)

    def no_space(fd: int, mode: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(task_io_module.os, "fchmod", no_space)
    made: list[TaskDir] = []
    event = TaskDir.in_shared(td.root, "b", ".txt", ".txt")
    with pytest.raises(OSError, match="No space"):
        _stage_files(event, "x" * 1000, made)
    assert made == [event]


def test_infile_is_owner_only_whatever_the_umask(tmp_path: Path, lax_umask: None) -> None:
    path = tmp_path / "infile.in"
    write_infile("x", path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# --- outfile errors ------------------------------------------------------------------


def test_invalid_json_outfile_names_file_and_position(tmp_path: Path) -> None:
    path = tmp_path / "outfile-abc.json"
    path.write_text('{\n  "a": 1,\n  "b": \n}\n')
    with pytest.raises(InvalidDataFromOutfileException) as ei:
        read_outfile(path)
    assert ei.value.reason == (
        "outfile outfile-abc.json is not valid JSON: Expecting value at line 4 column 1 (char 20)"
    )


def test_empty_and_non_utf8_json_outfiles(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    path.write_text("  \n")
    with pytest.raises(InvalidDataFromOutfileException, match="is empty; expected JSON"):
        read_outfile(path)
    path.write_bytes(b'"\xff"')
    with pytest.raises(InvalidDataFromOutfileException, match="not UTF-8"):
        read_outfile(path)


def _within(seconds: float, fn: Callable[[], Any]) -> Any:
    """`fn()`'s result or exception, or a test failure if it blocks (e.g. on a FIFO)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        pytest.fail(f"blocked for more than {seconds} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _make_fifo(path: Path) -> None:
    os.mkfifo(path)


def _make_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))  # the file stays after close


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "make, kind",
    [(_make_fifo, "FIFO"), (Path.mkdir, "directory"), (_make_socket, "socket")],
    ids=["fifo", "directory", "socket"],
)
def test_outfile_that_is_not_a_regular_file_fails_at_once(
    tmp_path: Path, make: Callable[[Path], None], kind: str
) -> None:
    path = tmp_path / "outfile-abc.json"
    make(path)  # a task that created this instead of writing a file
    with pytest.raises(InvalidDataFromOutfileException) as ei:
        _within(5, lambda: read_outfile(path))
    assert ei.value.reason == f"outfile outfile-abc.json is a {kind}; only a regular file is read"
    assert ei.value.path == path


@pytest.mark.parametrize("target", ["outside", "/dev/zero", "inside", "dangling"])
def test_symlinked_outfile_is_never_followed(tmp_path: Path, target: str) -> None:
    """A container can link its outfile to a host path it cannot see; the pilot must not read it."""
    task_io = tmp_path / "task" / "task-io"
    task_io.mkdir(parents=True)
    secret = tmp_path / "host-only" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("HOST-SECRET")
    (task_io / "result.txt").write_text("even a link to the task's own file")
    dest = {"outside": str(secret), "inside": "result.txt", "dangling": "gone"}.get(target, target)
    path = task_io / "outfile-abc.txt"
    path.symlink_to(dest)
    with pytest.raises(InvalidDataFromOutfileException) as ei:
        _within(5, lambda: read_outfile(path))
    assert ei.value.reason == "outfile outfile-abc.txt is a symlink; only a regular file is read"


@pytest.mark.parametrize("level", ["task-io", "task root"])
def test_outfile_under_a_symlinked_task_dir_is_not_read(tmp_path: Path, level: str) -> None:
    """A task that replaced its task-io (or a warm worker its task's root) with a link to host files."""
    host = tmp_path / "host" / "task-io"
    host.mkdir(parents=True)
    (host / "outfile-abc.txt").write_text("HOST-SECRET")
    root = tmp_path / "data" / "abc"
    root.parent.mkdir()
    if level == "task-io":
        root.mkdir()
        (root / "task-io").symlink_to(host)
    else:
        root.symlink_to(host.parent)
    path = root / "task-io" / "outfile-abc.txt"
    assert path.read_text() == "HOST-SECRET"  # what following the links would publish
    with pytest.raises(InvalidDataFromOutfileException) as ei:
        read_outfile(path)
    name = path.parent.name if level == "task-io" else root.name
    assert ei.value.reason == (
        f"outfile outfile-abc.txt was not read: directory '{name}' on its path is a symlink"
    )


def test_outfile_exactly_at_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("x" * 1000)
    assert read_outfile(path, max_bytes=1000) == "x" * 1000
    path.write_text("x" * 1001)
    with pytest.raises(InvalidDataFromOutfileException, match="is 1001 bytes"):
        read_outfile(path, max_bytes=1000)


def test_oversized_results_fail_with_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("x" * 2000)
    with pytest.raises(InvalidDataFromOutfileException) as ei:
        read_outfile(path, max_bytes=1000)
    assert ei.value.reason == "outfile out.txt is 2000 bytes, more than the 1000-byte result limit"
    text = read_outfile(path)
    with pytest.raises(InvalidDataFromOutfileException, match="2000 bytes"):
        ensure_publishable(text, path, max_bytes=1000)
    assert ensure_publishable("é" * 500, path, max_bytes=1000) == "é" * 500
    with pytest.raises(InvalidDataFromOutfileException, match="1002 bytes"):
        ensure_publishable("é" * 501, path, max_bytes=1000)
    with pytest.raises(InvalidDataFromOutfileException, match="more than the 100-byte"):
        ensure_publishable({"k": "v" * 200}, path, max_bytes=100)


# --- task directory ------------------------------------------------------------------


@pytest.mark.parametrize(
    "given, want", [(".json", ".json"), ("json", ".json"), ("..JSON", ".json"), ("", ""), (".", "")]
)
def test_extension_normalization(given: str, want: str) -> None:
    assert normalize_ext(given) == want


def test_taskdir_layout_and_permissions(tmp_path: Path, lax_umask: None) -> None:
    data_dir = tmp_path / "ewms-pilot-data"
    td = TaskDir.create(data_dir, "0123abcd4567", "json", ".OUT")
    assert td.root == data_dir / "0123abcd4567"
    assert td.infile == td.root / "task-io" / "infile-0123abcd4567.json"
    assert td.outfile == td.root / "task-io" / "outfile-0123abcd4567.out"
    assert td.stdout == td.root / "outputs" / "stdoutfile"
    assert td.stderr == td.root / "outputs" / "stderrfile"
    assert td.task_io.is_dir() and td.outputs.is_dir()
    # the pilot's user only (a container writes as root or as that user: docs/sandbox.md)
    for d in (td.root, td.task_io, td.outputs):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    no_ext = TaskDir.layout(data_dir, "t2", "", "")
    assert no_ext.infile.name == "infile-t2" and no_ext.outfile.name == "outfile-t2"


def test_taskdir_remove_is_idempotent(tmp_path: Path) -> None:
    td = TaskDir.create(tmp_path, new_task_id(), ".in", ".out")
    write_infile("x", td.infile)
    td.outfile.write_text("y")
    td.stderr.write_bytes(b"z")
    td.remove()
    assert not td.root.exists()
    td.remove()  # already gone: fine
    assert list(tmp_path.iterdir()) == []


def test_taskdir_refuses_reused_or_unsafe_ids(tmp_path: Path) -> None:
    TaskDir.create(tmp_path, "same", ".in", ".out")
    with pytest.raises(FileExistsError):
        TaskDir.create(tmp_path, "same", ".in", ".out")
    for bad in ["", "..", "a/b"]:
        with pytest.raises(ValueError, match="task id"):
            TaskDir.layout(tmp_path, bad, ".in", ".out")
    with pytest.raises(ValueError, match="path separator"):
        TaskDir.layout(tmp_path, "ok", "../x", ".out")


def test_new_task_ids_are_short_unique_and_name_safe() -> None:
    ids = {new_task_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(re.fullmatch(r"[0-9a-f]{12}", i) for i in ids)


def test_every_task_id_is_taken_out_of_an_aggregated_error() -> None:
    """The chirp error and the journal's reason are the same text for every task (an all-digit id was kept)."""
    for i in (new_task_id() for _ in range(20_000)):
        line = f"reading /scratch/job/ewms-pilot-data/{i}/task-io/infile-{i}.in"
        assert aggregatable(line) == "reading <task dir>/task-io/infile-<id>.in", i


def test_a_forked_child_does_not_repeat_its_parents_task_ids() -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then out without pytest's clean-up
        os.write(w, " ".join(new_task_id() for _ in range(100)).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        child = set(f.read().split())
    os.waitpid(pid, 0)
    parent = {new_task_id() for _ in range(100)}
    assert len(child) == 100 and not child & parent


def test_taskdir_remove_never_follows_a_planted_link(tmp_path: Path) -> None:
    """A task that swapped its task-io for a link to a host dir: only its own tree goes, the host files stay."""
    host = tmp_path / "host"
    host.mkdir()
    td = TaskDir.create(tmp_path / "data", new_task_id(), ".in", ".out")
    (host / td.infile.name).write_text("host file")
    td.task_io.rmdir()
    td.task_io.symlink_to(host)
    (td.outputs / "extra").write_text("a file the pilot does not know of")
    td.remove()
    assert not td.root.exists()
    assert (host / td.infile.name).read_text() == "host file"
    # a warm worker that swapped its pilot's shared task-io for a link: nothing through it goes
    warm = TaskDir.in_shared(warm_root(tmp_path / "data", "pilot123"), new_task_id(), ".in", ".out")
    warm.root.mkdir()
    warm.task_io.symlink_to(host)
    (host / warm.outfile.name).write_text("host file")
    with pytest.raises(OSError):
        warm.remove()
    assert (host / warm.outfile.name).read_text() == "host file"


def test_warm_events_share_one_dir_and_remove_only_their_files(tmp_path: Path) -> None:
    """Warm mode makes no directory per event: two events' files side by side, each removed alone."""
    root = warm_root(tmp_path, "pilot123")
    a, b = (TaskDir.in_shared(root, new_task_id(), ".in", ".out") for _ in range(2))
    for td in (a, b):
        td.make()
        write_infile("x", td.infile)
        td.outfile.write_text("y")
    assert a.task_io == b.task_io and sorted(p.name for p in a.task_io.iterdir()) == sorted(
        p.name for td in (a, b) for p in (td.infile, td.outfile)
    )
    a.remove()
    a.remove()  # already gone: fine
    assert sorted(p.name for p in a.task_io.iterdir()) == sorted([b.infile.name, b.outfile.name])
    remove_warm_root(root)  # b's files are kept: so is the dir
    assert b.infile.exists()
    b.remove()
    remove_warm_root(root)
    assert list(tmp_path.iterdir()) == []
