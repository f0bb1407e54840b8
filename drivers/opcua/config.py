"""The `[[drivers]] kind = "opcua"` schema: endpoint, session settings and node tags."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field

from drivers.config import NAME_PATTERN, Strict, TagBase
from drivers.opcua.driver import OpcUaDriver, OpcUaTag


class OpcUaTagConfig(TagBase):
    node: str = Field(min_length=3, description="node id, e.g. 'nsu=urn:plant;s=Loop.flow'")
    sampling_interval_ms: float = Field(default=100.0, gt=0)


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
    tags: list[OpcUaTagConfig] = Field(min_length=1)

    @property
    def poll_interval_s(self) -> float:
        """How often the acquisition loop checks the link when nothing arrives."""
        return 1.0

    def problems(self, where: str) -> list[str]:
        """Cross-field problems, each prefixed with `where` (e.g. `drivers[0]`)."""
        return []

    def build(self) -> OpcUaDriver:
        """The driver for this entry (the password read from its environment variable)."""
        return OpcUaDriver(
            self.name,
            self.endpoint,
            [OpcUaTag(t.name, t.node, t.sampling_interval_ms, 0.0) for t in self.tags],
            publishing_interval_ms=self.publishing_interval_ms,
            timeout_s=self.timeout_s,
            username=self.username,
            password=None if self.password_env is None else os.environ.get(self.password_env),
        )
