"""Exceptions raised by the chatbx stores.

Stores translate database conditions into these so callers (features, the
CLI) never need to know SQLAlchemy's exception types.
"""

from __future__ import annotations

__all__ = ["StorageError", "UnknownUser", "UserExists"]


class StorageError(Exception):
    """Base class for storage-layer failures callers may want to handle."""


class UserExists(StorageError):
    """The account already exists; ``jid`` names it."""

    def __init__(self, jid: str) -> None:
        super().__init__(f"user already exists: {jid}")
        self.jid = jid


class UnknownUser(StorageError):
    """No local account with this JID; ``jid`` names it."""

    def __init__(self, jid: str) -> None:
        super().__init__(f"unknown user: {jid}")
        self.jid = jid
