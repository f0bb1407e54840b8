"""The `[[drivers]] kind = "opcua"` schema: endpoint, session, security, groups and node tags.

Security: `security_policy` and `security_mode` default to "auto", the strongest endpoint the
server offers that the client supports (mode first: SignAndEncrypt > Sign > None; then policy:
Aes256_Sha256_RsaPss > Aes128_Sha256_RsaOaep > Basic256Sha256 > None); None is used only when
it is all the server offers, with a warning in the log. The client certificate lives in
`pki_dir` (default `<agent.state_dir>/pki`, relative paths relative to the state directory),
the server certificates it trusts in `<pki_dir>/trusted/`, or one is pinned by
`server_thumbprint`. Passwords come from the environment variable named by `password_env`.

Groups: `[[drivers.groups]]` with `name`, `mode` ("subscribe": one subscription with
`publishing_interval_ms`; "poll": one Read call every `poll_interval_ms`); a tag names its
`group` (default: the driver's own subscription at the driver's `publishing_interval_ms`).

Writes: nothing is written unless a tag says `writable = true`; it is then written with its
node's own DataType (read before each write), or as `data_type` (a built-in type name) for a
node whose DataType is abstract. See `drivers.opcua.write`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from drivers.config import NAME_PATTERN, Strict, TagBase
from drivers.opcua.tags import DEFAULT_GROUP, WRITABLE_TYPE_NAMES, OpcUaGroup, OpcUaTag

if TYPE_CHECKING:  # asyncua (~50 MB) is imported only when an OPC UA driver is built
    from drivers.opcua.driver import OpcUaDriver
    from drivers.opcua.security import Security

PolicyName = Literal[
    "auto", "None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"
]


class OpcUaTagConfig(TagBase):
    node: str = Field(min_length=3, description="node id, e.g. 'nsu=urn:plant;s=Loop.flow'")
    sampling_interval_ms: float = Field(default=100.0, ge=0)
    group: str = DEFAULT_GROUP
    queue_size: int = Field(default=0, ge=0, description="0: enough for one publishing interval")
    discard: Literal["oldest", "newest"] = "oldest"
    server_deadband: float = Field(
        default=0.0, ge=0.0, description="DataChangeFilter deadband, applied by the server"
    )
    server_deadband_type: Literal["absolute", "percent"] = "absolute"
    writable: bool = Field(default=False, description="allow writes to this node")
    data_type: str | None = Field(
        default=None, description="built-in type to write as; default: the node's DataType"
    )


class OpcUaGroupConfig(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    mode: Literal["subscribe", "poll"] = "subscribe"
    publishing_interval_ms: float | None = Field(default=None, gt=0)
    poll_interval_ms: float | None = Field(default=None, gt=0)


class OpcUaDriverConfig(Strict):
    kind: Literal["opcua"]
    name: str = Field(pattern=NAME_PATTERN)
    endpoint: str = Field(pattern=r"^opc\.tcp://")
    publishing_interval_ms: float = Field(default=100.0, gt=0)
    timeout_s: float = Field(default=5.0, gt=0)
    username: str | None = None
    password_env: str | None = Field(
        default=None, description="name of the environment variable that holds the password"
    )
    security_policy: PolicyName = "auto"
    security_mode: Literal["auto", "None", "Sign", "SignAndEncrypt"] = "auto"
    server_thumbprint: str | None = Field(
        default=None, description="pinned SHA-1 (or SHA-256) thumbprint of the server certificate"
    )
    pki_dir: str | None = Field(default=None, description="default: <agent.state_dir>/pki")
    application_uri: str = ""
    items_per_call: int = Field(default=200, ge=1, le=100_000)
    session_timeout_s: float = Field(default=30.0, ge=5.0)
    keepalive_s: float = Field(default=1.0, gt=0)
    groups: list[OpcUaGroupConfig] = Field(default_factory=list)
    tags: list[OpcUaTagConfig] = Field(min_length=1)

    @property
    def poll_interval_s(self) -> float:
        """How often the acquisition loop checks the link when nothing arrives."""
        return 1.0

    def problems(self, where: str) -> list[str]:
        """Cross-field problems, each prefixed with `where` (e.g. `drivers[0]`)."""
        out: list[str] = []
        names: set[str] = set()
        for k, g in enumerate(self.groups):
            at = f"{where}.groups[{k}]"
            if g.name in names or g.name == DEFAULT_GROUP:
                out.append(f"{at}.name: group {g.name!r} is defined twice or reserved; rename it")
            names.add(g.name)
            if g.mode == "subscribe" and g.poll_interval_ms is not None:
                out.append(
                    f"{at}.poll_interval_ms: only for mode = 'poll'; use publishing_interval_ms"
                )
            if g.mode == "poll" and g.publishing_interval_ms is not None:
                out.append(
                    f"{at}.publishing_interval_ms: only for mode = 'subscribe'; "
                    "use poll_interval_ms"
                )
            if g.mode == "poll" and g.poll_interval_ms is None:
                out.append(f"{at}.poll_interval_ms: required with mode = 'poll'")
        for j, t in enumerate(self.tags):
            if t.data_type is not None and t.data_type not in WRITABLE_TYPE_NAMES:
                out.append(
                    f"{where}.tags[{j}].data_type: {t.data_type!r} is not a type that can be "
                    f"written; use one of {', '.join(WRITABLE_TYPE_NAMES)} or remove the key"
                )
            if t.data_type is not None and not t.writable:
                out.append(f"{where}.tags[{j}].data_type: only for writable = true tags")
            if t.group != DEFAULT_GROUP and t.group not in names:
                out.append(
                    f"{where}.tags[{j}].group: no group {t.group!r}; add a [[drivers.groups]] "
                    f"with name = {t.group!r} or remove the key"
                )
        if self.security_policy == "None" and self.security_mode in ("Sign", "SignAndEncrypt"):
            out.append(
                f"{where}.security_mode: {self.security_mode} needs a security_policy "
                "other than 'None'"
            )
        if self.security_mode == "None" and self.security_policy not in ("None", "auto"):
            out.append(f"{where}.security_policy: mode 'None' takes policy 'None'")
        tp = self.server_thumbprint
        if tp is not None and not re.fullmatch(
            r"([0-9A-Fa-f]{40}|[0-9A-Fa-f]{64})", tp.replace(":", "")
        ):
            out.append(
                f"{where}.server_thumbprint: expected 40 (SHA-1) or 64 (SHA-256) hex "
                "digits, as `edge-agent certs` prints them"
            )
        if self.username is not None and self.password_env is None:
            out.append(
                f"{where}.password_env: required with username (the name of the "
                "environment variable holding the password)"
            )
        return out

    def security(self, state_dir: Path | None) -> Security:
        """The security settings with the PKI folder resolved against `state_dir`."""
        from drivers.opcua.security import Security  # noqa: PLC0415  # lazy: asyncua

        base = state_dir if state_dir is not None else Path("state")
        pki = base / "pki" if self.pki_dir is None else base / Path(self.pki_dir).expanduser()
        mode = self.security_mode
        if self.security_policy == "None" and mode == "auto":
            mode = "None"
        return Security(
            pki_dir=pki,
            policy=self.security_policy,
            mode=mode,
            server_thumbprint=self.server_thumbprint,
            application_uri=self.application_uri,
        )

    def build(self, state_dir: Path | None = None) -> OpcUaDriver:
        """The driver for this entry (the password read from its environment variable)."""
        from drivers.opcua.driver import OpcUaDriver  # noqa: PLC0415  # lazy: asyncua

        groups = [
            OpcUaGroup(
                g.name,
                g.mode,
                (g.poll_interval_ms if g.mode == "poll" else g.publishing_interval_ms)
                or self.publishing_interval_ms,
            )
            for g in self.groups
        ]
        tags = [
            OpcUaTag(
                t.name,
                t.node,
                sampling_interval_ms=t.sampling_interval_ms,
                deadband=t.server_deadband,
                deadband_type=t.server_deadband_type if t.server_deadband > 0 else "none",
                queue_size=t.queue_size,
                discard_oldest=t.discard == "oldest",
                group=t.group,
                writable=t.writable,
                data_type=t.data_type,
            )
            for t in self.tags
        ]
        return OpcUaDriver(
            self.name,
            self.endpoint,
            tags,
            publishing_interval_ms=self.publishing_interval_ms,
            timeout_s=self.timeout_s,
            username=self.username,
            password=None if self.password_env is None else os.environ.get(self.password_env),
            groups=groups,
            items_per_call=self.items_per_call,
            security=self.security(state_dir),
            session_timeout_s=self.session_timeout_s,
            keepalive_s=self.keepalive_s,
        )
