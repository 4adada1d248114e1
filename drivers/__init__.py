"""Card terminals: one module per kind, and terminal-side simulators."""
