"""Fuzz: hundreds of malformed events and outfiles through one pilot; it must neither crash nor hang.

The pilot runs with stop-on-error off, EWMS_PILOT_MAX_DELIVERIES=1 and a
dead-letter queue, so each bad event is failed once, with a reason, and
parked; the good ones (including huge, flooding and stdout-closing tasks)
produce their outputs; the run ends normally (exit 0).

The event string drives the task: `<mode>|<id>|<rest>`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import random
import string
from pathlib import Path
from typing import Any

import pytest
import zstd
from faults_kit import (
    PilotProcess,
    broker_address,
    nats_unfinished,
    pilot_env,
    put,
    put_raw,
    take,
    take_data,
    task_args,
)

SEED = 20240611

TASK = r"""
import json, os, signal, sys
d = open(sys.argv[1], encoding='utf-8', errors='surrogateescape').read()
mode, ident, rest = (d.split('|', 2) + ['', ''])[:3]
out = sys.argv[2]
def ok():
    json.dump({'id': ident, 'n': len(d)}, open(out, 'w'))
if mode == 'nonutf8':
    open(out, 'wb').write(bytes.fromhex(rest))
elif mode == 'badjson':
    open(out, 'w', encoding='utf-8').write(rest)
elif mode == 'deepjson':
    open(out, 'w').write('[' * 200000 + ']' * 200000)
elif mode == 'exit':
    sys.stderr.write('E' * 1000000 + '\n'); sys.exit(3)
elif mode == 'sigkill':
    os.kill(os.getpid(), signal.SIGKILL)
elif mode == 'outdir':
    os.mkdir(out)
elif mode == 'toolarge':
    with open(out, 'wb') as f:
        f.truncate(65 * 1024 * 1024)
elif mode == 'closeout':
    os.close(1); os.close(2); ok()
elif mode == 'flood':
    sys.stdout.write(('y' * 99 + '\n') * 50000); sys.stderr.write('z' * 1000000); sys.stdout.flush(); ok()
elif mode == 'noout':
    pass
else:
    ok()
"""

IN_BAD = "InvalidDataForInfileException"
OUT_BAD = "InvalidDataFromOutfileException"
RUN_BAD = "ContainerRunError"


def _text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_letters + "äß€🙂\t ") for _ in range(n))


def _random_json(rng: random.Random, ident: str) -> Any:
    """Anything but a str: dicts and lists carry `ident`, scalars cannot."""
    kind = rng.choice(["dict", "list", "int", "float", "bool", "none", "deep", "bigdict"])
    if kind == "dict":
        return {"fuzz": ident, "v": _text(rng, rng.randint(0, 50)), "n": rng.random()}
    if kind == "list":
        return [ident, rng.randint(-(10**12), 10**12), None, [True]]
    if kind == "int":
        return rng.randint(-(2**53), 2**53)
    if kind == "float":
        return rng.uniform(-1e300, 1e300)
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "none":
        return None
    if kind == "deep":
        deep: Any = ident
        for _ in range(200):
            deep = [deep]
        return deep
    return {"fuzz": ident, "blob": "x" * 2_000_000}


def build_events(rng: random.Random, scale: float) -> tuple[list[Any], list[bytes], dict[str, str], list[str]]:
    """(events, raw payloads, {id: expected error type} for bad string events, ids of good events).

    `scale` 1 gives ~250 events (the RabbitMQ run); smaller brokers get a slice.
    """

    def times(k: int) -> range:
        return range(max(1, round(k * scale)))

    events: list[Any] = []
    bad: dict[str, str] = {}
    good: list[str] = []
    n = 0

    def ident() -> str:
        nonlocal n
        n += 1
        return f"z{n:04d}"

    def add_bad(mode: str, rest: str, why: str) -> None:
        i = ident()
        events.append(f"{mode}|{i}|{rest}")
        bad[i] = why

    def add_good(mode: str, rest: str = "") -> None:
        i = ident()
        events.append(f"{mode}|{i}|{rest}")
        good.append(i)

    for _ in times(60):
        events.append(_random_json(rng, ident()))
    for _ in times(25):
        add_bad("nonutf8", bytes([0xFF, 0xFE, rng.randint(0x80, 0xFF)]).hex() + rng.randbytes(rng.randint(0, 30)).hex(), OUT_BAD)
    bad_json = ["", "   ", "{", "[1, 2", "{'single': 1}", '{"a": 1} trailing', "tru", "\x00", "[1,]", '"unterminated']
    for k in times(40):
        add_bad("badjson", bad_json[k % len(bad_json)] + ("" if k < len(bad_json) else _text(rng, 3) + "{"), OUT_BAD)
    for _ in times(3):
        add_bad("deepjson", "", OUT_BAD)
    for _ in times(5):
        add_bad("exit", "", RUN_BAD)
    for _ in times(5):
        add_bad("sigkill", "", RUN_BAD)
    for _ in times(3):
        add_bad("outdir", "", OUT_BAD)
    for _ in times(2):
        add_bad("toolarge", "", OUT_BAD)
    for _ in times(30):
        add_good("good", _text(rng, rng.randint(0, 300)))
    for size in [1, 2, 4, 8] if scale >= 1 else [1]:
        add_good("huge", _text(rng, 1000) * (size * 1000))  # 1-8 M characters
    for _ in times(5):
        add_good("closeout")
    for _ in times(5):
        add_good("flood")

    raws: list[bytes] = [b"", b"\x00", b"not zstd at all", json.dumps({"headers": {}, "data": "x"}).encode()]
    raws += [zstd.compress(b"not json"), zstd.compress(b'{"headers": {}}'), zstd.compress(b"[1, 2]")]
    raws += [rng.randbytes(rng.randint(1, 5000)) for _ in range(max(3, round(50 * scale)))]
    return events, raws, bad, good


def _fuzz_run(btype: str, address: str, qin: str, qout: str, qdead: str, tmp: Path, scale: float) -> dict[str, Any]:
    rng = random.Random(f"{SEED}-{btype}")
    events, raws, bad_strings, good = build_events(rng, scale)
    json_bad = [e for e in events if not isinstance(e, str)]
    put(btype, address, qin, events)
    put_raw(btype, address, qin, raws)
    env = pilot_env(
        btype, address, qin, qout, tmp, task_args(TASK),
        EWMS_PILOT_OUTFILE_EXT=".json",
        EWMS_PILOT_MAX_CONCURRENT_TASKS="4",
        EWMS_PILOT_STOP_LISTENING_ON_TASK_ERROR="false",
        EWMS_PILOT_MAX_DELIVERIES="1",
        EWMS_PILOT_QUEUE_DEADLETTER=qdead,
        EWMS_PILOT_TASK_TIMEOUT="30",
        EWMS_PILOT_TIMEOUT_QUEUE_INCOMING="2",
        EWMS_PILOT_CL_LOG="INFO",
    )
    pilot = PilotProcess(env, tmp)
    rc = pilot.wait(150)
    return {
        "rc": rc, "pilot": pilot, "events": events, "raws": raws, "bad_strings": bad_strings,
        "json_bad": json_bad, "good": good,
        "outputs": take_data(btype, address, qout, idle=1),
        "dead": take(btype, address, qdead, idle=1),
        "left": take_data(btype, address, qin, idle=1),
        # NATS: events whose ack failed stay pending for ack_wait (30 s): count them without waiting
        "unacked": nats_unfinished(address, qin) if btype == "nats" else 0,
    }


@pytest.mark.timeout(200)
def test_fuzz_malformed_events_and_outfiles(
    request: pytest.FixtureRequest, tmp_path: Path, new_queue: Any, record: Any
) -> None:
    """~250 bad/odd inputs on RabbitMQ; a smaller set on NATS and local, all three at once."""
    scales = {"rabbitmq": 1.0, "nats": 0.15, "local": 0.15}
    with concurrent.futures.ThreadPoolExecutor(len(scales)) as pool:
        jobs = {}
        for btype, scale in scales.items():
            tmp = tmp_path / btype
            tmp.mkdir()
            address = broker_address(request, btype, tmp)
            jobs[btype] = pool.submit(_fuzz_run, btype, address, new_queue("i"), new_queue("o"), new_queue("d"), tmp, scale)
        runs = {b: j.result() for b, j in jobs.items()}

    problems = []
    for btype, r in runs.items():
        problems += _judge(btype, r, record)
    assert not problems, "\n".join(problems)


def _judge(btype: str, r: dict[str, Any], record: Any) -> list[str]:
    pilot: PilotProcess = r["pilot"]
    dead: list[Any] = r["dead"]
    bad_strings: dict[str, str] = r["bad_strings"]
    n_bad = len(bad_strings) + len(r["json_bad"]) + len(r["raws"])
    n_events = len(r["events"]) + len(r["raws"])
    # what came out
    out_ids = collections.Counter(o.get("id") for o in r["outputs"] if isinstance(o, dict))
    dead_types = collections.Counter(str(d.headers.get("ewms_pilot_error_type")) for d in dead)
    dead_string_ids = {
        d.data.split("|")[1]: d.headers.get("ewms_pilot_error_type")
        for d in dead if isinstance(d.data, str) and d.data.count("|") >= 2
    }
    expected_types = collections.Counter(bad_strings.values())
    expected_types[IN_BAD] += len(r["json_bad"]) + len(r["raws"])
    no_reason = [d.data if not isinstance(d.data, str) else d.data[:40] for d in dead if not d.headers.get("ewms_pilot_error")]
    lost_good = [g for g in r["good"] if out_ids[g] == 0]
    wrong_type = {i: (t, dead_string_ids.get(i)) for i, t in bad_strings.items() if dead_string_ids.get(i) != t}
    counts = pilot.summary_counts()
    problems = []
    if r["rc"] != 0:
        problems.append(f"{btype}: exit {r['rc']}\n{pilot.log()[-3000:]}")
    if lost_good:
        problems.append(f"{btype}: good events without output: {lost_good}")
    if dead_types != expected_types:
        problems.append(f"{btype}: dead-lettered {dict(dead_types)}, expected {dict(expected_types)}")
    if wrong_type:
        problems.append(f"{btype}: wrong/missing dead-letter type for {dict(list(wrong_type.items())[:10])}")
    if no_reason:
        problems.append(f"{btype}: dead-lettered without a reason: {no_reason[:5]}")
    if r["left"] or r["unacked"]:
        problems.append(f"{btype}: {len(r['left'])} events left in the incoming queue, {r['unacked']} unacked")
    if counts.get("failed") != n_bad or counts.get("dead_lettered") != n_bad:
        problems.append(f"{btype}: summary {counts}, expected {n_bad} failed and dead-lettered")
    record.add(
        case="fuzz: malformed events/outfiles, raw non-oms payloads (MAX_DELIVERIES 1 + DLQ)",
        broker=btype, point=f"{n_bad} bad + {n_events - n_bad} good/odd",
        events=n_events, outputs=len(r["outputs"]),
        duplicates=sum(n - 1 for n in out_ids.values() if n > 1),
        lost=len(lost_good) + max(0, n_bad - len(dead) - r["unacked"]),
        detail=f"exit {r['rc']}; dead-lettered {dict(dead_types)}; summary {counts}"
        + (f"; {r['unacked']} still unacked in the incoming stream" if r["unacked"] else ""),
        verdict="held" if not problems else "FAILED: " + "; ".join(p.split("\n")[0][len(btype) + 2:] for p in problems),
    )
    return problems
