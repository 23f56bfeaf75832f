"""What is measured: each scenario is one pilot configuration, run once per round.

`ours-*` run this repo's pilot, `ref-*` ewms-pilot 1.0.5 (docker CLI shimmed
onto podman). Every scenario runs the same task: read the infile, write it
twice to the outfile.
"""

from __future__ import annotations

import dataclasses as dc

# the task program (argv element after `-c`; never run by a shell)
DOUBLE = "import sys; d=open(sys.argv[1]).read(); open(sys.argv[2],'w').write(d+d)"
#: the same task as a warm worker (docs/warm-workers.md): one JSON request per line on stdin,
#: one answer per line on stdout. The test image has python3-minimal (no `json` module), so the
#: request's flat string fields are read with a regex; the paths here never need escaping.
WARM_DOUBLE = "\n".join(
    [
        "import re, sys",
        "for line in sys.stdin:",
        "    r = dict(re.findall(r'\"(\\w+)\"\\s*:\\s*\"([^\"]*)\"', line))",
        "    d = open(r['infile']).read()",
        "    open(r['outfile'], 'w').write(d + d)",
        "    sys.stdout.write('{\"id\": \"%s\", \"ok\": true}\\n' % r['id'])",
        "    sys.stdout.flush()",
    ]
)
OURS_PLACEHOLDERS = ("<<INFILE>>", "<<OUTFILE>>")
REF_PLACEHOLDERS = ("{{INFILE}}", "{{OUTFILE}}")  # 1.0.5 also accepts {{IN_FILE}}/{{OUT_FILE}}
#: interpreter for the `process` runtime rows: the system python, without site (start-up is the task's cost)
HOST_PYTHON = ("/usr/bin/python3", "-I", "-S")

OURS, REF = "ours", "ref"


@dc.dataclass(frozen=True)
class Scenario:
    """One pilot configuration."""

    key: str
    side: str  # OURS | REF
    label: str
    concurrency: int
    platform: str = "podman"  # podman | process (ours); the reference always goes through `docker`
    broker: str = "rabbitmq"  # rabbitmq | local
    prefetch: int | None = None  # None: the pilot's default
    warm: bool = False  # EWMS_PILOT_TASK_MODE=warm
    program: str | None = None  # run this script (given the same env) instead of `-m ewms_pilot`


OURS_C1 = Scenario("ours-podman-c1", OURS, "ours, podman, concurrency 1", 1)
REF_C1 = Scenario("ref-c1", REF, "1.0.5, concurrency 1", 1)
OURS_C4 = Scenario("ours-podman-c4", OURS, "ours, podman, concurrency 4 (defaults)", 4)
REF_C4 = Scenario("ref-c4", REF, "1.0.5, concurrency 4, defaults (prefetch 1)", 4)
REF_C4_P4 = Scenario("ref-c4-p4", REF, "1.0.5, concurrency 4, EWMS_PILOT_PREFETCH=4", 4, prefetch=4)
OURS_PROC_RMQ = Scenario(
    "ours-process-rabbitmq-c4", OURS, "ours, process runtime, RabbitMQ, concurrency 4", 4, platform="process"
)
OURS_PROC_LOCAL = Scenario(
    "ours-process-local-c4",
    OURS,
    "ours, process runtime, local queue, concurrency 4",
    4,
    platform="process",
    broker="local",
)
#: warm mode (EWMS_PILOT_TASK_MODE=warm): only with `--with-warm` (it landed after this harness;
#: the issue's targets are about one-shot mode). Without the flag the rows say so.
OURS_WARM_C4 = Scenario("ours-podman-warm-c4", OURS, "ours, podman, concurrency 4, warm mode", 4, warm=True)
OURS_WARM_PROC_LOCAL = Scenario(
    "ours-process-local-warm-c4",
    OURS,
    "ours, process runtime, local queue, concurrency 4, warm mode",
    4,
    platform="process",
    broker="local",
    warm=True,
)
OURS_WARM_PROC_RMQ = Scenario(
    "ours-process-rabbitmq-warm-c4",
    OURS,
    "ours, process runtime, RabbitMQ, concurrency 4, warm mode",
    4,
    platform="process",
    warm=True,
)
WARM_ROWS = (OURS_WARM_C4, OURS_WARM_PROC_LOCAL, OURS_WARM_PROC_RMQ)
#: the RabbitMQ bound: a bare oms-mqclient consume -> publish (confirmed) -> ack loop, one event at a
#: time (benchmarks/mqloop.py), measured like a pilot; run with the warm rows
MQ_LOOP = Scenario(
    "loop-mqclient", OURS, "bare oms-mqclient consumer + publisher loop (RabbitMQ, one at a time)", 1,
    platform="process", program="mqloop.py",
)
#: the warm local-queue floor: the same work as that row (the local queue's own SQLite layer, the
#: same four workers) on one thread with nothing else (benchmarks/warmloop.py); run with the warm rows
WARM_LOOP = Scenario(
    "loop-warm-local", OURS, "bare warm loop: the same work on one thread (local queue, 4 workers)", 4,
    platform="process", broker="local", warm=True, program="warmloop.py",
)
#: each warm row's bound, run right after it
LOOPS = (MQ_LOOP, WARM_LOOP)
#: events per run of the scaling table (`--scaling`): warm mode, local queue
SCALING_ROW = OURS_WARM_PROC_LOCAL

#: bare baselines measured in every round (not pilots)
BARE_SEQ = "bare-podman-seq"
BARE_PAR4 = "bare-podman-par4"
BARE_PROC_PAR4 = "bare-process-par4"

OURS_ROWS = (OURS_C1, OURS_C4, OURS_PROC_RMQ, OURS_PROC_LOCAL)
REF_ROWS = (REF_C1, REF_C4, REF_C4_P4)
