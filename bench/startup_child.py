"""The process `bench.startup` times: start, load the models, make the first prediction, report.

Owns nothing else. Only the standard library is imported before the clock starts, so the
phases below include every import the agent pays for. It prints one JSON line: the monotonic
time at the first prediction (comparable with the parent's clock on the same machine) and the
duration of each phase. Modes: `engine` (the built-in Digital Original, `DEFAULT_SPEC`, through
`models.process.engine.SpecModel` + OnnxDetector: what the agent runs), `bare` (the
interpreter alone).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

T0 = time.perf_counter()
DETECTOR_PATH = Path(__file__).resolve().parents[1] / "models" / "anomaly" / "loop_detector.onnx"
MODES = ("engine", "bare")


def _phase(phases: dict[str, float], name: str, t: float) -> float:
    now = time.perf_counter()
    phases[name] = now - t
    return now


def main(mode: str) -> int:
    phases: dict[str, float] = {}
    if mode == "bare":
        print(json.dumps({"ready_monotonic": time.monotonic(), "phases": phases}), flush=True)
        return 0
    if mode not in MODES:
        print(json.dumps({"error": f"unknown mode {mode!r}, expected one of {MODES}"}), flush=True)
        return 2
    t = T0
    import numpy as np  # noqa: PLC0415  # the imports are what is being timed

    from edge_agent.config import DEFAULT_SPEC  # noqa: PLC0415
    from models.anomaly.detector import OnnxDetector  # noqa: PLC0415
    from models.process.engine import SpecModel  # noqa: PLC0415
    from models.process.spec import load_spec  # noqa: PLC0415

    t = _phase(phases, "imports", t)
    spec = load_spec(DEFAULT_SPEC)
    model = SpecModel(spec)
    t = _phase(phases, "model_load", t)
    inputs = spec.nominal_inputs.copy()
    model.step(inputs, 0.1)
    t = _phase(phases, "first_step", t)
    detector = OnnxDetector.load(DETECTOR_PATH)
    t = _phase(phases, "detector_load", t)
    detector.score(np.zeros((detector.window, len(detector.output_names)), dtype=np.float32))
    _phase(phases, "first_score", t)
    print(json.dumps({"ready_monotonic": time.monotonic(), "phases": phases}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "engine"))
