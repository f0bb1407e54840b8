"""The agent: builds every part from a validated config, then runs them under one TaskGroup.

Build (no network I/O): drivers, process image, Digital Original, detector, comparator, alarms,
reporter, publisher. A model or detector file that does not fit is a `ModelError` here, before
anything connects.

Run: start from the sink (publisher), then the tick, then one acquisition loop per driver,
then the writeback (`[[writeback]]`: findings written to writable PLC tags). Stop from the
source: writeback and acquisition first, one last tick so the final state is published, then
the publisher drains under a deadline and publishes the retained "offline" status.

An unexpected exception in any task ends the TaskGroup and the process (crash-only: systemd
restarts it). Expected faults (PLC down, broker down, bad values) are handled in their loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import structlog

from drivers.base import Driver
from edge_agent import __version__
from edge_agent.acquire import LinkStats, run_driver
from edge_agent.alarms import AlarmTracker
from edge_agent.buffer import Buffer, NewEntry, StreamPolicy
from edge_agent.compare import Comparator, CompareResult
from edge_agent.config import (
    DEFAULT_DETECTOR,
    DEFAULT_SPEC,
    Config,
    ConfigError,
    OpcUaDriverConfig,
    TagBase,
    config_hash,
    resolve,
)
from edge_agent.control import Downlink
from edge_agent.image import ProcessImage
from edge_agent.learn import Learner
from edge_agent.notify import Notifier
from edge_agent.publish import MqttPublisher, MqttSettings
from edge_agent.report import Reporter, TickColumns
from edge_agent.sensor_stage import (
    NullComparator,
    NullModel,
    TappedImage,
    build_sensor_stage,
)
from edge_agent.sparkplug.session import SparkplugSession
from edge_agent.trust import TrustStoreError
from edge_agent.uplink import Uplink, UplinkSettings
from edge_agent.writeback import WritebackCounts, build_writeback
from models.anomaly.detector import OnnxDetector
from models.base import ModelError, ProcessModel
from models.process.engine import SpecModel
from models.process.spec import ModelSpec, load_spec
from models.process.variants import load_variants

log = structlog.get_logger(__name__)


def build_model(cfg: Config, cfg_path: Path) -> tuple[ProcessModel, ModelSpec | None]:
    """The configured Digital Original, and its authored spec when it has one."""
    m = cfg.model
    if m.kind == "fmu":
        # fmpy is optional (the extra "fmu"): import it only for an FMU model.
        from models.process.fmu import FmuModel  # noqa: PLC0415

        fmu = FmuModel.load(
            resolve(cfg_path, m.fmu) or Path(), inputs=list(m.inputs), outputs=list(m.outputs)
        )
        return fmu, None
    spec = load_spec(DEFAULT_SPEC if m.kind == "loop" else resolve(cfg_path, m.spec) or Path())
    return SpecModel(spec), spec


async def _cancel_all(tasks: list[asyncio.Task[None]], rounds: int = 5) -> None:
    """Cancel tasks and wait for them, cancelling again those that swallowed a cancellation."""
    pending = {t for t in tasks if not t.done()}
    for _ in range(rounds):
        if not pending:
            return
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=2.0)
    if pending:
        log.error("tasks ignore cancellation", tasks=[t.get_name() for t in pending])


def _check_mapping(
    cfg: Config, cfg_path: Path, inputs: tuple[str, ...], outputs: tuple[str, ...]
) -> None:
    """The config maps exactly the model's inputs and outputs; else `ConfigError`."""
    problems = []
    for section, names in (("inputs", inputs), ("outputs", outputs)):
        mapping: dict[str, str] = getattr(cfg.model, section)
        for missing in [n for n in names if n not in mapping]:
            problems.append(
                f"model.{section}.{missing}: missing; the {cfg.model.kind} model needs a tag "
                f"for each of {', '.join(names)}"
            )
        for extra in [n for n in mapping if n not in names]:
            problems.append(
                f"model.{section}.{extra}: the {cfg.model.kind} model has no {section[:-1]} "
                f"of that name; expected one of {', '.join(names)}"
            )
    if problems:
        raise ConfigError(cfg_path, problems)


STREAMS = {
    "deltas": StreamPolicy("telemetry"),
    "events": StreamPolicy("events"),
    "model": StreamPolicy("events"),
}
"""The uplink's streams: tag deltas may be dropped when the buffer is full, events never first."""


def _params_hash(model: ProcessModel) -> str | None:
    """Short hash of an authored model's running parameter vector (None for an FMU)."""
    if not isinstance(model, SpecModel):
        return None
    return hashlib.sha256(np.ascontiguousarray(model._ens.params).tobytes()).hexdigest()[:16]


def _env(name: str | None) -> str | None:
    return None if name is None else os.environ.get(name)


def _path(cfg_path: Path, value: str | None) -> str | None:
    p = resolve(cfg_path, value)
    return None if p is None else str(p)


@dataclass
class TickStats:
    """Counters of the tick loop, for health and metrics."""

    ticks: int = 0
    overruns: int = 0
    events: int = 0
    publish_failures: int = 0
    last_tick: float = 0.0
    link: dict[str, LinkStats] = field(default_factory=dict)
    writeback: WritebackCounts = field(default_factory=WritebackCounts)


class Agent:
    """One running agent: everything built from `cfg`, run by `run()`."""

    def __init__(self, cfg: Config, cfg_path: Path) -> None:
        self.cfg = cfg
        self.cfg_path = cfg_path
        state = resolve(cfg_path, cfg.agent.state_dir)
        self.drivers: list[Driver] = [
            d.build(state) if isinstance(d, OpcUaDriverConfig) else d.build() for d in cfg.drivers
        ]
        tags = list(cfg.tags())
        image_type = TappedImage if cfg.detector.kind == "sensor" else ProcessImage
        self.image = image_type([t.name for _, t in tags], [t.range for _, t in tags])
        self.spec: ModelSpec | None = None
        self.model = NullModel() if cfg.model.kind == "none" else self._build_model()
        _check_mapping(cfg, cfg_path, self.model.input_names, self.model.output_names)
        self.detector_path = resolve(cfg_path, cfg.detector.path) or DEFAULT_DETECTOR
        self.detector = (
            OnnxDetector.load(self.detector_path, self.model.output_names)
            if cfg.detector.enabled and cfg.detector.kind == "residual"
            else None
        )
        # [detector] kind = "sensor": raw-signal windows stepped once per source row, fed by
        # every sample batch the image stores (edge_agent.sensor_stage).
        self.sensor = (
            build_sensor_stage(cfg, cfg_path)
            if cfg.detector.enabled and cfg.detector.kind == "sensor"
            else None
        )
        if isinstance(self.image, TappedImage):
            self.image.set_tap(self.sensor)
        self.input_tags = [cfg.model.inputs[n] for n in self.model.input_names]
        self.output_tags = [cfg.model.outputs[n] for n in self.model.output_names]
        comparator_type = NullComparator if cfg.model.kind == "none" else Comparator
        self.comparator = comparator_type(
            self.model,
            self.detector,
            self.image,
            self.input_tags,
            self.output_tags,
            resync_after_s=cfg.model.resync_after_s,
            max_gap_s=max(5.0, 20.0 / cfg.agent.tick_hz),
            max_input_age_s=cfg.model.max_input_age_s,
        )
        self.learner = self._build_learner()
        ens = cfg.model.ensemble
        self._model_report_s = ens.publish_s if ens is not None else 0.0
        self._next_model_report = 0.0
        self.alarms = AlarmTracker(
            self.image.names,
            raise_level=self.detector.raise_level if self.detector else 1.0,
            clear_level=self.detector.clear_level if self.detector else 0.7,
            raise_after_s=cfg.detector.raise_after_s,
            clear_after_s=cfg.detector.clear_after_s,
            quality_after_s=cfg.agent.quality_alarm_after_s,
        )
        prefix = f"{cfg.mqtt.topic_prefix.rstrip('/')}/{cfg.agent.id}"
        self.reporter = Reporter(
            self.image.names,
            [t.unit for _, t in tags],
            [t.deadband for _, t in tags],
            heartbeat_s=cfg.agent.heartbeat_s,
            topic_prefix=prefix,
        )
        self._out_pos = np.array([self.image.index[t] for t in self.output_tags], dtype=np.intp)
        self._tag_of_output = dict(zip(self.model.output_names, self.output_tags, strict=True))
        self.config_hash = config_hash(cfg_path)
        self.state_dir = resolve(cfg_path, cfg.agent.state_dir) or cfg_path.parent
        self.sparkplug = self._build_sparkplug(tags)
        m = cfg.mqtt
        self.publisher = MqttPublisher(
            MqttSettings(
                host=m.host,
                port=m.port,
                failover=m.failover_servers(),
                protocol=m.protocol,
                session_expiry_s=m.session_expiry_s,
                client_id=m.client_id or f"edge-agent-{cfg.agent.id}",
                keepalive_s=m.keepalive_s,
                username=m.username,
                password=_env(m.password_env),
                tls=m.tls,
                ca_file=_path(cfg_path, m.ca_file),
                cert_file=_path(cfg_path, m.cert_file),
                key_file=_path(cfg_path, m.key_file),
                key_password=_env(m.key_password_env),
                tls_insecure=m.tls_insecure,
                max_queue=4 * cfg.uplink.window + 16,
                resend_after_reconnect=self.sparkplug is None,
            ),
            status_topic=self.reporter.status_topic,
            birth_payload=lambda: self.status_payload(self.uplink.state()),
            will_payload=self.status_payload("offline"),
            session=None if self.sparkplug is None else self.sparkplug.hooks(),
        )
        u = cfg.uplink
        self.buffer = Buffer(
            self.state_dir / u.buffer_file,
            max_bytes=int(u.max_mb * 1024 * 1024),
            max_age_s=u.max_age_h * 3600.0,
            live_s=u.live_s,
            streams=STREAMS,
        )
        self.uplink = Uplink(
            self.buffer,
            self.publisher,
            agent_id=cfg.agent.id,
            settings=UplinkSettings(
                window=u.window, replay_rate=u.replay_rate, compression=u.compression
            ),
            on_state=lambda _state: self.publisher.republish_status(),
            framer=None if self.sparkplug is None else self.sparkplug.frame,
            ready=None if self.sparkplug is None else self.sparkplug.ready,
        )
        if self.sparkplug is not None:
            self.sparkplug.attach(self.publisher)
        self.reload_requested = False
        self._stop: asyncio.Event | None = None
        self.downlink = self._build_downlink()
        self.notifier = Notifier()
        self.stats = TickStats()
        self.last: CompareResult | None = None
        # [[writeback]]: findings written to writable PLC tags, off the tick path.
        self.writeback = build_writeback(
            cfg, cfg_path, self.drivers, self.image.names, self.output_tags,
            link_up=lambda d: (st := self.stats.link.get(d)) is not None and st.up,
        )  # fmt: skip
        if self.writeback is not None:
            self.stats.writeback = self.writeback.counts
        # Everything per tag is built now (drivers, image, reporter, writeback): keep the
        # configuration without its tag lists (about 1 kB per tag: 10 MB at 10k tags).
        self.cfg = cfg.model_copy(
            update={"drivers": [d.model_copy(update={"tags": []}) for d in cfg.drivers]}
        )

    def _build_model(self) -> ProcessModel:
        model, self.spec = build_model(self.cfg, self.cfg_path)
        return model

    def _build_learner(self) -> Learner | None:
        ens = self.cfg.model.ensemble
        if ens is None or self.spec is None:
            return None
        spec = self.spec
        unknown = [p for p in ens.vary if p not in spec.params]
        bad_sigma = [o for o in ens.sigma if o not in spec.outputs]
        if unknown or bad_sigma:
            raise ConfigError(self.cfg_path, [
                *(f"model.ensemble.vary: {p!r} is not a parameter of model {spec.name}; "
                  f"expected some of {', '.join(spec.params)}" for p in unknown),
                *(f"model.ensemble.sigma.{o}: not an output of model {spec.name}"
                  for o in bad_sigma),
            ])  # fmt: skip
        if self.detector is not None:
            scale = self.detector.residual_scale
        else:
            scale = np.ones(len(spec.outputs))
        sigma = np.array([ens.sigma.get(o, float(scale[j])) for j, o in enumerate(spec.outputs)])
        params = None
        if ens.variants_file is not None:
            path = resolve(self.cfg_path, ens.variants_file)
            assert path is not None
            try:
                params = load_variants(path, spec)
            except ModelError as exc:
                raise ConfigError(self.cfg_path, [f"model.ensemble.variants_file: {exc}"]) from None
        return Learner(
            spec,
            variants=ens.variants,
            vary=ens.vary or list(spec.params),
            sigma=sigma,
            seed=ens.seed,
            spread=ens.spread,
            forgetting_s=ens.forgetting_s,
            drift_window_s=ens.drift_window_s,
            params=params,
        )

    def _build_sparkplug(self, tags: list[tuple[str, TagBase]]) -> SparkplugSession | None:
        sp = self.cfg.sparkplug
        if not sp.enabled:
            return None
        devices: dict[str, list[tuple[str, str]]] = {}
        for driver, tag in tags:
            devices.setdefault(driver, []).append((tag.name, tag.unit))
        self._device_of_tag = {tag.name: driver for driver, tag in tags}
        return SparkplugSession(
            group_id=sp.group_id,
            edge_node_id=sp.edge_node_id or self.cfg.agent.id,
            primary_host_id=sp.primary_host_id,
            devices=devices,
            state_file=self.state_dir / "sparkplug.json",
            agent_id=self.cfg.agent.id,
        )

    def _build_downlink(self) -> Downlink | None:
        if not self.cfg.downlink.enabled:
            return None
        try:
            downlink = Downlink(self)
        except TrustStoreError as exc:
            raise ConfigError(self.cfg_path, [f"downlink.trust_dir: {exc}"]) from None
        downlink.restore()
        return downlink

    def set_detector(self, detector: OnnxDetector) -> None:
        """Run `detector` from the next tick on (same tags and window as the one it replaces)."""
        self.detector = detector
        self.comparator.detector = detector
        self.alarms.raise_level = detector.raise_level
        self.alarms.clear_level = detector.clear_level
        self.publisher.republish_status()

    def set_model(self, model: ProcessModel) -> None:
        """Run `model` from the next tick on (same inputs and outputs as the one it replaces)."""
        self.model = model
        self.comparator.model = model
        self.publisher.republish_status()

    def request_reload(self) -> None:
        """Stop after this tick so that the command line starts again on the config file."""
        log.info("config reload requested")
        self.reload_requested = True
        if self._stop is not None:
            self._stop.set()

    def request_resync(self) -> None:
        """Re-synchronise the model state from measurements on the next tick."""
        log.info("model resync requested")
        self.comparator.request_resync()

    def status_payload(self, state: str) -> bytes:
        """The retained status document (also the last will with state "offline")."""
        doc = {
            "v": 1,
            "state": state,
            "agent_id": self.cfg.agent.id,
            "version": __version__,
            "ts": round(time.time(), 3),
            "config_hash": self.config_hash,
            "model": {
                "kind": self.cfg.model.kind,
                "name": self.spec.name if self.spec is not None else self.cfg.model.kind,
                "outputs": list(self.output_tags),
                "parameters_sha256": _params_hash(self.model),
            },
            "detector": self._detector_status(),
        }
        if state != "offline":  # the will is built once, before anything is buffered
            doc["uplink"] = {
                "backlog": self.uplink.backlog(),
                "compression": self.cfg.uplink.compression,
            }
        return json.dumps(doc, separators=(",", ":")).encode()

    def _detector_status(self) -> dict[str, str] | None:
        if self.detector is not None:
            meta = self.detector.metadata
            return {
                "file": self.detector_path.name,
                "fingerprint": str(meta.get("training_sha256", "")),
                "version": str(meta.get("format_version", "")),
            }
        if self.sensor is not None and self.cfg.detector.path is not None:
            return {"file": Path(self.cfg.detector.path).name, "fingerprint": "", "version": ""}
        return None

    def anomaly_states(self) -> npt.NDArray[np.bool_]:
        """Per tag: an anomaly alarm is raised on it, by the residual alarms or by the
        sensor-window detector (which names one tag for the whole plant's alarm)."""
        anomaly = self.alarms.anomaly
        tag = self.sensor.raised_tag if self.sensor is not None else None
        pos = -1 if tag is None else self.image.index.get(tag, -1)
        if pos < 0:
            return anomaly
        anomaly = anomaly.copy()
        anomaly[pos] = True
        return anomaly

    def tick(self, now: float) -> None:
        """One tick: compare, update alarms, publish what is due. Pure CPU, no awaits."""
        img = self.image
        res = self.comparator.tick(now)
        self.last = res
        if self.downlink is not None:
            self.downlink.observe(res.residual)
        n = len(img.names)
        predicted = np.full(n, np.nan)
        residual = np.full(n, np.nan)
        score = np.full(n, np.nan)
        cusum = np.full(n, np.nan)
        predicted[self._out_pos] = res.predicted
        residual[self._out_pos] = res.residual
        score[self._out_pos] = res.score
        cusum[self._out_pos] = res.cusum
        bad = img.quality == 2
        events = self.alarms.update(now, score, bad, img.reason)
        rep = self.reporter
        out: list[NewEntry] = []
        for ev in events:
            log.info("alarm " + ev.event, kind=ev.kind, tag=ev.tag, score=ev.score)
            out.append(NewEntry("events", rep.alarm_topic, rep.alarm_payload(ev), ts=now))
        self.stats.events += len(events)
        if self.sensor is not None:  # sensor-window detector: its own anomaly alarm events
            sensor_events = self.sensor.tick(now, rep)
            self.stats.events += len(sensor_events)
            out.extend(sensor_events)
        if self.writeback is not None:
            self.writeback.observe(self.anomaly_states(), self.alarms.quality)
        if self.learner is not None and self.comparator.step_info is not None:
            for doc in self.learner.tick(self.comparator.step_info):
                body = json.dumps(doc, separators=(",", ":")).encode()
                out.append(NewEntry("events", rep.alarm_topic, body, ts=now))
            if now >= self._next_model_report:
                report = self.learner.report(now, self._tag_of_output)
                out.append(NewEntry("model", rep.model_topic, report, retain=True, ts=now))
                self._next_model_report = now + self._model_report_s
        modelled = np.zeros(n, dtype=np.bool_)
        modelled[self._out_pos] = True
        cols = TickColumns(
            value=img.value,
            source_ts=img.source_ts,
            quality=img.quality,
            reason=img.reason,
            reasoned=img.reasoned,
            predicted=predicted,
            residual=residual,
            score=score,
            cusum=cusum,
            alarm=self.alarms.codes(),
            modelled=modelled,
            prediction=res.prediction,
            text=img.text if img.has_text else None,
            text_idx=img.text_idx,
        )
        due = rep.due(now, img.value, residual, img.quality, cols.alarm, text=cols.text,
                      text_idx=img.text_idx)  # fmt: skip
        batch_max = self.cfg.uplink.batch_max
        if self.cfg.uplink.per_tag_topics:
            out.extend(
                NewEntry("deltas", rep.tag_topics[i], rep.tag_payload(d), ts=now)
                for i, d in zip(due.tolist(), rep.docs(now, due, cols), strict=True)
            )
        elif self.sparkplug is not None and len(due):
            by_device: dict[str, list[dict[str, object]]] = {}
            for d in rep.docs(now, due, cols):
                by_device.setdefault(self._device_of_tag[str(d["tag"])], []).append(d)
            topics = self.sparkplug.device_topics
            out.extend(
                NewEntry("deltas", topics[device], body, ts=now)
                for device, group in by_device.items()
                for body in rep.batches(now, group, batch_max)
            )
        else:  # the default: batches encoded straight from the arrays, no dict per tag
            out.extend(
                NewEntry("deltas", rep.deltas_topic, body, ts=now)
                for body in rep.encode_batches(now, due, cols, batch_max)
            )
        self.uplink.submit(out)
        self.stats.ticks += 1
        self.stats.last_tick = now

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.cfg.agent.tick_hz
        next_t = loop.time()
        wd_every = self.notifier.watchdog_interval_s
        last_wd = 0.0
        while True:
            self.tick(time.time())
            if wd_every is not None and loop.time() - last_wd >= wd_every:
                self.notifier.watchdog()
                last_wd = loop.time()
            next_t += period
            delay = next_t - loop.time()
            if delay < 0:
                self.stats.overruns += 1
                next_t = loop.time()
                delay = 0
            # Pollers time their reads to land just before this (`edge_agent.acquire`).
            self.image.next_tick, self.image.tick_period = next_t, period
            await asyncio.sleep(delay)

    async def _drain(self, deadline_s: float) -> None:
        """Give the uplink up to `deadline_s` to deliver what is stored (the rest stays on disk
        and goes out after the next start)."""
        end = time.monotonic() + deadline_s
        # Polls: the backlog lives in SQLite, no event fires when it empties.
        while self.uplink.backlog() and self.publisher.connected and time.monotonic() < end:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if self.uplink.backlog():
            log.info("uplink backlog kept for the next start", messages=self.uplink.backlog())

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then shut down in order (sources first)."""
        self._stop = stop
        if self.downlink is not None:
            self.downlink.start()
        await self.publisher.start()
        try:
            async with asyncio.TaskGroup() as tg:
                uplink_task = tg.create_task(self.uplink.run(), name="uplink")
                tick_task = tg.create_task(self._tick_loop(), name="tick")
                acq = []
                for dcfg, drv in zip(self.cfg.drivers, self.drivers, strict=True):
                    st = self.stats.link.setdefault(drv.name, LinkStats())
                    poll = dcfg.poll_interval_s
                    acq.append(
                        tg.create_task(
                            run_driver(
                                drv,
                                self.image.update,
                                st,
                                poll_interval_s=poll,
                                connect_timeout_s=dcfg.timeout_s,
                                image=self.image,
                            ),
                            name=f"acquire:{drv.name}",
                        )
                    )
                if self.writeback is not None:
                    wb_task = tg.create_task(self.writeback.run(), name="writeback")
                self.notifier.ready()
                log.info("agent running", agent_id=self.cfg.agent.id, tags=len(self.image.names))
                await stop.wait()
                log.info("agent stopping")
                self.notifier.stopping()
                if self.writeback is not None:
                    await _cancel_all([wb_task])
                await _cancel_all(acq)
                tick_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await tick_task
                self.tick(time.time())
                await self._drain(deadline_s=5.0)
                uplink_task.cancel()
        finally:
            for drv in self.drivers:
                await drv.aclose()
            await self.publisher.aclose(drain_timeout_s=2.0)
            self.buffer.close()
            self.notifier.close()
            log.info("agent stopped", ticks=self.stats.ticks)
