"""Online calibration: posterior convergence, drift tracking, fault vs drift, weights, invalids.

The plant is a closed-form two-output system with known parameters (gain a, offset b):

    y0 = a u + b,    y1 = 0.5 a u - b,    u(t) = 5.5 + 4.5 sin(2 pi t / 37 s)

so each variant's prediction is exact arithmetic and the truth is known. An offset on y1 alone
cannot be explained by any (a, b): matching y0 for every u pins both parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

from models.process.calibrate import Calibrator
from models.process.drift import DriftMonitor, DriftReport

NAMES = ("a", "b")
OUTPUTS = ("y0", "y1")
SIGMA = np.array([0.05, 0.05])
TRUE_A, TRUE_B = 2.0, 1.0
DT = 0.5
ALL = np.array([True, True])


def predict(params: np.ndarray, u: float) -> np.ndarray:
    """Every variant's outputs at input u, shape (N, 2)."""
    a, b = params[:, 0], params[:, 1]
    return np.stack([a * u + b, 0.5 * a * u - b], axis=1)


def drive(t: float) -> float:
    """The input signal at time t."""
    return 5.5 + 4.5 * math.sin(2 * math.pi * t / 37.0)


def prior(n: int, seed: int) -> np.ndarray:
    """N variants drawn uniformly over a in [1, 3], b in [0, 2]."""
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(1.0, 3.0, n), rng.uniform(0.0, 2.0, n)])


def make(n: int = 500, seed: int = 0, **kw: float) -> Calibrator:
    """A calibrator over the prior, bounded to a in [0, 10], b in [-5, 5]."""
    return Calibrator(NAMES, prior(n, seed), SIGMA, lo=[0.0, -5.0], hi=[10.0, 5.0], seed=seed, **kw)


@dataclass
class Run:
    """What a simulated run saw: reports per tick and the true a over time."""

    reports: list[DriftReport] = field(default_factory=list)
    true_a: list[float] = field(default_factory=list)


def simulate(
    cal: Calibrator,
    mon: DriftMonitor,
    seconds: float,
    *,
    a_of_t: Callable[[float], float] = lambda t: TRUE_A,
    offset_of_t: Callable[[float], np.ndarray] = lambda t: np.zeros(2),
    seed: int = 1,
) -> Run:
    """Feed the calibrator and the monitor with noisy plant measurements, one tick per DT."""
    rng = np.random.default_rng(seed)
    run = Run()
    for k in range(int(seconds / DT)):
        t = k * DT
        u = drive(t)
        a = a_of_t(t)
        y = np.array([a * u + TRUE_B, 0.5 * a * u - TRUE_B])
        y = y + rng.standard_normal(2) * SIGMA + offset_of_t(t)
        cal.update(predict(cal.params, u), y, ALL, DT)
        run.reports.append(mon.observe(t, cal))
        run.true_a.append(a)
    return run


def test_posterior_converges_to_the_true_parameters() -> None:
    """From a wide prior the posterior mean lands within 0.5 % (a) and 0.02 (b) of the truth."""
    cal = make()
    mon = DriftMonitor(NAMES, OUTPUTS)
    run = simulate(cal, mon, 900.0)
    est = cal.estimate()
    a_mean, a_std = est["a"]
    b_mean, b_std = est["b"]
    assert abs(a_mean - TRUE_A) < 0.005 * TRUE_A
    assert abs(b_mean - TRUE_B) < 0.02
    # The posterior narrowed from the prior (std 0.58) but did not collapse.
    assert 1e-4 < a_std < 0.02
    assert 1e-3 < b_std < 0.1
    assert abs(a_mean - TRUE_A) < 3 * a_std
    # Stationary plant: after the first minute, never drift and never fault.
    later = run.reports[int(60 / DT) :]
    assert not any(r.fault for r in later)
    assert not any(any(r.drift.values()) for r in later)


def test_slow_drift_is_followed_and_flagged_as_drift_not_fault() -> None:
    """a falling 1 %/min is tracked within 0.02, flagged as drift on a only, never as fault."""
    cal = make()
    mon = DriftMonitor(NAMES, OUTPUTS, window_s=600.0)

    def ageing(t: float) -> float:
        return TRUE_A * (1.0 - 0.01 * t / 60.0)

    run = simulate(cal, mon, 1200.0, a_of_t=ageing)
    a_mean, _ = cal.estimate()["a"]
    assert abs(a_mean - run.true_a[-1]) < 0.02
    assert abs(cal.estimate()["b"][0] - TRUE_B) < 0.05
    last = run.reports[-1]
    assert last.drift == {"a": True, "b": False}
    assert last.change["a"] < -3.0
    assert not any(r.fault for r in run.reports[int(60 / DT) :])
    assert cal.resamples > 10  # the cloud moved by resampling, not by luck


def test_unexplained_offset_is_a_fault_on_that_output_not_drift() -> None:
    """A 10-sigma offset on y1 alone is a fault on y1 within 10 s; parameters stay put."""
    cal = make()
    mon = DriftMonitor(NAMES, OUTPUTS)
    onset = 300.0

    def sensor_offset(t: float) -> np.ndarray:
        return np.array([0.0, 0.5 if t >= onset else 0.0])

    run = simulate(cal, mon, 900.0, offset_of_t=sensor_offset)
    before = run.reports[: int(onset / DT)]
    after = run.reports[int((onset + 10.0) / DT) :]
    assert not any(r.fault for r in before[int(60 / DT) :])
    assert all(r.fault and r.fault_outputs == ("y1",) for r in after)
    assert not any(any(r.drift.values()) for r in run.reports)
    # Only y0 informs now, so the posterior is wider; a least-squares fit that took the offset
    # in would have moved a by +0.044 and b by -0.31.
    est = cal.estimate()
    assert abs(est["a"][0] - TRUE_A) < 0.01
    assert abs(est["b"][0] - TRUE_B) < 0.08
    assert cal.used.tolist() == [True, False]  # y1 is gated out of the weight update


def test_fault_clears_when_the_offset_goes_away() -> None:
    """Once the offset is removed the fault clears and y1 is weighed again."""
    cal = make()
    mon = DriftMonitor(NAMES, OUTPUTS)

    def pulse(t: float) -> np.ndarray:
        return np.array([0.0, 0.5 if 200.0 <= t < 260.0 else 0.0])

    run = simulate(cal, mon, 320.0, offset_of_t=pulse)
    assert run.reports[int(250 / DT)].fault
    assert not run.reports[-1].fault
    assert cal.used.tolist() == [True, True]


def test_resampling_keeps_weights_finite_with_diverged_variants() -> None:
    """Tiny sigma, NaN/inf predictions: weights stay finite and normalised, indices are valid."""
    n = 200
    cal = Calibrator(NAMES, prior(n, 3), [1e-6, 1e-6], seed=3)
    rng = np.random.default_rng(4)
    seen_resample = False
    for k in range(400):
        u = drive(k * DT)
        pred = predict(cal.params, u)
        pred[:5, 0] = np.nan  # five variants diverged
        pred[5:8, 1] = np.inf
        y = np.array([TRUE_A * u + TRUE_B, 0.5 * TRUE_A * u - TRUE_B]) + rng.normal(0, 1e-6, 2)
        cal.update(pred, y, ALL, DT)
        w = cal.weights
        assert np.isfinite(w).all()
        assert math.isclose(w.sum(), 1.0, rel_tol=1e-9)
        assert 1.0 <= cal.ess <= n
        assert np.isfinite(cal.params).all()
        if cal.resampled is not None:
            seen_resample = True
            assert cal.resampled.shape == (n,)
            assert ((cal.resampled >= 0) & (cal.resampled < n)).all()
            assert (np.diff(cal.resampled) >= 0).all()  # systematic: sorted draws
    assert seen_resample


def test_diverged_variants_lose_their_weight() -> None:
    """Variants predicting NaN or inf end up with (almost) no weight; the rest share it."""
    cal = Calibrator(NAMES, prior(100, 10), SIGMA, ess_frac=1e-9)
    for k in range(20):
        u = drive(k * DT)
        pred = predict(cal.params, u)
        pred[:5, 0] = np.nan
        pred[5:8, 1] = -np.inf
        y = np.array([TRUE_A * u + TRUE_B, 0.5 * TRUE_A * u - TRUE_B])
        cal.update(pred, y, ALL, DT)
    assert cal.resampled is None
    assert cal.weights[:8].sum() < 1e-6
    assert math.isclose(cal.weights[8:].sum(), 1.0, rel_tol=1e-6)


def test_invalid_and_nan_outputs_are_ignored() -> None:
    """Garbage in invalid or NaN outputs changes nothing compared with clean invalid ones."""
    clean, dirty = make(seed=5), make(seed=5)
    rng = np.random.default_rng(6)
    valid = np.array([True, False])
    for k in range(300):
        u = drive(k * DT)
        y = np.array([TRUE_A * u + TRUE_B, 0.0]) + rng.standard_normal(2) * SIGMA
        clean.update(predict(clean.params, u), y, valid, DT)
        garbage = y.copy()
        garbage[1] = 1e9 if k % 2 else np.nan
        # NaN in a "valid" output is treated as invalid too.
        flags = valid if k % 2 else ALL
        dirty.update(predict(dirty.params, u), garbage, flags, DT)
    np.testing.assert_array_equal(clean.weights, dirty.weights)
    np.testing.assert_array_equal(clean.params, dirty.params)
    assert math.isnan(dirty.residual_z[1])
    assert dirty.used.tolist() == [True, False]


def test_one_update_matches_the_documented_formula() -> None:
    """Log-weights after one tick equal the written-out forgetting and Huber formula."""
    n = 50
    params = prior(n, 7)
    cal = Calibrator(NAMES, params, SIGMA, forgetting_s=30.0, huber=3.0, ess_frac=1e-9)
    u, dt = 4.0, 0.5
    y = np.array([TRUE_A * u + TRUE_B, 0.5 * TRUE_A * u - TRUE_B])
    cal.update(predict(params, u), y, ALL, dt)
    r = np.abs((y - predict(params, u)) / SIGMA)
    rho = np.where(r <= 3.0, 0.5 * r**2, 3.0 * (r - 1.5)).sum(axis=1)
    logw = -(1.0 - math.exp(-dt / 30.0)) * rho
    expected = np.exp(logw - logw.max())
    np.testing.assert_allclose(cal.weights, expected / expected.sum(), rtol=1e-9)
    assert cal.resampled is None


def test_resampling_respects_bounds_and_reports_indices() -> None:
    """Jittered parameters stay within lo/hi; `resampled` is set only on the resampling tick."""
    cal = Calibrator(NAMES, prior(300, 8), SIGMA, lo=[1.9, 0.9], hi=[2.1, 1.1], seed=8)
    u = 3.0
    y = np.array([TRUE_A * u + TRUE_B, 0.5 * TRUE_A * u - TRUE_B])
    flags = []
    for _ in range(200):
        cal.update(predict(cal.params, u), y, ALL, DT)
        flags.append(cal.resampled is not None)
    assert any(flags) and not all(flags)
    assert (cal.params[:, 0] >= 1.9).all() and (cal.params[:, 0] <= 2.1).all()
    assert (cal.params[:, 1] >= 0.9).all() and (cal.params[:, 1] <= 1.1).all()
    assert cal.resamples == sum(flags)


def test_drift_monitor_waits_for_half_a_window() -> None:
    """No drift verdict (change NaN) before half the window is covered."""
    mon = DriftMonitor(NAMES, OUTPUTS, window_s=100.0, points=10)
    std = np.array([0.01, 0.01])
    for t in range(0, 40, 10):
        rep = mon.update(float(t), np.array([1.0 + t, 0.0]), std, np.zeros(2))
        assert math.isnan(rep.change["a"]) and not rep.drift["a"]
    rep = mon.update(60.0, np.array([61.0, 0.0]), std, np.zeros(2))
    assert rep.drift == {"a": True, "b": False}


def test_drift_monitor_fault_hysteresis_and_nan() -> None:
    """Fault rises above fault_z, holds above clear_z, ignores NaN z, clears below clear_z."""
    mon = DriftMonitor(NAMES, OUTPUTS, fault_z=3.0, clear_z=2.0)
    m, s = np.zeros(2), np.ones(2)
    assert not mon.update(0.0, m, s, np.array([2.9, 0.0])).fault
    assert mon.update(1.0, m, s, np.array([-3.5, 0.0])).fault_outputs == ("y0",)
    assert mon.update(2.0, m, s, np.array([2.5, 0.0])).fault
    assert mon.update(3.0, m, s, np.array([np.nan, 0.0])).fault
    assert not mon.update(4.0, m, s, np.array([1.0, 0.0])).fault


def test_bad_shapes_are_rejected() -> None:
    """Wrong shapes or settings raise ValueError with the offending name."""
    with pytest.raises(ValueError, match="params"):
        Calibrator(NAMES, np.zeros((4, 3)), SIGMA)
    with pytest.raises(ValueError, match="sigma"):
        Calibrator(NAMES, prior(4, 0), [0.0, 1.0])
    cal = make(n=4)
    with pytest.raises(ValueError, match="predictions"):
        cal.update(np.zeros((3, 2)), np.zeros(2), ALL, DT)
    with pytest.raises(ValueError, match="dt"):
        cal.update(np.zeros((4, 2)), np.zeros(2), ALL, -1.0)
