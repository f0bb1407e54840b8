"""Benchmark metrics against hand-computed cases, including the NAB window edge rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.anomaly import metrics as m


def series(n: int, cps: list[int], on: list[tuple[int, int]]) -> tuple[np.ndarray, ...]:
    """1 Hz timestamps, changepoint labels at `cps`, prediction 1 on each [start, stop)."""
    ts = 1000.0 + np.arange(n, dtype=float)
    cp = np.zeros(n, dtype=int)
    cp[cps] = 1
    pred = np.zeros(n, dtype=int)
    for a, b in on:
        pred[a:b] = 1
    return ts, cp, pred


def test_outlier_rates_by_hand() -> None:
    """TP=2, FP=1, FN=1, TN=2 give F1 2/3, FAR 33.3 %, MAR 33.3 %."""
    c = m.outlier_counts([0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 1, 0])
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 1, 1, 2)
    assert c.f1 == pytest.approx(2 / 3)
    assert c.far == pytest.approx(100 / 3)
    assert c.mar == pytest.approx(100 / 3)


def test_outlier_counts_add_before_rates() -> None:
    """Counts of two files add up; rates come from the sums, not averages of rates."""
    total = m.outlier_counts([1, 1], [1, 0]) + m.outlier_counts([0, 0, 0, 0], [1, 0, 0, 0])
    assert total.far == pytest.approx(25.0)
    assert total.mar == pytest.approx(50.0)


def test_empty_denominators_are_nan() -> None:
    """Without normal rows FAR is undefined; with nothing to find and nothing found F1 too."""
    assert math.isnan(m.outlier_counts([1, 1], [1, 1]).far)
    assert math.isnan(m.outlier_counts([0, 0], [0, 0]).f1)


def test_rejects_non_binary() -> None:
    """A prediction of 2 is refused."""
    with pytest.raises(ValueError, match="only 0 and 1"):
        m.outlier_counts([0, 1], [0, 2])


def test_sigmoid_fixed_points() -> None:
    """The TP scale is A_tp at the window start, halfway at mid-window, A_fp at the end."""
    assert m.sigmoid(0.0) == pytest.approx(1.0)
    assert m.sigmoid(0.5) == pytest.approx(0.5)
    assert m.sigmoid(1.0) == pytest.approx(0.0, abs=1e-12)
    assert m.tp_score(30, 60, m.STANDARD) == pytest.approx(-0.11 + 1.11 * 0.5)
    assert m.tp_score(60, 60, m.LOW_FP) == pytest.approx(-0.22)


def test_detection_at_changepoint_is_perfect() -> None:
    """An alarm raised exactly at the changepoint scores 100 in every profile."""
    r = m.changepoint_result(*series(200, [50], [(50, 120)]))
    assert r.delays_s == (0.0,)
    # the clear at row 120 lies outside the window [50, 110]: one false positive
    assert r.false_positives == 1
    assert r.score(m.STANDARD) == pytest.approx(100 * (1 - 0.11 + 1) / 2)


def test_half_window_delay_and_false_positive_by_hand() -> None:
    """Delay 30 s scores 0.445; a clear outside the window costs A_fp: S = 0.335."""
    r = m.changepoint_result(*series(200, [50], [(80, 150)]))
    assert r.delays_s == (30.0,)
    assert r.false_positives == 1
    s = -0.11 + 1.11 * 0.5 - 0.11
    assert r.raw_score(m.STANDARD) == pytest.approx(s)
    assert r.score(m.STANDARD) == pytest.approx(100 * (s + 1) / 2)
    assert r.mean_delay_s == pytest.approx(30.0)


def test_window_end_is_included() -> None:
    """A detection exactly W = 60 s after the changepoint is a TP scoring A_fp."""
    r = m.changepoint_result(*series(200, [50], [(110, 200)]))
    assert r.delays_s == (60.0,) and r.false_positives == 0
    assert r.score(m.STANDARD) == pytest.approx(100 * (-0.11 + 1) / 2)


def test_one_second_after_window_is_false_positive_and_miss() -> None:
    """At 61 s the detection is outside: a miss (-1) and a false positive (-0.11)."""
    r = m.changepoint_result(*series(200, [50], [(111, 200)]))
    assert r.missed == 1 and r.false_positives == 1
    assert r.score(m.STANDARD) == pytest.approx(100 * (-1.11 + 1) / 2)
    assert math.isnan(r.mean_delay_s)


def test_detection_before_changepoint_is_false_positive() -> None:
    """Windows extend to the right only: one second early is a false positive."""
    r = m.changepoint_result(*series(200, [50], [(49, 52)]))
    assert r.false_positives == 1
    # the clear at row 52 is the first detection inside the window
    assert r.delays_s == (2.0,)


def test_only_first_detection_in_window_counts() -> None:
    """Raise at 55 and clear at 70, both in the window: one TP, no false positive."""
    r = m.changepoint_result(*series(200, [50], [(55, 70)]))
    assert r.delays_s == (5.0,) and r.false_positives == 0


def test_overlapping_windows_are_cut_at_next_changepoint() -> None:
    """Changepoints at 10 and 40: a detection at 45 belongs to the second, the first is
    missed; a detection at 39 belongs to the first."""
    late = m.changepoint_result(*series(200, [10, 40], [(45, 200)]))
    assert late.delays_s[1] == 5.0 and math.isnan(late.delays_s[0])
    early = m.changepoint_result(*series(200, [10, 40], [(39, 200)]))
    assert early.delays_s[0] == 29.0 and math.isnan(early.delays_s[1])
    at_next = m.changepoint_result(*series(200, [10, 40], [(40, 200)]))
    assert at_next.delays_s[1] == 0.0 and math.isnan(at_next.delays_s[0])


def test_window_in_seconds_not_rows() -> None:
    """With a 30 s gap after the changepoint, row 52 is 61 s later: outside the window."""
    ts, cp, pred = series(100, [50], [(52, 100)])
    ts[51:] += 30.0
    ts[52:] += 29.0
    r = m.changepoint_result(ts, cp, pred)
    assert r.missed == 1 and r.false_positives == 1


def test_first_row_is_never_a_detection() -> None:
    """A series that starts in alarm detects nothing at its first row."""
    assert m.detections([1, 1, 0, 0, 1]).tolist() == [2, 4]


def test_low_fn_profile_by_hand() -> None:
    """LowFN: one miss (-2) and one false positive (-0.11): 100 * (-2.11 + 2) / 3."""
    r = m.changepoint_result(*series(200, [50], [(150, 200)]))
    assert r.score(m.LOW_FN) == pytest.approx(100 * (-0.11) / 3)
    assert r.score(m.LOW_FP) == pytest.approx(100 * (-1.22 + 1) / 2)


def test_null_detector_scores_zero_and_no_changepoint_is_nan() -> None:
    """Never alarming scores 0; a file without a changepoint has no NAB score."""
    null = m.changepoint_result(*series(100, [20, 60], []))
    assert null.score(m.STANDARD) == 0.0 and null.missed == 2
    assert math.isnan(m.changepoint_result(*series(50, [], [(10, 20)])).score(m.STANDARD))


def test_files_are_summed_before_normalising() -> None:
    """Two files: one perfect, one missed: (1 - 1 - (-2)) / (2 - (-2)) = 50."""
    a = m.changepoint_result(*series(100, [20], [(20, 100)]))
    b = m.changepoint_result(*series(100, [20], []))
    assert m.total([a, b]).score(m.STANDARD) == pytest.approx(50.0)


def test_summary_keys_and_json_nulls() -> None:
    """The summary has the benchmark's keys; an undefined delay is None."""
    s = m.summary(m.outlier_counts([0, 1], [0, 0]), m.changepoint_result(*series(10, [3], [])))
    for key in (
        "f1",
        "far",
        "mar",
        "nab_standard",
        "nab_lowfp",
        "nab_lowfn",
        "missed_changepoints",
        "false_positives",
        "mean_delay_s",
    ):
        assert key in s
    assert s["mean_delay_s"] is None and s["missed_changepoints"] == 1
