"""Tools built on the engine: bench, sweep, report and plots, export (users of everything below)."""
