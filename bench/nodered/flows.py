"""Node-RED flows for the load rig's Modbus servers, and the Node-RED process for a benchmark.

    python -m bench.nodered.flows --tags 1000 --processes 1 > bench/nodered/flows-1000.json

The flow is what a plant engineer builds with node-red-contrib-modbus: `modbus-read` nodes
polling input registers every 100 ms (one per three plant instances, 108 registers, the topic
naming the first instance), a `function` node decoding each block into one message per tag
(float32 ABCD; the stamp as uint32) on `nodered/tags/<tag>`, and an `mqtt out` node at QoS 1
(as the agent publishes). The reads are spread over several `modbus-client` connections
(`READS_PER_CLIENT` each) because one client waits at least 1 ms between commands and so
cannot poll 10,000 tags at 10 Hz alone. Endpoints come from the environment (`${RIG_HOST}`,
`${RIG_PORT_<k>}`, `${MQTT_HOST}`, `${MQTT_PORT}`), so a generated file serves any run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hil.load.layout import (
    MODBUS_UNIT,
    NAMES,
    REGS_PER_INSTANCE,
    REGS_PER_TAG,
    part_slices,
    tags_in_instance,
)

HERE = Path(__file__).resolve().parent
RED_JS = HERE / "node_modules" / "node-red" / "red.js"
INSTANCES_PER_READ = 3
READS_PER_CLIENT = 20

DECODE = (
    "const names = "
    + json.dumps(list(NAMES))
    + """;
const regs = msg.payload;
const first = parseInt(msg.topic, 10);
const dv = new DataView(new ArrayBuffer(4));
const out = [];
for (let j = 0; j * 36 < regs.length; j++) {
    const tag = "nodered/tags/p" + String(first + j).padStart(4, "0") + "_";
    for (let s = 0; s < 18 && j * 36 + 2 * s + 1 < regs.length; s++) {
        const hi = regs[j * 36 + 2 * s], lo = regs[j * 36 + 2 * s + 1];
        let v;
        if (s === 0) {
            v = hi * 65536 + lo;
        } else {
            dv.setUint16(0, hi);
            dv.setUint16(2, lo);
            v = dv.getFloat32(0);
        }
        out.push({topic: tag + names[s], payload: v});
    }
}
return [out];
"""
)


def installed() -> bool:
    """True when `bench/nodered/install.sh` has been run (Node-RED is optional)."""
    return RED_JS.exists()


def mqtt_nodes(tab: str, client_id: str, x: int) -> list[dict[str, Any]]:
    """The bench broker's config node and one `mqtt out` node (id "publish", QoS 1, one
    message per value) on `tab`: both flows end in these."""
    return [
        {
            "id": "broker", "type": "mqtt-broker", "name": "bench broker",
            "broker": "${MQTT_HOST}", "port": "${MQTT_PORT}", "clientid": client_id,
            "autoConnect": True, "usetls": False, "protocolVersion": "4", "keepalive": "60",
            "cleansession": True,
        },
        {
            "id": "publish", "type": "mqtt out", "z": tab, "name": "publish each value",
            "topic": "", "qos": "1", "retain": "false", "broker": "broker",
            "x": x, "y": 100, "wires": [],
        },
    ]  # fmt: skip


def flows(n_tags: int, processes: int) -> list[dict[str, Any]]:
    """The flow for a rig of `n_tags` Modbus tags in `processes` server processes."""
    tab = "load-tab"
    nodes: list[dict[str, Any]] = [
        {"id": tab, "type": "tab", "label": f"load rig, {n_tags} tags"},
        {
            "id": "decode", "type": "function", "z": tab, "name": "registers to tags",
            "func": DECODE, "outputs": 1, "x": 400, "y": 100, "wires": [["publish"]],
        },
        *mqtt_nodes(tab, "nodered-load", x=650),
    ]  # fmt: skip
    reads = 0
    client = ""
    for part, instances in enumerate(part_slices(n_tags, processes)):
        for k in range(0, len(instances), INSTANCES_PER_READ):
            if reads % READS_PER_CLIENT == 0 or k == 0:
                client = f"client-{part}-{k}"
                nodes.append(
                    {
                        "id": client, "type": "modbus-client", "name": f"rig {part} from {k}",
                        "clienttype": "tcp", "bufferCommands": True, "stateLogEnabled": False,
                        "queueLogEnabled": False, "failureLogEnabled": True,
                        "tcpHost": "${RIG_HOST}", "tcpPort": f"${{RIG_PORT_{part}}}",
                        "tcpType": "DEFAULT", "unit_id": MODBUS_UNIT, "commandDelay": 1,
                        "clientTimeout": 1000, "reconnectOnTimeout": True,
                        "reconnectTimeout": 2000, "parallelUnitIdsAllowed": True,
                    }
                )  # fmt: skip
            block = instances[k : k + INSTANCES_PER_READ]
            last = block[-1]
            count = (len(block) - 1) * REGS_PER_INSTANCE
            count += tags_in_instance(n_tags, last) * REGS_PER_TAG
            nodes.append(
                {
                    "id": f"read-{part}-{k}", "type": "modbus-read", "z": tab,
                    "name": f"p{block[0]:04d}", "topic": str(block[0]),
                    "showStatusActivities": False, "logIOActivities": False,
                    "showErrors": True, "unitid": str(MODBUS_UNIT),
                    "dataType": "InputRegister", "adr": str(k * REGS_PER_INSTANCE),
                    "quantity": str(count), "rate": "100", "rateUnit": "ms",
                    "delayOnStart": False, "startDelayTime": "", "server": client,
                    "useIOFile": False, "ioFile": "", "useIOForPayload": False,
                    "emptyMsgOnFail": False, "x": 150, "y": 100 + 40 * reads,
                    "wires": [["decode"], []],
                }
            )  # fmt: skip
            reads += 1
    return nodes


def start(
    n_tags: int, endpoints: Sequence[str], mqtt: tuple[str, int], workdir: Path
) -> subprocess.Popen[str]:
    """Node-RED headless on a generated flow file in `workdir` (its user directory)."""
    flow_file = workdir / "flows.json"
    flow_file.write_text(json.dumps(flows(n_tags, len(endpoints))))
    env = dict(os.environ)
    env["RIG_HOST"] = endpoints[0].rpartition(":")[0]
    for k, ep in enumerate(endpoints):
        env[f"RIG_PORT_{k}"] = ep.rpartition(":")[2]
    env["MQTT_HOST"], env["MQTT_PORT"] = mqtt[0], str(mqtt[1])
    env["NODE_RED_PORT"] = "0"
    return subprocess.Popen(
        ["node", str(RED_JS), "--settings", str(HERE / "settings.js"),
         "--userDir", str(workdir), str(flow_file)],
        cwd=HERE, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.nodered.flows", description=__doc__)
    p.add_argument("--tags", type=int, required=True)
    p.add_argument("--processes", type=int, default=1)
    args = p.parse_args(argv)
    json.dump(flows(args.tags, args.processes), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


def tmp_userdir() -> tempfile.TemporaryDirectory[str]:
    """A fresh Node-RED user directory (removed with the object)."""
    return tempfile.TemporaryDirectory(prefix="bench-nodered-")


if __name__ == "__main__":
    sys.exit(main())
