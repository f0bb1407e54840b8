"""The Node-RED OPC UA flow and a `--quick` run of `bench.opcua_nodered`.

The flow test checks what the generated file asks Node-RED to do: subscribe to every rig tag
once, at the agent's 100 ms, and publish each value at QoS 1. The quick run (marked slow: it
starts the rig, mosquitto, the agent and Node-RED, about a minute) checks that all three cases
deliver values to where they are counted and that the result is complete. No timing is
asserted. Node-RED is an npm install of its own (`bash bench/nodered/install.sh`): when it
is missing the quick run fails and names that command.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.nodered import flows, flows_opcua
from hil.load.layout import NAMES

ROOT = Path(__file__).resolve().parents[1]
INSTALL = "bash bench/nodered/install.sh"


def test_flow_subscribes_every_tag_once_per_process_and_publishes_at_qos1() -> None:
    """Two rig processes: two clients, each subscribing its own tags; one QoS 1 publisher."""
    nodes = flows_opcua.flows(1000, 2)
    by_type: dict[str, list[dict[str, object]]] = {}
    for n in nodes:
        by_type.setdefault(str(n["type"]), []).append(n)
    clients, injects = by_type["OpcUa-Client"], by_type["inject"]
    assert len(clients) == len(injects) == len(by_type["OpcUa-Endpoint"]) == 2
    assert {c["endpoint"] for c in clients} == {e["id"] for e in by_type["OpcUa-Endpoint"]}
    for c in clients:
        assert c["action"] == "subscribe" and (c["time"], c["timeUnit"]) == (100, "ms")
    ids: list[str] = []
    for inj in injects:
        assert inj["topic"] == "multiple" and inj["once"] is True
        ids += [item["nodeId"] for item in json.loads(str(inj["payload"]))]
    assert len(ids) == len(set(ids)) == 1000
    assert "ns=2;s=p0000_stamp" in ids and f"ns=2;s=p0055_{NAMES[9]}" in ids
    (out,) = by_type["mqtt out"]
    assert out["qos"] == "1"
    (shape,) = by_type["function"]
    assert shape["wires"] == [[out["id"]]]
    assert all(c["wires"][0] == [shape["id"]] for c in clients)  # type: ignore[index]


@pytest.mark.slow
def test_opcua_nodered_benchmark_quick_run(tmp_path: Path) -> None:
    """`python -m bench.opcua_nodered --quick`: bare, agent and Node-RED all deliver values,
    their delays are measured, and the JSON result holds every row."""
    assert flows.installed(), f"Node-RED is not installed: run `{INSTALL}` (needs npm)"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.opcua_nodered", "--quick", "--results-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "machine:" in proc.stdout and "target:" in proc.stdout
    result = json.loads((tmp_path / "opcua_nodered.json").read_text())
    assert result["benchmark"] == "opcua_nodered" and result["quick"] is True
    rows = {r["case"]: r for r in result["rows"]}
    for case in ("bare", "agent", "node-red"):
        for metric in ("values/s", "CPU", "RSS", "delay p50", "delay p99", "delay max"):
            row = rows[f"{case} {metric}"]
            assert all(math.isfinite(s) and s > 0 for s in row["samples"]), row
            assert row["baseline"] is None or row["baseline"] in rows, row
        assert rows[f"{case} values/s"]["extra"]["delivered_fraction"] > 0
    assert rows["rig offered"]["median"] > 0
    assert len(result["targets"]) == 1
