"""The invite landing page (XEP-0401 §5, "Easy User Onboarding"): the link
``chatbxctl invite create`` and the invite ad-hoc commands hand out.

``/invite/TOKEN`` shows who invites, links to XMPP apps per platform, the
``xmpp:`` URI (XEP-0401 §4: ``xmpp:DOMAIN?register;preauth=TOKEN`` for an
account invite, ``xmpp:INVITER?roster;preauth=TOKEN;ibr=y`` for a contact
invite, XEP-0379 §3) as a button and as a QR code (``segno``), and a web
sign-up form (``/invite/TOKEN/register``) for people whose app cannot
register in-band. ``install`` puts these pages, ``/register``, ``/password``
and ``/captcha/`` into the HTTP listener's site.
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import quote

from twisted.internet import defer
from twisted.web import resource

from chatbx_server.accounts import RegistrationThrottle
from chatbx_server.http.signup import (FORM_POSTS, CaptchaAudio, FormResource,
                                       PasswordResource, SignupResource, render)

if TYPE_CHECKING:
    from chatbx_server.server import Server

#: apps that support invites (XEP-0401) or at least in-band registration
CLIENTS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("Android", (("Conversations", "https://conversations.im/"),
                 ("Cheogram", "https://cheogram.com/"))),
    ("iPhone and iPad", (("Monal", "https://monal-im.org/"),
                         ("Siskin", "https://siskin.im/"))),
    ("Linux, Windows, macOS", (("Gajim", "https://gajim.org/"),
                               ("Dino", "https://dino.im/"))),
)


def landing_url(config: Any, domain: str, token: str) -> str:
    """The https link of an invite (for chatbxctl, which has no Server)."""
    from chatbx_server.http.server import base_url

    return f"{base_url(types.SimpleNamespace(config=config), domain)}/invite/{token}"  # type: ignore[arg-type]


def invite_uri(invite: Any) -> str:
    """The xmpp: URI a client opens (XEP-0401 §4, XEP-0379 §3)."""
    token = quote(invite.token, safe="")
    if invite.creator is not None:
        ibr = ";ibr=y" if invite.register else ""
        return f"xmpp:{invite.creator}?roster;preauth={token}{ibr}"
    return f"xmpp:{invite.domain}?register;preauth={token}"


def qr_data_uri(text: str) -> str:
    """A QR code of ``text`` as an SVG data: URI (segno)."""
    import segno

    return str(segno.make(text, error="m").svg_data_uri(scale=6, border=2))


class InviteResource(FormResource):
    """``/invite/TOKEN`` and ``/invite/TOKEN/register``."""

    isLeaf = True

    def render_GET(self, request: Any) -> Any:
        token, rest = self._parts(request)
        if token is None:
            return self._invalid(request)
        if rest == "register":
            return SignupResource(self.chatbx, self.posts, token).render_GET(request)
        if rest:
            return self._invalid(request)
        return self.finish_later(request, self._landing(request, token))

    def render_POST(self, request: Any) -> Any:
        token, rest = self._parts(request)
        if token is None or rest != "register":
            return self._invalid(request)
        return SignupResource(self.chatbx, self.posts, token).render_POST(request)

    def _parts(self, request: Any) -> tuple[Optional[str], str]:
        parts = [p.decode("ascii", "replace") for p in request.postpath]
        if not parts or not parts[0] or len(parts) > 2 or len(parts[0]) > 64:
            return None, ""
        return parts[0], parts[1] if len(parts) > 1 else ""

    def _invalid(self, request: Any) -> bytes:
        return render(request, "message.html", 404, title="Invite not valid", domain="",
                      message="This invite is invalid, used or expired.")

    @defer.inlineCallbacks
    def _landing(self, request: Any, token: str) -> Any:
        invite = yield self.chatbx.stores.invites.get(token)
        if invite is None:
            return self._invalid(request)
        uri = invite_uri(invite)
        reg = self.chatbx.config.registration
        can_register = invite.register and (invite.kind == "account" or (
            reg.mode != "closed" and reg.user_invites_register))
        return render(request, "invite.html", 200, title="You are invited",
                      domain=invite.domain, inviter=invite.creator, uri=uri,
                      qr=qr_data_uri(uri), clients=CLIENTS, can_register=can_register,
                      register_url=f"/invite/{quote(token, safe='')}/register")


def install(chatbx: "Server", root: resource.Resource) -> None:
    """Add the account pages to the site's root resource."""
    posts = RegistrationThrottle(chatbx.clock, FORM_POSTS, 60.0)
    for name, child in ((b"invite", InviteResource(chatbx, posts)),
                        (b"register", SignupResource(chatbx, posts)),
                        (b"password", PasswordResource(chatbx, posts)),
                        (b"captcha", CaptchaAudio(chatbx))):
        root.putChild(name, child)  # type: ignore[arg-type]


__all__ = ["CLIENTS", "InviteResource", "install", "invite_uri", "landing_url", "qr_data_uri"]
