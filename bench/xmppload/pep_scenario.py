"""PEP fan-out (XEP-0163): a user with online mutual contacts publishes items.

Every contact announces entity capabilities (XEP-0115) with ``NODE+notify``
for the benchmark nodes and answers the server's disco#info, as a real
client does; the hub publishes avatar-sized and OMEMO-bundle-sized items,
at most ``window`` items in flight (an item is in flight until the last
contact has its notification). Figures per size: notifications delivered
per second, and p50/p99 of the time from publishing an item until the last
contact has it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import statistics
import time

from . import client
from .client import T_IQ, T_MESSAGE, El, LoginError, XmppConnection
from .scenarios import (T_ROSTER_QUERY, Target, _subscribe_all, close_all, login_many, percentile,
                        result)

NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_EVENT = "http://jabber.org/protocol/pubsub#event"
T_EVENT = NS_EVENT + " event"
T_ITEMS = NS_EVENT + " items"
T_ITEM = NS_EVENT + " item"
#: (figure name, node, payload bytes): a small avatar's data, an OMEMO bundle
SIZES = (("avatar", "urn:bench:pep:avatar", 8 * 1024), ("bundle", "urn:bench:pep:bundle", 4 * 1024))
IDENTITY = ("client", "pc", "", "bench")
FEATURES = sorted([NS_DISCO_INFO, "http://jabber.org/protocol/caps"]
                  + [node + "+notify" for _, node, _ in SIZES])
CAPS_NODE = "https://chatbx.example/bench"


def caps_ver() -> str:
    """XEP-0115 §5.1 verification string hash of IDENTITY and FEATURES."""
    text = "/".join(IDENTITY) + "<" + "".join(f + "<" for f in FEATURES)
    return base64.b64encode(hashlib.sha1(text.encode()).digest()).decode()


def caps_presence() -> str:
    return (f"<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='{CAPS_NODE}' "
            f"ver='{caps_ver()}'/></presence>")


def answer_iq(conn: XmppConnection, el: El) -> bool:
    """Answer disco#info queries with the caps features, other gets/sets with a result."""
    if el.tag != T_IQ or el.attrs.get("type") not in ("get", "set"):
        return False
    iq_id = client.xml_escape(el.attrs.get("id", ""))
    frm = client.xml_escape(el.attrs.get("from", ""))
    query = el.find(NS_DISCO_INFO + " query")
    if query is not None:
        node = client.xml_escape(query.attrs.get("node", ""))
        cat, typ, _, name = IDENTITY
        feats = "".join(f"<feature var='{f}'/>" for f in FEATURES)
        conn.send(f"<iq type='result' id='{iq_id}' to='{frm}'><query xmlns='{NS_DISCO_INFO}' node='{node}'>"
                  f"<identity category='{cat}' type='{typ}' name='{name}'/>{feats}</query></iq>".encode())
    else:
        conn.send(f"<iq type='result' id='{iq_id}' to='{frm}'/>".encode())
    return True


async def pep_fanout(target: Target, contacts: int = 100, base: int = 10000, items: int = 200,
                     window: int = 4, concurrency: int = 100, setup_timeout: float = 120.0,
                     item_timeout: float = 10.0) -> list[dict]:
    hub_bare = target.bare(base)
    contact_bares = {target.bare(base + 1 + i) for i in range(contacts)}
    conns, errors = await login_many(target, range(base + 1, base + 1 + contacts), concurrency,
                                     setup_timeout, roster=True)
    hub = None
    try:
        hub = await target.login(base, roster=True, timeout=60.0)
        roster: El = hub.user_data  # type: ignore[assignment]
        both: set[str] = set()
        query = roster.find(T_ROSTER_QUERY) if roster is not None else None
        for item in (query.children if query is not None else []):
            if item.attrs.get("subscription") == "both":
                both.add(item.attrs.get("jid", ""))
        missing = contact_bares - both
        if missing:
            await _subscribe_all(hub, conns, hub_bare, missing, both, setup_timeout)
        if not contact_bares <= both:
            raise LoginError(f"roster setup incomplete: {len(contact_bares - both)} of {contacts} not 'both'")

        state: dict = {"sent": {}, "done": {}, "counts": {}, "errors": 0, "duplicates": 0}

        def contact_handler(conn: XmppConnection, el: El) -> None:
            if answer_iq(conn, el) or el.tag != T_MESSAGE:
                return
            event = el.find(T_EVENT)
            items_el = event.find(T_ITEMS) if event is not None else None
            if items_el is None:
                return
            for item in items_el.children:
                item_id = item.attrs.get("id", "")
                if item_id not in state["sent"]:
                    continue  # last items sent at login, earlier runs
                got = state["counts"].setdefault(item_id, set())
                if id(conn) in got:
                    state["duplicates"] += 1  # a second copy to the same resource
                    continue
                got.add(id(conn))
                if len(got) == len(conns):
                    state["done"][item_id] = time.monotonic_ns() - state["sent"][item_id]

        def hub_handler(conn: XmppConnection, el: El) -> None:
            if answer_iq(conn, el):
                return
            if el.tag == T_IQ and el.attrs.get("type") == "error":
                state["errors"] += 1

        for conn in conns:
            conn.on_stanza = contact_handler
            conn.inbox.clear()
        hub.on_stanza = hub_handler
        hub.inbox.clear()
        # Caps only now, with the handlers that answer disco#info in place
        # (the roster setup's handlers answer every query with an empty result).
        hub.send(caps_presence().encode())
        for conn in conns:
            conn.send(caps_presence().encode())
        await asyncio.sleep(1.0)  # caps resolved, last items delivered

        out: list[dict] = []
        for label, node, size in SIZES:
            blob = base64.b64encode(os.urandom(size * 3 // 4)).decode()
            state["sent"], state["done"], state["counts"], state["duplicates"] = {}, {}, {}, 0
            t0 = time.monotonic()
            deadline = t0 + item_timeout * max(1, items // window)
            published = 0
            while (published < items or len(state["done"]) < published) and time.monotonic() < deadline:
                in_flight = published - len(state["done"])
                while published < items and in_flight < window:
                    item_id = f"{label}-{published}-{os.urandom(3).hex()}"
                    state["sent"][item_id] = time.monotonic_ns()
                    hub.send(f"<iq type='set' id='{item_id}'><pubsub xmlns='http://jabber.org/protocol/pubsub'>"
                             f"<publish node='{node}'><item id='{item_id}'><blob xmlns='urn:bench'>{blob}</blob>"
                             "</item></publish></pubsub></iq>".encode())
                    published += 1
                    in_flight += 1
                await asyncio.sleep(0.0005)
            elapsed = time.monotonic() - t0
            delivered = sum(len(v) for v in state["counts"].values())
            times_ms = [v / 1e6 for v in state["done"].values()]
            expected = published * len(conns)
            out.append(result(f"pep_fanout_{label}", target, delivered / elapsed if elapsed else 0.0,
                              "notifications/s", contacts=len(conns), items=published, payload_bytes=size,
                              sent=expected, received=delivered, lost=expected - delivered,
                              p50_ms=round(percentile(times_ms, 50), 3),
                              p99_ms=round(percentile(times_ms, 99), 3),
                              median_ms=round(statistics.median(times_ms), 3) if times_ms else None,
                              duplicates=state["duplicates"], publish_errors=state["errors"],
                              login_failures=len(errors)))
            await asyncio.sleep(0.3)
        return out
    finally:
        close_all(conns)
        if hub is not None:
            hub.close()
        await asyncio.sleep(0.5)
