"""chatbx storage: SQLAlchemy Core on a Twisted thread pool, one store per concern.

``Stores(db)`` composes the stores the server uses (``server.stores.roster``
and so on); each store's public methods return Deferreds and run their work
in ``_txn`` functions on the database thread (see ``database.py``).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from chatbx_server.storage.accounts import AccountStore
from chatbx_server.storage.archive import ArchiveStore
from chatbx_server.storage.blocking import BlockingStore
from chatbx_server.storage.database import Database, default_sqlite_url
from chatbx_server.storage.errors import StorageError, UnknownUser, UserExists
from chatbx_server.storage.fast import FastStore
from chatbx_server.storage.invites import InviteStore
from chatbx_server.storage.muc import MucStore
from chatbx_server.storage.offline import OfflineStore
from chatbx_server.storage.private import PrivateStore
from chatbx_server.storage.pubsub import CapsStore, PubSubStore
from chatbx_server.storage.push import PushStore
from chatbx_server.storage.roster import RosterItem, RosterStore
from chatbx_server.storage.upload import UploadStore
from chatbx_server.storage.users import ScramCredentials, UserStore
from chatbx_server.storage.vcard import VCardStore

__all__ = [
    "AccountStore",
    "InviteStore",
    "ArchiveStore",
    "BlockingStore",
    "Database",
    "FastStore",
    "MucStore",
    "CapsStore",
    "OfflineStore",
    "PrivateStore",
    "PubSubStore",
    "VCardStore",
    "PushStore",
    "RosterItem",
    "RosterStore",
    "ScramCredentials",
    "StorageError",
    "Stores",
    "UnknownUser",
    "UploadStore",
    "UserExists",
    "UserStore",
    "default_sqlite_url",
]


class Stores:
    """Every store, built on one Database.

    Args:
        db: the Database.
        clock: an ``IReactorTime`` for stored timestamps (wall clock if None).
    """

    def __init__(self, db: Database, clock: Any = None) -> None:
        self.db = db
        self.users = UserStore(db, clock)
        self.roster = RosterStore(db, clock)
        self.offline = OfflineStore(db, clock)
        self.upload = UploadStore(db, clock)
        self.muc = MucStore(db, clock)
        self.fast = FastStore(db, clock)
        self.push = PushStore(db, clock)
        self.archive = ArchiveStore(db, clock)
        self.pubsub = PubSubStore(db, clock)
        self.caps = CapsStore(db, clock)
        self.vcard = VCardStore(db, clock)
        self.private = PrivateStore(db, clock)
        self.blocking = BlockingStore(db, clock)
        self.accounts = AccountStore(db, clock)
        self.invites = InviteStore(db, clock)

    def close(self) -> defer.Deferred[None]:
        """Write every batched row still queued (the server waits for this
        before it stops the database); later writes fail."""
        d = defer.DeferredList([self.archive.close(), self.muc.flushed(), self.upload.close()],
                               consumeErrors=True)
        return d.addCallback(lambda _: None)
