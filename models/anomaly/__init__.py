"""The anomaly detector: per-tag scores of residual windows, computed by an ONNX graph.

`OnnxDetector` (runtime, onnxruntime only) loads and scores; `train_detector` (needs the
`train` extra, scikit-learn) fits a detector from normal-operation residuals and returns the
serialized ONNX model. Training is imported lazily so the gateway never loads scikit-learn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from models.anomaly.detector import DetectorParams, OnnxDetector

if TYPE_CHECKING:
    from models.anomaly.train import train_detector

__all__ = ["DetectorParams", "OnnxDetector", "train_detector"]


def __getattr__(name: str) -> Any:
    if name == "train_detector":
        from models.anomaly.train import train_detector  # noqa: PLC0415 - keeps sklearn lazy

        return train_detector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
