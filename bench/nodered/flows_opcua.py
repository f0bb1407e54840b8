"""Node-RED flows for the load rig's OPC UA servers, and the Node-RED process for a benchmark.

    python -m bench.nodered.flows_opcua --tags 1000 --processes 4 > OUT.json

(`bench/nodered/flows-opcua-1000.json` is that output.)

The flow is what a plant engineer builds with node-red-contrib-opcua: per rig server process
an `inject` node firing once at start with topic `multiple` and as payload the list of the
process's node ids (`[{"nodeId": "ns=2;s=p0000_stamp"}, ...]`), wired into an `OpcUa-Client`
node with action SUBSCRIBE and a 100 ms interval (the package's documented way to subscribe
to many items at once: one subscription, one monitored-item group, its interval used as
publishing and sampling interval, as the agent's `publishing_interval_ms = 100`). The client
sends one message per changed value, its payload the whole DataValue; a `function` node shapes
it into `{"value": v, "ts": source time in Unix s}` on `nodered/tags/<tag>` (dropping the
client's one `subscriptionId` message), and an
`mqtt out` node publishes it at QoS 1 (as the agent publishes).

The node ids use namespace index 2: the rig's namespace (`hil.load.layout.NAMESPACE_URI`) is
the first one each rig server registers after the two standard ones. Endpoints come from the
environment (`${OPCUA_ENDPOINT_<k>}`, `${MQTT_HOST}`, `${MQTT_PORT}`), so a generated file
serves any run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.load_run import stop_process
from bench.nodered import flows as flows_modbus
from bench.nodered.flows import HERE, RED_JS
from hil.load.layout import part_slices, tags_of_instance

NAMESPACE_INDEX = 2
INTERVAL_MS = 100
TOPIC_PREFIX = "nodered/tags/"
_PKI = Path(".config/node-red-opcua-nodejs/PKI/own")
PKI_FILES = (_PKI / "certs/client_certificate.pem", _PKI / "private/private_key.pem")
CERTIFICATE_TIMEOUT_S = 120.0

SHAPE = (
    """if (msg.topic === "subscriptionId") {
    return null;  // the client's note that the subscription exists, not a value
}
const id = String(msg.topic);
const dv = msg.payload;
const src = dv.sourceTimestamp ? new Date(dv.sourceTimestamp).getTime() / 1000 : Date.now() / 1000;
msg.topic = \""""
    + TOPIC_PREFIX
    + """\" + id.slice(id.indexOf(";s=") + 3);
msg.payload = {value: dv.value.value, ts: src};
return msg;
"""
)


def node_id(name: str, ns: int = NAMESPACE_INDEX) -> str:
    """The node id string node-opcua takes for a rig tag: `ns=2;s=p0000_flow`."""
    return f"ns={ns};s={name}"


def flows(n_tags: int, processes: int, ns: int = NAMESPACE_INDEX) -> list[dict[str, Any]]:
    """The flow for a rig of `n_tags` OPC UA tags in `processes` server processes."""
    tab = "opcua-tab"
    nodes: list[dict[str, Any]] = [
        {"id": tab, "type": "tab", "label": f"load rig OPC UA, {n_tags} tags"},
        {
            "id": "shape", "type": "function", "z": tab, "name": "value with source time",
            "func": SHAPE, "outputs": 1, "x": 650, "y": 100, "wires": [["publish"]],
        },
        *flows_modbus.mqtt_nodes(tab, "nodered-opcua", x=900),
    ]  # fmt: skip
    for part, instances in enumerate(part_slices(n_tags, processes)):
        items = [
            {"nodeId": node_id(t.name, ns)} for i in instances for t in tags_of_instance(n_tags, i)
        ]
        y = 100 + 60 * part
        nodes += [
            {
                "id": f"endpoint-{part}", "type": "OpcUa-Endpoint", "name": f"rig {part}",
                "endpoint": f"${{OPCUA_ENDPOINT_{part}}}", "secpol": "None", "secmode": "None",
                "none": True, "login": False, "usercert": False, "usercertificate": "",
                "userprivatekey": "",
            },
            {
                "id": f"items-{part}", "type": "inject", "z": tab,
                "name": f"subscribe {len(items)} items", "props": [
                    {"p": "payload"}, {"p": "topic", "vt": "str"},
                ],
                "repeat": "", "crontab": "", "once": True, "onceDelay": "0.5",
                "topic": "multiple", "payload": json.dumps(items), "payloadType": "json",
                "x": 150, "y": y, "wires": [[f"client-{part}"]],
            },
            {
                "id": f"client-{part}", "type": "OpcUa-Client", "z": tab,
                "name": f"rig {part}", "endpoint": f"endpoint-{part}", "action": "subscribe",
                "deadbandtype": "a", "deadbandvalue": 1, "time": INTERVAL_MS, "timeUnit": "ms",
                "certificate": "n", "localfile": "", "localkeyfile": "", "securitymode": "None",
                "securitypolicy": "None", "useTransport": False, "maxChunkCount": 1,
                "maxMessageSize": 8192, "receiveBufferSize": 8192, "sendBufferSize": 8192,
                "setstatusandtime": False, "keepsessionalive": False,
                "x": 400, "y": y, "wires": [["shape"], [], []],
            },
        ]  # fmt: skip
    return nodes


def _launch(flow_file: Path, env: dict[str, str], log_path: Path) -> subprocess.Popen[str]:
    with log_path.open("a") as log:
        return subprocess.Popen(
            ["node", str(RED_JS), "--settings", str(HERE / "settings.js"),
             "--userDir", str(flow_file.parent), str(flow_file)],
            cwd=HERE, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, text=True,
        )  # fmt: skip


def _make_certificate(flow_file: Path, env: dict[str, str], log_path: Path, home: Path) -> None:
    """Run Node-RED until its OPC UA clients have created their certificate, then stop it."""
    proc = _launch(flow_file, env, log_path)
    try:
        deadline = time.monotonic() + CERTIFICATE_TIMEOUT_S
        while not all((home / f).is_file() and (home / f).stat().st_size > 0 for f in PKI_FILES):
            if proc.poll() is not None:
                raise RuntimeError(f"Node-RED exited with code {proc.returncode}: {log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Node-RED made no client certificate in {home}")
            time.sleep(0.2)
    finally:
        stop_process(proc)


def start(
    n_tags: int,
    endpoints: Sequence[str],
    mqtt: tuple[str, int],
    workdir: Path,
    home: Path | None = None,
) -> subprocess.Popen[str]:
    """Node-RED headless on a generated OPC UA flow file in `workdir` (its user directory).

    node-opcua keeps its client certificate under `$HOME` (`home`, default `workdir`) and
    makes one on first use (seconds of RSA key generation, while the other clients wait on
    its lock): when `home` holds none yet, a first Node-RED makes it and is stopped, so the
    returned one subscribes at once. Console output goes to `workdir/node-red.log`."""
    home = workdir if home is None else home
    flow_file = workdir / "flows.json"
    flow_file.write_text(json.dumps(flows(n_tags, len(endpoints))))
    env = dict(os.environ)
    for k, ep in enumerate(endpoints):
        env[f"OPCUA_ENDPOINT_{k}"] = ep
    env["MQTT_HOST"], env["MQTT_PORT"] = mqtt[0], str(mqtt[1])
    env["NODE_RED_PORT"] = "0"
    env["HOME"] = str(home)
    log_path = workdir / "node-red.log"
    log_path.write_text("")
    if not all((home / f).is_file() for f in PKI_FILES):
        _make_certificate(flow_file, env, log_path, home)
    return _launch(flow_file, env, log_path)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.nodered.flows_opcua", description=__doc__)
    p.add_argument("--tags", type=int, required=True)
    p.add_argument("--processes", type=int, default=1)
    args = p.parse_args(argv)
    json.dump(flows(args.tags, args.processes), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
