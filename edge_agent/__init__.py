"""edge-agent: runs a plant's Digital Original next to the real plant and streams the deltas.

Pipeline, in module order: `acquire` (drivers -> samples) -> `image` (process image) ->
`compare` (Digital Original + detector) -> `learn` (calibrated ensemble) -> `alarms` ->
`report` (report by exception) ->
`publish` (MQTT). `agent` wires them under one asyncio TaskGroup; `cli` is the entry point.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edge-agent")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
