"""Config schema pieces every protocol driver shares: strict models and the common tag fields.

Each protocol package owns its own `[[drivers]]` schema (`drivers.opcua.config`,
`drivers.modbus.config`) built on these, with its cross-field checks and a `build()` that
returns the driver; `edge_agent.config` only assembles them into the agent's file format.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    """Unknown keys are errors; validated values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]*$"


class TagBase(Strict):
    """Settings every tag has, whatever its protocol."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$", max_length=64)
    unit: str = ""
    range: tuple[float, float] | None = None
    deadband: float = Field(default=0.0, ge=0.0)

    @model_validator(mode="after")
    def _range_ordered(self) -> TagBase:
        if self.range is not None and not self.range[0] < self.range[1]:
            raise ValueError("range must be [low, high] with low < high")
        return self
