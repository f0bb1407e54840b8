"""`edge-agent run` as systemd runs it: a subprocess with a notify socket, JSON logs, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import tomllib
from pathlib import Path
from typing import Any

from edge_agent.demo import DEMO_CONFIG
from hil.rig import Rig
from tests.fixtures.mqtt import Mosquitto, MqttSub, Received, deltas, poll_until


def write_config(path: Path, rig: Rig, broker: Mosquitto) -> None:
    """The demo config with the rig's and broker's ports, as a file of its own."""
    text = DEMO_CONFIG.read_text()
    text = text.replace("opc.tcp://127.0.0.1:4840/edge-agent/hil/", rig.opcua_endpoint)
    text = text.replace("port = 5020", f"port = {rig.modbus_port}")
    text = text.replace("port = 1883", f"port = {broker.port}")
    text = text.replace('id = "demo-gateway"', 'id = "cli"')
    text = text.replace('state_dir = "../state"', f'state_dir = "{path.parent / "state"}"')
    tomllib.loads(text)  # still valid TOML
    path.write_text(text)


async def test_run_notifies_systemd_logs_json_and_stops_on_sigterm(
    tmp_path: Path, mosquitto: Mosquitto, mqtt_sub: MqttSub
) -> None:
    """READY and WATCHDOG reach the notify socket, logs are JSON lines, deltas are published,
    and SIGTERM stops the agent with exit code 0 and a retained "offline" status."""
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.setblocking(False)
    async with Rig(seed=5) as rig:
        cfg = tmp_path / "agent.toml"
        write_config(cfg, rig, mosquitto)
        sub = await mqtt_sub(mosquitto.host, mosquitto.port, "edge-agent/v1/cli/#")
        env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), WATCHDOG_USEC="1000000")
        log_path = tmp_path / "agent.log"
        log_file = log_path.open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge_agent.cli", "run", "--config", str(cfg),
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=log_file,
        )  # fmt: skip
        notes: list[str] = []

        def drain_notes() -> bool:
            while True:
                try:
                    notes.append(sock.recv(4096).decode())
                except BlockingIOError:
                    break
            return any("READY=1" in n for n in notes) and any("WATCHDOG=1" in n for n in notes)

        try:
            assert await poll_until(drain_notes, 60), notes

            def has_delta(msgs: list[Received]) -> bool:
                return bool(deltas(msgs))

            assert await sub.wait_for(has_delta, 30)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise AssertionError(
                    "no exit 30 s after SIGTERM:\n" + log_path.read_text()[-3000:]
                ) from None
            finally:
                log_file.close()
            drain_notes()
            sock.close()
    err = log_path.read_text()
    assert proc.returncode == 0, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("{")]
    events = [json.loads(ln)["event"] for ln in lines]
    assert "agent running" in events and "agent stopped" in events
    assert any("STOPPING=1" in n for n in notes)
    status = [m for m in sub.snapshot() if m.topic == "edge-agent/v1/cli/status"]
    last: dict[str, Any] = json.loads(status[-1].payload)
    assert last["state"] == "offline"


async def test_run_with_a_broken_model_file_exits_2(tmp_path: Path) -> None:
    """A detector file that is not an ONNX model stops `run` before any I/O with exit code 2."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        DEMO_CONFIG.read_text().replace(
            "[detector]               # default", f'[detector]\npath = "{bad}"\n# default'
        )
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge_agent.cli", "run", "--config", str(cfg),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert "bad.onnx" in err.decode()


def test_start_up_memory_is_given_back_where_there_is_glibc() -> None:
    """`edge-agent run` trims the heap after building the agent; on glibc the call is made."""
    import platform  # noqa: PLC0415

    from edge_agent.cli import release_startup_memory  # noqa: PLC0415

    assert release_startup_memory() is (platform.libc_ver()[0] == "glibc")
