"""The particle cloud's compiled helpers for `models.process.calibrate.Calibrator`.

This module owns the kernels over the variants' log-weights and parameter matrix: weighted
moments, systematic resampling, the jittered copy of the drawn rows into a second buffer, and
the effective sample size.
They allocate nothing: every output array is passed in (allocated once by the caller).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import numpy.typing as npt

from models.base import F64

_Idx = npt.NDArray[np.intp]
# Log-weights below this are left out of the ESS sum (their weight is < 1e-150 of one near 0).
LOG_NEGLIGIBLE = -350.0


@numba.njit(cache=True, nogil=True, error_model="numpy")
def moments(logw: F64, params: F64, mean: F64, std: F64) -> None:
    """Weighted mean and standard deviation of every parameter column, into mean and std."""
    n, k = params.shape
    total = 0.0
    for j in range(k):
        mean[j] = 0.0
        std[j] = 0.0
    for i in range(n):
        w = math.exp(logw[i])
        total += w
        for j in range(k):
            mean[j] += w * params[i, j]
    for j in range(k):
        mean[j] /= total
    for i in range(n):
        w = math.exp(logw[i]) / total
        for j in range(k):
            d = params[i, j] - mean[j]
            std[j] += w * d * d
    for j in range(k):
        std[j] = math.sqrt(max(std[j], 0.0))


@numba.njit(cache=True, nogil=True, error_model="numpy")
def systematic(logw: F64, u0: float, idx: _Idx) -> None:
    """Systematic resampling into idx: N sorted draws with one uniform offset `u0` in [0, 1)."""
    n = logw.shape[0]
    total = 0.0
    for i in range(n):
        total += math.exp(logw[i])
    c = math.exp(logw[0]) / total
    k = 0
    for i in range(n):
        u = (i + u0) / n
        while u > c and k < n - 1:
            k += 1
            c += math.exp(logw[k]) / total
        idx[i] = k


@numba.njit(cache=True, nogil=True, error_model="numpy")
def jitter_copy(  # noqa: PLR0917  # numba kernel: plain positional arrays
    idx: _Idx,
    params: F64,
    ewma: F64,
    kick: F64,
    normals: F64,
    varied: _Idx,
    lo: F64,
    hi: F64,
    out_params: F64,
    out_ewma: F64,
) -> None:
    """Resampled rows into the out buffers; varied column c gets kick[c] * normals[:, c]."""
    n, k = params.shape
    for i in range(n):
        src = idx[i]
        for j in range(k):
            out_params[i, j] = params[src, j]
        for j in range(ewma.shape[1]):
            out_ewma[i, j] = ewma[src, j]
        for c in range(varied.shape[0]):
            j = varied[c]
            v = params[src, j] + kick[c] * normals[i, c]
            out_params[i, j] = min(max(v, lo[j]), hi[j])


@numba.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _exp_approx(x: float) -> float:
    """exp(x) for x <= 0 to ~1e-4 relative, 0 below LOG_NEGLIGIBLE: branch-free arithmetic, so
    a loop of it vectorises (a call to exp() does not). Only the ESS uses it: the weights,
    moments and resampling take the exact exp()."""
    t = max(min(x, 0.0), LOG_NEGLIGIBLE) * (1.0 / 1024.0)
    e = 1.0 + t * (1.0 + t * (0.5 + t * (1.0 / 6 + t * (1.0 / 24 + t * (1.0 / 120 + t / 720)))))
    for _ in range(10):  # (e^(x / 1024))^1024
        e *= e
    return e if x > LOG_NEGLIGIBLE else 0.0


@numba.njit(cache=True, nogil=True, error_model="numpy")
def ess(logw: F64) -> float:
    """Effective sample size (sum w)^2 / sum w^2 of the (unnormalised) log-weights <= 0."""
    s = 0.0
    s2 = 0.0
    for i in range(logw.shape[0]):
        w = _exp_approx(logw[i])
        s += w
        s2 += w * w
    return s * s / s2
