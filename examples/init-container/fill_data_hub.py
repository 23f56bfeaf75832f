#!/usr/bin/env python3
"""Example init step: put shared reference data into the data hub before any event.

    fill_data_hub.py [DATA_HUB_DIR]      (default: $EWMS_TASK_DATA_HUB_DIR)

The pilot runs its init container once, before it takes the first event, with
the data hub mounted (`/ewms-pilot-data/data-hub` in a container). Whatever
lands there is visible to every task of this pilot. A real init step would
download or unpack something large (a detector geometry, a model); this one
writes the stopword list that examples/tasks/word_count.py leaves out of `top`.
A non-zero exit code makes the pilot end with exit code 4 without taking events.

Uses only what python3-minimal has (it runs in the bare test image).
"""

import os
import sys
from pathlib import Path

STOPWORDS = "a an and are as at be by for in is it of on or that the to was".split()


def main(argv: list[str]) -> int:
    hub = argv[0] if argv else os.environ.get("EWMS_TASK_DATA_HUB_DIR", "")
    if not hub or not Path(hub).is_dir():
        print(f"fill_data_hub: data hub {hub!r} is not a directory", file=sys.stderr)
        return 1
    path = Path(hub) / "stopwords.txt"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(STOPWORDS) + "\n", encoding="utf-8")
    tmp.chmod(0o644)  # tasks may run as another user
    tmp.replace(path)  # tasks never see a half-written file
    print(f"fill_data_hub: wrote {len(STOPWORDS)} stopwords to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
