"""Socket options for XML stream connections.

TCP_NODELAY (RFC 1122 §4.2.3.4 allows turning Nagle's algorithm off): an
XML stream writes many small segments (a stanza, then the XEP-0198 ``<r/>``,
then the next stanza of a group chat fan-out); with Nagle on, a small
write waits for the ACK of the previous one, and with the peer's delayed
ACK that is tens of milliseconds per round. Prosody and ejabberd set it
on their client and server connections too.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from chatbx_server.logs import log_observer

log = Logger(observer=log_observer)


def set_no_delay(transport: Any) -> bool:
    """Turn Nagle's algorithm off on ``transport``'s TCP socket.

    A TLS transport (``TLSMemoryBIOProtocol``) passes the call on to the TCP
    transport under it; transports without a socket (tests, WebSocket
    adapters) are left alone. Returns whether the option was set.
    """
    setter = getattr(transport, "setTcpNoDelay", None)
    if setter is None:
        return False
    try:
        setter(True)
    except OSError as exc:  # the socket went away already
        log.debug("TCP_NODELAY not set: {error}", error=exc)
        return False
    return True
