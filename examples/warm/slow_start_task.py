#!/usr/bin/env python3
"""Warm-mode example: a slow start-up paid once per worker, then quick events.

It sleeps SLOW_START_SECONDS (default 2) at start-up, standing in for loading a
big table or model, then doubles each infile's text into the outfile.

Run it with EWMS_PILOT_TASK_MODE=warm and EWMS_PILOT_TASK_ARGS="python3 slow_start_task.py"
(no <<INFILE>>/<<OUTFILE>>: each event's paths come in its request on stdin).
It needs the helper `ewms_pilot/worker.py`: installed with ewms-pilot, or the
one file copied next to this script (stdlib only; python3-minimal is enough).
"""

import os
import time

try:
    from ewms_pilot import worker
except ImportError:  # a task image without ewms-pilot: the helper copied alongside
    import worker  # type: ignore[no-redef,import-not-found]

time.sleep(float(os.environ.get("SLOW_START_SECONDS", "2")))  # "load the table"


@worker.handler
def double(infile: str, outfile: str) -> None:
    with open(infile, encoding="utf-8") as f:
        text = f.read()
    with open(outfile, "w", encoding="utf-8") as f:
        f.write(text + text)


if __name__ == "__main__":
    worker.run(double)
