"""``chatbxctl cluster status``: the nodes in Redis and their sessions.

The CLI runs without a reactor, so this speaks RESP over a plain blocking
socket (a few commands, then it exits); the server itself only ever uses
the txredisapi connections of redis.py.
"""

from __future__ import annotations

import socket
from typing import Any

from chatbx_server.cluster.node import NODE_TTL, NODES, _inbox_key, _pairs, _sessions_key
from chatbx_server.cluster.redis import RedisAddress


class BlockingRedis:
    """The minimum of RESP2 a status query needs (bulk/array/int/status replies)."""

    def __init__(self, address: RedisAddress, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((address.host, address.port), timeout=timeout)
        self.reader = self.sock.makefile("rb")
        if address.password is not None:
            self.command("AUTH", address.password)
        self.command("SELECT", str(address.db))

    def command(self, *args: str) -> Any:
        out = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(out))
        return self._read()

    def _read(self) -> Any:
        line = self.reader.readline()
        if not line:
            raise ConnectionError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.reader.read(size + 2)[:-2]
            return data.decode()
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._read() for _ in range(size)]
        raise ValueError(f"unexpected reply {line!r}")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def cluster_status(address: RedisAddress) -> list[dict[str, Any]]:
    """One dict per node known to Redis: name, live, seconds since its
    heartbeat, sessions bound on it, stanza batches waiting in its inbox."""
    redis = BlockingRedis(address)
    try:
        seconds, micros = redis.command("TIME")
        now = int(seconds) * 1000 + int(micros) // 1000
        nodes = []
        for name, score in sorted(_pairs(redis.command("ZRANGE", NODES, "0", "-1", "WITHSCORES")).items()):
            age = (now - float(score)) / 1000
            nodes.append({"node": name, "live": age <= NODE_TTL, "heartbeat_age": round(age, 1),
                          "sessions": redis.command("HLEN", _sessions_key(name)),
                          "inbox": redis.command("XLEN", _inbox_key(name))})
        return nodes
    finally:
        redis.close()
