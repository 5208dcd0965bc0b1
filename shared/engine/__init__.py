"""The use cases: pull changes onto the bus, apply them to the target, settle, replay."""
