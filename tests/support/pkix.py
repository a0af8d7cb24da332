"""Lint and verify what the project issues, with the tools operators use:
pkilint's command-line linters and ``openssl verify``.

Each helper asserts: a finding at WARNING or above, or a failed
verification, fails the calling test with the tool's own output.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

BIN = Path(sys.executable).parent


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def write_pem(obj: x509.Certificate | x509.CertificateRevocationList, path: Path) -> Path:
    path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    return path


def assert_cert_lints_clean(cert: x509.Certificate, folder: Path) -> None:
    pem = write_pem(cert, folder / f"cert-{cert.serial_number:x}.pem")
    result = _run([str(BIN / "lint_pkix_cert"), "lint", "-s", "WARNING", str(pem)])
    assert result.returncode == 0, f"pkilint findings for {cert.subject.rfc4514_string()}:\n{result.stdout}{result.stderr}"


def assert_chain_lints_clean(ca: x509.Certificate, leaf: x509.Certificate, folder: Path) -> None:
    ca_pem = write_pem(ca, folder / "chain-ca.pem")
    leaf_pem = write_pem(leaf, folder / f"chain-leaf-{leaf.serial_number:x}.pem")
    result = _run([str(BIN / "lint_pkix_signer_signee_cert_chain"), "lint", str(ca_pem), str(leaf_pem)])
    assert result.returncode == 0, f"pkilint chain findings:\n{result.stdout}{result.stderr}"


def assert_crl_lints_clean(crl: x509.CertificateRevocationList, folder: Path) -> None:
    pem = write_pem(crl, folder / "crl.pem")
    result = _run([str(BIN / "lint_crl"), "lint", "-t", "CRL", "-p", "PKIX", str(pem)])
    assert result.returncode == 0, f"pkilint CRL findings:\n{result.stdout}{result.stderr}"


def assert_openssl_verifies(ca: x509.Certificate, leaf: x509.Certificate, folder: Path,
                            crl: x509.CertificateRevocationList | None = None) -> None:
    ca_pem = write_pem(ca, folder / "verify-ca.pem")
    leaf_pem = write_pem(leaf, folder / f"verify-leaf-{leaf.serial_number:x}.pem")
    argv = ["openssl", "verify", "-CAfile", str(ca_pem)]
    if crl is not None:
        argv += ["-CRLfile", str(write_pem(crl, folder / "verify-crl.pem")), "-crl_check"]
    # the leaf's purpose is checked by its EKU; -purpose any keeps this about the chain
    result = _run(argv + [str(leaf_pem)])
    assert result.returncode == 0 and ": OK" in result.stdout, f"openssl verify failed:\n{result.stdout}{result.stderr}"


def openssl_verify_fails(ca: x509.Certificate, leaf: x509.Certificate, folder: Path,
                         crl: x509.CertificateRevocationList) -> str:
    """For revoked certificates: returns openssl's complaint (the test asserts on it)."""
    ca_pem = write_pem(ca, folder / "verify-ca.pem")
    leaf_pem = write_pem(leaf, folder / f"verify-leaf-{leaf.serial_number:x}.pem")
    crl_pem = write_pem(crl, folder / "verify-crl.pem")
    result = _run(["openssl", "verify", "-CAfile", str(ca_pem), "-CRLfile", str(crl_pem), "-crl_check", str(leaf_pem)])
    assert result.returncode != 0, "openssl accepted a certificate that should be revoked"
    return result.stdout + result.stderr
