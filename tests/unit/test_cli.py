"""The command line's pure parts: ``pygateway proxy`` arguments and the config it builds, and
the error answers written before any app runs."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gateway.cli import build_parser
from gateway.config import parse_settings
from gateway.errors import parse_error, raw_error_response
from gateway.quick_proxy import data_dir, proxy_config, split_from


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("localhost", ("localhost", 8443)),
        ("localhost:9443", ("localhost", 9443)),
        ("app.localhost:443", ("app.localhost", 443)),
        ("[::1]:8443", ("::1", 8443)),
        ("[::1]", ("::1", 8443)),
    ],
)
def test_split_from(value: str, expected: tuple[str, int]) -> None:
    assert split_from(value) == expected


@pytest.mark.parametrize("value", ["localhost:0", "localhost:x", "[::1", ":8443"])
def test_split_from_refuses(value: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="--from"):
        split_from(value)


def test_proxy_config_is_a_valid_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert data_dir() == tmp_path / "pygateway"
    data = proxy_config(
        "app.localhost", 9443, 9080, ["http://127.0.0.1:3000", "http://127.0.0.1:3001"], "::1"
    )
    settings = parse_settings(data, tmp_path / "proxy")
    assert settings.gateway.hostnames == ("app.localhost",)
    assert settings.tls.dir == tmp_path / "pygateway"
    assert [s.port for s in settings.upstreams["app"].servers] == [3000, 3001]
    assert not settings.cache.enabled
    # Any answer below 500 keeps an app without a health endpoint in rotation.
    assert settings.upstreams["app"].health_status == tuple(range(200, 500))


def test_subcommands() -> None:
    parser = build_parser()
    args = parser.parse_args(["proxy", "--to", "http://127.0.0.1:3000"])
    assert (args.command, args.from_, args.to) == (
        "proxy",
        "localhost:8443",
        ["http://127.0.0.1:3000"],
    )
    assert parser.parse_args(["check", "--config", "x.toml"]).config == "x.toml"
    with pytest.raises(SystemExit):
        parser.parse_args(["proxy"])  # --to is required


@pytest.mark.parametrize(
    ("too_large", "status", "says"),
    [(True, 431, b"max_header_bytes"), (False, 400, b"malformed HTTP request")],
)
def test_parse_errors_are_whole_json_responses(too_large: bool, status: int, says: bytes) -> None:
    raw = raw_error_response(parse_error(too_large, 1024))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status)
    assert b"connection: close" in head and b"content-type: application/json" in head
    assert says in body and b"content-length: %d" % len(body) in head
