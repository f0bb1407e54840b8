"""A fast, explainable residual detector: whitening, then two-sided CUSUM and EWMA per output.

This module owns the sequential statistics that run beside the ONNX window detector
(`models.anomaly.detector`); it does not compute residuals (`edge_agent.compare`) nor decide
alarms (`edge_agent.alarms`). Scores follow the same convention as the ONNX detector: one per
output, 1.0 = the alarm threshold, NaN = not scored this tick.

Per output, each residual r is whitened, z = (r - mean) / std, with a mean and std that are
either fitted from normal data (`fit`) or learned online: plain running moments over the first
`warmup` samples (no score yet), then exponentially weighted with a memory of `adapt_samples`
samples, from z clipped to +-`clip_z` so a spike does not blow the scale up. The moments are
frozen while the output is in alarm, so a fault is not learned as the new normal. Then

    CUSUM   S+ <- max(0, S+ + z - k),  S- <- max(0, S- - z - k),  score = max(S+, S-) / h
    EWMA    E  <- lam z + (1 - lam) E,  score = |E| / (L sqrt(lam / (2 - lam)))

k = half the shift (in std) the CUSUM is tuned for; h and L set the false-alarm rate. With the
defaults (k = 0.5, h = 8) white noise gives an alarm onset about once per 10^4 samples per
output, and a 1-std mean shift is detected after about 16 samples. `mode` picks which score
`update` returns ("cusum", "ewma" or "max" of both); both are always computed and kept for
explanation (`s_pos`, `s_neg`, `ewma`, `cusum_score`, `ewma_score`).

A NaN or invalid residual leaves that output's state untouched and scores NaN.
"""

from __future__ import annotations

import math
from typing import Literal

import numba
import numpy as np
import numpy.typing as npt

from models.base import F64, Mask

Mode = Literal["cusum", "ewma", "max"]
_MODES: dict[str, int] = {"cusum": 0, "ewma": 1, "max": 2}


@numba.njit(cache=True)
def _run(  # noqa: PLR0917  # numba kernel: plain positional arrays and scalars
    r: F64,
    valid: Mask,
    k: float,
    h: float,
    lam: float,
    e_limit: float,
    mode: int,
    warmup: int,
    adapt_min: float,
    clip_z: float,
    min_std: F64,
    mu: F64,
    var: F64,
    n: npt.NDArray[np.int64],
    s_pos: F64,
    s_neg: F64,
    e: F64,
    c_score: F64,
    e_score: F64,
    out: F64,
) -> None:
    """Advance the state over rows of `r` (T, n_out); write scores (T, n_out) to `out`."""
    t_len, m = r.shape
    for t in range(t_len):
        for j in range(m):
            x = r[t, j]
            if not valid[t, j] or not math.isfinite(x):
                out[t, j] = np.nan
                continue
            if n[j] < warmup:
                a = 1.0 / (n[j] + 1.0)
                d = x - mu[j]
                mu[j] += a * d
                var[j] = (1.0 - a) * (var[j] + a * d * d)
                n[j] += 1
                out[t, j] = np.nan
                continue
            sd = max(math.sqrt(var[j]), min_std[j])
            z = (x - mu[j]) / sd
            s_pos[j] = max(0.0, s_pos[j] + z - k)
            s_neg[j] = max(0.0, s_neg[j] - z - k)
            e[j] = lam * z + (1.0 - lam) * e[j]
            c_score[j] = max(s_pos[j], s_neg[j]) / h
            e_score[j] = abs(e[j]) / e_limit
            if mode == 0:
                score = c_score[j]
            elif mode == 1:
                score = e_score[j]
            else:
                score = max(c_score[j], e_score[j])
            out[t, j] = score
            if score < 1.0 and adapt_min > 0.0:
                a = max(1.0 / (n[j] + 1.0), adapt_min)
                d = min(max(z, -clip_z), clip_z) * sd
                mu[j] += a * d
                var[j] = (1.0 - a) * (var[j] + a * d * d)
                n[j] += 1


class Cusum:
    """Whitened two-sided CUSUM and EWMA per output, vectorised over outputs.

    `adapt_samples=None` freezes the whitening once learned (after `fit` or the warm-up).
    `min_std` (scalar or (n_out,)) floors the std, e.g. at a sensor's resolution, so a signal
    that never moved does not turn its first step into an infinite z.
    """

    def __init__(
        self,
        n_out: int,
        *,
        k: float = 0.5,
        h: float = 8.0,
        ewma_lambda: float = 0.05,
        ewma_limit: float = 3.5,
        mode: Mode = "cusum",
        warmup: int = 100,
        adapt_samples: int | None = 2000,
        clip_z: float = 4.0,
        min_std: npt.ArrayLike = 1e-9,
    ) -> None:
        if n_out < 1:
            raise ValueError(f"n_out: must be >= 1, got {n_out}")
        if not (k >= 0 and h > 0 and 0 < ewma_lambda <= 1 and ewma_limit > 0 and clip_z > 0):
            raise ValueError("k >= 0, h > 0, 0 < ewma_lambda <= 1, ewma_limit > 0, clip_z > 0")
        if mode not in _MODES:
            raise ValueError(f"mode: one of {sorted(_MODES)}, got {mode!r}")
        if warmup < 2 or (adapt_samples is not None and adapt_samples < 1):
            raise ValueError("warmup >= 2 and adapt_samples >= 1 (or None) required")
        floor = np.broadcast_to(np.asarray(min_std, dtype=np.float64), (n_out,)).copy()
        if not (np.isfinite(floor) & (floor > 0)).all():
            raise ValueError("min_std: must be finite and > 0")
        self.n_out = n_out
        self.k = k
        self.h = h
        self.ewma_lambda = ewma_lambda
        self.ewma_limit = ewma_limit
        self.mode: Mode = mode
        self.warmup = warmup
        self.adapt_samples = adapt_samples
        self.clip_z = clip_z
        self._min_std = floor
        self._e_limit = ewma_limit * math.sqrt(ewma_lambda / (2.0 - ewma_lambda))
        self._mu = np.zeros(n_out)
        self._var = np.zeros(n_out)
        self._n = np.zeros(n_out, dtype=np.int64)
        self._s_pos = np.zeros(n_out)
        self._s_neg = np.zeros(n_out)
        self._e = np.zeros(n_out)
        self._c_score = np.zeros(n_out)
        self._e_score = np.zeros(n_out)
        self._all_valid = np.ones((1, n_out), dtype=np.bool_)

    # Read-only views of the state, for explanation and tests.
    @property
    def mean(self) -> F64:
        return self._mu.copy()

    @property
    def std(self) -> F64:
        return np.maximum(np.sqrt(self._var), self._min_std)

    @property
    def s_pos(self) -> F64:
        return self._s_pos.copy()

    @property
    def s_neg(self) -> F64:
        return self._s_neg.copy()

    @property
    def ewma(self) -> F64:
        return self._e.copy()

    @property
    def cusum_score(self) -> F64:
        """Last CUSUM score per output (S / h)."""
        return self._c_score.copy()

    @property
    def ewma_score(self) -> F64:
        """Last EWMA score per output (|E| over its control limit)."""
        return self._e_score.copy()

    @property
    def ready(self) -> Mask:
        """Outputs whose whitening is learned (fitted or past the warm-up)."""
        return self._n >= self.warmup

    def fit(self, residuals: npt.ArrayLike) -> None:
        """Set the whitening from normal-operation residuals (T, n_out); NaNs are ignored.

        An output needs at least 2 finite values; a constant one gets `min_std`.
        """
        r = np.asarray(residuals, dtype=np.float64)
        if r.ndim != 2 or r.shape[1] != self.n_out:
            raise ValueError(f"residuals: expected shape (T, {self.n_out}), got {r.shape}")
        finite = np.isfinite(r)
        count = finite.sum(axis=0)
        if (count < 2).any():
            raise ValueError("residuals: every output needs at least 2 finite values")
        x = np.where(finite, r, 0.0)
        mu = x.sum(axis=0) / count
        var = (np.where(finite, r - mu, 0.0) ** 2).sum(axis=0) / (count - 1)
        self._mu = mu
        self._var = var
        # Counted as fully learned: online adaptation continues at its slow rate.
        self._n = np.full(self.n_out, max(self.warmup, self.adapt_samples or 0), dtype=np.int64)

    def update(self, residual: npt.ArrayLike, valid: npt.ArrayLike | None = None) -> F64:
        """Score one tick of residuals (n_out,); `valid` (n_out,) bool, default all valid."""
        r = np.asarray(residual, dtype=np.float64).reshape(1, -1)
        if r.shape[1] != self.n_out:
            raise ValueError(f"residual: expected shape ({self.n_out},), got {r.shape[1:]}")
        ok = self._all_valid if valid is None else np.asarray(valid, dtype=np.bool_).reshape(1, -1)
        if ok.shape != r.shape:
            raise ValueError(f"valid: expected shape ({self.n_out},)")
        scores: F64 = self._advance(r, ok)[0]
        return scores

    def run(self, residuals: npt.ArrayLike, valid: npt.ArrayLike | None = None) -> F64:
        """Score a series (T, n_out) in one compiled call, as `update` row by row would."""
        r = np.ascontiguousarray(residuals, dtype=np.float64)
        if r.ndim != 2 or r.shape[1] != self.n_out:
            raise ValueError(f"residuals: expected shape (T, {self.n_out}), got {r.shape}")
        ok = np.ones(r.shape, dtype=np.bool_) if valid is None else np.asarray(valid, np.bool_)
        if ok.shape != r.shape:
            raise ValueError("valid: expected the shape of residuals")
        return self._advance(r, np.ascontiguousarray(ok))

    def _advance(self, r: F64, ok: Mask) -> F64:
        out = np.empty(r.shape)
        adapt_min = 0.0 if self.adapt_samples is None else 1.0 / self.adapt_samples
        _run(
            r,
            ok,
            self.k,
            self.h,
            self.ewma_lambda,
            self._e_limit,
            _MODES[self.mode],
            self.warmup,
            adapt_min,
            self.clip_z,
            self._min_std,
            self._mu,
            self._var,
            self._n,
            self._s_pos,
            self._s_neg,
            self._e,
            self._c_score,
            self._e_score,
            out,
        )
        return out

    def reset(self, *, forget_stats: bool = False) -> None:
        """Clear the CUSUM and EWMA sums (and the learned whitening if `forget_stats`)."""
        for a in (self._s_pos, self._s_neg, self._e, self._c_score, self._e_score):
            a[:] = 0.0
        if forget_stats:
            self._mu[:] = 0.0
            self._var[:] = 0.0
            self._n[:] = 0
