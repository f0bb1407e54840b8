"""The Modbus driver: one connection, several units, poll groups, typed decoding, checked writes.

This module owns what one `[[drivers]] kind = "modbus"` entry does on its connection: which
planned requests a `read` sends (poll groups that are due, units that are not backed off), how
each outcome becomes samples, and the write path. It does not own planning
(`drivers.modbus.plan`), codecs (`drivers.modbus.codec`), framing (`drivers.modbus.wire`) or the
request/response exchange (`drivers.modbus.link`). It never reconnects by itself.

Outcome per request (the reason is also counted in `errors`, see `drivers.modbus.link`):

    response with values           -> GOOD samples (NaN/inf -> BAD "nan", non-ASCII -> "decode")
    exception response             -> BAD "exception"
    short, malformed, wrong unit   -> BAD "short" / "malformed" / "unit_mismatch" / ...
    no response in time            -> BAD "timeout" for every tag of that unit; the unit is
                                      backed off (1 s doubling to 30 s) and only probed again
                                      when that expires, so other units keep their rate
    connection lost or unusable    -> ConnectError (also when every unit of a read timed out)

A dead unit is detected by its first request that times out: `timeout_s` with no retry.

Poll groups: a tag with `group` is read only when its group's interval has elapsed; the agent
calls `read` at the driver's base interval, and tags without a group are read every time. The
first `read` after `connect` reads everything.

Writes (`write`) go only to tags declared writable; the exchange is `drivers.modbus.write`.

`read_arrays` is `read` in columns (`drivers.arrays.SampleArrays`): the same requests, outcomes
and reasons, each response's decoded vector handed on as it is instead of one `Sample` per tag.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np
import structlog

from drivers.arrays import SampleArrays, empty_arrays
from drivers.base import ConfigError, ConnectError, Quality, Sample, bad_samples
from drivers.modbus import codec
from drivers.modbus.link import Link, LinkLostError, RequestTimeoutError
from drivers.modbus.plan import DEFAULT_GROUP, ModbusTag, Request, plan_requests
from drivers.modbus.wire import MAX_READ_BITS, MAX_READ_REGISTERS, FrameError, read_pdu
from drivers.modbus.write import WriteRefusedError, WriteResult, encode_for_write, write_tag

log = structlog.get_logger(__name__)

_GUARD_S = 0.5  # added to the connect timeout: TCP set-up is not a Modbus request
UNIT_BACKOFF_S = (1.0, 30.0)  # first and longest pause before a silent unit is probed again
_NO_REASON = repeat("")  # endless: zip stops at the tag names
_NO_TEXT = repeat(None)
_NO_SERVER_TS = repeat(math.nan)  # Modbus has no timestamps of its own


class _Planned:
    """A request with its prebuilt PDU and decoder."""

    __slots__ = ("decoder", "names", "pdu", "plain", "positions", "request")

    def __init__(self, request: Request) -> None:
        self.request = request
        self.names = [t.name for t in request.tags]
        self.pdu = read_pdu(request.fc, request.address, request.count)
        self.decoder = codec.BlockDecoder(
            [t.field(request.address) for t in request.tags], bit_table=request.tags[0].bits
        )
        self.plain = all(t.type != "string" for t in request.tags)
        self.positions = np.zeros(0, dtype=np.intp)  # in the driver's `tags`, set by the driver


@dataclass
class _Group:
    name: str
    interval_s: float
    planned: list[_Planned]
    next_due: float = 0.0


@dataclass
class _Unit:
    down_until: float = 0.0
    backoff_s: float = 0.0
    down_since: float | None = None


class ModbusDriver:
    """Polls `tags` from the Modbus server at `host:port` (implements `Driver`)."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        tags: Sequence[ModbusTag],
        *,
        timeout_s: float = 1.0,
        max_gap: int = 10,
        max_registers: int = MAX_READ_REGISTERS,
        max_bit_gap: int = 100,
        max_bits: int = MAX_READ_BITS,
        max_outstanding: int = 1,
        framing: str = "tcp",
        groups: Mapping[str, float] | None = None,
    ) -> None:
        if not tags:
            raise ConfigError(f"driver {name!r}: no tags")
        if timeout_s <= 0:
            raise ConfigError(f"driver {name!r}: timeout_s must be > 0")
        if framing not in ("tcp", "rtu"):
            raise ConfigError(f"driver {name!r}: framing must be 'tcp' or 'rtu'")
        if max_outstanding < 1:
            raise ConfigError(f"driver {name!r}: max_outstanding must be >= 1")
        intervals = {DEFAULT_GROUP: 0.0, **(groups or {})}
        self.name = name
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.framing = framing
        self.max_outstanding = 1 if framing == "rtu" else max_outstanding
        self._tag_names = tuple(t.name for t in tags)
        self._by_name = {t.name: t for t in tags}
        self._groups: list[_Group] = []
        try:
            for gname, interval in intervals.items():
                members = [t for t in tags if t.group == gname]
                if members:
                    plan = plan_requests(
                        members,
                        max_gap,
                        max_registers,
                        max_bit_gap=max_bit_gap,
                        max_bits=max_bits,
                    )
                    self._groups.append(_Group(gname, interval, [_Planned(r) for r in plan]))
            if unknown := {t.group for t in tags} - set(intervals):
                raise ConfigError(f"poll group(s) {sorted(unknown)} not defined")
            plan_requests(tags, max_gap, max_registers, max_bit_gap=max_bit_gap, max_bits=max_bits)
        except ConfigError as exc:
            raise ConfigError(f"driver {name!r}: {exc}") from exc
        self._units = {t.unit: _Unit() for t in tags}
        self._pos = {t.name: k for k, t in enumerate(tags)}
        for g in self._groups:
            for p in g.planned:
                p.positions = np.array([self._pos[n] for n in p.names], dtype=np.intp)
        self.errors: Counter[str] = Counter()
        self._link: Link | None = None
        self._log = log.bind(driver=name)

    @property
    def tags(self) -> Sequence[str]:
        """Tag names in configuration order."""
        return self._tag_names

    @property
    def requests(self) -> list[Request]:
        """The planned requests of a `read` that finds every group due (diagnostics, tests)."""
        return [p.request for g in self._groups for p in g.planned]

    def unit_down(self, unit: int) -> bool:
        """True while `unit` is backed off after a timeout."""
        return self._units[unit].down_since is not None

    async def connect(self) -> None:
        """Open the TCP connection; ConnectError when refused or timed out."""
        await self.aclose()
        link = Link(self.framing, self.max_outstanding, self.errors)
        try:
            await link.open(self.host, self.port, self.timeout_s + _GUARD_S)
        except (OSError, TimeoutError) as exc:
            link.close()
            raise ConnectError(f"modbus {self.host}:{self.port}: connect failed") from exc
        self._link = link
        for g in self._groups:
            g.next_due = 0.0
        for u in self._units.values():
            u.down_until, u.backoff_s = 0.0, 0.0

    def _lost(self, why: str) -> ConnectError:
        return ConnectError(f"modbus {self.host}:{self.port}: {why}")

    def _due(self) -> tuple[Link, list[_Planned]]:
        """The link and the planned requests of the groups due now (advances their times)."""
        link = self._link
        if link is None or not link.up:
            raise self._lost("not connected")
        now = time.monotonic()
        todo: list[_Planned] = []
        for g in self._groups:
            if g.next_due <= now:
                g.next_due = now + g.interval_s if g.next_due == 0.0 else g.next_due + g.interval_s
                if g.next_due <= now:  # fell behind: skip missed polls rather than burst
                    g.next_due = now + g.interval_s
                todo.extend(g.planned)
        return link, todo

    async def read(self) -> list[Sample]:
        """Read the tags of every due group once (every tag on the first call after connect)."""
        link, todo = self._due()
        if not todo:
            return []
        if link.max_outstanding == 1:
            results = [await self._read_one(link, p) for p in todo]
        else:
            results = list(await asyncio.gather(*(self._read_one(link, p) for p in todo)))
        samples: list[Sample] = []
        attempted = answered = 0
        for batch, outcome in results:
            samples.extend(batch)
            attempted += outcome != "skipped"
            answered += outcome == "answered"
        if attempted and not answered and all(u.down_since for u in self._units.values()):
            raise self._lost("no unit answers")
        return samples

    async def _read_one(self, link: Link, p: _Planned) -> tuple[list[Sample], str]:
        """Samples of one request and "answered", "timeout" or "skipped"."""
        req = p.request
        unit = self._units[req.unit]
        if unit.down_until > time.monotonic():
            return [], "skipped"
        try:
            data = await link.request(req.unit, p.pdu, self.timeout_s)
        except RequestTimeoutError:
            return self._unit_timeout(req.unit, unit, p), "timeout"
        except FrameError as exc:
            return bad_samples(p.names, exc.reason), "answered"
        except LinkLostError as exc:
            raise self._lost(str(exc)) from exc
        now = time.time()
        if unit.down_since is not None:
            self._log.info(
                "modbus unit available again",
                unit=req.unit,
                downtime_s=round(time.monotonic() - unit.down_since, 2),
            )
            unit.down_since, unit.backoff_s, unit.down_until = None, 0.0, 0.0
        values, texts = p.decoder.decode(data)
        good = Quality.GOOD
        if p.plain and bool(np.isfinite(values).all()):
            # The hot path: one GOOD sample per tag, built by C-level iteration (`_make`).
            vals = values.tolist()
            fields = zip(
                p.names,
                vals,
                repeat(good),
                repeat(now),
                repeat(now),
                _NO_REASON,
                _NO_TEXT,
                _NO_SERVER_TS,
            )
            return list(map(Sample._make, fields)), "answered"
        out = []
        for i, (n, v) in enumerate(zip(p.names, values.tolist(), strict=True)):
            if i in texts:
                text = texts[i]
                if text is None:
                    out.append(Sample(n, math.nan, Quality.BAD, now, now, "decode"))
                else:
                    out.append(Sample(n, math.nan, good, now, now, "", text))
            elif math.isfinite(v):
                out.append(Sample(n, v, good, now, now))
            else:
                out.append(Sample(n, math.nan, Quality.BAD, now, now, "nan"))
        return out, "answered"

    async def read_arrays(self) -> SampleArrays:
        """`read` as columns: rows index this driver's `tags`; same outcomes and errors."""
        link, todo = self._due()
        if not todo:
            return empty_arrays()
        if link.max_outstanding == 1:
            parts = [await self._read_one_arrays(link, p) for p in todo]
        else:
            parts = await self._read_windows(link, todo)
        attempted = answered = 0
        for _, outcome in parts:
            attempted += outcome != "skipped"
            answered += outcome == "answered"
        if attempted and not answered and all(u.down_since for u in self._units.values()):
            raise self._lost("no unit answers")
        return _concat([a for a, _ in parts if len(a.tag)])

    async def _read_one_arrays(self, link: Link, p: _Planned) -> tuple[SampleArrays, str]:
        """Columns of one request and its outcome, as `_read_one`."""
        unit = self._units[p.request.unit]
        if unit.down_until > time.monotonic():
            return empty_arrays(), "skipped"
        try:
            data = await link.request(p.request.unit, p.pdu, self.timeout_s)
        except RequestTimeoutError:
            return self._as_arrays(self._unit_timeout(p.request.unit, unit, p)), "timeout"
        except FrameError as exc:
            return self._as_arrays(bad_samples(p.names, exc.reason)), "answered"
        except LinkLostError as exc:
            raise self._lost(str(exc)) from exc
        return self._answered_arrays(p, unit, data, time.time()), "answered"

    async def _read_windows(
        self, link: Link, todo: list[_Planned]
    ) -> list[tuple[SampleArrays, str]]:
        """`_read_one_arrays` for every request of `todo`, `max_outstanding` at a time, each
        window sent in one write (`Link.request_many`). A unit that times out in a window is
        backed off once and skipped in the windows after it, as in the one-by-one read."""
        out: list[tuple[SampleArrays, str]] = []
        step = link.max_outstanding
        i = 0
        while i < len(todo):
            now_m = time.monotonic()
            window: list[_Planned] = []
            while i < len(todo) and len(window) < step:
                p = todo[i]
                i += 1
                if self._units[p.request.unit].down_until > now_m:
                    out.append((empty_arrays(), "skipped"))
                else:
                    window.append(p)
            if not window:
                continue
            try:
                got = await link.request_many(
                    [(p.request.unit, p.pdu) for p in window], self.timeout_s
                )
            except LinkLostError as exc:
                raise self._lost(str(exc)) from exc
            now = time.time()
            timed_out: set[int] = set()
            for p, r in zip(window, got, strict=True):
                uid = p.request.unit
                if isinstance(r, bytes):
                    out.append((self._answered_arrays(p, self._units[uid], r, now), "answered"))
                elif isinstance(r, FrameError):
                    out.append((self._as_arrays(bad_samples(p.names, r.reason)), "answered"))
                elif uid in timed_out:  # the unit's first timeout already marked all its tags
                    out.append((self._as_arrays(bad_samples(p.names, "timeout")), "timeout"))
                else:
                    timed_out.add(uid)
                    samples = self._unit_timeout(uid, self._units[uid], p)
                    out.append((self._as_arrays(samples), "timeout"))
        return out

    def _answered_arrays(self, p: _Planned, unit: _Unit, data: bytes, now: float) -> SampleArrays:
        """The columns of one answered request (`now`: when the answer arrived)."""
        if unit.down_since is not None:
            self._log.info(
                "modbus unit available again",
                unit=p.request.unit,
                downtime_s=round(time.monotonic() - unit.down_since, 2),
            )
            unit.down_since, unit.backoff_s, unit.down_until = None, 0.0, 0.0
        values, texts = p.decoder.decode(data)
        n = len(values)
        quality = np.zeros(n, dtype=np.int8)
        reason: dict[int, str] = {}
        text: dict[int, str] = {}
        finite = np.isfinite(values)
        if texts:
            finite[list(texts)] = True  # a text's slot is NaN by contract
            for k, t in texts.items():
                if t is None:
                    reason[k] = "decode"
                    quality[k] = Quality.BAD
                else:
                    text[k] = t
        if not finite.all():
            values = np.where(finite, values, np.nan)
            for k in np.flatnonzero(~finite).tolist():
                reason[k] = "nan"
            quality[~finite] = Quality.BAD
        stamp = np.full(n, now)
        return SampleArrays(p.positions, values, quality, stamp, stamp, reason, text)

    def _as_arrays(self, samples: list[Sample]) -> SampleArrays:
        """Samples of the rare paths (timeouts, malformed frames) as columns."""
        pos, n = self._pos, len(samples)
        return SampleArrays(
            np.fromiter((pos[s.tag] for s in samples), dtype=np.intp, count=n),
            np.fromiter((s.value for s in samples), dtype=np.float64, count=n),
            np.fromiter((s.quality for s in samples), dtype=np.int8, count=n),
            np.fromiter((s.source_ts for s in samples), dtype=np.float64, count=n),
            np.fromiter((s.recv_ts for s in samples), dtype=np.float64, count=n),
            {k: s.reason for k, s in enumerate(samples) if s.reason},
            {k: s.text for k, s in enumerate(samples) if s.text is not None},
        )

    def _unit_timeout(self, unit_id: int, unit: _Unit, p: _Planned) -> list[Sample]:
        """Back the unit off; its tags become BAD "timeout" (this request's, and on the first
        timeout every tag of the unit, so a dead unit shows at once)."""
        first = unit.down_since is None
        unit.backoff_s = UNIT_BACKOFF_S[0] if first else min(UNIT_BACKOFF_S[1], unit.backoff_s * 2)
        unit.down_until = time.monotonic() + unit.backoff_s
        if not first:
            return bad_samples(p.names, "timeout")
        unit.down_since = time.monotonic()
        self._log.warning("modbus unit unavailable", unit=unit_id, timeout_s=self.timeout_s)
        names = [t.name for t in self._by_name.values() if t.unit == unit_id]
        return bad_samples(names, "timeout")

    async def aclose(self) -> None:
        """Close the connection. Idempotent; never raises."""
        link, self._link = self._link, None
        if link is not None:
            link.close()

    # writes -------------------------------------------------------------------------------

    async def write(self, name: str, value: float | str) -> WriteResult:
        """Write `value` to writable tag `name`, read it back and compare (see
        `drivers.modbus.write.write_tag`). Raises WriteRefusedError (nothing sent) for unknown
        or read-only tags and values the type cannot hold, ConnectError when not connected."""
        tag = self._by_name.get(name)
        if tag is None:
            raise WriteRefusedError(f"driver {self.name!r}: no tag {name!r}")
        if not tag.writable:
            raise WriteRefusedError(
                f"driver {self.name!r}: tag {name!r} is read-only; declare writable = true in "
                "its [[drivers.tags]] entry to allow writes"
            )
        words = encode_for_write(tag, value)
        link = self._link
        if link is None or not link.up:
            raise self._lost("not connected")
        result = await write_tag(link, tag, value, words, self.timeout_s)
        if result.outcome == "unknown":
            self._log.warning("modbus write outcome unknown", tag=name, reason=result.reason)
        return result


def _concat(parts: list[SampleArrays]) -> SampleArrays:
    """One batch of several requests' columns (rows renumbered for `reason` and `text`)."""
    if not parts:
        return empty_arrays()
    if len(parts) == 1:
        return parts[0]
    reason: dict[int, str] = {}
    text: dict[int, str] = {}
    base = 0
    for a in parts:
        if a.reason:
            reason.update({base + k: r for k, r in a.reason.items()})
        if a.text:
            text.update({base + k: t for k, t in a.text.items()})
        base += len(a.tag)
    return SampleArrays(
        np.concatenate([a.tag for a in parts]),
        np.concatenate([a.value for a in parts]),
        np.concatenate([a.quality for a in parts]),
        np.concatenate([a.source_ts for a in parts]),
        np.concatenate([a.recv_ts for a in parts]),
        reason,
        text,
    )
