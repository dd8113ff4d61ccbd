"""BOSH (XEP-0124/0206) bounds: wait/hold capped, rid window, unknown sid, inactivity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.unit.fakes import make_server
from tests.unit.httpfakes import request, simple, site_for

BIND = "http://jabber.org/protocol/httpbind"


def make(tmp_path: Path) -> Any:
    server = make_server(modules=["message", "disco"], config_text=(
        f'data_dir = "{tmp_path}"\n[listen]\nhttp = "127.0.0.1:5443"\n[http]\n'
        "bosh_max_wait = 30\nbosh_max_hold = 1\nbosh_inactivity = 20\n"))
    return server, site_for(server)


def post(site: Any, body: str, close: bool = True) -> Any:
    return request(site, simple("POST", "/http-bind", body.encode(),
                                {"Content-Type": "text/xml"}), close=close)


def create(site: Any) -> tuple[str, str]:
    resp, _ = post(site, f"<body xmlns='{BIND}' rid='10' to='localhost' wait='999' hold='5'/>")
    text = resp.body.decode()
    return text.split("sid='")[1].split("'")[0], text


def test_session_creation_caps_wait_and_hold(tmp_path: Path) -> None:
    """The client's wait and hold are cut to the configured maxima; requests = hold + 1;
    the response carries the stream features (SASL mechanisms)."""
    server, site = make(tmp_path)
    sid, text = create(site)
    assert "wait='30'" in text and "hold='1'" in text and "requests='2'" in text
    assert "inactivity='20'" in text and "mechanisms" in text and len(sid) == 32


def test_unknown_sid_and_rid_out_of_window(tmp_path: Path) -> None:
    """An unknown sid and a rid beyond the window end with item-not-found."""
    server, site = make(tmp_path)
    resp, _ = post(site, f"<body xmlns='{BIND}' rid='11' sid='nope'/>")
    assert b"type='terminate'" in resp.body and b"item-not-found" in resp.body
    sid, _ = create(site)
    resp, _ = post(site, f"<body xmlns='{BIND}' rid='99' sid='{sid}'/>")
    assert b"item-not-found" in resp.body
    resp, _ = post(site, f"<body xmlns='{BIND}' rid='11' sid='{sid}'/>")
    assert b"item-not-found" in resp.body  # the session is gone


def test_held_request_answered_after_wait_and_inactivity_ends_session(tmp_path: Path) -> None:
    """An empty poll is held for 'wait' seconds and then answered empty; a
    session without requests for 'inactivity' seconds is closed."""
    server, site = make(tmp_path)
    sid, _ = create(site)
    resp, transport = post(site, f"<body xmlns='{BIND}' rid='11' sid='{sid}'/>", close=False)
    assert resp.code == 0  # held
    server.clock.advance(30)
    assert b"<body" in transport.value() and b"terminate" not in transport.value()
    bosh = site.resource.children[b"http-bind"]
    assert sid in bosh.sessions
    server.clock.advance(21)
    assert sid not in bosh.sessions and bosh.per_ip == {}
