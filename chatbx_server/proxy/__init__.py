"""The SOCKS5 Bytestreams proxy (XEP-0065): the TCP side (socks5.py); the
XMPP side is the proxy65 feature (chatbx_server/features/proxy65.py)."""
