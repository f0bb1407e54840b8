"""Benchmark: ns per variant-step of the water-loop Digital Original, numba against NumPy.

Owns the ensemble benchmark. Cases per ensemble size N (one agent tick, dt = 0.1 s, inputs
shared by all variants):

- `numpy`: the NumPy-vectorised reference in `bench.loop_numpy` (the baseline);
- `numba-scalar`: the same equations hand-tuned for the machine (`bench.loop_scalar`), to show
  what the compiled ensemble can cost at best;
- `numba-engine`: `models.process.engine.Ensemble.step` over the built-in Digital Original
  (`units/water_loop.toml`, the spec the agent runs).

Then a full agent tick at N = 1,000: the ensemble step plus `Calibrator.update`, and after a
resampling copying the chosen variants' states and taking the new parameters, as the agent
does (`Ensemble.take`); the notes give how often the tick resampled. Parameters, ranges and
the starting steady state come from the spec. Variants are drawn uniformly within +-10 % of
the nominal parameters (clipped to their declared ranges; variant 0 is nominal), the spread an
online calibration works with; all variants then take the same number of RK4 sub-steps, so
neither implementation pays for the other's layout. Before timing, every numba case's outputs
are checked against NumPy's (the engine picks its own sub-steps, so its difference may include
integration error).

    uv run python -m bench.model_step [--quick] [--results-dir DIR] [--repeats N]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.harness import Options, Row, Target, interleaved, parse_args, report
from bench.loop_numpy import NumpyLoop
from bench.loop_scalar import ensemble_advance_scalar
from edge_agent.config import DEFAULT_SPEC
from models.process.calibrate import Calibrator
from models.process.engine import Ensemble
from models.process.spec import ModelSpec, load_spec
from models.process.units.water_loop import OUTPUTS

F64 = npt.NDArray[np.float64]
NAME = "model_step"
N_OUT = len(OUTPUTS)
DT = 0.1  # the agent's default tick (10 Hz)
SPREAD = 0.1
STEP_INPUTS = np.array([75.0, 90.0, 80.0, 2.0])  # near the operating point, off steady state
TICK_N = 1000
TARGET_SPEEDUP = 2.0
TARGET_TICK_US = 100.0
# Residual scales per output (the spec's output order) for the calibrator: the order of the noise
# the rig adds, so likelihoods are neither flat nor degenerate.
SIGMA = np.array([0.5, 0.02, 0.005, 0.1, 0.05, 0.2])


def sample_variants(spec: ModelSpec, n: int, seed: int = 0, spread: float = SPREAD) -> F64:
    """(n, P) variants within +-spread of nominal, clipped to the ranges; row 0 is nominal."""
    rng = np.random.default_rng(seed)
    factors = rng.uniform(1.0 - spread, 1.0 + spread, size=(n, len(spec.params)))
    out: F64 = np.clip(spec.nominal * factors, spec.lo, spec.hi)
    out[0] = spec.nominal
    return np.ascontiguousarray(out)


def initial_states(spec: ModelSpec, variants: F64, inputs: F64) -> F64:
    """(N, 4) steady states of every variant at `inputs` (the model's `initial` rule, nothing
    measured: each variant at its nominal level)."""
    ens = Ensemble(spec, variants)
    ens.reset(inputs, np.full(len(spec.outputs), np.nan))
    return ens.states


class KernelCase:
    """A numba ensemble kernel over rows: state (N, 4), outputs (N, 6), one call per tick."""

    def __init__(self, kernel: Any, variants: F64, substep: float, x0: F64) -> None:
        self.kernel = kernel
        self.p = variants.copy()
        self.substep = substep
        self.x = x0.copy()
        self.y = np.empty((variants.shape[0], N_OUT))

    def step(self, u: F64, dt: float = DT) -> F64:
        self.kernel(self.x, u, self.p, dt, self.substep, self.y)
        return self.y

    def resampled(self, index: npt.NDArray[np.intp], params: F64) -> None:
        """After a calibrator resampled: copy the chosen variants' states, take new params."""
        self.x = np.ascontiguousarray(self.x[index])
        self.p = np.ascontiguousarray(params)


class EngineCase:
    """`models.process.engine.Ensemble` stepping the same variants from the same states."""

    def __init__(self, spec: ModelSpec, variants: F64, x0: F64) -> None:
        self.ens = Ensemble(spec, variants)
        self.ens.set_states(x0)

    def step(self, u: F64, dt: float = DT) -> F64:
        return self.ens.step(u, dt)

    def resampled(self, index: npt.NDArray[np.intp], params: F64) -> None:
        """After a calibrator resampled: copy the chosen variants' states, take new params."""
        self.ens.take(index, params)  # as the agent: the calibrator clips to the ranges


def cases_for(spec: ModelSpec, variants: F64, x0: F64) -> dict[str, KernelCase | EngineCase]:
    """Every numba case over these variants, each starting from the states x0 (N, 4)."""
    return {
        "numba-scalar": KernelCase(ensemble_advance_scalar, variants, spec.substep_s, x0),
        "numba-engine": EngineCase(spec, variants, x0),
    }


def check_agreement(spec: ModelSpec, variants: F64, x0: F64, steps: int = 20) -> dict[str, float]:
    """Largest relative output difference of each numba case from NumPy over `steps` ticks."""
    ref = NumpyLoop(variants, spec.substep_s)
    xr = np.ascontiguousarray(x0.T)
    cases = cases_for(spec, variants, x0)
    worst = dict.fromkeys(cases, 0.0)
    for k in range(steps):
        u = STEP_INPUTS + np.array([5.0, -10.0, 0.0, 0.5]) * np.sin(0.3 * k)
        yr = ref.advance(xr, u, DT).T
        for name, case in cases.items():
            yk = case.step(u)
            diff = float(np.max(np.abs(yr - yk) / np.maximum(np.abs(yr), 1e-9)))
            worst[name] = max(worst[name], diff)
    return worst


def calibrator(spec: ModelSpec, variants: F64, predictions: F64) -> Calibrator:
    """A `Calibrator` over these variants, fed one measurement (compiles its kernels)."""
    cal = Calibrator(list(spec.params), variants.copy(), SIGMA, lo=spec.lo, hi=spec.hi, seed=0)
    cal.update(predictions, predictions[0], np.ones(len(SIGMA), dtype=bool), DT)
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
    spec = load_spec(DEFAULT_SPEC)
    sizes: Sequence[int] = (1, 1000) if opts.quick else (1, 100, 1000, 10000)
    rows: list[Row] = []
    notes: list[str] = []
    agreement: dict[str, float] = {}
    substeps: dict[int, tuple[float, float]] = {}
    for n in sizes:
        variants = sample_variants(spec, n)
        x0 = initial_states(spec, variants, STEP_INPUTS)
        for name, diff in check_agreement(spec, variants, x0).items():
            agreement[name] = max(agreement.get(name, 0.0), diff)
        ref = NumpyLoop(variants, spec.substep_s)
        xr = np.ascontiguousarray(x0.T)
        counts = ref.substeps(xr, STEP_INPUTS, DT)
        substeps[n] = (float(counts.mean()), float(counts.max()))
        u = STEP_INPUTS.copy()
        cases: dict[str, tuple[Callable[[], object], float]] = {
            "numpy": (partial(ref.advance, xr, u, DT), n)
        }
        for name, case in cases_for(spec, variants, x0).items():
            cases[name] = (partial(case.step, u), n)
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

    rows += tick_benchmark(spec, opts, notes)
    notes += [
        f"{name} outputs agree with numpy to {diff:.1e} (max relative difference)"
        for name, diff in agreement.items()
    ]
    notes.append(
        "RK4 sub-steps per variant-step (dt 0.1 s): "
        + ", ".join(f"N={n}: mean {m:.2f}, max {x:.0f}" for n, (m, x) in substeps.items())
    )
    notes.append(
        "numba-scalar: the water loop's equations hand-tuned in bench.loop_scalar (states in "
        "locals, no scratch arrays, hoisted terms); numba-engine: models.process.engine."
        f"Ensemble.step over {DEFAULT_SPEC.name} ({spec.integrator}, the agent's model)"
    )
    return report(
        NAME,
        opts,
        rows,
        targets=targets_from(rows),
        notes=list(dict.fromkeys(notes)),
        config={"dt_s": DT, "spread": SPREAD, "sizes": list(sizes), "inputs": STEP_INPUTS.tolist()},
    )


def tick_benchmark(spec: ModelSpec, opts: Options, notes: list[str]) -> list[Row]:
    """A full tick at N = TICK_N: ensemble step (+ Calibrator.update when present), in us."""
    n = TICK_N
    variants = sample_variants(spec, n)
    x0 = initial_states(spec, variants, STEP_INPUTS)
    ref = NumpyLoop(variants, spec.substep_s)
    xr = np.ascontiguousarray(x0.T)
    u = STEP_INPUTS.copy()
    steppers = cases_for(spec, variants, x0)
    cases: dict[str, tuple[Callable[[], object], float]] = {
        "numpy step": (partial(ref.advance, xr, u, DT), 1)
    }
    # The plant is variant 0 (nominal) plus a small offset, so weights move but stay finite.
    measured = np.asarray(steppers["numba-engine"].step(u)[0] + 0.5 * SIGMA, dtype=np.float64)
    cals = {}
    for name, case in steppers.items():
        cases[f"{name} step"] = (partial(case.step, u), 1)
        cal = cals[name] = calibrator(spec, variants, np.asarray(case.step(u)))
        cases[f"{name} step + calibrate"] = (tick_fn(case, cal, u, measured), 1)
    times = interleaved(cases, opts.repeats, opts.run_s)
    notes += [
        f"{name} step + calibrate: {cal.resamples} resamplings in {cal.updates} ticks"
        for name, cal in cals.items()
    ]
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
    for case in ("numba-engine", "numba-scalar"):
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
