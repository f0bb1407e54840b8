"""Commands from upstream: the envelope, its checks, and the handler that answers each one.

A command is one UTF-8 JSON object on the agent's command topic (`schemas/command.schema.json`):

    {"v": 1,                         envelope version
     "id": "6f1c...",                1-128 of [A-Za-z0-9_.:-], unique per command
     "cmd": "model-update",          rebirth | reload-config | model-update | rollback
     "agent_id": "demo-gateway",     the one agent it is for
     "issued_at": 1767225600,        Unix seconds, integer
     "expires_at": 1767229200,       Unix seconds, integer, after issued_at
     "kind": "detector",             model-update and rollback: parameters | detector
     "content": "<base64>",          model-update: the ONNX file, or UTF-8 JSON {name: value}
     "sig": {"alg": "ed25519", "key_id": "ops-2026", "value": "<base64, 64 bytes>"}}

No other keys, no duplicate keys. The signature is Ed25519 over these ASCII lines joined by
"\\n" (no trailing newline); the content enters by its SHA-256 (lowercase hex; the hash of zero
bytes when there is no content), `kind` is empty when absent:

    edge-agent-command-v1
    id=<id>
    cmd=<cmd>
    kind=<kind>
    agent_id=<agent_id>
    issued_at=<decimal>
    expires_at=<decimal>
    content_sha256=<hex>
    key_id=<key_id>

A signature therefore binds the content to one command id, one agent and one validity window:
it cannot be replayed to another agent or after `expires_at`, and it cannot be replayed to the
same agent either: accepted ids are remembered until they expire (`edge_agent.replay`, a file
in the state directory; a lifetime above `max_lifetime_s` is refused so the record stays
small). When the record is lost the agent refuses every command issued before its start.

Signatures: `model-update` and `rollback` must always be signed, `reload-config` by default too;
only the commands in `DownlinkSettings.unsigned` (default: `rebirth`, which only republishes
the birth messages) may come without one, and a signature that is present is always checked.

Every command gets one response document (`schemas/response.schema.json`): `{"v", "id", "cmd",
"agent_id", "ok", "reason", "detail", "ts", "result"}` with `reason` one of `REASONS`. A command
is rejected, counted in `CommandHandler.counters` by reason and logged without its payload, its
content or its signature when it is oversized (checked on the raw bytes, before parsing),
malformed, for another agent, unsigned, signed by an unknown key or badly, expired, not yet
valid, replayed, or refused by the update's own validation; the running model then stays.

This module owns the format and the checks; MQTT is the publisher's, validation and swapping
of models `edge_agent.model_update`'s, keys `edge_agent.trust`'s.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import structlog

from edge_agent.replay import ReplayGuard
from edge_agent.trust import KEY_ID_PATTERN, TrustStore

log = structlog.get_logger(__name__)

ENVELOPE_VERSION = 1
SIGNED_PREFIX = "edge-agent-command-v1"
COMMANDS: tuple[str, ...] = ("rebirth", "reload-config", "model-update", "rollback")
KINDS: tuple[str, ...] = ("parameters", "detector")
ALWAYS_SIGNED = frozenset({"model-update", "rollback"})
REASONS: tuple[str, ...] = (
    "applied", "oversized", "malformed", "unsupported-version", "unknown-command",
    "wrong-agent", "unsigned", "unknown-key", "bad-signature", "expired", "not-yet-valid",
    "lifetime-too-long", "replayed", "refused", "unsupported", "failed",
)  # fmt: skip
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")
AGENT_PATTERN = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")
_REQUIRED = frozenset({"v", "id", "cmd", "agent_id", "issued_at", "expires_at"})
_OPTIONAL = frozenset({"kind", "content", "sig"})
_SIG_KEYS = frozenset({"alg", "key_id", "value"})
_MAX_TIME = 2**53
LOG_BURST = 20
LOG_WINDOW_S = 60.0


class CommandRefused(Exception):  # noqa: N818  # named after the response it produces
    """Raised by a command's callback: the command is valid but cannot be carried out.

    `detail` goes into the response and the log; it must not quote secrets or payloads.
    """

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


class _Reject(Exception):  # noqa: N818  # internal: becomes a response, never escapes
    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True, slots=True)
class DownlinkSettings:
    """Limits of the command channel (the `[downlink]` config section)."""

    max_bytes: int = 1_048_576
    unsigned: frozenset[str] = frozenset({"rebirth"})
    max_lifetime_s: int = 86_400
    clock_skew_s: int = 300

    def __post_init__(self) -> None:
        forced = sorted(self.unsigned & ALWAYS_SIGNED)
        if forced:
            raise ValueError(f"downlink.unsigned: {', '.join(forced)} must always be signed")
        unknown = sorted(self.unsigned - set(COMMANDS))
        if unknown:
            raise ValueError(f"downlink.unsigned: unknown commands {', '.join(unknown)}")
        if self.max_bytes < 256 or self.max_lifetime_s < 1 or self.clock_skew_s < 0:
            raise ValueError("downlink: max_bytes >= 256, max_lifetime_s >= 1, clock_skew_s >= 0")


@dataclass(frozen=True, slots=True)
class Command:
    """A parsed, well-formed command (not yet authenticated)."""

    id: str
    cmd: str
    agent_id: str
    issued_at: int
    expires_at: int
    kind: str = ""
    content: bytes = b""
    key_id: str | None = None
    signature: bytes | None = field(default=None, repr=False)

    @property
    def content_sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    def signing_message(self, key_id: str) -> bytes:
        """The exact bytes the signature covers (see the module docstring)."""
        return signing_message(
            command_id=self.id,
            cmd=self.cmd,
            kind=self.kind,
            agent_id=self.agent_id,
            issued_at=self.issued_at,
            expires_at=self.expires_at,
            content_sha256=self.content_sha256,
            key_id=key_id,
        )


def signing_message(
    *,
    command_id: str,
    cmd: str,
    kind: str,
    agent_id: str,
    issued_at: int,
    expires_at: int,
    content_sha256: str,
    key_id: str,
) -> bytes:
    """The canonical byte string a command's Ed25519 signature covers."""
    lines = (
        SIGNED_PREFIX,
        f"id={command_id}",
        f"cmd={cmd}",
        f"kind={kind}",
        f"agent_id={agent_id}",
        f"issued_at={int(issued_at)}",
        f"expires_at={int(expires_at)}",
        f"content_sha256={content_sha256}",
        f"key_id={key_id}",
    )
    return "\n".join(lines).encode("ascii")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Reject("malformed", "duplicate key in a JSON object")
        out[key] = value
    return out


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise _Reject("malformed", f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _Reject("malformed", f"{what} is not valid base64") from None


def _time(doc: Mapping[str, Any], key: str) -> int:
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _MAX_TIME:
        raise _Reject("malformed", f"{key} must be a non-negative integer (Unix seconds)")
    return value


def _text(doc: Mapping[str, Any], key: str, pattern: re.Pattern[str]) -> str:
    value = doc[key]
    if not isinstance(value, str) or not pattern.match(value):
        raise _Reject("malformed", f"{key} must match {pattern.pattern}")
    return value


def parse_command(payload: bytes) -> Command:
    """Parse and check the envelope's shape; raises `_Reject` with reason and detail."""
    try:
        doc = json.loads(payload.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError:
        raise _Reject("malformed", "payload is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise _Reject("malformed", f"not JSON ({exc.msg} at byte {exc.pos})") from None
    except RecursionError:
        raise _Reject("malformed", "JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise _Reject("malformed", "a command is a JSON object")
    missing = sorted(_REQUIRED - doc.keys())
    if missing:
        raise _Reject("malformed", f"missing keys: {', '.join(missing)}")
    unknown = sorted(doc.keys() - _REQUIRED - _OPTIONAL)
    if unknown:
        raise _Reject("malformed", f"{len(unknown)} unknown key(s)")
    if type(doc["v"]) is not int or doc["v"] != ENVELOPE_VERSION:
        raise _Reject("unsupported-version", f"envelope version must be {ENVELOPE_VERSION}")
    command_id = _text(doc, "id", ID_PATTERN)
    cmd = doc["cmd"]
    if cmd not in COMMANDS:
        raise _Reject("unknown-command", f"cmd must be one of {', '.join(COMMANDS)}")
    agent_id = _text(doc, "agent_id", AGENT_PATTERN)
    issued_at, expires_at = _time(doc, "issued_at"), _time(doc, "expires_at")
    if expires_at <= issued_at:
        raise _Reject("malformed", "expires_at must be after issued_at")
    kind = doc.get("kind", "")
    if cmd in ("model-update", "rollback"):
        if kind not in KINDS:
            raise _Reject("malformed", f"{cmd} needs kind: one of {', '.join(KINDS)}")
    elif "kind" in doc:
        raise _Reject("malformed", f"{cmd} takes no kind")
    content = b""
    if cmd == "model-update":
        if "content" not in doc:
            raise _Reject("malformed", "model-update needs content")
        content = _b64(doc["content"], "content")
    elif "content" in doc:
        raise _Reject("malformed", f"{cmd} takes no content")
    key_id: str | None = None
    signature: bytes | None = None
    if "sig" in doc:
        sig = doc["sig"]
        if not isinstance(sig, dict) or sig.keys() != _SIG_KEYS:
            raise _Reject("malformed", "sig must be {alg, key_id, value}")
        if sig["alg"] != "ed25519":
            raise _Reject("malformed", "sig.alg must be ed25519")
        key_id = _text(sig, "key_id", KEY_ID_PATTERN)
        signature = _b64(sig["value"], "sig.value")
    return Command(
        command_id, cmd, agent_id, issued_at, expires_at, kind, content, key_id, signature
    )


def decode_parameters(content: bytes) -> dict[str, float]:
    """A parameter update's content: a UTF-8 JSON object of name -> number (NaN passes through,
    for the validation to refuse with its name)."""
    try:
        doc = json.loads(content.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _Reject("malformed", "parameter content is not a UTF-8 JSON object") from None
    if not isinstance(doc, dict) or not doc:
        raise _Reject("malformed", "parameter content must be a non-empty JSON object")
    for value in doc.values():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Reject("malformed", "every parameter value must be a number")
    return {str(k): float(v) for k, v in doc.items()}


Result = Mapping[str, object] | None


@dataclass
class Callbacks:
    """What the agent does for each command; a missing one answers `unsupported`.

    Each returns an optional mapping for the response's `result`, or raises `CommandRefused`
    (validation refused: the running model stays). They run synchronously in `handle`.
    """

    on_rebirth: Callable[[], Result] | None = None
    on_reload: Callable[[], Result] | None = None
    validate_and_swap_parameters: Callable[[dict[str, float]], Result] | None = None
    validate_and_swap_detector: Callable[[bytes], Result] | None = None
    on_rollback: Callable[[str], Result] | None = None


class CommandHandler:
    """Checks each command payload and runs its callback; returns the response document."""

    def __init__(
        self,
        agent_id: str,
        trust: TrustStore | None,
        replay: ReplayGuard,
        callbacks: Callbacks,
        settings: DownlinkSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.agent_id = agent_id
        self.trust = trust
        self.replay = replay
        self.callbacks = callbacks
        self.settings = settings or DownlinkSettings()
        self.clock = clock
        self.counters: Counter[str] = Counter()
        # Unsigned commands are remembered in memory only (bounded), never on disk.
        self._unsigned_seen: OrderedDict[str, int] = OrderedDict()
        # A flood of bad commands must not flood the log: at most `log_burst` rejection lines
        # per LOG_WINDOW_S; the rest are counted and the next line says how many were skipped.
        self.log_burst = LOG_BURST
        self._window_start = -math.inf
        self._window_lines = 0
        self._suppressed = 0

    def handle(self, payload: bytes) -> dict[str, object]:
        """One command payload in, one response document out; never raises for bad input."""
        now = self.clock()
        cmd: Command | None = None
        try:
            if len(payload) > self.settings.max_bytes:
                raise _Reject(
                    "oversized", f"{len(payload)} bytes > limit {self.settings.max_bytes}"
                )
            cmd = parse_command(payload)
            self._authenticate(cmd, now)
            result = self._dispatch(cmd)
        except _Reject as rej:
            return self._respond(cmd, now, rej.reason, rej.detail)
        return self._respond(cmd, now, "applied", "", result)

    def _authenticate(self, cmd: Command, now: float) -> None:
        if cmd.agent_id != self.agent_id:
            raise _Reject("wrong-agent", "command is for another agent")
        if cmd.signature is None or cmd.key_id is None:
            if cmd.cmd not in self.settings.unsigned:
                raise _Reject("unsigned", f"{cmd.cmd} must be signed")
        elif self.trust is None or cmd.key_id not in self.trust:
            raise _Reject("unknown-key", f"key id {cmd.key_id} is not in the trust store")
        elif not self.trust.verify(cmd.key_id, cmd.signing_message(cmd.key_id), cmd.signature):
            raise _Reject("bad-signature", f"signature does not verify with key {cmd.key_id}")
        s = self.settings
        if now >= cmd.expires_at:
            raise _Reject("expired", f"expired at {cmd.expires_at}, agent clock {int(now)}")
        if cmd.issued_at > now + s.clock_skew_s:
            raise _Reject(
                "not-yet-valid", f"issued at {cmd.issued_at}, agent clock {int(now)} (check NTP)"
            )
        if cmd.expires_at - cmd.issued_at > s.max_lifetime_s:
            raise _Reject("lifetime-too-long", f"lifetime above {s.max_lifetime_s} s")
        if cmd.signature is not None:
            replayed = self.replay.check(cmd.id, cmd.issued_at)
            if replayed is not None:
                raise _Reject("replayed", replayed)
            try:
                self.replay.remember(cmd.id, cmd.issued_at, cmd.expires_at, now)
            except OSError as exc:
                raise _Reject("failed", f"cannot record the command id ({exc.strerror})") from None
        else:
            if cmd.id in self._unsigned_seen:
                raise _Reject("replayed", "command id already seen; send a new command")
            self._unsigned_seen[cmd.id] = cmd.expires_at
            while len(self._unsigned_seen) > 1000:
                self._unsigned_seen.popitem(last=False)

    def _dispatch(self, cmd: Command) -> Result:
        cb = self.callbacks
        call: Callable[[], Result] | None = None
        if cmd.cmd == "rebirth" and cb.on_rebirth is not None:
            call = cb.on_rebirth
        elif cmd.cmd == "reload-config" and cb.on_reload is not None:
            call = cb.on_reload
        elif cmd.cmd == "rollback" and cb.on_rollback is not None:
            call = partial(cb.on_rollback, cmd.kind)
        elif cmd.cmd == "model-update" and cmd.kind == "parameters":
            swap_p = cb.validate_and_swap_parameters
            if swap_p is not None:
                call = partial(swap_p, decode_parameters(cmd.content))
        elif cmd.cmd == "model-update" and cmd.kind == "detector":
            swap_d = cb.validate_and_swap_detector
            if swap_d is not None:
                call = partial(swap_d, cmd.content)
        if call is None:
            what = f"{cmd.cmd} {cmd.kind}".strip()
            raise _Reject("unsupported", f"this agent does not handle {what}")
        try:
            return call()
        except CommandRefused as exc:
            raise _Reject("refused", exc.detail) from None
        except Exception as exc:  # a failing swap must not stop the agent; the model stays
            raise _Reject("failed", f"{type(exc).__name__} while applying {cmd.cmd}") from None

    def _may_log(self, now: float) -> bool:
        if now - self._window_start >= LOG_WINDOW_S:
            self._window_start, self._window_lines = now, 0
        self._window_lines += 1
        if self._window_lines > self.log_burst:
            self._suppressed += 1
            return False
        return True

    def _respond(
        self, cmd: Command | None, now: float, reason: str, detail: str, result: Result = None
    ) -> dict[str, object]:
        self.counters[reason] += 1
        ok = reason == "applied"
        # Only fields that passed validation are logged; never content, signature or payload.
        fields: dict[str, object] = {"reason": reason}
        if cmd is not None:
            fields |= {"id": cmd.id, "cmd": cmd.cmd, "kind": cmd.kind or None}
            fields |= {"key_id": cmd.key_id, "content_sha256": cmd.content_sha256[:16]}
        if ok:
            log.info("command applied", **fields)
        elif self._may_log(now):
            if self._suppressed:
                fields["suppressed"], self._suppressed = self._suppressed, 0
            if reason == "failed":
                log.error("command failed", detail=detail, **fields)
            else:
                log.warning("command rejected", detail=detail, **fields)
        doc: dict[str, object] = {
            "v": ENVELOPE_VERSION,
            "id": None if cmd is None else cmd.id,
            "cmd": None if cmd is None else cmd.cmd,
            "agent_id": self.agent_id,
            "ok": ok,
            "reason": reason,
            "detail": detail,
            "ts": round(now, 3),
        }
        if result is not None:
            doc["result"] = dict(result)
        return doc


def response_bytes(doc: Mapping[str, object]) -> bytes:
    """The response document as compact UTF-8 JSON for the response topic."""
    return json.dumps(doc, separators=(",", ":")).encode()
