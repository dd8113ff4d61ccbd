"""Ad-hoc commands (XEP-0050 1.3) for admins (XEP-0133 1.3) and invites
(XEP-0401 §3).

Commands are stateless: ``execute`` answers with the form (or, for
commands without input, at once with the result); a submitted form
completes. Admin commands are listed (disco#items on the commands node)
and run only for the admins of the server's own domain: ``admins`` in the
configuration, or accounts made admins by an admin invite. Everyone may
create contact invites (``[registration] user_invites``); admins also
account invites.
"""

from __future__ import annotations

import secrets
from typing import Any, Awaitable, Callable, Optional

from twisted.words.xish import domish

from chatbx_server.accounts import RegistrationError
from chatbx_server.events import CHECK, StanzaEvent
from chatbx_server.modules import Feature
from chatbx_server.storage.errors import UnknownUser, UserExists
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.jid import InvalidJID, JID
from chatbx_server.xmpp.stanzas import StanzaError

NS_COMMANDS = "http://jabber.org/protocol/commands"
ADMIN = "http://jabber.org/protocol/admin#"
INVITE = "urn:xmpp:invite#invite"
CREATE_ACCOUNT = "urn:xmpp:invite#create-account"
STATS = "urn:chatbx:admin#server-stats"

Fields = list[tuple[str, str, str]]  # (var, type, label)
Handler = Callable[[str, str, dict[str, list[str]]], Awaitable[domish.Element]]


def data_form(ftype: str, title: str, fields: Fields,
              values: Optional[dict[str, list[str]]] = None,
              form_type: str = ADMIN[:-1]) -> domish.Element:
    form = domish.Element((ns.DATA_FORMS, "x"))
    form["type"] = ftype
    form.addElement("title", content=title)
    hidden = form.addElement("field")
    hidden["var"], hidden["type"] = "FORM_TYPE", "hidden"
    hidden.addElement("value", content=form_type)
    for var, kind, label in fields:
        field = form.addElement("field")
        field["var"], field["type"], field["label"] = var, kind, label
        for value in (values or {}).get(var, ()):
            field.addElement("value", content=value)
    return form


def submitted(command: domish.Element) -> Optional[dict[str, list[str]]]:
    for x in command.elements(ns.DATA_FORMS, "x"):
        if x.getAttribute("type") == "submit":
            return {f.getAttribute("var", ""): [str(v) for v in f.elements(ns.DATA_FORMS, "value")]
                    for f in x.elements(ns.DATA_FORMS, "field")}
    return None


class AdhocFeature(Feature):
    name = "adhoc"
    spec = "XEP-0050 1.3 (Ad-Hoc Commands), XEP-0133 1.3 (Service Administration), XEP-0401"
    disco_features = (NS_COMMANDS,)

    def setup(self) -> None:
        self.accounts = self.server.accounts
        #: node -> (name, admin only, input fields, handler)
        self.commands: dict[str, tuple[str, bool, Fields, Handler]] = {}
        one, many, pw = ("accountjid", "jid-single", "The account"), \
            ("accountjids", "jid-multi", "The accounts"), ("password", "text-private", "Password")
        add = self._add
        add("add-user", "Add a user", [one, pw], self.add_user)
        add("delete-user", "Delete users", [many], self.delete_users)
        add("change-user-password", "Change a user's password", [one, pw], self.change_password)
        add("disable-user", "Disable users", [many], self.disable_users)
        add("reenable-user", "Re-enable users", [many], self.enable_users)
        add("get-user-roster", "Get a user's roster", [one], self.user_roster)
        add("get-user-lastlogin", "Get a user's last login", [one], self.last_login)
        add("get-online-users-list", "List online users", [], self.online_users)
        add("get-online-users", "List online sessions", [], self.online_sessions)
        add("get-registered-users-num", "Number of registered users", [], self.registered_num)
        add("get-online-users-num", "Number of online users", [], self.online_num)
        add("announce", "Send an announcement to online users",
            [("subject", "text-single", "Subject"), ("announcement", "text-multi", "Message")],
            self.announce)
        self.commands[STATS] = ("Server statistics", True, [], self.stats)
        self.commands[CREATE_ACCOUNT] = ("Create an account invite", True,
                                         [("username", "text-single", "Username (optional)")],
                                         self.account_invite)
        if self.server.config.registration.user_invites:
            self.commands[INVITE] = ("Invite a contact", False, [], self.contact_invite)
        self.iq("set", "host", NS_COMMANDS, "command", self.on_command)
        self.hook(f"iq-get/host/{ns.DISCO_ITEMS}:query", self.on_items, CHECK)

    def _add(self, name: str, title: str, fields: Fields, handler: Handler) -> None:
        self.commands[ADMIN + name] = (title, True, fields, handler)

    # -- who may ---------------------------------------------------------------
    async def _allowed(self, event: StanzaEvent, admin_only: bool) -> bool:
        sender = event.sender
        if sender is None or event.origin is None or sender.host != event.to.host:
            return False  # admins of this domain, local sessions only
        if not admin_only:
            return True
        return bool(await self.accounts.is_admin(sender.bare))

    def on_items(self, event: StanzaEvent) -> Any:
        query = event.stanza.firstChildElement()
        if query is None or query.getAttribute("node") != NS_COMMANDS:
            return None  # the disco feature answers
        return self._answer(event, self._items)

    async def _items(self, event: StanzaEvent) -> domish.Element:
        query = domish.Element((ns.DISCO_ITEMS, "query"))
        query["node"] = NS_COMMANDS
        is_admin = await self._allowed(event, True)
        for node, (title, admin_only, _fields, _h) in self.commands.items():
            if admin_only and not is_admin:
                continue
            if not admin_only and not await self._allowed(event, False):
                continue
            item = query.addElement("item")
            item["jid"], item["node"], item["name"] = event.to.host, node, title
        return query

    # -- execution -------------------------------------------------------------
    async def on_command(self, event: StanzaEvent) -> domish.Element:
        command = event.stanza.firstChildElement()
        assert command is not None
        node = command.getAttribute("node", "")
        entry = self.commands.get(node)
        if entry is None:
            raise StanzaError("item-not-found")
        title, admin_only, fields, handler = entry
        if not await self._allowed(event, admin_only):
            raise StanzaError("forbidden")
        answer = domish.Element((NS_COMMANDS, "command"))
        answer["node"] = node
        answer["sessionid"] = command.getAttribute("sessionid") or secrets.token_hex(8)
        action = command.getAttribute("action", "execute")
        if action == "cancel":
            answer["status"] = "canceled"
            return answer
        values = submitted(command)
        if values is None and fields:
            answer["status"] = "executing"
            actions = answer.addElement("actions")
            actions["execute"] = "complete"
            actions.addElement("complete")
            answer.addChild(data_form("form", title, fields))
            return answer
        assert event.sender is not None
        try:
            result = await handler(event.sender.bare, event.to.host, values or {})
        except RegistrationError as exc:
            raise StanzaError(exc.condition, text=exc.text) from None
        answer["status"] = "completed"
        answer.addChild(result)
        return answer

    # -- helpers ----------------------------------------------------------------
    def _jids(self, host: str, values: dict[str, list[str]], var: str) -> list[str]:
        out = []
        for text in values.get(var, []):
            try:
                jid = JID.parse(text.strip())
            except InvalidJID:
                raise StanzaError("jid-malformed", type="modify") from None
            if jid.user is None or jid.resource is not None or jid.host != host:
                raise StanzaError("not-allowed", text=f"not an account of {host}: {text}")
            out.append(jid.bare)
        if not out:
            raise StanzaError("bad-request", type="modify", text=f"{var} is required")
        return out

    def _note(self, text: str, kind: str = "info") -> domish.Element:
        note = domish.Element((NS_COMMANDS, "note"))
        note["type"] = kind
        note.addContent(text)
        return note

    def _result(self, title: str, values: dict[str, list[str]], types: Fields,
                form_type: str = ADMIN[:-1]) -> domish.Element:
        return data_form("result", title, types, values, form_type)

    # -- admin commands (XEP-0133 §4) ------------------------------------------
    async def add_user(self, admin: str, host: str, v: dict[str, list[str]]) -> domish.Element:
        jid = self._jids(host, v, "accountjid")[0]
        password = (v.get("password") or [""])[0]
        self.accounts.check_password(password)
        try:
            await self.server.stores.users.create(jid, password)
        except UserExists:
            raise StanzaError("conflict", text="the account exists") from None
        self.server.events.fire_all("user/created", jid)
        return self._note(f"added {jid} (by {admin})")

    async def delete_users(self, admin: str, host: str, v: dict[str, list[str]]
                           ) -> domish.Element:
        done = []
        for jid in self._jids(host, v, "accountjids"):
            if await self.accounts.delete(jid, reason=f"admin {admin}") is not None:
                done.append(jid)
        return self._note("deleted: " + (", ".join(done) or "nobody"))

    async def change_password(self, admin: str, host: str, v: dict[str, list[str]]
                              ) -> domish.Element:
        jid = self._jids(host, v, "accountjid")[0]
        try:
            await self.accounts.change_password(jid, (v.get("password") or [""])[0])
        except UnknownUser:
            raise StanzaError("item-not-found") from None
        return self._note(f"password of {jid} changed")

    async def _set_disabled(self, host: str, v: dict[str, list[str]], disabled: bool
                            ) -> domish.Element:
        for jid in self._jids(host, v, "accountjids"):
            try:
                await self.accounts.set_disabled(jid, disabled)
            except UnknownUser:
                raise StanzaError("item-not-found", text=jid) from None
        return self._note("disabled" if disabled else "enabled")

    async def disable_users(self, admin: str, host: str, v: dict[str, list[str]]
                            ) -> domish.Element:
        return await self._set_disabled(host, v, True)

    async def enable_users(self, admin: str, host: str, v: dict[str, list[str]]
                           ) -> domish.Element:
        return await self._set_disabled(host, v, False)

    async def user_roster(self, admin: str, host: str, v: dict[str, list[str]]
                          ) -> domish.Element:
        jid = self._jids(host, v, "accountjid")[0]
        try:
            _version, items = await self.server.stores.roster.get_roster(jid)
        except UnknownUser:
            raise StanzaError("item-not-found") from None
        form = self._result("Roster", {"accountjid": [jid]},
                            [("accountjid", "jid-single", "The account")])
        query = form.addElement((ns.ROSTER, "query"))  # XEP-0133 §4.9
        for item in items:
            el = query.addElement("item")
            el["jid"], el["subscription"] = item.jid, item.subscription
            if item.name:
                el["name"] = item.name
        return form

    async def last_login(self, admin: str, host: str, v: dict[str, list[str]]
                         ) -> domish.Element:
        jid = self._jids(host, v, "accountjid")[0]
        info = await self.server.stores.accounts.info(jid)
        if info is None:
            raise StanzaError("item-not-found")
        import datetime

        when = ("never" if info.last_login is None else datetime.datetime.fromtimestamp(
            info.last_login, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        return self._result("Last login", {"accountjid": [jid], "lastlogin": [when]},
                            [("accountjid", "jid-single", "The account"),
                             ("lastlogin", "text-single", "Last login")])

    def _online(self, host: str) -> list[Any]:
        return sorted((s for s in self.server.sessions if s.host == host),
                      key=lambda s: s.jid.full)

    async def online_users(self, admin: str, host: str, v: dict[str, list[str]]
                           ) -> domish.Element:
        users = sorted({s.bare for s in self._online(host)})
        return self._result("Online users", {"onlineuserjids": users},
                            [("onlineuserjids", "jid-multi", "Online users")])

    async def online_sessions(self, admin: str, host: str, v: dict[str, list[str]]
                              ) -> domish.Element:
        sessions = [f"{s.jid.full} ({s.peer})" for s in self._online(host)]
        return self._result("Online sessions", {"onlineusersessions": sessions},
                            [("onlineusersessions", "text-multi", "Sessions")])

    async def registered_num(self, admin: str, host: str, v: dict[str, list[str]]
                             ) -> domish.Element:
        users = await self.server.stores.users.list_users(host)
        return self._result("Registered users", {"registeredusersnum": [str(len(users))]},
                            [("registeredusersnum", "text-single", "Registered users")])

    async def online_num(self, admin: str, host: str, v: dict[str, list[str]]
                         ) -> domish.Element:
        users = {s.bare for s in self._online(host)}
        return self._result("Online users", {"onlineusersnum": [str(len(users))]},
                            [("onlineusersnum", "text-single", "Online users")])

    async def stats(self, admin: str, host: str, v: dict[str, list[str]]) -> domish.Element:
        users = await self.server.stores.users.list_users(host)
        online = self._online(host)
        uptime = int(self.server.clock.seconds() - self.server.started_at)
        values = {"registered": [str(len(users))], "online": [str(len({s.bare for s in online}))],
                  "sessions": [str(len(online))], "uptime": [str(uptime)]}
        return self._result("Server statistics", values, [
            ("registered", "text-single", "Registered users"),
            ("online", "text-single", "Online users"),
            ("sessions", "text-single", "Sessions"),
            ("uptime", "text-single", "Uptime (seconds)")])

    async def announce(self, admin: str, host: str, v: dict[str, list[str]]) -> domish.Element:
        body = "\n".join(v.get("announcement", []))
        if not body:
            raise StanzaError("bad-request", type="modify", text="announcement is required")
        subject = (v.get("subject") or [""])[0]
        sessions = self._online(host)
        for session in sessions:
            msg = domish.Element((ns.CLIENT, "message"))
            msg["from"], msg["to"], msg["type"] = host, session.jid.full, "headline"
            if subject:
                msg.addElement("subject", content=subject)
            msg.addElement("body", content=body)
            session.send(msg)
        return self._note(f"sent to {len(sessions)} sessions")

    # -- invites (XEP-0401 §3) -------------------------------------------------
    def _invite_result(self, invite: Any) -> domish.Element:
        from chatbx_server.http.invites import invite_uri, landing_url

        return self._result("Invite", {
            "uri": [invite_uri(invite)],
            "landing-url": [landing_url(self.server.config, invite.domain, invite.token)],
            "expire": [str(int(invite.expires_at))]}, [
            ("uri", "text-single", "Invite URI"), ("landing-url", "text-single", "Invite link"),
            ("expire", "text-single", "Expires (Unix time)")], form_type="urn:xmpp:invite")

    async def contact_invite(self, user: str, host: str, v: dict[str, list[str]]
                             ) -> domish.Element:
        invite = await self.server.stores.invites.create(
            host, "contact", self.server.config.registration.invite_lifetime, creator=user,
            register=self.server.config.registration.user_invites_register)
        return self._invite_result(invite)

    async def account_invite(self, admin: str, host: str, v: dict[str, list[str]]
                             ) -> domish.Element:
        username = (v.get("username") or [""])[0].strip() or None
        if username is not None:
            username = self.accounts.prepare_username(username, host).split("@", 1)[0]
        invite = await self.server.stores.invites.create(
            host, "account", self.server.config.registration.invite_lifetime,
            username=username)
        return self._invite_result(invite)


