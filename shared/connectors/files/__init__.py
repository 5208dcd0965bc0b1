"""CSV file exchange (`kind: files`): an inbox of exports, an archive, an outbox of imports; see connector.py."""
