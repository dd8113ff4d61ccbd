"""``/upload/SLOT/NAME``: the HTTP side of XEP-0363 (§5, §6).

PUT: the signed URL is checked when the headers are in (``open_body``),
before any body byte is stored: a bad or expired token, a Content-Length
other than the slot's size or a Content-Type other than the slot's are
refused at once. The body streams into a temporary file in the upload
store, which is renamed into place when the slot is marked used, so a
file appears whole or not at all and a slot takes one upload.

GET/HEAD: only completed, unexpired slots whose name matches; served by
twisted.web's static.File (streaming, Range requests, Last-Modified) with
our Content-Type, Content-Disposition (inline for images, audio and video,
RFC 6266), an ETag, caching and CORS headers. Paths are never joined from
the URL: the slot id (32 hex digits) names the file, nothing else does, so
there is no traversal and no listing.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import parse_qs, quote, unquote

from OpenSSL import SSL
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web import resource, static
from twisted.web.server import NOT_DONE_YET

from chatbx_server.features.upload import canonical_type
from chatbx_server.http.server import BodyHandler, ChatbxRequest, Refused
from chatbx_server.logs import log_observer
from chatbx_server.storage.upload import UploadRecord, is_slot

if TYPE_CHECKING:
    from chatbx_server.features.upload import UploadFeature
    from chatbx_server.server import Server

log = Logger(observer=log_observer)

INLINE_TYPES = ("image/", "audio/", "video/")
#: images a browser could run script in are downloaded, not shown
NOT_INLINE = frozenset(("image/svg+xml",))
CORS = ((b"access-control-allow-origin", b"*"),
        (b"access-control-allow-methods", b"GET, HEAD, PUT, OPTIONS"),
        (b"access-control-allow-headers", b"Content-Type, Authorization"),
        (b"access-control-expose-headers", b"Content-Length, Content-Range, ETag"),
        (b"access-control-max-age", b"86400"))


def content_disposition(filename: str, content_type: str) -> bytes:
    """RFC 6266 with an ASCII fallback and the UTF-8 name (RFC 8187)."""
    kind = "inline" if (content_type.startswith(INLINE_TYPES)
                        and content_type not in NOT_INLINE) else "attachment"
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\%' else "_" for c in filename)
    return (f'{kind}; filename="{fallback}"; '
            f"filename*=UTF-8''{quote(filename, safe='')}").encode("ascii")


def _split(path: bytes) -> tuple[str, str, dict[str, list[str]]]:
    """``/upload/SLOT/NAME?query`` -> (slot, name, query); ValueError when malformed."""
    raw, _, query = path.partition(b"?")
    parts = raw.split(b"/")
    if len(parts) != 4 or parts[0] or parts[1] != b"upload":
        raise ValueError("bad path")
    slot = parts[2].decode("ascii")
    name = unquote(parts[3].decode("ascii"), errors="strict")
    if not is_slot(slot):
        raise ValueError("bad slot")
    return slot, name, parse_qs(query.decode("ascii"), keep_blank_values=True)


class _Body:
    """The temporary file of one PUT in progress.

    ``stage``: "receiving" (the body arrives; dropping the connection
    deletes the file), "saving" (synced and committed off the reactor; the
    save finishes what it started and cleans up itself), "done".
    """

    __slots__ = ("file", "path", "slot", "size", "uploader", "stage", "abandoned")

    def __init__(self, file: Any, path: str, slot: str, size: int, uploader: str) -> None:
        self.file = file
        self.path = path
        self.slot = slot
        self.size = size
        self.uploader = uploader
        self.stage = "receiving"
        #: the client went away while saving: nothing to answer
        self.abandoned = False


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class _FileProducer(static.StaticProducer):
    """A whole file (no Range) as a push producer.

    static.File's producer is a pull producer: twisted.web drives it through
    the global cooperator, one 64 KiB read per reactor turn, and the turn
    after the transport's buffer has emptied. This one writes READ_CHUNK
    bytes at a time, straight from the transport's "resume" (its buffer just
    emptied) until the transport pauses it (over 64 KiB buffered), so the
    socket is refilled in the same turn. At most about one chunk is buffered
    per connection (plaintext and TLS records), as before.
    """

    bufferSize = 128 * 1024  # Twisted's FileDescriptor.SEND_LIMIT: one send per chunk

    paused = False
    _writing = False
    _wrote_head = False

    def start(self) -> None:
        self.request.registerProducer(self, True)
        if getattr(self.request.channel, "_waitingForTransport", False):
            self.paused = True
            return
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self._writing:  # resumed from inside our own write
            return
        self._writing = True
        try:
            while self.request is not None and not self.paused:
                if self.request._disconnected:  # the client went away: stop reading
                    self.stopProducing()
                    return
                data = self.fileObject.read(self.bufferSize)
                if not data:
                    request = self.request
                    request.unregisterProducer()
                    request.finish()
                    self.stopProducing()
                    return
                if not (self._wrote_head and _tls_write(self.request, data)):
                    self._wrote_head = True
                    self.request.write(data)
        finally:
            self._writing = False


def _tls_write(request: Any, data: bytes) -> bool:
    """Encrypt ``data`` in one SSL_write and hand the records to TCP at once.

    TLSMemoryBIOProtocol.write encrypts 16 KiB at a time, each slice copied,
    each record read out of the memory BIO into a fresh 32 KiB buffer and
    written to the transport on its own: about 0.5 ms of CPU per MB in
    Python calls (measured with pyOpenSSL alone: 0.6 ms/MB that way, 0.1
    ms/MB with one send and one read). The response headers are written by
    twisted.web before the first chunk (and flushed here from the small-
    write aggregator), so the order of the bytes is kept. Any TLS state
    Twisted handles itself (handshake, buffered writes, a closing
    connection, an error) makes this return False or hand the rest back to
    the ordinary path.
    """
    tls = getattr(request.channel, "transport", None)
    if (not isinstance(tls, TLSMemoryBIOProtocol) or not tls._handshakeDone
            or tls._appSendBuffer or tls._lostTLSConnection or tls.disconnecting
            or tls.transport is None or request.finished or request._disconnected
            or request.chunked):
        return False
    aggregator = getattr(tls, "_aggregator", None)
    if aggregator is not None:
        aggregator.flush()
        if tls._appSendBuffer or tls._lostTLSConnection:
            return False
    conn = tls._tlsConnection
    view = memoryview(data)
    sent = 0
    try:
        while sent < len(data):
            sent += conn.send(view[sent:])
    except SSL.Error:
        pass  # Twisted's own write below meets it again and handles it
    out: Any = tls.transport
    while True:
        try:
            records = conn.bio_read(sent + sent // 512 + 4096)  # 22 bytes per 16 KiB record
        except SSL.Error:
            break
        out.write(records)
    request.sentLength += sent
    if sent < len(data):
        request.write(bytes(view[sent:]))
    return True


class _UploadFile(static.File):
    """static.File for one upload: whole-file GETs through :class:`_FileProducer`."""

    def makeProducer(self, request: Any, fileForReading: Any) -> Any:  # noqa: N802, N803
        if request.getHeader(b"range") is None:
            self._setContentHeaders(request)
            request.setResponseCode(200)
            return _FileProducer(request, fileForReading)
        return super().makeProducer(request, fileForReading)


class UploadResource(resource.Resource, BodyHandler):
    isLeaf = True

    def __init__(self, chatbx: "Server") -> None:
        super().__init__()
        self.chatbx = chatbx

    def feature(self) -> Optional["UploadFeature"]:
        return self.chatbx.modules.get("upload")  # type: ignore[return-value]

    # -- PUT: headers in, before the body ---------------------------------------
    def open_body(self, request: ChatbxRequest, path: bytes, length: Optional[int]
                  ) -> tuple[Any, Optional[int]]:
        feature = self.feature()
        if feature is None or not feature.services:
            raise Refused(404, "no upload service")
        try:
            slot, name, query = _split(path)
            expires, size = int(query["e"][0]), int(query["s"][0])
            content_type, uploader, token = query["t"][0], query["u"][0], query["h"][0]
        except (ValueError, KeyError, IndexError, UnicodeError):
            raise Refused(403, "bad upload URL") from None
        problem = feature.check_token(slot, name, size, content_type, uploader, expires, token)
        if problem is not None:
            raise Refused(403, problem)
        if length is not None and length != size:
            # XEP-0363 §5: the size is part of the slot; a body of another size is refused.
            if length > size:
                raise Refused(413, f"Content-Length {length} larger than the slot's {size} bytes")
            raise Refused(400, f"Content-Length {length} differs from the slot's {size} bytes")
        sent_type = request.requestHeaders.getRawHeaders(b"content-type")
        if sent_type:
            main = sent_type[0].decode("latin-1").split(";")[0].strip().lower()
            if (main and canonical_type(main) != content_type
                    and content_type != "application/octet-stream"):
                raise Refused(400, f"Content-Type {main} differs from the slot's {content_type}")
        fh, tmp_path = feature.bodies.take()
        request.upload_body = _Body(fh, tmp_path, slot, size, uploader)  # type: ignore[attr-defined]
        return fh, size

    def discard_body(self, request: ChatbxRequest) -> None:
        body: Optional[_Body] = getattr(request, "upload_body", None)
        if body is None or body.stage == "done":
            return
        if body.stage == "saving":
            # The file is being synced or its slot committed: the save
            # removes or installs it when that is over.
            body.abandoned = True
            return
        body.stage = "done"
        try:
            body.file.close()
        except OSError:
            pass
        _unlink(body.path)

    def render_PUT(self, request: ChatbxRequest) -> Any:
        body: Optional[_Body] = getattr(request, "upload_body", None)
        feature = self.feature()
        if body is None or feature is None:
            return self._plain(request, 403, "bad upload URL")
        received = os.fstat(body.file.fileno()).st_size
        if received != body.size:
            self.discard_body(request)
            return self._plain(request, 400, f"got {received} of {body.size} bytes")
        # Durable before it is announced: the file is fsynced (in a thread,
        # never on the reactor), then its slot is committed as used (batched
        # with other uploads), then it is renamed into place. A crash before
        # the commit leaves a temporary file and an unused slot; the file is
        # never served partly written.
        body.stage = "saving"
        # The syncer closes the file; the request must not (twisted.web
        # closes request.content when the connection goes).
        request.content = None
        store = self.chatbx.stores.upload
        d = store.syncer.sync(body.file)
        d.addCallback(self._synced, request, body, store)
        d.addCallback(self._committed, request, body, feature)
        d.addErrback(self._save_failed, request, body)
        return NOT_DONE_YET

    @staticmethod
    def _synced(_: None, request: ChatbxRequest, body: _Body, store: Any) -> Any:
        if body.abandoned:
            return None  # the client left before the slot was taken: keep it usable
        return store.complete_batched(body.slot)

    def _committed(self, ok: Optional[bool], request: ChatbxRequest, body: _Body,
                   feature: "UploadFeature") -> None:
        body.stage = "done"
        request.body_owner = None
        if not ok:
            _unlink(body.path)
            if ok is not None:
                self._finish(request, 409, "this upload slot was already used or has expired")
            return
        # The slot is committed as used: the file goes into place even when
        # the client has gone meanwhile.
        feature.files.install(body.path, body.slot)
        log.info("upload {slot} stored: {size} bytes from {user}", slot=body.slot,
                  size=body.size, user=body.uploader)
        from chatbx_server.http import metrics

        metrics.UPLOAD_BYTES.inc(body.size)
        self._finish(request, 201, "created")

    def _save_failed(self, failure: Failure, request: ChatbxRequest, body: _Body) -> None:
        log.failure("upload {slot} could not be stored", failure, slot=body.slot)
        body.stage = "done"
        request.body_owner = None
        _unlink(body.path)
        self._finish(request, 500, "internal error")

    # -- GET / HEAD ------------------------------------------------------------
    def render_GET(self, request: ChatbxRequest) -> Any:
        try:
            slot, name, _ = _split(request.uri)
        except (ValueError, UnicodeError):
            return self._plain(request, 404, "not found")
        d = self.chatbx.stores.upload.get(slot)
        d.addCallback(self._serve, request, name)
        d.addErrback(self._crash, request)
        return NOT_DONE_YET

    render_HEAD = render_GET

    def _serve(self, record: Optional[UploadRecord], request: ChatbxRequest, name: str) -> None:
        feature = self.feature()
        now = self.chatbx.clock.seconds()
        if (record is None or feature is None or record.completed_at is None
                or record.filename != name
                or (record.expires_at is not None and record.expires_at <= now)):
            self._finish(request, 404, "not found")
            return
        etag = f'"{record.slot}"'.encode("ascii")
        self._cors(request)
        request.setHeader(b"etag", etag)
        max_age = 31536000 if record.expires_at is None else max(0, int(record.expires_at - now))
        request.setHeader(b"cache-control", b"public, max-age=%d, immutable" % max_age)
        request.setHeader(b"content-disposition",
                          content_disposition(record.filename, record.content_type))
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"content-security-policy", b"default-src 'none'; sandbox")
        match = request.getHeader(b"if-none-match")
        if match is not None and (match.strip() == b"*" or etag in
                                  [m.strip() for m in match.split(b",")]):
            request.setResponseCode(304)
            request.finish()
            return
        file = _UploadFile(feature.files.path(record.slot), defaultType=record.content_type)
        # Not guessed from the (absent) extension.
        file.type, file.encoding = record.content_type, None
        body = file.render(request)
        if body is not NOT_DONE_YET:
            if request.method != b"HEAD":
                request.write(body)
            request.finish()

    # -- CORS preflight ----------------------------------------------------------
    def render_OPTIONS(self, request: ChatbxRequest) -> bytes:
        self._cors(request)
        request.setResponseCode(204)
        return b""

    # -- helpers -------------------------------------------------------------
    @staticmethod
    def _cors(request: ChatbxRequest) -> None:
        for name, value in CORS:
            request.setHeader(name, value)

    def _plain(self, request: ChatbxRequest, code: int, text: str) -> bytes:
        self._cors(request)
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return (text + "\n").encode("utf-8")

    def _finish(self, request: ChatbxRequest, code: int, text: str) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        body = self._plain(request, code, text)
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    def _crash(self, failure: Failure, request: ChatbxRequest) -> None:
        log.failure("upload request failed", failure)
        self.discard_body(request)
        self._finish(request, 500, "internal error")
