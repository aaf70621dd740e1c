"""Access-log formats and the log file: rotation by size (also with two processes' writers
on one file), deletion of old rotations with an injected clock, reopening, and failures that
are logged once and never raised."""

from __future__ import annotations

import io
import json
import logging
import os
import time
from pathlib import Path

import pytest

from gateway.access_log import AccessLog, Exchange, LogFile, combined_line, json_line, text_line
from gateway.config import GatewaySettings

STAMP = "06/Dec/2026:20:19:57 +0000"


def exchange(**headers: str) -> Exchange:
    scope = {
        "method": "GET",
        "path": "/a b",
        "raw_path": b"/a%20b",
        "query_string": b"q=1",
        "http_version": "1.1",
        "client": ("203.0.113.9", 5000),
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
    }
    ex = Exchange(scope)
    ex.status, ex.bytes_sent, ex.upstream, ex.cache = 200, 1234, "127.0.0.1:9001", "HIT"
    ex.request_id = "abc123"
    return ex


def test_text_line_is_the_historic_one() -> None:
    line = text_line(exchange(), "2026-12-06T20:19:57+0000", 0.0123)
    assert line == (
        '2026-12-06T20:19:57+0000 203.0.113.9 "GET /a%20b?q=1 HTTP/1.1" 200 1234 '
        "upstream=127.0.0.1:9001 cache=HIT rt=0.012 id=abc123\n"
    )


def test_combined_line_is_nginx_combined_with_escaped_quotes() -> None:
    ex = exchange(referer="https://example.org/", user_agent='curl "8"')
    line = combined_line(ex, STAMP, 0.5)
    assert line == (
        f'203.0.113.9 - - [{STAMP}] "GET /a%20b?q=1 HTTP/1.1" 200 1234 '
        '"https://example.org/" "curl \\x228\\x22"\n'
    )
    assert combined_line(exchange(), STAMP, 0.5).endswith('200 1234 "-" "-"\n')


def test_json_line_is_one_object() -> None:
    record = json.loads(json_line(exchange(host="localhost", user_agent="ua"), "T", 0.25))
    assert record == {
        "time": "T",
        "client": "203.0.113.9",
        "method": "GET",
        "target": "/a%20b?q=1",
        "protocol": "HTTP/1.1",
        "host": "localhost",
        "status": 200,
        "bytes": 1234,
        "upstream": "127.0.0.1:9001",
        "cache": "HIT",
        "duration": 0.25,
        "request_id": "abc123",
        "user_agent": "ua",
        "referer": None,
        "aborted": False,
    }


def test_access_log_batches_in_the_chosen_format() -> None:
    stream = io.StringIO()
    log = AccessLog(True, stream, format="json")

    async def write_two() -> None:
        log.write(exchange())
        log.write(exchange())
        assert stream.getvalue() == ""  # batched: nothing written yet
        log.flush()

    import asyncio

    asyncio.run(write_two())
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["status"] for line in lines] == [200, 200]


def test_from_settings_opens_the_configured_file(tmp_path: Path) -> None:
    g = GatewaySettings(access_log=tmp_path / "logs" / "access.log", access_log_format="combined")
    log = AccessLog.from_settings(g)
    assert log.file is not None and log.file.path == tmp_path / "logs" / "access.log"
    assert log.format == "combined" and log.same_destination(g)
    assert not log.same_destination(GatewaySettings(access_log=True))
    log.close()


class Clock:
    def __init__(self) -> None:
        self.now = time.mktime((2026, 12, 6, 12, 0, 0, 0, 0, -1))

    def __call__(self) -> float:
        return self.now


def test_rotates_past_max_bytes_and_names_by_time(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "access.log"
    log = LogFile(path, max_bytes=100, clock=clock)
    log.write(b"x" * 60 + b"\n")
    assert not log.rotated_files()
    log.write(b"y" * 60 + b"\n")  # now 122 bytes: rotated after this write
    rotated = log.rotated_files()
    assert [p.name for p in rotated] == ["access.log.20261206-120000"]
    assert rotated[0].read_bytes() == b"x" * 60 + b"\n" + b"y" * 60 + b"\n"
    log.write(b"z\n")
    assert path.read_bytes() == b"z\n"
    log.write(b"w" * 120)  # a second rotation in the same second gets a suffix
    assert [p.name for p in log.rotated_files()][-1] == "access.log.20261206-120000.1"
    log.close()


def test_two_writers_rotate_once_and_lose_nothing(tmp_path: Path) -> None:
    """Two workers' LogFiles on one path: the one that rotates renames, the other reopens."""
    path = tmp_path / "access.log"
    first = LogFile(path, max_bytes=50, clock=Clock())
    second = LogFile(path, max_bytes=50, clock=Clock())
    first.write(b"a" * 30 + b"\n")
    second.write(b"b" * 30 + b"\n")  # 62 bytes: second rotates
    assert len(first.rotated_files()) == 1
    first.write(b"c\n")  # first still holds the renamed file, past the limit: it reopens
    second.write(b"d\n")
    assert len(first.rotated_files()) == 1  # no second rotation of the fresh file
    everything = b"".join(p.read_bytes() for p in [*first.rotated_files(), path])
    assert sorted(everything.split()) == [b"a" * 30, b"b" * 30, b"c", b"d"]
    assert path.read_bytes() == b"d\n"
    first.close()
    second.close()


def test_rotated_files_older_than_keep_days_are_deleted(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "access.log"
    old, recent = tmp_path / "access.log.20261120-000000", tmp_path / "access.log.20261205-000000"
    unrelated = tmp_path / "access.log.keep-me"
    for p in (old, recent, unrelated):
        p.write_text("x\n")
    os.utime(old, (clock.now - 8 * 86400,) * 2)
    os.utime(recent, (clock.now - 1 * 86400,) * 2)
    os.utime(unrelated, (clock.now - 30 * 86400,) * 2)
    log = LogFile(path, max_bytes=10, keep_days=7, clock=clock)
    log.write(b"0123456789\n")  # a rotation: old rotations are looked at then
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "access.log",
        "access.log.20261205-000000",
        "access.log.20261206-120000",
        "access.log.keep-me",
    ]
    log.close()


def test_reopen_follows_an_outside_rename(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = LogFile(path)
    log.write(b"before\n")
    path.rename(tmp_path / "access.log.1")  # logrotate's move
    log.write(b"still old\n")
    log.reopen()  # its postrotate: kill -USR1
    log.write(b"after\n")
    assert (tmp_path / "access.log.1").read_bytes() == b"before\nstill old\n"
    assert path.read_bytes() == b"after\n"
    log.close()


def test_an_unopenable_path_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "access.log"
    target.mkdir()  # a directory where the file should be: even root cannot open it
    with caplog.at_level(logging.ERROR, logger="gateway.access_log"):
        log = LogFile(target)
        for _ in range(3):
            log.write(b"x\n")
    assert log.fd is None
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
    target.rmdir()
    log.write(b"back\n")  # tried again at each write: it works once the path is usable
    assert target.read_bytes() == b"back\n"
    log.close()


def test_write_failures_are_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = LogFile(tmp_path / "access.log")
    real_write = os.write

    def full_disk(fd: int, data: bytes) -> int:
        if fd == log.fd:
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    with caplog.at_level(logging.ERROR, logger="gateway.access_log"):
        for _ in range(5):
            log.write(b"line\n")  # never raises
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "No space left on device" in errors[0].getMessage()
    monkeypatch.setattr(os, "write", real_write)
    log.write(b"works\n")
    assert (tmp_path / "access.log").read_bytes() == b"works\n"
    log.close()


def test_a_missing_directory_is_created(tmp_path: Path) -> None:
    log = LogFile(tmp_path / "a" / "b" / "access.log")
    log.write(b"x\n")
    assert (tmp_path / "a" / "b" / "access.log").read_bytes() == b"x\n"
    log.close()


def test_a_closed_file_drops_late_lines_instead_of_reopening(tmp_path: Path) -> None:
    """A reload replaced this log: a request that was still running must not recreate it."""
    path = tmp_path / "access.log"
    log = LogFile(path)
    log.close()
    path.unlink()
    log.write(b"late\n")
    assert not path.exists()
