"""The process `bench.startup` times: start, load the models, make the first prediction, report.

Owns nothing else. Only the standard library is imported before the clock starts, so the
phases below include every import the agent pays for. It prints one JSON line: the monotonic
time at the first prediction (comparable with the parent's clock on the same machine) and the
duration of each phase. Modes: `loop` (LoopModel + OnnxDetector, what the agent runs),
`engine` (the authored water loop through `models.process.engine.SpecModel` + OnnxDetector,
when that module exists), `bare` (the interpreter alone).
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

T0 = time.perf_counter()
DETECTOR_PATH = Path(__file__).resolve().parents[1] / "models" / "anomaly" / "loop_detector.onnx"


def _phase(phases: dict[str, float], name: str, t: float) -> float:
    now = time.perf_counter()
    phases[name] = now - t
    return now


def main(mode: str) -> int:
    phases: dict[str, float] = {}
    if mode == "bare":
        print(json.dumps({"ready_monotonic": time.monotonic(), "phases": phases}), flush=True)
        return 0
    t = T0
    import numpy as np  # noqa: PLC0415  # the imports are what is being timed

    from models.anomaly.detector import OnnxDetector  # noqa: PLC0415
    from models.process.loop import NOMINAL_INPUTS, LoopModel  # noqa: PLC0415

    t = _phase(phases, "imports", t)
    if mode == "engine":
        try:
            engine = importlib.import_module("models.process.engine")
            spec = importlib.import_module("models.process.spec")
        except ImportError as exc:
            print(json.dumps({"error": f"engine not importable: {exc}"}), flush=True)
            return 3
        toml = DETECTOR_PATH.parents[1] / "process" / "units" / "water_loop.toml"
        model = engine.SpecModel(spec.load_spec(toml))
        t = _phase(phases, "model_load", t)
        inputs = np.asarray(NOMINAL_INPUTS, dtype=np.float64)
    else:
        model = LoopModel.load()
        t = _phase(phases, "model_load", t)
        inputs = NOMINAL_INPUTS.copy()
    model.step(inputs, 0.1)
    t = _phase(phases, "first_step", t)
    detector = OnnxDetector.load(DETECTOR_PATH)
    t = _phase(phases, "detector_load", t)
    detector.score(np.zeros((detector.window, len(detector.output_names)), dtype=np.float32))
    _phase(phases, "first_score", t)
    print(json.dumps({"ready_monotonic": time.monotonic(), "phases": phases}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "loop"))
