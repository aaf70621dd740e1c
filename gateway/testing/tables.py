"""The config file a test gateway runs: defaults (loopback ports, its own CA directory, the
host ``localhost``, the app as pool ``app`` at ``/``) with the caller's tables merged over them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# The gateway's active health checks of an in-process app are answered before the app (see
# ``app_server``), so the app under test never sees requests it did not expect.
HEALTH_PATH = "/_pygateway/health"
# Any answer proves a server is there; a test that expects a 500 from "/" must not see its
# upstream taken out of rotation (and 503s) because of it.
ANY_STATUS = list(range(100, 600))
UPSTREAM_NAME = "app"


def merge_tables(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``: tables merge key by key, any other value (arrays such as
    ``routes`` included) replaces the base's."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_tables(merged[key], value)
        else:
            merged[key] = value
    return merged


def toml_ready(value: Any) -> Any:
    """Paths become strings, tuples lists: what a user naturally writes in a dict, as TOML."""
    if isinstance(value, Mapping):
        return {str(k): toml_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [toml_ready(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def default_tables(
    directory: Path, https_port: int, http_port: int, upstream: str | None, health_path: str
) -> dict[str, Any]:
    """The config the fixture writes when the caller adds nothing."""
    tables: dict[str, Any] = {
        "gateway": {
            "host": "127.0.0.1",
            "https_port": https_port,
            "http_port": http_port,
            "hostnames": ["localhost"],
        },
        "tls": {"dir": str(directory / "certs")},
        # A test sees its app's own responses, not stored ones, unless it turns the cache on.
        "cache": {"enabled": False},
    }
    if upstream is not None:
        tables["upstreams"] = {
            UPSTREAM_NAME: {
                "servers": [upstream],
                "health_path": health_path,
                "health_status": ANY_STATUS,
            }
        }
        tables["routes"] = [{"path_prefix": "/", "upstream": UPSTREAM_NAME}]
    return tables
