"""CA logic with an in-memory key (a fake backend: unit level only; the same
flows run against a real SoftHSM token in tests/integration/test_ca_hsm.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import event, func, select

from openxpki_py.crypto.ca import CertificateAuthority, IssuanceRequest
from openxpki_py.crypto.csr import ExpectedKey
from openxpki_py.crypto.der import OID_UPN

OID_PKINIT_CLIENT = x509.ObjectIdentifier("1.3.6.1.5.2.3.4")
from openxpki_py.crypto.profiles import OID_SMARTCARD_LOGON, ProfileSet
from openxpki_py.db import certstore
from openxpki_py.db.engine import create_schema, open_engine
from openxpki_py.db.schema import certificate, csr
from openxpki_py.errors import CAError, PolicyViolation, UnknownProfile
from support.pkix import (
    assert_cert_lints_clean,
    assert_chain_lints_clean,
    assert_crl_lints_clean,
    assert_openssl_verifies,
    openssl_verify_fails,
)

ALICE = {
    "cn": "Alice Example",
    "mail": "alice@example.com",
    "upn": "alice@example.com",
    "department": "Research",
}


@dataclass
class MemoryKeyBackend:
    algorithm: str
    key: Any = None

    def key_exists(self) -> bool:
        return self.key is not None

    def generate_private_key(self, spec: Any) -> Any:
        self.key = (rsa.generate_private_key(65537, 2048) if self.algorithm.startswith("rsa")
                    else ec.generate_private_key(ec.SECP256R1()))
        return self.key

    def load_private_key(self) -> Any:
        return self.key

    def describe(self) -> str:
        return f"memory key ({self.algorithm})"


def ca_config(algorithm: str, padding: str = "pkcs1v15") -> SimpleNamespace:
    return SimpleNamespace(
        key=SimpleNamespace(algorithm=algorithm),
        subject="CN=Test Smartcard CA,O=Example Corp,C=DE",
        validity_days=3650,
        rsa_padding=padding,
        hash="sha256",
        crl=SimpleNamespace(validity_hours=48, publish_dir=None, url="http://pki.example.com/crl/test.crl"),
        issuer_url="http://pki.example.com/crl/test.crt",
        ocsp=None,
    )


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    eng = open_engine(f"sqlite:///{tmp_path / 'ca.db'}")
    create_schema(eng)
    yield eng
    eng.dispose()


def make_ca(engine: Any, algorithm: str = "rsa-2048", padding: str = "pkcs1v15") -> CertificateAuthority:
    ca = CertificateAuthority(
        ca_config(algorithm, padding),
        ProfileSet.load(None, {"organization": "Example Corp", "country": "DE"}),
        MemoryKeyBackend(algorithm),
    )
    with engine.begin() as conn:
        ca.initialize(conn, actor="test")
    return ca


def user_csr(key: Any | None = None, cn: str = "evil") -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)])
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def issue(ca: CertificateAuthority, engine: Any, profile: str, data: bytes, **kw: Any) -> Any:
    with engine.begin() as conn:
        return ca.issue_certificate(
            conn, IssuanceRequest(csr=data, profile=profile, subject_attributes=ALICE, owner="alice",
                                  requester="alice", **kw)
        )


def count(engine: Any, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


@pytest.mark.parametrize(("algorithm", "padding"), [("rsa-2048", "pkcs1v15"), ("rsa-2048", "pss"), ("ec-p256", "pkcs1v15")])
def test_issue_both_profiles_lint_clean(engine: Any, tmp_path: Path, algorithm: str, padding: str) -> None:
    ca = make_ca(engine, algorithm, padding)
    with engine.connect() as conn:
        ca_cert = ca.certificate(conn)
    assert_cert_lints_clean(ca_cert, tmp_path)
    rsa_key = rsa.generate_private_key(65537, 2048)
    logon = issue(ca, engine, "smartcard_logon", user_csr(rsa_key))
    enc = issue(ca, engine, "encryption", user_csr())
    for issued in (logon, enc):
        cert = issued.certificate
        assert cert.subject.rfc4514_string() == "CN=Alice Example,OU=Research,O=Example Corp,C=DE"
        assert_cert_lints_clean(cert, tmp_path)
        if padding != "pss":
            # pkilint 0.13's SubjectSignatureVerificationValidator checks every
            # RSA signature as PKCS#1 v1.5 (it drops the RSASSA-PSS parameters),
            # so it reports a false mismatch for PSS; openssl verifies PSS below.
            assert_chain_lints_clean(ca_cert, cert, tmp_path)
        assert_openssl_verifies(ca_cert, cert, tmp_path)
        assert 64 <= cert.serial_number.bit_length() <= 159
    san = logon.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    upn = san.get_values_for_type(x509.OtherName)[0]
    assert upn.type_id == OID_UPN and upn.value == b"\x0c\x11alice@example.com"
    assert san.get_values_for_type(x509.RFC822Name) == ["alice@example.com"]
    eku = logon.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.ExtendedKeyUsageOID.CLIENT_AUTH, OID_SMARTCARD_LOGON, OID_PKINIT_CLIENT]
    ku = logon.certificate.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_encipherment
    enc_ku = enc.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert enc_ku.key_agreement  # EC key: keyAgreement, not keyEncipherment
    assert any(n.notes for n in (logon,))  # the CSR's CN "evil" was reported as ignored
    assert count(engine, certificate) == 2


def test_rsa_encryption_key_gets_key_encipherment(engine: Any) -> None:
    ca = make_ca(engine)
    enc = issue(ca, engine, "encryption", user_csr(rsa.generate_private_key(65537, 2048)))
    ku = enc.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_encipherment and not ku.key_agreement


def test_revoke_and_crl(engine: Any, tmp_path: Path) -> None:
    ca = make_ca(engine)
    issued = issue(ca, engine, "smartcard_logon", user_csr())
    with engine.begin() as conn:
        first = ca.issue_crl(conn, actor="test")
        ca.revoke_certificate(conn, issued.certificate.serial_number, "keyCompromise", actor="test")
        second = ca.issue_crl(conn, actor="test")
        ca_cert = ca.certificate(conn)
    assert (first.number, second.number) == (1, 2)
    assert second.crl.get_revoked_certificate_by_serial_number(issued.certificate.serial_number) is not None
    assert_crl_lints_clean(first.crl, tmp_path)
    assert_crl_lints_clean(second.crl, tmp_path)
    assert "revoked" in openssl_verify_fails(ca_cert, issued.certificate, tmp_path, second.crl)
    with engine.begin() as conn, pytest.raises(PolicyViolation, match="already revoked"):
        ca.revoke_certificate(conn, issued.certificate.serial_number, "superseded", actor="test")
    with engine.begin() as conn, pytest.raises(PolicyViolation, match="unknown revocation reason 'stolen'"):
        ca.revoke_certificate(conn, issued.certificate.serial_number, "stolen", actor="test")


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        (b"not a csr", "csr.parse", "cannot be parsed"),
        (user_csr(rsa.generate_private_key(65537, 1024)), "csr.key_size", "1024 bits is too weak"),
        (user_csr(ec.generate_private_key(ec.SECP256K1())), "csr.key_curve", "secp256k1 is not allowed"),
    ],
)
def test_bad_csr_refused_nothing_stored(engine: Any, data: bytes, code: str, message: str) -> None:
    ca = make_ca(engine)
    with pytest.raises(PolicyViolation, match=message) as info:
        issue(ca, engine, "smartcard_logon", data)
    assert info.value.code == code
    assert count(engine, certificate) == 0 and count(engine, csr) == 0


def test_forged_signature_refused(engine: Any) -> None:
    ca = make_ca(engine)
    good = x509.load_pem_x509_csr(user_csr(rsa.generate_private_key(65537, 2048)))
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF  # flip bits inside the signature value
    with pytest.raises(PolicyViolation) as info:
        issue(ca, engine, "smartcard_logon", bytes(der))
    assert info.value.code == "csr.signature"
    assert count(engine, certificate) == 0


def test_key_reuse_and_expected_key(engine: Any) -> None:
    ca = make_ca(engine)
    key = ec.generate_private_key(ec.SECP256R1())
    issue(ca, engine, "smartcard_logon", user_csr(key))
    with pytest.raises(PolicyViolation, match="already certified") as info:
        issue(ca, engine, "encryption", user_csr(key))
    assert info.value.code == "csr.key_reused"
    with pytest.raises(PolicyViolation, match="carries a EC P-256 key but RSA-2048 was requested") as info:
        issue(ca, engine, "smartcard_logon", user_csr(), expected_key=ExpectedKey("rsa", size=2048))
    assert info.value.code == "csr.key_mismatch"
    assert count(engine, certificate) == 1


def test_unknown_profile_and_missing_attribute(engine: Any) -> None:
    ca = make_ca(engine)
    with pytest.raises(UnknownProfile, match="unknown certificate profile 'vpn'; known: encryption, kdc, ocsp_signing, smartcard_logon, tls_server"):
        issue(ca, engine, "vpn", user_csr())
    # The encryption certificate needs the mail address (the logon certificate does without it).
    with engine.begin() as conn, pytest.raises(PolicyViolation, match="directory attribute 'mail' is required") as info:
        ca.issue_certificate(conn, IssuanceRequest(csr=user_csr(), profile="encryption",
                                                   subject_attributes={"cn": "Dave", "upn": "d@x"},
                                                   owner="dave", requester="dave"))
    assert info.value.code == "profile.attribute_missing"
    assert count(engine, certificate) == 0


def test_ca_init_refuses_twice(engine: Any) -> None:
    ca = make_ca(engine)
    with engine.begin() as conn, pytest.raises(CAError, match="already initialised"):
        ca.initialize(conn, actor="test")


def test_tls_server_profile(engine: Any, tmp_path: Path) -> None:
    ca = make_ca(engine)
    with engine.begin() as conn:
        issued = ca.issue_certificate(conn, IssuanceRequest(
            csr=user_csr(), profile="tls_server", subject_attributes={"dns": "pki.example.com"},
            owner=None, requester="operator"))
    assert issued.certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == ["pki.example.com"]
    assert_cert_lints_clean(issued.certificate, tmp_path)


def test_a_serial_collision_is_signed_again_with_another_serial(engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The (issuer, serial) constraint is the uniqueness check: a repeated serial is skipped and re-signed."""
    ca = make_ca(engine)
    first = issue(ca, engine, "smartcard_logon", user_csr())
    fresh = certstore.random_serial()
    serials = iter([first.certificate.serial_number, fresh])
    monkeypatch.setattr(certstore, "random_serial", lambda: next(serials))
    signed: list[int] = []
    sign = ca._sign
    monkeypatch.setattr(ca, "_sign", lambda builder, key: signed.append(1) or sign(builder, key))
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    second = issue(ca, engine, "smartcard_logon", user_csr())
    assert second.certificate.serial_number == fresh
    assert len(signed) == 2  # the repeat was signed, refused by the constraint, never stored or returned
    assert count(engine, certificate) == 2 and count(engine, csr) == 2
    assert not any(s.lstrip().upper().startswith("SELECT CERTIFICATE.ID") for s in statements)  # no pre-check
    with engine.connect() as conn:
        stored = conn.execute(select(certificate.c.serial).where(certificate.c.id == second.id)).scalar_one()
    assert stored == format(fresh, "x")
