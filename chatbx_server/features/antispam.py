"""Limits for new accounts on a public server ([registration] new_account_*).

For ``new_account_period`` seconds after creation an account may send at
most ``new_account_messages_per_minute`` messages with a body to JIDs that
are not on its roster, and ``new_account_subscriptions_per_minute``
subscription requests; past that, the stanza bounces with
``policy-violation`` (RFC 6120 §8.3.3.12) and is not delivered. Messages
to contacts, group chat messages and messages to hosted services are not
counted. A flood of fresh accounts (the typical spam run) is held to a
trickle while a new person chatting with friends never notices.

Only self-registered accounts (in-band or web sign-up) are limited, not
those an operator or admin created. The account's creation time is read
once per session at bind; until it is known the account counts as new.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Optional

from twisted.logger import Logger

from chatbx_server.events import FILTER, StanzaEvent
from chatbx_server.logs import log_observer
from chatbx_server.modules import Feature

log = Logger(observer=log_observer)

WINDOW = 60.0


class AntispamFeature(Feature):
    name = "antispam"
    spec = "new-account limits (no XEP)"
    soft_depends = ("roster",)

    def setup(self) -> None:
        self.config = self.server.config.registration
        #: bare JID -> creation time (None: being read), while it has sessions
        self._created: dict[str, Optional[float]] = {}
        #: (bare JID, kind) -> send times within the window
        self._sent: dict[tuple[str, str], deque[float]] = {}
        if self.config.new_account_period <= 0:
            return
        self.hook("session/bound", self.on_bound)
        self.hook("session/closed", self.on_closed)
        for kind in ("bare", "full"):
            self.hook(f"pre-message/{kind}", self.on_message, FILTER)
        self.hook("pre-presence/bare", self.on_presence, FILTER)

    def on_bound(self, session: Any) -> None:
        user = session.bare
        if user in self._created:
            return
        self._created[user] = None

        def got(info: Any) -> None:
            if user in self._created:
                # Accounts an operator created are not limited.
                self._created[user] = (info.created_at if info is not None
                                       and info.self_registered else float("-inf"))

        self.server.stores.accounts.info(user).addCallbacks(
            got, lambda f: log.failure("antispam: reading {user} failed", f, user=user))

    def on_closed(self, session: Any) -> None:
        user = session.bare
        if not self.server.sessions.resources(user):
            self._created.pop(user, None)
            self._sent.pop((user, "message"), None)
            self._sent.pop((user, "subscribe"), None)

    def is_new(self, user: str) -> bool:
        created = self._created.get(user)
        if created is None:
            return True
        return self.server.clock.seconds() - created < self.config.new_account_period

    def _over(self, user: str, kind: str, limit: int) -> bool:
        """Count one more; True when it passes ``limit`` per minute."""
        now = self.server.clock.seconds()
        times = self._sent.setdefault((user, kind), deque())
        while times and times[0] <= now - WINDOW:
            times.popleft()
        if len(times) >= limit:
            return True
        times.append(now)
        return False

    def _refuse(self, event: StanzaEvent, what: str) -> bool:
        user = event.origin.bare
        log.info("antispam: {what} of new account {user} refused", what=what, user=user)
        self.server.router.bounce(event.stanza, "policy-violation",
                                  f"new accounts may send only a few {what} per minute")
        return True

    def _stranger(self, user: str, target: str) -> bool:
        if target == user or target.partition("@")[2] == "":
            return False
        roster: Any = self.server.modules.get("roster")
        state = roster.cached(user) if roster is not None else None
        return state is None or target not in state.items

    def on_message(self, event: StanzaEvent) -> Optional[bool]:
        origin = event.origin
        stanza = event.stanza
        if (origin is None or stanza.getAttribute("type") in ("groupchat", "error")
                or event.to.host in self.server.router.services
                or not any(c.name == "body" for c in stanza.elements())):
            return None
        user = origin.bare
        if not self.is_new(user) or not self._stranger(user, event.to.bare):
            return None
        if self._over(user, "message", self.config.new_account_messages_per_minute):
            return self._refuse(event, "messages to strangers")
        return None

    def on_presence(self, event: StanzaEvent) -> Optional[bool]:
        origin = event.origin
        if origin is None or event.stanza.getAttribute("type") != "subscribe":
            return None
        user = origin.bare
        if not self.is_new(user):
            return None
        if self._over(user, "subscribe", self.config.new_account_subscriptions_per_minute):
            return self._refuse(event, "subscription requests")
        return None
