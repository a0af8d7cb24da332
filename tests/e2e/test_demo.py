"""`make demo` (contrib/demo/run_demo.py) keeps working: it is the README's main-job command."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

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
        assert out.count("Certificate Object") == 2 and out.count("never extractable") == 2
        assert "smartcard_logon" in out and "encryption" in out
        _every_url_in_the_certificates_answers(folder / "demo")
    finally:
        apachectl = folder / "demo" / "httpd" / "apachectl"
        if apachectl.exists():
            subprocess.run([str(apachectl), "stop"], capture_output=True, check=False, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def test_demo_on_a_virtual_card(pcscd: Any, card: str) -> None:
    """`make demo CARD=piv|openpgp`: the same main job with a software card behind pcscd + vpcd.

    The test's pcscd (which holds the machine-wide lock) is the demo's: ``--pcscd-running``.
    """
    folder = Path(tempfile.mkdtemp(prefix=f"openxpki-demo-{card}-test-"))
    folder.chmod(0o755)
    try:
        result = subprocess.run(
            [sys.executable, str(REPO / "contrib" / "demo" / "run_demo.py"), "--dir", str(folder / "demo"),
             "--venv", str(Path(sys.executable).parent.parent), "--port", "0", "--card", card, "--pcscd-running"],
            capture_output=True, text=True, timeout=300, check=False)
        out = result.stdout + result.stderr
        assert result.returncode == 0, out[-6000:]
        if card == "piv":
            # Both certificates; the demo's PIV policy makes the encryption key P-256.
            assert "done: 2 certificates on the card" in out and 'browser: "Your card is ready."' in out
            assert "plan for this card: encryption certificate, ec-p256 key made on the card" in out
            assert out.count("Certificate Object") == 2 and "Private Key Object; EC" in out
        else:
            # The logon certificate, and the encryption type left out up front, visibly.
            assert "done: 1 certificate on the card" in out, out[-6000:]
            assert "plan for this card: Not on this card: encryption" in out
            assert 'browser: "Your card is ready, without: encryption' in out
            assert out.count("Certificate Object") == 1
        assert "The virtual card is removed again" in out
    finally:
        apachectl = folder / "demo" / "httpd" / "apachectl"
        if apachectl.exists():
            subprocess.run([str(apachectl), "stop"], capture_output=True, check=False, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["piv", "openpgp"])
def card(request: pytest.FixtureRequest) -> str:
    return str(request.param)


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
