"""Tests of the durable store-and-forward buffer: a model-based state machine plus policy cases."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from structlog.testing import capture_logs

from edge_agent.buffer import Buffer, Entry, Lane, NewEntry, StreamPolicy, entry_size

STREAMS = {
    "t1": StreamPolicy("telemetry"),
    "t2": StreamPolicy("telemetry"),
    "ev": StreamPolicy("events"),
}


class FakeClock:
    """A settable wall clock: the age bound is about hours, which a test cannot wait for."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def open_buffer(
    path: Path,
    max_bytes: int = 10_000,
    *,
    clock: Callable[[], float] = time.time,
    live_s: float | None = None,
) -> Buffer:
    """A buffer on `path` with the test streams."""
    return Buffer(
        path, max_bytes=max_bytes, max_age_s=3600.0, streams=STREAMS, clock=clock, live_s=live_s
    )


# -- model-based state machine -----------------------------------------------------------


@dataclass
class ModelEntry:
    """What the model expects of one stored entry."""

    stream: str
    seq: int
    payload: bytes
    size: int
    is_event: bool
    ts: float = 0.0
    old_run: bool = False
    """Appended before the last reopen: historical whatever its age."""
    in_flight: bool = False
    id: int = -1


MAX_BYTES = 2_000
LIVE_S = 2.0


class BufferMachine(RuleBasedStateMachine):
    """Append/take (all, live and backlog lanes)/commit/release/reopen/overflow and a wall
    clock that moves (also backwards) against an in-memory model of the buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "buf.db"
        self.clock = FakeClock()
        self.buf = self._open()
        self.entries: list[ModelEntry] = []
        self.next_seq: dict[str, int] = dict.fromkeys(STREAMS, 0)
        self.taken: list[Entry] = []
        self.counters: dict[str, int] = dict.fromkeys(
            ("telemetry_oldest", "telemetry_refused", "events_full"), 0
        )

    def _open(self) -> Buffer:
        return open_buffer(self.path, MAX_BYTES, clock=self.clock, live_s=LIVE_S)

    @initialize()
    def start(self) -> None:
        """Nothing to do: the buffer is opened in __init__."""

    def _live(self, e: ModelEntry) -> bool:
        return e.ts >= self.clock.now - LIVE_S  # the buffer's own comparison (exact here)

    def _historical(self, e: ModelEntry) -> bool:
        return e.old_run or self.clock.now - e.ts > LIVE_S

    def _model_append(self, stream: str, payload: bytes) -> int:
        is_event = STREAMS[stream].kind == "events"
        size = entry_size(f"plant/{stream}", payload)
        seq = self.next_seq[stream]
        self.next_seq[stream] += 1
        need = sum(e.size for e in self.entries) + size - MAX_BYTES
        if need > 0:
            victims: list[ModelEntry] = []
            freed = 0
            kinds = (False, True) if is_event else (False,)
            for kind in kinds:
                for e in self.entries:
                    if freed >= need:
                        break
                    if e.is_event == kind and not e.in_flight:
                        victims.append(e)
                        freed += e.size
            if freed < need:
                self.counters["events_full" if is_event else "telemetry_refused"] += 1
                return seq
            for v in victims:
                self.entries.remove(v)
                self.counters["events_full" if v.is_event else "telemetry_oldest"] += 1
        self.entries.append(ModelEntry(stream, seq, payload, size, is_event, self.clock.now))
        return seq

    @rule(stream=st.sampled_from(sorted(STREAMS)), payload=st.binary(max_size=60))
    def append(self, stream: str, payload: bytes) -> None:
        """Append a small message; its seq is the next of its stream."""
        expected = self._model_append(stream, payload)
        assert self.buf.append(stream, f"plant/{stream}", payload) == expected

    @rule(stream=st.sampled_from(sorted(STREAMS)), size=st.integers(400, 900))
    def overflow(self, stream: str, size: int) -> None:
        """Append a large message that forces the byte bound's policy to act."""
        payload = bytes([len(self.entries) % 256]) * size
        expected = self._model_append(stream, payload)
        assert self.buf.append(stream, f"plant/{stream}", payload) == expected

    @rule(n=st.integers(0, 8), lane=st.sampled_from(["all", "live", "backlog"]))
    def take(self, n: int, lane: Lane) -> None:
        """Take hands out the oldest entries of the lane not in flight, in order, with their
        historical flag."""
        got = self.buf.take(n, lane=lane)
        free = [
            e
            for e in self.entries
            if not e.in_flight and (lane == "all" or (lane == "live") == self._live(e))
        ][:n]
        assert [(g.stream, g.seq, g.payload, g.historical) for g in got] == [
            (e.stream, e.seq, e.payload, self._historical(e)) for e in free
        ]
        for g, e in zip(got, free, strict=True):
            e.in_flight = True
            e.id = g.id
        self.taken.extend(got)

    @precondition(lambda self: self.taken)
    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        """Commit deletes some taken entries."""
        chosen = data.draw(st.lists(st.sampled_from(self.taken), unique_by=lambda e: e.id))
        ids = {e.id for e in chosen}
        self.buf.commit(ids)
        self.entries = [e for e in self.entries if not (e.in_flight and e.id in ids)]
        self.taken = [e for e in self.taken if e.id not in ids]

    @precondition(lambda self: self.taken)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        """Release puts some taken entries back in their original place."""
        chosen = data.draw(st.lists(st.sampled_from(self.taken), unique_by=lambda e: e.id))
        ids = {e.id for e in chosen}
        self.buf.release(ids)
        for e in self.entries:
            if e.in_flight and e.id in ids:
                e.in_flight = False
        self.taken = [e for e in self.taken if e.id not in ids]

    @rule(step=st.sampled_from([0.5, 1.0, 1.5, 3.0, -1.0, -4.0]))
    def clock_moves(self, step: float) -> None:
        """The wall clock moves on, or back (an NTP step): entries change lanes by age."""
        self.clock.now += step

    @rule()
    def reopen(self) -> None:
        """Close and open the same file: everything stored is pending again, seqs continue.
        Entries taken and not committed (sent, maybe even acknowledged by the broker but not
        deleted yet) come back: the at-least-once duplicates."""
        self.buf.close()
        counters = self.buf.counters
        self.buf = self._open()
        assert self.buf.recovered_from is None
        self.buf.counters.update(counters)
        for e in self.entries:
            e.in_flight = False
            e.old_run = True
        self.taken = []

    @invariant()
    def matches_model(self) -> None:
        """Counts, bytes and drop counters agree with the model."""
        assert self.buf.pending() == sum(1 for e in self.entries if not e.in_flight)
        assert self.buf.in_flight() == sum(1 for e in self.entries if e.in_flight)
        assert self.buf.bytes_used() == sum(e.size for e in self.entries)
        assert self.buf.bytes_used() <= MAX_BYTES
        for name, value in self.counters.items():
            assert self.buf.counters[name] == value, name
        assert self.buf.has_historical() == any(self._historical(e) for e in self.entries)

    def teardown(self) -> None:
        """Check the whole content in order, then clean up."""
        self.buf.close()
        self.buf = self._open()
        got = self.buf.take(10_000)
        assert [(g.stream, g.seq, g.payload) for g in got] == [
            (e.stream, e.seq, e.payload) for e in self.entries
        ]
        assert all(g.historical for g in got)
        self.buf.close()
        self.dir.cleanup()


BufferMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBufferMachine = BufferMachine.TestCase


# -- restart and crash -------------------------------------------------------------------


def test_sequence_numbers_continue_across_reopen(tmp_path: Path) -> None:
    """Per-stream seqs keep counting after close/open, even when everything was committed."""
    path = tmp_path / "b.db"
    with open_buffer(path) as buf:
        assert [buf.append("t1", "a", b"x") for _ in range(3)] == [0, 1, 2]
        assert buf.append("ev", "e", b"y") == 0
        buf.commit(e.id for e in buf.take(10))
    with open_buffer(path) as buf:
        assert buf.append("t1", "a", b"x") == 3
        assert buf.append("ev", "e", b"y") == 1
        assert buf.append("t2", "b", b"z") == 0


def test_last_writes_before_a_quiet_spell_are_synced_by_the_timer(tmp_path: Path) -> None:
    """Writes that stop leave nothing unsynced past the interval: `sync_if_due` checkpoints
    once (and only when something committed is waiting)."""
    buf = Buffer(tmp_path / "b.db", max_bytes=10_000, max_age_s=3600.0, streams=STREAMS,
                 sync_interval_s=0.5)  # fmt: skip
    try:
        buf.sync()
        assert not buf.sync_if_due()  # nothing written since
        buf.append("t1", "a", b"x")  # within the interval: no checkpoint yet
        time.sleep(0.6)
        assert buf.sync_if_due()
        assert not buf.sync_if_due()  # on the disk already
    finally:
        buf.close()


def test_in_flight_entries_are_pending_after_reopen(tmp_path: Path) -> None:
    """Entries taken but never committed come back, in order, flagged historical."""
    path = tmp_path / "b.db"
    with open_buffer(path) as buf:
        for i in range(5):
            buf.append("t1", "a", bytes([i]))
        taken = buf.take(3)
        buf.commit([taken[0].id])
        assert buf.pending() == 2
        assert not any(e.historical for e in taken)
    with open_buffer(path) as buf:
        assert buf.pending() == 4
        again = buf.take(10)
        assert [e.payload for e in again] == [bytes([i]) for i in (1, 2, 3, 4)]
        assert all(e.historical for e in again)
        buf.append("t1", "a", b"new")
        assert buf.take(1)[0].historical is False


def test_in_flight_entries_survive_a_killed_process(tmp_path: Path) -> None:
    """A process killed (SIGKILL) with entries in flight loses none of them."""
    path = tmp_path / "b.db"
    script = textwrap.dedent(
        f"""
        import os, signal
        from edge_agent.buffer import Buffer, StreamPolicy
        buf = Buffer({str(path)!r}, max_bytes=10_000, max_age_s=3600.0,
                     streams={{"t1": StreamPolicy("telemetry")}})
        for i in range(4):
            buf.append("t1", "a", bytes([i]))
        buf.commit([buf.take(1)[0].id])
        buf.take(2)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    with open_buffer(path) as buf:
        assert buf.recovered_from is None
        assert [(e.seq, e.payload) for e in buf.take(10)] == [(i, bytes([i])) for i in (1, 2, 3)]
        assert buf.append("t1", "a", b"x") == 4


# -- corruption --------------------------------------------------------------------------


def _check_fresh_after_corruption(path: Path) -> None:
    with capture_logs() as logs, open_buffer(path) as buf:
        assert buf.recovered_from is not None
        assert buf.recovered_from.exists()
        assert buf.recovered_from.name.startswith("b.db.corrupt-")
        assert buf.pending() == 0
        assert buf.append("t1", "a", b"fresh") == 0
        assert [e.payload for e in buf.take(5)] == [b"fresh"]
    assert any(log["event"] == "buffer corrupt, moved aside" for log in logs)
    with open_buffer(path) as buf:
        assert buf.recovered_from is None
        assert buf.pending() == 1


def test_random_bytes_file_is_moved_aside(tmp_path: Path) -> None:
    """A file that is not a SQLite database is moved aside and a fresh buffer works."""
    path = tmp_path / "b.db"
    path.write_bytes(os.urandom(8192))
    _check_fresh_after_corruption(path)


def test_truncated_database_is_moved_aside(tmp_path: Path) -> None:
    """A real buffer file cut short is moved aside and a fresh buffer works."""
    path = tmp_path / "b.db"
    with open_buffer(path, max_bytes=10_000_000) as buf:
        for i in range(2000):
            buf.append("t1", "a", bytes([i % 256]) * 200)
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size // 2)
    _check_fresh_after_corruption(path)


def test_damaged_pages_are_moved_aside(tmp_path: Path) -> None:
    """A real buffer file with garbage over its pages fails quick_check and is moved aside."""
    path = tmp_path / "b.db"
    with open_buffer(path, max_bytes=10_000_000) as buf:
        for i in range(2000):
            buf.append("t1", "a", bytes([i % 256]) * 200)
    with path.open("r+b") as f:
        f.seek(4096 * 3)
        f.write(os.urandom(4096 * 20))
    _check_fresh_after_corruption(path)


# -- bounds and policy -------------------------------------------------------------------


def test_telemetry_drops_oldest_first(tmp_path: Path) -> None:
    """When full, new telemetry pushes out the oldest telemetry, counted."""
    one = entry_size("a", b"x" * 68)  # 100 bytes
    with open_buffer(tmp_path / "b.db", max_bytes=one * 5) as buf:
        for i in range(8):
            buf.append("t1", "a", bytes([i]) * 68)
        assert buf.counters["telemetry_oldest"] == 3
        assert [e.seq for e in buf.take(10)] == [3, 4, 5, 6, 7]
        assert buf.bytes_used() == one * 5


def test_events_are_kept_and_telemetry_refused(tmp_path: Path) -> None:
    """Events push telemetry out; with only events left, new telemetry is refused, not events."""
    one = entry_size("a", b"x" * 68)
    with open_buffer(tmp_path / "b.db", max_bytes=one * 4) as buf:
        buf.append("t1", "a", b"t" * 68)
        buf.append("t2", "a", b"t" * 68)
        for _ in range(4):
            buf.append("ev", "a", b"e" * 68)
        assert buf.counters["telemetry_oldest"] == 2
        assert buf.append("t1", "a", b"t" * 68) == 1  # seq used up, message refused
        assert buf.counters["telemetry_refused"] == 1
        assert buf.counters["events_full"] == 0
        assert [(e.stream, e.seq) for e in buf.take(10)] == [("ev", i) for i in range(4)]


def test_events_dropped_only_when_full_of_events(tmp_path: Path) -> None:
    """An event drops the oldest event only when the buffer holds nothing but events."""
    one = entry_size("a", b"x" * 68)
    with open_buffer(tmp_path / "b.db", max_bytes=one * 3) as buf:
        for _ in range(3):
            buf.append("ev", "a", b"e" * 68)
        assert buf.take(1)[0].seq == 0  # in flight: never dropped
        buf.append("ev", "a", b"e" * 68)
        assert buf.counters["events_full"] == 1
        assert [e.seq for e in buf.take(10)] == [2, 3]
        assert buf.pending() == 0
        assert buf.in_flight() == 3


def test_age_bound_drops_old_telemetry(tmp_path: Path) -> None:
    """Telemetry older than max_age_s is dropped and counted; events are kept."""
    clock = FakeClock()
    with open_buffer(tmp_path / "b.db", clock=clock) as buf:
        buf.append("t1", "a", b"old")
        buf.append("ev", "a", b"old event")
        clock.now += 3000
        buf.append("t1", "a", b"young")
        clock.now += 1000
        got = buf.take(10)
        assert [e.payload for e in got] == [b"old event", b"young"]
        assert buf.counters["age"] == 1


def test_live_threshold_marks_backlog_historical(tmp_path: Path) -> None:
    """With live_s set, entries older than it at take time are flagged historical."""
    clock = FakeClock()
    with open_buffer(tmp_path / "b.db", clock=clock, live_s=10.0) as buf:
        buf.append("t1", "a", b"1")
        clock.now += 30
        buf.append("t1", "a", b"2")
        assert [e.historical for e in buf.take(10)] == [True, False]


def test_high_water_warning_logged_once(tmp_path: Path) -> None:
    """The 80 % warning is logged once while high, and again after usage fell well below."""
    one = entry_size("a", b"x" * 68)
    with capture_logs() as logs, open_buffer(tmp_path / "b.db", max_bytes=one * 10) as buf:
        for _ in range(20):
            buf.append("t1", "a", b"x" * 68)
        highs = [log for log in logs if log["event"] == "buffer high"]
        assert len(highs) == 1
        assert highs[0]["log_level"] == "warning"
        buf.commit(e.id for e in buf.take(5))
        for _ in range(20):
            buf.append("t1", "a", b"x" * 68)
        assert sum(1 for log in logs if log["event"] == "buffer high") == 2
    assert sum(1 for log in logs if log["event"] == "buffer below high-water") == 1


def test_oversize_entry_is_refused(tmp_path: Path) -> None:
    """An entry larger than the whole bound is refused and counted, nothing else is dropped."""
    with open_buffer(tmp_path / "b.db", max_bytes=500) as buf:
        buf.append("t1", "a", b"keep")
        buf.append("ev", "a", b"x" * 1000)
        assert buf.counters["oversize"] == 1
        assert [e.payload for e in buf.take(5)] == [b"keep"]


def test_unknown_stream_is_rejected(tmp_path: Path) -> None:
    """Appending to a stream not configured raises KeyError."""
    with open_buffer(tmp_path / "b.db") as buf, pytest.raises(KeyError):
        buf.append("nope", "a", b"x")


def test_file_is_wal_mode(tmp_path: Path) -> None:
    """The file is left in WAL mode (readable by a plain sqlite3 connection)."""
    path = tmp_path / "b.db"
    with open_buffer(path) as buf:
        buf.append("t1", "a", b"x")
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


def test_lanes_split_live_from_backlog_in_append_order(tmp_path: Path) -> None:
    """`take(lane=...)`: live entries (at most live_s old) and the backlog, each in order."""
    clock = FakeClock()
    with open_buffer(tmp_path / "b.db", clock=clock, live_s=10.0) as buf:
        for k in range(3):
            buf.append("t1", "a", f"old{k}".encode())
        clock.now += 30
        buf.append("ev", "a", b"new-event")
        buf.append("t1", "a", b"new")
        assert buf.has_historical()
        live = buf.take(10, lane="live")
        assert [e.payload for e in live] == [b"new-event", b"new"]
        assert not any(e.historical for e in live)
        back = buf.take(2, lane="backlog")
        assert [e.payload for e in back] == [b"old0", b"old1"]
        assert all(e.historical for e in back)
        buf.commit([e.id for e in back])
        assert [e.payload for e in buf.take(10, lane="backlog")] == [b"old2"]


def test_append_many_is_one_transaction_with_per_stream_sequences(tmp_path: Path) -> None:
    """append_many numbers each stream on its own, survives a reopen, and takes the slow
    path (drop policy) when the batch does not fit."""
    path = tmp_path / "b.db"
    with open_buffer(path) as buf:
        seqs = buf.append_many(
            [NewEntry("t1", "a", b"x"), NewEntry("ev", "a", b"y"), NewEntry("t1", "a", b"z")]
        )
        assert seqs == [0, 0, 1]
        run = buf.run
    with open_buffer(path, max_bytes=400) as buf:
        assert buf.run != run, "each open draws its own run id"
        assert buf.append_many([NewEntry("t1", "a", b"w")]) == [2]
        big = [NewEntry("t1", "a", b"p" * 100) for _ in range(3)]
        buf.append_many(big)  # does not fit: oldest telemetry makes room
        assert buf.counters["telemetry_oldest"] > 0
        kept = buf.take(100)
        assert b"y" in [e.payload for e in kept], "the event is never dropped for telemetry"
        assert {e.run for e in kept} == {run, buf.run}


def test_live_lane_sees_entries_again_when_the_clock_steps_back(tmp_path: Path) -> None:
    """The live lane skips a backlog it has scanned once; an entry that turned old is live
    again after the wall clock stepped back, and a released live entry is handed out again
    before newer ones."""
    clock = FakeClock()
    with open_buffer(tmp_path / "b.db", clock=clock, live_s=10.0) as buf:
        buf.append("t1", "a", b"first")
        clock.now += 30
        assert buf.take(5, lane="live") == []  # old now: the lane scans past it
        clock.now -= 25  # an NTP step back: 5 s old, live again
        assert [e.payload for e in buf.take(5, lane="live")] == [b"first"]
        for k in range(3):
            buf.append("t1", "a", f"n{k}".encode())
        taken = buf.take(2, lane="live")
        assert [e.payload for e in taken] == [b"n0", b"n1"]
        buf.release([taken[0].id])
        assert [e.payload for e in buf.take(5, lane="live")] == [b"n0", b"n2"]
        assert buf.take(5, lane="backlog") == []


def test_commit_deletes_runs_and_ignores_ids_not_in_flight(tmp_path: Path) -> None:
    """Committed ids in several runs are deleted, bytes and counts follow; ids never taken
    (or already committed) are ignored, and a reopen sees exactly what is left."""
    path = tmp_path / "b.db"
    with open_buffer(path, max_bytes=100_000) as buf:
        for i in range(10):
            buf.append("t1", "a", bytes([i]) * 10)
        taken = buf.take(8)
        done = [taken[k].id for k in (0, 1, 2, 5, 7)]
        untouched = buf.bytes_used()
        buf.commit([*done, 10_000])
        buf.commit(done)  # a second commit of the same ids changes nothing
        assert buf.bytes_used() == untouched - 5 * entry_size("a", b"x" * 10)
        assert buf.pending() == 2 and buf.in_flight() == 3
        buf.release(e.id for e in taken)
    with open_buffer(path, max_bytes=100_000) as buf:
        assert [e.seq for e in buf.take(10)] == [3, 4, 6, 8, 9]
        assert buf.bytes_used() == 5 * entry_size("a", b"x" * 10)
