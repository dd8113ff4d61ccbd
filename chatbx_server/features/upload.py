"""HTTP File Upload (XEP-0363 1.1.0): the ``upload.<domain>`` service.

Every hosted domain gets an upload service (``[modules.upload] subdomain``
renames it; leaving ``upload`` out of the modules disables it). A local
user asks it for a slot (§4) and gets a PUT and a GET URL on the HTTP
listener. The PUT URL carries an expiring HMAC over slot, file name, size,
content type and uploader, so the HTTP side can accept or refuse a body
from the URL alone, before a byte is stored (chatbx_server/http/upload.py).
The size limit is announced in disco#info with XEP-0128 (§3) and refused
at slot time with ``file-too-large`` carrying the limit (§4.1); daily and
total quotas per uploader give ``resource-constraint`` with a text saying
which. Files expire after ``expire_after`` seconds and are deleted in
bounded batches by a looping call on the injected clock.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
import unicodedata
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import quote, urlencode

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.words.xish import domish

from chatbx_server.logs import log_observer
from chatbx_server.events import StanzaEvent
from chatbx_server.modules import Feature
from chatbx_server.storage.upload import QuotaExceeded, SpareBodyFiles, UploadFiles, UploadRecord
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.jid import parse_or_none
from chatbx_server.xmpp.stanzas import StanzaError, error_reply, result_reply

log = Logger(observer=log_observer)

NS_UPLOAD = "urn:xmpp:http:upload:0"
#: server_secrets row whose bytes sign upload URLs (the same on every node)
SECRET_NAME = "upload-token"
#: seconds an unused slot's row is kept after its PUT URL expired
UNUSED_GRACE = 60.0
#: unregistered names some clients send (freedesktop shared-mime-info, as
#: profanity does for a .ogg voice message) -> the IANA type browsers and
#: other clients recognise (RFC 5334 for Ogg); the PUT may use either name
TYPE_ALIASES = {
    "audio/x-opus+ogg": "audio/ogg",
    "audio/x-vorbis+ogg": "audio/ogg",
    "audio/x-flac+ogg": "audio/ogg",
    "audio/x-speex+ogg": "audio/ogg",
    "video/x-theora+ogg": "video/ogg",
    "audio/x-m4a": "audio/mp4",
    "audio/m4a": "audio/mp4",
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
}
_MIME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$")


@dataclass(frozen=True)
class UploadOptions:
    """``[modules.upload]``."""

    #: the service is SUBDOMAIN.DOMAIN for every hosted domain
    subdomain: str = "upload"
    #: largest file, bytes (announced in disco#info)
    max_file_size: int = 104857600
    #: bytes one user may request per 24 hours (0 = no limit)
    daily_quota: int = 1073741824
    #: bytes one user may keep stored (0 = no limit)
    total_quota: int = 5368709120
    #: seconds a file is kept (0 = forever)
    expire_after: float = 2592000.0
    #: seconds a PUT URL stays valid
    slot_lifetime: float = 300.0
    #: seconds between expiry runs
    purge_interval: float = 600.0
    #: most files deleted per database transaction
    purge_batch: int = 500
    #: where files are stored ("" = DATA_DIR/uploads)
    store_dir: str = ""

    def __post_init__(self) -> None:
        if not re.match(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", self.subdomain):
            raise ValueError(f"subdomain {self.subdomain!r} is not a DNS label")
        for name in ("max_file_size", "slot_lifetime", "purge_interval", "purge_batch"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("daily_quota", "total_quota", "expire_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


def clean_filename(name: str) -> str:
    """A file name safe to put in a URL path and a header: no slashes,
    no control characters, at most 200 UTF-8 bytes, never empty or dots only."""
    name = unicodedata.normalize("NFC", name)
    name = "".join(c for c in name if c not in "/\\" and unicodedata.category(c)[0] != "C")
    name = name.strip().lstrip(".")
    encoded = name.encode("utf-8")[:200]
    name = encoded.decode("utf-8", "ignore").strip()
    return name or "file"


def canonical_type(content_type: str) -> str:
    """The slot's media type: lower case, aliases mapped, anything malformed
    application/octet-stream."""
    content_type = content_type.strip().lower()
    if not _MIME.match(content_type):
        return "application/octet-stream"
    return TYPE_ALIASES.get(content_type, content_type)


def sign(secret: bytes, slot: str, filename: str, size: int, content_type: str,
         uploader: str, expires: int) -> str:
    """The PUT URL's HMAC-SHA256 over everything the PUT must match."""
    message = "\0".join((slot, filename, str(size), content_type, uploader, str(expires)))
    return hmac.new(secret, message.encode("utf-8"), hashlib.sha256).hexdigest()


class UploadFeature(Feature):
    name = "upload"
    spec = "XEP-0363 1.1.0 (HTTP File Upload)"
    depends = ("disco",)
    Options = UploadOptions

    def setup(self) -> None:
        from chatbx_server.http.server import http_enabled

        options: UploadOptions = self.options
        #: service domain -> the hosted domain it serves
        self.services: dict[str, str] = {}
        self.secret: Optional[bytes] = None
        self._loop: Optional[task.LoopingCall] = None
        self._again: Any = None
        root = options.store_dir or os.path.join(self.server.config.data_dir, "uploads")
        self.files = UploadFiles(os.path.abspath(root))
        store = self.server.stores.upload
        #: empty files for upload bodies, made ahead off the reactor
        self.bodies = SpareBodyFiles(self.files.tmp, None if self.server.database.threadless
                                     else store.in_thread)
        if not http_enabled(self.server):
            log.warn("upload: no [listen] http and no [http] external_url: no upload service")
            return
        self.files.ensure()
        self.bodies.fill()  # the first uploads find files ready
        for host in sorted(self.server.hosts):
            service = f"{options.subdomain}.{host}"
            self.services[service] = host
            self.server.router.services[service] = self.on_stanza
        self.server.secrets.get(SECRET_NAME).addCallbacks(
            self._got_secret, lambda f: log.failure("upload: cannot read its secret", f))
        self._loop = task.LoopingCall(self.purge)
        self._loop.clock = self.server.clock
        self._loop.start(options.purge_interval, now=False).addErrback(
            lambda f: log.failure("upload: expiry loop stopped", f))

    def _got_secret(self, secret: bytes) -> None:
        self.secret = secret

    def teardown(self) -> None:
        self.bodies.close()
        for service in self.services:
            if self.server.router.services.get(service) == self.on_stanza:
                del self.server.router.services[service]
        self.services.clear()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._again is not None and self._again.active():
            self._again.cancel()
        super().teardown()

    # -- stanzas to upload.DOMAIN ---------------------------------------------
    def on_stanza(self, event: StanzaEvent) -> Any:
        """A stanza for upload.<domain> (router service: gets the event)."""
        stanza = event.stanza
        if stanza.name != "iq" or stanza.getAttribute("type") not in ("get", "set"):
            if stanza.name == "message" and stanza.getAttribute("type") != "error":
                self._send(error_reply(stanza, "service-unavailable"))
            return True
        payload = stanza.firstChildElement()
        kind = stanza["type"]
        try:
            if kind == "get" and payload.uri == ns.DISCO_INFO and payload.name == "query":
                reply = self._disco_info(stanza, payload)
            elif kind == "get" and payload.uri == ns.DISCO_ITEMS and payload.name == "query":
                reply = result_reply(stanza)
                reply.addElement((ns.DISCO_ITEMS, "query"))
            elif kind == "get" and payload.uri == NS_UPLOAD and payload.name == "request":
                d = defer.ensureDeferred(self._slot(stanza, payload))
                d.addErrback(self._failed, stanza)
                d.addCallback(self._send)
                return d
            else:
                raise StanzaError("service-unavailable")
        except StanzaError as exc:
            reply = error_reply(stanza, exc)
        self._send(reply)
        return True

    def _send(self, reply: domish.Element) -> None:
        self.server.router.route(reply)

    def _failed(self, failure: Any, stanza: domish.Element) -> domish.Element:
        if failure.check(StanzaError):
            return error_reply(stanza, failure.value)
        log.failure("upload slot request failed", failure)
        return error_reply(stanza, "internal-server-error")

    def _disco_info(self, stanza: domish.Element, query: domish.Element) -> domish.Element:
        if query.getAttribute("node"):
            raise StanzaError("item-not-found")
        reply = result_reply(stanza)
        out = reply.addElement((ns.DISCO_INFO, "query"))
        identity = out.addElement("identity")
        identity["category"], identity["type"], identity["name"] = "store", "file", "HTTP File Upload"
        for var in (ns.DISCO_INFO, ns.DISCO_ITEMS, NS_UPLOAD):
            out.addElement("feature")["var"] = var
        out.addChild(self.info_form())
        return reply

    def info_form(self) -> domish.Element:
        """XEP-0363 §3 / XEP-0128: FORM_TYPE and max-file-size."""
        form = domish.Element((ns.DATA_FORMS, "x"))
        form["type"] = "result"
        for var, value, hidden in (("FORM_TYPE", NS_UPLOAD, True),
                                   ("max-file-size", str(self.options.max_file_size), False)):
            field = form.addElement("field")
            field["var"] = var
            if hidden:
                field["type"] = "hidden"
            field.addElement("value", content=value)
        return form

    async def _slot(self, stanza: domish.Element, request: domish.Element) -> domish.Element:
        options: UploadOptions = self.options
        sender = parse_or_none(stanza.getAttribute("from"))
        if sender is None or sender.user is None or sender.host not in self.server.hosts:
            raise StanzaError("forbidden", text="only local users may upload")
        if self.secret is None:
            raise StanzaError("service-unavailable", type="wait", text="starting up")
        size_text = request.getAttribute("size", "")
        if not size_text.isdigit() or int(size_text) <= 0:
            raise StanzaError("bad-request", text="size must be a positive integer")
        size = int(size_text)
        if size > options.max_file_size:
            # XEP-0363 §4.1: the limit in an application-specific condition.
            too_large = domish.Element((NS_UPLOAD, "file-too-large"))
            too_large.addElement("max-file-size", content=str(options.max_file_size))
            raise StanzaError("not-acceptable", type="modify",
                              text=f"file too large: at most {options.max_file_size} bytes",
                              app_element=too_large)
        filename = clean_filename(request.getAttribute("filename", ""))
        content_type = canonical_type(request.getAttribute("content-type", ""))
        to = parse_or_none(stanza.getAttribute("to"))
        host = self.services.get(to.host if to is not None else "", sender.host)
        now = self.server.clock.seconds()
        slot = os.urandom(16).hex()
        expires_at = now + options.expire_after if options.expire_after else None
        record = UploadRecord(slot, sender.bare, filename, size, content_type, now, None,
                              expires_at)
        try:
            await self.server.stores.upload.reserve(record, options.daily_quota,
                                                    options.total_quota)
        except QuotaExceeded as exc:
            raise StanzaError("resource-constraint", type="wait",
                              text=f"{exc.which} upload quota of {exc.limit} bytes reached") from None
        put_url, get_url = self.urls(host, slot, filename, size, content_type, sender.bare,
                                     int(now + options.slot_lifetime))
        log.info("upload slot {slot} for {user}: {size} bytes", slot=slot, user=sender.bare,
                 size=size)
        reply = result_reply(stanza)
        out = reply.addElement((NS_UPLOAD, "slot"))
        out.addElement("put")["url"] = put_url
        out.addElement("get")["url"] = get_url
        return reply

    def urls(self, host: str, slot: str, filename: str, size: int, content_type: str,
             uploader: str, expires: int) -> tuple[str, str]:
        """(PUT URL with its signed token, GET URL) of a slot."""
        from chatbx_server.http.server import base_url

        assert self.secret is not None
        get_url = f"{base_url(self.server, host)}/upload/{slot}/{quote(filename, safe='')}"
        token = sign(self.secret, slot, filename, size, content_type, uploader, expires)
        query = urlencode({"e": expires, "s": size, "t": content_type, "u": uploader, "h": token})
        return f"{get_url}?{query}", get_url

    def check_token(self, slot: str, filename: str, size: int, content_type: str,
                    uploader: str, expires: int, token: str) -> Optional[str]:
        """None when the PUT URL is genuine and unexpired, else why not."""
        if self.secret is None:
            return "starting up"
        good = sign(self.secret, slot, filename, size, content_type, uploader, expires)
        if not hmac.compare_digest(good, token):
            return "bad upload URL"
        if self.server.clock.seconds() > expires:
            return "upload URL expired"
        return None

    # -- expiry ---------------------------------------------------------------
    @defer.inlineCallbacks
    def purge(self) -> Any:
        """Delete one batch of expired files and stale slots; another soon if it was full."""
        options: UploadOptions = self.options
        store = self.server.stores.upload
        unused_before = self.server.clock.seconds() - options.slot_lifetime - UNUSED_GRACE
        slots = yield store.due(unused_before, options.purge_batch)
        if not slots:
            return 0
        started = time.monotonic()
        self.files.remove(slots)
        deleted = yield store.delete(slots)
        log.info("upload: {count} expired files deleted in {ms:.0f} ms", count=deleted,
                 ms=(time.monotonic() - started) * 1000)
        if len(slots) >= options.purge_batch and (self._again is None or not self._again.active()):
            self._again = self.server.clock.callLater(1.0, self._purge_again)
        return deleted

    def _purge_again(self) -> None:
        self._again = None
        self.purge().addErrback(lambda f: log.failure("upload: expiry failed", f))
