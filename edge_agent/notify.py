"""systemd service notifications (sd_notify): READY, WATCHDOG, STOPPING, STATUS.

The protocol is one datagram of `KEY=VALUE` lines to the socket named in `$NOTIFY_SOCKET`
(a path, or an abstract socket when it starts with "@"). It is small enough that a dependency
would cost more than it saves. Outside systemd `$NOTIFY_SOCKET` is unset and every call is a
no-op.
"""

from __future__ import annotations

import os
import socket

import structlog

log = structlog.get_logger(__name__)


class Notifier:
    """Sends notifications to systemd when run as a Type=notify service."""

    def __init__(self, address: str | None = None) -> None:
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        self._addr = addr
        self._sock: socket.socket | None = None
        if addr:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = os.environ.get("WATCHDOG_USEC", "")
        self.watchdog_interval_s: float | None = int(usec) / 2e6 if usec.isdigit() else None
        self.sent = 0

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, message: str) -> None:
        """Send `message` (e.g. "READY=1"); failures are logged once and otherwise ignored."""
        if self._sock is None:
            return
        try:
            self._sock.sendto(message.encode(), self._addr)
            self.sent += 1
        except OSError as exc:
            log.warning("sd_notify failed", error=str(exc))
            self._sock.close()
            self._sock = None

    def ready(self, status: str = "running") -> None:
        self.notify(f"READY=1\nSTATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
