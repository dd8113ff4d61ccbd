"""Outgoing s2s streams: the originating role (RFC 6120, XEP-0178, XEP-0220).

The stream opens to the remote domain, upgrades with STARTTLS (required
unless the operator lists the domain; direct TLS targets start encrypted,
XEP-0368), checks the remote's certificate, then authenticates us: SASL
EXTERNAL when offered (the remote accepted our certificate), else
dialback with a key made for the remote's stream id. It also carries our
``db:verify`` questions (receiving role) to the remote's authoritative
server as soon as the stream is encrypted, authenticated or not, as
Prosody and ejabberd expect. Once authenticated it is "ready": the
manager sends the queued stanzas, in order.

When the remote offers bidirectional streams (XEP-0288) we ask for one
before authenticating; once ready, the remote may then send us stanzas on
this stream, from the domain we connected to and to the domain we
authenticated as.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.protocol import Factory
from twisted.words.xish import domish

from chatbx_server.s2s.dialback import NS_DIALBACK, NS_DIALBACK_FEATURE, dialback_error, domain_or_none, make_key
from chatbx_server.s2s.dns import Target
from chatbx_server.s2s.stream import NS_BIDI, NS_BIDI_FEATURE, STANZAS, S2SStream, header, major_version
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.stanzas import StreamError

if TYPE_CHECKING:
    from chatbx_server.s2s.manager import OutRoute, S2SManager

# States, in order.
HEADER, FEATURES, STARTTLS, SASL, DIALBACK, READY, CLOSED = range(7)
STATE_NAMES = ("header", "features", "starttls", "sasl", "dialback", "ready", "closed")


class S2SOutStream(S2SStream):
    """One connection we opened to another server for (local, remote)."""

    direction = "out"

    def __init__(self, manager: "S2SManager", route: "OutRoute", target: Target) -> None:
        super().__init__(manager)
        self.route = route
        self.target = target
        self.local = route.local
        self.remote = route.remote
        self.secure = target.direct_tls
        self.state = HEADER
        self.dialback_offered = False
        #: db:verify elements waiting for the stream to be usable for them
        self.verify_ready = False
        #: why the stream failed, for the manager's bounce
        self.failure: Optional[tuple[str, bool]] = None
        self.was_ready = False

    @property
    def ready(self) -> bool:
        return self.state == READY and not self.closed

    def connectionMade(self) -> None:
        super().connectionMade()
        self.manager.outgoing_connected(self)
        self.send_header()

    def send_header(self) -> None:
        self.send_raw(header(self.local, self.remote))
        self.header_sent = True

    def lost(self, reason: str) -> None:
        self.state = CLOSED
        self.manager.outgoing_closed(self, self.failure or (reason, False))

    def fail(self, condition: str, text: str, timeout: bool = False) -> None:
        if self.failure is None:
            self.failure = (text, timeout)
        self.manager.log_event(self, "failed", reason=text)
        self.close_stream(condition, text)

    def peer_error(self, reason: str) -> None:
        if self.failure is None:
            self.failure = (reason, "connection-timeout" in reason)

    def _give_up(self, text: str, condition: str = "policy-violation") -> None:
        self.fail(condition, text)

    # -- header and features ------------------------------------------------
    def on_stream_start(self, root: domish.Element) -> None:
        if major_version(root.getAttribute("version")) < 1:
            raise StreamError("unsupported-version", "version 1.0 (RFC 6120) is required")
        stream_id = root.getAttribute("id")
        if not stream_id:
            raise StreamError("invalid-xml", "no stream id")
        self.stream_id = stream_id
        sender = root.getAttribute("from")
        if sender is not None and domain_or_none(sender) != self.remote:
            raise StreamError("invalid-from", "the stream is not from the domain we asked for")
        self.dialback_offered = NS_DIALBACK in root.localPrefixes.values()
        self.state = FEATURES

    def _on_element(self, element: domish.Element) -> None:
        uri, name = element.uri, element.name
        if uri == NS_DIALBACK and name == "verify":
            self._on_db_verify_answer(element)
            return
        state = self.state
        if self.bidi and uri == ns.CLIENT and name in STANZAS:
            if state != READY:
                raise StreamError("not-authorized", "not authenticated yet")
            # XEP-0288 §2.2: from the domain we connected to, to the one we are.
            self.accept_stanza(element, (self.remote or "",), self.local)
            return
        if self.bidi and state == READY and uri == NS_DIALBACK and name == "result" \
                and element.getAttribute("type") is None:
            self._refuse_piggyback(element)
            return
        if state == FEATURES and uri == ns.STREAMS and name == "features":
            self._on_features(element)
        elif state == STARTTLS and uri == ns.TLS:
            self._on_tls_answer(element)
        elif state == SASL and uri == ns.SASL:
            self._on_sasl_answer(element)
        elif state == DIALBACK and uri == NS_DIALBACK and name == "result":
            self._on_db_result(element)
        elif uri == ns.STREAMS and name == "error":
            self.on_peer_error(element)
        else:
            # RFC 6120 §4.9.3.22: nothing else may come to the originating side.
            raise StreamError("unsupported-stanza-type")

    def _on_features(self, features: domish.Element) -> None:
        starttls = mechanisms = None
        bidi_offered = False
        for child in features.elements():
            if child.uri == ns.TLS and child.name == "starttls":
                starttls = child
            elif child.uri == ns.SASL and child.name == "mechanisms":
                mechanisms = [str(m).strip() for m in child.elements() if m.name == "mechanism"]
            elif child.uri == NS_DIALBACK_FEATURE and child.name == "dialback":
                self.dialback_offered = True
            elif child.uri == NS_BIDI_FEATURE and child.name == "bidi":
                bidi_offered = True
        if self.auth_method:
            self._ready()  # the features after a SASL restart
            return
        if not self.secure:
            if starttls is not None:
                self.state = STARTTLS
                self.send_element(domish.Element((ns.TLS, "starttls")))
                return
            if self.manager.must_encrypt(self.remote or ""):
                self._give_up("the remote server does not offer TLS")
                return
        # Encrypted (or plaintext allowed): our questions may go now.
        self.verify_ready = True
        self.manager.outgoing_usable(self)
        if self.closed:
            return
        if self.secure:
            valid, reason = self.verify_certificate(self.remote or "")
            self.manager.log_event(self, "certificate", reason=reason)
            if not valid and self.manager.secure_required(self.remote or ""):
                self._give_up(f"secure_auth: the remote certificate is not valid ({reason})")
                return
        if bidi_offered and self.manager.config.bidi and not self.bidi:
            # XEP-0288 §2.2: after STARTTLS, before SASL or dialback.
            self.bidi = True
            self.send_element(domish.Element((NS_BIDI, "bidi")))
        if mechanisms and "EXTERNAL" in mechanisms and self.secure:
            self.state = SASL
            auth = domish.Element((ns.SASL, "auth"))
            auth["mechanism"] = "EXTERNAL"
            # XEP-0178 §2 step 7: our domain as the authorization identity.
            auth.addContent(base64.b64encode((self.local or "").encode("utf-8")).decode("ascii"))
            self.send_element(auth)
            return
        self._start_dialback()

    def _start_dialback(self) -> None:
        if not self.dialback_offered:
            self._give_up("the remote server offers no authentication we can use")
            return
        self.state = DIALBACK
        self.manager.dialback_secret().addCallback(self._send_db_result)

    def _send_db_result(self, secret: bytes) -> None:
        if self.closed:
            return
        result = domish.Element((NS_DIALBACK, "result"))
        result["from"] = self.local or ""
        result["to"] = self.remote or ""
        result.addContent(make_key(secret, self.remote or "", self.local or "", self.stream_id))
        self.send_element(result)

    def _on_tls_answer(self, element: domish.Element) -> None:
        if element.name != "proceed":
            self._give_up("the remote server refused STARTTLS", "undefined-condition")
            return
        self.transport.startTLS(self.manager.client_tls(self.local or "", self.remote or ""))
        self.secure = True
        self.state = HEADER
        self._reset_parser()
        self.send_header()

    def _on_sasl_answer(self, element: domish.Element) -> None:
        if element.name == "success":
            self.auth_method = "sasl-external"
            self.state = HEADER
            self._reset_parser()
            self.send_header()  # RFC 6120 §6.4.6: restart; the features make us ready
            return
        if element.name == "failure":
            self.manager.log_event(self, "sasl-failed", reason="SASL EXTERNAL refused; trying dialback")
            self._start_dialback()
            return
        raise StreamError("unsupported-stanza-type")

    def _on_db_result(self, element: domish.Element) -> None:
        if domain_or_none(element.getAttribute("from")) != self.remote or \
                domain_or_none(element.getAttribute("to")) != self.local:
            raise StreamError("invalid-from")
        verdict = element.getAttribute("type")
        if verdict == "valid":
            self.auth_method = "dialback"
            self._ready()
        else:
            self._give_up(f"dialback refused by the remote server ({verdict})", "not-authorized")

    def _on_db_verify_answer(self, element: domish.Element) -> None:
        verdict = element.getAttribute("type")
        remote = domain_or_none(element.getAttribute("from"))
        local = domain_or_none(element.getAttribute("to"))
        if verdict is None or remote != self.remote or local != self.local:
            raise StreamError("invalid-from", "a db:verify that is not an answer to us")
        self.manager.verify_answered(local or "", remote or "", element.getAttribute("id") or "",
                                     verdict == "valid")

    def _refuse_piggyback(self, element: domish.Element) -> None:
        """The remote asks to authenticate another of its domains on our stream.

        XEP-0288 §2.2 allows it and requires us to understand dialback
        errors; chatbx answers with one (the remote opens its own stream
        for that domain, as Prosody does anyway).
        """
        sender = element.getAttribute("from") or ""
        self.send_element(dialback_error("result", element.getAttribute("to") or self.local or "", sender,
                                         "feature-not-implemented", "cancel"))
        self.manager.log_event(self, "auth-refused", remote=sender,
                               reason="dialback for another domain on a bidirectional stream")

    def _ready(self) -> None:
        self.state = READY
        self.was_ready = True
        self.cancel_auth_timer()
        self.manager.outgoing_ready(self)

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.state]


class S2SOutFactory(Factory):
    """Builds the one outgoing stream of a connection attempt."""

    noisy = False

    def __init__(self, manager: "S2SManager", route: "OutRoute", target: Target) -> None:
        self.manager = manager
        self.route = route
        self.target = target

    def buildProtocol(self, addr: Any) -> S2SOutStream:  # noqa: N802
        return S2SOutStream(self.manager, self.route, self.target)
