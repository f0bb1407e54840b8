"""The compiled ensemble kernels of the Digital Original engine: array paths and shared names.

This module owns the integration kernels that take the model's vectors as arrays (the fallback
for models that do not compile on tuples, the "semi-implicit" integrator, the steady-state
solver of re-synchronisation) and the names every kernel is written against. The fast RK4 path
is `models.process.kernels_fast`; `models.process.codegen` appends both to each model's
generated module. Nothing here runs in this module.

The kernels are plain Python written against three names, `_model_derivative`,
`_model_output` and `_model_initial`, and the sizes `N_STATES`, `N_INPUTS`, `N_OUTPUTS`,
`N_PARAMS`. In each model's generated module those names are the model's own numba-compiled
functions and its constant sizes, and everything is compiled with `cache=True`.
`models.process.engine` calls them; one call per tick advances all variants.

Integration per variant and step(dt): the sub-step h = dt / ceil(dt / h_max) with h_max =
`substep_s`, for "rk4-substep" also <= 1 / rho where rho is the fastest local rate at the
start of the step: the model's own `max_rate(x, u, p)` when it has one (an analytic bound, one
cheap call), else the Gershgorin bound of the finite-difference Jacobian (n extra derivatives);
"semi-implicit" uses ROS2 with that Jacobian frozen over the step (ROS2 stays second order for
any Jacobian). Any dt is allowed: a long one (a late tick) is cut into as many sub-steps as the
rules ask, up to `MAX_SUBSTEPS`. Re-synchronisation without a model `initial` rule solves for
the steady state with the measured states pinned, by pseudo-transient continuation:
implicit-Euler steps whose length grows geometrically, which becomes Newton's method once the
transient has died out.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from models.base import F64

RK4 = 0
RK4_SUBSTEP = 1
SEMI_IMPLICIT = 2
METHODS = {"rk4": RK4, "rk4-substep": RK4_SUBSTEP, "semi-implicit": SEMI_IMPLICIT}
MAX_SUBSTEPS = 100_000
ROS2_GAMMA = 1.0 + 1.0 / math.sqrt(2.0)
SETTLE_ITERATIONS = 400


# The fast kernel hands x, u and p to the model as tuples, the array kernels as arrays.
_Vec = F64 | tuple[float, ...]


# Stand-ins for the model's functions; the generated module rebinds these names.
def _model_derivative(x: _Vec, u: _Vec, p: _Vec, dx: F64) -> None:
    raise NotImplementedError("bound to the model's derivative in its generated module")


def _model_output(x: _Vec, u: _Vec, p: _Vec, y: F64) -> None:
    raise NotImplementedError("bound to the model's output in its generated module")


def _model_initial(u: F64, y_meas: F64, p: F64, x: F64) -> None:
    raise NotImplementedError("bound to the model's initial rule in its generated module")


def _model_max_rate(x: _Vec, u: _Vec, p: _Vec) -> float:
    """The model's `max_rate`, or -1.0 (none: the kernels use the finite-difference bound)."""
    return -1.0


# Sizes of the model's vectors: compile-time constants in the generated module.
N_STATES = 0
N_INPUTS = 0
N_OUTPUTS = 0
N_PARAMS = 0


def _to_tuple(a: F64, n: int) -> tuple[float, ...]:
    """A 1-D array as an n-tuple (an intrinsic in the generated module)."""
    return tuple(float(v) for v in a[:n])


def _row_tuple(a: F64, row: int, n: int) -> tuple[float, ...]:
    """Row `row` of a C-contiguous 2-D array as an n-tuple (an intrinsic there too)."""
    return tuple(float(v) for v in a[row, :n])


def _scratch(n: int) -> F64:
    """A float64 vector of n elements on the stack (an intrinsic in the generated module)."""
    return np.empty(max(n, 1))


def _count(dt: float, h: float) -> int:
    """Sub-steps of at most h in dt (dt > 0): at least 1, at most MAX_SUBSTEPS; an infinite or
    NaN rate (h = 0 or NaN) takes the most, never a float-to-int overflow."""
    q = dt / h
    if not q < MAX_SUBSTEPS:
        return MAX_SUBSTEPS
    return max(math.ceil(q), 1)


def _jacobian(x: F64, u: F64, p: F64, f0: F64, jac: F64, xt: F64, ft: F64) -> None:  # noqa: PLR0917  # numba kernel: plain positional arrays
    """Forward-difference Jacobian of the derivative at x; f0 receives f(x)."""
    n = x.shape[0]
    _model_derivative(x, u, p, f0)
    for j in range(n):
        for i in range(n):
            xt[i] = x[i]
        eps = 1e-7 * max(abs(x[j]), 1.0)
        xt[j] = x[j] + eps
        _model_derivative(xt, u, p, ft)
        for i in range(n):
            jac[i, j] = (ft[i] - f0[i]) / eps


def _lu_factor(a: F64, piv: npt.NDArray[np.int64]) -> None:
    """In-place LU with partial pivoting of a small dense matrix (no LAPACK needed)."""
    n = a.shape[0]
    for k in range(n):
        m = k
        for i in range(k + 1, n):
            if abs(a[i, k]) > abs(a[m, k]):
                m = i
        piv[k] = m
        if m != k:
            for j in range(n):
                a[k, j], a[m, j] = a[m, j], a[k, j]
        if abs(a[k, k]) < 1e-300:
            a[k, k] = 1e-300
        for i in range(k + 1, n):
            a[i, k] /= a[k, k]
            for j in range(k + 1, n):
                a[i, j] -= a[i, k] * a[k, j]


def _lu_solve(a: F64, piv: npt.NDArray[np.int64], b: F64) -> None:
    """Solve a x = b in place in b, with `a` from `_lu_factor`."""
    n = a.shape[0]
    for k in range(n):
        m = piv[k]
        if m != k:
            b[k], b[m] = b[m], b[k]
    for i in range(n):
        for j in range(i):
            b[i] -= a[i, j] * b[j]
    for i in range(n - 1, -1, -1):
        for j in range(i + 1, n):
            b[i] -= a[i, j] * b[j]
        b[i] /= a[i, i]


def _rk4(x: F64, u: F64, p: F64, h: float, m: int, k: F64, xt: F64) -> None:  # noqa: PLR0917  # numba kernel: plain positional arrays
    """m classic RK4 steps of length h, in place; k is (4, n) scratch."""
    n = x.shape[0]
    k1, k2, k3, k4 = k[0], k[1], k[2], k[3]
    for _ in range(m):
        _model_derivative(x, u, p, k1)
        for i in range(n):
            xt[i] = x[i] + 0.5 * h * k1[i]
        _model_derivative(xt, u, p, k2)
        for i in range(n):
            xt[i] = x[i] + 0.5 * h * k2[i]
        _model_derivative(xt, u, p, k3)
        for i in range(n):
            xt[i] = x[i] + h * k3[i]
        _model_derivative(xt, u, p, k4)
        for i in range(n):
            x[i] += h / 6.0 * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i])


def _ros2(  # noqa: PLR0917  # numba kernel: plain positional arrays
    x: F64, u: F64, p: F64, h: float, m: int, w: F64, piv: npt.NDArray[np.int64], k: F64, xt: F64
) -> None:
    """m ROS2 steps of length h, in place; w holds the LU of I - gamma h J."""
    n = x.shape[0]
    k1, k2 = k[0], k[1]
    for _ in range(m):
        _model_derivative(x, u, p, k1)
        _lu_solve(w, piv, k1)
        for i in range(n):
            xt[i] = x[i] + h * k1[i]
        _model_derivative(xt, u, p, k2)
        for i in range(n):
            k2[i] -= 2.0 * k1[i]
        _lu_solve(w, piv, k2)
        for i in range(n):
            x[i] += 1.5 * h * k1[i] + 0.5 * h * k2[i]


def _advance_all_arrays(  # noqa: PLR0917  # numba kernel: plain positional arrays
    xs: F64, u: F64, ps: F64, dt: float, substep: float, method: int, ys: F64
) -> None:
    """Advance every variant (rows of xs, ps) by dt with u held; outputs after the step to ys."""
    nv, n = xs.shape
    k = np.empty((4, n))
    xt = np.empty(n)
    f0 = np.empty(n)
    ft = np.empty(n)
    jac = np.empty((n, n))
    piv = np.empty(n, dtype=np.int64)
    for v in range(nv):
        x = xs[v]
        p = ps[v]
        if dt > 0.0:
            h = substep
            rho = _model_max_rate(x, u, p) if method == RK4_SUBSTEP else -1.0
            if method == SEMI_IMPLICIT or (method == RK4_SUBSTEP and rho < 0.0):
                _jacobian(x, u, p, f0, jac, xt, ft)
            if method == RK4_SUBSTEP:
                if rho < 0.0:  # no `max_rate`: the finite-difference Gershgorin bound
                    rho = 0.0
                    for i in range(n):
                        row = 0.0
                        for j in range(n):
                            row += abs(jac[i, j])
                        rho = max(rho, row)
                if rho * h > 1.0:
                    h = 1.0 / rho
            m = _count(dt, h)
            h = dt / m
            if method == SEMI_IMPLICIT:
                for i in range(n):
                    for j in range(n):
                        jac[i, j] = (1.0 if i == j else 0.0) - ROS2_GAMMA * h * jac[i, j]
                _lu_factor(jac, piv)
                _ros2(x, u, p, h, m, jac, piv, k, xt)
            else:
                _rk4(x, u, p, h, m, k, xt)
        _model_output(x, u, p, ys[v])


def _outputs_all(xs: F64, u: F64, ps: F64, ys: F64) -> None:
    for v in range(xs.shape[0]):
        _model_output(xs[v], u, ps[v], ys[v])


def _initial_all(u: F64, y_meas: F64, ps: F64, xs: F64) -> None:
    for v in range(xs.shape[0]):
        _model_initial(u, y_meas, ps[v], xs[v])


def _settle_all(xs: F64, u: F64, ps: F64, pinned: npt.NDArray[np.bool_]) -> None:
    """Steady state of every variant with u held and the pinned states fixed, in place."""
    nv, n = xs.shape
    f0 = np.empty(n)
    ft = np.empty(n)
    xt = np.empty(n)
    d = np.empty(n)
    jac = np.empty((n, n))
    piv = np.empty(n, dtype=np.int64)
    for v in range(nv):
        x = xs[v]
        p = ps[v]
        h = 1.0
        for _ in range(SETTLE_ITERATIONS):
            _jacobian(x, u, p, d, jac, xt, ft)
            for i in range(n):
                f0[i] = d[i]
            for i in range(n):
                for j in range(n):
                    if pinned[i]:
                        jac[i, j] = 1.0 if i == j else 0.0
                    else:
                        jac[i, j] = (1.0 / h if i == j else 0.0) - jac[i, j]
                d[i] = 0.0 if pinned[i] else f0[i]
            _lu_factor(jac, piv)
            _lu_solve(jac, piv, d)
            ok = True
            small = True
            for i in range(n):
                xt[i] = x[i] + d[i]
                ok = ok and math.isfinite(xt[i])
                small = small and abs(d[i]) <= 1e-12 * (1.0 + abs(x[i]))
            if ok:
                for i in range(n):
                    x[i] = xt[i]
                if small:
                    break
                h = min(h * 4.0, 1e12)
            else:
                h *= 0.125
