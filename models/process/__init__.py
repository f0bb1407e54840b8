"""The Digital Original of the water-circulation loop: `LoopModel` (numba) and its parameters.

`loop.py` owns the equations and integration, `params.py` the parameter file format,
`loop.toml` the nominal design values.
"""

from models.process.loop import INPUT_NAMES, OUTPUT_NAMES, LoopModel
from models.process.params import LoopParams, load_params

__all__ = ["INPUT_NAMES", "OUTPUT_NAMES", "LoopModel", "LoopParams", "load_params"]
