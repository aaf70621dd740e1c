"""What a route does with a request: ``proxy`` (forward upstream), ``static`` (serve files),
``redirect`` (answer with a Location), and ``websocket`` (the upgrade tunnel of proxy routes).

Each handler is an async callable of a ``gateway.request.Request`` (see ``Handler`` there).
"""
