"""Mail as a relying party writes it and a mail program opens it: ``openssl cms`` and the key on the card.

``cms_encrypt`` encrypts to a certificate the way any sender does (RSA key
transport, or ECDH key agreement for an EC certificate); ``cms_decrypt_on_card``
opens it with the private key on the card through OpenSSL's PKCS#11 engine
(Debian ``libengine-pkcs11-openssl``) and the card's own PKCS#11 module:
SoftHSM's for a SoftHSM card, OpenSC's (through pcscd) for the virtual PIV
card.  The key never leaves the card: OpenSSL asks the card to decrypt
(RSA) or to derive the ECDH secret (EC).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

ENGINE = Path("/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so")


def _need_engine() -> None:
    """A missing engine fails the test (not a skip): ``make test`` installs it."""
    if not ENGINE.exists():
        pytest.fail("Debian package libengine-pkcs11-openssl is not installed (contrib/install/debian-deps.sh "
                    "--with-tests)")


def cms_encrypt(cert: x509.Certificate, message: bytes, folder: Path) -> tuple[Path, Path]:
    """(the encrypted mail, the certificate's PEM file) as ``openssl cms -encrypt -aes256`` writes them."""
    cert_pem = folder / f"recipient-{cert.serial_number:x}.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    plain, mail = folder / f"mail-{cert.serial_number:x}.txt", folder / f"mail-{cert.serial_number:x}.p7m"
    plain.write_bytes(message)
    subprocess.run(["openssl", "cms", "-encrypt", "-aes256", "-binary", "-in", str(plain), "-outform", "DER",
                    "-out", str(mail), "-recip", str(cert_pem)], check=True, capture_output=True, timeout=60)
    plain.unlink()
    return mail, cert_pem


def cms_decrypt_on_card(mail: Path, cert_pem: Path, *, module: Path, key_id: bytes, pin: str,
                        token_label: str | None = None, env: dict[str, str] | None = None) -> bytes:
    """The mail's content, decrypted by the card's key ``key_id`` (PKCS#11 URI) through the engine.

    The PIN goes to the engine through ``-passin env:`` (not ``pin-value`` in the URI: no PIN in argv).
    """
    _need_engine()
    uri = "pkcs11:" + (f"token={quote(token_label, safe='')};" if token_label else "") + \
        "id=" + "".join(f"%{b:02x}" for b in key_id) + ";type=private"
    result = subprocess.run(
        ["openssl", "cms", "-decrypt", "-binary", "-inform", "DER", "-in", str(mail), "-recip", str(cert_pem),
         "-engine", "pkcs11", "-keyform", "engine", "-inkey", uri, "-passin", "env:CARD_PIN"],
        env={**os.environ, **(env or {}), "PKCS11_MODULE_PATH": str(module), "CARD_PIN": pin},
        stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, f"openssl cms -decrypt with the card failed:\n{stderr}"
    return result.stdout
