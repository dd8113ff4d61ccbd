"""Client-to-server streams (RFC 6120): negotiation, SASL, bind, sessions."""
