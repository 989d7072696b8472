"""Rate limits: token buckets per caller and per user, RESOURCE_EXHAUSTED with RetryInfo."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from avatarsigner.v1 import avatar_signer_pb2 as pb
from avatarsigner.v1 import avatar_signer_pb2_grpc as pb_grpc
from avatarsigner_server.access.rate_limits import Buckets, RateLimiter
from avatarsigner_server.errors import RateLimited
from avatarsigner_server.settings import SettingsError
from avatarsigner_server.settings.access import RateLimit, RateLimits
from avatarsigner_server.telemetry.call_context import Call
from guarded import caller, code_of, retry_delay, write_callers
from servers import ServerThread, settings_from


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_a_burst_then_refills_at_its_rate() -> None:
    clock = FakeClock()
    buckets = Buckets(RateLimit(rate=2.0, burst=3), clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one token every 0.5 s
    assert buckets.take("b") == 0.0  # another key has its own bucket
    clock.now += 0.5
    assert buckets.take("a") == 0.0
    clock.now += 100
    assert [buckets.take("a") for _ in range(4)][-1] == pytest.approx(0.5)  # never above burst


def test_refused_take_uses_no_tokens_and_a_big_cost_needs_a_full_bucket() -> None:
    clock = FakeClock()
    buckets = Buckets(RateLimit(rate=10.0, burst=5), clock)
    assert buckets.take("a", 4) == 0.0
    assert buckets.take("a", 3) == pytest.approx(0.2)
    assert buckets.take("a", 1) == 0.0  # the refused take did not spend the last token
    assert buckets.take("a", 50) == pytest.approx(0.5)  # needs a full bucket: 5 tokens


def test_a_batch_larger_than_the_burst_leaves_the_bucket_in_debt() -> None:
    clock = FakeClock()
    buckets = Buckets(RateLimit(rate=1.0, burst=10), clock)
    assert buckets.take("feed", 1000) == 0.0  # a full bucket admits one big batch
    assert buckets.take("feed", 1000) == pytest.approx(1000.0)  # then the debt is repaid
    assert buckets.take("feed", 1) == pytest.approx(991.0)
    urls = 1000
    for _ in range(60):  # a minute of retries adds nothing
        clock.now += 1
        if buckets.take("feed", 1000) == 0.0:
            urls += 1000
    assert urls == 1000  # 1 URL/s on average, not 100/s
    clock.now += 1000
    assert buckets.take("feed", 1000) == 0.0


def test_buckets_are_bounded() -> None:
    buckets = Buckets(RateLimit(rate=1.0, burst=1), FakeClock(), max_keys=100)
    for n in range(1000):
        buckets.take(f"user-{n}")
    assert len(buckets._buckets) == 100


def test_limiter_reasons_and_retry_after() -> None:
    clock = FakeClock()
    limiter = RateLimiter(
        RateLimits(
            upload_per_caller=RateLimit(1.0, 1),
            upload_per_user=RateLimit(0.5, 1),
            download_per_caller=None,
        ),
        clock,
    )
    limiter.admit_caller("svc", "CreateUploadUrl", 1)
    with pytest.raises(RateLimited) as caught:
        limiter.admit_caller("svc", "CreateUploadUrl", 1)
    assert (caught.value.reason, caught.value.retry_after_seconds) == ("rate_limited_caller", 1.0)
    for _ in range(100):  # downloads unlimited
        limiter.admit_caller("svc", "BatchCreateDownloadUrls", 1000)
    call = Call(request_id="r", rpc="CreateUploadUrl", caller="svc")
    limiter.admit_upload_user(call, "alice")
    with pytest.raises(RateLimited) as caught:
        limiter.admit_upload_user(call, "alice")
    assert (caught.value.reason, caught.value.retry_after_seconds) == ("rate_limited_user", 2.0)


# -- on the real server --------------------------------------------------------------------

FEED = caller("feed-service", ["CreateDownloadUrl", "BatchCreateDownloadUrls"])
PROFILE = caller("profile-service", ["CreateUploadUrl", "CreateDownloadUrl"])


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[pb_grpc.AvatarSignerStub]:
    running = ServerThread(
        settings_from(
            CALLERS_FILE=str(write_callers(tmp_path / "callers.toml", [FEED, PROFILE])),
            UPLOADS_PER_USER_PER_SECOND="10",
            UPLOADS_PER_USER_BURST="2",
            DOWNLOADS_PER_CALLER_PER_SECOND="20",
            DOWNLOADS_PER_CALLER_BURST="5",
        )
    )
    with running.channel() as channel:
        yield pb_grpc.AvatarSignerStub(channel)
    running.stop()


def _upload(stub: pb_grpc.AvatarSignerStub, user_id: str) -> None:
    request = pb.CreateUploadUrlRequest(user_id=user_id, content_type="image/png", content_length=1)
    stub.CreateUploadUrl(request, metadata=PROFILE.metadata(), timeout=10)


def test_per_user_upload_limit_reached_and_recovered(limited: pb_grpc.AvatarSignerStub) -> None:
    _upload(limited, "alice")
    _upload(limited, "alice")
    with pytest.raises(grpc.RpcError) as caught:
        _upload(limited, "alice")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    delay = retry_delay(caught.value)
    assert 0 < delay <= 0.1 + 0.001  # 10 per second: the next token within 100 ms
    _upload(limited, "bob")  # another user is not affected
    time.sleep(delay)
    _upload(limited, "alice")  # recovered when RetryInfo said it would


def test_per_caller_download_limit_counts_urls(limited: pb_grpc.AvatarSignerStub) -> None:
    batch = pb.BatchCreateDownloadUrlsRequest(user_ids=[f"u{n}" for n in range(5)])
    limited.BatchCreateDownloadUrls(batch, metadata=FEED.metadata(), timeout=10)
    with pytest.raises(grpc.RpcError) as caught:
        limited.CreateDownloadUrl(
            pb.CreateDownloadUrlRequest(user_id="u1"), metadata=FEED.metadata(), timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    delay = retry_delay(caught.value)
    assert 0 < delay <= 0.05 + 0.001
    # Another caller has its own bucket.
    assert code_of(limited, "CreateDownloadUrl", PROFILE.metadata()) == "OK"
    time.sleep(delay)
    assert code_of(limited, "CreateDownloadUrl", FEED.metadata()) == "OK"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("UPLOADS_PER_CALLER_PER_SECOND", "fast"),
        ("UPLOADS_PER_USER_PER_SECOND", "-1"),
        ("DOWNLOADS_PER_CALLER_PER_SECOND", "nan"),
        ("UPLOADS_PER_USER_BURST", "0"),
        ("DOWNLOADS_PER_CALLER_BURST", "10"),  # downloads are unlimited by default
    ],
)
def test_bad_rate_limit_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        settings_from(**{name: value})
    assert caught.value.name == name


def test_zero_turns_a_limit_off() -> None:
    limits = settings_from(UPLOADS_PER_USER_PER_SECOND="0").access.rate_limits
    assert limits.upload_per_user is None
    assert limits.upload_per_caller == RateLimit(100.0, 200)


def test_an_oversized_batch_costs_no_more_than_a_valid_one() -> None:
    from avatarsigner.v1 import avatar_signer_pb2 as pb_
    from avatarsigner_server.access import guard as auth
    from avatarsigner_server.api.validation import MAX_BATCH

    huge = pb_.BatchCreateDownloadUrlsRequest(user_ids=["u"] * (MAX_BATCH * 200))
    assert auth._cost("BatchCreateDownloadUrls", huge) == MAX_BATCH
    few = pb_.BatchCreateDownloadUrlsRequest(user_ids=["a", "b", "c"])
    assert auth._cost("BatchCreateDownloadUrls", few) == 3
