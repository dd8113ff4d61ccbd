"""Baseline HTTPS file servers for bench/http_compare: what curl reaches on
this machine without chatbx, with the same certificate and client.

    python3 -m xmppload.httpbase --impl stdlib|twisted --root DIR --port N --cert C --key K

``stdlib``: ``http.server.ThreadingHTTPServer`` (``python -m http.server``)
with TLS, plus PUT streamed to a file in 64 KiB chunks. ``twisted``:
twisted.web's ``static.File`` (the resource chatbx itself serves downloads
with) on one reactor thread, plus PUT into the request's body file (what
twisted.web buffers by default), renamed into place. Both bind 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import ssl
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Handler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        path = self.translate_path(self.path)
        tmp = path + ".part"
        with open(tmp, "wb") as out:
            left = length
            while left > 0:
                chunk = self.rfile.read(min(65536, left))
                if not chunk:
                    break
                out.write(chunk)
                left -= len(chunk)
        os.replace(tmp, path)
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _TLSServer(ThreadingHTTPServer):
    """TLS per connection in the handler's thread: wrapping the listening
    socket would run every handshake in the accept loop, one at a time."""

    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext) -> None:
        self.context = context
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request = self.context.wrap_socket(request, server_side=True)
        super().finish_request(request, client_address)


def serve_stdlib(root: str, port: int, context: ssl.SSLContext) -> None:
    os.chdir(root)
    _TLSServer(("127.0.0.1", port), context).serve_forever()


def serve_twisted(root: str, port: int, cert: str, key: str) -> None:
    from twisted.internet import endpoints, reactor, ssl as tssl
    from twisted.web import server, static

    class Uploads(static.File):
        def render_PUT(self, request: Any) -> bytes:
            name = os.path.basename(request.path.decode())
            request.content.seek(0)
            with open(os.path.join(root, name + ".part"), "wb") as out:
                shutil.copyfileobj(request.content, out, 65536)
            os.replace(os.path.join(root, name + ".part"), os.path.join(root, name))
            request.setResponseCode(201)
            return b""

        def getChild(self, path: bytes, request: Any) -> Any:
            if request.method == b"PUT":
                return self
            return super().getChild(path, request)

    with open(cert) as fh:
        pem = fh.read()
    with open(key) as fh:
        pem += fh.read()
    options = tssl.PrivateCertificate.loadPEM(pem).options()
    site = server.Site(Uploads(root))
    site.noisy = False
    # The same listen backlog as the stdlib baseline (request_queue_size) and chatbx.
    endpoints.SSL4ServerEndpoint(reactor, port, options, backlog=1024, interface="127.0.0.1").listen(site)
    reactor.run()  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", choices=("stdlib", "twisted"), required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    args = ap.parse_args()
    if args.impl == "stdlib":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        serve_stdlib(args.root, args.port, context)
    else:
        serve_twisted(args.root, args.port, args.cert, args.key)


if __name__ == "__main__":
    sys.exit(main())
