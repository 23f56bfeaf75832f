"""One pilot job through the local pool, end to end (`bash scripts/htcondor-pool.sh submit`).

Runs inside the pool container as the submitting user, with the pool's Python
(it has oms-mqclient): puts N events on a fresh RabbitMQ queue, writes the job
dir the way EWMS does (jobfiles.py), submits pilot.sub, prints every change of
the job's status and chirped pilot status as condor_q shows it, and at the end
the history ad's chirp attributes and the results on the outgoing queue.
Exit code 0 when the pilot reported Done with every event a success.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mqclient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from jobfiles import write_job_dir  # noqa: E402

DOUBLE = "import sys; d=open(sys.argv[1]).read(); open(sys.argv[2],'w').write(d+d)"
ATTRS = [
    "HTChirpEWMSPilotStatus",
    "HTChirpEWMSPilotTasksTotal",
    "HTChirpEWMSPilotTasksSuccess",
    "HTChirpEWMSPilotTasksFailed",
]
JOB_STATUS = {1: "Idle", 2: "Running", 3: "Removed", 4: "Completed", 5: "Held", 6: "Transferring"}


def pilot_env(queue: str, broker: str, task_image: str) -> dict[str, object]:
    return {
        "EWMS_PILOT_QUEUE_INCOMING": f"{queue}-in",
        "EWMS_PILOT_QUEUE_OUTGOING": f"{queue}-out",
        "EWMS_PILOT_QUEUE_INCOMING_BROKER_TYPE": "rabbitmq",
        "EWMS_PILOT_QUEUE_OUTGOING_BROKER_TYPE": "rabbitmq",
        "EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS": broker,
        "EWMS_PILOT_QUEUE_OUTGOING_BROKER_ADDRESS": broker,
        "EWMS_PILOT_CONTAINER_PLATFORM": "apptainer",
        "EWMS_PILOT_TASK_IMAGE": task_image,
        "EWMS_PILOT_TASK_ARGS": f'python3 -c "{DOUBLE}" <<INFILE>> <<OUTFILE>>',
        "EWMS_PILOT_TIMEOUT_QUEUE_WAIT_FOR_FIRST_MESSAGE": 60,
        "EWMS_PILOT_TIMEOUT_QUEUE_INCOMING": 5,
        "EWMS_PILOT_HTCHIRP": True,  # str(True) == "True", as the TMS sends it
        "EWMS_PILOT_HTCHIRP_DEST": "JOB_ATTR",
        "EWMS_PILOT_HTCHIRP_RATELIMIT_INTERVAL": 1,
    }


def condor(*argv: str, cwd: Path | None = None) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, cwd=cwd).stdout


async def publish(broker: str, queue: str, items: list[str]) -> None:
    async with mqclient.Queue("rabbitmq", address=broker, name=queue).open_pub() as pub:
        for item in items:
            await pub.send(item)


async def drain(broker: str, queue: str) -> list[str]:
    got: list[str] = []
    async with mqclient.Queue("rabbitmq", address=broker, name=queue, timeout=3).open_sub() as sub:
        async for data in sub:
            got.append(data)
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pilot-image", required=True, help="the pilot image (sandbox dir)")
    ap.add_argument("--task-image", required=True, help="the task image (sandbox dir)")
    ap.add_argument("--work", required=True, type=Path, help="parent of the job dir")
    ap.add_argument("--events", type=int, default=12)
    ap.add_argument("--broker", default="127.0.0.1:5672")
    ap.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args()

    queue = f"demo-{uuid.uuid4().hex[:8]}"
    events = [f"event-{i}" for i in range(a.events)]
    asyncio.run(publish(a.broker, f"{queue}-in", events))
    job_dir = a.work / queue
    write_job_dir(job_dir, pilot_env(queue, a.broker, a.task_image), a.pilot_image, queue=1)
    # the submit dir is the job's initial dir: the env file is found there
    cluster = condor("condor_submit", "-terse", "pilot.sub", cwd=job_dir).split(".")[0]
    print(
        f"submitted cluster {cluster} from {job_dir}: {a.events} events on {queue}-in", flush=True
    )

    last = None
    deadline = time.monotonic() + a.timeout
    while time.monotonic() < deadline:
        out = condor("condor_q", cluster, "-json", "-attributes", ",".join(["JobStatus", *ATTRS]))
        if not out.strip():
            break
        ad = json.loads(out)[0]
        now = (
            JOB_STATUS.get(ad.get("JobStatus"), ad.get("JobStatus")),
            *(ad.get(k) for k in ATTRS),
        )
        if now != last:
            print(
                f"condor_q: JobStatus={now[0]} "
                + " ".join(f"{k}={v}" for k, v in zip(ATTRS, now[1:], strict=True)),
                flush=True,
            )
            last = now
        time.sleep(1)
    hist = json.loads(condor("condor_history", cluster, "-json") or "[]")
    if not hist:
        print(f"cluster {cluster} still queued after {a.timeout:.0f}s", file=sys.stderr)
        return 1
    ad = hist[0]
    print(
        f"condor_history: ExitCode={ad.get('ExitCode')} "
        + " ".join(f"{k}={ad.get(k)}" for k in ATTRS)
    )
    results = asyncio.run(drain(a.broker, f"{queue}-out"))
    print(
        f"{len(results)} results on {queue}-out (e.g. {results[0]!r})" if results else "no results"
    )
    ok = (
        ad.get("HTChirpEWMSPilotStatus") == "Done"
        and ad.get("HTChirpEWMSPilotTasksSuccess") == a.events
    )
    return 0 if ok and len(results) == a.events else 1


if __name__ == "__main__":
    sys.exit(main())
