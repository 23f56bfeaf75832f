#!/usr/bin/env python3
"""Example EWMS task: count the words of one event.

    word_count.py [INFILE OUTFILE]

Reads the event from INFILE and writes the result to OUTFILE; without
arguments it uses $EWMS_TASK_INFILE and $EWMS_TASK_OUTFILE, which the pilot
sets for every task. Standard library only, so it runs with any python3.

Input: the event text. The pilot writes a string event as is, whatever the
infile's extension; other JSON data (here: a list of strings, taken as lines)
only goes to a `.json` infile, as JSON.

Output: a `.json` outfile gets an object
    {"words": 9, "lines": 1, "chars": 43, "top": [["the", 2], ["brown", 1], ...]}
(`top`: the 3 most frequent words, ties in alphabetical order); any other
outfile gets one text line `words=9 lines=1 chars=43`.

Data hub: if $EWMS_TASK_DATA_HUB_DIR/stopwords.txt exists (e.g. written by an
init container, see examples/init-container/), its words are left out of `top`.

Failing on purpose: with WORD_COUNT_FAIL_ON=WORD in the task's environment, an
event containing WORD makes the task print an error and exit 1 - the pilot
then nacks that event (see README, "For task authors").
"""

from __future__ import annotations

import collections
import json
import os
import re
import sys
from pathlib import Path

WORD = re.compile(r"[a-z0-9']+")
TOP_N = 3


def read_event(path: Path) -> str:
    """The event's text: a string event is in the file verbatim, a list of strings as JSON."""
    raw = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".json":
        return raw
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        return raw  # a string event: written verbatim, not JSON-encoded
    if isinstance(data, list) and all(isinstance(x, str) for x in data):
        return "\n".join(data)
    return raw  # e.g. a string event that happens to be valid JSON, like "42"


def stopwords() -> set[str]:
    hub = os.environ.get("EWMS_TASK_DATA_HUB_DIR")
    if not hub:
        return set()
    path = Path(hub) / "stopwords.txt"
    if not path.is_file():
        return set()
    return set(path.read_text(encoding="utf-8").lower().split())


def count(text: str, skip: set[str]) -> dict[str, object]:
    words = WORD.findall(text.lower())
    freq = collections.Counter(w for w in words if w not in skip)
    top = sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_N]
    return {
        "words": len(words),
        "lines": len(text.splitlines()),
        "chars": len(text),
        "top": [[w, n] for w, n in top],
    }


def write_result(path: Path, result: dict[str, object]) -> None:
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(result), encoding="utf-8")
    else:
        path.write_text(
            f"words={result['words']} lines={result['lines']} chars={result['chars']}",
            encoding="utf-8",
        )


def main(argv: list[str]) -> int:
    if len(argv) == 2:
        infile, outfile = Path(argv[0]), Path(argv[1])
    elif not argv and "EWMS_TASK_INFILE" in os.environ and "EWMS_TASK_OUTFILE" in os.environ:
        infile = Path(os.environ["EWMS_TASK_INFILE"])
        outfile = Path(os.environ["EWMS_TASK_OUTFILE"])
    else:
        print("usage: word_count.py INFILE OUTFILE (or set EWMS_TASK_INFILE/EWMS_TASK_OUTFILE)",
              file=sys.stderr)
        return 2
    try:
        text = read_event(infile)
    except (OSError, ValueError) as e:
        print(f"word_count: cannot read event from {infile}: {e}", file=sys.stderr)
        return 1
    fail_on = os.environ.get("WORD_COUNT_FAIL_ON", "").lower()
    if fail_on and fail_on in WORD.findall(text.lower()):
        print(f"word_count: ValueError: event contains the word {fail_on!r}", file=sys.stderr)
        return 1
    write_result(outfile, count(text, stopwords()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
