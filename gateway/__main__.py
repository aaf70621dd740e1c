"""``python -m gateway``: the same as the ``pygateway`` command."""

from gateway.cli import main

raise SystemExit(main())
