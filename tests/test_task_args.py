"""Splitting the configured args, filling in placeholders, and the task's env."""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ewms_pilot.tasks.args import PLACEHOLDERS, split_args, substitute, task_env

PATHS = {
    "infile": "/ewms-pilot-data/task-io/infile-abc.json",
    "outfile": "/ewms-pilot-data/task-io/outfile-abc.json",
    "data_hub": "/ewms-pilot-data/data-hub",
}


def test_split_honours_shell_quoting() -> None:
    assert split_args("""python -m reco --name 'two words' --msg "it's \\"ok\\"" a\\ b""") == [
        "python",
        "-m",
        "reco",
        "--name",
        "two words",
        "--msg",
        'it\'s "ok"',
        "a b",
    ]
    assert split_args("") == []
    assert split_args("  --x  #not-a-comment ") == ["--x", "#not-a-comment"]


@pytest.mark.parametrize(
    "args, hint",
    [
        ("--name 'unclosed", "a quote is not closed"),
        ("--x \\", "the args end with a lone backslash"),
    ],
)
def test_split_unbalanced_quoting_is_a_clear_error(args: str, hint: str) -> None:
    with pytest.raises(ValueError) as ei:
        split_args(args)
    assert str(ei.value).startswith(f"cannot split into arguments: {hint}")
    assert "\n" not in str(ei.value)


@pytest.mark.parametrize(
    "arg, want",
    [
        ("<<INFILE>>", PATHS["infile"]),
        ("<<OUTFILE>>", PATHS["outfile"]),
        ("<<DATA_HUB>>", PATHS["data_hub"]),
        ("{{INFILE}}", PATHS["infile"]),
        ("{{IN_FILE}}", PATHS["infile"]),
        ("{{OUTFILE}}", PATHS["outfile"]),
        ("{{OUT_FILE}}", PATHS["outfile"]),
        ("{{DATA_HUB}}", PATHS["data_hub"]),
        ("{{DATAHUB}}", PATHS["data_hub"]),
        ("--in=<<INFILE>>", "--in=" + PATHS["infile"]),
        ("<<INFILE>>:{{OUT_FILE}}", PATHS["infile"] + ":" + PATHS["outfile"]),
        ("<<DATA_HUB>>/gcd.i3", PATHS["data_hub"] + "/gcd.i3"),
        ("<<infile>> <<UNKNOWN>> {{ INFILE }}", "<<infile>> <<UNKNOWN>> {{ INFILE }}"),
    ],
)
def test_every_placeholder_spelling_anywhere_in_an_arg(arg: str, want: str) -> None:
    assert substitute(["prog", arg], **PATHS) == ["prog", want]


def test_paths_with_spaces_stay_one_argument() -> None:
    argv = split_args("reco --in '<<INFILE>>' --out=<<OUTFILE>>")
    got = substitute(argv, infile="/my data/in file", outfile="/o u t", data_hub="/h")
    assert got == ["reco", "--in", "/my data/in file", "--out=/o u t"]


def test_no_double_substitution() -> None:
    got = substitute(
        ["<<INFILE>>", "{{OUTFILE}}", "<<DATA_HUB>>"],
        infile="/x/<<OUTFILE>>",
        outfile="/y/{{INFILE}}",
        data_hub="<<INFILE>>",
    )
    assert got == ["/x/<<OUTFILE>>", "/y/{{INFILE}}", "<<INFILE>>"]


def test_task_env_per_run_values_win() -> None:
    base = {"EWMS_TASK_INFILE": "/stale", "OMP_NUM_THREADS": "1", "EWMS_TASK_DATA_HUB_DIR": "x"}
    env = task_env(base, **PATHS)
    assert env == {
        "OMP_NUM_THREADS": "1",
        "EWMS_TASK_INFILE": PATHS["infile"],
        "EWMS_TASK_OUTFILE": PATHS["outfile"],
        "EWMS_TASK_DATA_HUB_DIR": PATHS["data_hub"],
    }
    assert base["EWMS_TASK_INFILE"] == "/stale"  # the config's mapping is not touched


# --- properties ----------------------------------------------------------------------

# literal text that cannot form a placeholder with its neighbours
literal = st.text(alphabet=st.characters(blacklist_characters="<>{}"), max_size=8)
segment = st.one_of(literal, st.sampled_from(sorted(PLACEHOLDERS)))
arg_segments = st.lists(segment, max_size=5)
value = st.text(max_size=20) | st.sampled_from(sorted(PLACEHOLDERS))


@given(st.lists(st.text(), max_size=8))
def test_split_round_trips_any_argv(argv: list[str]) -> None:
    assert split_args(shlex.join(argv)) == argv


@given(st.lists(arg_segments, max_size=6), value, value, value)
def test_substitute_after_split_matches_a_segment_wise_model(
    argv_segments: list[list[str]], infile: str, outfile: str, data_hub: str
) -> None:
    values = {"infile": infile, "outfile": outfile, "data_hub": data_hub}
    argv = ["".join(segs) for segs in argv_segments]
    expected = [
        "".join(values[PLACEHOLDERS[s]] if s in PLACEHOLDERS else s for s in segs)
        for segs in argv_segments
    ]
    got = substitute(
        split_args(shlex.join(argv)), infile=infile, outfile=outfile, data_hub=data_hub
    )
    assert got == expected
    assert len(got) == len(argv)  # values with spaces or quotes never add arguments
