"""Shared pytest configuration: fixtures live in `tests/fixtures/`, one module per peer."""

pytest_plugins = [
    "tests.fixtures.mqtt",
    "tests.fixtures.plc",
    "tests.fixtures.fmu",
    "tests.fixtures.sparkplug",
]
