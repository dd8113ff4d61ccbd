"""Incoming s2s streams: receiving and authoritative roles.

RFC 6120 §5 (STARTTLS, required unless the operator lists the domain),
§6 with XEP-0178 (SASL EXTERNAL when the peer's certificate proves its
domain), XEP-0220 (dialback: a ``db:result`` is checked with the
authoritative server over our outgoing stream; a ``db:verify`` is
answered for keys we made). Several remote domains may authenticate on
one stream (dialback piggybacking, XEP-0220 §2.5); each stanza's ``from``
domain must be one of them (``invalid-from``), its ``to`` one of ours
(``host-unknown``), and nothing is routed before a domain is authenticated
(``not-authorized``).

When the peer asks for it (XEP-0288), the stream also carries our stanzas
to the peer, from each local domain of a pair it authenticated.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from twisted.words.xish import domish

from chatbx_server.s2s.dialback import NS_DIALBACK, NS_DIALBACK_FEATURE, check_key, dialback_error, domain_or_none
from chatbx_server.s2s.stream import NS_BIDI, NS_BIDI_FEATURE, STANZAS, S2SStream, header, major_version
from chatbx_server.xmpp import ns
from chatbx_server.xmpp.stanzas import StreamError

if TYPE_CHECKING:
    from chatbx_server.s2s.manager import S2SManager

# States
HEADER, OPEN, CLOSED = range(3)

#: dialback checks in flight on one stream: each costs an outgoing
#: connection, so a peer cannot make us open many (XEP-0220 §4.3)
MAX_PENDING_DIALBACK = 5
#: remote domains one stream may authenticate (piggybacking, XEP-0220 §2.5)
MAX_DOMAINS = 50


class S2SInStream(S2SStream):
    """One connection from another server."""

    direction = "in"

    def __init__(self, manager: "S2SManager", direct_tls: bool = False) -> None:
        super().__init__(manager)
        self.secure = direct_tls
        self.state = HEADER
        #: remote domains authenticated on this stream
        self.authenticated: set[str] = set()
        #: what the peer's header said it is ('from'); a hint until proven
        self.remote_hint: Optional[str] = None
        self.admitted = False
        #: counted in the manager's unauthenticated connections
        self.counted_unauthenticated = False
        #: dialback results being checked: remote domain -> local domain
        self._pending: dict[str, str] = {}
        #: (local, remote) domain pairs authenticated on this stream
        self.pairs: set[tuple[str, str]] = set()
        #: SASL succeeded and the peer's restarted header has not come yet
        self._restarting = False
        #: (local, remote) pairs the manager sends over this stream (bidi)
        self.bidi_routes: set[tuple[str, str]] = set()

    def connectionMade(self) -> None:
        super().connectionMade()
        if not self.manager.admit(self):
            self.transport.abortConnection()
            return
        self.manager.incoming_opened(self)

    def lost(self, reason: str) -> None:
        self.state = CLOSED
        self.manager.incoming_closed(self, reason)

    def send_header(self) -> None:
        if not self.stream_id:
            self.stream_id = self.new_id()
        self.send_raw(header(self.local or self.manager.default_host, self.remote_hint, self.stream_id))
        self.header_sent = True

    # -- header and features -------------------------------------------------
    def on_stream_start(self, root: domish.Element) -> None:
        to = domain_or_none(root.getAttribute("to"))
        if self.local is not None and to != self.local:
            raise StreamError("host-unknown", "the stream was restarted for another host")
        if to is None or not self.manager.is_local_domain(to):
            raise StreamError("host-unknown")
        self.local = to
        sender = root.getAttribute("from")
        if sender is not None:
            hint = domain_or_none(sender)
            if hint is None:
                raise StreamError("invalid-from")
            self.remote_hint = hint
            if self.remote is None:
                self.remote = hint
        if major_version(root.getAttribute("version")) < 1:
            raise StreamError("unsupported-version", "version 1.0 (RFC 6120) is required")
        self.send_header()
        self.state = OPEN
        self.send_element(self._features())
        if self._restarting:
            self._restarting = False
            self._offer_bidi_routes()

    def _features(self) -> domish.Element:
        features = domish.Element((ns.STREAMS, "features"))
        hint = self.remote_hint
        if not self.secure:
            starttls = features.addElement((ns.TLS, "starttls"))
            if hint is None or self.manager.must_encrypt(hint):
                starttls.addElement("required")
                return features
        elif self.auth_method != "sasl-external" and hint is not None:
            valid, _ = self.verify_certificate(hint)
            if valid:
                # XEP-0178 §2: offered only when the certificate proves the domain.
                mechs = features.addElement((ns.SASL, "mechanisms"))
                mechs.addElement("mechanism", content="EXTERNAL")
        if self.auth_method != "sasl-external":
            features.addElement((NS_DIALBACK_FEATURE, "dialback")).addElement("errors")
            if self.manager.config.bidi:
                features.addElement((NS_BIDI_FEATURE, "bidi"))  # XEP-0288 §2.1
        return features

    # -- elements --------------------------------------------------------------
    def _on_element(self, element: domish.Element) -> None:
        uri, name = element.uri, element.name
        if uri == ns.CLIENT and name in STANZAS:
            self._on_stanza(element)
        elif uri == NS_DIALBACK and name == "result":
            self._on_db_result(element)
        elif uri == NS_DIALBACK and name == "verify":
            self._on_db_verify(element)
        elif uri == ns.TLS and name == "starttls":
            self._on_starttls()
        elif uri == ns.SASL:
            self._on_sasl(element)
        elif uri == NS_BIDI and name == "bidi":
            self._on_bidi()
        elif uri == ns.STREAMS and name == "error":
            self.on_peer_error(element)
        else:
            raise StreamError("unsupported-stanza-type")

    def _need_tls(self, domain: Optional[str]) -> None:
        if not self.secure and (domain is None or self.manager.must_encrypt(domain)):
            raise StreamError("policy-violation", "STARTTLS is required")

    def _on_starttls(self) -> None:
        if self.secure:
            raise StreamError("policy-violation", "TLS is already on")
        self.send_element(domish.Element((ns.TLS, "proceed")))
        self.transport.startTLS(self.manager.server_tls())
        self.secure = True
        self._reset_parser()  # RFC 6120 §5.4.3.3: the peer restarts the stream

    def _on_sasl(self, element: domish.Element) -> None:
        self._need_tls(self.remote_hint)
        if element.name == "abort":
            self._sasl_failure("aborted")
            return
        if element.name != "auth":
            raise StreamError("unsupported-stanza-type")
        if self.auth_method == "sasl-external" or element.getAttribute("mechanism") != "EXTERNAL":
            self._sasl_failure("invalid-mechanism")
            return
        text = str(element).strip()
        try:
            authzid = base64.b64decode(text, validate=True).decode("utf-8") if text not in ("", "=") else ""
        except (binascii.Error, UnicodeDecodeError):
            self._sasl_failure("incorrect-encoding")
            return
        # XEP-0178 §2: the authorization identity is the peer's domain, or
        # empty to mean the 'from' of its stream header.
        domain = domain_or_none(authzid) if authzid else self.remote_hint
        if domain is None or (self.remote_hint is not None and domain != self.remote_hint):
            self._sasl_failure("invalid-authzid")
            return
        valid, reason = self.verify_certificate(domain)
        if not valid:
            self.manager.log_event(self, "auth-failed", remote=domain, reason=f"SASL EXTERNAL: {reason}")
            self._sasl_failure("not-authorized")
            return
        self.send_element(domish.Element((ns.SASL, "success")))
        self.remote = domain
        self._restarting = True
        self._authenticated(self.local or "", domain, "sasl-external")
        self._reset_parser()  # RFC 6120 §6.4.6: stream restart

    def _sasl_failure(self, condition: str) -> None:
        failure = domish.Element((ns.SASL, "failure"))
        failure.addElement(condition)
        self.send_element(failure)

    def _authenticated(self, local: str, domain: str, method: str) -> None:
        self.authenticated.add(domain)
        self.pairs.add((local, domain))
        self.auth_method = self.auth_method or method
        self.cancel_auth_timer()
        self.manager.incoming_authenticated(self)
        self.manager.log_event(self, "authenticated", remote=domain, reason=method)
        self.manager.status_changed()
        self._offer_bidi_routes()

    # -- dialback (XEP-0220) -----------------------------------------------------
    def _on_db_result(self, element: domish.Element) -> None:
        if element.getAttribute("type") is not None:
            raise StreamError("unsupported-stanza-type", "db:result with a type on an incoming stream")
        remote = domain_or_none(element.getAttribute("from"))
        if remote is None:
            raise StreamError("invalid-from")
        self._need_tls(remote)
        local = domain_or_none(element.getAttribute("to")) or ""
        key = str(element).strip()
        if not self.manager.is_local_domain(local):
            self.send_element(dialback_error("result", local, remote, "item-not-found", "cancel"))
            self.manager.log_event(self, "auth-failed", remote=remote, reason=f"dialback for unknown host {local}")
            return
        if self.manager.is_local_domain(remote):
            self._db_answer(local, remote, "invalid", "claims to be a local domain")
            return
        if (local, remote) in self.pairs:
            self._db_answer(local, remote, "valid", "already authenticated")
            return
        if remote in self._pending:
            return  # XEP-0220 §2.4: one at a time; the first answer covers it
        if len(self._pending) >= MAX_PENDING_DIALBACK or len(self.authenticated) >= MAX_DOMAINS:
            self.send_element(dialback_error("result", local, remote, "resource-constraint", "wait"))
            self.manager.log_event(self, "auth-failed", remote=remote, reason="too many dialback requests")
            return
        valid, reason = self.verify_certificate(remote)
        if valid:
            # XEP-0344 §2.2: a certificate that proves the domain needs no
            # round trip to the authoritative server.
            self._db_answer(local, remote, "valid", "certificate")
            return
        if self.manager.secure_required(remote):
            self.send_element(dialback_error("result", local, remote, "not-authorized", "auth"))
            self.manager.log_event(self, "auth-failed", remote=remote,
                                   reason=f"secure_auth: certificate {reason}")
            return
        if not key:
            self._db_answer(local, remote, "invalid", "empty key")
            return
        self._pending[remote] = local
        d = self.manager.request_verify(local, remote, self.stream_id, key)

        def answered(valid: bool) -> None:
            self._pending.pop(remote, None)
            if not self.closed:
                self._db_answer(local, remote, "valid" if valid else "invalid",
                                "authoritative server" if valid else "key refused by the authoritative server")

        def failed(failure: Failure) -> None:
            self._pending.pop(remote, None)
            if not self.closed:
                self.send_element(dialback_error("result", local, remote, "remote-server-not-found", "cancel"))
                self.manager.log_event(self, "auth-failed", remote=remote,
                                       reason=f"authoritative server unreachable: {failure.getErrorMessage()}")

        d.addCallbacks(answered, failed)

    def _db_answer(self, local: str, remote: str, verdict: str, reason: str) -> None:
        answer = domish.Element((NS_DIALBACK, "result"))
        answer["from"] = local
        answer["to"] = remote
        answer["type"] = verdict
        self.send_element(answer)
        if verdict == "valid":
            if (local, remote) not in self.pairs:
                if self.remote is None:
                    self.remote = remote
                self._authenticated(local, remote, "dialback")
        else:
            self.manager.log_event(self, "auth-failed", remote=remote, reason=f"dialback: {reason}")

    def _on_db_verify(self, element: domish.Element) -> None:
        """Authoritative role: was this key made by us for that stream?"""
        if element.getAttribute("type") is not None:
            raise StreamError("unsupported-stanza-type", "db:verify answer on an incoming stream")
        receiving = domain_or_none(element.getAttribute("from"))
        if receiving is None:
            raise StreamError("invalid-from")
        self._need_tls(receiving)
        originating = domain_or_none(element.getAttribute("to")) or ""
        stream_id = element.getAttribute("id") or ""
        if not self.manager.is_local_domain(originating):
            # Not an oracle for domains we do not host.
            self.send_element(dialback_error("verify", originating, receiving, "item-not-found",
                                             "cancel", stream_id))
            self.manager.log_event(self, "verify-refused", remote=receiving,
                                   reason=f"db:verify for unknown host {originating}")
            return
        key = str(element)
        self.manager.dialback_secret().addCallback(self._answer_verify, receiving, originating, stream_id, key)

    def _answer_verify(self, secret: bytes, receiving: str, originating: str, stream_id: str,
                       key: str) -> None:
        if self.closed:
            return
        valid = bool(stream_id) and check_key(secret, receiving, originating, stream_id, key)
        answer = domish.Element((NS_DIALBACK, "verify"))
        answer["from"] = originating
        answer["to"] = receiving
        answer["id"] = stream_id
        answer["type"] = "valid" if valid else "invalid"
        self.send_element(answer)
        if not valid:
            self.manager.log_event(self, "verify-invalid", remote=receiving,
                                   reason="a dialback key we did not make")

    # -- stanzas -----------------------------------------------------------------
    def _on_stanza(self, stanza: domish.Element) -> None:
        if not self.authenticated:
            raise StreamError("not-authorized", "authenticate first")
        self.accept_stanza(stanza, self.authenticated)

    # -- bidirectional streams (XEP-0288) ------------------------------------------
    def _on_bidi(self) -> None:
        """The peer asks to receive our stanzas on this stream too (XEP-0288 §2.2)."""
        self._need_tls(self.remote_hint)  # §2.1: STARTTLS first when TLS is used
        if not self.manager.config.bidi:
            raise StreamError("unsupported-stanza-type", "bidirectional streams are not offered")
        if not self.bidi:
            self.bidi = True
            self._offer_bidi_routes()

    def _offer_bidi_routes(self) -> None:
        """Let the manager send over this stream for each authenticated pair.

        XEP-0288 §2.2: only once the peer is authenticated, only from the
        domains it authenticated to (the stream's 'to' for SASL, the inverse
        of each dialback pair), and not between a SASL success and the
        restarted stream's header.
        """
        if self.bidi and not self._restarting and not self.closed:
            for local, remote in sorted(self.pairs):
                self.manager.bidi_ready(self, local, remote)


class S2SInFactory(Factory):
    """Builds incoming s2s streams for one listening port."""

    noisy = False

    def __init__(self, manager: "S2SManager", direct_tls: bool = False) -> None:
        self.manager = manager
        self.direct_tls = direct_tls

    def buildProtocol(self, addr: Any) -> S2SInStream:  # noqa: N802
        return S2SInStream(self.manager, self.direct_tls)
