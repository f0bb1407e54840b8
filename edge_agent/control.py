"""The agent's downlink: upstream commands applied to the running agent.

Builds the `CommandHandler` (`edge_agent.downlink`) for one `Agent` from the `[downlink]`
section: the trust store of Ed25519 keys, the replay record and the model slots in the state
directory, and the callbacks that act on the running pipeline:

- `rebirth`: republish the retained status and every tag's delta on the next tick;
- `reload-config`: the config file is validated again; when it is valid the agent stops and
  the command line starts it again on the new file (the uplink buffer carries every message
  across), when it is not the command is refused with the problems and nothing stops;
- `model-update` `detector`: staged, loaded, checked against the running detector (same tags,
  same window) and made to score the agent's recent residuals, then swapped in (the alarm
  levels follow it); `parameters`: checked against the model's ranges, stepped from the
  running state, then swapped in; both keep the previous one for `rollback`.

Commands arrive on `<prefix>/commands` (QoS 1); each response goes out on `<prefix>/responses`
through the uplink's `events` stream. The publisher calls `on_message` on the event loop, so
the swaps happen between ticks.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import structlog

from edge_agent.buffer import NewEntry
from edge_agent.config import ConfigError, load_config, resolve
from edge_agent.downlink import (
    Callbacks,
    CommandHandler,
    CommandRefused,
    DownlinkSettings,
    Result,
    response_bytes,
)
from edge_agent.model_update import (
    DetectorSlots,
    ParameterSlots,
    validate_detector,
    validate_parameters,
    windows_from_residuals,
)
from edge_agent.replay import ReplayGuard
from edge_agent.trust import TrustStore
from models.process.engine import SpecModel

if TYPE_CHECKING:
    from edge_agent.agent import Agent

log = structlog.get_logger(__name__)

HISTORY_TICKS = 600
"""Residual rows kept for checking a new detector against recent data (a minute at 10 Hz)."""


class Downlink:
    """Command handling for one agent; see the module docstring."""

    def __init__(self, agent: Agent) -> None:
        cfg = agent.cfg.downlink
        self.agent = agent
        root = agent.state_dir / "downlink"
        trust_dir = resolve(agent.cfg_path, cfg.trust_dir)
        assert trust_dir is not None
        self.trust = TrustStore.load(trust_dir)
        self.detector_slots = DetectorSlots(root / "detector")
        self.detector_slots.directory.mkdir(parents=True, exist_ok=True)
        self.parameter_slots = (
            ParameterSlots(agent.spec, root / "parameters.json") if agent.spec else None
        )
        self.handler = CommandHandler(
            agent.cfg.agent.id,
            self.trust,
            ReplayGuard(root / "seen.json"),
            Callbacks(
                on_rebirth=self._rebirth,
                on_reload=self._reload,
                validate_and_swap_parameters=self._swap_parameters,
                validate_and_swap_detector=self._swap_detector,
                on_rollback=self._rollback,
            ),
            DownlinkSettings(
                max_bytes=cfg.max_bytes,
                unsigned=frozenset(cfg.unsigned),
                max_lifetime_s=cfg.max_lifetime_s,
                clock_skew_s=cfg.clock_skew_s,
            ),
        )
        prefix = agent.reporter.prefix
        self.command_topic = f"{prefix}/commands"
        self.response_topic = f"{prefix}/responses"
        self._history: deque[np.ndarray] = deque(maxlen=HISTORY_TICKS)

    def restore(self) -> None:
        """Run the detector and parameters installed by earlier updates, when they still load
        and fit; otherwise the configured ones, with a warning."""
        a = self.agent
        active = self.detector_slots.active
        if a.detector is not None and active.exists():
            try:
                candidate = validate_detector(
                    active.read_bytes(), a.detector, None, self.detector_slots.staging
                )
            except CommandRefused as exc:
                log.warning("updated detector not used", path=str(active), reason=exc.detail)
            else:
                self.detector_slots.staging.unlink(missing_ok=True)
                a.detector_path = active
                a.set_detector(candidate)
                log.info("updated detector in use", path=str(active))
        slots = self.parameter_slots
        if slots is not None and slots.active is not None and isinstance(a.model, SpecModel):
            named = dict(zip(slots.spec.params, map(float, slots.active), strict=True))
            try:
                a.set_model(validate_parameters(named, a.model))
            except CommandRefused as exc:
                log.warning("updated parameters not used", reason=exc.detail)
            else:
                log.info("updated parameters in use", model=slots.spec.name)

    def start(self) -> None:
        """Subscribe to the command topic (again on every connection)."""
        self.agent.publisher.subscribe(self.command_topic, self.on_message)
        log.info("downlink listening", topic=self.command_topic, keys=len(self.trust))

    def observe(self, residual: np.ndarray) -> None:
        """Keep the model outputs' residuals of one tick for checking a new detector."""
        self._history.append(residual.astype(np.float32, copy=True))

    def on_message(self, _topic: str, payload: bytes) -> None:
        response = self.handler.handle(payload)
        # "v" and "agent_id" come from the uplink's envelope, with the same values.
        body = {k: v for k, v in response.items() if k not in ("v", "agent_id")}
        self.agent.uplink.submit([NewEntry("events", self.response_topic, response_bytes(body))])

    # ------------------------------------------------------------------ callbacks

    def _rebirth(self) -> Result:
        self.agent.reporter.last_ts[:] = -np.inf  # every tag is due on the next tick
        self.agent.publisher.republish_status()
        return {"tags": len(self.agent.image.names)}

    def _reload(self) -> Result:
        try:
            load_config(self.agent.cfg_path)
        except ConfigError as exc:
            raise CommandRefused("; ".join(exc.problems[:5])) from None
        self.agent.request_reload()
        return {"config": str(Path(self.agent.cfg_path).name)}

    def _swap_detector(self, data: bytes) -> Result:
        a = self.agent
        if a.detector is None:
            raise CommandRefused("the detector is disabled in the config")
        recent = windows_from_residuals(np.array(self._history), a.detector.window)
        candidate = validate_detector(data, a.detector, recent, self.detector_slots.staging)
        a.detector_path = self.detector_slots.install(a.detector_path)
        a.set_detector(candidate)
        return {"detector": a.detector_path.name, "fingerprint": _fingerprint(candidate)}

    def _swap_parameters(self, values: dict[str, float]) -> Result:
        a = self.agent
        slots = self.parameter_slots
        if slots is None or not isinstance(a.model, SpecModel):
            raise CommandRefused("the running model takes no parameter updates (not authored)")
        new = validate_parameters(values, a.model, a.comparator.prev_inputs)
        slots.install(new, a.model)
        a.set_model(new)
        return {"parameters": sorted(values)}

    def _rollback(self, kind: str) -> Result:
        a = self.agent
        if kind == "detector":
            if a.detector is None:
                raise CommandRefused("the detector is disabled in the config")
            a.set_detector(self.detector_slots.rollback(a.detector))
            a.detector_path = self.detector_slots.active
            return {"detector": a.detector_path.name}
        slots = self.parameter_slots
        if slots is None:
            raise CommandRefused("the running model takes no parameter updates (not authored)")
        a.set_model(slots.rollback(a.model, a.comparator.prev_inputs))
        return {"parameters": "previous"}


def _fingerprint(detector: object) -> str:
    meta = getattr(detector, "metadata", {})
    return str(meta.get("training_sha256", ""))[:16]
