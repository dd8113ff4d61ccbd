"""XEP-0363 HTTP File Upload: the upload.DOMAIN service and /upload/ over HTTP."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from chatbx_server.features.upload import NS_UPLOAD, clean_filename
from chatbx_server.xmpp import ns
from tests.unit.fakes import bind, make_server, stanza
from tests.unit.httpfakes import request, simple, site_for

MODULES = ["message", "disco", "upload"]


def make(tmp_path: Path, extra: str = "") -> Any:
    text = (f'data_dir = "{tmp_path}"\n[listen]\nhttp = "127.0.0.1:5443"\n'
            f'[http]\nexternal_url = "https://{{domain}}:5443"\n')
    if extra:
        modules = ", ".join(f'"{m}"' for m in MODULES)
        text = (f'data_dir = "{tmp_path}"\n[modules]\nenabled = [{modules}]\n'
                f'[modules.upload]\n{extra}\n[listen]\nhttp = "127.0.0.1:5443"\n'
                f'[http]\nexternal_url = "https://{{domain}}:5443"\n')
        return make_server(config_text=text)
    return make_server(modules=MODULES, config_text=text)


def ask_slot(server: Any, session: Any, size: int, name: str = "cat.jpg",
             ctype: str = "image/jpeg") -> Any:
    iq = stanza(f"<iq type='get' id='s1' to='upload.localhost'><request xmlns='{NS_UPLOAD}' "
                f"filename='{name}' size='{size}' content-type='{ctype}'/></iq>")
    iq["from"] = session.jid.full
    server.router.route(iq, session)
    [reply] = session.take()
    return reply


def slot_urls(reply: Any) -> tuple[str, str]:
    slot = reply.firstChildElement()
    put = next(c for c in slot.elements() if c.name == "put")["url"]
    get = next(c for c in slot.elements() if c.name == "get")["url"]
    return put, get


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + ("?" + parts.query if parts.query else "")


def error_of(reply: Any) -> tuple[str, Any]:
    error = next(c for c in reply.elements() if c.name == "error")
    condition = next(c.name for c in error.elements() if c.uri == ns.STANZA_ERRORS)
    app = next((c for c in error.elements() if c.uri == NS_UPLOAD), None)
    return condition, app


def test_disco_announces_service_and_limit(tmp_path: Path) -> None:
    """upload.localhost is listed in the host's items and its info has the
    store/file identity, the feature and max-file-size (XEP-0363 §3)."""
    server = make(tmp_path)
    alice = bind(server, "alice@localhost/a")
    iq = stanza(f"<iq type='get' id='d1' to='localhost'><query xmlns='{ns.DISCO_ITEMS}'/></iq>")
    iq["from"] = alice.jid.full
    server.router.route(iq, alice)
    [items] = alice.take()
    assert "upload.localhost" in [i["jid"] for i in items.firstChildElement().elements()]
    iq = stanza(f"<iq type='get' id='d2' to='upload.localhost'><query xmlns='{ns.DISCO_INFO}'/></iq>")
    iq["from"] = alice.jid.full
    server.router.route(iq, alice)
    [info] = alice.take()
    xml = info.toXml()
    assert "category='store'" in xml and NS_UPLOAD in xml
    assert "<field var='max-file-size'><value>104857600</value>" in xml


def test_slot_put_get_range_and_headers(tmp_path: Path) -> None:
    """A slot's PUT stores the body; GET returns it with type, inline
    disposition, ETag, CORS and caching; Range returns the slice; a second
    PUT on the same slot is refused."""
    server = make(tmp_path)
    alice = bind(server, "alice@localhost/a")
    reply = ask_slot(server, alice, 10, "caté.jpg")
    assert reply["type"] == "result"
    put, get = slot_urls(reply)
    assert get.startswith("https://localhost:5443/upload/") and get.endswith("/cat%C3%A9.jpg")
    site = site_for(server)
    resp, _ = request(site, simple("PUT", path_of(put), b"0123456789",
                                   {"Content-Type": "image/jpeg"}))
    assert resp.code == 201, resp.raw
    resp, _ = request(site, simple("GET", path_of(get)))
    assert resp.code == 200 and resp.body == b"0123456789"
    assert resp.headers["content-type"] == "image/jpeg"
    assert resp.headers["content-disposition"].startswith("inline;")
    assert "filename*=UTF-8''cat%C3%A9.jpg" in resp.headers["content-disposition"]
    assert resp.headers["access-control-allow-origin"] == "*"
    assert resp.headers["etag"].startswith('"') and "max-age" in resp.headers["cache-control"]
    etag = resp.headers["etag"]
    resp, _ = request(site, simple("GET", path_of(get), headers={"Range": "bytes=2-5"}))
    assert resp.code == 206 and resp.body == b"2345"
    assert resp.headers["content-range"] == "bytes 2-5/10"
    resp, _ = request(site, simple("GET", path_of(get), headers={"If-None-Match": etag}))
    assert resp.code == 304 and resp.body == b""
    resp, _ = request(site, simple("PUT", path_of(put), b"abcdefghij",
                                   {"Content-Type": "image/jpeg"}))
    assert resp.code == 409
    resp, _ = request(site, simple("GET", path_of(get)))
    assert resp.body == b"0123456789"


def test_attachment_for_other_types(tmp_path: Path) -> None:
    """A PDF (and SVG) is served as an attachment, not inline."""
    server = make(tmp_path)
    alice = bind(server, "alice@localhost/a")
    put, get = slot_urls(ask_slot(server, alice, 3, "doc.pdf", "application/pdf"))
    site = site_for(server)
    assert request(site, simple("PUT", path_of(put), b"pdf"))[0].code == 201
    resp, _ = request(site, simple("GET", path_of(get)))
    assert resp.headers["content-disposition"].startswith("attachment;")


def test_too_large_slot_gets_limit(tmp_path: Path) -> None:
    """A slot larger than max-file-size: not-acceptable with <file-too-large>
    carrying the limit (XEP-0363 §4.1)."""
    server = make(tmp_path, "max_file_size = 100")
    alice = bind(server, "alice@localhost/a")
    reply = ask_slot(server, alice, 101)
    condition, app = error_of(reply)
    assert condition == "not-acceptable" and app.name == "file-too-large"
    assert str(next(app.elements())) == "100"


def test_quota_error_names_quota(tmp_path: Path) -> None:
    """Past the daily quota the slot request gets resource-constraint saying which."""
    server = make(tmp_path, "daily_quota = 15")
    alice = bind(server, "alice@localhost/a")
    assert ask_slot(server, alice, 10)["type"] == "result"
    reply = ask_slot(server, alice, 10)
    assert error_of(reply)[0] == "resource-constraint"
    assert "daily upload quota of 15 bytes" in reply.toXml()


@pytest.mark.parametrize("change, code", [
    (lambda p: p.replace("&h=", "&h=0"), 403),          # tampered token
    (lambda p: p.replace("s=10", "s=11"), 403),         # size not the signed one
])
def test_bad_put_urls_refused_before_body(tmp_path: Path, change: Any, code: int) -> None:
    """A tampered PUT URL is answered before the body, and nothing is stored."""
    server = make(tmp_path)
    alice = bind(server, "alice@localhost/a")
    put, _ = slot_urls(ask_slot(server, alice, 10))
    site = site_for(server)
    resp, transport = request(site, simple("PUT", change(path_of(put)), b"",
                                           {"Content-Length": "10"}))
    assert resp.code == code and transport.disconnecting
    assert os.listdir(tmp_path / "uploads" / "tmp") == []


def test_content_length_mismatch_and_expiry(tmp_path: Path) -> None:
    """A Content-Length other than the slot size is refused at the headers
    (413 with the size), and a PUT URL past its lifetime is refused (403)."""
    server = make(tmp_path)
    alice = bind(server, "alice@localhost/a")
    put, _ = slot_urls(ask_slot(server, alice, 10))
    site = site_for(server)
    resp, transport = request(site, simple("PUT", path_of(put), None,
                                           {"Content-Length": "10485760",
                                            "Expect": "100-continue"}))
    assert resp.code == 413 and b"100 Continue" not in transport.value()
    server.clock.advance(301)
    resp, _ = request(site, simple("PUT", path_of(put), b"0123456789"))
    assert resp.code == 403 and b"expired" in resp.body


def test_other_paths_404(tmp_path: Path) -> None:
    """Traversal attempts, listings, unknown and unfinished slots are 404."""
    server = make(tmp_path)
    alice = bind(server, "alice@localhost/a")
    _, get = slot_urls(ask_slot(server, alice, 10))
    site = site_for(server)
    for path in ("/upload/", "/upload/../../etc/passwd", "/upload/%2e%2e/%2e%2e/etc/passwd",
                 "/upload/" + "0" * 32 + "/x", path_of(get), "/", "/nothing",
                 "/upload/tmp/x", "/upload/" + path_of(get).split("/")[2] + "/other-name"):
        resp, _ = request(site, simple("GET", path))
        assert resp.code == 404, path


def test_expired_files_purged_in_batches(tmp_path: Path) -> None:
    """After expire_after the file is 404 and the purge loop deletes rows and
    files, purge_batch at a time."""
    server = make(tmp_path, "expire_after = 120\npurge_interval = 50\npurge_batch = 2")
    alice = bind(server, "alice@localhost/a")
    site = site_for(server)
    gets = []
    for _ in range(3):
        put, get = slot_urls(ask_slot(server, alice, 1))
        assert request(site, simple("PUT", path_of(put), b"x"))[0].code == 201
        gets.append(get)
    files = lambda: sum(len(f) for d, _, f in os.walk(tmp_path / "uploads")
                        if os.path.basename(d) != "tmp")
    assert files() == 3
    server.clock.pump([50, 50, 21])  # the loop ran at 50 and 100 and found nothing due
    assert request(site, simple("GET", path_of(gets[0])))[0].code == 404
    assert files() == 3
    server.clock.advance(29)   # the loop runs: one batch of 2, another a second later
    assert files() == 1
    server.clock.advance(1)
    assert files() == 0
    assert server.modules.get("upload").purge().result == 0


def test_only_local_users_and_clean_names() -> None:
    """Names lose slashes and control characters; empty names become 'file'."""
    assert clean_filename("../../etc/passwd") == "etcpasswd"
    assert clean_filename("a\x00b\nc.txt") == "abc.txt"
    assert clean_filename("...") == "file"


def test_unregistered_type_names_served_as_iana_types(tmp_path: Path) -> None:
    """A voice message announced as audio/x-opus+ogg (profanity, from
    shared-mime-info) gets a slot for audio/ogg; the PUT may still say
    audio/x-opus+ogg, and GET serves audio/ogg inline."""
    server = make(tmp_path)
    alice = bind(server, "alice@localhost/a")
    put, get = slot_urls(ask_slot(server, alice, 4, "voice.ogg", "audio/x-opus+ogg"))
    assert "t=audio%2Fogg" in put
    site = site_for(server)
    resp, _ = request(site, simple("PUT", path_of(put), b"OggS", {"Content-Type": "audio/x-opus+ogg"}))
    assert resp.code == 201, resp.raw
    resp, _ = request(site, simple("GET", path_of(get)))
    assert resp.body == b"OggS" and resp.headers["content-type"] == "audio/ogg"
    assert resp.headers["content-disposition"].startswith("inline;")
    put, _ = slot_urls(ask_slot(server, alice, 4, "other.ogg", "audio/x-opus+ogg"))
    resp, _ = request(site, simple("PUT", path_of(put), b"OggS", {"Content-Type": "video/ogg"}))
    assert resp.code == 400


def _put_on_new_connection(site: Any, raw: bytes) -> tuple[Any, Any]:
    """Send a PUT without settling the clock: (channel, transport)."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    channel = site.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1234))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 1234))
    channel.makeConnection(transport)
    channel.dataReceived(raw)
    return channel, transport


def test_concurrent_puts_commit_in_one_transaction(tmp_path: Path) -> None:
    """Uploads finishing together are marked used by one transaction, and
    each answers 201 only after that commit; every file is then served whole."""
    server = make(tmp_path)
    alice = bind(server, "alice@localhost/a")
    site = site_for(server)
    writer = server.stores.upload.completions
    slots = [slot_urls(ask_slot(server, alice, 5, f"f{i}.bin", "application/octet-stream"))
             for i in range(3)]
    conns = [_put_on_new_connection(site, simple("PUT", path_of(put), b"abcd%d" % i))
             for i, (put, _) in enumerate(slots)]
    assert all(b"201" not in t.value() for _, t in conns)  # not before the commit
    batches = writer.batches
    server.clock.advance(0)
    assert writer.batches == batches + 1
    assert all(t.value().startswith(b"HTTP/1.1 201") for _, t in conns)
    for i, (_, get) in enumerate(slots):
        resp, _ = request(site, simple("GET", path_of(get)))
        assert resp.code == 200 and resp.body == b"abcd%d" % i


def test_client_gone_while_saving_still_installs_committed_file(tmp_path: Path) -> None:
    """A client that drops after sending the whole body: the slot is
    committed and the file installed, not deleted under a used slot."""
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    server = make(tmp_path)
    alice = bind(server, "alice@localhost/a")
    site = site_for(server)
    put, get = slot_urls(ask_slot(server, alice, 4, "v.ogg", "audio/ogg"))
    channel, _ = _put_on_new_connection(site, simple("PUT", path_of(put), b"opus"))
    channel.connectionLost(Failure(ConnectionDone()))
    server.clock.advance(0)
    resp, _ = request(site, simple("GET", path_of(get)))
    assert resp.code == 200 and resp.body == b"opus"
    assert os.listdir(tmp_path / "uploads" / "tmp") == []


def test_file_syncer_batches_and_reports_errors(tmp_path: Path) -> None:
    """With one job at a time, files queued while it runs go in the next
    job together; each file is closed; an fsync error fails only that
    file's Deferred."""
    from twisted.internet.defer import Deferred

    from chatbx_server.storage.upload import FileSyncer

    jobs: list[tuple[Any, Any, Deferred[Any]]] = []

    def run(fn: Any, arg: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        jobs.append((fn, arg, d))
        return d

    class Broken:
        closed = False

        def flush(self) -> None:
            pass

        def fileno(self) -> int:
            raise OSError(5, "EIO")

        def close(self) -> None:
            self.closed = True

    syncer = FileSyncer(run, jobs=1)
    files = [open(tmp_path / f"f{i}", "wb") for i in range(3)]
    broken = Broken()
    results: list[Any] = []
    for fh in (files[0], files[1], broken, files[2]):
        syncer.sync(fh).addBoth(results.append)
    assert len(jobs) == 1 and jobs[0][1] == [files[0]]
    fn, arg, d = jobs[0]
    d.callback(fn(arg))
    assert len(jobs) == 2 and jobs[1][1] == [files[1], broken, files[2]]
    fn, arg, d = jobs[1]
    d.callback(fn(arg))
    assert results[:2] == [None, None] and results[3] is None
    assert isinstance(results[2].value, OSError)
    assert all(fh.closed for fh in files) and broken.closed


def test_file_syncer_runs_jobs_in_parallel_and_shares_the_backlog(tmp_path: Path) -> None:
    """Up to ``jobs`` sync jobs run at once (one thread syncing a burst of
    files in turn held every 201 back for up to half a second); files that
    queue while all are busy are shared among the jobs as they free up, not
    handed to the first one; every file is synced and closed."""
    from twisted.internet.defer import Deferred

    from chatbx_server.storage.upload import FileSyncer

    jobs: list[tuple[Any, Any, Deferred[Any]]] = []

    def run(fn: Any, arg: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        jobs.append((fn, arg, d))
        return d

    syncer = FileSyncer(run, jobs=2)
    files = [open(tmp_path / f"f{i}", "wb") for i in range(6)]
    done: list[Any] = []
    for fh in files:
        syncer.sync(fh).addBoth(done.append)
    assert [arg for _, arg, _ in jobs] == [[files[0]], [files[1]]]
    assert syncer.running == 2
    fn, arg, d = jobs[0]
    d.callback(fn(arg))
    # Four queued, two jobs: the freed job takes its half, not all four.
    assert [arg for _, arg, _ in jobs[2:]] == [files[2:4]]
    fn, arg, d = jobs[1]
    d.callback(fn(arg))
    # Two left, one job free (the other still syncs files 2 and 3): one file.
    assert [arg for _, arg, _ in jobs[3:]] == [[files[4]]]
    fn, arg, d = jobs[2]
    d.callback(fn(arg))
    assert [arg for _, arg, _ in jobs[4:]] == [[files[5]]]
    for fn, arg, d in jobs[3:]:
        d.callback(fn(arg))
    assert done == [None] * 6 and syncer.running == 0
    assert all(fh.closed for fh in files)


def test_file_syncer_closes_files_when_the_job_cannot_run(tmp_path: Path) -> None:
    """A job that fails as a whole (the sync threads are stopped) fails its
    files' Deferreds and still closes the files: no descriptor is leaked."""
    from twisted.internet import defer

    from chatbx_server.storage.upload import FileSyncer

    syncer = FileSyncer(lambda fn, arg: defer.fail(OSError("upload store closed")))
    fh = open(tmp_path / "f", "wb")
    results: list[Any] = []
    syncer.sync(fh).addBoth(results.append)
    assert isinstance(results[0].value, OSError) and fh.closed
    assert syncer.running == 0


def test_upload_store_refuses_syncs_after_close(tmp_path: Path) -> None:
    """Once the store is closed (server stopping), a finished upload's sync
    fails at once (its PUT gets a 500) and its file is closed; no sync
    thread is started for it."""
    from twisted.internet.task import Clock

    from chatbx_server.storage.upload import UploadStore

    class ThreadedDb:
        threadless = False

    store = UploadStore(ThreadedDb(), Clock())  # type: ignore[arg-type]
    results: list[Any] = []
    store.close().addBoth(results.append)
    assert results == [None]
    fh = open(tmp_path / "body", "wb")
    store.syncer.sync(fh).addBoth(results.append)
    assert isinstance(results[1].value, OSError) and fh.closed
    assert store._sync_pool is None


def test_whole_file_download_over_tls_is_intact(tmp_path: Path) -> None:
    """A whole-file GET over real TLS (memory BIOs, paused and resumed like
    a TCP transport) arrives as headers then every byte in order; the
    transport is paused with about one chunk buffered (flat memory)."""
    from OpenSSL import SSL
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from chatbx_server.tls import TLSContexts, generate_self_signed

    server = make(tmp_path)
    alice = bind(server, "alice@localhost/a")
    site = site_for(server)
    size = 1_000_000 + 123
    payload = os.urandom(size)
    put, get = slot_urls(ask_slot(server, alice, size, "v.bin", "application/octet-stream"))
    resp, _ = request(site, simple("PUT", path_of(put), payload))
    assert resp.code == 201, resp.raw
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    generate_self_signed("localhost", cert, key)
    contexts = TLSContexts({"localhost": (str(cert), str(key))})
    factory = TLSMemoryBIOFactory(contexts.server_context_factory(), False, site, server.clock)
    tls = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1234))
    class Wire(StringTransport):
        """Pauses its producer past 64 KiB buffered, as FileDescriptor does."""

        paused = False
        big_writes = 0

        def write(self, data: bytes) -> None:
            super().write(data)
            self.big_writes += len(data) > 100_000
            if self.producer is not None and not self.paused and len(self.value()) > 65536:
                self.paused = True
                self.producer.pauseProducing()

    wire = Wire(peerAddress=IPv4Address("TCP", "192.0.2.1", 1234))
    wire.setTcpNoDelay = lambda enabled: None  # type: ignore[attr-defined]
    tls.makeConnection(wire)
    client = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
    client.set_connect_state()
    received = bytearray()
    peak = 0

    def exchange() -> None:
        nonlocal peak
        for _ in range(10000):
            try:
                out = client.bio_read(1 << 20)
            except SSL.WantReadError:
                out = b""
            if out:
                tls.dataReceived(out)
            server.clock.advance(0)  # the small-write aggregator
            data = wire.value()
            peak = max(peak, len(data))
            wire.clear()
            if data:
                client.bio_write(data)
            try:
                while True:
                    received.extend(client.recv(1 << 16))
            except (SSL.WantReadError, SSL.ZeroReturnError):
                pass
            # Like FileDescriptor.doWrite: the buffer went out, resume the producer.
            if wire.paused:
                wire.paused = False
                wire.producer.resumeProducing()
            elif not out and not data:
                return

    try:
        client.do_handshake()
    except SSL.WantReadError:
        pass
    exchange()
    client.send(simple("GET", path_of(get)))
    exchange()
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: %d" % size in head
    assert body == payload
    assert peak < 400_000  # a chunk or two, not the file
    # 128 KiB chunks go to TCP as one write of TLS records, not 16 KiB at a time.
    assert wire.big_writes >= 6


def test_download_stops_reading_when_the_client_goes(tmp_path: Path) -> None:
    """A client that disconnects mid-download: the file is closed and not
    read to its end into a dead connection."""
    from twisted.internet.error import ConnectionLost
    from twisted.python.failure import Failure

    from chatbx_server.http import upload as upload_http

    server = make(tmp_path)
    alice = bind(server, "alice@localhost/a")
    site = site_for(server)
    size = 1_000_000
    put, get = slot_urls(ask_slot(server, alice, size, "big.bin", "application/octet-stream"))
    resp, _ = request(site, simple("PUT", path_of(put), os.urandom(size)))
    assert resp.code == 201
    producers: list[Any] = []
    original = upload_http._FileProducer.start

    def start(self: Any) -> None:
        producers.append(self)
        self.pauseProducing()  # a full socket: nothing more until resumed

    upload_http._FileProducer.start = start  # type: ignore[method-assign]
    try:
        channel, transport = _put_on_new_connection(site, simple("GET", path_of(get)))
    finally:
        upload_http._FileProducer.start = original  # type: ignore[method-assign]
    [producer] = producers
    producer.request.registerProducer(producer, True)
    fh = producer.fileObject
    reads: list[int] = []

    class Counting:
        def read(self, n: int) -> bytes:
            reads.append(n)
            return bytes(fh.read(n))

        def close(self) -> None:
            fh.close()

    producer.fileObject = Counting()
    channel.connectionLost(Failure(ConnectionLost()))
    producer.resumeProducing()  # a late resume after the connection is gone
    assert reads == [] and fh.closed


def test_spare_body_files_are_made_ahead_and_removed_at_close(tmp_path: Any) -> None:
    """Upload bodies go into files made earlier in a thread (no file creation on
    the reactor); with none ready one is made on the spot; close() removes the
    unused ones, also those a late thread job brings."""
    from twisted.internet import defer

    from chatbx_server.storage.upload import SpareBodyFiles

    jobs: list[tuple[Any, tuple[Any, ...], defer.Deferred]] = []

    def run(fn: Any, *args: Any) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        jobs.append((fn, args, d))
        return d

    def finish_job() -> None:
        fn, args, d = jobs.pop(0)
        d.callback(fn(*args))

    spares = SpareBodyFiles(str(tmp_path), run, spare=3)
    spares.fill()
    assert len(jobs) == 1 and list(tmp_path.iterdir()) == []
    finish_job()
    assert len(list(tmp_path.iterdir())) == 3
    fh, path = spares.take()  # a spare: nothing made now
    assert len(list(tmp_path.iterdir())) == 3 and os.path.dirname(path) == str(tmp_path)
    fh.write(b"body")
    fh.close()
    assert len(jobs) == 1  # one more asked for, in the background
    taken = [path]
    for _ in range(2):
        fh, path = spares.take()
        fh.close()
        taken.append(path)
    fh, path = spares.take()  # none ready: made on the spot
    fh.close()
    taken.append(path)
    assert len(list(tmp_path.iterdir())) == 4 and len(jobs) == 1
    spares.close()
    finish_job()  # arrives after close: its file is removed
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(os.path.basename(p) for p in taken)
