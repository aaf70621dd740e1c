"""Round robin over the servers that are available, skipping those a request already tried."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.balancer import RoundRobin

SERVERS = ["a", "b", "c", "d", "e"]


def always(_: str) -> bool:
    return True


@pytest.mark.parametrize(("k", "n"), [(1, 7), (2, 100), (3, 99), (3, 100), (5, 1), (5, 1001)])
def test_each_server_gets_its_share(k: int, n: int) -> None:
    """Over n requests each of k servers gets n/k +- 1 (and at least 0)."""
    balancer = RoundRobin(SERVERS[:k], always)
    counts = Counter(balancer.choose() for _ in range(n))
    assert sum(counts.values()) == n
    assert all(abs(counts[s] - n / k) <= 1 for s in SERVERS[:k])


def test_order_is_cyclic() -> None:
    balancer = RoundRobin(["a", "b", "c"], always)
    assert [balancer.choose() for _ in range(7)] == ["a", "b", "c", "a", "b", "c", "a"]


def test_unavailable_servers_are_skipped_and_the_rest_share_evenly() -> None:
    down = {"b"}
    balancer = RoundRobin(["a", "b", "c"], lambda s: s not in down)
    counts = Counter(balancer.choose() for _ in range(100))
    assert counts["b"] == 0 and abs(counts["a"] - counts["c"]) <= 1
    down.clear()  # b comes back and is chosen again
    assert "b" in {balancer.choose() for _ in range(3)}


def test_excluded_servers_are_skipped() -> None:
    """A retry never goes to a server the same request already tried."""
    balancer = RoundRobin(["a", "b", "c"], always)
    first = balancer.choose()
    assert first is not None
    second = balancer.choose(exclude=[first])
    assert second is not None
    third = balancer.choose(exclude=[first, second])
    assert len({first, second, third}) == 3
    assert balancer.choose(exclude=["a", "b", "c"]) is None


def test_nothing_available_gives_none() -> None:
    assert RoundRobin(["a", "b"], lambda s: False).choose() is None
    assert RoundRobin([], always).choose() is None


@given(
    st.integers(min_value=1, max_value=5),
    st.lists(
        st.tuples(st.frozensets(st.sampled_from(SERVERS)), st.frozensets(st.sampled_from(SERVERS))),
        max_size=40,
    ),
)
def test_choice_is_always_allowed(
    k: int, steps: list[tuple[frozenset[str], frozenset[str]]]
) -> None:
    """Under any pattern of DOWN servers and exclusions the choice is an UP, non-excluded
    server, and None only when there is none."""
    servers = SERVERS[:k]
    down: set[str] = set()
    balancer = RoundRobin(servers, lambda s: s not in down)
    for now_down, exclude in steps:
        down.clear()
        down.update(now_down)
        chosen = balancer.choose(exclude)
        allowed = [s for s in servers if s not in down and s not in exclude]
        if allowed:
            assert chosen in allowed
        else:
            assert chosen is None
