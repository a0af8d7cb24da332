"""`make demo` (contrib/demo/run_demo.py) keeps working: it is the README's main-job command."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID
from sqlalchemy import select

from openxpki_py.db.engine import open_engine
from openxpki_py.db.schema import ca_certificate, certificate

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_demo_personalizes_alices_card() -> None:
    folder = Path(tempfile.mkdtemp(prefix="openxpki-demo-test-"))
    folder.chmod(0o755)  # Apache (www-data) must reach the instance below it
    try:
        result = subprocess.run(
            [sys.executable, str(REPO / "contrib" / "demo" / "run_demo.py"), "--dir", str(folder / "demo"),
             "--venv", str(Path(sys.executable).parent.parent), "--port", "0"],
            capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        out = result.stdout + result.stderr
        assert "done: 2 certificates on the card" in out
        assert 'browser: "Your card is ready."' in out
        # The logon key was made on the card (never extractable); the escrowed encryption key was
        # imported (sensitive, not extractable, but made outside the card: not "never extractable").
        assert out.count("Certificate Object") == 2 and out.count("never extractable") == 1
        assert "smartcard_logon" in out and "encryption" in out
        assert "key-recovery key created" in out
        assert "escrowed key 2/2 (encryption) imported onto the card" in out
        assert re.search(r"^\s+\d+\s+encryption\s+rsa-2048\s+installed", out, re.M), out[-3000:]
        _every_url_in_the_certificates_answers(folder / "demo")
    finally:
        apachectl = folder / "demo" / "httpd" / "apachectl"
        if apachectl.exists():
            subprocess.run([str(apachectl), "stop"], capture_output=True, check=False, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def _fetch(url: str) -> bytes:
    assert url.startswith("http://127.0.0.1:"), url  # plain http, on the demo's own port
    with urllib.request.urlopen(url, timeout=30) as answer:  # noqa: S310 - a URL from our own certificate
        assert answer.status == 200, url
        return bytes(answer.read())


def _every_url_in_the_certificates_answers(base: Path) -> None:
    """The CRL distribution point and CA issuer URL of each issued certificate answer with the right object."""
    engine = open_engine(f"sqlite:///{base / 'db' / 'openxpki.db'}")
    try:
        with engine.connect() as conn:
            issued = [x509.load_der_x509_certificate(bytes(r.der)) for r in conn.execute(
                select(certificate.c.der).where(certificate.c.owner == "alice"))]
            (ca_der,) = [bytes(r.der) for r in conn.execute(select(ca_certificate.c.der))]
    finally:
        engine.dispose()
    ca = x509.load_der_x509_certificate(ca_der)
    assert len(issued) == 2
    for cert in issued:
        cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        crl_urls = [name.value for point in cdp for name in point.full_name or []]
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        ca_urls = [d.access_location.value for d in aia if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS]
        assert crl_urls and ca_urls
        for url in crl_urls:
            crl = x509.load_der_x509_crl(_fetch(url))
            assert crl.issuer == ca.subject and crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
        for url in ca_urls:
            assert _fetch(url) == ca_der
