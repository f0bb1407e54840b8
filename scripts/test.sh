#!/usr/bin/env bash
# The whole test suite: lint, types, then pytest against a real mosquitto and the hil rig.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k modbus`.
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
ensure_uv
ensure_mosquitto
for peer in scripts/ensure.d/*.sh; do [ -e "$peer" ] && source "$peer"; done
uv sync --frozen --quiet
uv run --frozen ruff check .
uv run --frozen ruff format --check .
uv run --frozen mypy
exec uv run --frozen pytest "$@"
