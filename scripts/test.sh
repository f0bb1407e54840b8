#!/usr/bin/env bash
# The whole test suite: lint, types, then pytest against a real mosquitto and the hil rig.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k modbus` (`-n 0`: one process).
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
ensure_uv
ensure_mosquitto
for peer in scripts/ensure.d/*.sh; do [ -e "$peer" ] && source "$peer"; done
uv sync --frozen --quiet
uv run --frozen ruff check .
uv run --frozen ruff format --check .
uv run --frozen mypy
# Two workers, a test file per worker at a time (module fixtures stay whole): most tests wait
# on real servers and sockets, so two run side by side in about half the time on two cores.
exec uv run --frozen pytest -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
