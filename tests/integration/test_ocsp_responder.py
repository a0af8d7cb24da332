"""The OCSP responder's own certificate is renewed by the CA, with a new key in the HSM each time.

A public key is never certified twice (csr.key_reused, and the store's unique
fingerprint), so renewing the responder's certificate for the same key used to
fail once a third of its life was left: every answer after that would have
been an error.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from sqlalchemy import text

from openxpki_py.crypto.ca import IssuanceRequest
from openxpki_py.crypto.ocsp import RENEWAL_RETRY
from openxpki_py.db import certstore


def status_request(inst: Any) -> bytes:
    """A DER OCSP request for a new leaf certificate of the instance's CA."""
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "x")]))
           .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()))
    with inst.services.db.begin() as conn:
        leaf = inst.services.ca.issue_certificate(conn, IssuanceRequest(
            csr=csr.public_bytes(serialization.Encoding.PEM), profile="smartcard_logon",
            subject_attributes={"cn": "Alice", "upn": "alice@example.com"}, owner="alice", requester="test"))
        ca_cert = inst.services.ca.certificate(conn)
    request = ocsp.OCSPRequestBuilder().add_certificate(leaf.certificate, ca_cert, hashes.SHA1()).build()
    return request.public_bytes(serialization.Encoding.DER)


def test_responder_certificate_renews_with_a_new_key(make_instance: Callable[..., Any], sqlite_engine: Any) -> None:
    inst = make_instance(sqlite_engine)
    responder = inst.services.ocsp
    first = responder.create_key(actor="test")
    der = status_request(inst)

    now = first.not_valid_before_utc + timedelta(days=25)  # less than a third of 30 days left
    answer = ocsp.load_der_ocsp_response(responder.respond(der, now=now))
    assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    (second,) = answer.certificates
    assert second.serial_number != first.serial_number and second.public_key() != first.public_key()
    assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD

    # Another process (a fresh Services) finds the newest key and its certificate in the store.
    inst.reload()
    again = ocsp.load_der_ocsp_response(inst.services.ocsp.respond(der))
    assert again.certificates[0].serial_number == second.serial_number
    with inst.services.db.connect() as conn:
        owners = [r["owner"] for r in certstore.list_certificates(conn, owner="ocsp-responder")]
    assert len(owners) == 2


def test_a_renewal_the_ca_refuses_leaves_one_key_and_answers_go_on(make_instance: Callable[..., Any],
                                                                    sqlite_engine: Any) -> None:
    """The CA cannot issue (here its key is gone from the HSM) when the responder's certificate is due.

    The responder generated the next key, failed to certify it, answered
    tryLater although its certificate had days left, and on each later
    request generated one more key in the HSM.  Now it answers with the
    current certificate, tries again a minute later with the key it made,
    and says tryLater only once that certificate has expired.
    """
    inst = make_instance(sqlite_engine)
    responder = inst.services.ocsp
    first = responder.create_key(actor="test")
    der = status_request(inst)
    token = inst.ca_token
    subprocess.run(["pkcs11-tool", "--module", str(token.module), "--token-label", token.label, "--login",
                    "--pin", token.pin, "--delete-object", "--type", "privkey", "--label", "ca-signing"],
                   env={**os.environ, "SOFTHSM2_CONF": str(token.softhsm.conf)}, check=True, capture_output=True,
                   timeout=60)

    def responder_keys() -> int:
        return sum(responder._backend(n).key_exists() for n in range(1, 6))

    due = first.not_valid_before_utc + timedelta(days=25)  # less than a third of 30 days left
    for now in (due, due + timedelta(seconds=10), due + RENEWAL_RETRY * 2, due + RENEWAL_RETRY * 4):
        answer = ocsp.load_der_ocsp_response(responder.respond(der, now=now))
        assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL, now
        assert answer.certificates[0].serial_number == first.serial_number
        assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert responder_keys() == 2  # the first, and the one made for the renewal (tried again, not made again)

    expired = first.not_valid_after_utc + timedelta(minutes=5)
    late = ocsp.load_der_ocsp_response(responder.respond(der, now=expired))
    assert late.response_status == ocsp.OCSPResponseStatus.TRY_LATER
    assert responder_keys() == 2


@pytest.mark.postgres
def test_a_renewal_the_database_refuses_answers_with_the_current_certificate(make_instance: Callable[..., Any],
                                                                             pg_engine: Any) -> None:
    """The store takes no writes (a read-only standby after a failover) when the certificate is due.

    The database's error was no project error: it passed the renewal's
    handling by, and each OCSP request failed (a 500) instead of being
    answered with the certificate that still had days left.
    """
    inst = make_instance(pg_engine)
    responder = inst.services.ocsp
    first = responder.create_key(actor="test")
    der = status_request(inst)
    database = pg_engine.url.database
    with pg_engine.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on'))
        conn.commit()
    inst.services.db.dispose()  # new connections: read-only from now on
    try:
        due = first.not_valid_before_utc + timedelta(days=25)
        answer = ocsp.load_der_ocsp_response(responder.respond(der, now=due))
        assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
        assert answer.certificates[0].serial_number == first.serial_number
    finally:
        with pg_engine.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" SET default_transaction_read_only = off'))
            conn.commit()


def test_no_renewal_once_the_responder_certificate_ends_with_the_ca(make_instance: Callable[..., Any],
                                                                     sqlite_engine: Any) -> None:
    """A CA with 20 days left: the 30-day responder certificate ends with it, and no renewal can end later.

    Each renewal made a new key and a certificate ending at the same moment,
    so shorter and due at once: every answer in the CA's last third made a
    key in the HSM and a certificate.
    """
    def short_ca(settings: dict[str, Any]) -> None:
        settings["ca"]["validity_days"] = 20

    inst = make_instance(sqlite_engine, overrides=short_ca)
    responder = inst.services.ocsp
    first = responder.create_key(actor="test")
    with inst.services.db.connect() as conn:
        assert first.not_valid_after_utc == inst.services.ca.certificate(conn).not_valid_after_utc
    der = status_request(inst)
    late = first.not_valid_before_utc + timedelta(days=15)  # less than a third of its life left
    for minutes in (0, 2, 4):
        answer = ocsp.load_der_ocsp_response(responder.respond(der, now=late + timedelta(minutes=minutes)))
        assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
        assert answer.certificates[0].serial_number == first.serial_number
    assert sum(responder._backend(n).key_exists() for n in range(1, 6)) == 1


def test_a_revoked_responder_certificate_is_replaced_with_a_new_key(make_instance: Callable[..., Any],
                                                                    sqlite_engine: Any) -> None:
    """An operator revokes the responder's certificate (its key is suspected compromised).

    Clients never check it (id-pkix-ocsp-nocheck), so only the responder can
    act on it: it went on signing with the revoked certificate and its key
    until the next routine renewal, up to twenty days.  Now, within a
    minute, the answers come from a new key with a new certificate.
    """
    inst = make_instance(sqlite_engine)
    responder = inst.services.ocsp
    first = responder.create_key(actor="test")
    der = status_request(inst)
    now = first.not_valid_before_utc + timedelta(days=1)
    assert ocsp.load_der_ocsp_response(responder.respond(der, now=now)).certificates[0] == first
    with inst.services.db.begin() as conn:
        inst.services.ca.revoke_certificate(conn, first.serial_number, "keyCompromise", actor="carol",
                                            role="CA Operator")
    answer = ocsp.load_der_ocsp_response(responder.respond(der, now=now + timedelta(minutes=2)))
    assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    (second,) = answer.certificates
    assert second.serial_number != first.serial_number and second.public_key() != first.public_key()
    key = second.public_key()  # and the answer is signed with the new key
    assert isinstance(key, rsa.RSAPublicKey) and answer.signature_hash_algorithm is not None
    key.verify(answer.signature, answer.tbs_response_bytes, padding.PKCS1v15(), answer.signature_hash_algorithm)
