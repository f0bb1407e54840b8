"""Benchmark metrics for binary anomaly predictions: outlier F1/FAR/MAR and NAB-style scores.

Written from the formulas of the SKAB protocol (not from any benchmark's code). Owns the
arithmetic only; reading files and running detectors happen elsewhere.

Outlier task, one row = one sample, over all rows given (the caller concatenates test parts):

    F1 = TP / (TP + (FP + FN) / 2),  FAR = 100 * FP / (FP + TN),  MAR = 100 * FN / (FN + TP)

An empty denominator gives NaN (no normal row: FAR undefined; no anomalous row: MAR undefined;
F1 is NaN only when there is nothing to find and nothing was predicted).

Changepoint task (NAB-style), per file, then summed over files. The rules, as implemented:

- True changepoints: rows whose `changepoint` label is 1. Their times are the rows' timestamps.
- Predicted changepoints ("detections"): rows where the binary prediction differs from the
  previous row's, in both directions (raise 0->1 and clear 1->0). The first row of a series
  has no predecessor and is never a detection (a series that starts in alarm does not detect
  anything at its first row).
- Window of a true changepoint at time c: `[c, c + W]` seconds (W = 60 s), both ends included,
  to the right of c only. When the next true changepoint c' falls inside it, the window is cut
  to `[c, c')`: a detection at or after c' belongs to the later changepoint (windows never
  overlap, so no detection counts twice).
- Only the first detection inside a window counts: it is a true positive with delay
  `d = t - c`; later detections inside the same window are ignored (neither TP nor FP).
- A detection outside every window is a false positive, each scoring `A_fp` (no position
  dependence).
- A window without a detection is a missed changepoint, scoring `A_fn`.
- TP score: a sigmoid from `A_tp` at the window start to `A_fp` at `d = W` (the full window
  length, also for a cut window, so the score depends on the delay alone):

      s(d) = A_fp + (A_tp - A_fp) * sigma(d / W),
      sigma(r) = (1 - tanh(K * (2 r - 1)) / tanh(K)) / 2,  K = 2.5

  sigma(0) = 1, sigma(1/2) = 1/2, sigma(1) = 0; K = 2.5 is the logistic slope of 5 per half
  window that NAB's scaled sigmoid uses.
- Profiles (A_tp, A_fp, A_fn): Standard (1, -0.11, -1), LowFP (1, -0.22, -1),
  LowFN (1, -0.11, -2).
- Normalisation: `100 * (S - S_null) / (S_perfect - S_null)` with S the summed raw score,
  S_null the score of the null detector that never alarms (every changepoint missed:
  `n * A_fn`), S_perfect the score of a detector that fires exactly at every true changepoint
  and nowhere else (`n * A_tp`). 0 = as good as never alarming, 100 = perfect; negative when
  false positives cost more than the detections earn. NaN when there is no true changepoint.
- Mean detection delay: the mean of `d` over true positives, in seconds (NaN if none).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

WINDOW_S = 60.0
SIGMOID_K = 2.5


@dataclass(frozen=True)
class Profile:
    """NAB cost profile: the score of a true positive at the window start, of a false positive
    and of a missed changepoint."""

    name: str
    a_tp: float
    a_fp: float
    a_fn: float


STANDARD = Profile("standard", 1.0, -0.11, -1.0)
LOW_FP = Profile("lowfp", 1.0, -0.22, -1.0)
LOW_FN = Profile("lowfn", 1.0, -0.11, -2.0)
PROFILES: tuple[Profile, ...] = (STANDARD, LOW_FP, LOW_FN)


@dataclass(frozen=True)
class OutlierCounts:
    """Row counts of the outlier task; add them across files before computing the rates."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: OutlierCounts) -> OutlierCounts:
        return OutlierCounts(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn
        )

    @property
    def f1(self) -> float:
        den = self.tp + (self.fp + self.fn) / 2
        return self.tp / den if den > 0 else math.nan

    @property
    def far(self) -> float:
        den = self.fp + self.tn
        return 100.0 * self.fp / den if den > 0 else math.nan

    @property
    def mar(self) -> float:
        den = self.fn + self.tp
        return 100.0 * self.fn / den if den > 0 else math.nan


def outlier_counts(truth: npt.ArrayLike, predicted: npt.ArrayLike) -> OutlierCounts:
    """Confusion counts of 0/1 labels and 0/1 predictions of equal length."""
    y, p = _binary(truth, "truth"), _binary(predicted, "predicted")
    if y.shape != p.shape:
        raise ValueError(f"truth has {y.size} rows, predicted {p.size}")
    return OutlierCounts(
        tp=int(np.sum(y & p)),
        fp=int(np.sum(~y & p)),
        fn=int(np.sum(y & ~p)),
        tn=int(np.sum(~y & ~p)),
    )


@dataclass(frozen=True)
class ChangepointResult:
    """One file's (or a sum of files') changepoint outcome: detection delays of the true
    positives (NaN for a miss, one entry per true changepoint) and the false positives."""

    delays_s: tuple[float, ...] = ()
    false_positives: int = 0
    window_s: float = WINDOW_S

    def __add__(self, other: ChangepointResult) -> ChangepointResult:
        if other.window_s != self.window_s:
            raise ValueError("cannot add changepoint results with different windows")
        return ChangepointResult(
            self.delays_s + other.delays_s,
            self.false_positives + other.false_positives,
            self.window_s,
        )

    @property
    def n_changepoints(self) -> int:
        return len(self.delays_s)

    @property
    def missed(self) -> int:
        return sum(1 for d in self.delays_s if math.isnan(d))

    @property
    def detected(self) -> int:
        return self.n_changepoints - self.missed

    @property
    def mean_delay_s(self) -> float:
        hits = [d for d in self.delays_s if not math.isnan(d)]
        return float(np.mean(hits)) if hits else math.nan

    def raw_score(self, profile: Profile) -> float:
        """S: TP scores plus `A_fp` per false positive plus `A_fn` per miss."""
        s = self.false_positives * profile.a_fp
        for d in self.delays_s:
            s += profile.a_fn if math.isnan(d) else tp_score(d, self.window_s, profile)
        return s

    def score(self, profile: Profile) -> float:
        """Normalised score `100 * (S - S_null) / (S_perfect - S_null)`; NaN without any
        true changepoint."""
        n = self.n_changepoints
        if n == 0:
            return math.nan
        s_null, s_perfect = n * profile.a_fn, n * profile.a_tp
        return 100.0 * (self.raw_score(profile) - s_null) / (s_perfect - s_null)


def sigmoid(r: float) -> float:
    """1 at r = 0, 1/2 at r = 1/2, 0 at r = 1 (r: delay as a fraction of the window)."""
    return float((1.0 - math.tanh(SIGMOID_K * (2.0 * r - 1.0)) / math.tanh(SIGMOID_K)) / 2.0)


def tp_score(delay_s: float, window_s: float, profile: Profile) -> float:
    """Score of a true positive `delay_s` after its changepoint (0 <= delay_s <= window_s)."""
    return profile.a_fp + (profile.a_tp - profile.a_fp) * sigmoid(delay_s / window_s)


def detections(predicted: npt.ArrayLike) -> npt.NDArray[np.intp]:
    """Row indices where the binary prediction changes from the previous row (both ways)."""
    p = _binary(predicted, "predicted")
    rows: npt.NDArray[np.intp] = np.flatnonzero(p[1:] != p[:-1]) + 1
    return rows


def changepoint_result(
    ts: npt.ArrayLike,
    changepoint: npt.ArrayLike,
    predicted: npt.ArrayLike,
    *,
    window_s: float = WINDOW_S,
) -> ChangepointResult:
    """Score one series: timestamps (s, increasing), true changepoint labels, predictions."""
    t = np.asarray(ts, dtype=np.float64)
    cp = _binary(changepoint, "changepoint")
    if not (t.shape == cp.shape == np.shape(predicted)) or t.ndim != 1:
        raise ValueError("ts, changepoint and predicted must be 1-D of equal length")
    if t.size > 1 and not np.all(np.diff(t) > 0):
        raise ValueError("ts must be strictly increasing")
    if not window_s > 0:
        raise ValueError(f"window_s must be positive, got {window_s}")
    starts = t[np.flatnonzero(cp)]
    ends = starts + window_s
    ends_open = np.zeros(starts.size, dtype=bool)  # True: end excluded (cut by the next cp)
    if starts.size > 1:
        cut = starts[1:] <= ends[:-1]
        ends[:-1] = np.where(cut, starts[1:], ends[:-1])
        ends_open[:-1] = cut
    delays = [math.nan] * starts.size
    false_positives = 0
    for when in t[detections(predicted)]:
        k = int(np.searchsorted(starts, when, side="right")) - 1
        inside = k >= 0 and (when < ends[k] or (when == ends[k] and not ends_open[k]))
        if not inside:
            false_positives += 1
        elif math.isnan(delays[k]):
            delays[k] = float(when - starts[k])
    return ChangepointResult(tuple(delays), false_positives, window_s)


def total(results: Iterable[ChangepointResult]) -> ChangepointResult:
    """Sum of per-file results (the benchmark scores the sum, then normalises once)."""
    items = list(results)
    if not items:
        return ChangepointResult()
    out = items[0]
    for r in items[1:]:
        out = out + r
    return out


def summary(counts: OutlierCounts, cps: ChangepointResult) -> dict[str, float | int | None]:
    """The benchmark's keys: f1, far, mar, nab_standard, nab_lowfp, nab_lowfn,
    missed_changepoints, false_positives, mean_delay_s (NaN becomes None, JSON null)."""
    values: dict[str, float | int] = {
        "f1": counts.f1,
        "far": counts.far,
        "mar": counts.mar,
        "nab_standard": cps.score(STANDARD),
        "nab_lowfp": cps.score(LOW_FP),
        "nab_lowfn": cps.score(LOW_FN),
        "missed_changepoints": cps.missed,
        "changepoints": cps.n_changepoints,
        "false_positives": cps.false_positives,
        "mean_delay_s": cps.mean_delay_s,
        "rows": counts.tp + counts.fp + counts.fn + counts.tn,
    }
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()}


def _binary(values: npt.ArrayLike, what: str) -> npt.NDArray[np.bool_]:
    a = np.asarray(values)
    if a.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {a.shape}")
    if a.dtype != np.bool_ and not np.all((a == 0) | (a == 1)):
        raise ValueError(f"{what} must hold only 0 and 1")
    out: npt.NDArray[np.bool_] = a.astype(bool)
    return out
