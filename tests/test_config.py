"""Config validation: every problem reported with its key path, exit code 2, before any I/O."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import ConfigError, load_config, parse_config
from hil.tags import BY_NAME, NAMESPACE_URI, tags_of

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.toml"


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """`edge-agent check-config PATH` in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "check-config", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def demo_data() -> dict[str, Any]:
    return tomllib.loads(DEMO.read_text())


def test_demo_config_is_valid() -> None:
    """The shipped demo config loads and defines every rig tag."""
    cfg = load_config(DEMO)
    names = {t.name for _, t in cfg.tags()}
    assert names == set(BY_NAME)


def test_demo_config_matches_rig_tag_table() -> None:
    """Node ids and register maps in the demo config are the rig's own."""
    cfg = load_config(DEMO)
    by_name = {t.name: t for _, t in cfg.tags()}
    for t in tags_of("process"):
        assert by_name[t.name].node == f"nsu={NAMESPACE_URI};s=Loop.{t.name}"
    for t in tags_of("drive"):
        c = by_name[t.name]
        assert (c.address, c.type, c.order, c.scale, c.table) == (  # type: ignore[attr-defined]
            t.address,
            t.reg_type,
            t.order,
            t.scale,
            "input",
        )


def test_all_schema_problems_are_listed_with_paths(tmp_path: Path) -> None:
    """Wrong types and unknown keys are all reported, each with its key path."""
    d = demo_data()
    d["agent"]["tickhz"] = 3
    d["drivers"][1]["port"] = "x"
    d["drivers"][1]["tags"][0]["type"] = "float16"
    with pytest.raises(ConfigError) as e:
        parse_config(d, tmp_path / "bad.toml")
    text = str(e.value)
    assert "agent.tickhz" in text
    assert "drivers[1].port" in text
    assert "drivers[1].tags[0].type" in text
    assert "bad.toml" in text
    assert len(e.value.problems) == 3


def test_cross_field_problems_are_listed(tmp_path: Path) -> None:
    """Duplicate tags, overlapping registers and unknown model tags are all reported."""
    d = demo_data()
    d["drivers"][0]["tags"][1]["name"] = "flow"
    d["drivers"][1]["tags"][1]["address"] = 0
    d["model"]["outputs"]["flow"] = "no_such_tag"
    with pytest.raises(ConfigError) as e:
        parse_config(d, tmp_path / "bad.toml")
    probs = e.value.problems
    assert any(p.startswith("drivers[0].tags[") and "already defined" in p for p in probs)
    assert any("drivers[1].tags[1].address" in p and "overlaps" in p for p in probs)
    assert any(p.startswith("model.outputs.flow") and "no_such_tag" in p for p in probs)


def test_check_config_cli_exits_2_listing_problems(tmp_path: Path) -> None:
    """`edge-agent check-config` on a broken file exits 2 and prints every problem."""
    bad = tmp_path / "agent.toml"
    bad.write_text(
        DEMO.read_text()
        .replace("tick_hz = 10", "tick_hz = -1")
        .replace("port = 5020", "port = 70000")
    )
    r = check_config(bad)
    assert r.returncode == 2
    assert "agent.tick_hz" in r.stderr
    assert "drivers[1].port" in r.stderr
    assert str(bad) in r.stderr


def test_check_config_cli_ok() -> None:
    """`edge-agent check-config` on the demo config exits 0."""
    r = check_config(DEMO)
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


def test_not_toml_is_a_config_error(tmp_path: Path) -> None:
    """A file that is not TOML is reported as such, naming the file."""
    p = tmp_path / "x.toml"
    p.write_text("[agent\nid=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)


def test_check_config_names_model_mapping_problems(tmp_path: Path) -> None:
    """A model input mapped under a name the model does not have is reported with its key."""
    bad = tmp_path / "agent.toml"
    bad.write_text(
        DEMO.read_text()
        .replace('valve_out = "valve_out"', 'valve_outt = "valve_out"')
        .replace('state_dir = "../state"', f'state_dir = "{tmp_path}"')
    )
    r = check_config(bad)
    assert r.returncode == 2
    assert "model.inputs.valve_outt" in r.stderr
    assert "model.inputs.valve_out: missing" in r.stderr
