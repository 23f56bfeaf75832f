"""The floor under the warm local-queue row: what the pilot must do per event, with nothing around it.

Run by the harness exactly like a pilot (the same EWMS_PILOT_* variables,
measured the same way, results checked by value). One thread, no asyncio, no
pilot code but the local queue's own SQLite layer (`LocalStore`): it starts
EWMS_PILOT_MAX_CONCURRENT_TASKS warm workers from EWMS_PILOT_TASK_ARGS and,
for each event, writes the infile, sends the request line, reads the answer
and the outfile, publishes the result and acks the event in one synced
transaction (which also claims the next events), appends a journal line and
removes both files. Answers that arrive together are settled in one
transaction, the best batching the contract allows. It ends once no event
came for EWMS_PILOT_TIMEOUT_QUEUE_INCOMING seconds.

What it leaves out, and the pilot does not: timeouts, leases renewed in the
background, logging, chirp, the summary, error handling of any kind. So a
pilot's share of this rate is what its own machinery costs.
"""

from __future__ import annotations

import json
import os
import selectors
import shlex
import subprocess
import time
import uuid
from pathlib import Path

from ewms_pilot.queues import codec
from ewms_pilot.queues.local_store import Ack, Claimed, LocalStore

LEASE = 60.0


def main() -> None:
    env = os.environ
    address = Path(env["EWMS_PILOT_QUEUE_INCOMING_BROKER_ADDRESS"])
    q_out = env["EWMS_PILOT_QUEUE_OUTGOING"]
    width = int(env["EWMS_PILOT_MAX_CONCURRENT_TASKS"])
    idle_limit = float(env["EWMS_PILOT_TIMEOUT_QUEUE_INCOMING"])
    io_dir = Path(env["EWMS_PILOT_DATA_DIR_PARENT_PATH_ON_HOST"]) / "warmloop" / "task-io"
    io_dir.mkdir(parents=True)
    journal = os.open(io_dir.parent / "journal.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    store = LocalStore(address, env["EWMS_PILOT_QUEUE_INCOMING"], durable=True)
    holder = uuid.uuid4().hex
    argv = shlex.split(env["EWMS_PILOT_TASK_ARGS"])
    workers = [
        subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0) for _ in range(width)
    ]
    sel = selectors.DefaultSelector()
    for w in workers:
        assert w.stdout is not None
        sel.register(w.stdout, selectors.EVENT_READ, w)
    idle = list(workers)
    busy: dict[subprocess.Popen[bytes], tuple[Claimed, str, str, str]] = {}  # claim, task, infile, outfile
    ahead: list[Claimed] = []
    last_event = time.monotonic()
    seq = 0
    while True:
        while idle:
            if not ahead:
                claim = store.claim(holder, LEASE, sweep=False)
                if claim is None:
                    break
                ahead.append(claim)
            claim = ahead.pop(0)
            last_event = time.monotonic()
            seq += 1
            task = f"t{seq}"
            infile, outfile = f"{io_dir}/infile-{task}.in", f"{io_dir}/outfile-{task}.out"
            data = codec.decode(str(claim.id), claim.payload, claim.delivery_count).data
            with open(infile, "w") as f:
                f.write(data)
            w = idle.pop()
            assert w.stdin is not None
            w.stdin.write((json.dumps({"id": task, "infile": infile, "outfile": outfile}) + "\n").encode())
            busy[w] = (claim, task, infile, outfile)
        if not busy:
            if time.monotonic() - last_event > idle_limit:
                break
            time.sleep(0.02)
            continue
        acks, lines, done = [], [], []
        for key, _ in sel.select():
            w = key.data
            answer = json.loads(w.stdout.readline())
            claim, task, infile, outfile = busy.pop(w)
            assert answer["id"] == task and answer["ok"], answer
            with open(outfile) as f:
                acks.append(Ack(claim, (q_out, codec.encode(f.read()))))
            lines.append(json.dumps({"task": task, "event": claim.id, "outcome": "ok"}) + "\n")
            done += [infile, outfile]
            idle.append(w)
        _, taken = store.ack_and_take(acks, holder, LEASE, len(acks), sweep=False)
        ahead.extend(taken)
        os.write(journal, "".join(lines).encode())
        for path in done:
            os.unlink(path)
    for w in workers:
        assert w.stdin is not None
        w.stdin.close()
        w.wait()
    store.release_all(holder)
    store.close()


if __name__ == "__main__":
    main()
