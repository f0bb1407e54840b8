"""Process units authored through `models.process.spec`: one `.py` + `.toml` pair each.

`water_loop` is the rig's water-circulation loop (the agent's built-in `kind = "loop"`),
`heat_exchanger` is a lumped two-node counter-flow heat exchanger. `UNITS_DIR` locates them:
`load_spec(UNITS_DIR / "heat_exchanger.toml")`.
"""

from pathlib import Path

UNITS_DIR = Path(__file__).parent

__all__ = ["UNITS_DIR"]
