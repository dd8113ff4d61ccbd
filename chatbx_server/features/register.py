"""In-Band Registration (XEP-0077 2.4) with invite tokens (XEP-0445 0.2,
XEP-0401) and CAPTCHAs (XEP-0158 1.0).

Before authentication (the c2s stream hands over ``c2s-preauth/...``
IQs): the registration form and its submission, and ``<preauth/>`` with an
invite token (XEP-0445 §3; the token may also come inside the query). What
the form asks depends on ``[registration] mode`` (chatbx_server/accounts.py
applies the rules): ``open`` username and password; ``captcha`` a data form
with a CAPTCHA image (XEP-0158 §3.3 with XEP-0231 data, and a spoken one
on the HTTP listener); ``invite`` and ``closed`` an invite token first.

After authentication (to the server or the own account): the form with
``<registered/>`` (§3.1), a password change (§3.3; the other sessions are
closed when configured) and removal with ``<remove/>`` (§3.2: the result
first, then the sessions close and all data goes).

Contact invites for existing accounts (XEP-0379 §4): a subscription
request to a local account that carries ``<preauth token=.../>`` of a
valid contact invite that account created is approved by the server on
the account's behalf (``subscribed``) and answered with a ``subscribe``
back, so both end up subscribed; the invite is used up. Without a valid
token the request is handled as any other (the token is not an error).
"""

from __future__ import annotations

import base64
from typing import Any, Optional, cast

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.xish import domish

from chatbx_server.accounts import RegistrationError
from chatbx_server.events import CHECK, DELIVER, StanzaEvent
from chatbx_server.logs import log_observer
from chatbx_server.modules import Feature
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.stanzas import StanzaError, error_reply, result_reply

log = Logger(observer=log_observer)

NS_REGISTER = "jabber:iq:register"
NS_REGISTER_FEATURE = "http://jabber.org/features/iq-register"
#: XEP-0445 §2: the stream feature of token registration
NS_INVITE = "urn:xmpp:invite"
#: XEP-0379 / XEP-0445 ``<preauth token=.../>``
NS_PARS = "urn:xmpp:pars:0"
NS_CAPTCHA = "urn:xmpp:captcha"
NS_BOB = "urn:xmpp:bob"
NS_MEDIA = "urn:xmpp:media-element"


def _field(form: domish.Element, var: str, ftype: Optional[str] = None,
           label: Optional[str] = None, value: Optional[str] = None,
           required: bool = False) -> domish.Element:
    field = form.addElement("field")
    field["var"] = var
    if ftype:
        field["type"] = ftype
    if label:
        field["label"] = label
    if value is not None:
        field.addElement("value", content=value)
    if required:
        field.addElement("required")
    return field


def form_values(query: domish.Element) -> dict[str, str]:
    """Submitted values: the data form's fields (XEP-0004) or the legacy
    children (``<username/>``, ``<password/>``)."""
    values: dict[str, str] = {}
    for child in query.elements():
        if child.uri == ns.DATA_FORMS and child.name == "x":
            for field in child.elements(ns.DATA_FORMS, "field"):
                var = field.getAttribute("var")
                value = next(iter(field.elements(ns.DATA_FORMS, "value")), None)
                if var and value is not None:
                    values[var] = str(value)
        elif child.uri == NS_REGISTER and child.name in ("username", "password"):
            values.setdefault(child.name, str(child))
    return values


def _token_in(query: domish.Element) -> Optional[str]:
    for child in query.elements(NS_PARS, "preauth"):
        return child.getAttribute("token") or None
    return None


class RegisterFeature(Feature):
    name = "register"
    spec = "XEP-0077 2.4 (In-Band Registration), XEP-0445 0.2, XEP-0158 1.0"
    disco_features = (NS_REGISTER,)

    def setup(self) -> None:
        self.accounts = self.server.accounts
        self.hook("c2s-preauth-features", self.on_features)
        self.hook(f"c2s-preauth/{NS_REGISTER}:query", self.on_preauth_register)
        self.hook(f"c2s-preauth/{NS_PARS}:preauth", self.on_preauth_token)
        for target in ("host", "bare"):
            self.iq("get", target, NS_REGISTER, "query", self.on_get)
            self.iq("set", target, NS_REGISTER, "query", self.on_set)
        self.hook("presence/bare", self.on_subscribe_with_token, CHECK)

    # -- before authentication ------------------------------------------------
    def on_features(self, arg: tuple[Any, domish.Element]) -> None:
        _stream, features = arg
        if self.accounts.mode() != "closed":
            features.addElement((NS_REGISTER_FEATURE, "register"))
        features.addElement((NS_INVITE, "register"))

    def on_preauth_token(self, arg: tuple[Any, domish.Element]) -> Any:
        """XEP-0445 §3: remember a valid token for this connection's registration."""
        stream, iq = arg
        element = iq.firstChildElement()
        token = element.getAttribute("token") if element is not None else None
        if iq.getAttribute("type") != "set" or not token:
            stream.send_element(error_reply(iq, "bad-request", include_original=False))
            return True
        d = self.server.stores.invites.get(token)

        def answer(invite: Any) -> None:
            if invite is None or invite.domain != stream.host:
                # XEP-0445 §3: an invalid or expired token.
                stream.send_element(error_reply(iq, "item-not-found",
                                                text="the invite is invalid or expired",
                                                include_original=False))
                return
            stream.preauth_token = token
            stream.send_element(result_reply(iq))

        return d.addCallback(answer).addErrback(self._crashed, stream, iq)

    def on_preauth_register(self, arg: tuple[Any, domish.Element]) -> Any:
        stream, iq = arg
        itype = iq.getAttribute("type")
        query = iq.firstChildElement()
        assert query is not None
        d: defer.Deferred[Any]
        if itype == "get":
            d = defer.ensureDeferred(self._form(stream))
            d.addCallback(lambda form: stream.send_element(self._result(iq, form)))
        elif itype == "set":
            if query.firstChildElement() is not None and any(
                    c.name == "remove" for c in query.elements()):
                stream.send_element(error_reply(iq, "not-authorized", include_original=False))
                return True
            d = defer.ensureDeferred(self._register(stream, query))
            d.addCallback(lambda _: stream.send_element(result_reply(iq)))
        else:
            stream.send_element(error_reply(iq, "bad-request", include_original=False))
            return True
        d.addErrback(self._refused, stream, iq)
        return d.addErrback(self._crashed, stream, iq)

    def _result(self, iq: domish.Element, child: domish.Element) -> domish.Element:
        reply = result_reply(iq)
        reply.addChild(child)
        return reply

    def _refused(self, failure: Failure, stream: Any, iq: domish.Element) -> None:
        failure.trap(RegistrationError, StanzaError)
        exc = failure.value
        if isinstance(exc, RegistrationError):
            exc = StanzaError(exc.condition, text=exc.text)
        stream.send_element(error_reply(iq, cast(StanzaError, exc), include_original=False))

    def _crashed(self, failure: Failure, stream: Any, iq: domish.Element) -> None:
        log.failure("registration failed", failure)
        stream.send_element(error_reply(iq, "internal-server-error", include_original=False))

    async def _form(self, stream: Any) -> domish.Element:
        """The registration form (§3.1) for what the mode asks."""
        query = domish.Element((NS_REGISTER, "query"))
        mode = self.accounts.mode()
        token = stream.preauth_token
        if token is None and mode in ("invite", "closed"):
            query.addElement("instructions", content=(
                "This server creates accounts with an invite only: open your invite link, "
                "or send its token (XEP-0445) first."))
        if token is None and mode == "captcha":
            from chatbx_server.captcha import new_challenge

            challenge, png = await new_challenge(self.server)
            query.addElement("instructions", content=(
                "Choose a username and password, and type the digits you see "
                "(or hear) to show you are a person."))
            form, data = self.captcha_form(stream.host, challenge, png)
            query.addChild(form)
            query.addChild(data)
            return query
        query.addElement("instructions", content="Choose a username and password.")
        query.addElement("username")
        query.addElement("password")
        return query

    def captcha_form(self, host: str, challenge: str,
                     png: bytes) -> tuple[domish.Element, domish.Element]:
        """XEP-0158 §3.3 form and the image as XEP-0231 data (its sibling)."""
        cid = f"sha1+{_sha1(png)}@bob.xmpp.org"
        form = domish.Element((ns.DATA_FORMS, "x"))
        form["type"] = "form"
        _field(form, "FORM_TYPE", "hidden", value=NS_CAPTCHA)
        _field(form, "from", "hidden", value=host)
        _field(form, "challenge", "hidden", value=challenge)
        _field(form, "sid", "hidden", value=challenge)
        _field(form, "username", "text-single", "Username", required=True)
        _field(form, "password", "text-private", "Password", required=True)
        ocr = _field(form, "ocr", "text-single", "Enter the digits you see", required=True)
        media = ocr.addElement((NS_MEDIA, "media"))
        media["width"], media["height"] = "240", "90"
        media.addElement("uri", content=f"cid:{cid}")["type"] = "image/png"
        from chatbx_server.http.server import base_url, http_enabled

        if http_enabled(self.server):
            audio = _field(form, "audio_recog", "text-single", "Or the digits you hear")
            amedia = audio.addElement((NS_MEDIA, "media"))
            url = f"{base_url(self.server, host)}/captcha/{challenge}.wav"
            amedia.addElement("uri", content=url)["type"] = "audio/x-wav"
        data = domish.Element((NS_BOB, "data"))
        data.addContent(base64.b64encode(png).decode())
        data["cid"], data["type"], data["max-age"] = cid, "image/png", "0"
        return form, data

    async def _register(self, stream: Any, query: domish.Element) -> None:
        values = form_values(query)
        username, password = values.get("username", ""), values.get("password", "")
        if not username or not password:
            raise StanzaError("not-acceptable", text="username and password are required")
        token = _token_in(query) or stream.preauth_token
        captcha_ok = False
        challenge = values.get("challenge")
        answer = values.get("ocr") or values.get("audio_recog")
        if token is None and self.accounts.mode() == "captcha":
            if not challenge or not answer:
                raise StanzaError("not-acceptable", text="solve the CAPTCHA")
            captcha_ok = await self.server.stores.invites.check_challenge(challenge, answer)
            if not captcha_ok:
                raise StanzaError("not-acceptable", text="wrong CAPTCHA answer; ask for a new form")
        await self.accounts.register(username, stream.host, password, stream.peer,
                                     token=token, captcha_ok=captcha_ok, via="ibr")

    # -- after authentication --------------------------------------------------
    def _own(self, event: StanzaEvent) -> str:
        """Only the account itself, to its server or its bare JID."""
        sender = event.sender
        if sender is None or event.origin is None:
            raise StanzaError("service-unavailable")
        if event.kind == "bare" and event.to.bare != sender.bare:
            raise StanzaError("service-unavailable")
        if event.kind == "host" and event.to.host != sender.host:
            raise StanzaError("service-unavailable")
        return str(sender.bare)

    def on_get(self, event: StanzaEvent) -> domish.Element:
        user = self._own(event)
        query = domish.Element((NS_REGISTER, "query"))
        query.addElement("registered")  # §3.1: already registered
        query.addElement("username", content=user.split("@", 1)[0])
        query.addElement("password")
        return query

    def on_set(self, event: StanzaEvent) -> Any:
        user = self._own(event)
        query = event.stanza.firstChildElement()
        assert query is not None
        if any(c.name == "remove" for c in query.elements()):
            # §3.2: the result first; then sessions close and data goes.
            self.server.clock.callLater(0, self._remove, user)
            return None
        values = form_values(query)
        username, password = values.get("username"), values.get("password", "")
        if username is not None and username.strip().lower() != user.split("@", 1)[0]:
            raise StanzaError("bad-request", text="the username is not yours")
        if not password:
            raise StanzaError("bad-request", text="no password")
        d = self.accounts.change_password(user, password, keep=event.origin)

        def refused(failure: Failure) -> None:
            failure.trap(RegistrationError)
            exc = cast(RegistrationError, failure.value)
            raise StanzaError(exc.condition, text=exc.text)

        return d.addCallback(lambda _: None).addErrback(refused)

    def _remove(self, user: str) -> None:
        self.accounts.request_removal(user).addErrback(
            lambda f: log.failure("removing {user} failed", f, user=user))

    # -- XEP-0379: pre-authenticated subscription requests ---------------------
    def on_subscribe_with_token(self, event: StanzaEvent) -> Any:
        stanza = event.stanza
        if stanza.getAttribute("type") != "subscribe" or event.sender is None:
            return None
        preauth = next(stanza.elements(NS_PARS, "preauth"), None)
        token = preauth.getAttribute("token") if preauth is not None else None
        if not token or len(token) > 64 or event.sender.bare == event.to.bare:
            return None
        return defer.ensureDeferred(self._preauth_subscribe(event, token))

    async def _preauth_subscribe(self, event: StanzaEvent, token: str) -> Any:
        user, contact = event.to.bare, event.sender.bare
        invites = self.server.stores.invites
        invite = await invites.get(token)
        valid = invite is not None and invite.creator == user and bool(await invites.delete(token))
        # The request itself goes on as usual (stored, shown to the user).
        result = self.server.events.fire_from("presence/bare", event, DELIVER)
        if not valid:
            return result
        if isinstance(result, defer.Deferred):
            await result
        presence: Any = self.server.modules.get("presence")
        if presence is None:
            return True
        from chatbx_server.features.subscription import outbound

        for ptype in ("subscribed", "subscribe"):
            reply = domish.Element((ns.CLIENT, "presence"))
            reply["from"], reply["to"], reply["type"] = user, contact, ptype
            out = await presence.roster.run_locked(
                user, lambda r=reply, t=ptype: presence._apply(user, contact, outbound, t, r))
            presence.roster.route_all(out)
        log.info("{user} approved {contact} with a contact invite (XEP-0379)", user=user,
                 contact=contact)
        return True

def _sha1(data: bytes) -> str:
    import hashlib

    return hashlib.sha1(data).hexdigest()
