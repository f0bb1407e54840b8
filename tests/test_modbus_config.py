"""The `[[drivers]] kind = "modbus"` schema: what it accepts, what it builds, and the problems it
names (key and fix)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from drivers.modbus.config import ModbusDriverConfig
from drivers.modbus.plan import ModbusTag

ROOT = Path(__file__).resolve().parents[1]


def entry(*tags: dict[str, Any], **driver: Any) -> dict[str, Any]:
    return {"kind": "modbus", "name": "d", "host": "127.0.0.1", "tags": list(tags), **driver}


def problems(*tags: dict[str, Any], **driver: Any) -> list[str]:
    return ModbusDriverConfig.model_validate(entry(*tags, **driver)).problems("drivers[0]")


def test_demo_config_modbus_entry_is_clean_and_builds_the_same_tags() -> None:
    """The demo's Modbus entry has no problems and builds the tags it always did."""
    data = tomllib.loads((ROOT / "configs" / "demo.toml").read_text())
    (raw,) = [d for d in data["drivers"] if d["kind"] == "modbus"]
    cfg = ModbusDriverConfig.model_validate(raw)
    assert cfg.problems("drivers[1]") == []
    d = cfg.build()
    assert [(r.unit, r.table, r.address, r.count) for r in d.requests] == [(1, "input", 0, 11)]
    assert d.max_outstanding == 1 and d.framing == "tcp" and d.timeout_s == 1.0


def test_full_entry_builds_units_groups_and_types() -> None:
    """Per-tag unit ids override the default, groups and every new key reach the driver."""
    cfg = ModbusDriverConfig.model_validate(
        entry(
            {"name": "a", "address": 0},
            {"name": "s", "address": 10, "type": "string", "length": 4, "unit_id": 7},
            {"name": "c", "address": 3, "table": "coil", "writable": True, "group": "slow"},
            {"name": "b", "address": 20, "type": "bool", "bit": 15},
            {"name": "x", "address": 30, "type": "uint64", "order": "DCBA", "scale": 0.5},
            unit_id=3,
            framing="tcp",
            max_outstanding=4,
            groups=[{"name": "slow", "poll_interval_s": 5.0}],
        )
    )
    assert cfg.problems("drivers[0]") == []
    d = cfg.build()
    tags = {t.name: t for r in d.requests for t in r.tags}
    assert tags["a"] == ModbusTag("a", 0, unit=3)
    assert (tags["s"].unit, tags["s"].type, tags["s"].length) == (7, "string", 4)
    assert (tags["c"].type, tags["c"].group, tags["c"].writable) == ("bool", "slow", True)
    assert (tags["b"].bit, tags["x"].order, tags["x"].scale) == (15, "DCBA", 0.5)
    assert d.max_outstanding == 4


@pytest.mark.parametrize(
    ("tag", "driver", "key", "fix"),
    [
        ({"table": "coil", "bit": 2}, {}, "tags[0].bit", "remove it"),
        ({"type": "int16", "bit": 2}, {}, "tags[0].bit", "type = 'bool'"),
        ({"type": "bool"}, {}, "tags[0].bit", "needs bit = 0..15"),
        ({"table": "discrete", "type": "int16"}, {}, "tags[0].type", "use type = 'bool'"),
        ({"type": "string"}, {}, "tags[0].length", "needs length"),
        ({"type": "int32", "length": 2}, {}, "tags[0].length", "only for type = 'string'"),
        ({"type": "string", "length": 2, "order": "CDAB"}, {}, "tags[0].order", "'BADC'"),
        ({"type": "string", "length": 100}, {"max_registers": 50}, "tags[0].length", "exceed"),
        ({"table": "input", "writable": True}, {}, "tags[0].writable", "only holding"),
        ({"type": "bool", "bit": 1, "scale": 2.0}, {}, "tags[0].scale", "do not apply"),
        ({"scale": 0.0}, {}, "tags[0].scale", "must not be 0"),
        ({"address": 65534, "type": "float64"}, {}, "tags[0].address", "runs past"),
        ({"group": "fast"}, {}, "tags[0].group", "add a [[drivers.groups]] entry"),
        ({}, {"timeout_s": 6.0, "poll_interval_s": 1.0}, "timeout_s", "at most 5 s"),
        ({}, {"framing": "rtu", "max_outstanding": 2}, "max_outstanding", "set it to 1"),
        (
            {"group": "g"},
            {"groups": [{"name": "g", "poll_interval_s": 0.01}]},
            "groups[0].poll_interval_s",
            "raise it",
        ),
    ],
)
def test_problems_name_key_and_fix(
    tag: dict[str, Any], driver: dict[str, Any], key: str, fix: str
) -> None:
    """Each impossible combination is reported once with its key path and a fix."""
    found = problems({"name": "t", "address": 0, **tag}, **driver)
    assert len(found) == 1, found
    assert found[0].startswith(f"drivers[0].{key}: ") and fix in found[0]


@pytest.mark.parametrize(
    ("first", "second", "overlap"),
    [
        ({"address": 0, "type": "int64"}, {"address": 3}, True),
        ({"address": 0, "type": "float64"}, {"address": 4}, False),
        ({"address": 10, "type": "string", "length": 5}, {"address": 14, "type": "int16"}, True),
        ({"address": 0, "type": "int32"}, {"address": 1, "table": "input"}, False),
        ({"address": 0, "type": "int32"}, {"address": 1, "unit_id": 2}, False),
        ({"address": 5, "type": "bool", "bit": 1}, {"address": 5, "type": "bool", "bit": 2}, False),
        ({"address": 5, "type": "bool", "bit": 1}, {"address": 5, "type": "bool", "bit": 1}, True),
        ({"address": 5, "type": "bool", "bit": 1}, {"address": 5}, True),
        ({"address": 7, "table": "coil"}, {"address": 7, "table": "coil"}, True),
        ({"address": 7, "table": "coil"}, {"address": 7, "table": "discrete"}, False),
    ],
)
def test_overlaps_for_every_width(
    first: dict[str, Any], second: dict[str, Any], overlap: bool
) -> None:
    """Registers (any width), bits of registers and coils overlap only on the same unit and
    table; different bits of one register do not."""
    found = problems({"name": "a", **first}, {"name": "b", **second})
    assert bool(found) == overlap, found
    if overlap:
        assert found[0].startswith("drivers[0].tags[1].address:") and "'a'" in found[0]


def test_schema_errors_name_the_key() -> None:
    """Unknown keys and out-of-range values are rejected by the schema with their path."""
    with pytest.raises(ValidationError) as err:
        ModbusDriverConfig.model_validate(
            entry({"name": "a", "address": 0, "bit": 16, "colour": 1}, max_bits=4000)
        )
    text = str(err.value)
    assert "max_bits" in text and "tags.0.bit" in text and "tags.0.colour" in text
