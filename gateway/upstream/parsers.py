"""Choose the response parser like uvicorn's ``--http auto``: httptools if importable, else h11."""

from __future__ import annotations

from typing import Protocol

from gateway.upstream.events import ResponseEvent


class ResponseParser(Protocol):
    must_close: bool  # the connection must not carry another exchange

    def start(self, *, head_request: bool, upgrade: bool = False) -> None: ...
    def feed(self, data: bytes) -> list[ResponseEvent]: ...
    def feed_eof(self) -> list[ResponseEvent]: ...


PARSERS = {
    "httptools": "gateway.upstream.httptools_impl:HttpToolsResponseParser",
    "h11": "gateway.upstream.h11_impl:H11ResponseParser",
}


def parser_class(name: str = "auto") -> type[ResponseParser]:
    if name == "auto":
        try:
            import httptools  # noqa: F401
        except ImportError:
            name = "h11"
        else:
            name = "httptools"
    module_name, _, attr = PARSERS[name].partition(":")
    module = __import__(module_name, fromlist=[attr])
    cls: type[ResponseParser] = getattr(module, attr)
    return cls
