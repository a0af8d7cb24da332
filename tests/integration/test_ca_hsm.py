"""The CA with its key in a real SoftHSM2 token, on SQLite and PostgreSQL,
driven through the operator CLI where an operator would drive it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import func, select
from support.pkix import (
    assert_cert_lints_clean,
    assert_chain_lints_clean,
    assert_crl_lints_clean,
    assert_openssl_verifies,
    openssl_verify_fails,
)

from openxpki_py.audit import verify_chain
from openxpki_py.db.schema import audit_log, certificate, crl, csr

CLI = str(Path(sys.executable).parent / "openxpki-py")


def user_csr(key: Any) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ignored")]))
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def cli(inst: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "--config", str(inst.config_path), *args], capture_output=True, text=True,
                          timeout=120, check=False)


def rows(inst: Any, table: Any) -> int:
    with inst.services.db.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


@pytest.mark.parametrize("algorithm", ["rsa-2048", "ec-p256"])
def test_issue_revoke_crl_with_hsm_key(make_instance: Callable[..., Any], db_engine: Any, tmp_path: Path,
                                       algorithm: str) -> None:
    inst = make_instance(db_engine, algorithm=algorithm, init_ca=False)
    init = cli(inst, "ca", "init", "--out", str(tmp_path / "ca.pem"))
    assert init.returncode == 0, init.stderr
    assert "CA initialised: CN=Test Smartcard CA" in init.stderr
    assert "OCSP responder key created" in init.stderr  # next to the CA key, with its first certificate
    ca = inst.services.ca
    protection = ca.key_backend.key_protection()
    assert protection["never_extractable"] and protection["always_sensitive"] and protection["local"]
    assert protection["sensitive"] and not protection["extractable"] and protection["token"]
    ca_cert = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    assert_cert_lints_clean(ca_cert, tmp_path)

    issued = []
    for profile, key in (("smartcard_logon", rsa.generate_private_key(65537, 2048)),
                         ("encryption", ec.generate_private_key(ec.SECP256R1()))):
        (tmp_path / f"{profile}.csr").write_bytes(user_csr(key))
        out = tmp_path / f"{profile}.pem"
        result = cli(inst, "ca", "issue", "--profile", profile, "--csr", str(tmp_path / f"{profile}.csr"),
                     "--user", "alice", "--out", str(out))
        assert result.returncode == 0, result.stderr
        assert "subject and extensions in the CSR are ignored" in result.stderr
        cert = x509.load_pem_x509_certificate(out.read_bytes())
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "Alice Example"
        assert_cert_lints_clean(cert, tmp_path)
        assert_chain_lints_clean(ca_cert, cert, tmp_path)
        assert_openssl_verifies(ca_cert, cert, tmp_path)
        issued.append(cert)
    assert rows(inst, certificate) == 3  # alice's two and the OCSP responder's

    revoke = cli(inst, "ca", "revoke", format(issued[0].serial_number, "x"), "--reason", "keyCompromise")
    assert revoke.returncode == 0, revoke.stderr
    crl_run = cli(inst, "ca", "crl", "--out", str(tmp_path / "crl.pem"))
    assert crl_run.returncode == 0, crl_run.stderr
    assert "CRL number 1 issued with 1 revoked" in crl_run.stdout
    issued_crl = x509.load_pem_x509_crl((tmp_path / "crl.pem").read_bytes())
    assert_crl_lints_clean(issued_crl, tmp_path)
    assert "certificate revoked" in openssl_verify_fails(ca_cert, issued[0], tmp_path, issued_crl)
    assert_openssl_verifies(ca_cert, issued[1], tmp_path, issued_crl)
    published = inst.folder / "crl" / "test-pki.crl"
    assert x509.load_der_x509_crl(published.read_bytes()).extensions.get_extension_for_class(
        x509.CRLNumber).value.crl_number == 1
    second = cli(inst, "ca", "crl")
    assert "CRL number 2 issued" in second.stdout  # monotonic
    with inst.services.db.connect() as conn:
        assert verify_chain(conn).ok
        events = [r.event for r in conn.execute(select(audit_log.c.event).order_by(audit_log.c.id))]
    # ca init also certifies the OCSP responder's key: the first cert.issue.
    assert events == ["ca.init", "cert.issue", "cert.issue", "cert.issue", "cert.revoke", "crl.issue", "crl.issue"]


def test_bad_inputs_give_one_line_errors_and_store_nothing(make_instance: Callable[..., Any],
                                                           sqlite_engine: Any, tmp_path: Path) -> None:
    inst = make_instance(sqlite_engine)
    weak = tmp_path / "weak.csr"
    weak.write_bytes(user_csr(rsa.generate_private_key(65537, 1024)))
    garbage = tmp_path / "garbage.csr"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
    good = tmp_path / "good.csr"
    good.write_bytes(user_csr(ec.generate_private_key(ec.SECP256R1())))
    cases = [
        (["ca", "issue", "--profile", "smartcard_logon", "--csr", str(weak), "--user", "alice"], 5,
         "[csr.key_size]: RSA key of 1024 bits is too weak; profile smartcard_logon needs at least 2048"),
        (["ca", "issue", "--profile", "smartcard_logon", "--csr", str(garbage), "--user", "alice"], 5,
         "[csr.parse]: the CSR cannot be parsed"),
        (["ca", "issue", "--profile", "vpn", "--csr", str(good), "--user", "alice"], 5,
         "[profile.unknown]: unknown certificate profile 'vpn'"),
        (["ca", "issue", "--profile", "smartcard_logon", "--csr", str(good), "--user", "mallory"], 9,
         "mallory"),
        (["ca", "revoke", "zz-not-hex"], 6, "'zz-not-hex' is not a certificate serial number"),
        (["ca", "revoke", "abcdef"], 6, "no certificate with serial abcdef"),
        (["ca", "init"], 8, "the CA is already initialised"),
    ]
    for argv, code, message in cases:
        result = cli(inst, *argv)
        assert result.returncode == code, (argv, result.returncode, result.stderr)
        assert message in result.stderr, (argv, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # one line, no traceback
    assert rows(inst, certificate) == 0 and rows(inst, csr) == 0 and rows(inst, crl) == 0


def _with_key(**changes: Any) -> Callable[[dict[str, Any]], None]:
    def apply(settings: dict[str, Any]) -> None:
        settings["ca"]["key"].update(changes)
    return apply


def test_hsm_problems_are_named(make_instance: Callable[..., Any], sqlite_engine: Any, tmp_path: Path) -> None:
    inst = make_instance(sqlite_engine)
    good = tmp_path / "good.csr"
    good.write_bytes(user_csr(ec.generate_private_key(ec.SECP256R1())))
    issue = ["ca", "issue", "--profile", "smartcard_logon", "--csr", str(good), "--user", "alice"]

    wrong_pin = tmp_path / "wrong.pin"
    wrong_pin.write_text("0000\n")
    variants = [
        (_with_key(pin_file=str(wrong_pin)), "[token.pin]", "1234"),
        (_with_key(token_label="no-such-token"), "[token.not_found]", None),
        (_with_key(module="/usr/lib/no-such-pkcs11.so"), "/usr/lib/no-such-pkcs11.so", None),
        (_with_key(key_label="no-such-key"), "[token.key_not_found]", None),
    ]
    for change, message, secret in variants:
        change(inst.settings)
        broken = tmp_path / "broken.yaml"
        import yaml

        broken.write_text(yaml.safe_dump(inst.settings))
        result = subprocess.run([CLI, "--config", str(broken), *issue], capture_output=True, text=True,
                                timeout=60, check=False)
        assert result.returncode in (3, 4), result.stderr
        assert message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        if secret:
            assert secret not in result.stderr  # the right PIN is never echoed
        # restore for the next variant
        inst.settings["ca"]["key"].update(
            pin_file=str(inst.folder / "ca-token.pin"), token_label=inst.ca_token.label,
            module=str(inst.ca_token.module), key_label="ca-signing")
    assert rows(inst, certificate) == 0


def test_external_root(make_instance: Callable[..., Any], sqlite_engine: Any, tmp_path: Path) -> None:
    """ca init --external-root: the key is made in the token, the CSR goes to the root, the
    certificate comes back with ca import-cert; until then nothing can be issued."""
    from datetime import datetime, timedelta, timezone

    inst = make_instance(sqlite_engine, init_ca=False)
    init = cli(inst, "ca", "init", "--external-root", "--out", str(tmp_path / "ca.csr"))
    assert init.returncode == 0, init.stderr
    request = x509.load_pem_x509_csr((tmp_path / "ca.csr").read_bytes())
    assert request.is_signature_valid  # signed inside the token
    good = tmp_path / "good.csr"
    good.write_bytes(user_csr(ec.generate_private_key(ec.SECP256R1())))
    early = cli(inst, "ca", "issue", "--profile", "smartcard_logon", "--csr", str(good), "--user", "alice")
    assert early.returncode == 8 and "waits for its certificate from the external root" in early.stderr

    root_key = rsa.generate_private_key(65537, 2048)
    root_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "External Root")])
    now = datetime.now(timezone.utc)
    root = (x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name)
            .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    sub = (x509.CertificateBuilder().subject_name(request.subject).issuer_name(root_name)
           .public_key(request.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now).not_valid_after(now + timedelta(days=1825))
           .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
           .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                        data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                        crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
           .add_extension(x509.SubjectKeyIdentifier.from_public_key(request.public_key()), critical=False)
           .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                          critical=False)
           .sign(root_key, hashes.SHA256()))
    wrong = (x509.CertificateBuilder().subject_name(request.subject).issuer_name(root_name)
             .public_key(root_key.public_key()).serial_number(1).not_valid_before(now)
             .not_valid_after(now + timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
             .sign(root_key, hashes.SHA256()))
    (tmp_path / "wrong.pem").write_bytes(wrong.public_bytes(serialization.Encoding.PEM))
    refused = cli(inst, "ca", "import-cert", str(tmp_path / "wrong.pem"))
    assert refused.returncode == 8 and "does not belong to the CA key in the token" in refused.stderr
    bare = (x509.CertificateBuilder().subject_name(request.subject).issuer_name(root_name)
            .public_key(request.public_key()).serial_number(2).not_valid_before(now)
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(root_key, hashes.SHA256()))
    (tmp_path / "bare.pem").write_bytes(bare.public_bytes(serialization.Encoding.PEM))
    refused = cli(inst, "ca", "import-cert", str(tmp_path / "bare.pem"))
    assert refused.returncode == 8 and "lacks keyCertSign and cRLSign" in refused.stderr
    (tmp_path / "sub.pem").write_bytes(sub.public_bytes(serialization.Encoding.PEM))
    imported = cli(inst, "ca", "import-cert", str(tmp_path / "sub.pem"))
    assert imported.returncode == 0, imported.stderr

    out = tmp_path / "leaf.pem"
    issued = cli(inst, "ca", "issue", "--profile", "smartcard_logon", "--csr", str(good), "--user", "alice",
                 "--out", str(out))
    assert issued.returncode == 0, issued.stderr
    leaf = x509.load_pem_x509_certificate(out.read_bytes())
    assert leaf.issuer == request.subject
    (tmp_path / "chain.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "chain.pem"), "-untrusted",
                             str(tmp_path / "sub.pem"), str(out)], capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert_chain_lints_clean(sub, leaf, tmp_path)


def test_ca_show_reports_whether_the_key_can_sign(make_instance: Callable[..., Any], sqlite_engine: Any,
                                                 tmp_path: Path) -> None:
    import yaml

    inst = make_instance(sqlite_engine)
    shown = cli(inst, "ca", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["key_status"].startswith("ok")
    wrong_pin = tmp_path / "wrong.pin"
    wrong_pin.write_text("0000\n")
    for change, code in ((_with_key(pin_file=str(wrong_pin)), "token.pin"),
                         (_with_key(token_label="no-such-token"), "token.not_found")):
        change(inst.settings)
        broken = tmp_path / "broken.yaml"
        broken.write_text(yaml.safe_dump(inst.settings))
        result = subprocess.run([CLI, "--config", str(broken), "ca", "show"], capture_output=True, text=True,
                                timeout=60, check=False)
        # The certificate is still shown; the key's problem is named and the exit code says "token".
        assert result.returncode == 4, result.stdout + result.stderr
        assert "subject" in result.stdout and f"UNUSABLE [{code}]" in result.stdout
        assert "1234" not in result.stdout + result.stderr
        inst.settings["ca"]["key"].update(pin_file=str(inst.folder / "ca-token.pin"),
                                          token_label=inst.ca_token.label)
