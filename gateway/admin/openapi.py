"""The OpenAPI 3.1 description of the admin API (served at ``/openapi.json``)."""

from __future__ import annotations

from typing import Any


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_STRING_LIST = {"type": "array", "items": {"type": "string"}}
_ERROR = {
    "type": "object",
    "properties": {"message": {"type": "string"}, "errors": _STRING_LIST},
    "required": ["message"],
}
_SERVER = {
    "type": "object",
    "properties": {
        "url": {"type": "string"},
        "state": {"type": "string", "enum": ["UP", "DOWN", "DRAINING"]},
        "last_check": {"type": ["string", "null"], "format": "date-time"},
        "last_change": {"type": ["string", "null"], "format": "date-time"},
        "last_error": {"type": ["string", "null"]},
        "failures": {"type": "integer", "description": "consecutive failed checks"},
        "in_flight": {"type": "integer", "description": "requests on this server now"},
        "connections_opened": {"type": "integer"},
        "workers": {
            "type": "object",
            "additionalProperties": {"type": "integer"},
            "description": "how many gateway processes see each state",
        },
    },
    "required": ["url", "state"],
}
_UPSTREAM = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "servers": {"type": "array", "items": _SERVER}},
    "required": ["name", "servers"],
}
_ROUTE = {
    "type": "object",
    "properties": {
        "hosts": _STRING_LIST,
        "path_prefix": {"type": "string"},
        "upstream": {"type": "string"},
        "static": {"type": "string"},
        "redirect": {"type": "string"},
        "middlewares": _STRING_LIST,
        "strip_prefix": {"type": "boolean"},
        "cache": {"type": "boolean"},
    },
    "required": ["hosts", "path_prefix", "middlewares"],
}
_CERTIFICATE = {
    "type": "object",
    "properties": {
        "names": _STRING_LIST,
        "not_after": {"type": "string", "format": "date-time"},
        "issuer": {"type": "string"},
        "source": {"type": "string", "enum": ["local", "acme", "file"]},
    },
    "required": ["names", "not_after", "issuer", "source"],
}
_CACHE = {
    "type": "object",
    "properties": {
        "enabled": {"type": "boolean"},
        "entries": {"type": "integer"},
        "bytes": {"type": "integer"},
        "max_bytes": {"type": "integer"},
        "hits": {"type": "integer"},
        "misses": {"type": "integer"},
        "results": {"type": "object", "additionalProperties": {"type": "integer"}},
    },
    "required": ["entries", "bytes", "hits", "misses"],
}
_UNAUTHORIZED = _json(_ERROR, "Basic credentials missing or wrong ([admin] htpasswd)")

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "pygateway admin API",
        "version": "1",
        "description": "State, metrics and control of the whole gateway (every worker process).",
    },
    "components": {"securitySchemes": {"basic": {"type": "http", "scheme": "basic"}}},
    "paths": {
        "/": {
            "get": {
                "summary": "The live dashboard",
                "responses": {
                    "200": {"description": "HTML", "content": {"text/html": {}}},
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/api/overview": {
            "get": {
                "summary": "Everything the dashboard shows in one answer",
                "responses": {"200": _json({"type": "object"}, "Overview"), "401": _UNAUTHORIZED},
            }
        },
        "/api/upstreams": {
            "get": {
                "summary": "Upstream pools and each server's state",
                "responses": {
                    "200": _json({"type": "array", "items": _UPSTREAM}, "Pools"),
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/api/routes": {
            "get": {
                "summary": "The routes of the running config",
                "responses": {
                    "200": _json({"type": "array", "items": _ROUTE}, "Routes"),
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/api/certificates": {
            "get": {
                "summary": "Certificates served",
                "responses": {
                    "200": _json({"type": "array", "items": _CERTIFICATE}, "Certificates"),
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/api/cache": {
            "get": {
                "summary": "Response cache totals over every worker",
                "responses": {"200": _json(_CACHE, "Cache"), "401": _UNAUTHORIZED},
            },
            "delete": {
                "summary": "Purge stored responses whose path starts with prefix",
                "parameters": [
                    {
                        "name": "prefix",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^/"},
                    }
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "purged": {"type": "integer"},
                                "prefix": {"type": "string"},
                            },
                            "required": ["purged"],
                        },
                        "Purged",
                    ),
                    "400": _json(_ERROR, "No prefix"),
                    "401": _UNAUTHORIZED,
                },
            },
        },
        "/api/reload": {
            "post": {
                "summary": "Re-read the config file and apply it",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "reloaded": {"const": True},
                                "warnings": _STRING_LIST,
                            },
                            "required": ["reloaded"],
                        },
                        "Applied to new requests",
                    ),
                    "422": _json(_ERROR, "Invalid config: nothing changed"),
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics summed over every worker",
                "responses": {
                    "200": {"description": "Text format 0.0.4", "content": {"text/plain": {}}},
                    "401": _UNAUTHORIZED,
                },
            }
        },
    },
    "security": [{"basic": []}],
}
