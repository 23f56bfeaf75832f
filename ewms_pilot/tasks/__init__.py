"""Tasks: one event's files, argv, process and failure types."""
