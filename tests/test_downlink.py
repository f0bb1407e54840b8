"""The command channel: signed model updates applied, everything else rejected with a reason.

The handler runs with real objects: Ed25519 keys made by `edge-agent keygen`, a trust store
folder, the replay record on disk, the built-in water loop model and the shipped ONNX detector,
swapped through `edge_agent.model_update` exactly as the agent does.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import paho.mqtt.client as paho
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from structlog.testing import capture_logs

from edge_agent.cli import main
from edge_agent.config import DEFAULT_DETECTOR, DEFAULT_SPEC
from edge_agent.downlink import (
    REASONS,
    Callbacks,
    CommandHandler,
    DownlinkSettings,
    response_bytes,
)
from edge_agent.model_update import (
    DetectorSlots,
    ParameterSlots,
    model_parameters,
    validate_detector,
    validate_parameters,
)
from edge_agent.replay import ReplayGuard
from edge_agent.sign_commands import build_command, load_private_key, parameters_content
from edge_agent.trust import TrustStore
from models.anomaly.detector import OnnxDetector
from models.anomaly.graph import build_model
from models.process.engine import SpecModel
from models.process.spec import ModelSpec, load_spec
from tests.fixtures.mqtt import Mosquitto, MqttSub

AGENT = "gw-1"
NOW = 1_800_000_000
SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


def schema(name: str) -> jsonschema.Draft202012Validator:
    """A validator for one of the repository's schema files."""
    doc = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(doc)
    return jsonschema.Draft202012Validator(doc)


COMMAND_SCHEMA = schema("command.schema.json")
RESPONSE_SCHEMA = schema("response.schema.json")


@dataclass
class Clock:
    """The handler's clock, set by the test."""

    t: float = NOW

    def __call__(self) -> float:
        return self.t


@dataclass
class Running:
    """What a running agent holds, swapped by the callbacks as the agent does it."""

    model: SpecModel
    detector: OnnxDetector
    detector_slots: DetectorSlots
    parameter_slots: ParameterSlots
    rebirths: int = 0

    def swap_detector(self, data: bytes) -> dict[str, object]:
        candidate = validate_detector(data, self.detector, None, self.detector_slots.staging)
        self.detector_slots.install(DEFAULT_DETECTOR)
        self.detector = candidate
        return {"fingerprint": candidate.metadata.get("training_sha256", "")[:16]}

    def swap_parameters(self, values: dict[str, float]) -> dict[str, object]:
        new = validate_parameters(values, self.model)
        self.parameter_slots.install(new, self.model)
        self.model = new
        return {"changed": sorted(values)}

    def rollback(self, kind: str) -> dict[str, object]:
        if kind == "detector":
            self.detector = self.detector_slots.rollback(self.detector)
        else:
            self.model = self.parameter_slots.rollback(self.model)
        return {"restored": kind}

    def rebirth(self) -> None:
        self.rebirths += 1

    def callbacks(self) -> Callbacks:
        return Callbacks(
            on_rebirth=self.rebirth,
            validate_and_swap_parameters=self.swap_parameters,
            validate_and_swap_detector=self.swap_detector,
            on_rollback=self.rollback,
        )


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    """The built-in water loop."""
    return load_spec(DEFAULT_SPEC)


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`edge-agent keygen` output: ops.key/ops.pub (trusted) and rogue.key/rogue.pub."""
    out = tmp_path_factory.mktemp("keys")
    assert main(["keygen", "--out", str(out), "--name", "ops"]) == 0
    assert main(["keygen", "--out", str(out), "--name", "rogue"]) == 0
    return out


@pytest.fixture(scope="module")
def trust(keydir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrustStore:
    """A trust store holding only the ops key."""
    folder = tmp_path_factory.mktemp("trust")
    (folder / "ops.pub").write_bytes((keydir / "ops.pub").read_bytes())
    return TrustStore.load(folder)


@pytest.fixture(scope="module")
def ops(keydir: Path) -> Ed25519PrivateKey:
    """The trusted operator's private key."""
    return load_private_key(keydir / "ops.key")


@pytest.fixture(scope="module")
def rogue(keydir: Path) -> Ed25519PrivateKey:
    """A key the agent does not trust."""
    return load_private_key(keydir / "rogue.key")


@pytest.fixture
def running(spec: ModelSpec, tmp_path: Path) -> Running:
    """A fresh set of running objects with its own state directory."""
    model = SpecModel(spec)
    model.reset(spec.nominal_inputs, np.full(len(spec.outputs), np.nan))
    return Running(
        model,
        OnnxDetector.load(DEFAULT_DETECTOR),
        DetectorSlots(tmp_path / "state" / "detector"),
        ParameterSlots(spec, tmp_path / "state" / "parameters.json"),
    )


MakeHandler = Callable[..., CommandHandler]


@pytest.fixture
def make_handler(running: Running, trust: TrustStore, tmp_path: Path) -> MakeHandler:
    """A handler on the running objects, with the replay record in the state directory."""

    def make(clock: Callable[[], float] | None = None, **settings: Any) -> CommandHandler:
        clk = clock or Clock()
        return CommandHandler(
            AGENT,
            trust,
            ReplayGuard(tmp_path / "state" / "seen.json", now=clk()),
            running.callbacks(),
            DownlinkSettings(**settings),
            clock=clk,
        )

    return make


def command(key: Ed25519PrivateKey | None, cmd: str, **kw: Any) -> dict[str, Any]:
    """A command for AGENT issued 10 s ago, valid 10 minutes, signed as `ops` when keyed."""
    kw.setdefault("agent_id", AGENT)
    kw.setdefault("issued_at", NOW - 10)
    kw.setdefault("expires_in_s", 600)
    return build_command(key, kw.pop("key_id", "ops"), cmd=cmd, **kw)


def payload(doc: dict[str, Any]) -> bytes:
    """The command as it arrives on the topic."""
    return json.dumps(doc).encode()


def send(handler: CommandHandler, doc: dict[str, Any] | bytes) -> dict[str, object]:
    """Hand a command to the handler; the response must match its schema."""
    response = handler.handle(doc if isinstance(doc, bytes) else payload(doc))
    RESPONSE_SCHEMA.validate(json.loads(response_bytes(response)))
    return response


def param_update(
    key: Ed25519PrivateKey | None, values: dict[str, float], **kw: Any
) -> dict[str, Any]:
    """A parameter model-update (content as `edge-agent sign --parameters` makes it)."""
    content = json.dumps(values, sort_keys=True, separators=(",", ":")).encode()
    return command(key, "model-update", kind="parameters", content=content, **kw)


def detector_update(key: Ed25519PrivateKey | None, data: bytes, **kw: Any) -> dict[str, Any]:
    """A detector model-update."""
    return command(key, "model-update", kind="detector", content=data, **kw)


def shipped_params_vector(running: Running) -> np.ndarray:
    return model_parameters(running.model).copy()


def test_signed_detector_update_is_applied(
    running: Running, make_handler: MakeHandler, ops: Ed25519PrivateKey
) -> None:
    """A detector signed by a trusted key is validated, swapped in and reported."""
    handler = make_handler()
    before = running.detector
    doc = detector_update(ops, DEFAULT_DETECTOR.read_bytes())
    COMMAND_SCHEMA.validate(doc)
    response = send(handler, doc)
    assert response["ok"] is True and response["reason"] == "applied"
    assert response["id"] == doc["id"] and response["agent_id"] == AGENT
    assert running.detector is not before
    assert running.detector_slots.active.read_bytes() == DEFAULT_DETECTOR.read_bytes()
    assert response["result"] == {"fingerprint": before.metadata["training_sha256"][:16]}


def test_signed_parameter_update_is_applied(
    spec: ModelSpec, running: Running, make_handler: MakeHandler, ops: Ed25519PrivateKey
) -> None:
    """A signed parameter set replaces the running model's values."""
    response = send(make_handler(), param_update(ops, {"head_shutoff_m": 33.5}))
    assert response["ok"] is True
    assert model_parameters(running.model)[spec.index("head_shutoff_m")] == 33.5
    assert response["result"] == {"changed": ["head_shutoff_m"]}


def tamper(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of a signed command with some fields changed after signing."""
    return {**doc, **changes}


def flip_signature(doc: dict[str, Any]) -> dict[str, Any]:
    """The same command with one bit of its signature flipped."""
    sig = bytearray(base64.b64decode(doc["sig"]["value"]))
    sig[10] ^= 0x01
    return {**doc, "sig": {**doc["sig"], "value": base64.b64encode(bytes(sig)).decode()}}


P = {"head_shutoff_m": 30.0}
Keys = tuple[Ed25519PrivateKey, Ed25519PrivateKey]


def upd(key: Ed25519PrivateKey | None, **kw: Any) -> dict[str, Any]:
    """The standard good parameter update, with changes."""
    return param_update(key, P, **kw)


def window_30() -> bytes:
    """The shipped detector rebuilt for a 30-tick window."""
    return build_model(replace(OnnxDetector.load(DEFAULT_DETECTOR).params, window=30))


# case -> (command from (ops, rogue) keys, expected reason)
REJECTIONS: dict[str, tuple[Callable[[Keys], Any], str]] = {
    "bad-signature": (lambda k: flip_signature(upd(k[0])), "bad-signature"),
    "wrong-key": (lambda k: upd(k[1]), "bad-signature"),
    "unknown-key-id": (lambda k: upd(k[1], key_id="rogue"), "unknown-key"),
    "unsigned": (lambda k: upd(None), "unsigned"),
    "expired": (lambda k: upd(k[0], issued_at=NOW - 700), "expired"),
    "not-yet-valid": (lambda k: upd(k[0], issued_at=NOW + 1000), "not-yet-valid"),
    "lifetime-too-long": (lambda k: upd(k[0], expires_in_s=2 * 86_400), "lifetime-too-long"),
    "other-agent": (lambda k: upd(k[0], agent_id="gw-2"), "wrong-agent"),
    "retargeted": (lambda k: tamper(upd(k[0], agent_id="gw-2"), agent_id=AGENT), "bad-signature"),
    "content-swapped": (
        lambda k: tamper(upd(k[0]), content=base64.b64encode(b'{"head_shutoff_m":44.0}').decode()),
        "bad-signature",
    ),
    "expiry-extended": (
        lambda k: tamper(upd(k[0], issued_at=NOW - 700), expires_at=NOW + 100),
        "bad-signature",
    ),
    "kind-changed": (
        lambda k: tamper(command(k[0], "rollback", kind="detector"), kind="parameters"),
        "bad-signature",
    ),
    "out-of-range": (lambda k: param_update(k[0], {"head_shutoff_m": 99.0}), "refused"),
    "nan": (lambda k: param_update(k[0], {"head_shutoff_m": float("nan")}), "refused"),
    "unknown-parameter": (lambda k: param_update(k[0], {"no_such": 1.0}), "refused"),
    "wrong-detector-window": (lambda k: detector_update(k[0], window_30()), "refused"),
    "not-onnx": (lambda k: detector_update(k[0], b"\x08\x07 not onnx"), "refused"),
    "parameter-content-not-json": (
        lambda k: command(k[0], "model-update", kind="parameters", content=b"head=1"),
        "malformed",
    ),
    "parameter-value-text": (
        lambda k: command(k[0], "model-update", kind="parameters", content=b'{"a":"30"}'),
        "malformed",
    ),
    "truncated": (lambda k: payload(upd(k[0]))[:-25], "malformed"),
    "not-utf8": (lambda k: b"\xff\xfe{}", "malformed"),
    "json-array": (lambda k: b"[1, 2]", "malformed"),
    "deep-nesting": (lambda k: b"[" * 50_000, "malformed"),
    "duplicate-key": (lambda k: payload(upd(k[0]))[:-1] + b', "cmd": "rebirth"}', "malformed"),
    "unknown-key": (lambda k: tamper(upd(k[0]), extra=1), "malformed"),
    "missing-id": (lambda k: {n: v for n, v in upd(k[0]).items() if n != "id"}, "malformed"),
    "bad-base64": (lambda k: tamper(upd(k[0]), content="%%%"), "malformed"),
    "float-time": (lambda k: tamper(upd(k[0]), issued_at=NOW - 10.5), "malformed"),
    "version-2": (lambda k: tamper(upd(k[0]), v=2), "unsupported-version"),
    "unknown-command": (
        lambda k: tamper(command(k[0], "rebirth"), cmd="format-disk"),
        "unknown-command",
    ),
    "oversized": (lambda k: payload(detector_update(k[0], bytes(800_000))), "oversized"),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_rejected_commands_leave_the_running_model_alone(
    case: str,
    running: Running,
    make_handler: MakeHandler,
    ops: Ed25519PrivateKey,
    rogue: Ed25519PrivateKey,
) -> None:
    """Each bad command is rejected with its reason and counted; model and detector unchanged."""
    make, reason = REJECTIONS[case]
    handler = make_handler()
    model, detector, params = running.model, running.detector, shipped_params_vector(running)
    response = send(handler, make((ops, rogue)))
    assert response["ok"] is False and response["reason"] == reason
    assert isinstance(response["detail"], str) and response["detail"]
    assert handler.counters == Counter({reason: 1})
    assert running.model is model and running.detector is detector
    np.testing.assert_array_equal(model_parameters(running.model), params)
    assert not running.detector_slots.active.exists()


def test_refusals_say_why(make_handler: MakeHandler, ops: Ed25519PrivateKey) -> None:
    """The response detail of a refused update names the problem."""
    handler = make_handler()
    det = OnnxDetector.load(DEFAULT_DETECTOR)
    wrong = send(handler, detector_update(ops, build_model(replace(det.params, window=30))))
    assert "window is 30 ticks" in str(wrong["detail"])
    out = send(handler, param_update(ops, {"head_shutoff_m": 99.0}))
    assert "head_shutoff_m = 99 outside its range [20, 45]" in str(out["detail"])
    nan = send(handler, param_update(ops, {"pump_efficiency_frac": float("nan")}))
    assert "pump_efficiency_frac is not finite" in str(nan["detail"])


def test_size_limit_is_checked_before_parsing(
    make_handler: MakeHandler, ops: Ed25519PrivateKey
) -> None:
    """Over the limit is `oversized` even for garbage; the limit is configurable."""
    handler = make_handler(max_bytes=4096)
    assert send(handler, b"{" * 5000)["reason"] == "oversized"
    assert send(handler, detector_update(ops, DEFAULT_DETECTOR.read_bytes()))["reason"] == (
        "oversized"
    )
    assert send(handler, command(ops, "rebirth"))["reason"] == "applied"
    assert handler.counters == Counter({"oversized": 2, "applied": 1})


def test_replayed_command_is_refused_also_after_a_restart(
    running: Running, make_handler: MakeHandler, ops: Ed25519PrivateKey
) -> None:
    """An accepted command id is refused the second time, even by a restarted agent."""
    doc = param_update(ops, {"head_shutoff_m": 31.0})
    assert send(make_handler(), doc)["ok"] is True
    applied = running.model
    again = make_handler()  # a new handler reads the replay record from the state directory
    assert send(again, doc)["reason"] == "replayed"
    assert running.model is applied


def test_lost_replay_record_refuses_everything_issued_before_the_restart(
    running: Running, make_handler: MakeHandler, ops: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """A corrupt record is moved aside; older commands are refused, newer ones accepted."""
    record = tmp_path / "state" / "seen.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text("{not json")
    clock = Clock(NOW + 2)
    handler = make_handler(clock)
    assert record.with_name("seen.json.corrupt").exists()
    assert send(handler, param_update(ops, {"head_shutoff_m": 31.0}))["reason"] == "replayed"
    clock.t = NOW + 5
    fresh = param_update(ops, {"head_shutoff_m": 31.0}, issued_at=NOW + 3)
    assert send(handler, fresh)["reason"] == "applied"


def test_replay_record_stays_bounded_and_raises_its_floor(tmp_path: Path) -> None:
    """Past max_entries the oldest id is dropped and the floor rises past it: still refused."""
    guard = ReplayGuard(tmp_path / "seen.json", max_entries=2)
    for i in range(3):
        assert guard.check(f"c{i}", NOW + i) is None
        guard.remember(f"c{i}", NOW + i, NOW + 600, NOW)
    assert len(guard.seen) == 2 and guard.floor == NOW + 1
    assert "replay floor" in str(guard.check("c0", NOW))
    assert "already seen" in str(guard.check("c2", NOW + 2))
    reread = ReplayGuard(tmp_path / "seen.json")
    assert reread.floor == NOW + 1 and set(reread.seen) == {"c1", "c2"}
    guard.remember("late", NOW + 5, NOW + 700, NOW + 650)
    assert set(guard.seen) == {"late"}  # expired ids are pruned


def test_schema_reasons_are_the_handlers() -> None:
    """The response schema lists exactly the reasons the handler can give."""
    doc = json.loads((SCHEMAS / "response.schema.json").read_text())
    assert doc["properties"]["reason"]["enum"] == list(REASONS)


def test_signature_policy_per_command(
    running: Running, make_handler: MakeHandler, ops: Ed25519PrivateKey
) -> None:
    """Unsigned rebirth is accepted, unsigned reload-config refused unless allowed; a present
    signature is always checked; model updates can never be unsigned."""
    handler = make_handler()
    assert send(handler, command(None, "rebirth"))["reason"] == "applied"
    assert running.rebirths == 1
    assert send(handler, command(None, "reload-config"))["reason"] == "unsigned"
    assert send(handler, flip_signature(command(ops, "rebirth")))["reason"] == "bad-signature"
    assert send(handler, command(None, "rollback", kind="detector"))["reason"] == "unsigned"
    unsigned_rebirth = command(None, "rebirth")
    assert send(handler, unsigned_rebirth)["reason"] == "applied"
    assert send(handler, unsigned_rebirth)["reason"] == "replayed"
    relaxed = make_handler(unsigned=frozenset({"rebirth", "reload-config"}))
    assert send(relaxed, command(None, "reload-config"))["reason"] == "unsupported"
    with pytest.raises(ValueError, match="must always be signed"):
        DownlinkSettings(unsigned=frozenset({"model-update"}))


def test_rollback_command_restores_the_previous_model(
    spec: ModelSpec, running: Running, make_handler: MakeHandler, ops: Ed25519PrivateKey
) -> None:
    """Update, then a signed rollback: the previous parameters and detector come back."""
    handler = make_handler()
    shipped_sha = running.detector.metadata["training_sha256"]
    det = running.detector.params
    other = build_model(replace(det, provenance={**det.provenance, "training_sha256": "f" * 64}))
    assert send(handler, detector_update(ops, other))["ok"] is True
    assert running.detector.metadata["training_sha256"] == "f" * 64
    assert send(handler, param_update(ops, {"ambient_temp_c": 30.0}))["ok"] is True
    assert send(handler, command(ops, "rollback", kind="detector"))["ok"] is True
    assert running.detector.metadata["training_sha256"] == shipped_sha
    assert send(handler, command(ops, "rollback", kind="parameters"))["ok"] is True
    np.testing.assert_array_equal(model_parameters(running.model), spec.nominal)
    assert handler.counters == Counter({"applied": 4})


def test_failing_or_missing_callback_is_answered_not_raised(
    trust: TrustStore, ops: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """A callback that raises gives `failed`, a missing one `unsupported`; handle never raises."""

    def broken() -> None:
        raise RuntimeError("disk on fire")

    handler = CommandHandler(
        AGENT, trust, ReplayGuard(tmp_path / "seen.json"), Callbacks(on_reload=broken),
        clock=Clock(),
    )  # fmt: skip
    failed = send(handler, command(ops, "reload-config"))
    assert failed["reason"] == "failed" and "RuntimeError" in str(failed["detail"])
    assert send(handler, command(ops, "rollback", kind="detector"))["reason"] == "unsupported"


def test_no_key_signature_or_payload_in_any_log_line(
    keydir: Path,
    running: Running,
    make_handler: MakeHandler,
    ops: Ed25519PrivateKey,
    rogue: Ed25519PrivateKey,
) -> None:
    """Logs of accepted and rejected commands carry no key material, signature or body."""
    handler = make_handler()
    handler.log_burst = len(REJECTIONS)  # every rejection logged, none suppressed
    docs = [make((ops, rogue)) for make, _ in REJECTIONS.values()]
    docs += [
        detector_update(ops, DEFAULT_DETECTOR.read_bytes()),
        param_update(ops, {"head_shutoff_m": 32.5}),
    ]
    with capture_logs() as logs:
        responses = [send(handler, d) for d in docs]
    assert len(logs) == len(docs)
    assert {e["event"] for e in logs} <= {"command applied", "command rejected"}
    secrets: list[str] = []
    for name in ("ops.key", "rogue.key"):
        body = "".join((keydir / name).read_text().splitlines()[1:-1])
        secrets += [body[i : i + 12] for i in range(0, len(body) - 12, 6)]
    for d in docs:
        if isinstance(d, dict):
            if "sig" in d:
                secrets.append(d["sig"]["value"][:16])
            if d.get("content"):
                secrets.append(d["content"][:16])
                secrets.append(base64.b64decode(d["content"])[:12].decode("latin-1"))
        else:
            secrets.append(d[:24].decode("latin-1"))
    secrets.append(parameters_content({"head_shutoff_m": 32.5}).decode())
    text = repr(logs)
    leaked = [s for s in secrets if len(s) >= 8 and s in text]
    assert leaked == []
    response_text = repr(responses)
    assert not [
        s for s in secrets if len(s) >= 12 and s.startswith(("CAg", "ey")) and s in response_text
    ]


def test_a_flood_of_bad_commands_is_counted_not_logged_line_by_line(
    make_handler: MakeHandler,
) -> None:
    """Past the burst, rejections are counted; the next window's line says how many were skipped."""
    clock = Clock()
    handler = make_handler(clock)
    with capture_logs() as logs:
        for _ in range(50):
            send(handler, b"{")
        clock.t += 61
        send(handler, b"{")
    assert handler.counters == Counter({"malformed": 51})
    assert len(logs) == 21
    assert logs[-1]["suppressed"] == 30 and "suppressed" not in logs[0]


def test_schema_agrees_with_the_handler_on_malformed_envelopes(ops: Ed25519PrivateKey) -> None:
    """Envelopes the handler calls malformed are invalid under the schema; good ones valid."""
    good = [
        command(ops, "rebirth"), command(None, "rebirth"), command(ops, "reload-config"),
        command(ops, "rollback", kind="parameters"), param_update(ops, {"a": 1.0}),
    ]  # fmt: skip
    for doc in good:
        COMMAND_SCHEMA.validate(doc)
    bad = [
        tamper(command(ops, "rebirth"), extra=1),
        tamper(command(ops, "rebirth"), v=2),
        tamper(command(ops, "rebirth"), kind="detector"),
        param_update(None, {"a": 1.0}),
        tamper(command(ops, "rebirth"), issued_at=1.5),
        tamper(command(ops, "rebirth"), id="has space"),
        {k: v for k, v in command(ops, "rebirth").items() if k != "expires_at"},
    ]
    for doc in bad:
        assert not COMMAND_SCHEMA.is_valid(doc), doc


def test_sign_cli_output_is_accepted_by_the_agent(
    keydir: Path,
    running: Running,
    trust: TrustStore,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`edge-agent sign` prints a command a real handler applies; bad inputs exit 2."""
    assert (keydir / "ops.key").stat().st_mode & 0o777 == 0o600
    params = tmp_path / "p.toml"
    params.write_text("[params]\nhead_shutoff_m = { nominal = 33.0 }\nmech_loss_w = 45\n")
    capsys.readouterr()
    rc = main(["sign", "--key", str(keydir / "ops.key"), "--agent", AGENT, "--parameters",
               str(params), "--expires-in", "120"])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0 and "signed model-update parameters" in err
    doc = json.loads(out)
    COMMAND_SCHEMA.validate(doc)
    handler = CommandHandler(
        AGENT, trust, ReplayGuard(tmp_path / "seen.json"), running.callbacks(), clock=time.time
    )
    assert handler.handle(out.encode())["ok"] is True
    assert model_parameters(running.model)[running.model.spec.index("mech_loss_w")] == 45.0

    params.write_text("head_shutoff_m = nan\n")
    assert main(["sign", "--key", str(keydir / "ops.key"), "--agent", AGENT,
                 "--parameters", str(params)]) == 2  # fmt: skip
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"junk")
    assert main(["sign", "--key", str(keydir / "ops.key"), "--agent", AGENT,
                 "--detector", str(junk)]) == 2  # fmt: skip
    assert main(["keygen", "--out", str(keydir), "--name", "ops"]) == 2
    err = capsys.readouterr().err
    assert "must be finite" in err and "refusing to sign" in err and "exists" in err
    assert "PRIVATE" not in err


def test_encrypted_key_needs_its_passphrase(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """keygen --passphrase-env encrypts the key; sign without the passphrase exits 2."""
    monkeypatch.setenv("EDGE_AGENT_TEST_PASSPHRASE", "correct horse")
    assert main(["keygen", "--out", str(tmp_path), "--name", "enc", "--passphrase-env",
                 "EDGE_AGENT_TEST_PASSPHRASE"]) == 0  # fmt: skip
    assert b"ENCRYPTED" in (tmp_path / "enc.key").read_bytes()
    base = ["sign", "--key", str(tmp_path / "enc.key"), "--agent", AGENT, "--rebirth"]
    assert main(base) == 2
    capsys.readouterr()
    assert main([*base, "--passphrase-env", "EDGE_AGENT_TEST_PASSPHRASE"]) == 0
    assert json.loads(capsys.readouterr().out)["cmd"] == "rebirth"
    assert os.environ["EDGE_AGENT_TEST_PASSPHRASE"] not in capsys.readouterr().err


async def test_commands_through_a_real_broker_get_their_responses(
    mosquitto: Mosquitto,
    mqtt_sub: MqttSub,
    running: Running,
    make_handler: MakeHandler,
    ops: Ed25519PrivateKey,
) -> None:
    """Commands published to mosquitto reach the handler byte-exact; responses go back out."""
    prefix = f"edge-agent/v1/{AGENT}"
    commands = await mqtt_sub(mosquitto.host, mosquitto.port, f"{prefix}/commands")
    responses = await mqtt_sub(mosquitto.host, mosquitto.port, f"{prefix}/responses")
    handler = make_handler(time.time, max_bytes=65_536)
    now = int(time.time())
    sent = [
        payload(detector_update(ops, DEFAULT_DETECTOR.read_bytes(), issued_at=now)),
        payload(flip_signature(upd(ops, issued_at=now))),
        payload(detector_update(ops, bytes(70_000), issued_at=now)),
        payload(upd(ops, issued_at=now))[:-7],
    ]
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    try:
        for p in sent:
            client.publish(f"{prefix}/commands", p, qos=1).wait_for_publish(5.0)
        assert await commands.wait_for(lambda m: len(m) == len(sent))
        for msg in commands.snapshot():
            out = response_bytes(handler.handle(msg.payload))
            client.publish(f"{prefix}/responses", out, qos=1).wait_for_publish(5.0)
        assert await responses.wait_for(lambda m: len(m) == len(sent))
    finally:
        client.disconnect()
        client.loop_stop()
    docs = [json.loads(m.payload) for m in responses.snapshot()]
    for doc in docs:
        RESPONSE_SCHEMA.validate(doc)
    assert [d["reason"] for d in docs] == ["applied", "bad-signature", "oversized", "malformed"]
    assert running.detector_slots.active.read_bytes() == DEFAULT_DETECTOR.read_bytes()
