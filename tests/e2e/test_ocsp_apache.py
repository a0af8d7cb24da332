"""The OCSP responder through Apache, asked by OpenSSL as a relying party would.

The site is the personalization e2e's (CA key in SoftHSM, PostgreSQL or
SQLite); ``openxpki-py ca init`` also made the responder's key in the token
and its delegated certificate.  ``openssl ocsp`` checks each answer: signed by
a responder the CA authorised, nonce echoed, status from the store.
"""

from __future__ import annotations

import base64
import subprocess
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID
from support.pkix import assert_cert_lints_clean
from test_personalization_e2e import BIN, PkiSite, pki_site  # noqa: F401, F811 - the site fixture is shared


def _cli(site: PkiSite, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "openxpki-py"), "--config", str(site.site.config_path), *args],
                          capture_output=True, text=True, timeout=120, user="www-data", check=False)


def _openssl_ocsp(site: PkiSite, folder: Path, *args: str) -> str:
    done = subprocess.run(
        ["openssl", "ocsp", "-issuer", str(folder / "ca.pem"), "-CAfile", str(folder / "ca.pem"),
         "-url", f"{site.site.base_url}/openxpki/ocsp", "-resp_text", *args],
        capture_output=True, text=True, timeout=60, check=False)
    return done.stdout + done.stderr


def test_openssl_checks_good_revoked_and_unknown(pki_site: PkiSite) -> None:
    # The CLI runs as www-data (as on a server): a folder it can reach and write.
    tmp_path = Path(tempfile.mkdtemp(prefix="openxpki-ocsp-", dir=pki_site.site.root))
    tmp_path.chmod(0o777)
    (tmp_path / "ca.pem").write_bytes(pki_site.ca_pem.public_bytes(serialization.Encoding.PEM))
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "x")]))
           .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()))
    (tmp_path / "alice.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    issued = _cli(pki_site, "ca", "issue", "--profile", "smartcard_logon", "--csr", str(tmp_path / "alice.csr"),
                  "--user", "alice", "--out", str(tmp_path / "alice.pem"))
    assert issued.returncode == 0, issued.stderr
    leaf = x509.load_pem_x509_certificate((tmp_path / "alice.pem").read_bytes())
    aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [d.access_location.value for d in aia if d.access_method == AuthorityInformationAccessOID.OCSP] == [
        "http://127.0.0.1/openxpki/ocsp"]  # the site's base_url: the AIA names the responder

    good = _openssl_ocsp(pki_site, tmp_path, "-cert", str(tmp_path / "alice.pem"))
    assert "Response verify OK" in good and f"{tmp_path / 'alice.pem'}: good" in good, good
    assert "WARNING: no nonce in response" not in good and "OCSP Nonce" in good

    revoked = _cli(pki_site, "ca", "revoke", format(leaf.serial_number, "x"), "--reason", "keyCompromise")
    assert revoked.returncode == 0, revoked.stderr
    answer = _openssl_ocsp(pki_site, tmp_path, "-cert", str(tmp_path / "alice.pem"))
    assert "Response verify OK" in answer and ": revoked" in answer and "keyCompromise" in answer, answer

    unknown = _openssl_ocsp(pki_site, tmp_path, "-serial", "0x1234567890abcdef")
    assert "Response verify OK" in unknown and ": unknown" in unknown, unknown

    # GET (RFC 5019): base64 in the path; the responder's certificate is the CA's delegate.
    request = ocsp.OCSPRequestBuilder().add_certificate(leaf, pki_site.ca_pem, hashes.SHA1()).build()
    encoded = urllib.parse.quote(base64.b64encode(request.public_bytes(serialization.Encoding.DER)).decode(), safe="")
    with urllib.request.urlopen(f"{pki_site.site.base_url}/openxpki/ocsp/{encoded}", timeout=30) as reply:  # noqa: S310
        assert reply.headers["Content-Type"] == "application/ocsp-response"
        response = ocsp.load_der_ocsp_response(reply.read())
    assert response.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert response.certificate_status == ocsp.OCSPCertStatus.REVOKED
    (responder,) = response.certificates
    assert ExtendedKeyUsageOID.OCSP_SIGNING in responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    responder.extensions.get_extension_for_class(x509.OCSPNoCheck)
    assert responder.issuer == pki_site.ca_pem.subject
    assert_cert_lints_clean(responder, tmp_path)

    # Garbage is a malformedRequest answer, not an error page.
    post = urllib.request.Request(f"{pki_site.site.base_url}/openxpki/ocsp", data=b"\x30\x03junk",
                                  headers={"Content-Type": "application/ocsp-request"})
    with urllib.request.urlopen(post, timeout=30) as reply:  # noqa: S310
        assert ocsp.load_der_ocsp_response(reply.read()).response_status == \
            ocsp.OCSPResponseStatus.MALFORMED_REQUEST
