"""Model updates from upstream: validate a candidate, swap it in, keep the previous for rollback.

Pure of MQTT and of the agent: functions take the running objects and return new ones, or raise
`UpdateRejected(detail)`; the caller swaps the references (on the tick's thread) and nothing
changes when they raise.

Detector (`validate_detector` + `DetectorSlots`): the ONNX bytes are written to
`<dir>/staging.onnx`, loaded with `OnnxDetector.load` (format and graph checks), must have the
running detector's output tags in the same order and the same window, and must score a few
baseline windows (zeros, and noise at the running detector's residual scale) plus the given
recent windows without an error and without NaN for any finite window. `DetectorSlots.install`
then moves the running file to `previous.onnx` (a copy of the configured file on the first
update: the shipped file is never written) and the staged one to `active.onnx`; `rollback`
swaps the two back, after loading and checking `previous.onnx` the same way.

Parameters (`validate_parameters` + `ParameterSlots`): an update is a mapping name -> value,
possibly partial (names left out keep the running value). Every name must be a parameter of
the running model's spec, every value finite and inside the declared range; then a one-variant
ensemble with the new vector is stepped from the running model's current state with the given
inputs (default `steps` = 50 ticks of 0.1 s) and every state and output must stay finite. The
new `SpecModel` starts from the running model's state, so the comparison goes on without a
resync. `ParameterSlots` keeps the active and previous vectors (and a JSON copy on disk).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
import structlog

from edge_agent.downlink import CommandRefused
from models.anomaly.detector import OnnxDetector
from models.base import F32, F64, ModelError, ProcessModel
from models.process.engine import Ensemble, SpecModel
from models.process.spec import ModelSpec

BASELINE_NOISE_WINDOWS = 8
CHECK_STEPS = 50
CHECK_DT_S = 0.1

log = structlog.get_logger(__name__)


class UpdateRejected(CommandRefused):
    """A model update failed validation; the running model is unchanged. `detail` says why."""


def windows_from_residuals(residuals: npt.ArrayLike, window: int, max_windows: int = 64) -> F32:
    """The last `max_windows` windows (stride window // 2) of a residual history `(T, J)`."""
    r = np.asarray(residuals, dtype=np.float32)
    if r.ndim != 2 or r.shape[0] < window:
        return np.empty((0, window, r.shape[-1] if r.ndim == 2 else 0), dtype=np.float32)
    stride = max(1, window // 2)
    starts = range(r.shape[0] - window, -1, -stride)
    picked = [r[s : s + window] for s in list(starts)[:max_windows]]
    return np.stack(picked[::-1])


def _baseline_windows(detector: OnnxDetector) -> F32:
    """Zeros and seeded Gaussian noise at the running detector's residual scale."""
    shape = (detector.window, len(detector.output_names))
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((BASELINE_NOISE_WINDOWS, *shape)) * detector.residual_scale
    return np.concatenate([np.zeros((1, *shape)), noise]).astype(np.float32)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def check_detector(candidate: OnnxDetector, current: OnnxDetector, recent: F32 | None) -> None:
    """Same tags and window as `current`, finite scores on baseline and `recent` windows."""
    if candidate.output_names != current.output_names:
        raise UpdateRejected(
            f"detector scores tags {list(candidate.output_names)}, the running one "
            f"{list(current.output_names)}; train it for this agent's outputs"
        )
    if candidate.window != current.window:
        raise UpdateRejected(
            f"detector window is {candidate.window} ticks, the running one uses "
            f"{current.window}; train it with --window {current.window}"
        )
    windows = _baseline_windows(current)
    if recent is not None and len(recent):
        r = np.asarray(recent, dtype=np.float32)
        if r.shape[1:] != windows.shape[1:]:
            raise UpdateRejected(f"recent windows have shape {r.shape[1:]}, not {windows.shape}")
        windows = np.concatenate([windows, r])
    try:
        scores = candidate.score_batch(windows)
    except Exception as exc:  # any run-time failure of a foreign graph means: refuse it
        raise UpdateRejected(f"detector fails to score windows ({type(exc).__name__})") from None
    finite_in = np.isfinite(windows).all(axis=1)  # (n, J): a tag's column has no NaN
    bad = finite_in & ~np.isfinite(scores)
    if bad.any():
        rows = int(bad.any(axis=1).sum())
        raise UpdateRejected(f"detector gives NaN or infinite scores for {rows} finite windows")


def validate_detector(
    data: bytes, current: OnnxDetector, recent: F32 | None, staging: Path
) -> OnnxDetector:
    """Stage `data` at `staging`, load and check it against `current`; the candidate detector."""
    try:
        _write_atomic(staging, data)
    except OSError as exc:
        raise UpdateRejected(f"cannot stage the detector ({exc.strerror})") from None
    try:
        candidate = OnnxDetector.load(staging)
        check_detector(candidate, current, recent)
    except ModelError as exc:
        staging.unlink(missing_ok=True)
        raise UpdateRejected(f"not a valid detector: {exc}") from None
    except UpdateRejected:
        staging.unlink(missing_ok=True)  # a refused candidate is never installed by mistake
        raise
    return candidate


class DetectorSlots:
    """`staging.onnx`, `active.onnx` and `previous.onnx` in one folder of the state directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.staging = directory / "staging.onnx"
        self.active = directory / "active.onnx"
        self.previous = directory / "previous.onnx"

    def install(self, running_path: Path) -> Path:
        """Make the staged file active, the running one previous; returns the active path."""
        if not self.staging.exists():
            raise UpdateRejected("no staged detector to install")
        if self.active.exists():
            os.replace(self.active, self.previous)
        else:
            tmp = self.previous.with_name(self.previous.name + ".tmp")
            shutil.copyfile(running_path, tmp)
            os.replace(tmp, self.previous)
        os.replace(self.staging, self.active)
        return self.active

    def rollback(self, current: OnnxDetector) -> OnnxDetector:
        """Load and check `previous.onnx`, then swap it with `active.onnx`; the restored one."""
        if not self.previous.exists() or not self.active.exists():
            raise UpdateRejected("no previous detector to roll back to")
        try:
            restored = OnnxDetector.load(self.previous)
        except ModelError as exc:
            raise UpdateRejected(f"previous detector no longer loads: {exc}") from None
        check_detector(restored, current, None)
        tmp = self.directory / "swap.onnx"
        os.replace(self.active, tmp)
        os.replace(self.previous, self.active)
        os.replace(tmp, self.previous)
        return restored


def model_parameters(model: SpecModel) -> F64:
    """The parameter vector a `SpecModel` runs with (spec order)."""
    # SpecModel keeps it in its one-variant ensemble and has no public accessor for it.
    p: F64 = model._ens.params[0]
    return p


def parameter_vector(spec: ModelSpec, values: Mapping[str, float], base: F64) -> F64:
    """`base` with `values` applied; names known, values finite and inside declared ranges."""
    unknown = sorted(n for n in values if n not in spec.params)
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise UpdateRejected(f"model {spec.name} has no parameter(s) {shown}")
    p = np.array(base, dtype=np.float64)
    for name, value in values.items():
        j = spec.index(name)
        v = float(value)
        if not np.isfinite(v):
            raise UpdateRejected(f"parameter {name} is not finite")
        if not spec.lo[j] <= v <= spec.hi[j]:
            raise UpdateRejected(
                f"parameter {name} = {v:g} outside its range [{spec.lo[j]:g}, {spec.hi[j]:g}]"
            )
        p[j] = v
    return p


def check_steps(
    spec: ModelSpec, params: F64, state: F64, inputs: F64 | None, *, steps: int, dt: float
) -> None:
    """Step a one-variant ensemble from `state`; every state and output must stay finite."""
    ens = Ensemble(spec, params[None, :])
    ens.set_states(state)
    u = spec.nominal_inputs if inputs is None else np.asarray(inputs, dtype=np.float64)
    for k in range(steps):
        y = ens.step(u, dt)
        if not (np.isfinite(y).all() and np.isfinite(ens.states).all()):
            raise UpdateRejected(
                f"model {spec.name} with these parameters gives NaN or infinity after "
                f"{(k + 1) * dt:g} s from the current state"
            )


def validate_parameters(
    values: Mapping[str, float],
    current: ProcessModel,
    inputs: F64 | None = None,
    *,
    steps: int = CHECK_STEPS,
    dt: float = CHECK_DT_S,
) -> SpecModel:
    """A new `SpecModel` with `values` applied, starting from `current`'s state."""
    if not isinstance(current, SpecModel):
        raise UpdateRejected(
            f"the running model ({type(current).__name__}) takes no parameter updates; "
            "only authored models (kind loop or spec) do"
        )
    if not values:
        raise UpdateRejected("empty parameter set")
    spec = current.spec
    p = parameter_vector(spec, values, model_parameters(current))
    state = current.state
    check_steps(spec, p, state, inputs, steps=steps, dt=dt)
    new = SpecModel(spec, p)
    new._ens.set_states(state)  # continue from the running state: no resync, no score gap
    return new


class ParameterSlots:
    """The active and previous parameter vectors of one model; mirrored to `path` as JSON."""

    def __init__(self, spec: ModelSpec, path: Path | None = None) -> None:
        self.spec = spec
        self.path = path
        self.active: F64 | None = None
        self.previous: F64 | None = None
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc.get("model") != self.spec.name:
                return  # written for another model: not ours to apply
            self.active = self._vector(doc["active"])
            self.previous = None if doc["previous"] is None else self._vector(doc["previous"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, UpdateRejected):
            self.active = self.previous = None
            aside = path.with_name(path.name + ".corrupt")
            os.replace(path, aside)
            log.warning("parameter record unreadable, using the configured model",
                        path=str(path), moved_to=str(aside))  # fmt: skip

    def _vector(self, values: Mapping[str, float]) -> F64:
        if set(values) != set(self.spec.params):
            raise ValueError("parameter names differ from the model's")
        return parameter_vector(self.spec, values, self.spec.nominal)

    def _named(self, p: F64 | None) -> dict[str, float] | None:
        return None if p is None else dict(zip(self.spec.params, map(float, p), strict=True))

    def _save(self) -> None:
        if self.path is None:
            return
        doc = {
            "model": self.spec.name,
            "active": self._named(self.active),
            "previous": self._named(self.previous),
        }
        _write_atomic(self.path, json.dumps(doc, indent=1).encode())

    def install(self, new: SpecModel, running: SpecModel) -> None:
        """Record `new` as active and `running` as previous (after `validate_parameters`)."""
        self.previous = model_parameters(running).copy()
        self.active = model_parameters(new).copy()
        self._save()

    def rollback(self, current: ProcessModel, inputs: F64 | None = None) -> SpecModel:
        """The previous vector as a checked `SpecModel` from `current`'s state; swaps the two."""
        if self.previous is None or not isinstance(current, SpecModel):
            raise UpdateRejected("no previous parameter set to roll back to")
        named = self._named(self.previous)
        assert named is not None
        restored = validate_parameters(named, current, inputs)
        self.previous, self.active = model_parameters(current).copy(), self.previous
        self._save()
        return restored
