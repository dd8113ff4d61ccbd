"""XMPP building blocks shared by every part of the server."""
