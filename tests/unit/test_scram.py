"""SCRAM server side (RFC 5802, RFC 7677) against the published vectors and
the failure cases a hostile or confused client can produce."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from chatbx_server.c2s.scram import (ScramError, ScramServer, decoy_credentials,
                                     derive_credentials)

# RFC 5802 §5 (SCRAM-SHA-1)
SHA1_CLIENT_FIRST = b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL"
SHA1_SERVER_NONCE = "3rfcNHYJY1ZVvWVs7j"
SHA1_SALT = base64.b64decode("QSXCR+Q6sek8bf92")
SHA1_SERVER_FIRST = b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
SHA1_CLIENT_FINAL = (b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,"
                     b"p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=")
SHA1_SERVER_FINAL = b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ="

# RFC 7677 §3 (SCRAM-SHA-256)
SHA256_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
SHA256_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
SHA256_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
SHA256_SERVER_FIRST = (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                       b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
SHA256_CLIENT_FINAL = (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                       b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
SHA256_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

ALGO = {"SHA-1": "sha1", "SHA-256": "sha256"}


def client_final(hash_name: str, password: str, client_first_bare: str, server_first: bytes,
                 gs2_header: str, cb_data: bytes = b"") -> bytes:
    """What a correct client answers to ``server_first`` (RFC 5802 §3)."""
    algo = ALGO[hash_name]
    attrs = dict(part.split("=", 1) for part in server_first.decode().split(","))
    salted = hashlib.pbkdf2_hmac(algo, password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.digest(salted, b"Client Key", algo)
    stored_key = hashlib.new(algo, client_key).digest()
    cbind = base64.b64encode(gs2_header.encode() + cb_data).decode()
    without_proof = f"c={cbind},r={attrs['r']}"
    auth_message = f"{client_first_bare},{server_first.decode()},{without_proof}".encode()
    signature = hmac.digest(stored_key, auth_message, algo)
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


def pencil(hash_name: str, salt: bytes = b"0123456789abcdef"):
    return derive_credentials(hash_name, "pencil", salt=salt, iterations=4096)


@pytest.mark.parametrize("hash_name,client_first,nonce,salt,server_first,final,server_final", [
    ("SHA-1", SHA1_CLIENT_FIRST, SHA1_SERVER_NONCE, SHA1_SALT, SHA1_SERVER_FIRST,
     SHA1_CLIENT_FINAL, SHA1_SERVER_FINAL),
    ("SHA-256", SHA256_CLIENT_FIRST, SHA256_SERVER_NONCE, SHA256_SALT, SHA256_SERVER_FIRST,
     SHA256_CLIENT_FINAL, SHA256_SERVER_FINAL),
])
def test_rfc_vectors(hash_name, client_first, nonce, salt, server_first, final, server_final):
    """The server reproduces the RFC 5802 §5 / RFC 7677 §3 exchanges byte for byte."""
    server = ScramServer(hash_name, plus=False, bindings={}, plus_offered=False, nonce=nonce)
    assert server.client_first(client_first) == "user"
    creds = derive_credentials(hash_name, "pencil", salt=salt, iterations=4096)
    assert server.server_first(creds) == server_first
    assert server.client_final(final) == server_final
    assert server.authzid is None


def test_wrong_proof_is_not_authorized():
    """A proof made from another password fails with not-authorized."""
    server = ScramServer("SHA-256", False, {}, False)
    server.client_first(b"n,,n=user,r=abc")
    first = server.server_first(pencil("SHA-256"))
    bad = client_final("SHA-256", "pencil2", "n=user,r=abc", first, "n,,")
    with pytest.raises(ScramError) as err:
        server.client_final(bad)
    assert err.value.condition == "not-authorized"


def test_correct_proof_with_generated_nonce():
    """A client computing the proof itself succeeds against a random server nonce."""
    server = ScramServer("SHA-1", False, {}, False)
    server.client_first(b"n,,n=user,r=abc")
    first = server.server_first(pencil("SHA-1"))
    assert first.startswith(b"r=abc" + server.server_nonce.encode())
    assert server.client_final(client_final("SHA-1", "pencil", "n=user,r=abc", first, "n,,")).startswith(b"v=")


def test_truncated_proof_is_not_authorized():
    """A proof of the wrong length is refused, not compared partially."""
    server = ScramServer("SHA-256", False, {}, False)
    server.client_first(b"n,,n=user,r=abc")
    first = server.server_first(pencil("SHA-256"))
    nonce = first.decode().split(",")[0][2:]
    with pytest.raises(ScramError) as err:
        server.client_final(f"c=biws,r={nonce},p={base64.b64encode(b'short').decode()}".encode())
    assert err.value.condition == "not-authorized"


def test_nonce_mismatch_is_not_authorized():
    """The final message must repeat the combined nonce."""
    server = ScramServer("SHA-256", False, {}, False)
    server.client_first(b"n,,n=user,r=abc")
    first = server.server_first(pencil("SHA-256"))
    good = client_final("SHA-256", "pencil", "n=user,r=abc", first, "n,,")
    tampered = good.replace(b"r=abc", b"r=abd", 1)
    with pytest.raises(ScramError) as err:
        server.client_final(tampered)
    assert err.value.condition == "not-authorized"


def test_plus_with_matching_binding_succeeds():
    """SCRAM-SHA-256-PLUS with tls-exporter data equal on both sides succeeds."""
    cb = b"\x01" * 32
    server = ScramServer("SHA-256", True, {"tls-exporter": cb}, True)
    server.client_first(b"p=tls-exporter,,n=user,r=abc")
    first = server.server_first(pencil("SHA-256"))
    final = client_final("SHA-256", "pencil", "n=user,r=abc", first, "p=tls-exporter,,", cb)
    assert server.client_final(final).startswith(b"v=")


def test_channel_binding_mismatch_is_not_authorized():
    """Binding data that differs from the server's (a MITM) fails."""
    server = ScramServer("SHA-256", True, {"tls-exporter": b"\x01" * 32}, True)
    server.client_first(b"p=tls-exporter,,n=user,r=abc")
    first = server.server_first(pencil("SHA-256"))
    final = client_final("SHA-256", "pencil", "n=user,r=abc", first, "p=tls-exporter,,", b"\x02" * 32)
    with pytest.raises(ScramError) as err:
        server.client_final(final)
    assert err.value.condition == "not-authorized"


def test_gs2_header_must_match_in_final():
    """c= must encode the GS2 header the client first sent ('y' vs 'n')."""
    server = ScramServer("SHA-256", False, {}, False)
    server.client_first(b"n,,n=user,r=abc")
    first = server.server_first(pencil("SHA-256"))
    final = client_final("SHA-256", "pencil", "n=user,r=abc", first, "y,,")
    with pytest.raises(ScramError) as err:
        server.client_final(final)
    assert err.value.condition == "not-authorized"


def test_y_flag_when_plus_offered_is_downgrade():
    """'y' says "I could bind but you can't": false when -PLUS was offered (RFC 5802 §6)."""
    server = ScramServer("SHA-256", False, {"tls-exporter": b"x"}, plus_offered=True)
    with pytest.raises(ScramError) as err:
        server.client_first(b"y,,n=user,r=abc")
    assert err.value.condition == "not-authorized"


def test_y_flag_without_plus_offered_is_fine():
    """'y' is legitimate when the server offered no -PLUS mechanism."""
    server = ScramServer("SHA-256", False, {}, plus_offered=False)
    assert server.client_first(b"y,,n=user,r=abc") == "user"


def test_plus_without_p_flag_is_malformed():
    """A -PLUS mechanism with an 'n' header is a malformed request."""
    server = ScramServer("SHA-256", True, {"tls-exporter": b"x"}, True)
    with pytest.raises(ScramError) as err:
        server.client_first(b"n,,n=user,r=abc")
    assert err.value.condition == "malformed-request"


def test_p_flag_without_plus_is_malformed():
    """Channel binding requested under the non-PLUS mechanism is refused."""
    server = ScramServer("SHA-256", False, {"tls-exporter": b"x"}, True)
    with pytest.raises(ScramError) as err:
        server.client_first(b"p=tls-exporter,,n=user,r=abc")
    assert err.value.condition == "malformed-request"


def test_unknown_binding_type_is_malformed():
    """A binding type the connection cannot give is refused."""
    server = ScramServer("SHA-256", True, {"tls-exporter": b"x"}, True)
    with pytest.raises(ScramError) as err:
        server.client_first(b"p=tls-unique,,n=user,r=abc")
    assert err.value.condition == "malformed-request"


@pytest.mark.parametrize("message", [
    b"n,,n=us=2Xer,r=abc",     # unknown escape
    b"n,,n=us=2,r=abc",        # truncated escape
    b"n,,n=us=,r=abc",         # bare '='
    b"n,a=x=4,n=user,r=abc",   # bad escape in authzid
])
def test_bad_escapes_are_malformed(message):
    """'=' in a saslname is only valid as =2C or =3D (RFC 5802 §5.1)."""
    server = ScramServer("SHA-256", False, {}, False)
    with pytest.raises(ScramError) as err:
        server.client_first(message)
    assert err.value.condition == "malformed-request"


def test_escapes_are_decoded():
    """=2C and =3D decode to ',' and '=' in username and authzid."""
    server = ScramServer("SHA-256", False, {}, False)
    assert server.client_first(b"n,a=a=3Db=2Cc,n=x=2Cy=3Dz,r=abc") == "x,y=z"
    assert server.authzid == "a=b,c"


def test_mandatory_extension_is_malformed():
    """An 'm=' extension we cannot understand must fail the exchange (RFC 5802 §5.1)."""
    server = ScramServer("SHA-256", False, {}, False)
    with pytest.raises(ScramError) as err:
        server.client_first(b"n,,m=ext,n=user,r=abc")
    assert err.value.condition == "malformed-request"


@pytest.mark.parametrize("message", [
    b"n,n=user,r=abc",          # no GS2 header
    b"x,,n=user,r=abc",         # bad flag
    b"n,,r=abc,n=user",         # wrong order
    b"n,,n=user",               # no nonce
    b"n,,n=user,r=",            # empty nonce
    b"n,b=x,n=user,r=abc",      # authzid without a=
    b"n,,n=\xff,r=abc",         # not UTF-8
    b"n,,n=user,r=abc,x",       # garbage attribute
])
def test_malformed_client_first(message):
    """Structurally broken client-first-messages are malformed-request."""
    server = ScramServer("SHA-256", False, {}, False)
    with pytest.raises(ScramError) as err:
        server.client_first(message)
    assert err.value.condition == "malformed-request"


def test_final_before_first_is_malformed():
    """client_final without a preceding server-first is out of order."""
    server = ScramServer("SHA-256", False, {}, False)
    with pytest.raises(ScramError) as err:
        server.client_final(b"c=biws,r=abc,p=AAAA")
    assert err.value.condition == "malformed-request"


def test_final_without_proof_or_bad_base64_is_malformed():
    """A final message without p= or with a non-base64 proof is malformed."""
    for final in ("c=biws,r=abc{nonce}", "c=biws,r=abc{nonce},p=!!!!"):
        server = ScramServer("SHA-256", False, {}, False, nonce="XYZ")
        server.client_first(b"n,,n=user,r=abc")
        server.server_first(pencil("SHA-256"))
        with pytest.raises(ScramError) as err:
            server.client_final(final.format(nonce="XYZ").encode())
        assert err.value.condition == "malformed-request"


def test_password_is_prepared_with_saslprep():
    """Passwords are SASLprep-normalised (RFC 5802 §2.2), so composed and decomposed forms match."""
    salt = b"s" * 16
    a = derive_credentials("SHA-256", "caf\u00e9", salt=salt)
    b = derive_credentials("SHA-256", "cafe\u0301", salt=salt)
    assert a == b


def test_decoy_credentials_are_stable_and_look_real():
    """Unknown users get the same salt each time (no enumeration by re-asking),
    of the same shape as a stored account's."""
    secret = b"k" * 32
    a = decoy_credentials(secret, "SHA-256", "ghost@localhost")
    assert a == decoy_credentials(secret, "SHA-256", "ghost@localhost")
    assert a.salt != decoy_credentials(secret, "SHA-256", "other@localhost").salt
    import scramp

    for hash_name in ("SHA-1", "SHA-256"):
        salt, stored, _, count = scramp.ScramMechanism(f"SCRAM-{hash_name}").make_auth_info(
            "pencil", iteration_count=4096)
        decoy = decoy_credentials(secret, hash_name, "ghost@localhost")
        assert (len(decoy.salt), decoy.iterations, len(decoy.stored_key)) == (len(salt), count, len(stored))
    assert decoy_credentials(secret, "SHA-256", "g@h", iterations=10000).iterations == 10000
