"""Account life cycle for every way in: in-band registration (XEP-0077), the
web sign-up page, invites (XEP-0401), admin commands (XEP-0133), chatbxctl.

One object, ``server.accounts``, applies the rules the same way whichever
door is used: the registration mode, PRECIS-prepared usernames checked
against the reserved names and a minimum length, a minimum password length,
a limit of new accounts per address and hour, and one log line per
creation. Removal notifies the contacts (unsubscribe / unsubscribed, and
unavailable as the sessions close), closes the sessions, deletes all data
in one transaction (storage/accounts.py), leaves a tombstone and fires
``user/deleted`` (with the bare JID) for features that keep data elsewhere.

A loop on the injected clock closes the sessions of accounts disabled or
deleted by another process (chatbxctl, another node), carries out removals
whose grace period is over and purges old tombstones.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.words.xish import domish

from chatbx_server.config import prepare_localpart
from chatbx_server.features.subscription import has_from, has_to
from chatbx_server.logs import log_observer
from chatbx_server.storage.accounts import DeletedAccount, InviteInvalid, NameReserved, Registered
from chatbx_server.storage.errors import UnknownUser, UserExists
from chatbx_server.storage.users import derive_credentials
from chatbx_server.xmpp import ns

if TYPE_CHECKING:
    from chatbx_server.server import Server

log = Logger(observer=log_observer)

#: seconds between checks for accounts changed elsewhere
POLL_INTERVAL = 30.0
#: addresses the registration throttle remembers
MAX_THROTTLE_ENTRIES = 100_000


class RegistrationError(Exception):
    """A refused registration or password: an XMPP error condition and a text
    safe to show (never says whether another account exists, except for the
    name the person is trying to take, which they must learn is taken)."""

    def __init__(self, condition: str, text: str) -> None:
        super().__init__(text)
        self.condition = condition
        self.text = text


def address_key(address: Optional[str]) -> str:
    """The throttle key of an address: itself, or its /64 for IPv6."""
    if not address:
        return ""
    if ":" in address:
        try:
            return str(ipaddress.IPv6Network(f"{address.split('%')[0]}/64", strict=False))
        except ValueError:
            return address
    return address


class RegistrationThrottle:
    """At most ``limit`` registrations per address in ``window`` seconds.

    Sliding window of creation times per address (IPv6: per /64), bounded
    in the number of addresses (the least recently seen are forgotten).
    """

    def __init__(self, clock: Any, limit: int, window: float,
                 max_entries: int = MAX_THROTTLE_ENTRIES) -> None:
        self.clock = clock
        self.limit = limit
        self.window = window
        self.max_entries = max_entries
        self._times: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str) -> deque[float]:
        times = self._times.get(key)
        if times is None:
            return deque()
        cutoff = self.clock.seconds() - self.window
        while times and times[0] <= cutoff:
            times.popleft()
        return times

    def allowed(self, address: Optional[str]) -> bool:
        return len(self._recent(address_key(address))) < self.limit

    def record(self, address: Optional[str]) -> None:
        key = address_key(address)
        times = self._recent(key)
        times.append(self.clock.seconds())
        self._times[key] = times
        self._times.move_to_end(key)
        while len(self._times) > self.max_entries:
            self._times.popitem(last=False)


class Accounts:
    """The account rules and life cycle of one server (``server.accounts``)."""

    def __init__(self, server: "Server") -> None:
        self.server = server
        self.config = server.config.registration
        self.stores = server.stores
        self.throttle = RegistrationThrottle(server.clock, self.config.max_per_ip,
                                             self.config.ip_window)
        self._loop: Optional[task.LoopingCall] = None
        self._since = 0.0

    # -- life cycle of the service ---------------------------------------------
    def start(self) -> None:
        self._since = self.server.clock.seconds()
        loop = self._loop = task.LoopingCall(self.poll)
        loop.clock = self.server.clock
        loop.start(POLL_INTERVAL, now=False).addErrback(
            lambda f: log.failure("accounts: maintenance loop stopped", f))

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    @defer.inlineCallbacks
    def poll(self) -> Any:
        """Close sessions of accounts changed elsewhere; run due removals."""
        since, self._since = self._since, self.server.clock.seconds()
        try:
            disabled, deleted = yield self.stores.accounts.changes_since(since - 1.0)
            for jid in disabled:
                self.close_sessions(jid, "not-authorized", "account disabled")
            for jid in deleted:
                self.close_sessions(jid, "not-authorized", "account deleted")
            for jid in (yield self.stores.accounts.due_deletions()):
                yield self.delete(jid, reason="grace period over")
            yield self.stores.accounts.purge_tombstones()
        except Exception:
            log.failure("accounts: maintenance failed")

    # -- rules -------------------------------------------------------------------
    def mode(self) -> str:
        return self.config.mode

    def prepare_username(self, username: str, domain: str) -> str:
        """The bare JID ``username@domain`` after the name rules.

        Raises:
            RegistrationError: invalid, too short or reserved.
        """
        if domain not in self.server.hosts:
            raise RegistrationError("not-allowed", "unknown domain")
        try:
            local = prepare_localpart(username.strip())
        except ValueError:
            raise RegistrationError("jid-malformed", "this username is not allowed") from None
        if len(local) < self.config.min_username_length:
            raise RegistrationError(
                "not-acceptable",
                f"the username needs at least {self.config.min_username_length} characters")
        if local in self.config.reserved_names:
            raise RegistrationError("conflict", "this username is reserved")
        return f"{local}@{domain}"

    def check_password(self, password: str) -> None:
        if len(password) < self.config.min_password_length:
            raise RegistrationError(
                "not-acceptable",
                f"the password needs at least {self.config.min_password_length} characters")
        from scramp.utils import saslprep

        try:
            saslprep(password)  # what SCRAM will apply (RFC 5802 §2.2); refuses controls
        except (ValueError, UnicodeError):
            raise RegistrationError("not-acceptable", "the password has forbidden characters") \
                from None

    def needs(self, token: Optional[str], captcha_ok: bool) -> None:
        """Refuse what the mode does not allow (token and CAPTCHA already checked)."""
        mode = self.config.mode
        if token is not None:
            return  # an invite is accepted in every mode (closed included)
        if mode == "open" or (mode == "captcha" and captcha_ok):
            return
        if mode == "captcha":
            raise RegistrationError("not-acceptable", "solve the CAPTCHA")
        raise RegistrationError("not-allowed", "registration needs an invite")

    # -- registration --------------------------------------------------------------
    @defer.inlineCallbacks
    def register(self, username: str, domain: str, password: str, address: Optional[str], *,
                 token: Optional[str] = None, captcha_ok: bool = False,
                 via: str = "ibr") -> Any:
        """Create an account after every rule; fires with :class:`Registered`.

        Raises (in the Deferred):
            RegistrationError: refused (condition and text for the client).
        """
        self.needs(token, captcha_ok)
        jid = self.prepare_username(username, domain)
        self.check_password(password)
        if not self.throttle.allowed(address):
            log.warn("registration refused for {address}: too many accounts from there",
                     address=address)
            raise RegistrationError("resource-constraint",
                                    "too many new accounts from your address; try later")
        if token is not None:
            invite = yield self.stores.invites.get(token)
            if invite is not None and invite.kind == "contact" and (
                    self.config.mode == "closed" or not self.config.user_invites_register):
                raise RegistrationError("not-allowed", "this invite cannot create an account")
        try:
            yield self.stores.accounts.check_registration(jid, token)
            creds = yield self.stores.users.hasher.run(
                derive_credentials, password, self.stores.users.iterations)
            registered: Registered = yield self.stores.accounts.register(jid, creds, token)
        except (UserExists, NameReserved):
            raise RegistrationError("conflict", "this username is taken") from None
        except InviteInvalid:
            raise RegistrationError("not-allowed", "the invite is invalid or was used") from None
        except ValueError:
            raise RegistrationError("not-acceptable", "the password has forbidden characters") \
                from None
        self.throttle.record(address)
        log.info("account created: {jid} via {via} from {address}{invite}", jid=jid, via=via,
                 address=address or "-",
                 invite=f" invited by {registered.inviter}" if registered.inviter
                 else (" with an invite" if token else ""))
        if registered.inviter is not None:
            self._roster_changed(registered.inviter, jid)
        self.server.events.fire_all("user/created", jid)
        return registered

    def _roster_changed(self, owner: str, contact: str, removed: bool = False) -> None:
        """The store changed ``owner``'s roster: refresh the cache and push."""
        roster: Any = self.server.modules.get("roster")
        if roster is None:
            return
        roster._stale(owner)
        from chatbx_server.storage.roster import RosterItem

        def push(state: Any) -> None:
            item = state.items.get(contact)
            if removed or item is None:
                roster.push(owner, RosterItem(contact), state.version, remove=True)
            else:
                roster.push(owner, item, state.version)

        roster.load(owner).addCallbacks(push, lambda f: log.failure("roster push failed", f))

    # -- self-service -----------------------------------------------------------
    @defer.inlineCallbacks
    def change_password(self, jid: str, password: str, keep: Any = None) -> Any:
        """New credentials; the other sessions close when configured (``keep``
        is the session that asked, left open)."""
        self.check_password(password)
        try:
            yield self.stores.users.set_password(jid, password)
        except ValueError:
            raise RegistrationError("not-acceptable", "the password has forbidden characters") \
                from None
        log.info("password changed for {jid}", jid=jid)
        if self.config.password_change_closes_sessions:
            self.close_sessions(jid, "reset", "password changed", keep=keep)

    def close_sessions(self, jid: str, condition: str, text: str, keep: Any = None) -> int:
        """Close every session of ``jid`` (but ``keep``); how many were closed."""
        count = 0
        for session in list(self.server.sessions.resources(jid).values()):
            if session is not keep:
                session.close(condition, text)
                count += 1
        return count

    @defer.inlineCallbacks
    def request_removal(self, jid: str) -> Any:
        """The user asked to go: now, or after the grace period (logging in cancels)."""
        grace = self.config.deletion_grace
        if grace <= 0:
            yield self.delete(jid, reason="requested by the user")
            return
        yield self.stores.accounts.schedule_deletion(jid, self.server.clock.seconds() + grace)
        log.info("removal of {jid} scheduled in {seconds} s", jid=jid, seconds=grace)
        # Logged out now; logging in again before the time cancels (login_txn).
        self.close_sessions(jid, "not-authorized", "account removal requested")

    @defer.inlineCallbacks
    def set_disabled(self, jid: str, disabled: bool) -> Any:
        """Disable (sessions closed, logins refused) or enable. Fails with UnknownUser."""
        yield self.stores.accounts.set_disabled(jid, disabled)
        log.info("account {jid} {what}", jid=jid, what="disabled" if disabled else "enabled")
        if disabled:
            self.close_sessions(jid, "not-authorized", "account disabled")

    @defer.inlineCallbacks
    def delete(self, jid: str, reason: str = "") -> Any:
        """Remove the account and all its data; fires with DeletedAccount or None.

        Contacts hear unavailable (the sessions close first) and then
        unsubscribe / unsubscribed (RFC 6121 §3.2, §3.3, as a roster remove
        does, §2.5.2); local contacts' handling is awaited so their rosters
        are settled before the rows go.
        """
        try:
            _version, items, requests = yield self.stores.roster.load(jid)
        except UnknownUser:
            return None
        self.close_sessions(jid, "not-authorized", "account deleted")
        pending_in = {contact for contact, _ in requests}
        waits = []
        for item in items:
            out = []
            if has_to(item.subscription) or item.ask:
                out.append("unsubscribe")
            if has_from(item.subscription) or item.jid in pending_in:
                out.append("unsubscribed")
            for ptype in out:
                pres = domish.Element((ns.CLIENT, "presence"))
                pres["from"] = jid
                pres["to"] = item.jid
                pres["type"] = ptype
                try:
                    result = self.server.router.route(pres)
                except Exception:
                    log.failure("accounts: notifying {contact} failed", contact=item.jid)
                    continue
                if isinstance(result, defer.Deferred) and item.jid.split("@")[-1] in \
                        self.server.hosts:
                    waits.append(result)
        if waits:
            yield defer.DeferredList(waits, consumeErrors=True)
        deleted: Optional[DeletedAccount] = yield self.stores.accounts.delete(
            jid, self.config.tombstone_period)
        if deleted is None:
            return None
        log.info("account deleted: {jid} ({reason})", jid=jid, reason=reason or "-")
        for contact in deleted.local_contacts:
            self._roster_changed(contact, jid, removed=True)
        if deleted.upload_slots:
            remove_upload_files(self.server.config, deleted.upload_slots,
                                self.server.modules.get("upload"))
        self.server.events.fire_all("user/deleted", jid)
        return deleted

    # -- admins -------------------------------------------------------------------
    def is_admin_now(self, jid: str) -> bool:
        """An admin by configuration (``admins``), of the JID's own domain."""
        return jid in self.server.config.admins

    @defer.inlineCallbacks
    def is_admin(self, jid: str) -> Any:
        """Configured admin, or made one by an admin invite."""
        if self.is_admin_now(jid):
            return True
        return (yield self.stores.accounts.is_admin(jid))


def remove_upload_files(config: Any, slots: tuple[str, ...], feature: Any = None) -> int:
    """Unlink the uploaded files of a deleted account (their rows are gone)."""
    files = getattr(feature, "files", None)
    if files is None:
        import os

        from chatbx_server.features import build_module_options
        from chatbx_server.features.upload import UploadFeature
        from chatbx_server.storage.upload import UploadFiles

        options = build_module_options(UploadFeature, config)
        files = UploadFiles(os.path.abspath(
            options.store_dir or os.path.join(config.data_dir, "uploads")))
    try:
        return int(files.remove(slots))
    except OSError:
        log.failure("accounts: removing upload files failed")
        return 0
