"""Online calibration: which parameter variant of the Digital Original behaves like the plant.

This module owns the posterior weights of an ensemble of model variants (`Calibrator`). It takes
arrays (the ensemble's predictions, one row per variant) and knows nothing of how they were
computed; stepping the variants and copying their states after a resampling is the caller's job
(`Ensemble.take`). Telling slow drift from a fault over a long window is `models.process.drift`.

Why a particle filter and not an ensemble Kalman filter: the variants span wide parameter ranges
and the model is strongly nonlinear in them (pump curve, efficiency inside a square root,
valve resistance ~ 1/v^2), so the posterior can be skewed or have several modes; the EnKF's
linear-Gaussian update would pull variants towards parameter sets that do not exist between
them. A particle filter only re-weights variants the model really ran, never needs the
parameter-to-output covariance, and costs O(N * n_out) per tick.

The update, per tick of `dt` seconds, for variant i (r = normalised residual on valid outputs):

    logw_i <- exp(-dt / forgetting_s) * logw_i - evidence * (1 - exp(-dt / forgetting_s))
              * sum_j rho(r_ij),   rho = 0.5 r^2 for |r| <= huber, linear beyond (Huber)

so the log-weights are an exponentially weighted average of the Gaussian log-likelihood over
the forgetting window, worth `evidence` independent observations (residuals of a model are
autocorrelated, so one window is not worth `forgetting_s / dt` samples). The Huber tail keeps a
one-tick spike from deciding between variants. When the effective sample size falls below
`ess_frac * N` the variants are resampled (systematic resampling) and every varied parameter is
jittered by `jitter` times its posterior standard deviation (regularised PF). The jitter is the
forgetting of the parameter cloud itself: it widens the cloud by (1 + jitter^2) in variance at
each resampling, which keeps it from collapsing and lets it follow a parameter that moves. The
weights are then uniform again; the caller copies the states of the chosen variants
(`resampled`).

Two limits keep that widening from running away (it compounds at every resampling, and where
the measurements say nothing about a direction the weights do not narrow it again):

- a parameter identical in every starting variant is held: it is never jittered (the agent's
  ensemble varies a few parameters and holds the rest at nominal; a floor jitter on the held
  ones once compounded over ~40 resamplings to a 10 % spread, the variants then disagreed for
  reasons no calibrated parameter explained, the ESS collapsed every few ticks and the cloud
  blew up to the whole range: calibration lost track);
- a varied parameter's spread never grows past its spread in the starting variants (the prior):
  forgetting returns towards the prior, never beyond it.

Innovation gate: each variant also keeps an EWMA (time constant `fault_window_s`) of its
normalised residuals. The "best variant" fits best in EWMA residuals over the valid outputs not
gated (all valid ones if every output is gated); its EWMA residual per output, in units of
`sigma` (the average offset over the last few seconds, the white noise smoothed away), is
`residual_z`. An output with |residual_z| > `gate_z` is explained by no variant: from the next
tick on it is left out of the weight update (a sensor fault must not drag the parameters, nor
pick a compromise variant that spreads its error over the healthy outputs) and `DriftMonitor`
reports it as a fault; the gate opens again once the best variant explains it. When every valid
output is unexplained (a prior that misses the plant, a tight `sigma`, a parameter that moved
faster than the cloud could follow) there is nothing healthy to protect: all are weighed (the
Huber tail bounds their pull) so the cloud can search, and the fault is still reported.

Cost: one compiled pass over the variants per `update`, no allocation (the ESS with a
vectorisable exp approximation); the resampling is compiled and writes into buffers allocated
once. Figures in `bench/README.md` (`model_step`, tick rows).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numba
import numpy as np
import numpy.typing as npt

from models.base import F64, Mask
from models.process.resample import ess, jitter_copy, moments, systematic

# Normalised residual given to a variant whose prediction is not finite (a diverged variant).
NAN_RESIDUAL = 1e3
# A change in a residual's EWMA smaller than this is dropped: with steady inputs the EWMA would
# otherwise creep towards its limit through subnormal numbers, each costing ~100 cycles.
TINY = 1e-100
# When the largest log-weight falls below this, all are shifted up to 0 (exp() would underflow).
LOG_SHIFT = -300.0
# Jitter floor of a varied parameter, relative to its magnitude, so identical variants spread.
REL_JITTER_FLOOR = 1e-6

_Idx = npt.NDArray[np.intp]


# reassoc: the per-variant sums over outputs may be reordered, so the loop vectorises; no
# flag that assumes finite numbers (diverged variants are detected by comparisons).
@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract", "nsz"})
def _weigh(  # noqa: PLR0917  # numba kernel: plain positional arrays and scalars
    pred: F64,
    y: F64,
    inv_sigma: F64,
    valid_in: Mask,
    alpha: float,
    decay: float,
    beta: float,
    huber: float,
    gate_z: float,
    logw: F64,
    ewma: F64,
    z: F64,
    gated: Mask,
    use: Mask,
) -> tuple[int, float]:
    """One tick in one pass over the variants: EWMA residuals, log-weights, best variant; then
    the ESS and the gate for the next tick. Returns (best, ESS).

    An output counts as valid when `valid_in` says so and its measurement is finite. The gate
    used here is the one set on the previous tick (a one-tick lag, so one pass suffices).
    Log-weights stay <= 0 (both terms of the update are) and are shifted to a maximum of 0
    only when they drift low enough to risk underflow; the weights are the same either way.
    """
    n, m = pred.shape
    yv = np.zeros(m)  # the measurement, 0.0 where not valid (its terms are multiplied by 0)
    aj = np.zeros(m)  # EWMA gain: alpha where valid, 0 elsewhere (the EWMA holds)
    sel = np.zeros(m)  # 1.0: the output chooses the best variant
    wts = np.zeros(m)  # 1.0: the output enters the weights
    any_sel = False
    for j in range(m):
        if valid_in[j] and math.isfinite(y[j]):
            yv[j] = y[j]
            aj[j] = alpha
            # The best variant is chosen on the outputs not gated, so a faulty output does not
            # pick a compromise variant that spreads its error over the healthy ones.
            if not gated[j]:
                sel[j] = 1.0
                any_sel = True
    # With every valid output unexplained there is nothing healthy to protect: use them all.
    for j in range(m):
        if not any_sel and aj[j] > 0.0:
            sel[j] = 1.0
        wts[j] = sel[j]
        use[j] = sel[j] > 0.0
    best = 0
    best_cost = np.inf
    top = -np.inf
    for i in range(n):
        c = 0.0
        cost = 0.0
        for j in range(m):
            r = (yv[j] - pred[i, j]) * inv_sigma[j]
            r = r if abs(r) < np.inf else NAN_RESIDUAL  # a diverged variant (NaN or inf)
            d = r - ewma[i, j]
            d = d if abs(d) > TINY else 0.0  # converged: never compute with subnormals
            e = ewma[i, j] + aj[j] * d
            ewma[i, j] = e
            c += sel[j] * (e * e)
            a = abs(r)
            t = min(a, huber)  # Huber: 0.5 a^2 up to huber, linear beyond
            cost += wts[j] * (t * (a - 0.5 * t))
        if c < best_cost:
            best_cost = c
            best = i
        lw = decay * logw[i] - beta * cost
        logw[i] = lw
        top = max(top, lw)
    if not top > LOG_SHIFT:  # shift before exp() underflows (or every variant diverged)
        for i in range(n):
            logw[i] -= top
    for j in range(m):
        if aj[j] > 0.0:
            z[j] = ewma[best, j]
            gated[j] = abs(z[j]) > gate_z
        else:
            z[j] = np.nan
    return best, ess(logw)


class Calibrator:
    """Posterior weights over N parameter variants, updated from measurements each tick.

    `params` has shape (N, P) in `param_names` order; `sigma` (n_out,) is each output's residual
    scale in normal operation (noise plus ordinary model error), in the output's unit. `lo` /
    `hi` (P,) bound the jittered parameters. A parameter with the same value in every starting
    variant is held (never jittered); `varied` lists the others.
    """

    def __init__(
        self,
        param_names: Sequence[str],
        params: npt.ArrayLike,
        sigma: npt.ArrayLike,
        *,
        forgetting_s: float = 30.0,
        evidence: float = 1.0,
        ess_frac: float = 0.5,
        jitter: float = 1.0,
        huber: float = 3.0,
        fault_window_s: float = 5.0,
        gate_z: float = 3.0,
        lo: npt.ArrayLike | None = None,
        hi: npt.ArrayLike | None = None,
        seed: int | None = None,
    ) -> None:
        self.param_names = tuple(param_names)
        p = np.array(params, dtype=np.float64, order="C", ndmin=2)
        n_var, n_par = p.shape
        if n_par != len(self.param_names) or n_var < 1:
            raise ValueError(
                f"params: expected shape (N >= 1, {len(self.param_names)}), got {p.shape}"
            )
        if not np.isfinite(p).all():
            raise ValueError("params: every value must be finite")
        s = np.array(sigma, dtype=np.float64, ndmin=1)
        if s.ndim != 1 or not (np.isfinite(s) & (s > 0)).all():
            raise ValueError("sigma: expected a 1-D array of finite values > 0")
        for name, v in (
            ("forgetting_s", forgetting_s),
            ("evidence", evidence),
            ("fault_window_s", fault_window_s),
            ("huber", huber),
            ("gate_z", gate_z),
        ):
            if not v > 0:
                raise ValueError(f"{name}: must be > 0, got {v}")
        if not 0.0 < ess_frac <= 1.0 or not jitter >= 0.0:
            raise ValueError("ess_frac must be in (0, 1] and jitter >= 0")
        self._lo = self._bound(lo, n_par, -np.inf, "lo")
        self._hi = self._bound(hi, n_par, np.inf, "hi")
        if (self._lo > self._hi).any():
            raise ValueError("lo must not exceed hi")
        self._params = np.ascontiguousarray(np.clip(p, self._lo, self._hi))
        self._spare = np.empty_like(self._params)
        self._varied: _Idx = np.flatnonzero(np.ptp(self._params, axis=0) > 0).astype(np.intp)
        self._prior_var = self._params[:, self._varied].var(axis=0)
        self._sigma = s
        self._inv_sigma = 1.0 / s
        self.forgetting_s = forgetting_s
        self.evidence = evidence
        self.ess_frac = ess_frac
        self.jitter = jitter
        self.huber = huber
        self.fault_window_s = fault_window_s
        self.gate_z = gate_z
        self._rng = np.random.default_rng(seed)
        n_out = s.shape[0]
        self._logw = np.zeros(n_var)
        self._ewma = np.zeros((n_var, n_out))
        self._ewma_spare = np.empty_like(self._ewma)
        self._z = np.full(n_out, np.nan)
        self._gated = np.zeros(n_out, dtype=np.bool_)
        self._used = np.zeros(n_out, dtype=np.bool_)
        self._idx: _Idx = np.arange(n_var, dtype=np.intp)
        self._normals = np.empty((n_var, self._varied.shape[0]))
        self._mean = np.empty(n_par)
        self._std = np.empty(n_par)
        self.best = 0
        self.ess = float(n_var)
        self.resampled: _Idx | None = None
        self.resamples = 0
        self.updates = 0

    @staticmethod
    def _bound(b: npt.ArrayLike | None, n: int, default: float, what: str) -> F64:
        if b is None:
            return np.full(n, default)
        arr = np.array(b, dtype=np.float64, ndmin=1)
        if arr.shape != (n,):
            raise ValueError(f"{what}: expected shape ({n},), got {arr.shape}")
        return arr

    @property
    def n_variants(self) -> int:
        return int(self._params.shape[0])

    @property
    def params(self) -> F64:
        """The variants' current parameters (N, P); a new array after each resampling."""
        return self._params

    @property
    def varied(self) -> tuple[str, ...]:
        """The parameters that differ between variants (the others are held, never jittered)."""
        return tuple(self.param_names[j] for j in self._varied)

    @property
    def weights(self) -> F64:
        """Normalised posterior weights (N,)."""
        w = np.exp(self._logw)
        normalised: F64 = w / w.sum()
        return normalised

    @property
    def residual_z(self) -> F64:
        """Best variant's smoothed normalised residual per output (NaN: not valid last tick)."""
        return self._z.copy()

    @property
    def used(self) -> Mask:
        """Outputs that entered the last weight update (valid and within the gate)."""
        return self._used.copy()

    def update(
        self, predictions: npt.ArrayLike, measured: npt.ArrayLike, valid: npt.ArrayLike, dt: float
    ) -> None:
        """Weigh the variants by the measurements seen over the last `dt` seconds.

        `predictions` (N, n_out) are the variants' outputs for this tick, `measured` (n_out,)
        and `valid` (n_out,) the plant's. Outputs that are invalid or not finite are ignored. A
        variant whose prediction is not finite loses its weight. After the call `resampled` is
        None or the indices (N,) the variants were drawn from (valid until the next update):
        variant i is now a jittered copy of former variant `resampled[i]`, whose state the
        caller must copy.
        """
        pred = np.ascontiguousarray(predictions, dtype=np.float64)
        y = np.asarray(measured, dtype=np.float64)
        ok = np.asarray(valid, dtype=np.bool_)
        n_out = self._sigma.shape[0]
        if pred.shape != self._ewma.shape:
            raise ValueError(
                f"predictions: expected ({self.n_variants}, {n_out}), got {pred.shape}"
            )
        if y.shape != (n_out,) or ok.shape != (n_out,):
            raise ValueError(f"measured and valid: expected shape ({n_out},)")
        if not (math.isfinite(dt) and dt >= 0.0):
            raise ValueError(f"dt: must be finite and >= 0, got {dt}")
        alpha = -math.expm1(-dt / self.fault_window_s)
        decay = math.exp(-dt / self.forgetting_s)
        beta = self.evidence * -math.expm1(-dt / self.forgetting_s)
        best, ess = _weigh(
            pred,
            y,
            self._inv_sigma,
            ok,
            alpha,
            decay,
            beta,
            self.huber,
            self.gate_z,
            self._logw,
            self._ewma,
            self._z,
            self._gated,
            self._used,
        )
        self.best = best
        self.ess = ess
        self.updates += 1
        self.resampled = None
        if ess < self.ess_frac * self.n_variants:
            self._resample()

    def _resample(self) -> None:
        moments(self._logw, self._params, self._mean, self._std)
        systematic(self._logw, float(self._rng.random()), self._idx)
        cols = self._varied
        var = self._std[cols] ** 2
        floor = (REL_JITTER_FLOOR * np.maximum(np.abs(self._mean[cols]), 1e-12)) ** 2
        # Widen by jitter^2 of the posterior variance, but never past the prior's spread.
        kick_var = np.minimum(self.jitter**2 * np.maximum(var, floor), self._prior_var - var)
        kick = np.sqrt(np.maximum(kick_var, self.jitter**2 * floor))
        self._rng.standard_normal(out=self._normals)
        jitter_copy(
            self._idx,
            self._params,
            self._ewma,
            kick,
            self._normals,
            cols,
            self._lo,
            self._hi,
            self._spare,
            self._ewma_spare,
        )
        self._params, self._spare = self._spare, self._params
        self._ewma, self._ewma_spare = self._ewma_spare, self._ewma
        self._logw[:] = 0.0
        self.ess = float(self.n_variants)
        self.resampled = self._idx
        self.resamples += 1

    def mean_std(self) -> tuple[F64, F64]:
        """Posterior mean and standard deviation of each parameter, arrays (P,)."""
        mean = np.empty(self._params.shape[1])
        std = np.empty_like(mean)
        moments(self._logw, self._params, mean, std)
        return mean, std

    def estimate(self) -> dict[str, tuple[float, float]]:
        """Posterior (mean, std) of each parameter by name."""
        mean, std = self.mean_std()
        return {
            n: (float(m), float(s)) for n, m, s in zip(self.param_names, mean, std, strict=True)
        }
