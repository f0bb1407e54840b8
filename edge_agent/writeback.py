"""Writing the agent's findings back to the plant floor: `[[writeback]]` targets.

This module owns what is written where and when: each target is one writable PLC tag (declared
`writable = true` on its driver; the config loader refuses any other) fed by one source:

    alarm_word   bit i set while tags[i] has an alarm (anomaly or quality); default tags: the
                 model's outputs in `[model.outputs]` order (all tags without a model)
    alarm_count  how many of `tags` (default: all) have an alarm
    health       2 (fault) while any of `tags` (default: all) has an anomaly alarm, else 1
                 (degraded) while any has a quality alarm (a PLC gone, BAD values), else 0 (ok)
    heartbeat    a counter 1, 2, ... 65535, 0, 1, ... written every `min_interval_s`

An anomaly alarm is a residual alarm on the tag, or the sensor-window detector's alarm
(`[detector] kind = "sensor"`), which counts on the one tag its events name
(`Agent.anomaly_states`).

The tick calls `observe` (pure CPU, no awaits); it computes each source from the alarm state and
leaves the value in the target's one-value slot when it differs from what the PLC holds (or
`refresh_s` passed since the last good write). One task per target (`run`) writes the slot's
latest value, at most once per `min_interval_s`: a value held back by that limit is counted
`rate_limited`, and a newer one replaces it (only the latest matters on an HMI). A slow or
dead PLC therefore stalls only its own target's task, never the tick nor the other targets.

Each write goes through the driver's checked write (old value read, one write, read back,
never retried blindly) and is counted: `ok`, `mismatch` (read back differs), `failed` (refused,
rejected, unknown outcome, link down). A failed value is tried again after `min_interval_s` as a
fresh checked write. Good writes are logged with old and new value (heartbeats at debug level);
a failing target is logged once when it starts failing and once when it recovers. Nothing here
raises into the agent: a broken write path must not take acquisition down with it.

It does not own the drivers' links (the acquisition loops do); a target's first write waits
until its driver has connected once, so a start does not count a failure per target.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import structlog

from drivers.base import DriverError, Writable, WriteRefusedError, WriteResult
from edge_agent.config import Config, ConfigError

log = structlog.get_logger(__name__)

HEARTBEAT_MODULO = 65536
"""The heartbeat wraps here, so it fits a 16-bit register or a UInt16 node."""
LINK_POLL_S = 0.1
MAX_WORD_BITS = 32


@dataclass(frozen=True, slots=True)
class Target:
    """One `[[writeback]]` entry, with its alarm tags resolved (empty for a heartbeat)."""

    driver: str
    tag: str
    source: str
    tags: tuple[str, ...] = ()
    min_interval_s: float = 1.0
    refresh_s: float = 60.0


@dataclass
class WritebackCounts:
    """Counters of every target's writes, kept with the agent's other counters."""

    ok: int = 0
    mismatch: int = 0
    failed: int = 0
    rate_limited: int = 0


@dataclass(eq=False)
class _Slot:
    target: Target
    writer: Writable
    pos: npt.NDArray[np.intp]
    weights: npt.NDArray[np.float64]
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    pending: float | None = None  # the value waiting to be written (latest wins)
    confirmed: float | None = None  # what the PLC holds, as far as we know
    attempted: float | None = None  # the value of the last write started
    last_attempt: float | None = None  # monotonic start of the last write
    last_ok: float | None = None
    busy: bool = False
    streak: int = 0  # failed (or mismatched) writes in a row


class Writeback:
    """The targets over `names` (the process image's tag order), written through `writers`.

    `link_up(driver)` says whether a driver's link is up (the acquisition loop's view); a
    target's first write waits for it. None: write at once.
    """

    def __init__(
        self,
        targets: Sequence[Target],
        writers: Mapping[str, Writable],
        names: Sequence[str],
        *,
        link_up: Callable[[str], bool] | None = None,
    ) -> None:
        index = {n: i for i, n in enumerate(names)}
        self.counts = WritebackCounts()
        self._link_up = link_up
        self._slots = [
            _Slot(
                t,
                writers[t.driver],
                np.array([index[n] for n in t.tags], dtype=np.intp),
                np.array([2.0**i for i in range(len(t.tags))]),
            )
            for t in targets
        ]

    @property
    def targets(self) -> list[Target]:
        """The targets, in config order."""
        return [s.target for s in self._slots]

    def observe(self, anomaly: npt.NDArray[np.bool_], quality: npt.NDArray[np.bool_]) -> None:
        """Give every target this tick's alarm states (per tag, in `names` order)."""
        now = time.monotonic()
        for slot in self._slots:
            t = slot.target
            if t.source == "heartbeat":
                if slot.busy or slot.pending is not None:
                    continue
                if slot.last_attempt is None or now - slot.last_attempt >= t.min_interval_s:
                    beat = 0 if slot.attempted is None else int(slot.attempted)
                    slot.pending = float((beat + 1) % HEARTBEAT_MODULO)
                    slot.wake.set()
                continue
            value = self._value(slot, anomaly, quality)
            since_ok = now - slot.last_ok if slot.last_ok is not None else -1.0
            refresh = 0 < t.refresh_s <= since_ok
            if value == slot.confirmed and not refresh:
                slot.pending = None  # back to what the PLC holds: a queued value is obsolete
                continue
            if value == slot.pending or (slot.busy and value == slot.attempted):
                continue
            limited = slot.busy or (
                slot.last_attempt is not None and now - slot.last_attempt < t.min_interval_s
            )
            if limited and value != slot.attempted:
                self.counts.rate_limited += 1
            slot.pending = value
            slot.wake.set()

    @staticmethod
    def _value(
        slot: _Slot, anomaly: npt.NDArray[np.bool_], quality: npt.NDArray[np.bool_]
    ) -> float:
        pos, source = slot.pos, slot.target.source
        if source == "alarm_word":
            return float((anomaly[pos] | quality[pos]) @ slot.weights)
        if source == "alarm_count":
            return float(np.count_nonzero(anomaly[pos] | quality[pos]))
        if anomaly[pos].any():
            return 2.0
        return 1.0 if quality[pos].any() else 0.0

    async def run(self) -> None:
        """Write what `observe` asks for, one task per target, until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for slot in self._slots:
                t = slot.target
                tg.create_task(self._worker(slot), name=f"writeback:{t.driver}/{t.tag}")

    async def _worker(self, slot: _Slot) -> None:
        link_up = self._link_up
        if link_up is not None:
            while not link_up(slot.target.driver):  # noqa: ASYNC110  # no event to wait on
                await asyncio.sleep(LINK_POLL_S)
        while True:
            await slot.wake.wait()
            slot.wake.clear()
            if slot.last_attempt is not None:
                wait = slot.last_attempt + slot.target.min_interval_s - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            value = slot.pending
            if value is None:
                continue
            slot.pending = None
            await self._write(slot, value)

    async def _write(self, slot: _Slot, value: float) -> None:
        t = slot.target
        slot.busy, slot.attempted, slot.last_attempt = True, value, time.monotonic()
        result: WriteResult | None = None
        try:
            result = await slot.writer.write(t.tag, value)
        except WriteRefusedError as exc:
            self._failed(slot, "refused", str(exc))
        except DriverError as exc:
            self._failed(slot, "not_sent", str(exc) or type(exc).__name__)
        except Exception as exc:  # a broken write path must not end the agent
            self._failed(slot, "error", repr(exc))
        finally:
            slot.busy = False
        if result is not None:
            self._account(slot, result)

    def _account(self, slot: _Slot, r: WriteResult) -> None:
        t = slot.target
        bound = log.bind(driver=t.driver, tag=t.tag, source=t.source)
        if r.outcome == "written":
            self.counts.ok += 1
            slot.confirmed = r.new if isinstance(r.new, float) else None
            slot.last_ok = time.monotonic()
            if slot.streak:
                bound.info("plc write ok again", failures=slot.streak)
                slot.streak = 0
            level = bound.debug if t.source == "heartbeat" else bound.info
            level("plc write", old=r.old, new=r.new)
            return
        if r.outcome == "mismatch":
            self.counts.mismatch += 1
            slot.confirmed = r.new if isinstance(r.new, float) else None
            if not slot.streak:
                bound.warning("plc write mismatch", requested=r.requested, old=r.old, new=r.new)
            slot.streak += 1
            return
        if r.outcome in ("rejected", "not_sent") and isinstance(r.old, float):
            slot.confirmed = r.old
        elif r.outcome in ("unknown", "unverified"):
            slot.confirmed = None  # it may or may not have landed
        self._failed(slot, r.outcome, r.reason, old=r.old)

    def _failed(self, slot: _Slot, outcome: str, reason: str, old: object = None) -> None:
        self.counts.failed += 1
        if not slot.streak:
            t = slot.target
            log.warning(
                "plc write failed",
                driver=t.driver,
                tag=t.tag,
                source=t.source,
                outcome=outcome,
                reason=reason,
                old=old,
                requested=slot.attempted,
            )
        slot.streak += 1


def build_writeback(
    cfg: Config,
    cfg_path: Path,
    drivers: Sequence[object],
    names: Sequence[str],
    outputs: Sequence[str],
    *,
    link_up: Callable[[str], bool] | None = None,
) -> Writeback | None:
    """The `[[writeback]]` targets of a validated config (None without any); `ConfigError` for
    what only shows once the drivers and the model are built."""
    if not cfg.writeback:
        return None
    writers = {d.name: d for d in drivers if isinstance(d, Writable)}
    targets, problems = [], []
    for k, w in enumerate(cfg.writeback):
        if w.driver not in writers:
            problems.append(f"writeback[{k}].driver: driver {w.driver!r} cannot write")
        tags = tuple(w.tags) if w.tags is not None else default_tags(w.source, names, outputs)
        if w.source == "alarm_word" and len(tags) > MAX_WORD_BITS:
            problems.append(
                f"writeback[{k}].tags: the default ({len(tags)} tags) does not fit a "
                f"{MAX_WORD_BITS}-bit alarm word; list the tags (bit i = tags[i])"
            )
        targets.append(Target(w.driver, w.tag, w.source, tags, w.min_interval_s, w.refresh_s))
    if problems:
        raise ConfigError(cfg_path, problems)
    return Writeback(targets, writers, names, link_up=link_up)


def default_tags(source: str, names: Sequence[str], outputs: Sequence[str]) -> tuple[str, ...]:
    """The tags an alarm source looks at when its entry lists none (see the module docstring)."""
    if source == "heartbeat":
        return ()
    if source == "alarm_word" and outputs:
        return tuple(outputs)
    return tuple(names)
