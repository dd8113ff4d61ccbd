"""Failed-login limits on the real server (sasl.AuthThrottle): per address,
not reset by a success, refused with temporary-auth-failure (RFC 6120 §6.5.12)."""

from __future__ import annotations

import pytest

from rawclient import NS_SASL, RawClient, q

pytestmark = pytest.mark.integration


def _condition(element) -> str:
    assert element.tag == q(NS_SASL, "failure")
    return [c.tag.split("}")[1] for c in element if c.tag != q(NS_SASL, "text")][0]


def test_limit_reached_despite_own_account(chatbx_server):
    """Guesses from one address interleaved with logins to the guesser's own
    account still reach auth_max_failures; then even the right password of
    that account is refused with temporary-auth-failure."""
    server = chatbx_server(extra_config="[limits]\nauth_failure_delay = 0.01\n"
                                        "auth_max_failures = 3")
    answers = []
    for _ in range(3):
        client = RawClient(server.c2s_port)
        try:
            client.open_stream()
            client.starttls()
            assert _condition(client.plain("alice", "guess")) == "not-authorized"
            answers.append(client.plain("bob", server.users["bob@localhost"]))
        finally:
            client.close()
    assert [a.tag for a in answers[:2]] == [q(NS_SASL, "success")] * 2
    assert _condition(answers[2]) == "temporary-auth-failure"
