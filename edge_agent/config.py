"""The agent's configuration: TOML, validated completely before any I/O.

`load_config(path)` returns a `Config` or raises `ConfigError` carrying every problem found,
each with its key path (`drivers[1].tags[4].address: ...`) and a hint how to fix it. Schema
problems (types, unknown keys, missing keys) come from pydantic; cross-field problems (unique
tag names, overlapping registers, model inputs and outputs that name existing tags, timeouts
shorter than intervals, `[[writeback]]` targets that are writable tags of their driver) are
checked in a second pass so they are reported together too.

This module owns the file format only; each protocol's `[[drivers]]` schema, its cross-field
checks and its `build()` live with the driver (`drivers.<protocol>.config`); models are built by
`edge_agent.agent` from a validated `Config`.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, model_validator

import models
from drivers.config import Strict, TagBase
from drivers.modbus.config import ModbusDriverConfig, ModbusTagConfig
from drivers.opcua.config import OpcUaDriverConfig, OpcUaTagConfig

# The built-in Digital Original (`model.kind = "loop"`) and the default `detector.path`: the files
# shipped with the package.
DEFAULT_SPEC = Path(models.__file__).parent / "process" / "units" / "water_loop.toml"
DEFAULT_DETECTOR = Path(models.__file__).parent / "anomaly" / "loop_detector.onnx"


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists every reason, one per line."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{path}: {len(problems)} problem(s)\n{lines}")


_Strict = Strict

DriverConfig = Annotated[OpcUaDriverConfig | ModbusDriverConfig, Field(discriminator="kind")]


class AgentSection(_Strict):
    id: str = Field(default="edge-agent", pattern=r"^[A-Za-z0-9_\-]+$")
    tick_hz: float = Field(default=10.0, gt=0, le=1000)
    state_dir: str = "state"
    heartbeat_s: float = Field(default=10.0, gt=0)
    quality_alarm_after_s: float = Field(default=2.0, ge=0)


class MqttSection(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    failover: list[str] = Field(
        default_factory=list, description="further brokers as 'host:port', tried in turn"
    )
    protocol: Literal["5", "3.1.1"] = "5"
    session_expiry_s: int = Field(default=3600, ge=0, le=2**32 - 1)
    topic_prefix: str = "edge-agent/v1"
    client_id: str | None = None
    keepalive_s: int = Field(default=10, ge=5, le=3600)
    username: str | None = None
    password_env: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    key_password_env: str | None = None
    tls_insecure: bool = Field(default=False, description="skip the broker certificate check")

    @model_validator(mode="after")
    def _failover_addresses(self) -> MqttSection:
        for i, addr in enumerate(self.failover):
            host, sep, port = addr.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"failover[{i}] = {addr!r}: expected 'host:port'")
        return self

    def failover_servers(self) -> tuple[tuple[str, int], ...]:
        """`failover` as (host, port) pairs."""
        out = []
        for addr in self.failover:
            host, _, port = addr.rpartition(":")
            out.append((host.strip("[]"), int(port)))
        return tuple(out)


class UplinkSection(_Strict):
    """Store-and-forward towards the broker (see `edge_agent.uplink`)."""

    buffer_file: str = Field(default="uplink.db", description="relative to agent.state_dir")
    max_mb: float = Field(default=256.0, gt=0)
    max_age_h: float = Field(default=72.0, gt=0, description="telemetry older than this is dropped")
    live_s: float = Field(default=10.0, gt=0, description="older messages are sent as historical")
    window: int = Field(default=100, ge=1, le=1000)
    replay_rate: float = Field(default=2000.0, ge=0, description="backlog msg/s; 0 = no limit")
    batch_max: int = Field(default=1000, ge=1, description="deltas per message at most")
    per_tag_topics: bool = Field(
        default=False, description="one message per delta on tags/<tag> instead of batches"
    )
    compression: Literal["none", "zlib"] = Field(
        default="none", description="zlib: JSON payloads deflated (MQTT 5 content type says so)"
    )


def _unsigned_default() -> list[Literal["rebirth", "reload-config"]]:
    return ["rebirth"]


class DownlinkSection(_Strict):
    """Commands from upstream (see `edge_agent.control` and `edge_agent.downlink`)."""

    enabled: bool = False
    trust_dir: str = Field(
        default="trust", description="folder of Ed25519 public keys (<key id>.pub)"
    )
    max_bytes: int = Field(default=1_048_576, ge=256)
    unsigned: list[Literal["rebirth", "reload-config"]] = Field(
        default_factory=_unsigned_default, description="commands accepted without signature"
    )
    max_lifetime_s: int = Field(default=86_400, ge=1)
    clock_skew_s: int = Field(default=300, ge=0)


class SparkplugSection(_Strict):
    """Tag deltas as Sparkplug B DDATA (see `edge_agent.sparkplug.session`)."""

    enabled: bool = False
    group_id: str = Field(default="edge-agent", pattern=r"^[^/#+]+$")
    edge_node_id: str | None = Field(
        default=None, pattern=r"^[^/#+]+$", description="default: agent.id"
    )
    primary_host_id: str | None = Field(
        default=None, pattern=r"^[^/#+]+$", description="hold data while this host is offline"
    )


class EnsembleSection(_Strict):
    """Parameter variants stepped beside the nominal model and calibrated online."""

    variants: int = Field(default=200, ge=1, le=10_000)
    variants_file: str | None = Field(
        default=None,
        description="explicit variants (.csv or .toml, see models.process.variants); "
        "replaces variants/spread/seed sampling",
    )
    vary: list[str] = Field(default_factory=list, description="parameters to vary; [] = all")
    seed: int = 0
    spread: float = Field(default=1.0, gt=0, le=1.0, description="fraction of each range")
    forgetting_s: float = Field(default=30.0, gt=0)
    drift_window_s: float = Field(default=600.0, gt=0)
    publish_s: float = Field(default=5.0, gt=0)
    sigma: dict[str, float] = Field(
        default_factory=dict, description="per model output; default: the detector's scale"
    )


class ModelSection(_Strict):
    kind: Literal["loop", "spec", "fmu", "none"] = "loop"  # "none": no [model] (sensor detector)
    spec: str | None = Field(default=None, description="model TOML (kind = 'spec')")
    fmu: str | None = Field(default=None, description="FMI 2.0 co-simulation FMU (kind = 'fmu')")
    inputs: dict[str, str]
    outputs: dict[str, str]
    resync_after_s: float = Field(default=1.0, ge=0)
    max_input_age_s: float = Field(
        default=30.0, gt=0, description="stop predicting once an input is BAD this long"
    )
    ensemble: EnsembleSection | None = None


class DetectorSection(_Strict):
    """`kind = "residual"`: the ONNX detector on Digital Original residuals (needs `[model]`);
    `kind = "sensor"`: a sensor-window detector on raw tag values, stepped once per source row
    with the alarm settings stored in its file (`edge_agent.sensor_stage`)."""

    enabled: bool = True
    kind: Literal["residual", "sensor"] = "residual"
    path: str | None = None
    raise_after_s: float = Field(default=1.0, ge=0)
    clear_after_s: float = Field(default=3.0, ge=0)
    inputs: dict[str, str] = Field(
        default_factory=dict, description="sensor: detector input name -> tag (default: same)"
    )
    tag: str | None = Field(default=None, description="sensor: alarms on this tag (default: top)")
    clock_tag: str | None = Field(
        default=None, description="sensor: rows start at each new value of this tag"
    )
    time_scale: float = Field(
        default=1.0, gt=0, description="sensor: process seconds per source second (replay: N)"
    )

    def problems(self, defined: set[str], model_kind: str) -> list[str]:
        """Cross-field problems of this section, each with its key and the fix."""
        out: list[str] = []
        if self.kind == "residual":
            sensor_only = ("inputs", "tag", "clock_tag", "time_scale")
            out += [f"detector.{k}: only for kind = 'sensor'" for k in sensor_only
                    if k in self.model_fields_set]  # fmt: skip
            if model_kind == "none":
                out.append("model: missing; the residual detector needs a [model] section "
                           "(or set detector.kind = 'sensor')")  # fmt: skip
            return out
        if self.path is None and self.enabled:
            out.append("detector.path: required with kind = 'sensor' (the detector's .onnx)")
        for k in ("raise_after_s", "clear_after_s"):
            if k in self.model_fields_set:
                out.append(f"detector.{k}: the sensor detector's alarm settings are in its file")
        for key, tag in (("tag", self.tag), ("clock_tag", self.clock_tag)):
            if tag is not None and tag not in defined:
                out.append(f"detector.{key}: tag {tag!r} is not defined by any driver")
        return out


WritebackSource = Literal["alarm_word", "alarm_count", "health", "heartbeat"]
ALARM_SOURCES = ("alarm_word", "alarm_count", "health")
_INT_BITS = {"bool": 1, "int16": 16, "uint16": 16, "int32": 32, "uint32": 32}


class WritebackEntry(_Strict):
    """One `[[writeback]]`: a finding of the agent written to a writable PLC tag (see
    `edge_agent.writeback`)."""

    driver: str
    tag: str
    source: WritebackSource
    tags: list[str] | None = Field(
        default=None, description="alarm sources: the tags looked at (alarm_word: bit i = tags[i])"
    )
    min_interval_s: float = Field(default=1.0, gt=0, description="at most one write this often")
    refresh_s: float = Field(
        default=60.0, ge=0, description="write an unchanged value again this often; 0 = never"
    )

    def problems(self, where: str, drivers: list[DriverConfig], defined: set[str]) -> list[str]:
        """Problems of this entry against the drivers, each with its key and the fix."""
        out: list[str] = []
        drv = next((d for d in drivers if d.name == self.driver), None)
        if drv is None:
            names = ", ".join(repr(d.name) for d in drivers)
            return [f"{where}.driver: no driver named {self.driver!r}; expected one of {names}"]
        tag = next((t for t in drv.tags if t.name == self.tag), None)
        if tag is None:
            out.append(
                f"{where}.tag: driver {self.driver!r} has no tag {self.tag!r}; add it to that "
                "driver's [[drivers.tags]] with writable = true"
            )
        elif not tag.writable:
            out.append(
                f"{where}.tag: tag {self.tag!r} of driver {self.driver!r} is not writable; set "
                "writable = true in its [[drivers.tags]] entry (nothing else is ever written)"
            )
        elif isinstance(tag, ModbusTagConfig) and tag.resolved_type == "string":
            out.append(f"{where}.tag: {self.tag!r} is a string; the writeback writes numbers")
        if self.tags is not None and self.source not in ALARM_SOURCES:
            out.append(f"{where}.tags: only for the sources {', '.join(ALARM_SOURCES)}")
        for k, t in enumerate(self.tags or ()):
            if t not in defined:
                out.append(f"{where}.tags[{k}]: tag {t!r} is not defined by any driver")
        if self.source == "alarm_word" and self.tags is not None:
            bits = 32
            if isinstance(tag, ModbusTagConfig):
                bits = _INT_BITS.get(tag.resolved_type, 32)
            if len(self.tags) > bits:
                out.append(
                    f"{where}.tags: {len(self.tags)} tags do not fit a {bits}-bit alarm word; "
                    "list fewer or use alarm_count"
                )
        if 0 < self.refresh_s < self.min_interval_s:
            out.append(f"{where}.refresh_s: shorter than min_interval_s; raise it (or 0: never)")
        return out


class Config(_Strict):
    agent: AgentSection = AgentSection()
    mqtt: MqttSection = MqttSection()
    uplink: UplinkSection = UplinkSection()
    downlink: DownlinkSection = DownlinkSection()
    sparkplug: SparkplugSection = SparkplugSection()
    # Optional only with a sensor detector (no process model: `edge_agent.sensor_stage.NullModel`).
    model: ModelSection = Field(
        default_factory=lambda: ModelSection(kind="none", inputs={}, outputs={})
    )
    detector: DetectorSection = DetectorSection()
    drivers: list[DriverConfig] = Field(min_length=1)
    writeback: list[WritebackEntry] = Field(default_factory=list)

    def tags(self) -> Iterator[tuple[str, TagBase]]:
        """Every tag with the name of its driver, in config order."""
        for d in self.drivers:
            for t in d.tags:
                yield d.name, t


__all__ = [
    "Config",
    "ConfigError",
    "ModbusDriverConfig",
    "ModbusTagConfig",
    "OpcUaDriverConfig",
    "OpcUaTagConfig",
    "TagBase",
    "WritebackEntry",
    "load_config",
    "parse_config",
]


def _fmt_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    skip_next_kind = False
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            skip_next_kind = True
            continue
        if skip_next_kind and part in ("opcua", "modbus"):
            skip_next_kind = False
            continue  # pydantic puts the discriminator value in the path; readers don't need it
        skip_next_kind = False
        out += f".{part}" if out else str(part)
    return out or "(top level)"


def _semantic_problems(cfg: Config) -> list[str]:
    problems: list[str] = []
    seen_drivers: set[str] = set()
    seen_tags: dict[str, str] = {}
    for i, d in enumerate(cfg.drivers):
        if d.name in seen_drivers:
            problems.append(f"drivers[{i}].name: duplicate driver name {d.name!r}; rename one")
        seen_drivers.add(d.name)
        for j, t in enumerate(d.tags):
            where = f"drivers[{i}].tags[{j}].name"
            if t.name in seen_tags:
                problems.append(
                    f"{where}: tag {t.name!r} is already defined in {seen_tags[t.name]}; "
                    "tag names must be unique"
                )
            else:
                seen_tags[t.name] = f"drivers[{i}]"
        problems.extend(d.problems(f"drivers[{i}]"))
    for section in ("inputs", "outputs"):
        mapping: dict[str, str] = getattr(cfg.model, section)
        for model_name, tag in mapping.items():
            if tag not in seen_tags:
                problems.append(
                    f"model.{section}.{model_name}: tag {tag!r} is not defined by any driver; "
                    "add it to a driver's tags or map the model name to an existing tag"
                )
    m = cfg.model
    problems.extend(cfg.detector.problems(set(seen_tags), m.kind))
    if m.kind == "none" and (m.inputs or m.outputs or m.ensemble is not None):
        problems.append("model.kind: 'none' has no inputs, outputs or ensemble; remove them")
    if m.kind == "spec" and m.spec is None:
        problems.append("model.spec: required with kind = 'spec' (the model's TOML file)")
    if m.kind == "fmu" and m.fmu is None:
        problems.append("model.fmu: required with kind = 'fmu' (the .fmu file)")
    if m.ensemble is not None and m.kind == "fmu":
        problems.append(
            "model.ensemble: needs an authored model (kind = 'loop' or 'spec'); an FMU cannot "
            "be stepped as an ensemble"
        )
    if m.kind != "spec" and m.spec is not None:
        problems.append(
            f"model.spec: only for kind = 'spec'; kind = 'loop' is the built-in {DEFAULT_SPEC.stem}"
        )
    targets: dict[tuple[str, str], int] = {}
    for k, w in enumerate(cfg.writeback):
        problems.extend(w.problems(f"writeback[{k}]", cfg.drivers, set(seen_tags)))
        first = targets.setdefault((w.driver, w.tag), k)
        if first != k:
            problems.append(
                f"writeback[{k}].tag: {w.driver}/{w.tag} is already written by writeback[{first}]; "
                "one source per tag"
            )
    hb_ticks = cfg.agent.heartbeat_s * cfg.agent.tick_hz
    if hb_ticks < 1:
        problems.append("agent.heartbeat_s: shorter than one tick; raise it or raise tick_hz")
    return problems


def parse_config(data: dict[str, object], path: Path) -> Config:
    """Validate already-parsed TOML `data`; `path` is used in messages and for relative paths."""
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        problems = [f"{_fmt_loc(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(path, problems) from None
    problems = _semantic_problems(cfg)
    if problems:
        raise ConfigError(path, problems)
    return cfg


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML config file; raises `ConfigError` listing every problem."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(p, [f"(file): cannot read: {exc.strerror}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(p, [f"(file): not valid TOML: {exc}"]) from None
    return parse_config(data, p)


def config_hash(path: str | os.PathLike[str]) -> str:
    """Short content hash of the config file, published in the agent's status."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def resolve(base: Path, value: str | None) -> Path | None:
    """A path from the config, relative to the config file's folder."""
    if value is None:
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base.parent / p).resolve()
