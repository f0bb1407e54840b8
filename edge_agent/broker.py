"""A local MQTT broker for the demo and for tests: mosquitto when installed, else amqtt.

Owns: finding mosquitto, writing its config, running it as a child process on a loopback
port, waiting until it accepts connections and stopping it; or, on a machine without
mosquitto, running amqtt's broker inside this process so a fresh checkout still works.
It does not own any client: the agent connects to the yielded endpoint like to any broker.

The generated mosquitto config raises `max_queued_messages` (mosquitto's default of 1,000
drops QoS 1 messages for a subscriber that falls behind while the publisher still gets every
PUBACK) and lifts the per-client in-flight limit so a slow consumer does not leave messages
parked inside the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import structlog

log = structlog.get_logger(__name__)

MOSQUITTO_FALLBACK_PATH = "/usr/sbin/mosquitto"
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0

BrokerKind = Literal["mosquitto", "amqtt"]


class BrokerError(RuntimeError):
    """The local broker could not be started (the message says which one and why)."""


def find_mosquitto() -> str | None:
    """Path of the mosquitto executable (PATH first, then the Debian location), or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    if os.access(MOSQUITTO_FALLBACK_PATH, os.X_OK):
        return MOSQUITTO_FALLBACK_PATH
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def mosquitto_config(host: str, port: int, *, persistence_dir: Path | None = None) -> str:
    """mosquitto.conf text for one anonymous loopback listener with raised queue limits.

    With `persistence_dir` the broker keeps a persistence file there that is written only on
    SIGUSR1 or a clean exit (`autosave_interval 0`), so a kill -9 loses what was not saved,
    exactly like a power cut; without it the broker keeps everything in memory.
    """
    lines = [
        f"listener {port} {host}",
        "allow_anonymous true",
        "max_queued_messages 1000000",
        "max_inflight_messages 0",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
    ]
    if persistence_dir is None:
        lines.append("persistence false")
    else:
        lines += [
            "persistence true",
            f"persistence_location {persistence_dir}/",
            "autosave_interval 0",
        ]
    return "\n".join(lines) + "\n"


def accepts_connections(host: str, port: int, timeout_s: float = 0.2) -> bool:
    """True when a TCP connection to host:port succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


async def _wait_accepting(host: str, port: int, proc: asyncio.subprocess.Process | None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc is not None and proc.returncode is not None:
            raise BrokerError(f"mosquitto exited with code {proc.returncode} while starting")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 0.5)
        except (OSError, TimeoutError):
            await asyncio.sleep(0.02)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await asyncio.wait_for(writer.wait_closed(), 0.5)
        return
    raise BrokerError(
        f"broker on {host}:{port} did not accept connections within {READY_TIMEOUT_S} s"
    )


@contextlib.asynccontextmanager
async def _run_mosquitto(exe: str, host: str, port: int) -> AsyncIterator[tuple[str, int]]:
    with tempfile.TemporaryDirectory(prefix="edge-agent-mosquitto-") as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(mosquitto_config(host, port))
        log_path = Path(tmp) / "mosquitto.log"
        with log_path.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                exe, "-c", str(conf), stdout=log_file, stderr=log_file
            )
            try:
                try:
                    await _wait_accepting(host, port, proc)
                except BrokerError as exc:
                    tail = log_path.read_text(errors="replace")[-800:]
                    raise BrokerError(f"{exc}; mosquitto said: {tail.strip()}") from exc
                log.info("local broker started", broker="mosquitto", host=host, port=port)
                yield host, port
            finally:
                await _stop_process(proc)
                log.info("local broker stopped", broker="mosquitto", port=port)


async def _stop_process(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def amqtt_config(host: str, port: int) -> dict[str, Any]:
    """amqtt broker settings: one anonymous TCP listener, no $SYS publishing."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


@contextlib.asynccontextmanager
async def _run_amqtt(host: str, port: int) -> AsyncIterator[tuple[str, int]]:
    # Imported lazily (noqa PLC0415): only the fallback pays for amqtt's import.
    from amqtt.broker import Broker  # noqa: PLC0415

    broker = Broker(amqtt_config(host, port))
    try:
        await asyncio.wait_for(broker.start(), READY_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise BrokerError(f"amqtt broker could not listen on {host}:{port}: {exc}") from exc
    except Exception as exc:  # amqtt wraps bind failures in its own exception types
        raise BrokerError(f"amqtt broker failed to start: {exc}") from exc
    try:
        await _wait_accepting(host, port, None)
        log.info("local broker started", broker="amqtt", host=host, port=port)
        yield host, port
    finally:
        with contextlib.suppress(Exception):  # shutdown errors must not mask the body's error
            await asyncio.wait_for(broker.shutdown(), STOP_TIMEOUT_S)
        log.info("local broker stopped", broker="amqtt", port=port)


@contextlib.asynccontextmanager
async def local_broker(
    host: str = "127.0.0.1", port: int = 0, *, prefer: BrokerKind | None = None
) -> AsyncIterator[tuple[str, int]]:
    """Run a local broker for the body of the `async with`; yields its (host, port).

    mosquitto is used when found (see `find_mosquitto`), else amqtt in-process;
    `prefer="amqtt"` forces the embedded broker, `prefer="mosquitto"` fails with
    `BrokerError` when mosquitto is missing. Port 0 picks a free port.
    """
    if port == 0:
        port = free_port(host)
    exe = None if prefer == "amqtt" else find_mosquitto()
    if exe is None and prefer == "mosquitto":
        raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")
    if exe is not None:
        async with _run_mosquitto(exe, host, port) as endpoint:
            yield endpoint
    else:
        async with _run_amqtt(host, port) as endpoint:
            yield endpoint
