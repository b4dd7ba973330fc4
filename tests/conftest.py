"""Shared pytest set-up: fixtures live in tests/fixtures/, one module per concern."""

pytest_plugins = [
    "tests.fixtures.kafka",
    "tests.fixtures.model",
    "tests.fixtures.registry",
]
