"""Block lists (XEP-0191) and the spam reports sent with a block (XEP-0377).

A block list is a set of prepared JID strings per local account. Changes
are whole operations (block these, unblock these, unblock all) done in one
transaction with the account row locked, so two nodes changing the same
list cannot both pass the size check; each returns the list as it is after
the change, which is what the feature caches.

Reports are kept apart from the account (``reporter`` is a JID string, not a
foreign key): they are evidence for operators and outlive the reporter's
account.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from twisted.internet.defer import Deferred

from chatbx_server.storage.database import Database
from chatbx_server.storage.errors import UnknownUser
from chatbx_server.storage.schema import blocklist_items, spam_reports
from chatbx_server.storage.users import now_function, user_id_txn

__all__ = ["BlockingStore", "SpamReport", "UnknownUser"]

# Keep IN (...) lists well below backend parameter limits.
_CHUNK = 500


@dataclass(frozen=True)
class SpamReport:
    """One XEP-0377 report attached to a block."""

    reporter: str
    jid: str
    reason: str
    text: Optional[str] = None
    #: (by, id) of the XEP-0359 stanza-ids the reporter pointed at
    stanza_ids: tuple[tuple[str, str], ...] = ()
    created_at: float = 0.0
    id: int = 0


def _items_txn(conn: Connection, user_id: int) -> list[str]:
    rows = conn.execute(
        sa.select(blocklist_items.c.jid).where(blocklist_items.c.user_id == user_id)
    )
    return sorted(r.jid for r in rows)


def load_txn(conn: Connection, user: str) -> list[str]:
    """The user's blocked JIDs, sorted."""
    return _items_txn(conn, user_id_txn(conn, user))


def block_txn(conn: Connection, user: str, jids: list[str], reports: list[SpamReport],
              limit: int, report_limit: int, now: float) -> Optional[list[str]]:
    """Add ``jids`` and store ``reports``; None (nothing written) past ``limit``.

    Reports past ``report_limit`` stored for this reporter are dropped.
    """
    user_id = user_id_txn(conn, user, for_update=True)
    held = set(_items_txn(conn, user_id))
    new = [j for j in dict.fromkeys(jids) if j not in held]
    if len(held) + len(new) > limit:
        return None
    if new:
        conn.execute(sa.insert(blocklist_items),
                     [{"user_id": user_id, "jid": j, "created_at": now} for j in new])
    if reports:
        stored = conn.execute(sa.select(sa.func.count()).select_from(spam_reports)
                              .where(spam_reports.c.reporter == user)).scalar_one()
        reports = reports[:max(0, report_limit - stored)]
    if reports:
        conn.execute(sa.insert(spam_reports), [
            {"reporter": r.reporter, "jid": r.jid, "reason": r.reason, "text": r.text,
             "stanza_ids": json.dumps([list(s) for s in r.stanza_ids]), "created_at": now}
            for r in reports])
    return sorted(held.union(new))


def unblock_txn(conn: Connection, user: str, jids: Optional[list[str]]) -> list[str]:
    """Remove ``jids`` (all of them when None); returns what is left."""
    user_id = user_id_txn(conn, user, for_update=True)
    if jids is None:
        conn.execute(sa.delete(blocklist_items).where(blocklist_items.c.user_id == user_id))
        return []
    jids = list(dict.fromkeys(jids))
    for start in range(0, len(jids), _CHUNK):
        conn.execute(sa.delete(blocklist_items).where(
            blocklist_items.c.user_id == user_id,
            blocklist_items.c.jid.in_(jids[start:start + _CHUNK])))
    return _items_txn(conn, user_id)


def list_reports_txn(conn: Connection, limit: int, reporter: Optional[str]) -> list[SpamReport]:
    """The newest ``limit`` reports, newest first."""
    query = sa.select(spam_reports).order_by(spam_reports.c.created_at.desc(),
                                             spam_reports.c.id.desc()).limit(limit)
    if reporter is not None:
        query = query.where(spam_reports.c.reporter == reporter)
    out = []
    for r in conn.execute(query):
        ids = tuple((str(by), str(sid)) for by, sid in json.loads(r.stanza_ids))
        out.append(SpamReport(r.reporter, r.jid, r.reason, r.text, ids, float(r.created_at),
                              int(r.id)))
    return out


class BlockingStore:
    """Block lists and spam reports. Block list methods fail with
    UnknownUser for a JID without a local account.

    Args:
        db: the Database.
        clock: an ``IReactorTime`` for stored times (``time.time`` if None).
    """

    def __init__(self, db: Database, clock: Any = None) -> None:
        self.db = db
        self._now = now_function(clock)

    def load(self, user: str) -> Deferred[list[str]]:
        """The user's blocked JIDs, sorted."""
        return self.db.run("blocking.load", load_txn, user)

    def block(self, user: str, jids: Iterable[str], reports: Iterable[SpamReport] = (),
              limit: int = 1000, report_limit: int = 100) -> Deferred[Optional[list[str]]]:
        """Block ``jids`` (already blocked ones are kept) and store ``reports``.

        Args:
            limit: most JIDs the list may hold.
            report_limit: most reports kept from this reporter; further ones
                are dropped (the block still applies).

        Returns:
            the whole list after the change, or None when it would hold more
            than ``limit`` JIDs (then nothing is written, reports included).
        """
        return self.db.run("blocking.block", block_txn, user, list(jids), list(reports), limit,
                           report_limit, self._now())

    def unblock(self, user: str, jids: Optional[Iterable[str]]) -> Deferred[list[str]]:
        """Unblock ``jids``, or everything when None; fires with what is left."""
        return self.db.run("blocking.unblock", unblock_txn, user,
                           None if jids is None else list(jids))

    def list_reports(self, limit: int = 100, reporter: Optional[str] = None) -> Deferred[list[SpamReport]]:
        """The newest reports first, at most ``limit``, optionally of one reporter."""
        return self.db.run("blocking.list_reports", list_reports_txn, limit, reporter)
