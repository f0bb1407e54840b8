"""The numeric contracts shared by the process models and the anomaly detectors.

Everything here is NumPy in, NumPy out. Loading (parameter files, ONNX files) validates shapes,
names and dtypes and warms the JIT, so nothing on the tick path can fail for a reason that
could have been found at start.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
Mask = npt.NDArray[np.bool_]


class ModelError(Exception):
    """A model or detector file is invalid; the message names the file and the field."""


class ProcessModel(Protocol):
    """A Digital Original: predicts the measured outputs from the measured inputs.

    `input_names` and `output_names` are the model's own names; the agent's config maps them to
    tags. `step` advances the state by `dt` seconds with the inputs held constant over the step
    and returns the predicted outputs after the step.
    """

    @property
    def input_names(self) -> tuple[str, ...]: ...

    @property
    def output_names(self) -> tuple[str, ...]: ...

    def reset(self, inputs: F64, outputs: F64) -> None:
        """Re-initialise the state from measured inputs and outputs (NaN = unknown)."""
        ...

    def step(self, inputs: F64, dt: float) -> F64:
        """Advance by `dt` seconds; return predicted outputs (shape `(len(output_names),)`)."""
        ...

    def observe(self, outputs: F64, dt: float) -> None:
        """Correct the state with measured outputs seen over `dt` s (NaN = not measured).

        The model's own observer rule; a model without one does nothing.
        """
        ...


class Detector(Protocol):
    """Scores a window of residuals; one score per output, 1.0 = the alarm threshold."""

    @property
    def output_names(self) -> tuple[str, ...]: ...

    @property
    def window(self) -> int: ...

    def score(self, residuals: F32) -> F32:
        """`residuals` has shape `(window, len(output_names))`; returns `(len(output_names),)`."""
        ...
