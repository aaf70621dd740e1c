"""Token buckets: the pure rule, and the shared fixed-size table with an injected clock."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.headers import TrustedProxies
from gateway.middleware.buckets import BucketTable, remove_abandoned, take_token
from gateway.middleware.rate_limit import client_address, retry_after


def test_take_token_spends_and_refills() -> None:
    tokens, wait = take_token(2.0, 0.0, 0.0, rate=1.0, burst=2.0)
    assert (tokens, wait) == (1.0, 0.0)
    tokens, wait = take_token(0.0, 0.0, 0.25, rate=1.0, burst=2.0)
    assert tokens == 0.25 and wait == pytest.approx(0.75)
    tokens, wait = take_token(0.0, 0.0, 100.0, rate=1.0, burst=2.0)  # capped at burst
    assert (tokens, wait) == (1.0, 0.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_average() -> None:
    clock = Clock()
    table = BucketTable(rate=2.0, burst=3, clock=clock)
    assert [table.take(b"a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert table.take(b"a") == pytest.approx(0.5)
    assert table.take(b"b") == 0.0  # another client has its own bucket
    clock.now += 0.5
    assert table.take(b"a") == 0.0
    assert table.take(b"a") > 0


def test_wait_spends_nothing() -> None:
    clock = Clock()
    table = BucketTable(rate=1.0, burst=1, clock=clock)
    assert table.wait(b"a") == 0.0
    assert table.take(b"a") == 0.0
    assert table.wait(b"a") == pytest.approx(1.0)
    assert table.wait(b"a") == pytest.approx(1.0)


def test_memory_is_bounded_and_idle_buckets_are_reused() -> None:
    """Far more clients than slots: the table never grows, a limited client stays limited
    while its bucket is busy, and idle buckets are taken over."""
    clock = Clock()
    table = BucketTable(rate=1.0, burst=1, slots=64, clock=clock)
    size = len(table.memory)
    assert table.take(b"limited") == 0.0
    for i in range(10_000):
        clock.now += 0.0001
        table.take(b"client-%d" % i)
    assert len(table.memory) == size
    clock.now += 10  # everyone idle: every bucket full again, every slot reusable
    assert table.take(b"limited") == 0.0
    assert table.take(b"limited") > 0


def test_shared_file_is_one_table_for_several_processes(tmp_path: Path) -> None:
    """Two mappings of one file (what two worker processes have) spend the same tokens."""
    clock = Clock()
    path = tmp_path / "buckets"
    one = BucketTable(rate=1.0, burst=2, path=path, clock=clock)
    two = BucketTable(rate=1.0, burst=2, path=path, clock=clock)
    try:
        assert one.take(b"x") == 0.0
        assert two.take(b"x") == 0.0
        assert one.take(b"x") > 0
        assert two.take(b"x") > 0
    finally:
        one.close()
        two.close()


def test_client_address_honours_trusted_proxies() -> None:
    trusted = TrustedProxies(["10.0.0.0/8"])
    xff = [(b"x-forwarded-for", b"203.0.113.7, 10.1.1.1")]
    assert client_address({"client": ("10.0.0.2", 1), "headers": xff}, trusted) == "203.0.113.7"
    assert client_address({"client": ("198.51.100.1", 1), "headers": xff}, trusted) == (
        "198.51.100.1"
    )
    assert client_address({"client": ("10.0.0.2", 1), "headers": []}, trusted) == "10.0.0.2"
    assert client_address({"client": ("10.0.0.2", 1), "headers": xff}, TrustedProxies([])) == (
        "10.0.0.2"
    )


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    assert retry_after(0.01) == 1
    assert retry_after(1.0) == 1
    assert retry_after(1.2) == 2


def test_give_back_returns_a_reserved_token() -> None:
    clock = Clock()
    table = BucketTable(rate=0.001, burst=2, clock=clock)
    assert table.take(b"a") == 0.0
    table.give_back(b"a")  # the reservation was not needed
    assert table.take(b"a") == 0.0
    assert table.take(b"a") == 0.0
    assert table.take(b"a") > 0
    table.give_back(b"nobody")  # no bucket: nothing to do


def test_abandoned_tables_are_removed_held_ones_kept(tmp_path: Path) -> None:
    old = 1_000_000.0  # long ago
    abandoned = tmp_path / "buckets-abandoned"
    abandoned.write_bytes(b"\0" * 24)
    os.utime(abandoned, (old, old))
    young = tmp_path / "buckets-young"  # maybe being opened right now
    young.write_bytes(b"\0" * 24)
    held_path = tmp_path / "buckets-held"
    held = BucketTable(rate=1.0, burst=1, path=held_path, slots=8)
    os.utime(held_path, (old, old))
    try:
        remove_abandoned(tmp_path, keep=tmp_path / "buckets-mine")
        assert not abandoned.exists()
        assert young.exists() and held_path.exists()
    finally:
        held.close()
    remove_abandoned(tmp_path, keep=tmp_path / "buckets-mine")
    assert not held_path.exists()  # its process let go of it
