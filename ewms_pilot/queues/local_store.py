"""The local queue's SQLite layer: synchronous, one connection, one thread.

`local.py` runs every method here on a dedicated worker thread; nothing in
this module knows about asyncio. Each method is one short transaction, so
several processes can share one database file (WAL mode, `BEGIN IMMEDIATE`
for anything that reads-then-writes, a busy timeout for the rest).

Tables:
  events(id, queue, payload, state, holder, delivery_count, enqueued_at, dead_reason)
      state is 'ready' | 'in_flight'; `holder` is set only while in flight. ('dead' and
      `dead_reason` stay in file format 1 but are never written: a dead-lettered event is
      published to the pilot's dead-letter queue, a queue like any other.)
  holders(id, queue, machine, pid, start, lease_until)
      one row per live subscription that holds (or held) events; the lease is
      on the holder, so renewing it is one row update however many events it holds.
An in-flight event whose holder row is gone is released (made ready again).
"""

from __future__ import annotations

import dataclasses as dc
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from .. import liveness
from ..errors import BrokerError, BrokerUnavailableError, ConfigError

APPLICATION_ID = 0x65776D73  # "ewms": marks a database file as a local queue
SCHEMA_VERSION = 1
BUSY_TIMEOUT = 30.0  # seconds a writer waits for another process's transaction

READY, IN_FLIGHT, DEAD = "ready", "in_flight", "dead"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    payload BLOB NOT NULL,
    state TEXT NOT NULL DEFAULT '{READY}' CHECK (state IN ('{READY}', '{IN_FLIGHT}', '{DEAD}')),
    holder TEXT,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    enqueued_at REAL NOT NULL,
    dead_reason TEXT
);
CREATE INDEX IF NOT EXISTS events_by_queue ON events (queue, state, id);
CREATE INDEX IF NOT EXISTS events_by_holder ON events (holder) WHERE holder IS NOT NULL;
CREATE TABLE IF NOT EXISTS holders (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    machine TEXT NOT NULL,
    pid INTEGER NOT NULL,
    start TEXT NOT NULL,
    lease_until REAL NOT NULL
);
"""

ADDRESS_VARIABLE = "local broker address"


@dc.dataclass(frozen=True)
class Claimed:
    """One event handed to a holder; (id, holder, delivery_count) is the claim's token."""

    id: int
    payload: bytes
    delivery_count: int


@dc.dataclass(frozen=True)
class Ack:
    """One ack for `ack_and_take`; `result` (queue, payload: a result or a dead-letter copy) is
    published with it, in its transaction."""

    claim: Claimed
    result: tuple[str, bytes] | None = None


def check_address(address: str) -> Path:
    """The database path for a broker address; a bad path is a setting mistake."""
    if not address or address == ":memory:" or address.startswith("file:"):
        raise ConfigError(
            ADDRESS_VARIABLE, address, "a path to an SQLite database file (created on first use)"
        )
    path = Path(address).expanduser()
    parent = path.parent
    try:
        is_dir, parent_is_dir = path.is_dir(), parent.is_dir()
    except OSError as e:  # a name too long for the filesystem (is_dir raises that one)
        raise ConfigError(ADDRESS_VARIABLE, address, f"a usable file path ({e.strerror})") from None
    if is_dir:
        raise ConfigError(ADDRESS_VARIABLE, address, "a file path, not a directory")
    if not parent_is_dir:
        raise ConfigError(
            ADDRESS_VARIABLE, address, f"a file in an existing directory ({parent} does not exist)"
        )
    return path


def _unavailable(path: Path, e: BaseException) -> BrokerUnavailableError:
    return BrokerUnavailableError(f"local queue database {str(path)!r}: {e}")


class LocalStore:
    """One connection to one queue in one database file. Use from one thread only."""

    def __init__(self, path: Path, queue: str, *, durable: bool) -> None:
        self.path = path
        self.queue = queue
        self.durable = durable
        self.here = liveness.current()
        self.file_id = (0, 0)  # (st_dev, st_ino), os.path.samefile's test: set by `_connect`
        self._conn = self._connect(durable)

    # ------------------------------------------------------------------ setup

    def _connect(self, durable: bool) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
        except sqlite3.Error as e:
            raise _unavailable(self.path, e) from e
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise BrokerUnavailableError(
                    f"local queue database {str(self.path)!r}: cannot use WAL mode "
                    f"(got {mode!r}; is it on a network filesystem?)"
                )
            # a publish must survive power loss once `send` returned; a lost claim/ack
            # only means a redelivery, so consumers skip the extra fsync, except in a
            # commit that also publishes (a result with its ack: `_write(durable=True)`)
            conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            self._init_schema(conn)
            # which file this is, so a subscription can tell (without a stat on the caller's
            # thread) that a publisher writes to the same file
            st = os.stat(self.path)
            self.file_id = (st.st_dev, st.st_ino)
        except (sqlite3.Error, OSError) as e:
            conn.close()
            raise _unavailable(self.path, e) from e
        except BrokerUnavailableError:
            conn.close()
            raise
        return conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app_id != APPLICATION_ID and (app_id != 0 or tables):
                raise BrokerUnavailableError(
                    f"local queue database {str(self.path)!r}: "
                    "is an SQLite file but not an ewms-pilot local queue"
                )
            if version > SCHEMA_VERSION:
                raise BrokerUnavailableError(
                    f"local queue database {str(self.path)!r}: schema version {version} "
                    f"is newer than this ewms-pilot's ({SCHEMA_VERSION})"
                )
            if app_id == 0:
                for statement in _SCHEMA.split(";"):  # not executescript: it would COMMIT
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed by the last closer)."""
        self._conn.close()

    # ------------------------------------------------------------ transactions

    def _write(self, fn: Any, *args: Any, durable: bool = False) -> Any:
        """Run `fn(*args)` inside `BEGIN IMMEDIATE` ... `COMMIT` (all or nothing).

        A failure (of `fn` or of the commit) leaves nothing changed and no transaction open, so the
        caller may simply try again. `durable`: this commit is synced as a publish's is
        (`synchronous=FULL`) on a connection that otherwise skips that fsync.
        """
        switch = durable and not self.durable
        try:
            if switch:
                self._conn.execute("PRAGMA synchronous = FULL")
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(*args)
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
            finally:
                if switch:
                    self._conn.execute("PRAGMA synchronous = NORMAL")
            return result
        except sqlite3.Error as e:
            raise BrokerError(f"local queue database {str(self.path)!r}: {e}") from e

    def _one(self, sql: str, *params: Any) -> int:
        """Run one autocommit statement; returns the number of rows it changed."""
        try:
            return self._conn.execute(sql, params).rowcount
        except sqlite3.Error as e:
            raise BrokerError(f"local queue database {str(self.path)!r}: {e}") from e

    # --------------------------------------------------------------- publish

    def _insert(self, queue: str, payload: bytes, now: float) -> int:
        """Append one ready event to `queue` (inside a transaction, or autocommit); its id."""
        cur = self._conn.execute(
            "INSERT INTO events (queue, payload, enqueued_at) VALUES (?, ?, ?)", (queue, payload, now)
        )
        return int(cur.lastrowid or 0)

    def publish(self, payload: bytes) -> int:
        """Append one ready event; returns its id once it is committed."""
        try:
            return self._insert(self.queue, payload, time.time())
        except sqlite3.Error as e:
            raise BrokerError(f"local queue database {str(self.path)!r}: {e}") from e

    def publish_many(self, payloads: list[bytes]) -> list[int]:
        """Append ready events in one transaction (one fsync for all); their ids once committed."""

        def _txn() -> list[int]:
            now = time.time()
            return [self._insert(self.queue, payload, now) for payload in payloads]

        if len(payloads) <= 1:
            return [self.publish(p) for p in payloads]
        result: list[int] = self._write(_txn)
        return result

    # ----------------------------------------------------------------- sweep

    def _sweep(self, now: float, me: str | None = None) -> int:
        """Drop holders whose lease ran out or whose process is gone; release their events.

        `me` (the sweeping holder) is never expired: it knows it is alive, and after
        a laptop suspend it must not take back and redeliver its own running events.
        """
        c = self._conn
        c.execute("DELETE FROM holders WHERE lease_until < ? AND id IS NOT ?", (now, me))
        rows = c.execute(
            "SELECT id, machine, pid, start FROM holders WHERE machine = ?", (self.here.machine,)
        ).fetchall()
        for hid, machine, pid, start in rows:
            if liveness.is_surely_dead(liveness.ProcessIdentity(machine, pid, start), self.here):
                c.execute("DELETE FROM holders WHERE id = ?", (hid,))
        return c.execute(
            f"UPDATE events SET state = '{READY}', holder = NULL "
            "WHERE holder IS NOT NULL AND holder NOT IN (SELECT id FROM holders)"
        ).rowcount

    # ----------------------------------------------------------------- claim

    def has_ready(self) -> bool:
        """Cheap read (no write lock): is anything ready in this queue?"""
        try:
            row = self._conn.execute(
                f"SELECT 1 FROM events WHERE queue = ? AND state = '{READY}' LIMIT 1",
                (self.queue,),
            ).fetchone()
        except sqlite3.Error as e:
            raise BrokerError(f"local queue database {str(self.path)!r}: {e}") from e
        return row is not None

    def claim(self, holder: str, lease: float, sweep: bool) -> Claimed | None:
        """Hand the oldest ready event to `holder` (sweeping first when asked)."""

        def _txn() -> Claimed | None:
            now = time.time()
            if sweep:
                self._sweep(now, holder)
            taken = self._take(holder, lease, 1, now)
            return taken[0] if taken else None

        result: Claimed | None = self._write(_txn)
        return result

    def _take(self, holder: str, lease: float, n: int, now: float) -> list[Claimed]:
        """Inside a transaction: the `n` oldest ready events, now `holder`'s (its lease renewed)."""
        rows = self._conn.execute(
            f"SELECT id, payload, delivery_count FROM events "
            f"WHERE queue = ? AND state = '{READY}' ORDER BY id LIMIT ?",
            (self.queue, n),
        ).fetchall()
        if not rows:
            return []
        self._conn.execute(
            "INSERT INTO holders (id, queue, machine, pid, start, lease_until) "
            "VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET lease_until = excluded.lease_until",
            (holder, self.queue, self.here.machine, self.here.pid, self.here.start, now + lease),
        )
        taken = []
        for event_id, payload, count in rows:
            self._conn.execute(
                f"UPDATE events SET state = '{IN_FLIGHT}', holder = ?, delivery_count = ? WHERE id = ?",
                (holder, int(count) + 1, event_id),
            )
            taken.append(Claimed(id=int(event_id), payload=bytes(payload), delivery_count=int(count) + 1))
        return taken

    # ------------------------------------------------------- settle / renew

    _MINE = f"id = ? AND holder = ? AND delivery_count = ? AND state = '{IN_FLIGHT}'"

    def ack(self, claim: Claimed, holder: str) -> bool:
        """Forget the event; False when the claim was lost (lease expired) first."""
        return (
            self._one(
                f"DELETE FROM events WHERE {self._MINE}", claim.id, holder, claim.delivery_count
            )
            == 1
        )

    def _ack_mine(self, acks: list[Ack], holder: str) -> list[bool]:
        """Inside a transaction: forget each claim that is still `holder`'s, and only then publish
        its result; one answer per ack (False: the claim was lost, nothing published for it)."""
        sql = f"DELETE FROM events WHERE {self._MINE}"
        now = time.time()
        answers = []
        for ack in acks:
            c = ack.claim
            mine = self._conn.execute(sql, (c.id, holder, c.delivery_count)).rowcount == 1
            if mine and ack.result is not None:
                self._insert(*ack.result, now)
            answers.append(mine)
        return answers

    def ack_and_take(
        self, acks: list[Ack], holder: str, lease: float, n: int, sweep: bool
    ) -> tuple[list[bool], list[Claimed]]:
        """Acks (each with its result, if any), and in the same transaction up to `n` next events for
        `holder` (read ahead).

        One `BEGIN ... COMMIT` where acking, publishing and then claiming took three: the slot an
        ack frees is refilled before the consumer asks, and a result is published exactly when its
        event is acked. A commit that publishes is synced as `LocalPublisher`'s (`synchronous=FULL`).
        """
        publishes = any(ack.result is not None for ack in acks)
        if n <= 0 and len(acks) == 1 and not publishes:  # one statement, no transaction needed
            return [self.ack(acks[0].claim, holder)], []

        def _txn() -> tuple[list[bool], list[Claimed]]:
            acked = self._ack_mine(acks, holder)
            if n <= 0:
                return acked, []
            now = time.time()
            if sweep:
                self._sweep(now, holder)
            return acked, self._take(holder, lease, n, now)

        result: tuple[list[bool], list[Claimed]] = self._write(_txn, durable=publishes)
        return result

    def unclaim(self, claims: list[Claimed], holder: str) -> int:
        """Give back events read ahead and never handed out: ready again, their delivery count as before."""

        def _txn() -> int:
            sql = (
                f"UPDATE events SET state = '{READY}', holder = NULL, delivery_count = delivery_count - 1 "
                f"WHERE {self._MINE}"
            )
            return sum(self._conn.execute(sql, (c.id, holder, c.delivery_count)).rowcount for c in claims)

        return int(self._write(_txn)) if claims else 0

    def release(self, claim: Claimed, holder: str) -> bool:
        """Make the event ready again (first in line); False when the claim was lost."""
        return (
            self._one(
                f"UPDATE events SET state = '{READY}', holder = NULL WHERE {self._MINE}",
                claim.id,
                holder,
                claim.delivery_count,
            )
            == 1
        )

    def requeue(self, claim: Claimed, holder: str, payload: bytes) -> bool:
        """Replace the event by `payload` at the back of the queue (a fresh delivery count).

        One transaction: the copy exists if and only if the claim was still ours.
        """

        def _txn() -> bool:
            if self._conn.execute(
                f"DELETE FROM events WHERE {self._MINE}", (claim.id, holder, claim.delivery_count)
            ).rowcount != 1:
                return False
            self._insert(self.queue, payload, time.time())
            return True

        return bool(self._write(_txn))

    def renew(self, holder: str, lease: float) -> bool:
        """Extend the holder's lease; False when it was already swept (its events released)."""
        return (
            self._one(
                "UPDATE holders SET lease_until = ? WHERE id = ?", time.time() + lease, holder
            )
            == 1
        )

    def release_all(self, holder: str) -> int:
        """Give back every event `holder` still holds and drop the holder; returns how many."""

        def _txn() -> int:
            n = self._conn.execute(
                f"UPDATE events SET state = '{READY}', holder = NULL "
                f"WHERE holder = ? AND state = '{IN_FLIGHT}'",
                (holder,),
            ).rowcount
            self._conn.execute("DELETE FROM holders WHERE id = ?", (holder,))
            return n

        return int(self._write(_txn))

    # ----------------------------------------------------------------- count

    def counts(self) -> dict[str, int]:
        """ready / in_flight for this queue, after releasing dead holders' events."""

        def _txn() -> dict[str, int]:
            self._sweep(time.time())
            out = {READY: 0, IN_FLIGHT: 0}
            for state, n in self._conn.execute(
                "SELECT state, count(*) FROM events WHERE queue = ? GROUP BY state",
                (self.queue,),
            ):
                out[str(state)] = int(n)
            return out

        result: dict[str, int] = self._write(_txn)
        return result
