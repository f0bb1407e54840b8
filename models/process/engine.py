"""The Digital Original engine: integrates N parameter variants of an authored model per tick.

This module owns the compiled ensemble kernels, `Ensemble` (N variants stepped by one compiled
call), `SpecModel` (the nominal variant as a `models.base.ProcessModel`) and `sample_params`.
The model format and its validation live in `models.process.spec`.

The kernels below are plain Python written against three names, `_model_derivative`,
`_model_output` and `_model_initial`. They are not compiled here: `kernel_source` appends their
source to each model's generated module (see `spec._build_module`), where those names are the
model's own numba-compiled functions and everything is compiled with `cache=True`. One call per
tick advances all variants serially (a Python-to-numba call costs far more than one variant).

Integration per variant and step(dt): the sub-step h = dt / ceil(dt / h_max) with h_max =
`substep_s`, for "rk4-substep" also <= 1 / rho where rho is the Gershgorin bound of the
finite-difference Jacobian at the start of the step (the fastest local rate); "semi-implicit"
uses ROS2 with that Jacobian frozen over the step (ROS2 stays second order for any Jacobian).
Re-synchronisation without a model `initial` rule solves for the steady state with the
measured states pinned, by pseudo-transient continuation: implicit-Euler steps whose length
grows geometrically, which becomes Newton's method once the transient has died out.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import structlog
from numba.core.errors import NumbaError

from models.base import F64, ModelError
from models.process.spec import ModelSpec, load_spec

log = structlog.get_logger(__name__)

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


# Sizes of the model's vectors: compile-time constants in the generated module.
N_STATES = 0
N_INPUTS = 0
N_PARAMS = 0


def _to_tuple(a: F64, n: int) -> tuple[float, ...]:
    """A 1-D array as an n-tuple (numba's `to_fixed_tuple` in the generated module)."""
    return tuple(float(v) for v in a[:n])


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


def _advance_all(  # noqa: PLR0917  # numba kernel: plain positional arrays
    xs: F64, u: F64, u_nom: F64, ps: F64, dt: float, substep: float, method: int, ys: F64
) -> None:
    """RK4 paths with each variant's x, u and p handed to the model as fixed-size tuples.

    Tuples are values, not memory: once numba inlines the model's functions, LLVM can share
    the terms that depend only on inputs and parameters between all derivative calls of a
    variant, which it cannot do for arrays that might alias the scratch being written.
    Bitwise the same arithmetic as `_advance_all_arrays`; NaN inputs take `u_nom`.
    """
    nv = xs.shape[0]
    ua = np.empty(N_INPUTS)
    for i in range(N_INPUTS):
        ua[i] = u[i] if math.isfinite(u[i]) else u_nom[i]
    ut = _to_tuple(ua, N_INPUTS)
    k1 = np.empty(N_STATES)
    k2 = np.empty(N_STATES)
    k3 = np.empty(N_STATES)
    k4 = np.empty(N_STATES)
    xa = np.empty(N_STATES)
    rows = np.empty(N_STATES)
    pa = np.empty(N_PARAMS)
    ya = np.empty(ys.shape[1])
    for v in range(nv):
        # Element copies, not row views: a view costs two reference-count updates.
        for i in range(N_PARAMS):
            pa[i] = ps[v, i]
        for i in range(N_STATES):
            xa[i] = xs[v, i]
        pt = _to_tuple(pa, N_PARAMS)
        x = _to_tuple(xa, N_STATES)
        if dt > 0.0:
            h = substep
            _model_derivative(x, ut, pt, k1)  # f(x): the Jacobian's base and RK4's first stage
            if method == RK4_SUBSTEP:
                for i in range(N_STATES):
                    rows[i] = 0.0
                for j in range(N_STATES):
                    for i in range(N_STATES):
                        xa[i] = x[i]
                    eps = 1e-7 * max(abs(x[j]), 1.0)
                    xa[j] = x[j] + eps
                    _model_derivative(_to_tuple(xa, N_STATES), ut, pt, k2)
                    for i in range(N_STATES):
                        rows[i] += abs((k2[i] - k1[i]) / eps)
                rho = 0.0
                for i in range(N_STATES):
                    rho = max(rho, rows[i])
                if rho * h > 1.0:
                    h = 1.0 / rho
            m = min(max(math.ceil(dt / h), 1), MAX_SUBSTEPS)
            h = dt / m
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
            for i in range(N_STATES):
                xs[v, i] = x[i]
        _model_output(x, ut, pt, ya)
        for i in range(ya.shape[0]):
            ys[v, i] = ya[i]


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
            if method != RK4:
                _jacobian(x, u, p, f0, jac, xt, ft)
            if method == RK4_SUBSTEP:
                rho = 0.0
                for i in range(n):
                    row = 0.0
                    for j in range(n):
                        row += abs(jac[i, j])
                    rho = max(rho, row)
                if rho * h > 1.0:
                    h = 1.0 / rho
            m = min(max(math.ceil(dt / h), 1), MAX_SUBSTEPS)
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


_KERNELS = (
    _jacobian,
    _lu_factor,
    _lu_solve,
    _rk4,
    _ros2,
    _advance_all,
    _advance_all_arrays,
    _outputs_all,
    _initial_all,
    _settle_all,
)

_FOOTER_HEAD = f"""
# ---- appended by models.process.engine; everything above is the model file, verbatim ----
import inspect as _engine_inspect
import math
import numba as _engine_numba
import numpy as np
import numpy.typing as npt
from models.base import F64

_engine_python = {{
    _k: _v
    for _k, _v in list(globals().items())
    if _engine_inspect.isfunction(_v) and _v.__module__ == __name__
}}
for _k, _v in _engine_python.items():
    globals()[_k] = _engine_numba.njit(cache=True, error_model="numpy", fastmath={{"arcp"}})(_v)
_model_derivative = globals().get("derivative")
_model_output = globals().get("output")
_model_initial = globals().get("initial")
# Validated later by `spec`; a missing or malformed name must reach that check, not fail here.
N_STATES, N_INPUTS, N_PARAMS = (
    len(_v) if isinstance(_v := globals().get(_k), tuple | list) else 0
    for _k in ("STATES", "INPUTS", "PARAMS")
)
RK4 = {RK4}
RK4_SUBSTEP = {RK4_SUBSTEP}
SEMI_IMPLICIT = {SEMI_IMPLICIT}
MAX_SUBSTEPS = {MAX_SUBSTEPS}
ROS2_GAMMA = {ROS2_GAMMA!r}
SETTLE_ITERATIONS = {SETTLE_ITERATIONS}
"""


# numba's own `to_fixed_tuple` fills the tuple in a bounds-checked loop through memory (about
# 1.5 ns per element); this loads the elements straight into the tuple value.
_TUPLE_INTRINSIC = """
from numba.core import types as _engine_types
from numba.extending import intrinsic as _engine_intrinsic


@_engine_intrinsic
def _to_tuple(typingctx, array, length):
    \"\"\"The first `length` (a constant) elements of a C-contiguous 1-D array as a tuple.\"\"\"
    if not isinstance(length, _engine_types.IntegerLiteral) or array.ndim != 1:
        return None
    size = int(length.literal_value)
    tup = _engine_types.UniTuple(array.dtype, size)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        out = context.get_constant_undef(tup)
        for i in range(size):
            ptr = builder.gep(ary.data, [context.get_constant(_engine_types.intp, i)])
            out = builder.insert_value(out, builder.load(ptr), i)
        return out

    return tup(array, length), codegen
"""


def kernel_source() -> str:
    """The engine code appended to every generated model module."""
    parts = [_FOOTER_HEAD, _TUPLE_INTRINSIC]
    parts += [inspect.getsource(fn) for fn in _KERNELS]
    names = ", ".join(repr(fn.__name__) for fn in _KERNELS)
    # nogil: the caller may run a large ensemble in a worker thread without stalling others.
    parts.append(
        f"for _k in ({names}):\n"
        "    globals()[_k] = _engine_numba.njit(\n"
        "        cache=True, nogil=True, error_model='numpy'\n"
        "    )(globals()[_k])\n"
    )
    return "\n\n".join(parts)


def _vector(arr: object, n: int, what: str, spec: ModelSpec) -> F64:
    a = np.ascontiguousarray(arr, dtype=np.float64)
    if a.shape != (n,):
        raise ModelError(f"model {spec.name}: {what}: expected shape ({n},), got {a.shape}")
    return a


def check_params(spec: ModelSpec, params: npt.ArrayLike) -> F64:
    """Validate an explicit (N, P) variant list: shape, finite, inside the declared ranges."""
    ps = np.array(params, dtype=np.float64, ndmin=2, order="C")
    if ps.ndim != 2 or ps.shape[1] != len(spec.params) or ps.shape[0] < 1:
        raise ModelError(
            f"model {spec.name}: params: expected shape (N, {len(spec.params)}), got {ps.shape}"
        )
    bad = ~np.isfinite(ps) | (ps < spec.lo) | (ps > spec.hi)
    if bad.any():
        v, j = (int(i) for i in np.argwhere(bad)[0])
        raise ModelError(
            f"model {spec.name}: params[{v}].{spec.params[j]}: {ps[v, j]:g} outside its range "
            f"[{spec.lo[j]:g}, {spec.hi[j]:g}]"
        )
    return ps


def sample_params(
    spec: ModelSpec, n: int, seed: int = 0, *, spread: float = 1.0, latin: bool = False
) -> F64:
    """N variants inside the declared ranges; row 0 is nominal.

    Each parameter is drawn from [nominal - spread (nominal - lo), nominal + spread (hi -
    nominal)], uniformly or (`latin=True`) by Latin hypercube over the other N - 1 rows.
    """
    if n < 1:
        raise ModelError(f"model {spec.name}: sample_params: n must be >= 1, got {n}")
    if not 0.0 <= spread <= 1.0:
        raise ModelError(f"model {spec.name}: sample_params: spread must be in [0, 1]")
    rng = np.random.default_rng(seed)
    lo = spec.nominal - spread * (spec.nominal - spec.lo)
    hi = spec.nominal + spread * (spec.hi - spec.nominal)
    m, k = n - 1, len(spec.params)
    if latin and m > 0:
        strata = np.stack([rng.permutation(m) for _ in range(k)], axis=1)
        unit = (strata + rng.random((m, k))) / m
    else:
        unit = rng.random((m, k))
    out = np.empty((n, k))
    out[0] = spec.nominal
    out[1:] = lo + unit * (hi - lo)
    return np.clip(out, spec.lo, spec.hi)


def _tuple_kernel_compiles(spec: ModelSpec) -> bool:
    """Whether the model's functions compile on tuples (the fast RK4 kernel); once per model.

    A model using array-only features (`.shape`, NumPy calls on its vectors, ...) runs the
    array kernel instead, without the shared terms; so does every "semi-implicit" model.
    """
    mod = spec.module
    known: bool | None = getattr(mod, "_engine_tuples", None)
    if known is None:
        x = np.ascontiguousarray(spec.nominal_states, dtype=np.float64)[None, :].copy()
        y = np.zeros((1, len(spec.outputs)))
        u = np.ascontiguousarray(spec.nominal_inputs, dtype=np.float64)
        p = np.ascontiguousarray(spec.nominal, dtype=np.float64)[None, :]
        try:
            mod._advance_all(x, u, u, p, 0.0, spec.substep_s, RK4, y)
            known = True
        except NumbaError as exc:
            text = str(exc).strip()
            reason = text.splitlines()[0] if text else type(exc).__name__
            log.info("model kernel on arrays", model=spec.name, reason=reason[:200])
            known = False
        setattr(mod, "_engine_tuples", known)  # noqa: B010  # a generated module
    return known and METHODS[spec.integrator] != SEMI_IMPLICIT


class Ensemble:
    """N parameter variants of one model, stepped together by one compiled call per tick.

    All variants see the same inputs; `step` returns outputs of shape (N, n_out). Call `reset`
    before stepping (the constructor starts every variant from the nominal operating point).
    """

    def __init__(self, spec: ModelSpec, params: npt.ArrayLike | None = None) -> None:
        self.spec = spec
        self._p = check_params(spec, spec.nominal if params is None else params)
        n = self._p.shape[0]
        self._x = np.zeros((n, len(spec.states)))
        self._y = np.zeros((n, len(spec.outputs)))
        self._method = METHODS[spec.integrator]
        mod = spec.module
        self._fast = _tuple_kernel_compiles(spec)
        self._advance = mod._advance_all if self._fast else mod._advance_all_arrays
        self._substep = float(spec.substep_s)
        self._outputs = mod._outputs_all
        self._settle = mod._settle_all
        self._initial = mod._initial_all if spec.has_initial else None
        # State i is observed through the output of the same name (checked at load).
        self._obs_out = np.array(
            [spec.outputs.index(s) if s in spec.outputs else -1 for s in spec.states], dtype=np.intp
        )
        self._tau = spec.observer_tau_s.copy()
        self._n_obs = np.zeros(len(spec.states))
        self._u_nom = np.ascontiguousarray(spec.nominal_inputs, dtype=np.float64)
        self.reset(spec.nominal_inputs, np.full(len(spec.outputs), np.nan))

    @property
    def n(self) -> int:
        return int(self._p.shape[0])

    @property
    def params(self) -> F64:
        return self._p.copy()

    @property
    def states(self) -> F64:
        """A copy of the states, shape (N, n_states)."""
        return self._x.copy()

    @property
    def outputs(self) -> F64:
        """A copy of the outputs after the last step or reset, shape (N, n_out)."""
        return self._y.copy()

    def set_params(self, params: npt.ArrayLike, *, checked: bool = False) -> None:
        """Replace the parameter matrix (N, P) (same N), e.g. after the calibrator resampled.

        `checked=True` skips the range check (the caller already keeps every value inside the
        declared ranges, as the calibrator does with `lo`/`hi`); shapes are always checked.
        """
        if checked:
            p = np.ascontiguousarray(params, dtype=np.float64)
        else:
            p = check_params(self.spec, params)
        if p.shape != self._p.shape:
            raise ModelError(f"model {self.spec.name}: params: expected shape {self._p.shape}")
        self._p = p

    def set_states(self, states: npt.ArrayLike) -> None:
        """Overwrite the states: (n_states,) for every variant or (N, n_states)."""
        x = np.broadcast_to(np.asarray(states, dtype=np.float64), self._x.shape)
        self._x = np.array(x, dtype=np.float64, order="C")  # a writable copy

    def _inputs(self, inputs: npt.ArrayLike) -> F64:
        u = _vector(inputs, len(self.spec.inputs), "inputs", self.spec)
        return np.ascontiguousarray(np.where(np.isfinite(u), u, self.spec.nominal_inputs))

    def reset(self, inputs: npt.ArrayLike, measured_outputs: npt.ArrayLike) -> None:
        """Re-initialise every variant from measured inputs and outputs (NaN = unknown).

        With the model's `initial` rule, that rule decides. Otherwise states with a same-named
        output take its measured value and the rest the steady state with the inputs held (from
        `[nominal_states]`); a variant whose steady state is not finite takes nominal states.
        NaN inputs take `[nominal_inputs]`.
        """
        u = self._inputs(inputs)
        y = _vector(measured_outputs, len(self.spec.outputs), "outputs", self.spec)
        x = np.empty_like(self._x)
        if self._initial is not None:
            self._initial(u, y, self._p, x)
        else:
            measured = np.where(self._obs_out >= 0, y[np.maximum(self._obs_out, 0)], np.nan)
            pinned = np.isfinite(measured)
            x[:] = np.where(pinned, measured, self.spec.nominal_states)
            self._settle(x, u, self._p, np.ascontiguousarray(pinned))
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            log.warning("model reset not finite", model=self.spec.name, variants=int(bad.sum()))
            x[bad] = self.spec.nominal_states
        self._x = x
        self._n_obs = np.zeros(len(self.spec.states))
        self._outputs(self._x, u, self._p, self._y)

    def step(self, inputs: npt.ArrayLike, dt: float) -> F64:
        """Advance every variant by `dt` s with `inputs` held; outputs (N, n_out) after it.

        NaN inputs take `[nominal_inputs]`; `dt <= 0` only re-evaluates the outputs. The result
        is the ensemble's own output buffer, overwritten by the next `step` or `reset`: read it
        or copy it before then (`outputs` is a copy).
        """
        dt = float(dt)
        if not math.isfinite(dt):
            raise ModelError(f"model {self.spec.name}: dt: must be finite, got {dt}")
        if self._fast:
            u = _vector(inputs, self._u_nom.shape[0], "inputs", self.spec)
            self._advance(
                self._x, u, self._u_nom, self._p, dt, self._substep, self._method, self._y
            )
        else:
            u = self._inputs(inputs)
            self._advance(self._x, u, self._p, dt, self._substep, self._method, self._y)
        return self._y

    def observe(self, measured: npt.ArrayLike, dt: float) -> None:
        """Pull observed states towards same-named measured outputs (NaN = not measured).

        First-order output injection with the `[observer]` time constants: the fraction moved
        is min(1, max(dt / tau, 1 / (n + 1))) with n the measurements since the last reset, so
        the state starts as their running mean.
        """
        y = _vector(measured, len(self.spec.outputs), "outputs", self.spec)
        m = np.where(self._obs_out >= 0, y[np.maximum(self._obs_out, 0)], np.nan)
        seen = np.isfinite(m)
        on = (self._tau > 0) & seen
        self._n_obs += on
        gain = np.maximum(dt / np.where(on, self._tau, np.inf), 1.0 / (self._n_obs + 1.0))
        gain = np.where(on, np.minimum(1.0, gain), 0.0)
        self._x += gain * (np.where(seen, m, self._x) - self._x)


class SpecModel:
    """One variant (nominal unless `params` is given) of an authored model, as a ProcessModel."""

    def __init__(self, spec: ModelSpec, params: npt.ArrayLike | None = None) -> None:
        p = spec.nominal if params is None else np.asarray(params, dtype=np.float64)
        if p.ndim != 1:
            raise ModelError(f"model {spec.name}: params: expected one vector, got {p.shape}")
        self._ens = Ensemble(spec, p[None, :])
        self.spec = spec
        # Warm the JIT (or load it from the cache) now, not on the first tick.
        self._ens.step(spec.nominal_inputs, 0.0)

    @classmethod
    def load(cls, toml_path: str | Path) -> SpecModel:
        """Load, validate and compile a model definition; its nominal variant."""
        return cls(load_spec(toml_path))

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.spec.inputs

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.spec.outputs

    @property
    def state(self) -> F64:
        x: F64 = self._ens.states[0]
        return x

    def reset(self, inputs: F64, outputs: F64) -> None:
        """Re-initialise from measured inputs and outputs (NaN = unknown)."""
        self._ens.reset(inputs, outputs)

    def step(self, inputs: F64, dt: float) -> F64:
        """Advance by `dt` seconds with `inputs` held; return the predicted outputs."""
        y: F64 = self._ens.step(inputs, dt)[0].copy()
        return y

    def observe(self, outputs: F64, dt: float) -> None:
        """Correct the state with measured outputs (NaN = not measured)."""
        self._ens.observe(outputs, dt)
