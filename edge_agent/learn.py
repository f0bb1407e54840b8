"""Learn: which variant of the Digital Original is the real plant, and is it ageing?

The "Learn" step of Design-Build-Test-Learn. Beside the nominal model (`compare`), an ensemble of
N parameter variants of the same authored model (`models.process.engine.Ensemble`) is stepped
every tick with the same held inputs and time step, in one compiled call. A particle-filter
calibrator (`models.process.calibrate.Calibrator`) weights the variants by how well they explain
the comparable measurements, resamples with jitter so the cloud can follow a parameter that
moves, and gives the posterior mean and standard deviation of every parameter. A
`models.process.drift.DriftMonitor` flags a parameter that changes slowly and monotonically
(drift: ageing) apart from an output that no variant explains (fault: something the model
family does not contain, such as a leak or a stuck sensor). The variants are sampled from the
declared ranges, or listed explicitly (`params`, e.g. from `models.process.variants.
load_variants`).

What is published (by `Learner.report`, retained on `<prefix>/model`): the estimate of every
varied parameter with its std, nominal, unit and drift flag, the effective sample size, and the
fault flag with the outputs responsible. Drift and fault transitions are published as events
on `<prefix>/alarms` with `kind` "drift" (with `param`) or "model-fault" (with `outputs`).
"""

from __future__ import annotations

import json
import math

import numpy as np
import numpy.typing as npt
import structlog

from edge_agent.compare import StepInfo
from models.base import F64
from models.process.calibrate import Calibrator
from models.process.drift import DriftMonitor, DriftReport
from models.process.engine import Ensemble
from models.process.spec import ModelSpec
from models.process.variants import check_params, sample_params

log = structlog.get_logger(__name__)


class Learner:
    """Steps the ensemble, calibrates it, and watches the posterior for drift and faults.

    Variants: `variants` drawn within `spread` of each range for the parameters in `vary`, the
    others held at nominal; or, with `params` (N, P), exactly those rows (`variants` and
    `spread` unused; a parameter equal in every row is held). Reported are the parameters in
    `vary` that differ between the variants.
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        variants: int,
        vary: list[str],
        sigma: F64,
        seed: int = 0,
        spread: float = 1.0,
        forgetting_s: float = 30.0,
        drift_window_s: float = 600.0,
        params: npt.ArrayLike | None = None,
    ) -> None:
        self.spec = spec
        names = list(spec.params)
        if params is None:
            ps = sample_params(spec, variants, seed=seed, spread=spread)
            fixed = [i for i, n in enumerate(names) if n not in vary]
            ps[:, fixed] = spec.nominal[fixed]
        else:
            ps = check_params(spec, params)
        self.ensemble = Ensemble(spec, ps)
        self.calibrator = Calibrator(
            names, ps, sigma, forgetting_s=forgetting_s, lo=spec.lo, hi=spec.hi, seed=seed
        )
        differ = set(self.calibrator.varied)
        self.varied = [names.index(n) for n in vary if n in differ]
        self.monitor = DriftMonitor(names, spec.outputs, window_s=drift_window_s)
        self.report_state: DriftReport | None = None
        self._drift_prev = dict.fromkeys(names, False)
        self._fault_prev = False
        self.updates = 0

    def tick(self, info: StepInfo) -> list[dict[str, object]]:
        """One tick; returns drift/fault lifecycle events (JSON-ready dicts)."""
        ens = self.ensemble
        if info.resynced:
            ens.reset(info.held_inputs, info.measured)
        predictions = ens.step(info.held_inputs, info.dt)
        if info.dt <= 0:
            return []
        valid = np.asarray(info.comparable, dtype=np.bool_)
        ens.observe(np.where(valid, info.measured, np.nan), info.dt)
        cal = self.calibrator
        cal.update(predictions, np.where(valid, info.measured, 0.0), valid, info.dt)
        if cal.resampled is not None:
            ens.take(cal.resampled, cal.params)  # the calibrator clips to the ranges
        self.updates += 1
        report = self.monitor.observe(info.now, cal)
        self.report_state = report
        return self._events(info.now, report)

    def _events(self, now: float, report: DriftReport) -> list[dict[str, object]]:
        events: list[dict[str, object]] = []
        for i in self.varied:  # a parameter held at nominal cannot drift
            name = self.spec.params[i]
            flag = bool(report.drift.get(name, False))
            if flag != self._drift_prev[name]:
                change = report.change.get(name, math.nan)
                mean, _ = self.calibrator.mean_std()
                events.append({
                    "ts": round(now, 3), "event": "raised" if flag else "cleared",
                    "kind": "drift", "tag": None, "param": name,
                    "estimate": _num(mean[i]), "change_std": _num(change),
                })  # fmt: skip
                log.info("parameter drift " + ("raised" if flag else "cleared"), param=name)
                self._drift_prev[name] = flag
        if report.fault != self._fault_prev:
            events.append({
                "ts": round(now, 3), "event": "raised" if report.fault else "cleared",
                "kind": "model-fault", "tag": None, "outputs": list(report.fault_outputs),
            })  # fmt: skip
            self._fault_prev = report.fault
        return events

    def report(self, now: float, tag_of: dict[str, str]) -> bytes:
        """The retained estimate document for `<prefix>/model`."""
        cal = self.calibrator
        mean, std = cal.mean_std()
        rep = self.report_state
        params = {}
        for i in self.varied:
            name = self.spec.params[i]
            params[name] = {
                "estimate": _num(mean[i]),
                "std": _num(std[i]),
                "nominal": _num(self.spec.nominal[i]),
                "unit": self.spec.units[i],
                "drift": bool(rep.drift.get(name, False)) if rep else False,
            }
        doc = {
            "ts": round(now, 3),
            "model": self.spec.name,
            "variants": self.ensemble.n,
            "ess": _num(cal.ess),
            "updates": self.updates,
            "params": params,
            "fault": bool(rep.fault) if rep else False,
            "fault_outputs": [tag_of.get(o, o) for o in rep.fault_outputs] if rep else [],
        }
        return json.dumps(doc, separators=(",", ":")).encode()


def _num(x: float) -> float | None:
    return round(float(x), 6) if math.isfinite(x) else None
