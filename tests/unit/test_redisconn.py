"""REDIS_URL forms, Sentinel's included, without sockets."""

from __future__ import annotations

import pytest

from gateway.redisconn import SentinelTarget, problem, sentinel_target
from gateway.settings import ConfigError, Settings


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_db() -> None:
    target = sentinel_target(
        "redis+sentinel://:s3cret@10.0.0.1:26379,[::1]:26380,sentinel-c:26381/mymaster/2"
        "?sentinel_password=watch"
    )
    assert target == SentinelTarget(
        sentinels=(("10.0.0.1", 26379), ("::1", 26380), ("sentinel-c", 26381)),
        service_name="mymaster",
        db=2,
        password="s3cret",
        sentinel_password="watch",
    )
    assert "s3cret" not in repr(target)
    assert sentinel_target("redis+sentinel://h:1/svc").db == 0


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://h:26379",  # no service
        "redis+sentinel://h:26379/svc/db/extra",
        "redis+sentinel://h:26379/svc/zero",
        "redis+sentinel://h/svc",  # no port
        "redis+sentinel://h:99999/svc",
    ],
)
def test_broken_sentinel_urls_are_explained(url: str) -> None:
    reason = problem(url)
    assert reason is not None and reason.startswith("is not a Sentinel URL")


def test_settings_take_every_scheme_and_never_echo_a_password() -> None:
    for url in (
        "redis://h/0",
        "rediss://h:6380/0",
        "unix:///run/redis.sock",
        "redis+sentinel://h:1/s",
    ):
        assert Settings.from_env({"REDIS_URL": url}).redis_url == url
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"REDIS_URL": "http://user:hunter2@h/0"})
    assert "REDIS_URL is not a redis://" in str(raised.value)
    assert "hunter2" not in str(raised.value)
