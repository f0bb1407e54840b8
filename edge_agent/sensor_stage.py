"""The sensor-window detector in the agent (`[detector] kind = "sensor"`): one step per source row.

`edge-agent evaluate` scores a recording row by row: a window of the last `W` rows of the raw
signals, one score per row, alarms by `models.anomaly.alarm.Hysteresis` with the settings stored
in the detector file. This stage does the same on live data, so a recording replayed through the
PLCs (`hil.replay`) alarms on the same rows as `evaluate` on the file.

Timebase. The agent ticks on its own clock (`agent.tick_hz`), the source produces rows on its
own (a SKAB logger: one row a second). The detector must step once per source row, not per tick,
so its windows equal evaluate's:

- `TappedImage` hands every sample batch to `RowAssembler` as it arrives (the process image only
  keeps the latest value, and several rows can arrive between two ticks);
- a new row starts at each new source timestamp of an input tag (OPC UA SourceTimestamp: the
  source stamps every value of one scan alike, as a logging PLC and the replay do), or, with
  `detector.clock_tag`, at each new value of that tag (a clock register, for Modbus, which has
  no timestamps); a tag not sent with a row (OPC UA reports changes only) keeps its last value;
- on each tick the rows that arrived are closed and stepped in order;
- durations and gaps are measured in process time: `(row time - first row time) * time_scale`,
  rounded to the millisecond (`time_scale` = N for a replay at N times real time), so
  `raise_after_s`, `clear_after_s` and the detector's `max_gap_s` mean what they mean in
  evaluate. The events' `ts` is the row's own time (its source timestamp or clock value).

A row with a BAD input breaks the window (no score until `W` good rows again), as does a gap
longer than the detector's `max_gap_s`; a missing score neither raises nor clears.

Alarm events are `kind = "anomaly"` on `detector.tag` (default: the input contributing most when
raised; the clear names the same tag), `contributors` the top three inputs with their share of
the score (`SensorDetector.contributions`: each input's part of score^2, divided by the score).

Also here, for a config without `[model]` (allowed only with a sensor detector: the raw signals
need no process model): `NullModel` (no inputs, no outputs) and `NullComparator` (nothing to
compare; the status reports model kind "none"). The residual path is untouched otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import structlog

from drivers.base import Quality, Sample
from edge_agent.alarms import ANOMALY, AlarmEvent
from edge_agent.buffer import NewEntry
from edge_agent.compare import PREDICTION_NONE, Comparator, CompareResult
from edge_agent.config import Config, ConfigError, resolve
from edge_agent.image import ProcessImage
from edge_agent.report import Reporter
from models.anomaly.alarm import Hysteresis
from models.anomaly.sensor import SensorDetector
from models.base import F64, Detector, ProcessModel

log = structlog.get_logger(__name__)

REASON = "sensor window"
_BAD = Quality.BAD
_EMPTY = np.zeros(0)


class NullModel:
    """A process model with no inputs and no outputs (config without `[model]`)."""

    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()

    def reset(self, inputs: F64, outputs: F64) -> None:
        """Nothing to re-synchronise."""

    def step(self, inputs: F64, dt: float) -> F64:
        """No outputs to predict."""
        return _EMPTY

    def observe(self, outputs: F64, dt: float) -> None:
        """No states to pull."""


class NullComparator(Comparator):
    """The comparator of an agent without a process model: nothing to step or compare.

    `Comparator.__init__` is not run (its CUSUM and plant clock need at least one output); the
    attributes the agent and its commands read are set here, `tick` returns empty arrays."""

    def __init__(
        self,
        model: ProcessModel,
        detector: Detector | None,
        image: ProcessImage,
        input_tags: list[str],
        output_tags: list[str],
        **_settings: float,
    ) -> None:
        if input_tags or output_tags or model.input_names or model.output_names:
            raise ValueError("NullComparator is for a model without inputs and outputs")
        self.model = model
        self.detector = detector
        self.image = image
        self.input_tags, self.output_tags = input_tags, output_tags
        self.step_info = None
        self.prev_inputs = None
        self.resyncs = 0
        self._resync_requested = False
        nothing = np.zeros(0, dtype=np.float32)
        self._empty = CompareResult(_EMPTY, _EMPTY, nothing, _EMPTY, True, False, PREDICTION_NONE)

    def tick(self, now: float) -> CompareResult:
        """Nothing to compare."""
        return self._empty


class TappedImage(ProcessImage):
    """The process image, handing each stored batch to the sensor stage as well (`set_tap`).

    Both ways into the image are tapped: `update` (samples) and `update_arrays` (the column
    form polled drivers use; only the rows of the stage's tags become samples for it)."""

    def __init__(self, names: Sequence[str], ranges: Sequence[tuple[float, float] | None]) -> None:
        super().__init__(names, ranges)
        self.tap: SensorStage | None = None
        self._watched = np.zeros(len(self.names), dtype=np.bool_)

    def set_tap(self, stage: SensorStage | None) -> None:
        """Feed `stage` from now on (None: nobody)."""
        self.tap = stage
        self._watched[:] = False
        if stage is not None:
            for tag in stage.watched_tags():
                self._watched[self.index[tag]] = True

    def update(self, samples: Iterable[Sample]) -> None:
        """Store the batch, then give it to the tap."""
        batch = samples if isinstance(samples, list) else list(samples)
        super().update(batch)
        if self.tap is not None:
            index, watched = self.index, self._watched
            mine = [s for s in batch if s.tag in index and watched[index[s.tag]]]
            self.tap.feed([self._checked(s) for s in mine])

    def _checked(self, s: Sample) -> Sample:
        """The image's range rule for one sample (outside the tag's range is BAD)."""
        i = self.index[s.tag]
        if s.quality == _BAD or s.text is not None or self.lo[i] <= s.value <= self.hi[i]:
            return s
        return s._replace(quality=Quality.BAD, reason="range")

    def update_arrays(
        self,
        indices: npt.NDArray[np.intp],
        values: npt.NDArray[np.float64],
        qualities: npt.NDArray[np.int8],
        source_ts: npt.NDArray[np.float64] | float,
        recv_ts: npt.NDArray[np.float64] | float,
        *,
        reasons: Mapping[int, str] | None = None,
        texts: Mapping[int, str] | None = None,
    ) -> None:
        """Store the columns, then give the tap its tags' rows as samples."""
        super().update_arrays(
            indices, values, qualities, source_ts, recv_ts, reasons=reasons, texts=texts
        )
        if self.tap is None:
            return
        idx = np.asarray(indices, dtype=np.intp)
        rows = np.flatnonzero((idx >= 0) & self._watched[np.maximum(idx, 0)])
        if not len(rows):
            return
        src = np.broadcast_to(np.asarray(source_ts, dtype=np.float64), idx.shape)
        recv = np.broadcast_to(np.asarray(recv_ts, dtype=np.float64), idx.shape)
        names, quality = self.names, self.quality  # the image's quality: range rule applied
        self.tap.feed([
            Sample(names[idx[r]], float(values[r]), Quality(int(quality[idx[r]])), float(src[r]),
                   float(recv[r]))
            for r in rows.tolist()
        ])  # fmt: skip


class RowAssembler:
    """Samples -> rows `(row time, values in tag order)`, one per new source time (see module)."""

    def __init__(self, tags: Sequence[str], clock_tag: str | None = None) -> None:
        self.index = {t: i for i, t in enumerate(tags)}
        self.clock_tag = clock_tag
        self.values = np.full(len(tags), np.nan)
        self.row_ts = -math.inf
        self._open = False
        self._rows: list[tuple[float, F64]] = []
        self.late = 0  # samples older than the open row (applied, as the tag's newest value)

    def _next(self, ts: float) -> None:
        if self._open:
            self._rows.append((self.row_ts, self.values.copy()))
        self.row_ts = ts
        self._open = True

    def feed(self, batch: Sequence[Sample]) -> None:
        """Take one batch as it arrived from a driver."""
        index = self.index
        mine = [s for s in batch if s.tag in index]
        if self.clock_tag is None:
            if len(mine) > 1:  # one publish can carry several rows, grouped by item
                mine.sort(key=lambda s: s.source_ts)
            for s in mine:
                if s.source_ts > self.row_ts:
                    self._next(s.source_ts)
                elif s.source_ts < self.row_ts:
                    self.late += 1
                self.values[index[s.tag]] = math.nan if s.quality == _BAD else s.value
            return
        # The clock first: the inputs of this batch belong to the row it announces.
        for s in batch:
            clock = s.tag == self.clock_tag and s.quality != _BAD and math.isfinite(s.value)
            if clock and s.value != self.row_ts:
                self._next(s.value)
        for s in mine:
            self.values[index[s.tag]] = math.nan if s.quality == _BAD else s.value

    def take(self) -> list[tuple[float, F64]]:
        """The rows completed since the last call, the open one included (closed now)."""
        if self._open:
            self._rows.append((self.row_ts, self.values.copy()))
            self._open = False
        rows, self._rows = self._rows, []
        return rows


class SensorStage:
    """Windows of raw input rows -> score -> `Hysteresis` -> anomaly alarm events."""

    def __init__(
        self,
        detector: SensorDetector,
        tags: Sequence[str],
        *,
        alarm_tag: str | None = None,
        clock_tag: str | None = None,
        time_scale: float = 1.0,
    ) -> None:
        if len(tags) != len(detector.input_names):
            raise ValueError(f"{len(tags)} tags for {len(detector.input_names)} detector inputs")
        if time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        self.detector = detector
        self.tags = tuple(tags)
        self.rows = RowAssembler(self.tags, clock_tag)
        self.alarm_tag = alarm_tag
        self.time_scale = time_scale
        w = detector.window
        self._win = np.zeros((w, len(self.tags)), dtype=np.float32)
        self._clock = np.zeros(w)
        self._run = 0
        self._origin: float | None = None
        self._last_clock = -math.inf
        self._max_span = (w - 1) + detector.params.max_gap_s
        self.hysteresis = Hysteresis(1, detector.params.alarm)
        self._raised_tag = ""
        self.stepped = 0  # rows stepped
        self.scored = 0  # rows with a score
        self.clock_back = 0  # rows whose time went backwards (window restarted)
        self.last_score = math.nan

    def watched_tags(self) -> list[str]:
        """The tags whose samples the stage needs: its inputs and the clock tag."""
        clock = self.rows.clock_tag
        return [*self.tags, *([clock] if clock is not None else [])]

    @property
    def active(self) -> bool:
        """True while the anomaly alarm is raised."""
        return bool(self.hysteresis.active[0])

    @property
    def raised_tag(self) -> str | None:
        """The tag the raised alarm names (see the module docstring), None while clear."""
        return self._raised_tag if self.active else None

    def feed(self, batch: Sequence[Sample]) -> None:
        """A batch of samples as it arrived (called by `TappedImage.update`)."""
        self.rows.feed(batch)

    def tick(self, now: float, rep: Reporter) -> list[NewEntry]:
        """Step every row that arrived since the last tick; the alarm events to publish."""
        out: list[NewEntry] = []
        for ts, values in self.rows.take():
            for ev in self.step(ts, values):
                log.info("alarm " + ev.event, kind=ev.kind, tag=ev.tag, score=ev.score)
                out.append(NewEntry("events", rep.alarm_topic, rep.alarm_payload(ev), ts=now))
        return out

    def step(self, ts: float, values: F64) -> list[AlarmEvent]:
        """One source row: `ts` its time (Unix seconds), `values` in tag order."""
        self.stepped += 1
        good = bool(np.isfinite(values).all())
        if self._origin is None:
            if not good:
                return []
            self._origin = ts
        clock = round((ts - self._origin) * self.time_scale, 3)
        if clock < self._last_clock:
            self.clock_back += 1
            self._run = 0
        self._last_clock = clock
        self._win[:-1] = self._win[1:]
        self._clock[:-1] = self._clock[1:]
        self._win[-1] = np.where(np.isfinite(values), values, 0.0)
        self._clock[-1] = clock
        self._run = self._run + 1 if good else 0
        score = math.nan
        if self._run >= len(self._clock) and self._clock[-1] - self._clock[0] <= self._max_span:
            score = self.detector.score(self._win)
            self.scored += 1
        self.last_score = score
        raised, cleared = self.hysteresis.update(clock, np.array([score]))
        if raised[0]:
            top = self._contributors(score)
            self._raised_tag = self.alarm_tag or top[0][0]
            return [AlarmEvent("raised", ANOMALY, self._raised_tag, ts, score, REASON, top)]
        if cleared[0]:
            return [AlarmEvent("cleared", ANOMALY, self._raised_tag, ts, score, REASON)]
        return []

    def _contributors(self, score: float) -> list[tuple[str, float]]:
        share = self.detector.contributions(self._win[np.newaxis])[0] / max(score, 1e-12)
        order = np.argsort(-share)[:3]
        return [(self.tags[i], float(share[i])) for i in order]


def build_sensor_stage(cfg: Config, cfg_path: Path) -> SensorStage:
    """The stage for `cfg.detector` (kind "sensor"): loads the file and checks the mapping.

    Raises `ModelError` for a file that does not load, `ConfigError` naming the key when
    `[detector.inputs]` does not map exactly the detector's inputs to defined tags.
    """
    d = cfg.detector
    path = resolve(cfg_path, d.path)
    if path is None:  # the config schema requires it; keep the message if that changes
        raise ConfigError(cfg_path, ["detector.path: required with kind = 'sensor'"])
    detector = SensorDetector.load(path)
    names = detector.input_names
    defined = {t.name for _, t in cfg.tags()}
    problems = [
        f"detector.inputs.{k}: the detector {path.name} has no input {k!r}; its inputs are "
        f"{', '.join(names)}"
        for k in d.inputs
        if k not in names
    ]
    tags = [d.inputs.get(n, n) for n in names]
    for n, tag in zip(names, tags, strict=True):
        if tag not in defined:
            problems.append(
                f"detector.inputs.{n}: tag {tag!r} is not defined by any driver; map the "
                f'detector input {n!r} to a tag (`"{n}" = "<tag>"` under [detector.inputs])'
            )
    if problems:
        raise ConfigError(cfg_path, problems)
    return SensorStage(
        detector, tags, alarm_tag=d.tag, clock_tag=d.clock_tag, time_scale=d.time_scale
    )
