#!/usr/bin/env python3
"""Archive query speed: a 1,000,000-message archive, then p50/p99 of page queries.

Builds the archive in bulk (not through XMPP): 100 accounts, each talking
with 20 others, messages spread over 300 days, written with multi-row
INSERTs on SQLite and COPY on PostgreSQL (indexes built after the load, as
a restore would), then times the queries a client makes, through the same
``query_txn`` the server runs (``storage/archive.py``), count included as
the server's default (``include_count``):

- ``with``: the 50 messages of one conversation before a known message
  (``with`` + RSM ``<before>UID</before>``: scrolling back in a chat);
- ``time range``: the first 50 messages of an account in a three-day window
  (``start``/``end``);
- ``before-id``: the 50 messages of an account just before a known message
  (``before-id`` + an empty RSM ``<before/>``: catching up backwards);
- ``fulltext`` (informative, not part of the goal): a word, last page.

    bench/mam_queries.py                                  # SQLite and PostgreSQL, 1M messages
    bench/mam_queries.py --messages 20000 --backends sqlite --queries 50
    bench/mam_queries.py --postgresql postgresql://postgres@127.0.0.1:5432/somedb   # an empty database

PostgreSQL: without ``--postgresql`` a throwaway database is created on the
server of ``CHATBX_TEST_DATABASE_URL`` (default postgresql://postgres@127.0.0.1:5432/test)
and dropped at the end. Prints one line per figure; ``--json`` writes them too.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any, Callable, Iterator, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import sqlalchemy as sa  # noqa: E402

from chatbx_server.storage import migrate  # noqa: E402
from chatbx_server.storage.archive import (SEQ_BITS, ArchiveQuery, encode_uid, index_txn,  # noqa: E402
                                           query_txn, time_to_id, with_hash)
from chatbx_server.storage.database import Database, normalise_url  # noqa: E402

DOMAIN = "bench.example"
COLUMNS = ("id", "user_id", "nonce", "with_hash", "with_jid", "with_resource", "body", "stanza")
INDEXES = {
    "ix_archive_messages_user_id_id": "CREATE INDEX ix_archive_messages_user_id_id "
                                      "ON archive_messages (user_id, id)",
    "ix_archive_messages_user_id_with_hash_id": "CREATE INDEX ix_archive_messages_user_id_with_hash_id "
                                                "ON archive_messages (user_id, with_hash, id)",
}
PG_FULLTEXT = ("CREATE INDEX ix_archive_messages_fulltext ON archive_messages "
               "USING gin (to_tsvector('simple'::regconfig, body))")
DAY = 86400.0


def words(rng: random.Random, count: int) -> list[str]:
    """A made-up vocabulary (syllables), so full-text search has real work."""
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "zo", "pe", "da", "fu", "gi", "ho"]
    out: set[str] = set()
    while len(out) < count:
        out.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    return sorted(out)


class Generator:
    """Deterministic messages: who, with whom, when, what."""

    def __init__(self, messages: int, accounts: int, contacts: int, seed: int = 7) -> None:
        self.messages, self.accounts = messages, accounts
        self.rng = random.Random(seed)
        self.vocabulary = words(self.rng, 3000)
        self.names = [f"user{n}" for n in range(accounts)]
        self.contacts = {n: self.rng.sample([m for m in range(accounts) if m != n],
                                            min(contacts, accounts - 1)) for n in range(accounts)}
        self.end = time.time() - DAY
        self.start = self.end - 300 * DAY
        #: (owner index, with index, id, nonce) of a random sample, for the queries
        self.sample: list[tuple[int, int, int, int]] = []

    def rows(self, user_ids: list[int]) -> Iterator[tuple[Any, ...]]:
        rng, vocab = self.rng, self.vocabulary
        step = (self.end - self.start) / self.messages
        keep = max(1, self.messages // 5000)
        for i in range(self.messages):
            owner = i % self.accounts
            other = rng.choice(self.contacts[owner])
            archive_id = (time_to_id(self.start + i * step) | (i & ((1 << SEQ_BITS) - 1)))
            nonce = rng.getrandbits(32) - (1 << 31)
            with_jid = f"{self.names[other]}@{DOMAIN}"
            body = " ".join(rng.choices(vocab, k=rng.randint(3, 12)))
            outgoing = rng.random() < 0.5
            sender, to = ((f"{self.names[owner]}@{DOMAIN}/phone", with_jid) if outgoing
                          else (f"{with_jid}/laptop", f"{self.names[owner]}@{DOMAIN}"))
            stanza = (f"<message xmlns='jabber:client' to='{to}' from='{sender}' type='chat' "
                      f"id='{i:x}'><body>{body}</body><origin-id xmlns='urn:xmpp:sid:0' "
                      f"id='{i:08x}-origin'/></message>")
            if i % keep == 0:
                self.sample.append((owner, other, archive_id, nonce))
            yield (archive_id, user_ids[owner], nonce, with_hash(with_jid), with_jid,
                   "laptop" if not outgoing else None, body, stanza)


def load(db: Database, gen: Generator, fulltext: bool) -> dict[str, float]:
    """Users, then the archive in bulk, then its indexes; returns seconds per step."""
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    with db.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO users (username, domain, created_at) VALUES (:u, :d, 0)"),
                     [{"u": name, "d": DOMAIN} for name in gen.names])
        ids = {r.username: r.id for r in conn.execute(sa.text("SELECT id, username FROM users"))}
        user_ids = [ids[name] for name in gen.names]
        for name in INDEXES:
            conn.execute(sa.text(f"DROP INDEX {name}"))
        if db.dialect == "postgresql":
            conn.execute(sa.text("DROP INDEX ix_archive_messages_fulltext"))
    rows = gen.rows(user_ids)
    raw = db.engine.raw_connection()
    try:
        cur = raw.cursor()
        if db.dialect == "sqlite":
            per = 100
            single = "(" + ", ".join("?" * len(COLUMNS)) + ")"
            statement = f"INSERT INTO archive_messages ({', '.join(COLUMNS)}) VALUES " + \
                ", ".join([single] * per)
            cur.execute("BEGIN")
            chunk: list[Any] = []
            for n, row in enumerate(rows, 1):
                chunk.extend(row)
                if n % per == 0:
                    cur.execute(statement, chunk)
                    chunk = []
            if chunk:
                left = len(chunk) // len(COLUMNS)
                cur.execute(f"INSERT INTO archive_messages ({', '.join(COLUMNS)}) VALUES "
                            + ", ".join([single] * left), chunk)
            cur.execute("COMMIT")
        else:
            buf = io.StringIO()
            for n, row in enumerate(rows, 1):
                buf.write("\t".join("\\N" if v is None else str(v) for v in row))
                buf.write("\n")
                if n % 100_000 == 0:
                    buf.seek(0)
                    cur.copy_expert(f"COPY archive_messages ({', '.join(COLUMNS)}) FROM STDIN", buf)
                    buf = io.StringIO()
            buf.seek(0)
            cur.copy_expert(f"COPY archive_messages ({', '.join(COLUMNS)}) FROM STDIN", buf)
            raw.commit()
        cur.close()
    finally:
        raw.close()
    times["insert"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with db.engine.begin() as conn:
        for ddl in INDEXES.values():
            conn.execute(sa.text(ddl))
        if db.dialect == "postgresql" and fulltext:
            conn.execute(sa.text(PG_FULLTEXT))
    times["indexes"] = time.perf_counter() - t0
    if db.dialect == "sqlite" and fulltext:
        t0 = time.perf_counter()
        while _run(db, index_txn, 50_000):
            pass
        times["fts5 index"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if db.dialect == "postgresql":
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE archive_messages"))
    else:
        with db.engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))
    times["analyze"] = time.perf_counter() - t0
    return times


def _run(db: Database, fn: Callable[..., Any], *args: Any) -> Any:
    out: list[Any] = []
    db.run("bench", fn, *args).addBoth(out.append)
    result = out[0]
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def queries(db: Database, gen: Generator, count: int, rng: random.Random) -> dict[str, dict[str, Any]]:
    """Time each kind of query on random messages of the sample."""
    owners = [f"{name}@{DOMAIN}" for name in gen.names]
    kinds: dict[str, Callable[[tuple[int, int, int, int]], ArchiveQuery]] = {
        "with": lambda s: ArchiveQuery(limit=50, with_jid=owners[s[1]], before=encode_uid(s[2], s[3])),
        "time range": lambda s: ArchiveQuery(
            limit=50, start=(s[2] >> SEQ_BITS) / 1e6 - 3 * DAY, end=(s[2] >> SEQ_BITS) / 1e6),
        "before-id": lambda s: ArchiveQuery(limit=50, before_id=encode_uid(s[2], s[3]), before=""),
        "fulltext": lambda s: ArchiveQuery(limit=50, before="",
                                           fulltext=rng.choice(gen.vocabulary)),
    }
    out: dict[str, dict[str, Any]] = {}
    for kind, make in kinds.items():
        picks = [rng.choice(gen.sample) for _ in range(count)]
        for s in picks[:5]:  # warm the cache a little, as a running server's is
            _run(db, query_txn, owners[s[0]], make(s))
        times: list[float] = []
        sizes: list[int] = []
        for s in picks:
            q = make(s)
            t0 = time.perf_counter()
            page = _run(db, query_txn, owners[s[0]], q)
            times.append((time.perf_counter() - t0) * 1000)
            sizes.append(len(page.messages))
        out[kind] = {"p50_ms": round(percentile(times, 0.5), 2), "p99_ms": round(percentile(times, 0.99), 2),
                     "mean_rows": round(statistics.mean(sizes), 1), "queries": count}
    return out


def postgres_database(url: Optional[str]) -> tuple[str, Callable[[], None]]:
    if url:
        return url, lambda: None
    admin_url = os.environ.get("CHATBX_TEST_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/test"
    admin = sa.create_engine(normalise_url(admin_url), isolation_level="AUTOCOMMIT",
                             poolclass=sa.pool.NullPool)
    name = f"chatbx_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return sa.engine.make_url(normalise_url(admin_url)).set(database=name).render_as_string(
        hide_password=False), drop


def bench(backend: str, url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    migrate.upgrade(url)
    db = Database(url, threadless=True)
    gen = Generator(args.messages, args.accounts, args.contacts)
    t0 = time.perf_counter()
    steps = load(db, gen, not args.no_fulltext)
    built = time.perf_counter() - t0
    print(f"# {backend}: {args.messages} messages, {args.accounts} accounts built in {built:.1f}s "
          f"({', '.join(f'{k} {v:.1f}s' for k, v in steps.items())})", flush=True)
    results = []
    for kind, figures in queries(db, gen, args.queries, random.Random(11)).items():
        if kind == "fulltext" and args.no_fulltext:
            continue
        line = {"backend": backend, "query": kind, "messages": args.messages, **figures}
        print(f"{backend:<10} {kind:<11} p50 {figures['p50_ms']:7.2f} ms   p99 {figures['p99_ms']:7.2f} ms"
              f"   ({figures['queries']} queries, {figures['mean_rows']} rows/page)", flush=True)
        results.append(line)
    db.stop()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--accounts", type=int, default=100)
    ap.add_argument("--contacts", type=int, default=20, help="conversations per account")
    ap.add_argument("--queries", type=int, default=500, help="queries timed per kind")
    ap.add_argument("--backends", nargs="+", choices=("sqlite", "postgresql"), default=["sqlite", "postgresql"])
    ap.add_argument("--postgresql", metavar="URL", help="an empty PostgreSQL database to use")
    ap.add_argument("--no-fulltext", action="store_true", help="skip building the full-text index")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--keep", action="store_true", help="keep the SQLite file / PostgreSQL database")
    args = ap.parse_args()
    results: list[dict[str, Any]] = []
    tmp = tempfile.mkdtemp(prefix="chatbx-mam-bench-")
    try:
        for backend in args.backends:
            if backend == "sqlite":
                results += bench("sqlite", f"sqlite:///{tmp}/archive.sqlite", args)
            else:
                url, drop = postgres_database(args.postgresql)
                try:
                    results += bench("postgresql", url, args)
                finally:
                    if not args.keep:
                        drop()
    finally:
        if args.keep:
            print(f"# kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
