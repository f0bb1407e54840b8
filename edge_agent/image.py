"""The process image: the latest sample of every tag, as arrays indexed by tag number.

Like a PLC's I/O image, it decouples acquisition (samples arrive whenever the PLCs send them)
from the tick (which reads one consistent snapshot). It also holds, per tag, the last GOOD value
and its time, so a BAD sample never reaches the Digital Original: the model keeps using the
last good value and the comparison marks that tag's prediction as not comparable.

Range checks happen here, on the way in: a finite value outside the tag's configured range
becomes BAD with reason "range". Every BAD sample is counted by reason. A text tag (a sample
with `text`, e.g. a Modbus string) keeps its text beside a NaN value and has no range.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

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
        self.text: list[str | None] = [None] * n  # text tags (e.g. a Modbus string): value NaN
        self.has_text = False
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
                self.text[i] = s.text  # no range for text; NaN is its value by contract
                self.has_text = True
            elif q != Quality.BAD and not (self.lo[i] <= v <= self.hi[i]):
                # NaN fails the comparison too, so a driver that forgot to mark it is caught here.
                q, reason = Quality.BAD, ("range" if math.isfinite(v) else "nan")
            self.value[i] = v
            self.quality[i] = q
            self.source_ts[i] = s.source_ts
            self.recv_ts[i] = s.recv_ts
            self.reason[i] = reason
            if q == Quality.BAD:
                self.bad_counts[reason or "bad"] += 1
            else:
                self.good_value[i] = v
                self.good_ts[i] = s.source_ts
            self.updates += 1

    def good_mask(self) -> npt.NDArray[np.bool_]:
        """True where the latest sample is usable (GOOD or UNCERTAIN)."""
        mask: npt.NDArray[np.bool_] = self.quality != int(Quality.BAD)
        return mask
