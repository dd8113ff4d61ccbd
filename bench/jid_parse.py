"""Micro benchmark of JID parsing (chatbx_server.xmpp.jid): one line per case.

    .venv/bin/python bench/jid_parse.py

Cases: a cache hit (the router's hot path: the same address again), an
uncached parse of typical ASCII and non-ASCII JIDs, and the memory a full
parse cache holds when every entry is as large as the cache admits.
"""

from __future__ import annotations

import gc
import inspect
import timeit
import tracemalloc

from chatbx_server.xmpp import jid as jidmod
from chatbx_server.xmpp.jid import JID

CASES = {
    "ascii full": "alice@example.org/Conversations.AbCd",
    "ascii bare": "bob@chat.example.net",
    "non-ascii full": "J\u00fcrgen@b\u00fccher.example/Ger\u00e4t",
}


def _uncached():
    """A parse function that bypasses the cache, on old and new code."""
    if "cache" in inspect.signature(JID.parse).parameters:
        return lambda text: JID.parse(text, cache=False)
    return jidmod._parse.__wrapped__  # the lru_cache'd function before the change


def per_call(fn, arg, number=20000) -> float:
    best = min(timeit.repeat(lambda: fn(arg), number=number, repeat=5))
    return best / number * 1e6


def largest(limit: int, i: int) -> str:
    """The longest valid JID of at most ``limit`` characters, unique for ``i``."""
    third = min(1023, (limit - 2) // 3)
    local = f"u{i}".ljust(third, "l")
    labels, domain = [], ""
    while len(domain) + 64 <= third:
        labels.append("d" * 63)
        domain = ".".join(labels)
    domain = domain or "d" * max(1, min(63, third))
    resource = "r" * min(1023, limit - len(local) - len(domain) - 2)
    return f"{local}@{domain}/{resource}"


def cache_memory() -> tuple[int, float]:
    """Entries and MiB held by the cache filled with the largest JIDs it admits."""
    limit = getattr(jidmod, "CACHE_MAX_TEXT", 3071)
    size = getattr(jidmod, "CACHE_SIZE", 65536)
    jidmod.clear_cache() if hasattr(jidmod, "clear_cache") else jidmod._parse.cache_clear()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    n = min(size, 20000)
    for i in range(n):
        JID.parse(largest(limit, i))
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    used = sum(s.size_diff for s in after.compare_to(before, "filename"))
    per_entry = used / n
    jidmod.clear_cache() if hasattr(jidmod, "clear_cache") else jidmod._parse.cache_clear()
    return size, per_entry * size / 2**20


def main() -> None:
    uncached = _uncached()
    for name, text in CASES.items():
        JID.parse(text)
        print(f"jid {name:15} hit      {per_call(JID.parse, text):6.2f} us/parse")
        print(f"jid {name:15} uncached {per_call(uncached, text):6.2f} us/parse")
    entries, mib = cache_memory()
    print(f"jid cache worst case: {entries} entries, {mib:.0f} MiB")


if __name__ == "__main__":
    main()
