"""Session-wide test plugins."""

pytest_plugins = ["tests.fixtures.azurite", "tests.fixtures.postgres", "tests.fixtures.cap"]
