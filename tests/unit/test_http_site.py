"""The HTTP site: host-meta (XEP-0156), /metrics access, proxies and body limits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.unit.fakes import make_server
from tests.unit.httpfakes import request, simple, site_for


def make(tmp_path: Path, http: str = "") -> Any:
    return make_server(modules=["message", "disco"], config_text=(
        f'data_dir = "{tmp_path}"\n[listen]\nhttp = "127.0.0.1:5443"\n[http]\n{http}\n'))


def test_host_meta_xml_and_json(tmp_path: Path) -> None:
    """Both host-meta forms name the WebSocket and BOSH URLs of the domain (XEP-0156 §3)."""
    site = site_for(make(tmp_path))
    resp, _ = request(site, simple("GET", "/.well-known/host-meta"))
    assert resp.code == 200 and resp.headers["content-type"] == "application/xrd+xml"
    assert b"rel='urn:xmpp:alt-connections:websocket' href='wss://localhost:5443/xmpp-websocket'" in resp.body
    assert b"href='https://localhost:5443/http-bind'" in resp.body
    resp, _ = request(site, simple("GET", "/.well-known/host-meta.json"))
    links = {l["rel"]: l["href"] for l in json.loads(resp.body)["links"]}
    assert links["urn:xmpp:alt-connections:xbosh"] == "https://localhost:5443/http-bind"
    assert resp.headers["access-control-allow-origin"] == "*"
    assert request(site, simple("GET", "/.well-known/other"))[0].code == 404


def test_external_url_and_disabled_services(tmp_path: Path) -> None:
    """external_url (with {domain}) is what host-meta announces; a disabled
    service is not announced."""
    site = site_for(make(tmp_path, 'external_url = "https://chat.{domain}/x"\nbosh = false'))
    resp, _ = request(site, simple("GET", "/.well-known/host-meta.json"))
    links = json.loads(resp.body)["links"]
    assert links == [{"rel": "urn:xmpp:alt-connections:websocket",
                      "href": "wss://chat.localhost/x/xmpp-websocket"}]


def test_metrics_only_for_allowed_or_token(tmp_path: Path) -> None:
    """/metrics: 403 from elsewhere, 200 from an allowed address or with the token."""
    site = site_for(make(tmp_path, 'metrics_token = "s3cret"'))
    assert request(site, simple("GET", "/metrics"))[0].code == 403
    resp, _ = request(site, simple("GET", "/metrics"), peer="127.0.0.1")
    assert resp.code == 200 and b"chatbx_sessions" in resp.body
    resp, _ = request(site, simple("GET", "/metrics", headers={"Authorization": "Bearer s3cret"}))
    assert resp.code == 200
    resp, _ = request(site, simple("GET", "/metrics", headers={"Authorization": "Bearer nope"}))
    assert resp.code == 403


def test_forwarded_for_only_from_trusted_proxy(tmp_path: Path) -> None:
    """X-Forwarded-For is believed from a trusted proxy only: a client that
    forges it is not let into /metrics; the proxy's forwarded address is used."""
    site = site_for(make(tmp_path, 'trusted_proxies = ["10.0.0.1"]\nmetrics_allow = ["192.0.2.9"]'))
    forged = simple("GET", "/metrics", headers={"X-Forwarded-For": "192.0.2.9"})
    assert request(site, forged, peer="203.0.113.5")[0].code == 403
    assert request(site, forged, peer="10.0.0.1")[0].code == 200


def test_plain_http_only_for_the_proxy(tmp_path: Path) -> None:
    """With tls = false, requests not from a trusted proxy get 403."""
    site = site_for(make(tmp_path, 'tls = false\ntrusted_proxies = ["10.0.0.1"]\n'
                                   'external_url = "https://chat.example"'))
    assert request(site, simple("GET", "/.well-known/host-meta"))[0].code == 403
    assert request(site, simple("GET", "/.well-known/host-meta"), peer="10.0.0.1")[0].code == 200


def test_large_bodies_refused_before_reading(tmp_path: Path) -> None:
    """A body over max_request_body is refused at the headers (413) and the
    connection closed; a chunked body is cut off once it passes the limit."""
    site = site_for(make(tmp_path, "max_request_body = 1000"))
    resp, transport = request(site, simple("POST", "/http-bind", None,
                                           {"Content-Length": "10485760"}))
    assert resp.code == 413 and transport.disconnecting
    chunked = (b"POST /http-bind HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"400\r\n" + b"x" * 1024 + b"\r\n")
    resp, transport = request(site, chunked)
    assert resp.code == 413 and transport.disconnecting


def test_http_listener_backlog_takes_a_burst_of_connections() -> None:
    """The HTTP listener listens with LISTEN_BACKLOG, not Twisted's 50: 200
    clients connecting at once are queued, not dropped and retried."""
    from types import SimpleNamespace

    from twisted.application import service
    from twisted.internet.testing import MemoryReactor

    from chatbx_server.http.server import LISTEN_BACKLOG
    from chatbx_server.tap import Listeners

    reactor = MemoryReactor()
    top = service.MultiService()
    Listeners(reactor).add(top, "http", SimpleNamespace(host="127.0.0.1", port=5443), object(),
                           backlog=LISTEN_BACKLOG)
    top.startService()
    [(port, _, backlog, interface)] = reactor.tcpServers
    assert (port, interface) == (5443, "127.0.0.1")
    assert backlog == LISTEN_BACKLOG >= 200
