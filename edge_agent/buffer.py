"""The durable store-and-forward buffer that sits in front of the MQTT publisher.

Owns one SQLite file (stdlib `sqlite3`, WAL mode) holding every message that has been produced
but not yet acknowledged by the broker, with a per-stream sequence number that keeps counting
across restarts. The flow is: `append` (stored before it is sent), `take` a batch (marked in
flight, in memory only), then `commit` the ids once the broker sent PUBACK (deleted) or
`release` them when the send failed (pending again, in their original order). Entries in flight
when the process stops or crashes are simply pending again on the next open: nothing is lost,
duplicates are possible (at-least-once). A caller that commits acknowledged ids in batches (the
uplink does, every 50 ms or every window's worth) adds the acknowledged-but-not-yet-committed
ones to what a crash can send twice.

Bounds and drop policy (every drop is counted in `counters`, by reason):
    Size is the sum of `entry_size(topic, payload)` over stored entries (payload + topic +
    `ENTRY_OVERHEAD` bytes), bounded by `max_bytes`; it is not the file size (SQLite reuses
    freed pages but never shrinks the file; expect the file to be about 1.1 to 1.5 times the
    bound, plus a WAL of at most a few MiB). When a new entry does not fit:
      - the oldest telemetry not in flight is dropped first (``telemetry_oldest``), for new
        telemetry and for new events alike;
      - new telemetry that cannot make room that way (the buffer is full of events or of
        entries in flight) is refused (``telemetry_refused``): events are never dropped for it;
      - a new event drops the oldest events only when no telemetry is left to drop
        (``events_full``); if even that cannot make room (all in flight) the new event is
        refused, also counted as ``events_full``;
      - an entry larger than `max_bytes` is refused (``oversize``).
    Nothing in flight is ever dropped. Telemetry older than `max_age_s` (by its `ts`, against
    `clock`) is dropped by `take` (at most once a second of `clock`) and before making room
    (``age``); events have no age bound, only the byte bound. A refused or dropped entry still
    used up its sequence number, so a receiver sees the loss as a gap.
    A warning (``buffer high``) is logged once when usage reaches 80 % of `max_bytes`; it is
    re-armed (``buffer below high-water``) once usage fell below 70 %, so a buffer hovering at
    the line does not flood the log.

Historical flag: an entry is `historical` when it was appended before the current open (a
replay after a restart), or, when `live_s` is given, when its `ts` is more than `live_s`
seconds old at `take` time (a backlog after a broker outage).

Durability: WAL with ``synchronous=NORMAL``. Each `append`/`commit` is its own transaction and
costs a write() into the WAL but no fsync, so a crash of this process loses nothing that
`append` returned for. The fsyncs are batched: a checkpoint (which fsyncs the WAL, then the
database) runs at most every `sync_interval_s` (default 1000 ms) while writes keep coming, from
the owner's timer (`sync_if_due`) once writes stop, on `sync()` and on `close()`. A power cut
can therefore roll back at most about the last 1000 ms of appends (and of commits: acknowledged
entries may come back and be sent twice); the database itself stays consistent (the WAL is
checksummed). Sequence numbers of appends rolled back by a power cut are handed out again
after the restart; every entry therefore also records
the `run` (a random id drawn at each open) that appended it, so a receiver can tell a reused
number (same seq, different run) from a duplicate (same seq, same run).

Cost (what each message pays, `bench.uplink`): one transaction per `append_many` batch (its
rows, the two index leaves, the table's interior page and header: ~10 WAL frames for ten
1.4 kB messages, ~100 us of CPU), the `take` and the deletion. What keeps it down:
    - a plain append writes only its rows: the ``streams`` table (next sequence number) is
      written by the transactions that delete or refuse entries, and at open a stream's next
      number is one past its newest stored entry or the saved one, whichever is higher, so a
      number is never handed out twice;
    - `commit` deletes runs of consecutive ids as ranges and takes the byte count from what
      `take` recorded (no row is read back);
    - the live lane scans from a floor below which every row not in flight is old, so a
      backlog of hours is not read again by each take (a clock that steps back resets it, a
      released entry lowers it); `has_historical` is two index lookups (rows of earlier runs
      are those with an id up to the highest found at open: AUTOINCREMENT ids only grow).
    Measured and left as they were (no difference within this machine's noise): dropping an
    index, ``wal_autocheckpoint`` off or higher, ``journal_size_limit``, ``secure_delete``
    (on in Debian's build), ``locking_mode=EXCLUSIVE`` (it would also lock out readers such
    as the sqlite3 shell), larger pages (fewer frames but more bytes per transaction).

Corruption: a file that is not a SQLite database, or fails ``PRAGMA quick_check`` at open, is
moved aside to ``<name>.corrupt-<UTC timestamp>`` (its WAL too), logged, and a fresh buffer
is started; `recovered_from` names where it went. The buffer never refuses to start over a
corrupt file.

Blocking: every method is synchronous and does disk I/O (usually well under a millisecond, a
checkpoint a few milliseconds). The agent calls them through `asyncio.to_thread` or keeps each
call to one small batch; a lock makes the object safe to use from several threads.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, NamedTuple, Self

import structlog

log = structlog.get_logger(__name__)

ENTRY_OVERHEAD = 32
"""Bytes counted per entry on top of its payload and topic (row, index and seq bookkeeping)."""

HIGH_WATER = 0.8
"""Usage fraction at which `buffer high` is logged."""

REARM_WATER = 0.7
"""Usage fraction below which the high-water warning is re-armed."""

EXPIRE_EVERY_S = 1.0
"""`take` drops telemetry past `max_age_s` at most this often (appends that need room always
expire first)."""

StreamKind = Literal["telemetry", "events"]

Lane = Literal["all", "live", "backlog"]

# A rowid range scan from a floor (`id >= ?`); rows in flight are skipped inside SQLite (their
# payloads are never read), then LIMIT n. The lanes filter on `ts` (`ts >= ?` live, `ts < ?`
# backlog); "all" passes -inf so that every lane has the same parameters.
_TAKE_COLUMNS = "SELECT id, stream, seq, topic, payload, retain, ts, epoch, run, size FROM messages"
_NOT_IN_FLIGHT = " AND id NOT IN (SELECT value FROM json_each(?))"
_TAKE_WHERE: dict[Lane, str] = {"all": "ts >= ?", "live": "ts >= ?", "backlog": "ts < ?"}
_TAKE_QUERY: dict[tuple[Lane, bool], str] = {
    (lane, skip): f"{_TAKE_COLUMNS} WHERE id >= ? AND {where}{_NOT_IN_FLIGHT if skip else ''} "
    "ORDER BY id LIMIT ?"
    for lane, where in _TAKE_WHERE.items()
    for skip in (False, True)
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    stream   TEXT    NOT NULL,
    seq      INTEGER NOT NULL,
    topic    TEXT    NOT NULL,
    payload  BLOB    NOT NULL,
    retain   INTEGER NOT NULL,
    ts       REAL    NOT NULL,
    size     INTEGER NOT NULL,
    is_event INTEGER NOT NULL,
    epoch    INTEGER NOT NULL,
    run      TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS messages_kind_id ON messages (is_event, id);
CREATE INDEX IF NOT EXISTS messages_kind_ts ON messages (is_event, ts);
CREATE TABLE IF NOT EXISTS streams (
    stream   TEXT    PRIMARY KEY,
    next_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class BufferStoreError(Exception):
    """Base class of the errors this module raises (sqlite3's never leave it)."""


@dataclass(frozen=True, slots=True)
class StreamPolicy:
    """How a stream is treated when the buffer is full: telemetry is dropped, events are kept."""

    kind: StreamKind = "telemetry"

    def __post_init__(self) -> None:
        if self.kind not in ("telemetry", "events"):
            raise ValueError(f"unknown stream kind {self.kind!r}")


@dataclass(frozen=True, slots=True)
class NewEntry:
    """One message for `Buffer.append_many`; `ts` defaults to the buffer's clock."""

    stream: str
    topic: str
    payload: bytes
    retain: bool = False
    ts: float | None = None


class Entry(NamedTuple):
    """One stored message, as handed out by `Buffer.take` (a tuple: cheap to make per row)."""

    id: int
    stream: str
    seq: int
    topic: str
    payload: bytes
    retain: bool
    ts: float
    historical: bool
    run: str
    """The `Buffer.run` of the process that appended it."""


def entry_size(topic: str, payload: bytes) -> int:
    """Bytes an entry counts against `max_bytes`."""
    return len(payload) + len(topic.encode()) + ENTRY_OVERHEAD


class Buffer:
    """A bounded, durable FIFO of messages per stream, backed by one SQLite file."""

    def __init__(
        self,
        path: Path | str,
        *,
        max_bytes: int,
        max_age_s: float,
        streams: Mapping[str, StreamPolicy],
        live_s: float | None = None,
        sync_interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_bytes <= 0 or max_age_s <= 0:
            raise ValueError("max_bytes and max_age_s must be positive")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.live_s = live_s
        self.sync_interval_s = sync_interval_s
        self._streams = dict(streams)
        self._clock = clock
        self._lock = threading.Lock()
        self._in_flight: dict[int, int] = {}  # id -> size of the entries taken
        self._live_floor = 0  # every row below it not in flight is older than live_s
        self._live_cutoff = -float("inf")
        self._high = False
        self._last_sync = time.monotonic()
        self._unsynced = False  # a transaction committed since the last checkpoint
        self._last_expire = -float("inf")
        self.counters: dict[str, int] = {
            "telemetry_oldest": 0,
            "telemetry_refused": 0,
            "events_full": 0,
            "age": 0,
            "oversize": 0,
        }
        self.recovered_from: Path | None = None
        self.run = secrets.token_hex(4)
        self._db = self._open()
        try:
            self._init_db()
        except sqlite3.Error as exc:
            self._db.close()
            raise BufferStoreError(f"cannot initialise buffer {self.path}: {exc}") from exc
        log.info(
            "buffer opened",
            path=str(self.path),
            pending=self._count,
            bytes=self._bytes,
            epoch=self._epoch,
        )

    # -- opening ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA journal_size_limit=4194304")
            row = db.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {row[0] if row else 'no answer'}")
        except BaseException:
            db.close()
            raise
        return db

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            if not self.path.exists():
                raise BufferStoreError(f"cannot open buffer {self.path}: {exc}") from exc
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
            n = 1
            while aside.exists():
                aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
                n += 1
            self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    if suffix == "-wal":
                        side.rename(aside.with_name(aside.name + suffix))
                    else:
                        side.unlink()
            self.recovered_from = aside
            log.warning(
                "buffer corrupt, moved aside", path=str(self.path), to=str(aside), error=str(exc)
            )
        try:
            return self._connect()
        except sqlite3.Error as exc:
            raise BufferStoreError(f"cannot open buffer {self.path}: {exc}") from exc

    def _init_db(self) -> None:
        db = self._db
        db.executescript(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
        if "run" not in columns:  # a buffer written before runs were recorded
            db.execute("ALTER TABLE messages ADD COLUMN run TEXT NOT NULL DEFAULT ''")
        with self._tx():
            row = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
            self._epoch = (row[0] if row else 0) + 1
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('epoch', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (self._epoch,),
            )
        self._load_totals()
        self._open_max_id: int = self._top_id
        self._check_water()

    def _load_totals(self) -> None:
        """Counts, bytes and next sequence numbers from the file (one scan of the table).

        A stream's next number is one past its newest stored entry, or what the ``streams``
        table says if that is higher: the table is written by every transaction that deletes
        entries or refuses one (so a number is never handed out twice), not by plain appends.
        """
        db = self._db
        saved: dict[str, int] = dict(db.execute("SELECT stream, next_seq FROM streams"))
        self._saved_seq = dict(saved)
        self._count = 0
        self._bytes = 0
        self._top_id = 0
        for stream, count, total, top_seq, top_id in db.execute(
            "SELECT stream, count(*), sum(size), max(seq), max(id) FROM messages GROUP BY stream"
        ):
            self._count += count
            self._bytes += total
            self._top_id = max(self._top_id, top_id)
            saved[stream] = max(saved.get(stream, 0), top_seq + 1)
        self._next_seq = saved

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- public API ------------------------------------------------------------------------

    def append(
        self,
        stream: str,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        ts: float | None = None,
    ) -> int:
        """Store one message and return its sequence number in `stream` (even if it was refused)."""
        return self.append_many([NewEntry(stream, topic, payload, retain, ts)])[0]

    def append_many(self, items: Sequence[NewEntry]) -> list[int]:
        """Store several messages in one transaction; their sequence numbers, in order."""
        prepared = []
        for item in items:
            policy = self._streams.get(item.stream)
            if policy is None:
                raise KeyError(f"unknown stream {item.stream!r}")
            prepared.append((item, policy.kind == "events"))
        now = self._clock()
        sizes = [entry_size(item.topic, item.payload) for item, _ in prepared]
        with self._lock:
            try:
                with self._tx():
                    if self._bytes + sum(sizes) <= self.max_bytes:
                        # The common case: everything fits, nothing is dropped or refused, so
                        # the stored rows themselves carry the sequence numbers.
                        seqs = self._insert_all(prepared, sizes, now)
                    else:
                        seqs = [
                            self._append_locked(
                                item.stream,
                                topic=item.topic,
                                payload=item.payload,
                                retain=item.retain,
                                when=now if item.ts is None else item.ts,
                                size=size,
                                is_event=is_event,
                            )
                            for (item, is_event), size in zip(prepared, sizes, strict=True)
                        ]
                        self._save_seqs()
            except sqlite3.Error as exc:
                self._reload_totals()
                raise BufferStoreError(f"append failed: {exc}") from exc
            self._after_write()
            return seqs

    def _insert_all(
        self, prepared: Sequence[tuple[NewEntry, bool]], sizes: Sequence[int], now: float
    ) -> list[int]:
        """Everything fits: one INSERT for all rows (inside the caller's transaction)."""
        seqs: list[int] = []
        rows = []
        for (item, is_event), size in zip(prepared, sizes, strict=True):
            seq = self._next_seq.get(item.stream, 0)
            self._next_seq[item.stream] = seq + 1
            seqs.append(seq)
            when = now if item.ts is None else item.ts
            rows.append((item.stream, seq, item.topic, item.payload, int(item.retain), when,
                         size, int(is_event), self._epoch, self.run))  # fmt: skip
        self._db.executemany(
            "INSERT INTO messages "
            "(stream, seq, topic, payload, retain, ts, size, is_event, epoch, run) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        self._count += len(rows)
        self._bytes += sum(sizes)
        return seqs

    def _append_locked(
        self,
        stream: str,
        *,
        topic: str,
        payload: bytes,
        retain: bool,
        when: float,
        size: int,
        is_event: bool,
    ) -> int:
        """One append inside the caller's transaction (totals are fixed up if it rolls back)."""
        db = self._db
        seq = self._next_seq.get(stream, 0)
        stored = size <= self.max_bytes
        if not stored:
            self.counters["oversize"] += 1
        elif self._bytes + size > self.max_bytes:
            self._expire_locked()
            stored = self._make_room(self._bytes + size - self.max_bytes, is_event)
        if stored:
            db.execute(
                "INSERT INTO messages "
                "(stream, seq, topic, payload, retain, ts, size, is_event, epoch, run) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    stream,
                    seq,
                    topic,
                    payload,
                    int(retain),
                    when,
                    size,
                    int(is_event),
                    self._epoch,
                    self.run,
                ),
            )
            self._count += 1
            self._bytes += size
        self._next_seq[stream] = seq + 1
        return seq

    def _save_seqs(self) -> None:
        """Persist the next sequence numbers that moved since last saved (inside the caller's
        transaction; every transaction that deletes or refuses an entry calls it)."""
        moved = [(st, n) for st, n in self._next_seq.items() if self._saved_seq.get(st) != n]
        if moved:
            self._db.executemany(
                "INSERT INTO streams (stream, next_seq) VALUES (?, ?) "
                "ON CONFLICT (stream) DO UPDATE SET next_seq = excluded.next_seq",
                moved,
            )
            self._saved_seq.update(moved)

    def _reload_totals(self) -> None:
        """Re-read counts and sequence numbers after a rolled-back transaction."""
        with contextlib.suppress(sqlite3.Error):
            self._load_totals()

    def _make_room(self, need: int, is_event: bool) -> bool:
        """Drop entries by the policy until `need` bytes are free; False: refuse the new one."""
        victims: list[int] = []
        freed = 0
        kinds = (0, 1) if is_event else (0,)
        for kind in kinds:
            cur = self._db.execute(
                "SELECT id, size FROM messages WHERE is_event = ? ORDER BY id", (kind,)
            )
            for row_id, row_size in cur:
                if row_id in self._in_flight:
                    continue
                victims.append(row_id)
                freed += row_size
                if freed >= need:
                    break
            cur.close()
            if freed >= need:
                break
        if freed < need:
            self.counters["events_full" if is_event else "telemetry_refused"] += 1
            return False
        dropped = self._delete(victims)
        telemetry = sum(1 for k in dropped.values() if not k)
        self.counters["telemetry_oldest"] += telemetry
        self.counters["events_full"] += len(dropped) - telemetry
        return True

    def _delete(self, ids: Iterable[int]) -> dict[int, int]:
        """Delete rows by id; return {id: is_event} of those that existed, keep totals right."""
        rows = self._db.execute(
            "DELETE FROM messages WHERE id IN (SELECT value FROM json_each(?)) "
            "RETURNING id, size, is_event",
            (json.dumps(list(ids)),),
        ).fetchall()
        for row_id, row_size, _ in rows:
            self._count -= 1
            self._bytes -= row_size
            self._in_flight.pop(row_id, None)
        return {row_id: kind for row_id, _, kind in rows}

    def take(self, n: int, *, lane: Lane = "all") -> list[Entry]:
        """Up to `n` oldest entries not in flight, in append order; they are now in flight.

        `lane` narrows the choice by age (needs `live_s`): ``"live"`` only entries whose `ts`
        is at most `live_s` old, ``"backlog"`` only older ones, ``"all"`` both.
        """
        if lane != "all" and self.live_s is None:
            raise ValueError("lanes need live_s")
        with self._lock:
            try:
                wall = self._clock()
                if abs(wall - self._last_expire) >= EXPIRE_EVERY_S:
                    self._last_expire = wall
                    with self._tx():
                        self._expire_locked()
                self._check_water()
                if n <= 0:
                    return []
                return self._take_locked(n, lane, self._clock())
            except sqlite3.Error as exc:
                raise BufferStoreError(f"take failed: {exc}") from exc

    def _take_locked(self, n: int, lane: Lane, now: float) -> list[Entry]:
        live_s = self.live_s
        cutoff = -float("inf") if live_s is None else now - live_s
        floor = 0
        if lane == "live":
            # The live lane scans from a floor below which every row not in flight is old: a
            # backlog of hours is not read again by each take. A clock that went back (rows
            # that were old are live again) starts from the beginning.
            if cutoff < self._live_cutoff:
                self._live_floor = 0
            self._live_cutoff = cutoff
            floor = self._live_floor
        bound = -float("inf") if lane == "all" else cutoff
        skip = [i for i in self._in_flight if i >= floor]
        args: tuple[float | str | int, ...] = (
            (floor, bound, json.dumps(skip), n) if skip else (floor, bound, n)
        )
        rows = self._db.execute(_TAKE_QUERY[lane, bool(skip)], args).fetchall()
        epoch = self._epoch
        in_flight = self._in_flight
        out: list[Entry] = []
        for row_id, stream, seq, topic, payload, retain, ts, row_epoch, run, size in rows:
            historical = row_epoch < epoch or (live_s is not None and now - ts > live_s)
            out.append(
                Entry(row_id, stream, seq, topic, payload, bool(retain), ts, historical, run)
            )
            in_flight[row_id] = size
        if lane == "live":
            if len(out) == n:
                self._live_floor = out[-1].id + 1
            else:  # every row not in flight from the floor on is old (or was just taken)
                (top,) = self._db.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()
                self._live_floor = top + 1
        return out

    def commit(self, ids: Iterable[int]) -> None:
        """Delete acknowledged entries: those in flight among `ids` (others, never taken or
        already committed, are ignored).

        Runs of consecutive ids are deleted as ranges (``id BETWEEN a AND b``), one statement
        per run, and the totals come from what `take` recorded: no row is read back.
        """
        with self._lock:
            sizes = self._in_flight
            done = sorted(i for i in set(ids) if i in sizes)
            if not done:
                return
            runs: list[tuple[int, int]] = []
            lo = hi = done[0]
            for i in done[1:]:
                if i != hi + 1:
                    runs.append((lo, hi))
                    lo = i
                hi = i
            runs.append((lo, hi))
            try:
                with self._tx():
                    self._save_seqs()
                    self._db.executemany("DELETE FROM messages WHERE id BETWEEN ? AND ?", runs)
            except sqlite3.Error as exc:
                self._reload_totals()
                raise BufferStoreError(f"commit failed: {exc}") from exc
            self._count -= len(done)
            self._bytes -= sum(sizes.pop(i) for i in done)
            self._after_write()

    def release(self, ids: Iterable[int]) -> None:
        """Put entries back (send failed): pending again, in their original order."""
        with self._lock:
            for i in ids:
                if self._in_flight.pop(i, None) is not None:
                    self._live_floor = min(self._live_floor, i)

    def expire(self) -> int:
        """Drop telemetry older than `max_age_s` now (not in flight); return how many."""
        with self._lock:
            try:
                with self._tx():
                    n = self._expire_locked()
            except sqlite3.Error as exc:
                raise BufferStoreError(f"expire failed: {exc}") from exc
            self._check_water()
            return n

    def _expire_locked(self) -> int:
        cutoff = self._clock() - self.max_age_s
        ids = [
            row_id
            for (row_id,) in self._db.execute(
                "SELECT id FROM messages WHERE is_event = 0 AND ts < ?", (cutoff,)
            )
            if row_id not in self._in_flight
        ]
        if not ids:
            return 0
        self._save_seqs()
        n = len(self._delete(ids))
        self.counters["age"] += n
        return n

    def pending(self) -> int:
        """Entries stored and not in flight."""
        with self._lock:
            return self._count - len(self._in_flight)

    def has_historical(self) -> bool:
        """Whether any stored entry (pending or in flight) would be sent as historical.

        Two index lookups, never a scan: rows of earlier runs are exactly those with an id up
        to the highest id found at open (ids only grow), and old rows are found through the
        ``(is_event, ts)`` index.
        """
        with self._lock:
            if self._count == 0:
                return False
            cutoff = -float("inf") if self.live_s is None else self._clock() - self.live_s
            try:
                db = self._db
                if self._open_max_id > 0:
                    row = db.execute(
                        "SELECT 1 FROM messages WHERE id <= ? LIMIT 1", (self._open_max_id,)
                    ).fetchone()
                    if row is not None:
                        return True
                    self._open_max_id = 0  # gone for good: ids only grow
                row = db.execute(
                    "SELECT 1 FROM messages WHERE is_event IN (0, 1) AND ts < ? LIMIT 1",
                    (cutoff,),
                ).fetchone()
            except sqlite3.Error as exc:
                raise BufferStoreError(f"query failed: {exc}") from exc
            return row is not None

    def in_flight(self) -> int:
        """Entries taken and neither committed nor released."""
        with self._lock:
            return len(self._in_flight)

    def bytes_used(self) -> int:
        """Bytes counted against `max_bytes` (see `entry_size`)."""
        with self._lock:
            return self._bytes

    def next_seq(self, stream: str) -> int:
        """The sequence number the next `append` to `stream` will get."""
        with self._lock:
            return self._next_seq.get(stream, 0)

    def sync(self) -> None:
        """Force what is committed onto the disk (a checkpoint: fsync of WAL and database)."""
        with self._lock:
            self._sync_locked()

    def sync_if_due(self) -> bool:
        """Checkpoint when something committed is older than `sync_interval_s` and not yet on
        the disk; True if it did. The owner calls this on a timer, so that the last writes
        before a quiet spell are not left out of the power-cut bound."""
        with self._lock:
            if self._unsynced and time.monotonic() - self._last_sync >= self.sync_interval_s:
                self._sync_locked()
                return True
            return False

    def _sync_locked(self) -> None:
        try:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            raise BufferStoreError(f"sync failed: {exc}") from exc
        self._last_sync = time.monotonic()
        self._unsynced = False

    def _after_write(self) -> None:
        self._unsynced = True
        self._check_water()
        if time.monotonic() - self._last_sync >= self.sync_interval_s:
            self._sync_locked()

    def _check_water(self) -> None:
        usage = self._bytes / self.max_bytes
        if not self._high and usage >= HIGH_WATER:
            self._high = True
            log.warning(
                "buffer high",
                path=str(self.path),
                bytes=self._bytes,
                max_bytes=self.max_bytes,
                usage=round(usage, 3),
            )
        elif self._high and usage < REARM_WATER:
            self._high = False
            log.info("buffer below high-water", path=str(self.path), usage=round(usage, 3))

    def close(self) -> None:
        """Checkpoint and close; entries in flight are pending again on the next open."""
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as exc:
                log.warning("buffer checkpoint failed", path=str(self.path), error=str(exc))
            self._db.close()
            self._in_flight.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
