"""Start the backend's supervised worker processes, or create an admin (see backend/cli.py)."""

from __future__ import annotations

import sys

from backend.cli import main

# The guard matters: worker processes are spawned and re-import this file as __mp_main__.
if __name__ == "__main__":
    sys.exit(main())
