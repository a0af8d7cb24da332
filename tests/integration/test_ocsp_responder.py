"""The OCSP responder's own certificate is renewed by the CA, with a new key in the HSM each time.

A public key is never certified twice (csr.key_reused, and the store's unique
fingerprint), so renewing the responder's certificate for the same key used to
fail once a third of its life was left: every answer after that would have
been an error.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from openxpki_py.crypto.ca import IssuanceRequest
from openxpki_py.db import certstore


def test_responder_certificate_renews_with_a_new_key(make_instance: Callable[..., Any], sqlite_engine: Any) -> None:
    inst = make_instance(sqlite_engine)
    responder = inst.services.ocsp
    first = responder.create_key(actor="test")
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "x")]))
           .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()))
    with inst.services.db.begin() as conn:
        leaf = inst.services.ca.issue_certificate(conn, IssuanceRequest(
            csr=csr.public_bytes(serialization.Encoding.PEM), profile="smartcard_logon",
            subject_attributes={"cn": "Alice", "upn": "alice@example.com"}, owner="alice", requester="test"))
        ca_cert = inst.services.ca.certificate(conn)
    request = ocsp.OCSPRequestBuilder().add_certificate(leaf.certificate, ca_cert, hashes.SHA1()).build()
    der = request.public_bytes(serialization.Encoding.DER)

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
