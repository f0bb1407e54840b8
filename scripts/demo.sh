#!/usr/bin/env bash
# The demo: rig + broker + agent + live view. Extra arguments go to `edge-agent demo`,
# e.g. `bash scripts/demo.sh --duration 60 --fault leak@20`.
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
ensure_uv
uv sync --frozen --quiet --compile-bytecode
exec uv run --frozen edge-agent demo "$@"
