"""Redis clients from `REDIS_URL`: `redis://`, `rediss://` (TLS), `unix://` and Sentinel.

A Sentinel URL names the sentinels and the service they watch:

    redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]

The password (and user) are the primary's; `?sentinel_password=...` is the sentinels'
own, when they have one. The client asks the sentinels for the current primary and
asks again after a failover, so the gateway and the workers follow it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.sentinel import Sentinel

__all__ = ["SCHEMES", "SentinelTarget", "connect", "problem", "reconnect", "sentinel_target"]

SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://")


@dataclass(frozen=True)
class SentinelTarget:
    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)


def sentinel_target(url: str) -> SentinelTarget:
    """The parts of a `redis+sentinel://` URL; ValueError says what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "redis+sentinel":
        raise ValueError("not a redis+sentinel:// URL")
    credentials, _, hosts = parts.netloc.rpartition("@")
    sentinels = []
    for item in hosts.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{item!r} is not host:port")
        sentinels.append((host.strip("[]"), int(port)))
    path = [unquote(p) for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ValueError("the path must be /service_name or /service_name/db")
    if len(path) == 2 and not path[1].isdigit():
        raise ValueError(f"db {path[1]!r} is not a number")
    username, _, password = credentials.partition(":") if credentials else ("", "", "")
    query = parse_qs(parts.query)
    return SentinelTarget(
        sentinels=tuple(sentinels),
        service_name=path[0],
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) or None,
        sentinel_password=query["sentinel_password"][0] if "sentinel_password" in query else None,
    )


def problem(url: str) -> str | None:
    """Why `url` cannot be a REDIS_URL, or None."""
    if not url.startswith(SCHEMES):
        return "is not a redis://, rediss://, unix:// or redis+sentinel:// URL"
    if url.startswith("redis+sentinel://"):
        try:
            sentinel_target(url)
        except ValueError as error:
            return f"is not a Sentinel URL: {error}"
    return None


def connect(url: str, *, connect_timeout: float = 2.0, timeout: float = 5.0) -> redis.Redis:
    """A client for `url`; for Sentinel, one that follows the current primary."""
    if url.startswith("redis+sentinel://"):
        target = sentinel_target(url)
        sentinel_kwargs: dict[str, Any] = {
            "socket_connect_timeout": connect_timeout,
            "socket_timeout": timeout,
        }
        if target.sentinel_password:
            sentinel_kwargs["password"] = target.sentinel_password
        manager = Sentinel(
            list(target.sentinels),
            sentinel_kwargs=sentinel_kwargs,
            socket_connect_timeout=connect_timeout,
            socket_timeout=timeout,
        )
        client = manager.master_for(
            target.service_name, db=target.db, username=target.username, password=target.password
        )
    else:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=connect_timeout, socket_timeout=timeout
        )
    client._tracegate_origin = (url, connect_timeout, timeout)
    return client


def reconnect(client: redis.Redis) -> redis.Redis:
    """A new client of the same kind as `client`, for a forked child.

    A new pool instead of redis-py's own reset after a fork: a thread of the parent may
    have held the old pool's lock at the fork, and the reset would wait for it forever.
    """
    origin = getattr(client, "_tracegate_origin", None)
    if origin is not None:
        url, connect_timeout, timeout = origin
        return connect(url, connect_timeout=connect_timeout, timeout=timeout)
    pool = client.connection_pool
    fresh = type(pool)(connection_class=pool.connection_class, **pool.connection_kwargs)
    return redis.Redis(connection_pool=fresh)
