"""The Digital Original engine: integrates N parameter variants of an authored model per tick.

This module owns `Ensemble` (N variants stepped by one compiled call per tick) and `SpecModel`
(one variant as a `models.base.ProcessModel`). The model format and its validation live in
`models.process.spec`, the compiled kernels in `models.process.kernels` and
`models.process.kernels_fast` (appended to each model's generated module by
`models.process.codegen`), the parameter matrices (sampled, listed, read from a variants file)
in `models.process.variants`; `check_params`, `params_from_rows` and `sample_params` are
re-exported here.

`step(inputs, dt)` takes the time step per call: dt may change from tick to tick (measured
tick times, jitter, a late tick), and a long dt is cut into sub-steps by the integrator's own
rules (see `models.process.kernels`), never taken in one stride.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import structlog
from numba.core.errors import NumbaError

from models.base import F64, ModelError
from models.process.kernels import METHODS, RK4, SEMI_IMPLICIT
from models.process.spec import ModelSpec, load_spec
from models.process.variants import check_params, params_from_rows, sample_params

__all__ = ["Ensemble", "SpecModel", "check_params", "params_from_rows", "sample_params"]

log = structlog.get_logger(__name__)


def _vector(arr: object, n: int, what: str, spec: ModelSpec) -> F64:
    a = np.ascontiguousarray(arr, dtype=np.float64)
    if a.shape != (n,):
        raise ModelError(f"model {spec.name}: {what}: expected shape ({n},), got {a.shape}")
    return a


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
        self._x_spare = np.empty_like(self._x)
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

    @classmethod
    def from_rows(cls, spec: ModelSpec, rows: Sequence[Mapping[str, object]]) -> Ensemble:
        """An ensemble of explicitly listed variants: one mapping name -> value per variant.

        Names a row leaves out take their nominal value; every value is checked against the
        declared range (`ModelError` naming the model, the variant index and the parameter).
        """
        return cls(spec, params_from_rows(spec, rows))

    @property
    def n(self) -> int:
        return int(self._p.shape[0])

    @property
    def params(self) -> F64:
        return self._p.copy()

    @property
    def kernel(self) -> str:
        """ "tuples" (the fast RK4 kernel) or "arrays" (semi-implicit, or a model whose
        functions need arrays, e.g. `x.shape` or NumPy calls on its vectors)."""
        return "tuples" if self._fast else "arrays"

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

    def take(self, index: npt.NDArray[np.intp], params: F64) -> None:
        """After a resampling: variant i continues from former variant index[i]'s state, with
        `params` (N, P), already inside the declared ranges (the calibrator clips to them).

        The states are gathered into a second buffer allocated once; `params` is used as is
        (not copied): the caller must not change it while the ensemble uses it.
        """
        idx = np.asarray(index, dtype=np.intp)
        if idx.shape != (self.n,) or params.shape != self._p.shape:
            raise ModelError(f"model {self.spec.name}: take: expected shapes ({self.n},) and "
                             f"{self._p.shape}")  # fmt: skip
        np.take(self._x, idx, axis=0, out=self._x_spare)
        self._x, self._x_spare = self._x_spare, self._x
        self.set_params(params, checked=True)

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
