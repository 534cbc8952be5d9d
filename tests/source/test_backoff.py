"""The pure pacing policies: reconnect backoff and the client event rate limit."""

from __future__ import annotations

import random

import pytest

from finazon_trio.source.backoff import Backoff, RateLimiter


def delays(backoff: Backoff, count: int, healthy_for: float = 0.0) -> list[float | None]:
    return [backoff.next_delay(healthy_for) for _ in range(count)]


def test_full_jitter_grows_exponentially_to_the_cap() -> None:
    backoff = Backoff(max_backoff=30.0, jitter=lambda: 1.0)
    assert delays(backoff, 8) == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_jitter_scales_the_ceiling() -> None:
    values = iter([0.25, 0.5, 0.0, 0.999])
    backoff = Backoff(max_backoff=5.0, jitter=lambda: next(values))
    assert delays(backoff, 4) == [0.25, 1.0, 0.0, 0.999 * 5.0]


def test_first_retry_is_within_a_second() -> None:
    for seed in range(200):
        backoff = Backoff(max_backoff=30.0, jitter=random.Random(seed).random)
        first = backoff.next_delay(0.0)
        assert first is not None
        assert 0.0 <= first < 1.0


def test_delays_are_spread_over_the_whole_range() -> None:
    rng = random.Random(1)
    seen = []
    for _ in range(500):
        backoff = Backoff(max_backoff=8.0, jitter=rng.random)
        seen.append(delays(backoff, 5)[-1])
    assert min(d for d in seen if d is not None) < 0.5
    assert max(d for d in seen if d is not None) > 7.5


def test_a_healthy_minute_resets_the_count() -> None:
    backoff = Backoff(max_backoff=30.0, jitter=lambda: 1.0)
    assert delays(backoff, 3, healthy_for=10.0) == [1.0, 2.0, 4.0]
    assert backoff.next_delay(59.9) == 8.0
    assert backoff.next_delay(60.0) == 1.0
    assert backoff.next_delay(0.0) == 2.0


def test_max_retries_counts_failures_in_a_row() -> None:
    backoff = Backoff(max_backoff=30.0, max_retries=3, jitter=lambda: 0.5)
    assert delays(backoff, 4) == [0.5, 1.0, 2.0, None]
    assert backoff.next_delay(0.0) is None
    assert backoff.next_delay(61.0) == 0.5  # a healthy minute earns the retries back


def test_zero_retries_gives_up_at_once() -> None:
    assert Backoff(max_backoff=30.0, max_retries=0).next_delay(0.0) is None


def test_unlimited_retries() -> None:
    backoff = Backoff(max_backoff=2.0, jitter=lambda: 1.0)
    assert delays(backoff, 10_000)[-1] == 2.0


def test_rate_limiter_allows_a_burst_then_waits_for_the_window() -> None:
    limiter = RateLimiter(limit=3, window=60.0)
    for now in (0.0, 1.0, 2.0):
        assert limiter.next_allowed(now) == now
        limiter.record(now)
    assert limiter.next_allowed(2.5) == 60.0
    limiter.record(60.0)
    assert limiter.next_allowed(60.0) == 61.0
    assert limiter.next_allowed(100.0) == 100.0


def test_rate_limiter_never_exceeds_the_limit_in_any_window() -> None:
    limiter = RateLimiter(limit=90, window=60.0)
    rng = random.Random(7)
    now, sent = 0.0, []
    for _ in range(2000):
        now = max(now + rng.uniform(0.0, 0.5), limiter.next_allowed(now))
        limiter.record(now)
        sent.append(now)
    for index, start in enumerate(sent):
        window = [t for t in sent[index : index + 100] if t < start + 60.0]
        assert len(window) <= 90


def test_rate_limiter_needs_a_positive_limit() -> None:
    with pytest.raises(ValueError, match="at least one"):
        RateLimiter(limit=0)
