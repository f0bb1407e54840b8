"""Every kind of Digital Original the config offers is built by the agent and predicts.

No network here: the agent is built (no I/O happens before `run`), its process image is fed
samples by hand, and the comparator is ticked directly.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drivers.base import Quality, Sample
from edge_agent.agent import Agent
from edge_agent.config import ConfigError, parse_config
from edge_agent.demo import DEMO_CONFIG
from models.process.engine import SpecModel
from models.process.fmu import FmuModel
from models.process.units import UNITS_DIR


def config(tmp_path: Path, tags: list[str], model: dict[str, Any]) -> dict[str, Any]:
    """A config whose one Modbus driver defines `tags` (never connected in these tests)."""
    return {
        "agent": {"id": "kinds", "state_dir": str(tmp_path / "state")},
        "model": model,
        "detector": {"enabled": False},
        "drivers": [
            {
                "kind": "modbus",
                "name": "plc",
                "host": "127.0.0.1",
                "port": 1502,
                "tags": [
                    {"name": t, "address": 2 * i, "type": "float32", "table": "input"}
                    for i, t in enumerate(tags)
                ],
            }
        ],
    }


def feed(agent: Agent, values: dict[str, float], t: float) -> None:
    agent.image.update(Sample(k, v, Quality.GOOD, t, t) for k, v in values.items())


def test_fmu_model_runs_in_the_agent(tmp_path: Path, tank_fmu: Path) -> None:
    """kind = "fmu": the agent loads the FMU with the configured mapping and predicts from it."""
    data = config(tmp_path, ["inflow_t", "valve_t", "level_t", "outflow_t"], {
        "kind": "fmu", "fmu": str(tank_fmu),
        "inputs": {"inflow": "inflow_t", "valve": "valve_t"},
        "outputs": {"level": "level_t", "outflow": "outflow_t"},
    })  # fmt: skip
    path = tmp_path / "agent.toml"
    path.write_text("# built in the test; the agent hashes the file for its status\n")
    agent = Agent(parse_config(data, path), path)
    assert isinstance(agent.model, FmuModel)
    values = {"inflow_t": 0.05, "valve_t": 1.0, "level_t": 1.0, "outflow_t": 0.1}
    for k in range(20):
        feed(agent, values, 100.0 + 0.1 * k)
        res = agent.comparator.tick(100.0 + 0.1 * k)
    assert np.isfinite(res.predicted).all()
    assert res.prediction == "good"


def test_heat_exchanger_with_an_ensemble_runs_in_the_agent(tmp_path: Path) -> None:
    """kind = "spec" with a second, different unit and an ensemble of variants: predictions and
    a posterior estimate of the varied parameter come out."""
    tags = ["thi", "tci", "fh", "fc", "tho", "tco", "duty"]
    data = config(tmp_path, tags, {
        "kind": "spec", "spec": str(UNITS_DIR / "heat_exchanger.toml"),
        "inputs": {"t_hot_in": "thi", "t_cold_in": "tci", "flow_hot": "fh", "flow_cold": "fc"},
        "outputs": {"t_hot_out": "tho", "t_cold_out": "tco", "duty_kw": "duty"},
        "ensemble": {"variants": 50, "vary": ["ua_w_per_k"],
                     "sigma": {"t_hot_out": 0.2, "t_cold_out": 0.2, "duty_kw": 0.1}},
    })  # fmt: skip
    path = tmp_path / "agent.toml"
    path.write_text("# built in the test; the agent hashes the file for its status\n")
    agent = Agent(parse_config(data, path), path)
    assert isinstance(agent.model, SpecModel) and agent.learner is not None
    for k in range(50):
        t = 100.0 + 0.1 * k
        feed(agent, {"thi": 80.0, "tci": 15.0, "fh": 20.0, "fc": 30.0,
                     "tho": 50.0, "tco": 35.0, "duty": 10.0}, t)  # fmt: skip
        res = agent.comparator.tick(t)
        assert agent.comparator.step_info is not None
        agent.learner.tick(agent.comparator.step_info)
    assert np.isfinite(res.predicted).all()
    est = agent.learner.calibrator.estimate()["ua_w_per_k"]
    assert 50.0 <= est[0] <= 5000.0 and est[1] >= 0.0


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ({"kind": "fmu"}, "model.fmu: required"),
        ({"kind": "spec"}, "model.spec: required"),
        ({"kind": "fmu", "fmu": "x.fmu", "ensemble": {}}, "model.ensemble: needs an authored"),
    ],
)
def test_model_kind_problems_are_named(tmp_path: Path, model: dict[str, Any], expected: str
                                       ) -> None:  # fmt: skip
    """A model kind without its file, or an ensemble without an authored model, is refused."""
    data = config(tmp_path, ["a", "b"], {**model, "inputs": {"x": "a"}, "outputs": {"y": "b"}})
    with pytest.raises(ConfigError, match=expected):
        parse_config(data, tmp_path / "agent.toml")


def test_unknown_varied_parameter_is_named(tmp_path: Path) -> None:
    """An ensemble that varies a parameter the model does not have names it and the model."""
    data = config(tmp_path, ["thi", "tci", "fh", "fc", "tho", "tco", "duty"], {
        "kind": "spec", "spec": str(UNITS_DIR / "heat_exchanger.toml"),
        "inputs": {"t_hot_in": "thi", "t_cold_in": "tci", "flow_hot": "fh", "flow_cold": "fc"},
        "outputs": {"t_hot_out": "tho", "t_cold_out": "tco", "duty_kw": "duty"},
        "ensemble": {"vary": ["fouling"]},
    })  # fmt: skip
    path = tmp_path / "agent.toml"
    with pytest.raises(ConfigError, match=r"model.ensemble.vary: 'fouling'.*heat_exchanger"):
        Agent(parse_config(data, path), path)


def test_explicit_variants_file_runs_exactly_those_variants(tmp_path: Path) -> None:
    """`model.ensemble.variants_file` runs the listed variants (missing parameters at nominal);
    a value outside its declared range is a config error naming the key, the variant and the
    line."""
    variants = tmp_path / "variants.csv"
    variants.write_text("variant,pump_efficiency_frac\nnew,0.44\nworn,0.38\n")
    data = tomllib.loads(DEMO_CONFIG.read_text())
    data["agent"]["state_dir"] = str(tmp_path / "state")
    data["model"]["ensemble"] = {"variants_file": str(variants), "vary": ["pump_efficiency_frac"]}
    agent = Agent(parse_config(data, DEMO_CONFIG), DEMO_CONFIG)
    assert agent.learner is not None
    spec = agent.learner.spec
    params = agent.learner.ensemble.params
    eff = spec.params.index("pump_efficiency_frac")
    np.testing.assert_allclose(params[:, eff], [0.44, 0.38])
    other = [i for i in range(len(spec.params)) if i != eff]
    np.testing.assert_allclose(params[:, other], np.tile(spec.nominal[other], (2, 1)))
    variants.write_text("variant,pump_efficiency_frac\nnew,0.44\nbroken,7.0\n")
    with pytest.raises(ConfigError, match=r"model.ensemble.variants_file: .*variants\[1\]"):
        Agent(parse_config(data, DEMO_CONFIG), DEMO_CONFIG)


def test_built_agent_keeps_no_per_tag_configuration(tmp_path: Path) -> None:
    """Once built, the agent holds its configuration without the tag lists (the drivers, the
    image and the reporter carry what each tag needs); the caller's configuration is intact."""
    data = tomllib.loads(DEMO_CONFIG.read_text())
    data["agent"]["state_dir"] = str(tmp_path / "state")
    cfg = parse_config(data, DEMO_CONFIG)
    names = [t.name for _, t in cfg.tags()]
    agent = Agent(cfg, DEMO_CONFIG)
    assert [len(d.tags) for d in agent.cfg.drivers] == [0] * len(cfg.drivers)
    assert [d.name for d in agent.cfg.drivers] == [d.name for d in cfg.drivers]
    assert [t.name for _, t in cfg.tags()] == names
    assert list(agent.image.names) == names
