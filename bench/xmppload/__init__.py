"""xmppload: a raw asyncio XMPP load generator for chatbx's benchmarks (bench/README.md)."""
