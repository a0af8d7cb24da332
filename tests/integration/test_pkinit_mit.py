"""A personalized card logs in to an MIT Kerberos KDC on its default PKINIT settings.

The KDC's own certificate comes from this CA (``kdc`` profile:
id-pkinit-KPKdc + id-pkinit-san krbtgt/REALM@REALM); the card is personalized
by the real token agent; ``kinit`` reads the card through PKCS#11 and gets a
TGT.  After the card's logon certificate is revoked and the CRL the KDC reads
is renewed, the same login fails.  No KDC setting is relaxed: MIT checks the
client's id-pkinit-KPClientAuth EKU and its id-pkinit-san by default.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select
from support.agent import personalize_with_agent
from support.kdc import REALM

from openxpki_py.crypto.ca import IssuanceRequest
from openxpki_py.db.schema import certificate

pytestmark = pytest.mark.slow


def _kdc_certificate(inst: Any) -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(65537, 2048)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ignored")]))
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    with inst.services.db.begin() as conn:
        issued = inst.services.ca.issue_certificate(conn, IssuanceRequest(
            csr=csr, profile="kdc", subject_attributes={"dns": "kdc.example.com"}, owner=None,
            requester="test"))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    return issued.pem.encode(), key_pem


def _crl_pem(inst: Any) -> bytes:
    with inst.services.db.begin() as conn:
        issued = inst.services.ca.issue_crl(conn, actor="test")
    return x509.load_der_x509_crl(issued.der).public_bytes(serialization.Encoding.PEM)


def test_card_gets_a_tgt_from_an_mit_kdc_on_defaults_until_revoked(
        make_instance: Callable[..., Any], sqlite_engine: Any, make_token: Callable[..., Any],
        mit_kdc: Callable[..., Any], tmp_path: Path) -> None:
    def realm(settings: dict[str, Any]) -> None:
        settings["ca"]["profile_variables"]["kerberos_realm"] = REALM

    inst = make_instance(sqlite_engine, overrides=realm)
    card = make_token("alice-card", pin="482913")
    personalize_with_agent(inst, card, tmp_path / "agent-state")
    with inst.services.db.connect() as conn:
        ca_pem = inst.services.ca.certificate(conn).public_bytes(serialization.Encoding.PEM)
        logon = conn.execute(select(certificate.c.serial).where(certificate.c.profile == "smartcard_logon")).scalar()
    kdc_cert, kdc_key = _kdc_certificate(inst)
    kdc = mit_kdc(ca_pem, kdc_cert, kdc_key, _crl_pem(inst))

    card_env = {"SOFTHSM2_CONF": str(card.softhsm.conf)}
    login = kdc.kinit_with_card(f"alice@{REALM}", str(card.module), card.label, card.pin, card_env)
    assert login.returncode == 0, login.stdout + login.stderr + kdc.logs()
    assert kdc.has_ticket()

    # The card is lost: its logon certificate is revoked, the KDC reads the new CRL.
    with inst.services.db.begin() as conn:
        inst.services.ca.revoke_certificate(conn, int(logon, 16), "keyCompromise", actor="test")
    (kdc.folder / "crl.pem").write_bytes(_crl_pem(inst))
    kdc.restart()
    refused = kdc.kinit_with_card(f"alice@{REALM}", str(card.module), card.label, card.pin, card_env)
    assert refused.returncode != 0
    assert not kdc.has_ticket()
    assert "revoked" in (refused.stderr + kdc.logs()).lower()
