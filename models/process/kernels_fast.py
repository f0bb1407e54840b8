"""The fast RK4 kernel of the Digital Original engine: variants as tuples, two at a time.

This module owns `_advance_all`, the "rk4" and "rk4-substep" path for models whose functions
compile on tuples, and its inlined helpers; the rules of integration are those of
`models.process.kernels`, the arithmetic per variant bitwise the same as its array kernel.
Like those kernels, this is source for each model's generated module (`models.process.codegen`).

Why it looks the way it does (measured on the water loop, N = 1,000): each variant's x, u and
p reach the model as tuples, so the inlined model's terms of u and p alone are computed once per
variant-step; the stage vectors live on the stack (`_scratch`), so once the model is inlined
LLVM keeps them in registers instead of storing and reloading them; and variants are integrated
two at a time, interleaved, so the two dependency chains (a square root or a division per
derivative is common) overlap in the CPU instead of waiting on each other. A pair whose
sub-step counts differ runs one variant after the other, so a variant's result never depends on
its neighbour or on N.
"""

from __future__ import annotations

import math

from models.base import F64
from models.process.kernels import (
    N_INPUTS,
    N_OUTPUTS,
    N_PARAMS,
    N_STATES,
    RK4_SUBSTEP,
    _count,
    _model_derivative,
    _model_max_rate,
    _model_output,
    _row_tuple,
    _scratch,
    _to_tuple,
)


def _substeps(  # noqa: PLR0917  # numba kernel: plain positional values
    x: tuple[float, ...],
    ut: tuple[float, ...],
    pt: tuple[float, ...],
    dt: float,
    substep: float,
    method: int,
    f0: F64,
    ft: F64,
    xa: F64,
    rows: F64,
) -> int:
    """f(x) into f0 (RK4's first stage) and this variant's sub-step count for dt."""
    _model_derivative(x, ut, pt, f0)
    h = substep
    if method == RK4_SUBSTEP:
        rho = _model_max_rate(x, ut, pt)
        if rho < 0.0:  # the model has no `max_rate`: the finite-difference Gershgorin bound
            for i in range(N_STATES):
                rows[i] = 0.0
            for j in range(N_STATES):
                for i in range(N_STATES):
                    xa[i] = x[i]
                eps = 1e-7 * max(abs(x[j]), 1.0)
                xa[j] = x[j] + eps
                _model_derivative(_to_tuple(xa, N_STATES), ut, pt, ft)
                for i in range(N_STATES):
                    rows[i] += abs((ft[i] - f0[i]) / eps)
            rho = 0.0
            for i in range(N_STATES):
                rho = max(rho, rows[i])
        if rho * h > 1.0:
            h = 1.0 / rho
    return _count(dt, h)


def _substeps_two(  # noqa: PLR0917  # numba kernel: plain positional values
    x: tuple[float, ...],
    pt: tuple[float, ...],
    z: tuple[float, ...],
    qt: tuple[float, ...],
    ut: tuple[float, ...],
    dt: float,
    substep: float,
    method: int,
    a: tuple[F64, F64, F64, F64, F64],
    b: tuple[F64, F64, F64, F64, F64],
) -> tuple[int, int]:
    """`_substeps` of two variants at once, interleaved; f into a[0] and b[0]."""
    f0, ft, xa, rows = a[0], a[1], a[4], a[2]
    g0, gt, za, cols = b[0], b[1], b[4], b[2]
    _model_derivative(x, ut, pt, f0)
    _model_derivative(z, ut, qt, g0)
    h = substep
    hz = substep
    if method == RK4_SUBSTEP:
        rho = _model_max_rate(x, ut, pt)
        rhz = _model_max_rate(z, ut, qt)
        if rho < 0.0:  # the model has no `max_rate`: the finite-difference Gershgorin bound
            for i in range(N_STATES):
                rows[i] = 0.0
                cols[i] = 0.0
            for j in range(N_STATES):
                for i in range(N_STATES):
                    xa[i] = x[i]
                    za[i] = z[i]
                eps = 1e-7 * max(abs(x[j]), 1.0)
                epz = 1e-7 * max(abs(z[j]), 1.0)
                xa[j] = x[j] + eps
                za[j] = z[j] + epz
                _model_derivative(_to_tuple(xa, N_STATES), ut, pt, ft)
                _model_derivative(_to_tuple(za, N_STATES), ut, qt, gt)
                for i in range(N_STATES):
                    rows[i] += abs((ft[i] - f0[i]) / eps)
                    cols[i] += abs((gt[i] - g0[i]) / epz)
            rho = 0.0
            rhz = 0.0
            for i in range(N_STATES):
                rho = max(rho, rows[i])
                rhz = max(rhz, cols[i])
        if rho * h > 1.0:
            h = 1.0 / rho
        if rhz * hz > 1.0:
            hz = 1.0 / rhz
    m = _count(dt, h)
    mz = _count(dt, hz)
    return m, mz


def _rk4_one(  # noqa: PLR0917  # numba kernel: plain positional values
    x: tuple[float, ...],
    ut: tuple[float, ...],
    pt: tuple[float, ...],
    h: float,
    m: int,
    k1: F64,
    k2: F64,
    k3: F64,
    k4: F64,
    xa: F64,
) -> tuple[float, ...]:
    """m RK4 sub-steps of one variant; k1 holds f(x) on entry."""
    for step in range(m):
        if step > 0:
            _model_derivative(x, ut, pt, k1)
        for i in range(N_STATES):
            xa[i] = x[i] + 0.5 * h * k1[i]
        _model_derivative(_to_tuple(xa, N_STATES), ut, pt, k2)
        for i in range(N_STATES):
            xa[i] = x[i] + 0.5 * h * k2[i]
        _model_derivative(_to_tuple(xa, N_STATES), ut, pt, k3)
        for i in range(N_STATES):
            xa[i] = x[i] + h * k3[i]
        _model_derivative(_to_tuple(xa, N_STATES), ut, pt, k4)
        for i in range(N_STATES):
            xa[i] = x[i] + h / 6.0 * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i])
        x = _to_tuple(xa, N_STATES)
    return x


def _rk4_two(  # noqa: PLR0917  # numba kernel: plain positional values
    x: tuple[float, ...],
    pt: tuple[float, ...],
    z: tuple[float, ...],
    qt: tuple[float, ...],
    ut: tuple[float, ...],
    h: float,
    m: int,
    a: tuple[F64, F64, F64, F64, F64],
    b: tuple[F64, F64, F64, F64, F64],
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """`_rk4_one` on two variants (x, pt) and (z, qt) at once, stage by stage interleaved.

    `a` and `b` are each variant's (k1, k2, k3, k4, xa) scratch; k1 holds f on entry.
    """
    a1, a2, a3, a4, xa = a
    b1, b2, b3, b4, za = b
    for step in range(m):
        if step > 0:
            _model_derivative(x, ut, pt, a1)
            _model_derivative(z, ut, qt, b1)
        for i in range(N_STATES):
            xa[i] = x[i] + 0.5 * h * a1[i]
            za[i] = z[i] + 0.5 * h * b1[i]
        _model_derivative(_to_tuple(xa, N_STATES), ut, pt, a2)
        _model_derivative(_to_tuple(za, N_STATES), ut, qt, b2)
        for i in range(N_STATES):
            xa[i] = x[i] + 0.5 * h * a2[i]
            za[i] = z[i] + 0.5 * h * b2[i]
        _model_derivative(_to_tuple(xa, N_STATES), ut, pt, a3)
        _model_derivative(_to_tuple(za, N_STATES), ut, qt, b3)
        for i in range(N_STATES):
            xa[i] = x[i] + h * a3[i]
            za[i] = z[i] + h * b3[i]
        _model_derivative(_to_tuple(xa, N_STATES), ut, pt, a4)
        _model_derivative(_to_tuple(za, N_STATES), ut, qt, b4)
        for i in range(N_STATES):
            xa[i] = x[i] + h / 6.0 * (a1[i] + 2.0 * a2[i] + 2.0 * a3[i] + a4[i])
            za[i] = z[i] + h / 6.0 * (b1[i] + 2.0 * b2[i] + 2.0 * b3[i] + b4[i])
        x = _to_tuple(xa, N_STATES)
        z = _to_tuple(za, N_STATES)
    return x, z


def _advance_all(  # noqa: PLR0917  # numba kernel: plain positional arrays
    xs: F64, u: F64, u_nom: F64, ps: F64, dt: float, substep: float, method: int, ys: F64
) -> None:
    """RK4 paths, variants two at a time (see the module docstring); outputs after the step.

    Bitwise the same arithmetic per variant as `_advance_all_arrays`; NaN inputs take `u_nom`.
    A pair whose sub-step counts differ runs one variant after the other.
    """
    nv = xs.shape[0]
    ua = _scratch(N_INPUTS)
    for i in range(N_INPUTS):
        ua[i] = u[i] if math.isfinite(u[i]) else u_nom[i]
    ut = _to_tuple(ua, N_INPUTS)
    a = (_scratch(N_STATES), _scratch(N_STATES), _scratch(N_STATES), _scratch(N_STATES),
         _scratch(N_STATES))  # fmt: skip
    b = (_scratch(N_STATES), _scratch(N_STATES), _scratch(N_STATES), _scratch(N_STATES),
         _scratch(N_STATES))  # fmt: skip
    rows = _scratch(N_STATES)
    ya = _scratch(N_OUTPUTS)
    yb = _scratch(N_OUTPUTS)
    v = 0
    while v < nv:
        pair = v + 1 < nv
        w = v + 1 if pair else v
        x = _row_tuple(xs, v, N_STATES)
        pt = _row_tuple(ps, v, N_PARAMS)
        z = _row_tuple(xs, w, N_STATES)
        qt = _row_tuple(ps, w, N_PARAMS)
        if dt > 0.0:
            if pair:
                m, mz = _substeps_two(x, pt, z, qt, ut, dt, substep, method, a, b)
                if mz == m:
                    x, z = _rk4_two(x, pt, z, qt, ut, dt / m, m, a, b)
                else:
                    x = _rk4_one(x, ut, pt, dt / m, m, a[0], a[1], a[2], a[3], a[4])
                    z = _rk4_one(z, ut, qt, dt / mz, mz, b[0], b[1], b[2], b[3], b[4])
            else:
                m = _substeps(x, ut, pt, dt, substep, method, a[0], a[1], a[4], rows)
                x = _rk4_one(x, ut, pt, dt / m, m, a[0], a[1], a[2], a[3], a[4])
            for i in range(N_STATES):
                xs[v, i] = x[i]
                if pair:
                    xs[w, i] = z[i]
        _model_output(x, ut, pt, ya)
        for i in range(N_OUTPUTS):
            ys[v, i] = ya[i]
        if pair:
            _model_output(z, ut, qt, yb)
            for i in range(N_OUTPUTS):
                ys[w, i] = yb[i]
        v += 2 if pair else 1
