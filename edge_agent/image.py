"""The process image: the latest sample of every tag, as arrays indexed by tag number.

Like a PLC's I/O image, it decouples acquisition (samples arrive whenever the PLCs send them)
from the tick (which reads one consistent snapshot). It also holds, per tag, the last GOOD value
and its time, so a BAD sample never reaches the Digital Original: the model keeps using the
last good value and the comparison marks that tag's prediction as not comparable.

Range checks happen here, on the way in: a finite value outside the tag's configured range
becomes BAD with reason "range". Every BAD sample is counted by reason. A text tag (a sample
with `text`, e.g. a Modbus string) keeps its text beside a NaN value and has no range.

Two ways in: `update(samples)` takes `Sample` objects from any driver; `update_arrays` takes a
batch as columns (`drivers.arrays.SampleArrays`, what the Modbus driver decodes into) with the
same rules, without a Python object per value.

The image is also where acquisition and the tick meet in time: the tick loop announces its
next tick (`next_tick`, `tick_period`, event-loop clock), so a poller can time its reads to
land just before the snapshot that uses them (`edge_agent.acquire`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from drivers.base import Quality, Sample


class ProcessImage:
    """Latest value, quality and timestamps of every tag; last good value kept apart."""

    def __init__(self, names: Sequence[str], ranges: Sequence[tuple[float, float] | None]) -> None:
        n = len(names)
        self.names: tuple[str, ...] = tuple(names)
        self.index: dict[str, int] = {name: i for i, name in enumerate(names)}
        self.lo = np.array([r[0] if r else -math.inf for r in ranges], dtype=np.float64)
        self.hi = np.array([r[1] if r else math.inf for r in ranges], dtype=np.float64)
        self.value: npt.NDArray[np.float64] = np.full(n, np.nan)
        self.quality: npt.NDArray[np.int8] = np.full(n, int(Quality.BAD), dtype=np.int8)
        self.source_ts: npt.NDArray[np.float64] = np.zeros(n)
        self.recv_ts: npt.NDArray[np.float64] = np.zeros(n)
        self.good_value: npt.NDArray[np.float64] = np.full(n, np.nan)
        self.good_ts: npt.NDArray[np.float64] = np.zeros(n)
        self.reason: list[str] = ["init"] * n
        # reasoned[i] is reason[i] != "": lets the array path and the reporter skip the list.
        self.reasoned: npt.NDArray[np.bool_] = np.ones(n, dtype=np.bool_)
        self.text: list[str | None] = [None] * n  # text tags (e.g. a Modbus string): value NaN
        self.text_idx: list[int] = []  # the tags that ever had a text, ascending
        self.has_text = False
        self.next_tick: float | None = None  # event-loop time of the next tick, when known
        self._last_row = np.zeros(n + 1, dtype=np.intp)  # scratch; the extra slot takes -1
        self.tick_period = 0.0
        self.updates = 0
        self.bad_counts: Counter[str] = Counter()
        self.unknown_tags = 0

    def update(self, samples: Iterable[Sample]) -> None:
        """Store a batch of samples; unknown tag names are counted and ignored."""
        index = self.index
        for s in samples:
            i = index.get(s.tag)
            if i is None:
                self.unknown_tags += 1
                continue
            q = s.quality
            reason = s.reason
            v = s.value
            if s.text is not None:
                self._set_text(i, s.text)  # no range for text; NaN is its value by contract
            elif q != Quality.BAD and not (self.lo[i] <= v <= self.hi[i]):
                # NaN fails the comparison too, so a driver that forgot to mark it is caught here.
                q, reason = Quality.BAD, ("range" if math.isfinite(v) else "nan")
            self.value[i] = v
            self.quality[i] = q
            self.source_ts[i] = s.source_ts
            self.recv_ts[i] = s.recv_ts
            self.reason[i] = reason
            self.reasoned[i] = reason != ""
            if q == Quality.BAD:
                self.bad_counts[reason or "bad"] += 1
            else:
                self.good_value[i] = v
                self.good_ts[i] = s.source_ts
            self.updates += 1

    def positions(self, tags: Sequence[str]) -> npt.NDArray[np.intp]:
        """The image index of each of `tags` (-1 for a name the image does not know), for
        `update_arrays`; computed once per driver."""
        return np.array([self.index.get(t, -1) for t in tags], dtype=np.intp)

    def update_arrays(
        self,
        indices: npt.NDArray[np.intp],
        values: npt.NDArray[np.float64],
        qualities: npt.NDArray[np.int8],
        source_ts: npt.NDArray[np.float64] | float,
        recv_ts: npt.NDArray[np.float64] | float,
        *,
        reasons: Mapping[int, str] | None = None,
        texts: Mapping[int, str] | None = None,
    ) -> None:
        """Store a batch given as columns: row k is a sample of tag `indices[k]` (-1: unknown,
        counted and ignored); `reasons` and `texts` map a row to its reason or text, for the
        rows that have one. Same rules as `update`, row by row: of two rows of one tag the
        later one stays, and both are counted."""
        idx = np.asarray(indices, dtype=np.intp)
        v = np.asarray(values, dtype=np.float64)
        q = np.asarray(qualities, dtype=np.int8)
        src = np.broadcast_to(np.asarray(source_ts, dtype=np.float64), idx.shape)
        recv = np.broadcast_to(np.asarray(recv_ts, dtype=np.float64), idx.shape)
        reasons = reasons or {}
        texts = texts or {}
        known = idx >= 0
        bad = q == int(Quality.BAD)
        # NaN fails both comparisons, so a driver that forgot to mark it is caught here.
        out = known & ~bad & ~((self.lo[idx] <= v) & (v <= self.hi[idx]))
        for r, text in texts.items():
            out[r] = False  # no range for text
            if known[r]:
                self._set_text(int(idx[r]), text)
        if out.any():
            hit = np.flatnonzero(out)
            q = q.copy()
            q[hit] = int(Quality.BAD)
            bad = bad | out
            reasons = dict(reasons)
            for r, f in zip(hit.tolist(), np.isfinite(v[hit]).tolist(), strict=True):
                reasons[r] = "range" if f else "nan"
        bad &= known
        if bad.any():
            for r in np.flatnonzero(bad).tolist():
                self.bad_counts[reasons.get(r) or "bad"] += 1
        self.updates += int(known.sum())
        rows = np.arange(len(idx))
        self._last_row[idx] = rows  # a later row of one tag overwrites an earlier one
        keep = known & (self._last_row[idx] == rows)
        if not keep.all():
            self.unknown_tags += int((~known).sum())
            new_row = np.cumsum(keep) - 1
            reasons = {int(new_row[r]): x for r, x in reasons.items() if keep[r]}
            idx, v, q, bad = idx[keep], v[keep], q[keep], bad[keep]
            src, recv = src[keep], recv[keep]
        self.value[idx] = v
        self.quality[idx] = q
        self.source_ts[idx] = src
        self.recv_ts[idx] = recv
        # Reasons: the few rows that carry one, and the tags whose old reason must go.
        has = np.zeros(len(idx), dtype=np.bool_)
        if reasons:
            has[np.fromiter(reasons, dtype=np.intp, count=len(reasons))] = True
        clear = idx[~has & self.reasoned[idx]]
        reason = self.reason
        for i in clear.tolist():
            reason[i] = ""
        self.reasoned[clear] = False
        for r, why in reasons.items():
            i = int(idx[r])
            reason[i] = why
            self.reasoned[i] = why != ""
        good = ~bad
        self.good_value[idx[good]] = v[good]
        self.good_ts[idx[good]] = src[good]

    def _set_text(self, i: int, text: str) -> None:
        if self.text[i] is None:
            self.text_idx.append(i)
            self.text_idx.sort()
        self.text[i] = text
        self.has_text = True

    def good_mask(self) -> npt.NDArray[np.bool_]:
        """True where the latest sample is usable (GOOD or UNCERTAIN)."""
        mask: npt.NDArray[np.bool_] = self.quality != int(Quality.BAD)
        return mask
