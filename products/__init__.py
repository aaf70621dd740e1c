"""The products service: a second upstream next to the backend, as in the original microservices.

Its own Starlette app, process(es) and database (``PRODUCTS_DATABASE``: a SQLite file or a
``postgresql://`` URL).  It trusts the backend's access tokens: the same signing key (from
``BACKEND_JWT_SECRET`` or the backend's generated file), the algorithm pinned, and every token's
session and its user's role looked up in the backend's database, so a logout or a demotion takes
effect here at once.  Anyone may read; only admins write.

    python -m products --port 9001 [--host 127.0.0.1] [--config config.toml]

Every path lives under ``/products`` (the gateway routes that prefix here unchanged).
"""
