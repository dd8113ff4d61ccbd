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

Rooms: a new account may create at most ``[modules.antispam]
new_account_rooms`` group chats; the MUC service asks before it creates
one (event ``muc/create-room``, a refusal reason or None) and the creator
gets ``policy-violation``.

Spam reports (XEP-0377): every stored report (event ``spam/reported``,
fired by the blocking module) is summarised in a message to the abuse
addresses: ``[modules.antispam] report_to`` if set, else the ``xmpp:``
URIs of ``abuse-addresses`` in ``[modules.contact_info]`` (XEP-0157). The
summary names the reporter, the reported JID, the reason, how many
stanza-ids were pointed at and the reporter's own text if any; it carries
no message bodies (the server never has them for a report). At most
``report_notices_per_hour`` reports are forwarded per hour; the rest are
only stored (``chatbxctl reports list``) and counted in the log.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish

from chatbx_server.events import FILTER, StanzaEvent
from chatbx_server.logs import log_observer
from chatbx_server.modules import Feature
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.jid import parse_or_none

log = Logger(observer=log_observer)

WINDOW = 60.0
REPORT_WINDOW = 3600.0
#: new accounts whose room count is remembered (oldest forgotten first)
MAX_ROOM_COUNTS = 10000
#: stanzas of one account held while its age is read (past it: resource-constraint)
MAX_WAITING = 100
#: longest reporter's text quoted in a notice (characters)
MAX_NOTICE_TEXT = 1000


def abuse_jids(uris: Any) -> tuple[str, ...]:
    """The bare JIDs of the ``xmpp:`` URIs among ``uris`` (RFC 5122 §2:
    ``xmpp:user@host`` with an optional ``?query``); others are skipped."""
    out: list[str] = []
    for uri in uris or ():
        if not isinstance(uri, str) or not uri.startswith("xmpp:"):
            continue
        text = uri[5:].split("?", 1)[0].lstrip("/")
        jid = parse_or_none(text)
        if jid is not None:
            out.append(jid.bare)
    return tuple(dict.fromkeys(out))


class AntispamFeature(Feature):
    name = "antispam"
    spec = "new-account limits (no XEP)"
    soft_depends = ("roster", "contact_info")

    @dataclass(frozen=True)
    class Options:
        #: rooms (XEP-0045) an account may create while it is new
        new_account_rooms: int = 2
        #: bare JIDs that receive spam reports; empty: the xmpp: abuse-addresses
        #: of [modules.contact_info] (XEP-0157)
        report_to: tuple[str, ...] = ()
        #: reports forwarded per hour, all reporters together
        report_notices_per_hour: int = 20

        def __post_init__(self) -> None:
            if self.new_account_rooms < 0:
                raise ValueError("new_account_rooms must not be negative")
            if self.report_notices_per_hour < 0:
                raise ValueError("report_notices_per_hour must not be negative")
            for jid in self.report_to:
                parsed = parse_or_none(jid)
                if parsed is None or parsed.resource is not None:
                    raise ValueError(f"report_to: {jid!r} is not a bare JID")

    def setup(self) -> None:
        self.config = self.server.config.registration
        if self.options is None:
            self.options = self.Options()
        #: bare JID -> creation time (None: being read), while it has sessions
        self._created: dict[str, Optional[float]] = {}
        #: bare JID whose age is being read -> stanzas waiting for it
        self._reading: dict[str, list[defer.Deferred]] = {}
        #: (bare JID, kind) -> send times within the window
        self._sent: dict[tuple[str, str], deque[float]] = {}
        #: new account -> rooms it created (kept past its sessions, bounded)
        self._rooms: OrderedDict[str, int] = OrderedDict()
        #: times of the report notices sent within REPORT_WINDOW
        self._notices: deque[float] = deque()
        self._unsent_reports = 0
        self.hook("spam/reported", self.on_report)
        if self.config.new_account_period <= 0:
            return
        self.hook("muc/create-room", self.on_create_room)
        self.hook("session/bound", self.on_bound)
        self.hook("session/closed", self.on_closed)
        for kind in ("bare", "full"):
            self.hook(f"pre-message/{kind}", self.on_message, FILTER)
        self.hook("pre-presence/bare", self.on_presence, FILTER)

    def on_bound(self, session: Any) -> None:
        user = session.bare
        if user in self._created:
            return
        def got(info: Any) -> None:
            if user in self._created:
                # Accounts an operator created are not limited.
                self._created[user] = (info.created_at if info is not None
                                       and info.self_registered else float("-inf"))

        # The password login read the account already (c2s/stream.py): its
        # creation time and origin never change, so that copy is good.
        known = getattr(session.stream, "account_info", None)
        if known is not None and known.jid == user:
            self._created[user] = None
            got(known)
            return
        self._created[user] = None
        self._reading[user] = []

        def release(_: Any) -> None:
            for waiter in self._reading.pop(user, []):
                waiter.callback(None)

        d = self.server.stores.accounts.info(user)
        d.addCallbacks(got, lambda f: log.failure("antispam: reading {user} failed", f, user=user))
        d.addBoth(release)

    def _after_read(self, user: str, event: StanzaEvent) -> Optional[Any]:
        """While the account's age is being read, its stanzas to strangers
        wait for it (then they are routed again, in order): an unknown age
        would refuse an old account's burst or let a new one's through."""
        waiters = self._reading.get(user)
        if waiters is None:
            return None
        if len(waiters) >= MAX_WAITING:
            self.server.router.bounce(event.stanza, "resource-constraint", "try again shortly")
            return True
        stanza, origin = event.stanza, event.origin
        d: defer.Deferred = defer.Deferred()
        d.addCallback(lambda _: self.server.router.route(stanza, origin))
        waiters.append(d)
        return d

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
        if origin is None:
            return None
        user = origin.bare
        if not self.is_new(user):
            return None  # most senders: one look-up, nothing else per message
        stanza = event.stanza
        if (stanza.getAttribute("type") in ("groupchat", "error")
                or event.to.host in self.server.router.services
                or not any(c.name == "body" for c in stanza.elements())
                or not self._stranger(user, event.to.bare)):
            return None
        waiting = self._after_read(user, event)
        if waiting is not None:
            return waiting
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
        waiting = self._after_read(user, event)
        if waiting is not None:
            return waiting
        if self._over(user, "subscribe", self.config.new_account_subscriptions_per_minute):
            return self._refuse(event, "subscription requests")
        return None

    # -- rooms ------------------------------------------------------------
    def on_create_room(self, event: StanzaEvent) -> Optional[str]:
        """A reason to refuse the room ``event`` would create, or None."""
        sender = event.sender
        if sender is None or sender.host not in self.server.hosts:
            return None
        user = sender.bare
        if user not in self._created or not self.is_new(user):
            return None  # no session (not a local client) or not new
        count = self._rooms.pop(user, 0)
        if count >= self.options.new_account_rooms:
            self._rooms[user] = count
            log.info("antispam: room creation by new account {user} refused", user=user)
            return "new accounts may create only a few rooms"
        self._rooms[user] = count + 1
        while len(self._rooms) > MAX_ROOM_COUNTS:
            self._rooms.popitem(last=False)
        return None

    # -- spam reports -----------------------------------------------------
    def report_addresses(self) -> tuple[str, ...]:
        """Where reports go: report_to, else contact_info's abuse addresses."""
        if self.options.report_to:
            return tuple(self.options.report_to)
        contact: Any = self.server.modules.get("contact_info")
        addresses = getattr(getattr(contact, "options", None), "addresses", None) or {}
        return abuse_jids(addresses.get("abuse-addresses", ()))

    def on_report(self, report: Any) -> None:
        """Forward one stored XEP-0377 report to the abuse addresses."""
        targets = self.report_addresses()
        if not targets:
            return
        now = self.server.clock.seconds()
        while self._notices and self._notices[0] <= now - REPORT_WINDOW:
            self._notices.popleft()
        if len(self._notices) >= self.options.report_notices_per_hour:
            self._unsent_reports += 1
            log.warn("antispam: report by {reporter} not forwarded ({count} over the hourly limit)",
                     reporter=report.reporter, count=self._unsent_reports)
            return
        self._notices.append(now)
        body = self.summary(report)
        sender = report.reporter.rpartition("@")[2] or sorted(self.server.hosts)[0]
        for target in targets:
            message = domish.Element((ns.CLIENT, "message"))
            message["from"] = sender
            message["to"] = target
            message["type"] = "normal"
            message["id"] = secrets.token_hex(8)
            message.addElement("subject", content="Spam report")
            message.addElement("body", content=body)
            self.server.router.route(message)
        log.info("antispam: report by {reporter} on {jid} sent to {count} abuse address(es)",
                 reporter=report.reporter, jid=report.jid, count=len(targets))

    def summary(self, report: Any) -> str:
        """The notice text: who reported whom, why; the reporter's text only."""
        reason = str(report.reason).rpartition(":")[2] or str(report.reason)
        lines = [f"{report.reporter} reported {report.jid} as {reason} ({report.reason}).",
                 "Blocked by the reporter."]
        if report.stanza_ids:
            lines.append(f"The report points at {len(report.stanza_ids)} message(s) by stanza-id.")
        if report.text:
            text = str(report.text)
            if len(text) > MAX_NOTICE_TEXT:
                text = text[:MAX_NOTICE_TEXT] + "..."
            lines.append(f"The reporter wrote: {text}")
        lines.append("All reports: chatbxctl reports list")
        return "\n".join(lines)
