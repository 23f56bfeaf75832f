"""The exact commands each runtime builds, and the bind-mount policy's refusals.

Apptainer and docker cannot run here, so their argv lists are the contract
tested; podman and the process runtime also run for real in other test files.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from ewms_pilot.config.model import BrokerConfig, ContainerConfig, ContainerPlatform, PilotConfig
from ewms_pilot.errors import ConfigError
from ewms_pilot.runtimes import (
    ApptainerRuntime,
    DockerRuntime,
    PodmanRuntime,
    ProcessRuntime,
    get_runtime,
)
from ewms_pilot.runtimes.apptainer import build_source, disk_content, sandbox_name
from ewms_pilot.runtimes.base import (
    CONTAINER_DATA_HUB,
    CONTAINER_TASK_IO,
    Mount,
    RunSpec,
    RuntimeUnavailableError,
)
from ewms_pilot.runtimes.clientpaths import absolute_image
from ewms_pilot.runtimes.mounts import (
    MountPolicyError,
    external_mounts,
    validate_mount,
    validate_mounts,
)

NASTY = {
    "SPACES": " a b  c ",
    "QUOTES": 'it\'s "quoted"',
    "SUBST": "$(touch /tmp/pwned) `id` ${HOME}",
    "COMMA": "x,y=z",
    "HASH": "# not a comment",
}
ENV_FILE = Path("/pilot-side/ewms-pilot-p1-t1.env")


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    out = {name: tmp_path / name for name in ("hub", "io", "ext")}
    for d in out.values():
        d.mkdir()
    return out


def spec(dirs: dict[str, Path], **kw: object) -> RunSpec:
    base: dict[str, object] = dict(
        image="localhost/img:1",
        argv=("python3", "-c", "print(1)", "it's one arg"),
        env={"A": "1", "B": "two words"},
        mounts=(
            Mount(dirs["io"], CONTAINER_TASK_IO),
            Mount(dirs["hub"], CONTAINER_DATA_HUB),
            Mount(dirs["ext"], PurePosixPath(dirs["ext"]), readonly=True),
        ),
        name="ewms-pilot-p1-t1",
        labels={"ewms-pilot.owner": "p1", "ewms-pilot.task": "t1"},
        env_file=ENV_FILE,
    )
    base.update(kw)
    return RunSpec(**base)  # type: ignore[arg-type]


def oci_tail(dirs: dict[str, Path]) -> list[str]:
    return [
        "--label",
        "ewms-pilot.owner=p1",
        "--label",
        "ewms-pilot.task=t1",
        "--mount",
        f"type=bind,source={dirs['io']},target=/ewms-pilot-data/task-io",
        "--mount",
        f"type=bind,source={dirs['hub']},target=/ewms-pilot-data/data-hub",
        "--mount",
        f"type=bind,source={dirs['ext']},target={dirs['ext']},readonly",
        "--env-file",
        str(ENV_FILE),
    ]


# ---------------------------------------------------------------- docker / podman


def test_docker_run_argv(dirs: dict[str, Path]) -> None:
    argv = DockerRuntime().run_argv(spec(dirs))
    assert argv == [
        "docker", "run", "--rm", "--init", "--name", "ewms-pilot-p1-t1",
        *oci_tail(dirs),
        "localhost/img:1", "python3", "-c", "print(1)", "it's one arg",
    ]  # fmt: skip


def test_docker_shm_size_only_when_configured(dirs: dict[str, Path]) -> None:
    argv = DockerRuntime(shm_size="8g").run_argv(spec(dirs))
    assert argv[-7:] == [
        "--shm-size",
        "8g",
        "localhost/img:1",
        "python3",
        "-c",
        "print(1)",
        "it's one arg",
    ]
    assert "--shm-size" not in DockerRuntime().run_argv(spec(dirs))
    assert "--shm-size" not in PodmanRuntime().run_argv(spec(dirs))


def test_podman_run_argv(dirs: dict[str, Path]) -> None:
    argv = PodmanRuntime().run_argv(spec(dirs))
    assert argv == [
        "podman", "run", "--rm", "--init", "--name", "ewms-pilot-p1-t1",
        *oci_tail(dirs),
        "localhost/img:1", "python3", "-c", "print(1)", "it's one arg",
    ]  # fmt: skip


@pytest.mark.parametrize("rt", [DockerRuntime(), PodmanRuntime()], ids=["docker", "podman"])
def test_oci_env_goes_in_the_env_file_never_argv(rt: DockerRuntime, dirs: dict[str, Path]) -> None:
    argv = rt.run_argv(spec(dirs, env=NASTY))
    assert not any(v in a for a in argv for v in NASTY.values())
    assert "--env" not in argv and argv[argv.index("--env-file") + 1] == str(ENV_FILE)
    # one NAME=VALUE line each, the value as is (that is how docker and podman read it)
    assert rt.env_file_text(NASTY) == "".join(f"{k}={v}\n" for k, v in NASTY.items())
    assert rt.env_file_text({}) is None and "--env-file" not in rt.run_argv(spec(dirs, env={}))
    with pytest.raises(ValueError, match="^ewms-pilot-p1-t1: no env file"):
        rt.run_argv(spec(dirs, env={"A": "1"}, env_file=None))


@pytest.mark.parametrize("value", ["line1\nline2", "ends in CR\r"])
def test_oci_env_file_cannot_carry_a_line_break(value: str) -> None:
    rt = PodmanRuntime()
    assert rt.env_value_problem(value) == (
        "contains a line break (podman reads a task's environment one line per variable)"
    )
    with pytest.raises(ValueError, match="^environment variable K contains a line break"):
        rt.env_file_text({"K": value})


def test_container_clients_never_get_the_pilots_settings(tmp_path: Path, dirs: dict[str, Path]) -> None:
    inherited = {
        "PATH": "/usr/bin",
        "CONTAINERS_CONF": "/c.conf",
        "EWMS_PILOT_QUEUE_INCOMING_AUTH_TOKEN": "secret",
        "_EWMS_PILOT_APPTAINER_BUILD_WORKDIR": "/w",
    }
    for rt in (DockerRuntime(), PodmanRuntime(), apptainer(tmp_path)):
        assert rt.process_env(spec(dirs, env=NASTY), inherited) == {
            "PATH": "/usr/bin",
            "CONTAINERS_CONF": "/c.conf",
        }


@pytest.mark.parametrize("runtime", [DockerRuntime, PodmanRuntime])
def test_oci_client_runs_in_the_containers_dir_with_the_start_dirs_paths(
    runtime: type[DockerRuntime | PodmanRuntime], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dirs: dict[str, Path]
) -> None:
    """Not in the pilot's cwd (conmon's `oom` file), so what was relative to it is made absolute."""
    job = tmp_path / "job"
    job.mkdir()
    monkeypatch.chdir(job)
    rt = runtime()  # the pilot's cwd when the runtime is made is what relative paths mean
    monkeypatch.chdir(tmp_path)
    inherited = {
        "CONTAINERS_CONF": "conf/containers.conf",
        "DOCKER_CONFIG": "./docker",
        "REGISTRY_AUTH_FILE": "/etc/auth.json",
        "XDG_RUNTIME_DIR": "",  # empty: unset, left so
        "PATH": "bin:/usr/bin:",  # an empty entry is the cwd
        "SITE_NOTE": "not/a/path/podman/reads",
    }
    assert rt.process_env(spec(dirs), inherited) == {
        "CONTAINERS_CONF": f"{job}/conf/containers.conf",
        "DOCKER_CONFIG": f"{job}/./docker",
        "REGISTRY_AUTH_FILE": "/etc/auth.json",
        "XDG_RUNTIME_DIR": "",
        "PATH": f"{job}/bin:/usr/bin:{job}/",
        "SITE_NOTE": "not/a/path/podman/reads",
    }
    assert rt.process_cwd(spec(dirs, client_dir=dirs["io"])) == dirs["io"]


async def test_oci_image_from_a_relative_archive_is_run_from_the_start_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`podman run docker-archive:x.tar` reads the archive again: the reference to run is absolute."""
    log = tmp_path / "calls.log"
    fake = tmp_path / "podman"
    fake.write_text(
        "#!/usr/bin/env python3\n"
        "import sys\n"
        f"open({str(log)!r}, 'a').write(repr(sys.argv[1:]) + '\\n')\n"
        "sys.exit(1 if sys.argv[1:3] == ['image', 'exists'] else 0)\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.chdir(tmp_path)
    rt = PodmanRuntime(binary=str(fake))
    assert await rt.prepare_image("docker-archive:img.tar") == f"docker-archive:{tmp_path}/img.tar"
    calls = [eval(line) for line in log.read_text().splitlines()]  # noqa: S307 - our own repr
    assert calls == [["image", "exists", f"docker-archive:{tmp_path}/img.tar"], ["pull", f"docker-archive:{tmp_path}/img.tar"]]
    for given, used in [
        ("oci-archive:sub/img.tar:name:1", f"oci-archive:{tmp_path}/sub/img.tar:name:1"),  # the reference tail kept
        ("oci:layout:v2", f"oci:{tmp_path}/layout:v2"),
        ("dir:unpacked", f"dir:{tmp_path}/unpacked"),
        ("docker-archive:/abs/img.tar", "docker-archive:/abs/img.tar"),
        ("docker://quay.io/x:1", "docker://quay.io/x:1"),
        ("localhost:5000/x:1", "localhost:5000/x:1"),  # a registry's port, not a transport
    ]:
        assert absolute_image(given, tmp_path) == used


def test_oci_stop_remove_and_image_argvs() -> None:
    assert DockerRuntime().stop_argv("c1", 7.9) == ["docker", "stop", "-t", "7", "c1"]
    assert PodmanRuntime().stop_argv("c1", 5) == ["podman", "stop", "-t", "5", "c1"]
    assert DockerRuntime().remove_argv("c1") == ["docker", "rm", "--force", "c1"]
    assert PodmanRuntime().remove_argv("c1") == ["podman", "rm", "--force", "--time", "0", "c1"]
    assert PodmanRuntime().image_present_argv("x:1") == ["podman", "image", "exists", "x:1"]
    assert DockerRuntime().image_present_argv("x:1") == [
        "docker", "image", "inspect", "--format", "{{.Id}}", "x:1",
    ]  # fmt: skip
    assert DockerRuntime().pull_argv("x:1") == ["docker", "pull", "x:1"]
    assert PodmanRuntime().list_labelled_argv("ewms-pilot.owner", "p1") == [
        "podman", "ps", "--all", "--quiet", "--filter", "label=ewms-pilot.owner=p1",
    ]  # fmt: skip


@pytest.mark.parametrize("bad", ["/data/a,b", '/data/"q"'])
def test_oci_refuses_mount_paths_its_syntax_cannot_carry(tmp_path: Path, bad: str) -> None:
    s = RunSpec(
        image="i", argv=(), env={}, mounts=(Mount(Path(bad), PurePosixPath("/x")),), name="n"
    )
    with pytest.raises(
        MountPolicyError, match=r"^refusing to bind .*: podman cannot bind a path containing"
    ):
        PodmanRuntime().run_argv(s)


async def test_oci_missing_binary_is_one_line(tmp_path: Path) -> None:
    rt = DockerRuntime(binary="docker-not-installed-here")
    with pytest.raises(RuntimeUnavailableError) as err:
        await rt.prepare_image("localhost/img:1")
    assert str(err.value) == "docker-not-installed-here not found on PATH"
    with pytest.raises(RuntimeUnavailableError, match="^podman-nope not found on PATH$"):
        await PodmanRuntime(binary="podman-nope").prepare_image("img")


async def test_docker_not_found_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no docker on PATH
    with pytest.raises(RuntimeUnavailableError) as err:
        await DockerRuntime().prepare_image("img")
    assert str(err.value) == "docker not found on PATH"


# ---------------------------------------------------------------- apptainer


def apptainer(tmp_path: Path, **kw: object) -> ApptainerRuntime:
    return ApptainerRuntime(build_workdir=tmp_path, **kw)  # type: ignore[arg-type]


def test_apptainer_run_argv(dirs: dict[str, Path], tmp_path: Path) -> None:
    argv = apptainer(tmp_path).run_argv(spec(dirs, image="/images/sandbox"))
    assert argv == [
        "apptainer", "run", "--containall", "--no-eval",
        "--bind", f"{dirs['io']}:/ewms-pilot-data/task-io",
        "--bind", f"{dirs['hub']}:/ewms-pilot-data/data-hub",
        "--bind", f"{dirs['ext']}:{dirs['ext']}:ro",
        "--env-file", str(ENV_FILE),
        "/images/sandbox", "python3", "-c", "print(1)", "it's one arg",
    ]  # fmt: skip
    debug = apptainer(tmp_path, debug=True).run_argv(spec(dirs, image="/images/sandbox"))
    assert debug[:3] == ["apptainer", "--debug", "run"]


def test_apptainer_env_goes_in_the_env_file_not_argv(
    dirs: dict[str, Path], tmp_path: Path
) -> None:
    rt = apptainer(tmp_path)
    env = {**NASTY, "NEWLINE": "line1\nline2"}  # shell assignments carry a line break
    argv = rt.run_argv(spec(dirs, env=env))
    assert not any(v in a for a in argv for v in env.values())
    assert argv[argv.index("--env-file") + 1] == str(ENV_FILE)
    assert rt.env_value_problem("line1\nline2") is None
    # apptainer reads the file as shell assignments: every value single-quoted, never expanded
    script = rt.env_file_text(env)
    assert script is not None
    env_file = tmp_path / "task.env"
    env_file.write_text(script)
    out = subprocess.run(
        ["sh", "-c", 'set -a; . "$0"; env -0', str(env_file)], capture_output=True, check=True
    )
    seen = dict(e.split("=", 1) for e in out.stdout.decode().split("\0") if "=" in e)
    assert {k: seen[k] for k in env} == env
    assert not Path("/tmp/pwned").exists()
    assert rt.stop_argv("x", 5) is None  # no stop command: the pilot signals the process group


@pytest.mark.parametrize("bad", ["/data/a:b", "/data/a,b"])
def test_apptainer_refuses_bind_paths_with_separators(tmp_path: Path, bad: str) -> None:
    s = RunSpec(
        image="/s", argv=(), env={}, mounts=(Mount(Path(bad), PurePosixPath("/x")),), name="n"
    )
    with pytest.raises(MountPolicyError, match="apptainer cannot bind a path containing"):
        apptainer(tmp_path).run_argv(s)


def test_apptainer_build_argv_and_sources(tmp_path: Path) -> None:
    rt = apptainer(tmp_path / "work", image_directory_must_be_present=False)
    sif = tmp_path / "img.sif"
    sif.write_bytes(b"x")
    assert build_source("docker://ghcr.io/org/img:1", tmp_path).text == "docker://ghcr.io/org/img:1"
    assert build_source("ghcr.io/org/img:1", tmp_path).text == "docker://ghcr.io/org/img:1"
    assert build_source("python:3.12", tmp_path).text == "docker://python:3.12"
    assert build_source(str(sif), None).text == str(sif)
    assert build_source("img.sif", tmp_path).text == str(sif)  # a file relative to the start dir
    target = asyncio.run(rt.sandbox_path("ghcr.io/org/img:1"))
    assert target.parent == tmp_path / "work"
    assert target.name.startswith("docker_ghcr.io_org_img_1-")
    assert rt.build_argv("docker://ghcr.io/org/img:1", target) == [
        "apptainer", "build", "--fix-perms", "--sandbox", str(target), "docker://ghcr.io/org/img:1",
    ]  # fmt: skip
    assert sandbox_name(build_source("docker://a/b:1", None)) != sandbox_name(build_source("docker://a_b:1", None))
    assert rt.build_env({"PATH": "/bin"})["APPTAINER_TMPDIR"] == str(tmp_path / "work")
    assert rt.build_env({"APPTAINER_TMPDIR": "/site"})["APPTAINER_TMPDIR"] == "/site"
    assert "APPTAINER_TMPDIR" not in rt.build_env({"SINGULARITY_TMPDIR": "/site"})  # the older name, as chosen
    # the image build gets no pilot setting (broker tokens), as every container CLI the pilot runs
    assert rt.build_env({"PATH": "/bin", "EWMS_PILOT_BROKER_AUTH_TOKEN": "t"}) == {
        "PATH": "/bin", "APPTAINER_TMPDIR": str(tmp_path / "work"),
    }  # fmt: skip


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("docker-archive:img.tar", "docker-archive:{start}/img.tar"),
        ("docker-archive://img.tar", "docker-archive:{start}/img.tar"),
        ("oci-archive:sub/img.tar", "oci-archive:{start}/sub/img.tar"),
        ("oci:layout", "oci:{start}/layout"),
        ("docker-archive:/abs/img.tar", "docker-archive:/abs/img.tar"),
        ("docker-archive:///abs/img.tar", "docker-archive:/abs/img.tar"),
        ("oras://ghcr.io/org/img:1", "oras://ghcr.io/org/img:1"),
        ("library://org/img", "library://org/img"),
    ],
)
def test_apptainer_reads_an_image_on_disk_where_the_pilot_started(tmp_path: Path, given: str, used: str) -> None:
    """The build runs in its build workdir: an archive named relative to the pilot's cwd (as
    `apptainer build` itself would read it there) is handed over with its absolute path."""
    assert build_source(given, tmp_path).text == used.format(start=tmp_path)


def test_apptainer_sandbox_names_stay_what_earlier_pilots_made(tmp_path: Path) -> None:
    """Pilots on one host share converted sandboxes by name: a registry image's name is fixed, and an
    image on disk is named by what it holds (with an OCI layout's tag), wherever it lies."""
    def name(image: str, base: Path | None = None) -> str:
        source = build_source(image, base)
        return sandbox_name(source, disk_content(source))

    assert name("ghcr.io/org/img:1") == name("docker://ghcr.io/org/img:1") == "docker_ghcr.io_org_img_1-47783c362a96"
    assert name("python:3.12") == "docker_python_3.12-1eee92381929"
    for job in ("job1", "job2"):  # an HTCondor job's scratch dir: the same archive, another place
        (tmp_path / job / "layout").mkdir(parents=True)
        (tmp_path / job / "img.tar").write_bytes(b"archive")
        (tmp_path / job / "layout" / "index.json").write_text('{"a": 1}')
    assert name("docker-archive:img.tar", tmp_path / "job1") == name("docker-archive://img.tar", tmp_path / "job2")
    assert name("docker-archive:img.tar", tmp_path / "job1").startswith("docker-archive_img.tar-")
    assert name("oci:layout", tmp_path / "job1") == name("oci:layout", tmp_path / "job2")
    assert name("oci:layout:v2", tmp_path / "job1") not in (name("oci:layout", tmp_path / "job1"), name("oci:layout:v1", tmp_path / "job1"))
    (tmp_path / "job2" / "img.tar").write_bytes(b"another archive")
    assert name("docker-archive:img.tar", tmp_path / "job1") != name("docker-archive:img.tar", tmp_path / "job2")


async def test_apptainer_sandbox_dir_is_used_as_is(tmp_path: Path) -> None:
    sandbox = tmp_path / "sandbox"
    (sandbox / ".singularity.d").mkdir(parents=True)
    (sandbox / ".singularity.d" / "runscript").write_text("#!/bin/sh\nexec \"$@\"\n")
    assert await apptainer(tmp_path).prepare_image(str(sandbox)) == str(sandbox)


async def test_apptainer_dir_without_runscript_is_refused_at_start(tmp_path: Path) -> None:
    """A plain rootfs dir would make every event fail with `/bin/sh: cannot open python3`."""
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    with pytest.raises(RuntimeUnavailableError) as err:
        await apptainer(tmp_path).prepare_image(str(rootfs))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"apptainer image {rootfs} has no /.singularity.d/runscript: not an apptainer sandbox")


async def test_apptainer_requires_a_sandbox_dir_when_configured(tmp_path: Path) -> None:
    with pytest.raises(RuntimeUnavailableError) as err:
        await apptainer(tmp_path).prepare_image("docker://python:3.12")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == (
        "apptainer image 'docker://python:3.12' is not an existing sandbox directory"
        " (set _EWMS_PILOT_APPTAINER_IMAGE_DIRECTORY_MUST_BE_PRESENT=false to let the pilot convert it)"
    )


async def test_apptainer_conversion_runs_build_and_reuses_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in `apptainer` records its argv, cwd and env and creates the sandbox dir like the
    real one. The build runs in its workdir: a cache dir the site named relative to the pilot's
    cwd is given to it with its absolute path, so it is the same dir the site meant."""
    bindir, work, start = tmp_path / "bin", tmp_path / "work", tmp_path / "job"
    bindir.mkdir()
    work.mkdir()
    start.mkdir()
    monkeypatch.chdir(start)  # the pilot's cwd when it starts (an HTCondor job's scratch dir)
    monkeypatch.setenv("APPTAINER_CACHEDIR", "cache")
    log = tmp_path / "calls.log"
    fake = bindir / "apptainer"
    fake.write_text(
        "#!/usr/bin/env python3\n"
        "import os, sys\n"
        f"open({str(log)!r}, 'a').write(repr([sys.argv[1:], os.getcwd(), os.environ.get('APPTAINER_TMPDIR'), "
        "os.environ.get('APPTAINER_CACHEDIR')]) + '\\n')\n"
        "os.makedirs(os.path.join(sys.argv[-2], '.singularity.d'))\n"
        "open(os.path.join(sys.argv[-2], '.singularity.d', 'runscript'), 'w').close()\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    rt = apptainer(work, image_directory_must_be_present=False, binary=str(fake))
    first = await rt.prepare_image("ghcr.io/org/img:1")
    target = await rt.sandbox_path("ghcr.io/org/img:1")
    assert first == str(target) and target.is_dir()
    calls = [eval(line) for line in log.read_text().splitlines()]  # noqa: S307 - our own repr
    partial = f"{target}.partial-{os.getpid()}"
    assert calls == [
        [
            ["build", "--fix-perms", "--sandbox", partial, "docker://ghcr.io/org/img:1"],
            str(work),
            str(work),
            str(start / "cache"),
        ]
    ]
    assert await rt.prepare_image("ghcr.io/org/img:1") == str(target)
    assert len(log.read_text().splitlines()) == 1  # converted once
    assert not Path(partial).exists()


#: a stand-in `apptainer build --sandbox DIR docker-archive:FILE` that reads FILE from its cwd, as
#: the real one does, and puts its bytes in DIR; it logs each build to $BUILDS
ARCHIVE_BUILDER = (
    "#!/usr/bin/env python3\n"
    "import os, sys\n"
    "target, source = sys.argv[-2], sys.argv[-1].split(':', 1)[1]\n"
    "data = open(source).read()\n"
    "os.makedirs(os.path.join(target, '.singularity.d'))\n"
    "open(os.path.join(target, '.singularity.d', 'runscript'), 'w').write(data)\n"
    "open(os.environ['BUILDS'], 'a').write(sys.argv[-1] + '\\n')\n"
)


async def test_an_archive_is_converted_once_per_content_wherever_the_job_dir_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each HTCondor job brings its archive into a new scratch dir (whose name a later job may
    reuse): the conversion is found again by what the archive holds, not by where it lies."""
    fake, work, builds = tmp_path / "apptainer", tmp_path / "work", tmp_path / "builds.log"
    fake.write_text(ARCHIVE_BUILDER)
    fake.chmod(0o755)
    work.mkdir()
    monkeypatch.setenv("BUILDS", str(builds))

    async def job(dir_name: str, archive_holds: str) -> str:
        job_dir = tmp_path / dir_name
        job_dir.mkdir(exist_ok=True)
        (job_dir / "task.tar").write_text(archive_holds)
        monkeypatch.chdir(job_dir)
        rt = apptainer(work, image_directory_must_be_present=False, binary=str(fake))
        sandbox = await rt.prepare_image("docker-archive:task.tar")
        return (Path(sandbox) / ".singularity.d" / "runscript").read_text()

    assert await job("dir_1", "image v1") == "image v1"  # read where the job started, not in work/
    assert await job("dir_2", "image v1") == "image v1"  # the same image from another dir: reused
    assert builds.read_text().splitlines() == [f"docker-archive:{tmp_path}/dir_1/task.tar"]
    assert await job("dir_1", "image v2") == "image v2"  # a reused dir name with another image
    assert len(builds.read_text().splitlines()) == 2


async def test_apptainer_failed_conversion_is_one_line(tmp_path: Path) -> None:
    fake = tmp_path / "apptainer"
    fake.write_text(
        "#!/bin/sh\necho 'INFO: starting' >&2\necho 'FATAL: no such image' >&2\nexit 255\n"
    )
    fake.chmod(0o755)
    rt = apptainer(tmp_path, image_directory_must_be_present=False, binary=str(fake))
    with pytest.raises(RuntimeUnavailableError) as err:
        await rt.prepare_image("docker://nope/nope:0")
    assert (
        str(err.value)
        == "cannot convert 'docker://nope/nope:0' to an apptainer sandbox: FATAL: no such image"
    )
    assert not any(p.name.endswith(f".partial-{os.getpid()}") for p in tmp_path.iterdir())


# ---------------------------------------------------------------- process


def test_process_runtime_runs_argv_on_the_host(dirs: dict[str, Path]) -> None:
    rt = ProcessRuntime()
    s = spec(dirs, env=NASTY, workdir=dirs["io"])
    assert rt.run_argv(s) == ["python3", "-c", "print(1)", "it's one arg"]
    inherited = {
        "PATH": "/bin",
        "LC_ALL": "C",
        "SUBST": "old",
        "EWMS_PILOT_QUEUE_INCOMING_AUTH_TOKEN": "secret",
        "SOME_SITE_PASSWORD": "secret",
    }
    # the documented host allow-list, then the task's own env
    assert rt.process_env(s, inherited) == {"PATH": "/bin", "LC_ALL": "C", **NASTY}
    assert rt.env_file_text(NASTY) is None  # the env goes straight to the process
    assert rt.process_cwd(s) == dirs["io"]
    assert rt.stop_argv("n", 5) is None and rt.uses_host_paths
    with pytest.raises(ValueError, match="needs a command"):
        rt.run_argv(spec(dirs, argv=()))


async def test_process_runtime_ignores_the_image() -> None:
    assert await ProcessRuntime().prepare_image("anything:at-all") == "anything:at-all"


# ---------------------------------------------------------------- RunSpec / factory


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"env": {"BAD NAME": "x"}}, "invalid environment variable name 'BAD NAME'"),
        ({"env": {"A": "nul\0"}}, "environment variable A contains a NUL byte"),
        ({"image": "--privileged"}, "invalid image '--privileged': must not start with '-'"),
        ({"name": "-x"}, "invalid container name '-x'"),
        ({"name": "a b"}, "invalid container name 'a b'"),
    ],
)
def test_runspec_refuses_what_argv_cannot_carry(
    dirs: dict[str, Path], kw: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError) as err:
        spec(dirs, **kw)
    assert str(err.value).startswith(message)


def test_get_runtime(tmp_path: Path) -> None:
    assert isinstance(get_runtime(ContainerPlatform.PROCESS), ProcessRuntime)
    assert isinstance(get_runtime(ContainerPlatform.PODMAN), PodmanRuntime)
    docker = get_runtime(ContainerPlatform.DOCKER, docker_shm_size="2g")
    assert isinstance(docker, DockerRuntime) and docker.shm_size == "2g"
    cfg = PilotConfig(
        task=ContainerConfig(image="img"),
        incoming=BrokerConfig("in", "local", "x"),
        outgoing=BrokerConfig("out", "local", "x"),
        container_platform=ContainerPlatform.APPTAINER,
        apptainer_build_workdir=tmp_path,
        apptainer_image_directory_must_be_present=False,
        container_debug=True,
    )
    rt = get_runtime(cfg)
    assert isinstance(rt, ApptainerRuntime)
    assert (rt.build_workdir, rt.image_directory_must_be_present, rt.debug) == (
        tmp_path,
        False,
        True,
    )


# ---------------------------------------------------------------- mount policy


@pytest.mark.parametrize("source", ["/proc", "/proc/self", "/dev", "/sys/fs", "/run", "/boot"])
@pytest.mark.parametrize("readonly", [True, False])
def test_never_mounted(source: str, readonly: bool) -> None:
    root = "/" + source.split("/")[1]
    mode = "read-only" if readonly else "writable"
    with pytest.raises(MountPolicyError) as err:
        validate_mount(Mount(Path(source), PurePosixPath("/x"), readonly=readonly))
    assert str(err.value).startswith(f"refusing to bind {source} at /x ({mode}): ")
    assert str(err.value).endswith(f"{root} is never bound into a container")


def test_never_mounted_through_a_symlink_or_dotdot(tmp_path: Path) -> None:
    link = tmp_path / "looks-harmless"
    link.symlink_to("/proc")
    with pytest.raises(
        MountPolicyError, match="it resolves to /proc: /proc is never bound into a container$"
    ):
        validate_mount(Mount(link, PurePosixPath("/x"), readonly=True))
    with pytest.raises(MountPolicyError, match="/sys is never bound"):
        validate_mount(Mount(Path("/usr/../sys"), PurePosixPath("/x"), readonly=True))


def test_relative_missing_file_and_root_refused(tmp_path: Path) -> None:
    with pytest.raises(
        MountPolicyError, match=r"^refusing to bind data at /x \(writable\): host path is relative$"
    ):
        validate_mount(Mount(Path("data"), PurePosixPath("/x")))
    with pytest.raises(MountPolicyError, match=r"container path y is relative$"):
        validate_mount(Mount(tmp_path, PurePosixPath("y")))
    missing = tmp_path / "missing"
    with pytest.raises(MountPolicyError) as err:
        validate_mount(Mount(missing, PurePosixPath("/x")))
    assert (
        str(err.value)
        == f"refusing to bind {missing} at /x (writable): no such directory on this host"
    )
    (tmp_path / "file").write_text("x")
    with pytest.raises(MountPolicyError, match="not a directory on this host$"):
        validate_mount(Mount(tmp_path / "file", PurePosixPath("/x"), readonly=True))
    with pytest.raises(MountPolicyError, match="the whole file system cannot be bound"):
        validate_mount(Mount(Path("/"), PurePosixPath("/x"), readonly=True))
    root_link = tmp_path / "root"
    root_link.symlink_to("/")
    with pytest.raises(MountPolicyError, match="it resolves to /: the whole file system"):
        validate_mount(Mount(root_link, PurePosixPath("/x"), readonly=True))


def test_duplicate_targets_refused(dirs: dict[str, Path]) -> None:
    with pytest.raises(MountPolicyError) as err:
        validate_mounts(
            [Mount(dirs["hub"], PurePosixPath("/x")), Mount(dirs["io"], PurePosixPath("/x"))]
        )
    assert (
        str(err.value)
        == f"refusing to bind {dirs['io']} at /x: that container path is already bound"
    )


def test_external_mounts_read_only_at_their_path_from_where_they_resolve(
    dirs: dict[str, Path], tmp_path: Path
) -> None:
    link = tmp_path / "ext-link"
    link.symlink_to(dirs["ext"])
    assert external_mounts([link, Path("/usr/share")], ",") == (
        Mount(dirs["ext"], PurePosixPath(link), readonly=True),
        Mount(Path("/usr/share"), PurePosixPath("/usr/share"), readonly=True),
    )


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("relative/dir", "an absolute path (host path is relative)"),
        (
            "/proc",
            "a directory outside /proc, /dev, /sys, /run, /boot (/proc is never bound into a container)",
        ),
        ("/does/not/exist", "an existing directory (no such directory on this host)"),
        ("/", "a directory other than / (the whole file system cannot be bound)"),
    ],
)
def test_bad_external_directory_is_a_config_error(entry: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        external_mounts([Path(entry)], ",")
    assert str(err.value) == f"EWMS_PILOT_EXTERNAL_DIRECTORIES={entry!r}: expected {expected}"


def test_external_directory_the_mount_syntax_cannot_carry(tmp_path: Path) -> None:
    odd = tmp_path / "a:b"
    odd.mkdir()
    assert external_mounts([odd], PodmanRuntime.mount_forbidden_chars)  # ':' is fine there
    with pytest.raises(ConfigError, match=r"expected a path without ':' \(the runtime's mount syntax"):
        external_mounts([odd], ApptainerRuntime.mount_forbidden_chars)


def test_duplicate_or_overlapping_external_directory_is_a_config_error(dirs: dict[str, Path]) -> None:
    for entries in ([dirs["ext"], dirs["ext"]], [Path("/ewms-pilot-data/data-hub")]):
        with pytest.raises(ConfigError) as err:
            external_mounts(entries, "")
        assert err.value.variable == "EWMS_PILOT_EXTERNAL_DIRECTORIES"
        assert "each directory once" in str(err.value)
