"""The CUSUM/EWMA residual detector: false alarms, detection delay, NaN safety, reset, whitening."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.anomaly.cusum import Cusum, Mode


def onsets(scores: np.ndarray) -> np.ndarray:
    """Number of alarm onsets (score crossing up through 1.0) per output column."""
    alarm = scores >= 1.0
    counts: np.ndarray = (alarm[1:] & ~alarm[:-1]).sum(axis=0) + alarm[0]
    return counts


@pytest.mark.parametrize("mode", ["cusum", "ewma"])
def test_false_alarm_rate_on_white_noise(mode: Mode) -> None:
    """100k white-noise samples per output: at most 40 alarm onsets, under 0.2 % time in alarm.

    Theory for known moments (k = 0.5, h = 8): one onset per ~9,500 samples (~11 per 100k);
    learning the moments online adds a little. 40 per 100k is an ARL0 of 2,500 samples.
    """
    rng = np.random.default_rng(11)
    scale = np.array([0.01, 1.0, 3.0, 250.0])
    offset = np.array([0.0, -2.0, 5.0, 1e3])
    residuals = rng.standard_normal((100_000, 4)) * scale + offset
    det = Cusum(4, mode=mode)
    scores = det.run(residuals)
    learned = scores[det.warmup :]
    assert np.isfinite(learned).all()
    assert (onsets(learned) <= 40).all()
    assert ((learned >= 1.0).mean(axis=0) < 0.002).all()
    np.testing.assert_allclose(det.std, scale, rtol=0.1)


def test_one_sigma_shift_is_detected_within_about_16_samples() -> None:
    """A 1-std mean shift: mean delay <= 20 samples, 95th percentile <= 40 (theory: ARL1 16.3)."""
    rng = np.random.default_rng(12)
    delays = []
    for _ in range(200):
        det = Cusum(1)
        det.fit(rng.standard_normal((2_000, 1)))
        det.run(rng.standard_normal((300, 1)))
        det.reset()
        scores = det.run(rng.standard_normal((400, 1)) + 1.0)[:, 0]
        assert (scores >= 1.0).any()
        delays.append(int(np.argmax(scores >= 1.0)) + 1)
    assert np.mean(delays) <= 20
    assert np.percentile(delays, 95) <= 40


def test_shift_on_one_output_alarms_only_that_output() -> None:
    """Outputs are independent: a 2-std shift on output 1 leaves outputs 0 and 2 quiet."""
    rng = np.random.default_rng(13)
    det = Cusum(3)
    det.fit(rng.standard_normal((1_000, 3)))
    shifted = rng.standard_normal((200, 3)) + np.array([0.0, 2.0, 0.0])
    scores = det.run(shifted)
    assert (scores[-50:, 1] >= 1.0).all()
    assert (scores[:, [0, 2]] < 1.0).all()
    assert det.s_pos[1] > det.h and det.s_neg[1] == 0.0


def test_negative_shift_is_caught_by_the_lower_sum() -> None:
    """A downward shift raises S- (not S+) and the EWMA goes negative."""
    rng = np.random.default_rng(14)
    det = Cusum(1)
    det.fit(rng.standard_normal((1_000, 1)))
    det.run(rng.standard_normal((100, 1)) - 2.0)
    assert det.s_neg[0] > det.h
    assert det.s_pos[0] == 0.0
    assert det.ewma[0] < 0.0


def test_nan_and_invalid_residuals_leave_state_unchanged() -> None:
    """NaN or invalid residuals score NaN and change no sum nor moment; others still score."""
    rng = np.random.default_rng(15)
    det = Cusum(3)
    det.run(rng.standard_normal((500, 3)))
    det.update(np.array([3.0, 3.0, 3.0]))
    before = (det.mean, det.std, det.s_pos, det.s_neg, det.ewma)
    score = det.update(np.array([np.nan, 1e12, 0.5]), np.array([True, False, True]))
    assert math.isnan(score[0]) and math.isnan(score[1]) and math.isfinite(score[2])
    after = (det.mean, det.std, det.s_pos, det.s_neg, det.ewma)
    for b, a in zip(before, after, strict=True):
        np.testing.assert_array_equal(b[:2], a[:2])
    score = det.update(np.array([np.inf, -np.inf, 0.0]))
    assert math.isnan(score[0]) and math.isnan(score[1])
    assert np.isfinite(det.update(np.zeros(3))).all()


def test_scores_are_nan_during_warmup_then_finite() -> None:
    """Without `fit`, the first `warmup` valid samples learn the moments and score NaN."""
    rng = np.random.default_rng(16)
    det = Cusum(2, warmup=50)
    scores = det.run(rng.standard_normal((80, 2)))
    assert np.isnan(scores[:50]).all()
    assert np.isfinite(scores[50:]).all()
    assert det.ready.all()


def test_fit_scores_from_the_first_sample() -> None:
    """After `fit` the moments match the data and the first residual is already scored."""
    rng = np.random.default_rng(17)
    data = rng.standard_normal((5_000, 2)) * np.array([3.0, 0.1]) + np.array([5.0, -1.0])
    data[::7, 0] = np.nan
    det = Cusum(2)
    det.fit(data)
    np.testing.assert_allclose(det.mean, [5.0, -1.0], atol=0.1)
    np.testing.assert_allclose(det.std, [3.0, 0.1], rtol=0.05)
    assert np.isfinite(det.update(np.array([5.0, -1.0]))).all()


def test_alarm_freezes_the_whitening() -> None:
    """A persistent 3-std shift is not learned as normal: the mean stays, the alarm holds."""
    rng = np.random.default_rng(18)
    det = Cusum(1, adapt_samples=200)
    det.fit(rng.standard_normal((1_000, 1)))
    scores = det.run(rng.standard_normal((5_000, 1)) + 3.0)[:, 0]
    assert (scores[100:] >= 1.0).all()
    assert abs(det.mean[0]) < 0.1


def test_spikes_do_not_inflate_the_scale() -> None:
    """A 6-std spike moves the std by < 5 % (z clipped at 4; unclipped: +8 %); a huge one by 0."""
    rng = np.random.default_rng(19)
    det = Cusum(1, adapt_samples=200)
    det.fit(rng.standard_normal((2_000, 1)))
    std0, mean0 = det.std[0], det.mean[0]
    det.update(np.array([mean0 + 6.0 * std0]))
    assert 0.0 < det.std[0] - std0 < 0.05 * std0
    det.reset()
    std1 = det.std[0]
    det.update(np.array([1e6]))  # scores far above 1: the alarm freezes the moments
    assert det.std[0] == std1


def test_reset_clears_the_sums_and_optionally_the_moments() -> None:
    """`reset` zeroes S+, S-, EWMA; with forget_stats the warm-up starts again."""
    rng = np.random.default_rng(20)
    det = Cusum(2, warmup=30)
    det.run(rng.standard_normal((200, 2)))
    det.run(rng.standard_normal((60, 2)) + 3.0)
    assert (det.cusum_score >= 1.0).all()
    mean = det.mean
    det.reset()
    assert (det.s_pos == 0).all() and (det.s_neg == 0).all() and (det.ewma == 0).all()
    np.testing.assert_array_equal(det.mean, mean)
    assert (det.update(np.zeros(2)) < 0.2).all()
    det.reset(forget_stats=True)
    assert not det.ready.any()
    assert np.isnan(det.update(np.zeros(2))).all()


def test_run_equals_update_row_by_row() -> None:
    """The batch path gives exactly the scores of calling `update` per row."""
    rng = np.random.default_rng(21)
    r = rng.standard_normal((600, 3))
    r[100:400, 2] += 2.0
    r[50:60, 0] = np.nan
    valid = rng.random((600, 3)) > 0.05
    a, b = Cusum(3, mode="max", warmup=40), Cusum(3, mode="max", warmup=40)
    batch = a.run(r, valid)
    rows = np.array([b.update(r[t], valid[t]) for t in range(len(r))])
    np.testing.assert_array_equal(batch, rows)


def test_modes_and_explanation_are_consistent() -> None:
    """The "max" score is the larger of the CUSUM and EWMA scores kept for explanation."""
    rng = np.random.default_rng(22)
    det = Cusum(2, mode="max")
    det.fit(rng.standard_normal((500, 2)))
    for row in rng.standard_normal((50, 2)) + 0.8:
        score = det.update(row)
        np.testing.assert_allclose(score, np.maximum(det.cusum_score, det.ewma_score))
    np.testing.assert_allclose(det.cusum_score, np.maximum(det.s_pos, det.s_neg) / det.h)


def test_bad_arguments_are_rejected() -> None:
    """Invalid settings and shapes raise ValueError."""
    with pytest.raises(ValueError, match="n_out"):
        Cusum(0)
    with pytest.raises(ValueError, match="mode"):
        Cusum(2, mode="median")  # type: ignore[arg-type]  # the wrong value is the test
    det = Cusum(2)
    with pytest.raises(ValueError, match="residual"):
        det.update(np.zeros(3))
    with pytest.raises(ValueError, match="at least 2"):
        det.fit(np.full((10, 2), np.nan))
