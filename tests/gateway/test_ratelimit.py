"""The token bucket that bounds an engine's frames, on a clock the tests move."""

from __future__ import annotations

import pytest

from controlplane.gateway.ratelimit import TokenBucket


def test_a_full_bucket_lets_a_burst_through_then_refuses():
    bucket = TokenBucket(5, 3, now=0.0)
    assert [bucket.take(now=0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.wait_s(now=0.0) == pytest.approx(0.2)


def test_it_refills_at_its_rate_and_never_beyond_its_burst():
    bucket = TokenBucket(5, 3, now=0.0)
    for _ in range(3):
        bucket.take(now=0.0)
    assert bucket.take(now=0.1) is False  # half a token
    assert bucket.take(now=0.2) is True
    assert bucket.take(now=0.2) is False
    # A long quiet spell fills it to the burst, not more.
    assert [bucket.take(now=100.0) for _ in range(4)] == [True, True, True, False]


def test_a_sender_at_the_rate_is_never_refused():
    bucket = TokenBucket(50, 1, now=0.0)
    assert all(bucket.take(now=k / 50) for k in range(1000))


def test_a_clock_going_back_gives_no_tokens():
    bucket = TokenBucket(5, 1, now=10.0)
    assert bucket.take(now=10.0) is True
    assert bucket.take(now=5.0) is False


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_it_refuses_a_rate_or_burst_that_would_refuse_everything(rate, burst):
    with pytest.raises(ValueError, match="rate > 0 and burst >= 1"):
        TokenBucket(rate, burst)
