"""The pilot: main loop, per-event handling, shutdown, journal and reporting."""
