"""Bound client sessions: bare JID -> {resource: session}, O(1) lookups."""

from __future__ import annotations

from typing import Any, Iterator, Optional


class SessionManager:
    """Every bound c2s session of the server's users."""

    def __init__(self) -> None:
        self._by_bare: dict[str, dict[str, Any]] = {}

    def add(self, session: Any) -> Optional[Any]:
        """Register a bound session; return the session it replaces, if any."""
        resources = self._by_bare.setdefault(session.bare, {})
        old = resources.get(session.resource)
        resources[session.resource] = session
        return old if old is not session else None

    def remove(self, session: Any) -> bool:
        """Forget ``session`` unless another one took its resource."""
        bare, resource = session.bare, session.resource
        resources = self._by_bare.get(bare)
        if not resources or resources.get(resource) is not session:
            return False
        del resources[resource]
        if not resources:
            del self._by_bare[bare]
        return True

    def get(self, bare: str, resource: Optional[str]) -> Optional[Any]:
        resources = self._by_bare.get(bare)
        if resources is None or resource is None:
            return None
        return resources.get(resource)

    def resources(self, bare: str) -> dict[str, Any]:
        """The sessions of an account (a live dict: do not mutate)."""
        return self._by_bare.get(bare, {})

    def has_local(self, bare: str) -> bool:
        """Does the account have a session bound in this process? (On a
        cluster ``resources`` also counts other nodes' sessions; per-process
        caches such as the roster's are kept only for local accounts.)"""
        return bool(self._by_bare.get(bare))

    def available(self, bare: str) -> list[Any]:
        """Sessions that have sent initial presence and are available."""
        return [s for s in self._by_bare.get(bare, {}).values() if s.presence is not None]

    def interested(self, bare: str) -> list[Any]:
        """Sessions that asked for the roster (RFC 6121 §2.1.6 "interested")."""
        return [s for s in self._by_bare.get(bare, {}).values() if s.roster_requested]

    def __iter__(self) -> Iterator[Any]:
        for resources in list(self._by_bare.values()):
            yield from list(resources.values())

    def count(self) -> int:
        return sum(len(r) for r in self._by_bare.values())
