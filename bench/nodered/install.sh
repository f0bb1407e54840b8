#!/usr/bin/env bash
# Install the pinned Node-RED and nodes (package-lock.json) for the load benchmarks.
# Not part of the test setup: only `python -m bench.throughput` and `bench.e2e_delay` use it.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v npm >/dev/null; then
    echo "npm is missing: apt-get install nodejs npm" >&2
    exit 1
fi
npm ci --no-audit --no-fund
