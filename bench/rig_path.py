"""The agent's per-tick detection stages, fed from the rig's plant directly, without servers.

Owns building those stages from an agent config exactly as `edge_agent.agent.Agent.__init__`
builds them (process image, Digital Original, detector, `Comparator`, `AlarmTracker`, with the
same arguments) and one tick of them on the plant's measurements: what the agent does per tick
up to its alarm events, minus acquisition over the wire and publishing. The plant's clock
stamps every sample (source and receive time alike, `TICK_T0` + plant seconds), as the rig
stamps its writes with the wall clock. It does not own the plant (`hil.plant`) nor what is
measured with it (`bench.rig_detection`); `tests/test_rig_detection_smoke.py` checks that this
path and a real `Agent` give the same scores and alarms on the same samples.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from drivers.base import bad_samples
from edge_agent.acquire import Backoff
from edge_agent.agent import build_model
from edge_agent.alarms import AlarmEvent, AlarmTracker
from edge_agent.compare import Comparator, CompareResult
from edge_agent.config import DEFAULT_DETECTOR, Config, load_config, resolve
from edge_agent.image import ProcessImage
from hil.faults import PHYSICS_KINDS, ParamValue, check_params
from hil.plant import TAG_NAMES, Plant
from hil.tags import tags_of
from models.anomaly.detector import OnnxDetector
from models.base import ProcessModel

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.toml"
TICK_T0 = 1.8e9
"""Unix seconds of plant time 0: the stages see plausible wall-clock stamps."""


def reconnect_after_s(down_s: float, backoff: Backoff | None = None) -> float:
    """When the acquisition loop's first connect attempt after a PLC outage of `down_s` lands:
    its backoff delays (`edge_agent.acquire.Backoff`) at the middle of their jitter."""
    b = backoff or Backoff()
    t, attempt = 0.0, 0
    while t < down_s:
        t += min(b.cap_s, b.base_s * 2.0**attempt) * 0.75
        attempt += 1
    return t


@dataclass
class Timer:
    """Wall time spent in the plant and in the agent's stages, and plant time covered."""

    plant_s: float = 0.0
    agent_s: float = 0.0
    ticks: int = 0
    sim_s: float = 0.0
    started: float = 0.0

    def summary(self) -> dict[str, float]:
        wall = time.perf_counter() - self.started
        ticks = max(self.ticks, 1)
        return {
            "sim_s": round(self.sim_s, 1),
            "wall_s": round(wall, 2),
            "speedup": round(self.sim_s / wall, 1) if wall > 0 else 0.0,
            "ticks": self.ticks,
            "plant_us": round(self.plant_s / ticks * 1e6, 1),
            "agent_us": round(self.agent_s / ticks * 1e6, 1),
        }


class RigPath:
    """Image, comparator and alarms as the agent builds them; `reset` starts a fresh agent
    (the model and detector are reused: the comparator re-synchronises the model at start)."""

    def __init__(
        self,
        cfg: Config,
        cfg_path: Path,
        model: ProcessModel,
        detector: OnnxDetector,
        detector_path: Path,
    ) -> None:
        self.cfg, self.cfg_path = cfg, cfg_path
        self.model, self.detector = model, detector
        self.tick_hz = float(cfg.agent.tick_hz)
        self.input_tags = [cfg.model.inputs[n] for n in model.input_names]
        self.output_tags = [cfg.model.outputs[n] for n in model.output_names]
        self.raise_ticks = round(cfg.detector.raise_after_s * self.tick_hz) + 1
        self.detector_path = detector_path
        self.timer = Timer(started=time.perf_counter())
        self.reset()

    @classmethod
    def build(cls, cfg_path: Path = DEMO_CONFIG, detector_path: Path | None = None) -> RigPath:
        """Load the config, its Digital Original and its residual detector (or the one at
        `detector_path` instead: a candidate measured before it replaces the shipped one)."""
        cfg = load_config(cfg_path)
        if cfg.model.kind == "none" or cfg.detector.kind != "residual" or not cfg.detector.enabled:
            raise ValueError(f"{cfg_path}: needs a model and an enabled residual detector")
        model, _ = build_model(cfg, cfg_path)
        path = detector_path or resolve(cfg_path, cfg.detector.path) or DEFAULT_DETECTOR
        detector = OnnxDetector.load(path, model.output_names)
        if tuple(Plant(0).measurements()) != TAG_NAMES:
            raise RuntimeError("hil.plant measurements are not in TAG_NAMES order")
        return cls(cfg, cfg_path, model, detector, path)

    def reset(self) -> None:
        """A freshly started agent: new image, comparator and alarm states."""
        cfg = self.cfg
        tags = [t for _, t in cfg.tags()]
        self.image = ProcessImage([t.name for t in tags], [t.range for t in tags])
        self.comparator = Comparator(
            self.model,
            self.detector,
            self.image,
            self.input_tags,
            self.output_tags,
            resync_after_s=cfg.model.resync_after_s,
            max_gap_s=max(5.0, 20.0 / cfg.agent.tick_hz),
            max_input_age_s=cfg.model.max_input_age_s,
        )
        self.alarms = AlarmTracker(
            self.image.names,
            raise_level=self.detector.raise_level,
            clear_level=self.detector.clear_level,
            raise_after_s=cfg.detector.raise_after_s,
            clear_after_s=cfg.detector.clear_after_s,
            quality_after_s=cfg.agent.quality_alarm_after_s,
        )
        self.out_pos = np.array([self.image.index[t] for t in self.output_tags], dtype=np.intp)
        self.pos = self.image.positions(TAG_NAMES)
        self._all = np.ones(len(TAG_NAMES), dtype=np.bool_)
        self._good = np.zeros(len(TAG_NAMES), dtype=np.int8)
        self._score = np.full(len(self.image.names), np.nan)
        self._down: npt.NDArray[np.bool_] | None = None
        self._back_at = 0.0
        self._lost: list[str] = []
        self.last: CompareResult | None = None

    def inject(self, plant: Plant, kind: str, params: dict[str, ParamValue]) -> None:
        """Start a fault now: physics in the plant; a PLC restart as the agent sees it."""
        p = check_params(kind, params)
        if kind in PHYSICS_KINDS:
            plant.inject(kind, **p)
            return
        names = [t.name for t in tags_of("drive" if p["plc"] == "drive" else "process")]
        self._down = np.array([n in names for n in TAG_NAMES], dtype=np.bool_)
        self._back_at = plant.sim_time + reconnect_after_s(float(p["down_s"]))
        self._lost = [n for n in names if n in self.image.index]

    def step_plant(self, plant: Plant) -> None:
        """Advance the plant by one tick period."""
        t = time.perf_counter()
        plant.step(1.0 / self.tick_hz)
        self.timer.plant_s += time.perf_counter() - t
        self.timer.sim_s += 1.0 / self.tick_hz

    def tick(self, plant: Plant) -> list[AlarmEvent]:
        """The plant's current measurements into the image, then the agent's compare and alarm
        stages at the plant's time; returns the alarm events of this tick."""
        t0 = time.perf_counter()
        values = np.fromiter(plant.measurements().values(), np.float64, len(TAG_NAMES))
        t1 = time.perf_counter()
        now = TICK_T0 + plant.sim_time
        img = self.image
        rows = self._all
        if self._down is not None:
            if self._lost:  # the link just dropped: one batch of BAD "comm" samples
                img.update(bad_samples(self._lost, "comm", now))
                self._lost = []
            if plant.sim_time < self._back_at - 1e-9:
                rows = ~self._down
            else:
                self._down = None
        img.update_arrays(self.pos[rows], values[rows], self._good[rows], now, now)
        res = self.comparator.tick(now)
        self.last = res
        self._score[self.out_pos] = res.score
        events = self.alarms.update(now, self._score, img.quality == 2, img.reason)
        t2 = time.perf_counter()
        self.timer.plant_s += t1 - t0
        self.timer.agent_s += t2 - t1
        self.timer.ticks += 1
        return events

    @property
    def result(self) -> CompareResult:
        """The comparator's result of the latest tick."""
        if self.last is None:
            raise RuntimeError("no tick yet")
        return self.last

    def describe(self) -> str:
        """The configuration that was measured, in one line."""
        d, c = self.detector, self.cfg
        meta = d.metadata
        return (
            f"{self.cfg_path.name}: model {c.model.kind}, detector {self.detector_path.name} "
            f"(window {d.window} ticks, training seed {meta.get('seed', '?')}, created "
            f"{meta.get('created', '?')}), raise_after_s {c.detector.raise_after_s}, "
            f"clear_after_s {c.detector.clear_after_s}, quality_alarm_after_s "
            f"{c.agent.quality_alarm_after_s}, tick {self.tick_hz:g} Hz"
        )
