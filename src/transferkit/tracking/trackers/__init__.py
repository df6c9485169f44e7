"""The trackers, one module each (see `tracking.registry`)."""
