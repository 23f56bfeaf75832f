"""Infile/outfile formats and the per-task directory layout."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ewms_pilot.tasks.errors import InvalidDataForInfileException, InvalidDataFromOutfileException
from ewms_pilot.tasks.io import (
    NO_OUTFILE,
    ensure_publishable,
    read_outfile,
    write_infile,
)
from ewms_pilot.tasks.taskdir import TaskDir, new_task_id, normalize_ext


@pytest.fixture
def strict_umask() -> Iterator[None]:
    old = os.umask(0o077)
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


def test_infile_readable_by_another_user_despite_umask(tmp_path: Path, strict_umask: None) -> None:
    path = tmp_path / "infile.in"
    write_infile("x", path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


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


def test_unreadable_outfile_is_a_task_failure(tmp_path: Path) -> None:
    path = tmp_path / "outfile.out"
    path.mkdir()  # a task that created a directory instead
    with pytest.raises(InvalidDataFromOutfileException, match="outfile.out cannot be read"):
        read_outfile(path)


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


def test_taskdir_layout_and_permissions(tmp_path: Path, strict_umask: None) -> None:
    data_dir = tmp_path / "ewms-pilot-data"
    td = TaskDir.create(data_dir, "0123abcd4567", "json", ".OUT")
    assert td.root == data_dir / "0123abcd4567"
    assert td.infile == td.root / "task-io" / "infile-0123abcd4567.json"
    assert td.outfile == td.root / "task-io" / "outfile-0123abcd4567.out"
    assert td.stdout == td.root / "outputs" / "stdoutfile"
    assert td.stderr == td.root / "outputs" / "stderrfile"
    assert td.task_io.is_dir() and td.outputs.is_dir()
    # a non-root user inside a container must be able to write the outfile
    assert stat.S_IMODE(td.task_io.stat().st_mode) == 0o777
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
