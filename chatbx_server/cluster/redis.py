"""Redis connections for the cluster (txredisapi, on the reactor).

Three connections per node, as Synapse's workers use txredisapi: one for
commands (pipelined, never blocking), one that sits in ``XREADGROUP BLOCK``
reading this node's inbox (a blocking read would stall every command queued
behind it), and one subscribed to the directory channel (a connection in
pub/sub mode accepts no other command). All three reconnect by themselves.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple
from urllib.parse import unquote, urlsplit

import txredisapi  # type: ignore[import-untyped]
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint


class RedisAddress(NamedTuple):
    host: str
    port: int
    db: int
    password: str | None


def parse_redis_url(url: str) -> RedisAddress:
    """``redis://[:password@]host[:port][/db]`` -> its parts.

    Raises:
        ValueError: another scheme, or a port or database that is not a number.
    """
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ValueError("expected redis://host[:port][/db]")
    try:
        port = parts.port or 6379
        path = parts.path.strip("/")
        db = int(path) if path else 0
    except ValueError:
        raise ValueError("port and database must be numbers") from None
    if not parts.hostname:
        raise ValueError("no host in the URL")
    password = unquote(parts.password) if parts.password else None
    return RedisAddress(parts.hostname, port, db, password)


def command_connection(address: RedisAddress, reactor: Any = None) -> Any:
    """A lazy connection: commands issued before it is up wait for it."""
    return txredisapi.lazyConnection(address.host, address.port, dbid=address.db,
                                     password=address.password, reconnect=True,
                                     convertNumbers=False)


class _Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc,unused-ignore]
    """Subscribes to the factory's channels on every (re)connection."""

    def connectionMade(self) -> Any:
        d = defer.maybeDeferred(super().connectionMade)
        factory = self.factory
        d.addCallback(lambda _: self.subscribe(list(factory.channels)))
        d.addCallback(lambda _: factory.on_subscribed())
        return d

    def messageReceived(self, pattern: Any, channel: str, message: str) -> None:
        self.factory.on_message(channel, message)


def subscriber(address: RedisAddress, channels: list[str], on_message: Callable[[str, str], None],
               on_subscribed: Callable[[], Any], reactor: Any) -> Any:
    """Subscribe to ``channels``; ``on_subscribed`` runs after each (re)subscription
    (the caller re-reads what it may have missed while disconnected)."""
    factory = txredisapi.SubscriberFactory(isLazy=True)
    factory.protocol = _Subscriber
    factory.dbid = address.db
    factory.password = address.password
    factory.channels = channels
    factory.on_message = on_message
    factory.on_subscribed = on_subscribed
    factory.startConnecting(TCP4ClientEndpoint(reactor, address.host, address.port))
    return factory
