"""Federation: server-to-server streams (RFC 6120), dialback (XEP-0220),
SASL EXTERNAL (XEP-0178), SRV and direct TLS (XEP-0368)."""
