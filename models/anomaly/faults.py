"""Synthetic faults injected into normal recordings, for choosing a detector configuration.

The SKAB protocol forbids choosing the configuration on the test parts, so the choice is made
on normal data with faults added here. The fault kinds follow the physical test bed (a
centrifugal pump on a motor, a valve at the pump inlet, a tank and a loop) and the fault kinds
its recordings are known to hold; each is a pattern of changes over the signals:

- `valve` (closure at the pump inlet): flow down, pressure and motor current down a little,
  vibration up (the pump starts to starve);
- `leak` (fluid lost): flow and pressure down; `addition` (fluid added): both up;
- `imbalance` (rotor): vibration (both accelerometers) up, current slightly up;
- `cavitation`: vibration up, flow down, and flow, pressure and vibration noisier;
- `hotwater`: the fluid temperature ramps up, the motor temperature follows at a third;
- `single`: one random signal (not a temperature) shifted up or down;
- `outlet` (throttling after the pump, a relation fault): the operating point climbs the pump
  curve, pressure up while flow goes down (each may stay inside its normal range), current down
  a little;
- `pulsation` (a shape fault): both accelerometers and the current oscillate about their level
  with a period of 20-90 s (a rotor rubbing once per slow load cycle); the level is unchanged;
- `noisy` (a shape fault): one random signal gets noisier (a loose sensor or connector,
  turbulence), its level unchanged;
- `creep` (a slow fault): one random signal drifts linearly through the whole fault (fouling,
  a sensor losing calibration, a slowly opening leak), reaching twice the severity at its end.

Magnitudes are in units of each signal's sample-to-sample noise on the segment's fit rows
(`noise_sigma`), drawn log-uniformly from `SEVERITY` (half to four noise sigmas, the size of
changes a window of 10-30 rows can just resolve up to clearly visible; for `noisy` and
`pulsation`, the added standard deviation and amplitude), so no magnitude comes from labelled
data. The last four kinds were added after the first selection, from the physics of the loop
alone, because every earlier kind was a change of level, which favours window means. A fault
starts 10-45 % into the scored part, lasts 35-60 % of it (SKAB's test parts are about half
anomalous) and ramps in over 0-30 s. Labels are those of SKAB's files: `anomaly` on the fault's
rows, `changepoint` at its first row and at the first row after it. Signals are matched by name;
a kind whose signals a recording lacks changes nothing of them.

Owns the fault patterns and the labelled synthetic segments; no detector code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.base import F64

A1, A2 = "Accelerometer1RMS", "Accelerometer2RMS"
CURRENT, PRESSURE, FLOW = "Current", "Pressure", "Volume Flow RateRMS"
MOTOR_T, FLUID_T, VOLTAGE = "Temperature", "Thermocouple", "Voltage"

# kind -> {signal: shift in noise sigmas per unit severity}; "noisier" and "ramp" are special.
SHIFTS: Mapping[str, Mapping[str, float]] = {
    "valve": {FLOW: -1.0, PRESSURE: -0.5, CURRENT: -0.5, A1: 0.5, A2: 0.5},
    "leak": {FLOW: -1.0, PRESSURE: -1.0},
    "addition": {FLOW: 1.0, PRESSURE: 1.0},
    "imbalance": {A1: 1.0, A2: 1.0, CURRENT: 0.3},
    "cavitation": {A1: 0.5, A2: 0.5, FLOW: -0.5},
    "hotwater": {},
    "single": {},
    "outlet": {FLOW: -1.0, PRESSURE: 1.0, CURRENT: -0.3},
    "pulsation": {},
    "noisy": {},
    "creep": {},
}
KINDS: tuple[str, ...] = tuple(SHIFTS)
NOISIER: tuple[str, ...] = (FLOW, PRESSURE, A1, A2)  # cavitation adds noise to these
SINGLE: tuple[str, ...] = (A1, A2, CURRENT, PRESSURE, VOLTAGE, FLOW)
PULSING: Mapping[str, float] = {A1: 1.0, A2: 1.0, CURRENT: 0.5}  # pulsation amplitude weights
PULSE_PERIOD_S = (20.0, 90.0)
SEVERITY = (0.5, 4.0)
HOT_RATE = 0.01  # degC/s of fluid warming per unit severity


@dataclass(frozen=True)
class Labelled:
    """A normal segment with one fault: `fit_rows` normal rows to fit on, then the scored
    part, whose labels `anomaly` and `changepoint` have `len(ts) - fit_rows` rows."""

    ts: F64
    values: F64
    fit_rows: int
    anomaly: npt.NDArray[np.int8]
    changepoint: npt.NDArray[np.int8]
    kind: str
    severity: float


def noise_sigma(values: F64) -> F64:
    """Per-signal sample-to-sample noise: robust std of first differences / sqrt(2), floored
    at half their plain std (quantised signals have a MAD of zero)."""
    d = np.diff(np.asarray(values, dtype=np.float64), axis=0) / np.sqrt(2.0)
    mad = 1.4826 * np.median(np.abs(d - np.median(d, axis=0)), axis=0)
    out: F64 = np.maximum(mad, 0.5 * d.std(axis=0)) + 1e-9
    return out


def inject(
    ts: F64,
    values: F64,
    fit_rows: int,
    columns: Sequence[str],
    *,
    rng: np.random.Generator,
    kind: str,
    severity: float,
) -> Labelled:
    """A copy of the segment with one fault of `kind` in its scored part."""
    if kind not in SHIFTS:
        raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(KINDS)}")
    x = np.array(values, dtype=np.float64)
    rows, n = x.shape[0], x.shape[0] - fit_rows
    if n < 20:
        raise ValueError(f"scored part of {n} rows is too short for a fault")
    sigma = noise_sigma(x[:fit_rows])
    start = fit_rows + int(rng.uniform(0.10, 0.45) * n)
    end = min(rows, start + int(rng.uniform(0.35, 0.60) * n))
    ramp = int(rng.uniform(0.0, 30.0))
    g = np.zeros(rows)
    g[start:end] = 1.0
    k = min(ramp, end - start)
    g[start : start + k] = np.arange(k) / max(ramp, 1)
    col = {name: i for i, name in enumerate(columns)}
    shifts = dict(SHIFTS[kind])
    profile = g
    if kind in ("single", "noisy", "creep"):
        shifts = {str(rng.choice(SINGLE)): float(rng.choice([-1.0, 1.0]))}
    if kind == "noisy":  # the chosen signal gets noisier, its level stays
        (name,) = shifts
        shifts = {}
        if name in col:
            i = col[name]
            x[:, i] += g * rng.standard_normal(rows) * sigma[i] * severity
    if kind == "creep":  # 0 at the fault's start, twice the severity at its last row
        profile = np.zeros(rows)
        profile[start:end] = 2.0 * np.arange(end - start) / max(end - start - 1, 1)
    if kind == "pulsation":
        period = rng.uniform(*PULSE_PERIOD_S)
        phase = rng.uniform(0.0, 2.0 * np.pi)
        wave = g * np.sin(2.0 * np.pi * (np.asarray(ts) - ts[start]) / period + phase)
        for name, weight in PULSING.items():
            if name in col:
                x[:, col[name]] += wave * weight * severity * sigma[col[name]]
    for name, weight in shifts.items():
        if name in col:
            x[:, col[name]] += profile * weight * severity * sigma[col[name]]
    if kind == "cavitation":
        for name in NOISIER:
            if name in col:
                i = col[name]
                x[:, i] += g * rng.standard_normal(rows) * sigma[i] * severity * 0.7
    if kind == "hotwater":
        warm = np.cumsum(g) * HOT_RATE * severity
        for name, share in ((FLUID_T, 1.0), (MOTOR_T, 0.3)):
            if name in col:
                x[:, col[name]] += share * warm
    anomaly = np.zeros(n, dtype=np.int8)
    anomaly[start - fit_rows : end - fit_rows] = 1
    changepoint = np.zeros(n, dtype=np.int8)
    changepoint[start - fit_rows] = 1
    if end < rows:
        changepoint[end - fit_rows] = 1
    return Labelled(np.asarray(ts, np.float64), x, fit_rows, anomaly, changepoint, kind, severity)


def synthetic_set(
    segments: Sequence[tuple[F64, F64, int]],
    columns: Sequence[str],
    seed: int,
    draws: int,
) -> list[Labelled]:
    """`draws` faults per normal segment `(ts, values, fit_rows)`: kind uniform over `KINDS`,
    severity log-uniform over `SEVERITY`; reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    lo, hi = np.log(SEVERITY[0]), np.log(SEVERITY[1])
    out = []
    for ts, values, fit_rows in segments:
        for _ in range(draws):
            kind = KINDS[int(rng.integers(len(KINDS)))]
            severity = float(np.exp(rng.uniform(lo, hi)))
            out.append(inject(ts, values, fit_rows, columns, rng=rng, kind=kind, severity=severity))
    return out
