"""Node-RED as the peer of the load benchmarks: flows generator, settings and runner."""
