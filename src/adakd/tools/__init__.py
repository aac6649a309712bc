"""Tools built on the engine: bench, sweep, report and plots, export, the teacher-cache command (users of
everything below)."""
