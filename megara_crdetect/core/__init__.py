"""Pure numerical core: functions on numpy arrays, no I/O, no plotting."""
