"""Benchmark: ns per variant-step of the water-loop Digital Original, numba against NumPy.

Owns the ensemble benchmark. Cases per ensemble size N (one agent tick, dt = 0.1 s, inputs
shared by all variants):

- `numpy`: the NumPy-vectorised reference in `bench.loop_numpy` (the baseline);
- `numba-loop`: one compiled call that runs `models.process.loop._advance` over the variants
  (the kernel the agent runs today, looped; defined here);
- `numba-scalar`: the same equations hand-tuned for the machine (`bench.loop_scalar`), to show
  what the compiled ensemble can cost at best;
- `numba-engine`: `models.process.engine.Ensemble.step`, when that module is present.

Then a full agent tick at N = 1,000: the ensemble step plus `Calibrator.update` when
`models.process.calibrate` is present. Variants are drawn uniformly within +-10 % of the
nominal parameters (clipped to their declared ranges; variant 0 is nominal), the spread an
online calibration works with; all variants then take the same number of RK4 sub-steps, so
neither implementation pays for the other's layout. Before timing, every numba kernel's
outputs are checked against NumPy's.

    uv run python -m bench.model_step [--quick] [--results-dir DIR] [--repeats N]
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from bench.harness import ROOT, Options, Row, Target, interleaved, parse_args, report
from bench.loop_numpy import NumpyLoop
from bench.loop_scalar import ensemble_advance_scalar
from models.process.loop import OUTPUT_NAMES, _advance, _steady_state
from models.process.params import PARAM_NAMES, LoopParams, load_params

F64 = npt.NDArray[np.float64]
NAME = "model_step"
PROCESS_DIR = ROOT / "models" / "process"
DT = 0.1  # the agent's default tick (10 Hz)
SPREAD = 0.1
STEP_INPUTS = np.array([75.0, 90.0, 80.0, 2.0])  # near the operating point, off steady state
TICK_N = 1000
TARGET_SPEEDUP = 2.0
TARGET_TICK_US = 100.0
# Residual scales per output (OUTPUT_NAMES order) for the calibrator: the order of the noise
# the rig adds, so likelihoods are neither flat nor degenerate.
SIGMA = np.array([0.5, 0.02, 0.005, 0.1, 0.05, 0.2])


@numba.njit(cache=True)
def ensemble_advance(x: F64, u: F64, p: F64, dt: float, substep: float, y: F64) -> None:  # noqa: PLR0917  # numba kernel: plain positional arrays
    """Advance every variant (rows of x, p, y) by dt in one compiled call."""
    for i in range(x.shape[0]):
        _advance(x[i], u, p[i], dt, substep, y[i])


@numba.njit(cache=True)
def ensemble_steady_state(u: F64, p: F64, level: F64, x: F64) -> None:
    """Steady state of each variant with inputs u held (rows of p, x)."""
    for i in range(x.shape[0]):
        _steady_state(u, p[i], level[i], x[i])


def sample_variants(params: LoopParams, n: int, seed: int = 0, spread: float = SPREAD) -> F64:
    """(n, P) variants within +-spread of nominal, clipped to the ranges; row 0 is nominal."""
    rng = np.random.default_rng(seed)
    factors = rng.uniform(1.0 - spread, 1.0 + spread, size=(n, len(PARAM_NAMES)))
    out: F64 = np.clip(params.values * factors, params.lo, params.hi)
    out[0] = params.values
    return np.ascontiguousarray(out)


def initial_states(variants: F64, inputs: F64) -> F64:
    """(N, 4) steady states of every variant at `inputs`, at each variant's nominal level."""
    x = np.empty((variants.shape[0], 4))
    level = np.ascontiguousarray(variants[:, PARAM_NAMES.index("level_nominal_m")])
    ensemble_steady_state(inputs, variants, level, x)
    return x


class KernelCase:
    """A numba ensemble kernel over rows: state (N, 4), outputs (N, 6), one call per tick."""

    def __init__(self, kernel: Any, variants: F64, substep: float, x0: F64) -> None:
        self.kernel = kernel
        self.p = variants.copy()
        self.substep = substep
        self.x = x0.copy()
        self.y = np.empty((variants.shape[0], len(OUTPUT_NAMES)))

    def step(self, u: F64, dt: float = DT) -> F64:
        self.kernel(self.x, u, self.p, dt, self.substep, self.y)
        return self.y

    def resampled(self, index: npt.NDArray[np.intp], params: F64) -> None:
        """After a calibrator resampled: copy the chosen variants' states, take new params."""
        self.x = np.ascontiguousarray(self.x[index])
        self.p = np.ascontiguousarray(params)


class EngineCase:
    """`models.process.engine.Ensemble` stepping the same variants (spec parameter order)."""

    def __init__(self, engine: Any, spec: Any, variants: F64) -> None:
        self.ens = engine.Ensemble(spec, engine_params(engine, spec, variants))
        self.ens.reset(STEP_INPUTS.copy(), np.full(len(OUTPUT_NAMES), np.nan))
        self.cols = engine_columns(spec)

    def step(self, u: F64, dt: float = DT) -> F64:
        out: F64 = self.ens.step(u, dt)
        return out

    def resampled(self, index: npt.NDArray[np.intp], _params: F64) -> None:
        """The engine has no public parameter setter: only the states follow the resampling."""
        self.ens.set_states(self.ens.states[index])


KERNELS: dict[str, Any] = {
    "numba-loop": ensemble_advance,
    "numba-scalar": ensemble_advance_scalar,
}


def check_agreement(variants: F64, substep: float, x0: F64, steps: int = 20) -> dict[str, float]:
    """Largest relative output difference of each numba kernel from NumPy over `steps` ticks."""
    ref = NumpyLoop(variants, substep)
    xr = np.ascontiguousarray(x0.T)
    kernels = {name: KernelCase(k, variants, substep, x0) for name, k in KERNELS.items()}
    worst = dict.fromkeys(kernels, 0.0)
    for k in range(steps):
        u = STEP_INPUTS + np.array([5.0, -10.0, 0.0, 0.5]) * np.sin(0.3 * k)
        yr = ref.advance(xr, u, DT).T
        for name, case in kernels.items():
            yk = case.step(u)
            diff = float(np.max(np.abs(yr - yk) / np.maximum(np.abs(yr), 1e-9)))
            worst[name] = max(worst[name], diff)
    return worst


def load_engine() -> tuple[Any, Any] | str:
    """(engine module, ModelSpec of the water loop) or the reason the engine is skipped."""
    try:
        engine = importlib.import_module("models.process.engine")
        spec_mod = importlib.import_module("models.process.spec")
    except ImportError as exc:
        return f"models.process.engine not importable ({exc}): no numba-engine rows"
    toml = PROCESS_DIR / "units" / "water_loop.toml"
    try:
        spec = spec_mod.load_spec(toml)
    except Exception as exc:  # any failure of a module under construction: report, go on
        return f"engine present but load_spec({toml.name}) failed: {type(exc).__name__}: {exc}"
    return engine, spec


def engine_columns(spec: Any) -> list[int] | None:
    """Columns of `PARAM_NAMES` in the spec's parameter order, when every name matches."""
    names = getattr(spec, "params", None)
    if isinstance(names, tuple) and names and all(n in PARAM_NAMES for n in names):
        return [PARAM_NAMES.index(n) for n in names]
    return None


def engine_params(engine: Any, spec: Any, variants: F64) -> F64:
    """The same variants in the spec's parameter order (by name), else the engine's own draw."""
    cols = engine_columns(spec)
    if cols is not None:
        return np.ascontiguousarray(variants[:, cols])
    drawn: F64 = np.asarray(
        engine.sample_params(spec, variants.shape[0], seed=0, spread=SPREAD), dtype=np.float64
    )
    return drawn


def engine_case(loaded: tuple[Any, Any] | str, variants: F64, notes: list[str]) -> Any:
    """An `EngineCase` of these variants, or None (with the reason added to `notes`)."""
    if isinstance(loaded, str):
        return None
    engine, spec = loaded
    try:
        case = EngineCase(engine, spec, variants)
        out = np.asarray(case.step(STEP_INPUTS.copy()))
    except Exception as exc:  # a module under construction: report, go on
        notes.append(f"engine present but Ensemble failed: {type(exc).__name__}: {exc}")
        return None
    if out.shape != (variants.shape[0], len(OUTPUT_NAMES)):
        notes.append(f"engine step returned shape {out.shape}: no numba-engine rows")
        return None
    if case.cols is None:
        notes.append("engine parameter names differ from loop.toml: engine draws its own variants")
    return case


def calibrator(params: LoopParams, variants: F64, predictions: F64, notes: list[str]) -> Any:
    """A `Calibrator` over these variants fed one measurement, or None (reason in `notes`)."""
    try:
        calibrate = importlib.import_module("models.process.calibrate")
    except ImportError as exc:
        notes.append(f"models.process.calibrate not importable ({exc}): tick without calibration")
        return None
    try:
        cal = calibrate.Calibrator(
            list(PARAM_NAMES), variants.copy(), SIGMA, lo=params.lo, hi=params.hi, seed=0
        )
        cal.update(predictions, predictions[0], np.ones(len(SIGMA), dtype=bool), DT)
    except Exception as exc:  # a module under construction: report, go on
        notes.append(f"Calibrator present but failed: {type(exc).__name__}: {exc}")
        return None
    return cal


def tick_fn(case: Any, cal: Any, u: F64, measured: F64) -> Callable[[], object]:
    """One agent tick: step the ensemble, weigh the variants, follow a resampling."""
    valid = np.ones(len(SIGMA), dtype=bool)

    def tick() -> object:
        y = case.step(u)
        cal.update(y, measured, valid, DT)
        if cal.resampled is not None:
            case.resampled(cal.resampled, cal.params)
        return y

    return tick


def run(opts: Options) -> Path:
    params = load_params()
    sizes: Sequence[int] = (1, 1000) if opts.quick else (1, 100, 1000, 10000)
    rows: list[Row] = []
    notes: list[str] = []
    loaded = load_engine()
    if isinstance(loaded, str):
        notes.append(loaded)
    agreement = dict.fromkeys(KERNELS, 0.0)
    substeps: dict[int, tuple[float, float]] = {}
    for n in sizes:
        variants = sample_variants(params, n)
        x0 = initial_states(variants, STEP_INPUTS)
        for name, diff in check_agreement(variants, params.substep_s, x0).items():
            agreement[name] = max(agreement[name], diff)
        ref = NumpyLoop(variants, params.substep_s)
        xr = np.ascontiguousarray(x0.T)
        counts = ref.substeps(xr, STEP_INPUTS, DT)
        substeps[n] = (float(counts.mean()), float(counts.max()))
        u = STEP_INPUTS.copy()
        cases: dict[str, tuple[Callable[[], object], float]] = {
            "numpy": (partial(ref.advance, xr, u, DT), n)
        }
        for name, kernel in KERNELS.items():
            cases[name] = (partial(KernelCase(kernel, variants, params.substep_s, x0).step, u), n)
        eng = engine_case(loaded, variants, notes)
        if eng is not None:
            cases["numba-engine"] = (partial(eng.step, u), n)
        times = interleaved(cases, opts.repeats, opts.run_s)
        rows += [
            Row(
                group=f"N={n}",
                case=name,
                unit="ns/variant-step",
                samples=[s * 1e9 for s in samples],
                baseline=None if name == "numpy" else "numpy",
                extra={"variants": n, "substeps_mean": substeps[n][0]},
            )
            for name, samples in times.items()
        ]

    rows += tick_benchmark(params, opts, loaded, notes)
    notes += [
        f"{name} outputs agree with numpy to {diff:.1e} (max relative difference)"
        for name, diff in agreement.items()
    ]
    notes.append(
        "RK4 sub-steps per variant-step (dt 0.1 s): "
        + ", ".join(f"N={n}: mean {m:.2f}, max {x:.0f}" for n, (m, x) in substeps.items())
    )
    notes.append(
        "numba-loop: LoopModel's _advance looped over variants (today's kernel); numba-scalar: "
        "the same equations hand-tuned in bench.loop_scalar (states in locals, no scratch "
        "arrays, hoisted terms); numba-engine: models.process.engine.Ensemble.step"
    )
    return report(
        NAME,
        opts,
        rows,
        targets=targets_from(rows),
        notes=list(dict.fromkeys(notes)),
        config={"dt_s": DT, "spread": SPREAD, "sizes": list(sizes), "inputs": STEP_INPUTS.tolist()},
    )


def tick_benchmark(
    params: LoopParams, opts: Options, loaded: tuple[Any, Any] | str, notes: list[str]
) -> list[Row]:
    """A full tick at N = TICK_N: ensemble step (+ Calibrator.update when present), in us."""
    n = TICK_N
    variants = sample_variants(params, n)
    x0 = initial_states(variants, STEP_INPUTS)
    ref = NumpyLoop(variants, params.substep_s)
    xr = np.ascontiguousarray(x0.T)
    u = STEP_INPUTS.copy()
    steppers: dict[str, Any] = {
        name: KernelCase(kernel, variants, params.substep_s, x0) for name, kernel in KERNELS.items()
    }
    eng = engine_case(loaded, variants, notes)
    if eng is not None:
        steppers["numba-engine"] = eng
    cases: dict[str, tuple[Callable[[], object], float]] = {
        "numpy step": (partial(ref.advance, xr, u, DT), 1)
    }
    # The plant is variant 0 (nominal) plus a small offset, so weights move but stay finite.
    measured = np.asarray(steppers["numba-loop"].step(u)[0] + 0.5 * SIGMA, dtype=np.float64)
    for name, case in steppers.items():
        cases[f"{name} step"] = (partial(case.step, u), 1)
        cal = calibrator(params, variants, np.asarray(case.step(u)), notes)
        if cal is not None:
            cases[f"{name} step + calibrate"] = (tick_fn(case, cal, u, measured), 1)
    times = interleaved(cases, opts.repeats, opts.run_s)
    return [
        Row(
            group=f"tick N={n}",
            case=name,
            unit="us/tick",
            samples=[s * 1e6 for s in samples],
            baseline=None if name == "numpy step" else "numpy step",
        )
        for name, samples in times.items()
    ]


def targets_from(rows: Sequence[Row]) -> list[Target]:
    """Per numba case: speed-up >= 2x over NumPy at N = 1,000; a full tick < 100 us."""
    by = {(r.group, r.case): r.median for r in rows}
    targets = []
    base = by.get((f"N={TICK_N}", "numpy"))
    tick = f"tick N={TICK_N}"
    for case in ("numba-engine", "numba-loop", "numba-scalar"):
        med = by.get((f"N={TICK_N}", case))
        if base is None or med is None:
            continue
        ratio = base / med
        targets.append(
            Target(
                f"{case} speed-up over numpy at N={TICK_N}",
                ratio,
                TARGET_SPEEDUP,
                "x",
                ratio >= TARGET_SPEEDUP,
            )
        )
        name = f"{case} step + calibrate" if (tick, f"{case} step + calibrate") in by else None
        name = name or f"{case} step"
        t = by.get((tick, name))
        if t is not None:
            targets.append(
                Target(f"full tick ({name}) at N={TICK_N}", t, TARGET_TICK_US, "us", t < 100.0)
            )
    return targets


def main(argv: Sequence[str] | None = None) -> None:
    run(parse_args(__doc__.splitlines()[0] if __doc__ else NAME, argv))


if __name__ == "__main__":
    main()
