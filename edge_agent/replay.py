"""The replay record of signed commands: ids seen and not yet expired, and a floor on issue time.

A signed command is valid until its `expires_at`; within that window the same bytes could be
sent again. The record keeps every accepted id with its issue and expiry time until it expires,
so a command is carried out at most once, also across restarts: the record is a small JSON file
in the state directory, written atomically (temporary file, fsync, rename) before the command
runs.

Two rules keep it bounded and safe when it is lost:
- at most `max_entries` ids; evicting the oldest-issued one raises the floor past its issue
  time, so the evicted id stays refused (as does anything issued before it);
- a record that cannot be read is moved aside (`.corrupt`) and the floor becomes the current
  time: every command issued before the restart is refused, new ones are accepted.

This module owns the record only; what a command is and who may sign it is
`edge_agent.downlink`'s.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

RECORD_VERSION = 1


class ReplayGuard:
    """Command ids seen and not yet expired, plus a floor on `issued_at`; persisted as JSON."""

    def __init__(
        self, path: Path | None, *, now: float | None = None, max_entries: int = 10_000
    ) -> None:
        self.path = path
        self.max_entries = max_entries
        self.floor = 0
        self.seen: dict[str, tuple[int, int]] = {}
        if path is not None and path.exists():
            self._load(path, time.time() if now is None else now)

    def _load(self, path: Path, now: float) -> None:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            floor = int(doc["floor"])
            seen = {str(k): (int(v[0]), int(v[1])) for k, v in doc["seen"].items()}
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
            aside = path.with_name(path.name + ".corrupt")
            os.replace(path, aside)
            self.floor = math.ceil(now)
            log.warning(
                "replay record unreadable, refusing commands issued before now",
                path=str(path), moved_to=str(aside), floor=self.floor,
            )  # fmt: skip
            return
        self.floor, self.seen = floor, seen

    def check(self, command_id: str, issued_at: int) -> str | None:
        """Why this command is a replay, or None when it is new."""
        if command_id in self.seen:
            return "command id already seen; sign a new command"
        if issued_at < self.floor:
            return f"issued before {self.floor}, the replay floor; sign a new command"
        return None

    def remember(self, command_id: str, issued_at: int, expires_at: int, now: float) -> None:
        """Record an accepted id until it expires; raises OSError if the record cannot be saved."""
        self.seen = {k: v for k, v in self.seen.items() if v[1] > now}
        self.seen[command_id] = (issued_at, expires_at)
        while len(self.seen) > self.max_entries:
            oldest = min(self.seen, key=lambda k: self.seen[k][0])
            self.floor = max(self.floor, self.seen.pop(oldest)[0] + 1)
        if self.path is not None:
            self._save(self.path)

    def _save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "v": RECORD_VERSION,
            "floor": self.floor,
            "seen": {k: list(v) for k, v in self.seen.items()},
        }
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(doc, fh, separators=(",", ":"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
