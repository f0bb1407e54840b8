"""TLS and credentials towards the broker, against a real mosquitto with TLS listeners.

The certificates are made in the test (`tests.fixtures.pki`); the broker has a plain listener
for the test's own subscriber, a TLS listener with username/password, a mutual-TLS listener
and a listener whose certificate has expired.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from edge_agent.broker import accepts_connections, find_mosquitto, free_port
from edge_agent.publish import MqttPublisher, MqttSettings, PublishError
from tests.fixtures.mqtt import Mosquitto, MqttSub
from tests.fixtures.pki import Ca, Issued

PASSWORD = "tls-pa55-w0rd"
KEY_PASSWORD = "k3y-pa55"


@dataclass
class TlsBroker:
    broker: Mosquitto
    ca: Ca
    wrong_ca: Ca
    client: Issued
    client_key_password: Issued
    password_port: int
    mutual_port: int
    expired_port: int


def _accepting(port: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if accepts_connections("127.0.0.1", port):
            return True
        time.sleep(0.02)
    return False


def _listener(port: int, lines: list[str]) -> str:
    return "\n".join([f"listener {port} 127.0.0.1", *lines]) + "\n"


@pytest.fixture
def tls_broker() -> Iterator[TlsBroker]:
    exe = find_mosquitto()
    if exe is None:
        pytest.fail("mosquitto is not installed: apt-get install mosquitto (the tests need it)")
    with tempfile.TemporaryDirectory(prefix="mosquitto-tls-") as tmp:
        work = Path(tmp)
        ca = Ca(work, "test-ca")
        wrong = Ca(work, "other-ca")
        server = ca.issue("broker", server=True)
        expired = ca.issue("broker-expired", server=True, expired=True)
        client = ca.issue("gateway-7", server=False)
        client_pw = ca.issue("gateway-8", server=False, key_password=KEY_PASSWORD.encode())
        passwd = work / "passwd"
        subprocess.run(
            ["mosquitto_passwd", "-c", "-b", str(passwd), "agent", PASSWORD],
            check=True,
            capture_output=True,
        )
        passwd.chmod(0o644)
        broker = Mosquitto(exe, work)
        tls = [f"cafile {ca.pem}", "tls_version tlsv1.2"]
        ports = free_port(), free_port(), free_port()
        broker.conf.write_text(
            "per_listener_settings true\nlog_dest stderr\nlog_type all\n"
            "max_queued_messages 100000\n"
            + _listener(broker.port, ["allow_anonymous true"])
            + _listener(ports[0], [*tls, f"certfile {server.cert}", f"keyfile {server.key}",
                                   "allow_anonymous false", f"password_file {passwd}"])
            + _listener(ports[1], [*tls, f"certfile {server.cert}", f"keyfile {server.key}",
                                   "require_certificate true", "use_identity_as_username true"])
            + _listener(ports[2], [*tls, f"certfile {expired.cert}", f"keyfile {expired.key}",
                                   "allow_anonymous true"])
        )  # fmt: skip
        broker.start()
        for port in ports:  # start() waits for the plain listener only
            if not _accepting(port):
                pytest.fail(f"mosquitto did not listen on {port}: {broker.log_tail()}")
        try:
            yield TlsBroker(broker, ca, wrong, client, client_pw, *ports)
        finally:
            broker.kill()


async def _start(made: list[MqttPublisher], settings: MqttSettings) -> MqttPublisher:
    pub = MqttPublisher(
        settings,
        status_topic="tls/status",
        birth_payload=lambda: b'{"state":"online"}',
        will_payload=b'{"state":"offline"}',
    )
    made.append(pub)
    await pub.start()
    return pub


def _tls(port: int, ca: Path, **kw: object) -> MqttSettings:
    base: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "client_id": f"tls-{port}",
        "tls": True,
        "ca_file": str(ca),
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 0.5,
    }
    base.update(kw)
    return MqttSettings(**base)  # type: ignore[arg-type]


def _reasons(logs: list[dict[str, object]]) -> str:
    return " | ".join(str(e.get("reason", "")) for e in logs if e["event"] == "mqtt unavailable")


async def test_tls_with_password_delivers(
    tls_broker: TlsBroker, mqtt_sub: MqttSub, publishers: list[MqttPublisher]
) -> None:
    """TLS 1.2+ with the broker's certificate verified and a password: messages arrive."""
    b = tls_broker
    sub = await mqtt_sub("127.0.0.1", b.broker.port, "tls/#")
    with capture_logs() as logs:
        pub = await _start(
            publishers, _tls(b.password_port, b.ca.pem, username="agent", password=PASSWORD)
        )
        assert await pub.wait_connected(10)
        await pub.publish("tls/data", b"hello")
        assert await sub.wait_for(lambda ms: any(m.payload == b"hello" for m in ms), 10)
    assert all(PASSWORD not in repr(e) for e in logs)


async def test_wrong_ca_is_refused_with_the_reason(
    tls_broker: TlsBroker, publishers: list[MqttPublisher]
) -> None:
    """A broker certificate from another CA: no connection, the log says why."""
    b = tls_broker
    with capture_logs() as logs:
        pub = await _start(
            publishers, _tls(b.password_port, b.wrong_ca.pem, username="agent", password=PASSWORD)
        )
        assert not await pub.wait_connected(2)
    assert "CERTIFICATE_VERIFY_FAILED" in _reasons(logs)
    assert all(PASSWORD not in repr(e) for e in logs)


async def test_expired_broker_certificate_is_refused(
    tls_broker: TlsBroker, publishers: list[MqttPublisher]
) -> None:
    """An expired broker certificate: no connection, the reason names the expiry."""
    b = tls_broker
    with capture_logs() as logs:
        pub = await _start(publishers, _tls(b.expired_port, b.ca.pem))
        assert not await pub.wait_connected(2)
    assert "expired" in _reasons(logs)


async def test_wrong_password_is_refused_and_never_logged(
    tls_broker: TlsBroker, publishers: list[MqttPublisher]
) -> None:
    """A wrong password: the broker refuses, the log says so, and shows no password."""
    b = tls_broker
    wrong = "not-the-Pa55word"
    with capture_logs() as logs:
        pub = await _start(
            publishers, _tls(b.password_port, b.ca.pem, username="agent", password=wrong)
        )
        assert not await pub.wait_connected(2)
    reasons = _reasons(logs)
    assert "refused" in reasons and ("authori" in reasons.lower() or "password" in reasons)
    assert all(wrong not in repr(e) and PASSWORD not in repr(e) for e in logs)


async def test_mutual_tls_needs_the_client_certificate(
    tls_broker: TlsBroker, mqtt_sub: MqttSub, publishers: list[MqttPublisher]
) -> None:
    """The mutual-TLS listener accepts our client certificate (also with an encrypted key)
    and refuses a client without one."""
    b = tls_broker
    sub = await mqtt_sub("127.0.0.1", b.broker.port, "tls/#")
    ok = await _start(
        publishers,
        _tls(b.mutual_port, b.ca.pem, cert_file=str(b.client.cert), key_file=str(b.client.key)),
    )
    assert await ok.wait_connected(10)
    await ok.publish("tls/mutual", b"m1")
    enc = await _start(
        publishers,
        _tls(
            b.mutual_port,
            b.ca.pem,
            client_id="tls-enc-key",
            cert_file=str(b.client_key_password.cert),
            key_file=str(b.client_key_password.key),
            key_password=KEY_PASSWORD,
        ),
    )
    assert await enc.wait_connected(10)
    await enc.publish("tls/mutual", b"m2")
    assert await sub.wait_for(lambda ms: {m.payload for m in ms} >= {b"m1", b"m2"}, 10)
    anonymous = await _start(publishers, _tls(b.mutual_port, b.ca.pem, client_id="tls-nocert"))
    assert not await anonymous.wait_connected(2)


async def test_insecure_mode_is_explicit_and_warns(
    tls_broker: TlsBroker, publishers: list[MqttPublisher]
) -> None:
    """tls_insecure connects despite an unknown CA, and says so at start."""
    b = tls_broker
    with capture_logs() as logs:
        pub = await _start(
            publishers,
            _tls(
                b.password_port,
                b.wrong_ca.pem,
                username="agent",
                password=PASSWORD,
                tls_insecure=True,
            ),
        )
        assert await pub.wait_connected(10)
    assert any("tls_insecure" in str(e["event"]) for e in logs if e["log_level"] == "warning")


async def test_unreadable_client_key_fails_at_start(
    tls_broker: TlsBroker, publishers: list[MqttPublisher]
) -> None:
    """A wrong key password is a start-up error naming the problem, not a silent retry."""
    b = tls_broker
    settings = _tls(
        b.mutual_port,
        b.ca.pem,
        cert_file=str(b.client_key_password.cert),
        key_file=str(b.client_key_password.key),
        key_password="wrong",
    )
    with pytest.raises(PublishError, match="TLS settings unusable"):
        await _start(publishers, settings)
