"""HTTP File Upload (XEP-0363) against the real server: slixmpp's xep_0363
uploads, another client downloads the same bytes over HTTPS; Range, the
size limit, expired URLs and path traversal."""

from __future__ import annotations

import http.client
import os
import ssl
from typing import Any
from urllib.parse import urlsplit

import pytest

from conftest import run, slix_close, slix_login

pytestmark = pytest.mark.integration

LIMITS = "[modules]\nenabled = [\"message\", \"roster\", \"presence\", \"disco\", \"ping\", \"upload\"]\n" \
         "[modules.upload]\nmax_file_size = 300000\nslot_lifetime = 2\n"


def fetch(server: Any, method: str, url: str, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTPS request to the server's HTTP port (certificate not checked)."""
    parts = urlsplit(url)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", server.http_port, context=context, timeout=10)
    try:
        path = parts.path + ("?" + parts.query if parts.query else "")
        conn.request(method, path or "/", body=body, headers={"Host": parts.netloc, **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_slixmpp_uploads_other_client_downloads(chatbx_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """slixmpp (xep_0363, aiohttp over HTTPS) uploads a photo; a plain HTTPS
    client downloads the same bytes with the right headers; a Range request
    returns the slice; traversal is 404; an oversized slot is refused with
    the limit; a PUT after the URL expired is refused."""
    server = chatbx_server(extra_config=LIMITS)
    # aiohttp verifies certificates: trust the server's self-signed one.
    monkeypatch.setenv("SSL_CERT_FILE", str(server.certificate))
    photo = os.urandom(200000)

    async def scenario() -> None:
        alice = await slix_login(server, "alice@localhost/phone")
        alice.register_plugin("xep_0030")
        alice.register_plugin("xep_0363")
        try:
            import io

            url = await alice.plugin["xep_0363"].upload_file("holiday.jpg", size=len(photo),
                                                      content_type="image/jpeg",
                                                      input_file=io.BytesIO(photo), timeout=10)
            assert url.startswith(f"https://localhost:{server.http_port}/upload/")
            code, headers, body = fetch(server, "GET", url)
            assert code == 200 and body == photo
            assert headers["content-type"] == "image/jpeg"
            assert headers["content-disposition"].startswith('inline; filename="holiday.jpg"')
            assert headers["access-control-allow-origin"] == "*" and "etag" in headers
            code, headers, body = fetch(server, "GET", url, headers={"Range": "bytes=1000-1999"})
            assert code == 206 and body == photo[1000:2000]
            for path in ("/upload/../chatbx.toml", "/upload/%2e%2e/%2e%2e/chatbx.toml",
                         "/upload/", "/../data/chatbx.sqlite", "/upload/tmp/"):
                assert fetch(server, "GET", f"https://localhost{path}")[0] == 404, path
            from slixmpp.plugins.xep_0363.http_upload import FileTooBig

            with pytest.raises(FileTooBig):
                await alice.plugin["xep_0363"].upload_file("big.bin", size=300001,
                                                    input_file=io.BytesIO(b""), timeout=10)
            slot = await alice.plugin["xep_0363"].request_slot(alice.plugin["xep_0363"].upload_service,
                                                        "late.txt", 4, "text/plain", timeout=10)
            import asyncio

            await asyncio.sleep(3)  # past slot_lifetime: the PUT URL has expired
            code, _, body = fetch(server, "PUT", slot["http_upload_slot"]["put"]["url"], b"late",
                                  {"Content-Type": "text/plain"})
            assert code == 403 and b"expired" in body
        finally:
            await slix_close(alice)

    run(scenario())
