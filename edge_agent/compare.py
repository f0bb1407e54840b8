"""Compare reality with the Digital Original, once per tick.

Each tick the model is stepped from the last good values of its input tags (actuator commands,
setpoints) and its predicted outputs are compared with the measured ones. The model's clock is
the plant's, not the agent's: it advances by the time between the newest source timestamps of
the model's tags at this tick and at the previous step, so jitter of the tick, a late tick and a
PLC that publishes late are all integrated over the time that really passed. A tick that brings
no newer sample does not step the model (there is nothing new to compare): it returns the
previous result again, with `step_info` None. The residuals of the last `window` steps feed
the anomaly detector, which gives one score per output.

Rules that keep a hiccup from turning into an alarm storm or a poisoned model:
- BAD samples never reach the model: inputs hold their last good value (`ProcessImage`), the
  prediction is marked "uncertain", and after `max_input_age_s` it is withdrawn ("none").
- An output's score is only computed once it has `window` consecutive comparable residuals
  (GOOD measurement, all inputs GOOD); while an input is BAD nothing is scored.
- After each comparison the model's observer pulls its slow states towards the comparable
  measurements (`ProcessModel.observe`), so slow model error does not accumulate.
- The model state is re-synchronised from measurements at start, when an output returns after
  being BAD for `resync_after_s`, after a gap in the samples' time longer than `max_gap_s` (or a
  clock that went backwards), and on demand (`request_resync`, SIGUSR1 on the agent).
- Beside the ONNX score, the residuals are whitened and run through a per-output CUSUM
  (`models.anomaly.cusum`): a fast, explainable second score, 1.0 = its threshold.

`residual_series` runs the same arithmetic over a recording, so the detector is trained on
exactly the residuals the live agent computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge_agent.image import ProcessImage
from models.anomaly.cusum import Cusum
from models.base import F64, Detector, ProcessModel


@dataclass(frozen=True, slots=True)
class StepInfo:
    """What the comparator used on this tick, so the ensemble sees exactly the same."""

    now: float
    held_inputs: F64
    dt: float
    measured: F64
    comparable: npt.NDArray[np.bool_]
    resynced: bool


PREDICTION_GOOD, PREDICTION_UNCERTAIN, PREDICTION_NONE = "good", "uncertain", "none"
MIN_STEP_S = 1e-3
"""Samples newer than the last step by less than this are not a new step."""


@dataclass(slots=True)
class CompareResult:
    """Per tick, arrays over the model's outputs (NaN where not available).

    `prediction` is "good", "uncertain" (some input is BAD: its last good value is held) or
    "none" (an input has been BAD longer than `max_input_age_s`, or was never seen).
    """

    predicted: F64
    residual: F64
    score: npt.NDArray[np.float32]
    cusum: F64
    inputs_good: bool
    resynced: bool
    prediction: str = PREDICTION_GOOD


class Comparator:
    """Steps the model each tick and scores the residual window."""

    def __init__(
        self,
        model: ProcessModel,
        detector: Detector | None,
        image: ProcessImage,
        input_tags: list[str],
        output_tags: list[str],
        *,
        resync_after_s: float = 1.0,
        max_gap_s: float = 5.0,
        max_input_age_s: float = 30.0,
    ) -> None:
        self.model = model
        self.detector = detector
        self.image = image
        self.input_tags = input_tags
        self.output_tags = output_tags
        self.in_idx = np.array([image.index[t] for t in input_tags], dtype=np.intp)
        self.out_idx = np.array([image.index[t] for t in output_tags], dtype=np.intp)
        self.model_idx = np.concatenate([self.in_idx, self.out_idx])
        self.resync_after_s = resync_after_s
        self.max_gap_s = max_gap_s
        self.max_input_age_s = max_input_age_s
        self.cusum = Cusum(len(output_tags))
        self.step_info: StepInfo | None = None
        self._resync_requested = False
        n_out = len(output_tags)
        w = detector.window if detector is not None else 1
        self.window = np.zeros((w, n_out), dtype=np.float32)
        self.valid_run = np.zeros(n_out, dtype=np.int64)
        self.bad_since = np.full(n_out, np.nan)
        self.last_ts: float | None = None
        self.prev_inputs: F64 | None = None
        self.started = False
        self.resyncs = 0
        self._nan_out = np.full(n_out, np.nan)
        self._nan_score = np.full(n_out, np.nan, dtype=np.float32)
        self._last: CompareResult | None = None
        self.held_ticks = 0

    def request_resync(self) -> None:
        """Re-initialise the model from measurements on the next tick (on demand)."""
        self._resync_requested = True

    def _resync(self, inputs: F64, measured: F64) -> None:
        self.model.reset(inputs, measured)
        self.valid_run[:] = 0
        self.window[:] = 0.0
        self.cusum.reset()
        self.resyncs += 1
        self._resync_requested = False

    def tick(self, now: float) -> CompareResult:
        """Advance the model to `now` (Unix seconds) and compare with the process image."""
        img = self.image
        inputs = img.good_value[self.in_idx]
        q_ok = img.quality != 2
        inputs_good = bool(q_ok[self.in_idx].all())
        out_ok = q_ok[self.out_idx]
        measured = np.where(out_ok, img.value[self.out_idx], np.nan)

        if not np.isfinite(inputs).all():
            # Some input has never been seen GOOD: nothing to drive the model with yet.
            self.last_ts = None
            self.step_info = None
            return CompareResult(
                self._nan_out, self._nan_out, self._nan_score, self._nan_out, False, False,
                PREDICTION_NONE,
            )  # fmt: skip

        # Track outages per output, to know when one comes back after a long one.
        returning = out_ok & np.isfinite(self.bad_since)
        long_outage = returning & (now - self.bad_since >= self.resync_after_s)
        self.bad_since[returning] = np.nan
        self.bad_since[~out_ok & ~np.isfinite(self.bad_since)] = now

        # The plant's clock: the newest source timestamp among the model's tags.
        t_data = float(img.source_ts[self.model_idx].max())
        dt = 0.0 if self.last_ts is None else t_data - self.last_ts
        if (
            self.started
            and self._last is not None
            and 0.0 <= dt < MIN_STEP_S
            and not self._resync_requested
            and not long_outage.any()
        ):
            self.step_info = None  # no newer sample: nothing to integrate or compare
            self.held_ticks += 1
            return self._last
        resync = (
            not self.started
            or self._resync_requested
            or bool(long_outage.any())
            or dt > self.max_gap_s
            or dt < 0
        )
        if resync:
            self._resync(inputs, measured)
            self.started = True
            dt = 0.0
        self.last_ts = t_data
        # Zero-order hold: over the interval just ended the plant saw the previous inputs.
        held = inputs if resync or self.prev_inputs is None else self.prev_inputs
        predicted = self.model.step(held, dt)
        self.prev_inputs = inputs.copy()
        prediction = PREDICTION_GOOD
        if not inputs_good:
            bad_in = ~q_ok[self.in_idx]
            age = now - float(img.good_ts[self.in_idx][bad_in].min())
            prediction = PREDICTION_NONE if age > self.max_input_age_s else PREDICTION_UNCERTAIN
            if prediction == PREDICTION_NONE:
                predicted = self._nan_out
        residual = measured - predicted

        comparable = out_ok & inputs_good & np.isfinite(residual)
        self.model.observe(np.where(comparable, measured, np.nan), dt)
        self.step_info = StepInfo(now, held, dt, measured, comparable, resync)
        cusum = self.cusum.update(np.where(comparable, residual, np.nan), comparable)
        self.valid_run = np.where(comparable, self.valid_run + 1, 0)
        self.window[:-1] = self.window[1:]
        self.window[-1] = np.where(comparable, residual, 0.0)

        score = self._nan_score
        if self.detector is not None and (self.valid_run >= len(self.window)).any():
            raw = self.detector.score(self.window)
            score = np.where(self.valid_run >= len(self.window), raw, np.nan).astype(np.float32)
        self._last = CompareResult(
            predicted, residual, score, cusum, inputs_good, resync, prediction
        )
        return self._last


def residual_series(model: ProcessModel, ts: F64, inputs: F64, outputs: F64) -> F64:
    """Residuals (measured - predicted) over a recording, as the live `Comparator` computes them.

    `ts` has shape (T,), `inputs` (T, n_in) in `model.input_names` order, `outputs` (T, n_out) in
    `model.output_names` order. The model is reset from the first row; each later row steps it
    by the time since the previous row with the previous row's inputs held (zero-order hold).
    Rows after non-finite inputs give NaN residuals.
    """
    n = len(ts)
    res = np.full((n, outputs.shape[1]), np.nan)
    if n == 0:
        return res
    model.reset(inputs[0], outputs[0])
    res[0] = outputs[0] - model.step(inputs[0], 0.0)
    for k in range(1, n):
        if not np.isfinite(inputs[k - 1]).all():
            continue
        dt = float(ts[k] - ts[k - 1])
        res[k] = outputs[k] - model.step(inputs[k - 1], dt)
        model.observe(outputs[k], dt)
    return res
