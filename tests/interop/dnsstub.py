"""A tiny DNS server on 127.0.0.1 for interop tests: SRV and A records for
test domains, NXDOMAIN for everything else.

ejabberd 23.01 has no static s2s routes: it looks up
``_xmpps-server._tcp.DOMAIN`` and ``_xmpp-server._tcp.DOMAIN`` (RFC 6120
§3.2.1, XEP-0368) with Erlang's own resolver, then resolves the SRV target
with getaddrinfo. The test ejabberd's ``inetrc`` names this server as its
only nameserver, so its SRV lookups stay on loopback; the SRV target is
``localhost`` (in every /etc/hosts), so no other DNS server is asked either.

It runs in a thread of the test process (a blocking UDP socket with a
short timeout so that ``stop()`` returns promptly); messages are parsed
and built with twisted.names.
"""

from __future__ import annotations

import socket
import threading
from typing import Optional

from twisted.names import dns


class DNSStub:
    """Answers SRV queries from ``srv`` and A queries from ``a``.

    Args:
        srv: query name -> list of (priority, weight, port, target).
        a: host name -> IPv4 address (loopback only).
    """

    def __init__(self, srv: dict[str, list[tuple[int, int, int, str]]],
                 a: Optional[dict[str, str]] = None) -> None:
        self.srv = {k.lower().rstrip("."): v for k, v in srv.items()}
        self.a = {k.lower().rstrip("."): v for k, v in (a or {}).items()}
        for address in self.a.values():
            assert address.startswith("127."), "loopback only"
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        #: (name, type name) of every query, for assertions and debugging
        self.queries: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="dnsstub", daemon=True)

    def start(self) -> "DNSStub":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                reply = self.answer(data)
            except Exception:  # noqa: BLE001 - a malformed query gets no answer
                continue
            self.sock.sendto(reply, peer)

    def answer(self, data: bytes) -> bytes:
        """The reply to one query message."""
        query = dns.Message()
        query.fromStr(data)
        reply = dns.Message(id=query.id, answer=1, opCode=query.opCode, recDes=query.recDes,
                            recAv=1, auth=1)
        reply.queries = query.queries
        found = False
        for q in query.queries:
            name = q.name.name.decode("ascii", "replace").lower().rstrip(".")
            self.queries.append((name, dns.QUERY_TYPES.get(q.type, str(q.type))))
            if q.type == dns.SRV and name in self.srv:
                found = True
                for prio, weight, port, target in self.srv[name]:
                    reply.answers.append(dns.RRHeader(
                        name, dns.SRV, ttl=60,
                        payload=dns.Record_SRV(prio, weight, port, target, ttl=60)))
            elif q.type == dns.A and name in self.a:
                found = True
                reply.answers.append(dns.RRHeader(name, dns.A, ttl=60,
                                                  payload=dns.Record_A(self.a[name], ttl=60)))
            elif name in self.srv or name in self.a:
                found = True  # the name exists, without records of this type
        if not found:
            reply.rCode = dns.ENAME
        return reply.toStr()
