"""The HTTP endpoints, one module per area; ``app.py`` wires them to paths."""
