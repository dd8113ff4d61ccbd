"""Micro-benchmark: serializing what the server writes to a client stream.

One line per scenario: bytes written and microseconds per element, for
``Element.toXml()`` (what c2s used before the stream serializer), domish's
serializer told the stream's scope, and chatbx's StreamSerializer.

    python bench/serialize.py [--number N]
"""

from __future__ import annotations

import argparse
import timeit

from twisted.words.xish import domish

from chatbx_server.xmpp import ns
from chatbx_server.xmpp.serializer import CLIENT_STREAMS
from chatbx_server.xmpp.stanzas import StreamError, parse_stanza


def message() -> domish.Element:
    """A chat message as a client sends it, parsed (what the router forwards)."""
    return parse_stanza(
        "<message from='alice@localhost/phone' to='bob@localhost' type='chat' id='a1b2c3d4'>"
        "<body>Hi Bob, are we still on for lunch at 12? I'll bring the &lt;good&gt; coffee.</body>"
        "<active xmlns='http://jabber.org/protocol/chatstates'/>"
        "<origin-id xmlns='urn:xmpp:sid:0' id='5f0c1e6b-4d8e-4a52-9b1c-0f3e2d1a7c66'/>"
        "</message>")


def built_message() -> domish.Element:
    """A message built in code (an error bounce, a server notice)."""
    msg = domish.Element((ns.CLIENT, "message"))
    msg["from"], msg["to"], msg["type"], msg["id"] = "localhost", "bob@localhost/pc", "chat", "n1"
    msg.addElement("body", content="The server restarts in 5 minutes.")
    return msg


def presence() -> domish.Element:
    return parse_stanza(
        "<presence from='alice@localhost/phone' to='bob@localhost/pc'>"
        "<priority>5</priority><status xml:lang='en'>In a meeting</status>"
        "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://gajim.org'"
        " ver='q07IKJEyjvHSyhy//CH0CxmKi8w='/></presence>")


def roster_push() -> domish.Element:
    iq = domish.Element((ns.CLIENT, "iq"))
    iq["type"], iq["id"], iq["to"] = "set", "push7", "alice@localhost/phone"
    query = iq.addElement((ns.ROSTER, "query"))
    query["ver"] = "42"
    item = query.addElement("item")
    item["jid"], item["name"], item["subscription"] = "bob@localhost", "Bob", "both"
    item.addElement("group", content="Friends")
    return iq


def features() -> domish.Element:
    feats = domish.Element((ns.STREAMS, "features"))
    feats.addElement((ns.BIND, "bind"))
    feats.addElement((ns.SESSION, "session")).addElement("optional")
    return feats


SCENARIOS = [
    ("message (parsed, forwarded)", message),
    ("message (built in code)", built_message),
    ("presence with caps", presence),
    ("roster push", roster_push),
    ("stream features", features),
    ("stream error", lambda: StreamError("connection-timeout", "idle").element()),
]

SCOPE = [("stream",)]
PREFIXES = {ns.STREAMS: "stream"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args()
    ways = {
        "toXml": lambda e: e.toXml(),
        "domish+scope": lambda e: e.toXml(prefixes=PREFIXES, prefixesInScope=SCOPE,
                                          defaultUri=ns.CLIENT),
        "StreamSerializer": CLIENT_STREAMS.serialize,
    }
    for name, make in SCENARIOS:
        element = make()
        cells = []
        for label, fn in ways.items():
            size = len(fn(element).encode())
            best = min(timeit.repeat(lambda: fn(element), number=args.number, repeat=5))
            cells.append(f"{label} {size} B {best / args.number * 1e6:.2f} us")
        print(f"{name:30s} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
