"""Account self-service on the web: the sign-up form (with an invite, or in
``open``/``captcha`` mode), the password change page and the spoken CAPTCHA.

Pages are Jinja2 templates (``http/templates``) with autoescaping. Every
form is CSRF-protected with a double-submit token: a random value in a
``SameSite=Strict`` cookie that the form must echo; a POST without the
match is refused. POSTs are limited per client address (``FORM_POSTS`` per
minute), account creation by the registration rules (server.accounts, the
same per-address limit as in-band registration). The password page says
only "wrong address or password", whether or not the account exists, and
its failures count in the SASL failure throttle, so it is no faster an
oracle than a login.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any, Callable, Optional
from urllib.parse import quote

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server

from chatbx_server.accounts import RegistrationError, RegistrationThrottle
from chatbx_server.logs import log_observer

if TYPE_CHECKING:
    from chatbx_server.server import Server

log = Logger(observer=log_observer)

#: form submissions per client address and minute
FORM_POSTS = 20
CSRF_COOKIE = b"chatbx_csrf"

_env: Any = None


def templates() -> Any:
    """The Jinja2 environment of http/templates (autoescaped)."""
    global _env
    if _env is None:
        import jinja2

        _env = jinja2.Environment(loader=jinja2.PackageLoader("chatbx_server.http", "templates"),
                                  autoescape=True)
    return _env


def render(request: Any, name: str, code: int = 200, **values: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-frame-options", b"DENY")
    request.setHeader(b"content-security-policy",
                      b"default-src 'none'; img-src 'self' data:; media-src 'self'; "
                      b"style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'")
    return bytes(templates().get_template(name).render(**values).encode("utf-8"))


def arg(request: Any, name: str) -> str:
    values = request.args.get(name.encode()) or [b""]
    return str(values[0].decode("utf-8", "replace"))


def csrf_token(request: Any) -> str:
    """The CSRF token of this browser, set as a cookie when it has none."""
    token = request.getCookie(CSRF_COOKIE)
    if token and 20 <= len(token) <= 64:
        return str(token.decode("ascii", "replace"))
    value = secrets.token_urlsafe(24)
    request.addCookie(CSRF_COOKIE, value.encode(), path=b"/", httpOnly=True,
                      secure=request.isSecure(), sameSite="strict")
    return value


def csrf_ok(request: Any) -> bool:
    cookie = request.getCookie(CSRF_COOKIE)
    sent = arg(request, "csrf").encode()
    return bool(cookie) and secrets.compare_digest(cookie, sent)


class FormResource(resource.Resource):
    """Shared by the forms: per-address POST limit, CSRF, async rendering."""

    isLeaf = True

    def __init__(self, chatbx: "Server", posts: RegistrationThrottle) -> None:
        super().__init__()
        self.chatbx = chatbx
        self.posts = posts

    def finish_later(self, request: Any, d: defer.Deferred[bytes]) -> Any:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def write(body: bytes) -> None:
            if not gone:
                request.write(body)
                request.finish()

        def crashed(failure: Failure) -> None:
            log.failure("web form failed", failure)
            write(render(request, "message.html", 500, title="Error", domain="",
                         message="Something went wrong; please try again later."))

        d.addCallback(write).addErrback(crashed)
        return server.NOT_DONE_YET

    def check_post(self, request: Any, domain: str) -> Optional[bytes]:
        """A refusal page for a POST that is over the limit or fails CSRF."""
        address = request.client_ip() if hasattr(request, "client_ip") else None
        if not self.posts.allowed(address):
            return render(request, "message.html", 429, title="Slow down", domain=domain,
                          message="Too many attempts from your address; try again later.")
        self.posts.record(address)
        if not csrf_ok(request):
            return render(request, "message.html", 403, title="Expired form", domain=domain,
                          message="The form expired; reload the page and try again.")
        return None


class SignupResource(FormResource):
    """``/register`` (open/captcha mode) and ``/invite/TOKEN/register``.

    Args:
        token_of: the invite token of the request (None: no invite).
    """

    def __init__(self, chatbx: "Server", posts: RegistrationThrottle,
                 token: Optional[str] = None) -> None:
        super().__init__(chatbx, posts)
        self.token = token

    def _domain(self, request: Any, invite: Any) -> str:
        if invite is not None:
            return str(invite.domain)
        host = (request.getRequestHostname() or b"").decode("ascii", "replace").lower()
        hosts = sorted(self.chatbx.hosts)
        return host if host in self.chatbx.hosts else hosts[0]

    @defer.inlineCallbacks
    def _page(self, request: Any, error: str = "", username: str = "",
              code: int = 200) -> Any:
        invite = None
        if self.token is not None:
            invite = yield self.chatbx.stores.invites.get(self.token)
            if invite is None or not invite.register:
                return render(request, "message.html", 404, title="Invite not valid",
                              domain="", message="This invite is invalid, used or expired.")
        domain = self._domain(request, invite)
        mode = self.chatbx.accounts.mode()
        if invite is None and mode not in ("open", "captcha"):
            return render(request, "message.html", 403, title="Sign-up closed", domain=domain,
                          message="This server creates accounts with an invite only.")
        reg = self.chatbx.config.registration
        values: dict[str, Any] = dict(
            title="Create your account", domain=domain, error=error, username=username,
            csrf=csrf_token(request), action=request.path.decode("ascii", "replace"),
            min_username=reg.min_username_length, min_password=reg.min_password_length,
            inviter=invite.creator if invite is not None else None, challenge=None,
            captcha_image=None, captcha_audio=None)
        if invite is None and mode == "captcha":
            import base64

            from chatbx_server.captcha import new_challenge

            challenge, png = yield new_challenge(self.chatbx)
            values.update(challenge=challenge,
                          captcha_image="data:image/png;base64," + base64.b64encode(png).decode(),
                          captcha_audio=f"/captcha/{challenge}.wav")
        return render(request, "signup.html", code, **values)

    def render_GET(self, request: Any) -> Any:
        return self.finish_later(request, self._page(request))

    def render_POST(self, request: Any) -> Any:
        return self.finish_later(request, self._submit(request))

    @defer.inlineCallbacks
    def _submit(self, request: Any) -> Any:
        refusal = self.check_post(request, "")
        if refusal is not None:
            return refusal
        username, password = arg(request, "username"), arg(request, "password")
        if password != arg(request, "password2"):
            return (yield self._page(request, "The two passwords differ.", username, 400))
        invite = None
        if self.token is not None:
            invite = yield self.chatbx.stores.invites.get(self.token)
        domain = self._domain(request, invite)
        captcha_ok = False
        if self.token is None and self.chatbx.accounts.mode() == "captcha":
            captcha_ok = yield self.chatbx.stores.invites.check_challenge(
                arg(request, "challenge"), arg(request, "captcha"))
            if not captcha_ok:
                return (yield self._page(request, "Wrong digits; try the new picture.",
                                         username, 400))
        try:
            registered = yield self.chatbx.accounts.register(
                username, domain, password, request.client_ip(), token=self.token,
                captcha_ok=captcha_ok, via="web")
        except RegistrationError as exc:
            return (yield self._page(request, _sentence(exc.text), username, 400))
        return render(request, "done.html", 200, title="Welcome!", domain=domain,
                      message="Your account is ready.", jid=registered.jid,
                      inviter=registered.inviter)


class PasswordResource(FormResource):
    """``/password``: change a password knowing the current one."""

    def render_GET(self, request: Any) -> bytes:
        return self._form(request)

    def _form(self, request: Any, error: str = "", jid: str = "", code: int = 200) -> bytes:
        return render(request, "password.html", code, title="Change your password",
                      domain=sorted(self.chatbx.hosts)[0], error=error, jid=jid,
                      csrf=csrf_token(request), action="/password",
                      min_password=self.chatbx.config.registration.min_password_length)

    def render_POST(self, request: Any) -> Any:
        return self.finish_later(request, self._submit(request))

    @defer.inlineCallbacks
    def _submit(self, request: Any) -> Any:
        refusal = self.check_post(request, "")
        if refusal is not None:
            return refusal
        from chatbx_server.xmpp.jid import InvalidJID, JID

        text = arg(request, "jid").strip()
        wrong = "Wrong address or password."
        try:
            jid = JID.parse(text, cache=False)
        except InvalidJID:
            return self._form(request, wrong, text, 400)
        if jid.user is None or jid.resource is not None or jid.host not in self.chatbx.hosts:
            return self._form(request, wrong, text, 400)
        password = arg(request, "password")
        if password != arg(request, "password2"):
            return self._form(request, "The two new passwords differ.", text, 400)
        throttle = self.chatbx.auth_throttle
        address = request.client_ip()
        if not throttle.charge(address, jid.bare):
            return self._form(request, "Too many attempts; try again later.", text, 429)
        ok = yield self.chatbx.stores.users.check_password(jid.bare, arg(request, "old"))
        if not ok:
            return self._form(request, wrong, text, 400)
        throttle.refund(address, jid.bare)
        try:
            yield self.chatbx.accounts.change_password(jid.bare, password)
        except RegistrationError as exc:
            return self._form(request, _sentence(exc.text), text, 400)
        return render(request, "done.html", 200, title="Password changed", domain=jid.host,
                      message="Your password is changed; log in again with the new one.",
                      jid=None, inviter=None)


class CaptchaAudio(resource.Resource):
    """``/captcha/ID.wav``: the digits of a pending challenge, spoken."""

    isLeaf = True

    def __init__(self, chatbx: "Server") -> None:
        super().__init__()
        self.chatbx = chatbx

    def render_GET(self, request: Any) -> Any:
        name = request.postpath[0].decode("ascii", "replace") if request.postpath else ""
        challenge = name[:-4] if name.endswith(".wav") else ""
        if not challenge.isalnum() or len(challenge) != 32:
            request.setResponseCode(404)
            return b"not found\n"
        from chatbx_server.captcha import audio_wav

        d = self.chatbx.stores.invites.challenge_answer(challenge)

        def speak(answer: Optional[str]) -> Any:
            if answer is None:
                return None
            return self.chatbx.stores.users.hasher.run(audio_wav, answer)

        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def write(wav: Optional[bytes]) -> None:
            if gone:
                return
            if wav is None:
                request.setResponseCode(404)
                request.write(b"not found\n")
            else:
                request.setHeader(b"content-type", b"audio/x-wav")
                request.setHeader(b"cache-control", b"no-store")
                request.write(wav)
            request.finish()

        d.addCallback(speak).addCallback(write).addErrback(
            lambda f: log.failure("captcha audio failed", f))
        return server.NOT_DONE_YET


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


__all__ = ["CaptchaAudio", "PasswordResource", "SignupResource", "render", "templates",
           "quote"]
