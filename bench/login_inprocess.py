#!/usr/bin/env python3
"""What one login costs chatbx itself, in process: no sockets, no TLS.

The unit-test server (tests/unit/fakes.py: fake clock, threadless in-memory
SQLite, every default module) takes logins over fake transports: stream
header, SCRAM-SHA-256 (or, with ``--fast``, SASL2 + Bind2 with a FAST
HT-SHA-256-NONE token), bind, initial presence, a ping, close. Every
account logs in twice first (caches a first login fills, a token), then
the measured rounds: CPU per login (the whole process, and inside the
stream's entry points only, which is the server's share), the database
transactions per login by name and the SQL statements.

    python3 bench/login_inprocess.py [--users 50] [--rounds 4] [--fast] [--statements]

Run it from a checkout (``cd /tmp/base && python3 /path/to/bench/login_inprocess.py``
measures that checkout's server: it imports chatbx_server from the
current directory first).
"""

from __future__ import annotations

import argparse
import base64
import collections
import functools
import hashlib
import os
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.getcwd())
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--fast", action="store_true", help="SASL2 + Bind2 + FAST token logins")
    ap.add_argument("--statements", action="store_true", help="also list the SQL statements")
    args = ap.parse_args()

    from sqlalchemy import event

    from chatbx_server.c2s import stream as c2s
    from chatbx_server.xmpp import ns
    import tests.unit.test_scram as test_scram
    from tests.unit.fakes import create_user, make_server
    from tests.unit.test_c2s_stream import Client, FakeTLS

    # The client side's PBKDF2 is not the server's cost: computed once per password.
    pbkdf2 = functools.lru_cache(maxsize=None)(hashlib.pbkdf2_hmac)
    test_scram.hashlib = type("H", (), {"pbkdf2_hmac": staticmethod(pbkdf2),
                                        "new": staticmethod(hashlib.new)})
    server_cpu = [0.0]

    def timed(name: str) -> None:
        original = getattr(c2s.C2SStream, name)

        def wrapper(self: Any, *a: Any, **kw: Any) -> Any:
            t = time.process_time()
            try:
                return original(self, *a, **kw)
            finally:
                server_cpu[0] += time.process_time() - t
        setattr(c2s.C2SStream, name, wrapper)

    for name in ("dataReceived", "connectionLost", "makeConnection"):
        timed(name)

    server = make_server(config_text=f'data_dir = "{tempfile.mkdtemp(prefix="chatbx-login-")}"\n')
    for i in range(args.users):
        create_user(server, f"u{i}@localhost", "pencil")
    factory = c2s.C2SFactory(server, FakeTLS(), direct_tls=True)
    factory.channel_bindings = lambda transport: {"tls-exporter": b"\x05" * 32}  # type: ignore[method-assign]
    db = server.stores.users.db
    txns: collections.Counter = collections.Counter()
    run_txn = db._run_txn

    def counting(desc: str, fn: Any, a: Any, kw: Any) -> Any:
        txns[desc] += 1
        return run_txn(desc, fn, a, kw)

    db._run_txn = counting  # type: ignore[method-assign]
    stmts: collections.Counter = collections.Counter()

    @event.listens_for(db.engine, "before_cursor_execute")
    def _count(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        stmts[" ".join(statement.split())[:100]] += 1

    tokens: dict[int, str] = {}

    def sasl2(c: Any, i: int, mechanism: str, initial: bytes, inner: str) -> Any:
        from chatbx_server.c2s.sasl2 import BIND2, NS
        c.send(f"<authenticate xmlns='{NS}' mechanism='{mechanism}'><initial-response>"
               f"{base64.b64encode(initial).decode()}</initial-response><user-agent id='dev{i}'>"
               f"<software>bench</software></user-agent>{inner}<bind xmlns='{BIND2}'><tag>b</tag>"
               f"</bind></authenticate>")
        return [e for e in c.received() if e.name == "success"]

    def login(i: int) -> None:
        c = Client(factory, peer=f"10.1.{i // 250}.{i % 250 + 1}")
        if args.fast:
            from chatbx_server.c2s.fast import NS as FAST, initiator_hash
            c.header()
            c.features()
            if i not in tokens:
                success = sasl2(c, i, "PLAIN", f"\0u{i}\0pencil".encode(),
                                f"<request-token xmlns='{FAST}' mechanism='HT-SHA-256-NONE'/>")
                tokens[i] = [t for t in success[0].elements() if t.name == "token"][0]["token"]
            else:
                proof = f"u{i}".encode() + b"\0" + initiator_hash(tokens[i], b"")
                assert sasl2(c, i, "HT-SHA-256-NONE", proof, f"<fast xmlns='{FAST}'/>")
        else:
            c.login(resource="r", user=f"u{i}")
        c.send("<presence/>")
        c.send(f"<iq type='get' id='p' to='localhost'><ping xmlns='{ns.PING}'/></iq>")
        assert any(e.name == "iq" and e.getAttribute("id") == "p" for e in c.received())
        c.send("</stream:stream>")
        c.lose()
        server.clock.advance(0.01)

    for _ in range(2):
        for i in range(args.users):
            login(i)
    server.clock.advance(100)
    txns.clear()
    stmts.clear()
    server_cpu[0] = 0.0
    t0 = time.process_time()
    for _ in range(args.rounds):
        for i in range(args.users):
            login(i)
        server.clock.advance(100)
    n = max(1, args.users * args.rounds)
    kind = "FAST (SASL2 + Bind2, HT-SHA-256-NONE)" if args.fast else "SCRAM-SHA-256"
    print(f"{n} {kind} logins: {(time.process_time() - t0) / n * 1e6:.0f} us CPU per login in all, "
          f"{server_cpu[0] / n * 1e6:.0f} us in the server's stream entry points")
    print(f"transactions per login: {sum(txns.values()) / n:.2f}")
    for desc, count in txns.most_common():
        print(f"  {count / n:5.2f} {desc}")
    print(f"SQL statements per login: {sum(stmts.values()) / n:.2f}")
    if args.statements:
        for statement, count in stmts.most_common(25):
            print(f"  {count / n:5.2f} {statement}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
