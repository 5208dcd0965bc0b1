"""The seams between the engine and the outside world. Each has a contract suite in tests/contracts."""
