"""What relying parties need in a logon certificate: AD strong mapping, MIT PKINIT names, open EKU lists.

The DER structures cryptography has no type for are pinned against golden
bytes derived by hand from their published ASN.1 (comments give the source).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from support.pkix import assert_cert_lints_clean, assert_chain_lints_clean
from test_ca_unit import engine, make_ca, user_csr  # noqa: F401 - fixtures and helpers shared with the CA tests

from openxpki_py.crypto import der
from openxpki_py.crypto.ca import IssuanceRequest
from openxpki_py.crypto.profiles import ProfileSet
from openxpki_py.directory.core import sid_from_binary, text_values
from openxpki_py.errors import ConfigError, PolicyViolation

SID = "S-1-5-21-1004336348-1177238915-682003330-1104"
# KB5014754's extension, as AD CS writes it: SEQUENCE { [0] { OID 1.3.6.1.4.1.311.25.2.1,
# [0] { OCTET STRING "S-1-5-21-…" (ASCII) } } } — the string form of the SID, in an OCTET STRING.
SID_EXTENSION_DER = bytes.fromhex(
    "303fa03d060a2b060104018237190201a02f042d" + SID.encode("ascii").hex())
# RFC 4556 §3.2.2 KRB5PrincipalName for alice@EXAMPLE.COM (EXPLICIT tags, GeneralString):
# SEQUENCE { [0] GeneralString "EXAMPLE.COM", [1] SEQUENCE { [0] INTEGER 1 (NT-PRINCIPAL),
#                                                           [1] SEQUENCE OF GeneralString { "alice" } } }
ALICE_PRINCIPAL_DER = bytes.fromhex(
    "3023a00d1b0b" + b"EXAMPLE.COM".hex() + "a1123010a003020101a10930071b05" + b"alice".hex())
KRBTGT_PRINCIPAL_DER = bytes.fromhex(
    "3031a00d1b0b" + b"EXAMPLE.COM".hex() + "a120301ea003020102a11730151b06" + b"krbtgt".hex()
    + "1b0b" + b"EXAMPLE.COM".hex())


def test_sid_extension_is_encoded_as_ad_cs_does() -> None:
    extension = der.sid_extension(SID)
    assert extension.oid.dotted_string == "1.3.6.1.4.1.311.25.2"
    assert extension.value == SID_EXTENSION_DER
    with pytest.raises(ValueError, match="S-1-5-21"):
        der.sid_extension("not-a-sid")


def test_kerberos_principal_names() -> None:
    assert der.krb5_principal_name("alice@EXAMPLE.COM") == ALICE_PRINCIPAL_DER
    assert der.krb5_principal_name("krbtgt/EXAMPLE.COM@EXAMPLE.COM") == KRBTGT_PRINCIPAL_DER
    for bad in ("alice", "@EXAMPLE.COM", "jürgen@EXAMPLE.COM", "a//b@EXAMPLE.COM"):
        with pytest.raises(ValueError):
            der.krb5_principal_name(bad)


def test_binary_object_sid_from_active_directory() -> None:
    # objectSid as AD stores it (MS-DTYP 2.4.2): revision 1, 5 sub-authorities, authority 5 (big endian),
    # sub-authorities little endian.
    subs = [21, 1004336348, 1177238915, 682003330, 1104]
    raw = bytes([1, len(subs)]) + (5).to_bytes(6, "big") + b"".join(s.to_bytes(4, "little") for s in subs)
    assert sid_from_binary(raw) == SID
    assert text_values({"objectSid": [raw]})["objectsid"] == (SID,)
    assert text_values({"objectSid": [SID.encode()]})["objectsid"] == (SID,)  # other directories: text


ALICE = {"cn": "Alice Example", "mail": "alice@example.com", "upn": "alice@example.com", "login": "alice",
         "object_sid": SID}


def _issue(ca: Any, engine: Any, profile: str, attributes: dict[str, str]) -> x509.Certificate:
    with engine.begin() as conn:
        return ca.issue_certificate(conn, IssuanceRequest(
            csr=user_csr(ec.generate_private_key(ec.SECP256R1())), profile=profile,
            subject_attributes=attributes, owner="alice", requester="alice")).certificate


def test_logon_certificate_for_ad_and_mit_defaults(engine: Any, tmp_path: Path) -> None:
    ca = make_ca(engine)
    ca.profiles = ProfileSet.load(None, {"organization": "Example Corp", "country": "DE",
                                         "kerberos_realm": "EXAMPLE.COM"})
    cert = _issue(ca, engine, "smartcard_logon", ALICE)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    other = {o.type_id.dotted_string: o.value for o in san.get_values_for_type(x509.OtherName)}
    assert other == {"1.3.6.1.4.1.311.20.2.3": der.utf8_string("alice@example.com"),
                     "1.3.6.1.5.2.2": ALICE_PRINCIPAL_DER}
    sid = cert.extensions.get_extension_for_oid(der.OID_NTDS_CA_SECURITY_EXT)
    assert not sid.critical and sid.value.public_bytes() == SID_EXTENSION_DER
    eku = [o.dotted_string for o in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value]
    assert eku == ["1.3.6.1.5.5.7.3.2", "1.3.6.1.4.1.311.20.2.2", "1.3.6.1.5.2.3.4"]
    assert_cert_lints_clean(cert, tmp_path)
    with engine.connect() as conn:
        assert_chain_lints_clean(ca.certificate(conn), cert, tmp_path)


def test_user_without_mail_or_sid_still_gets_a_logon_certificate(engine: Any, tmp_path: Path) -> None:
    ca = make_ca(engine)  # no kerberos_realm configured: that SAN entry is left out too
    cert = _issue(ca, engine, "smartcard_logon", {"cn": "Dave", "upn": "dave@example.com", "login": "dave"})
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == []
    assert [o.type_id.dotted_string for o in san.get_values_for_type(x509.OtherName)] == ["1.3.6.1.4.1.311.20.2.3"]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_oid(der.OID_NTDS_CA_SECURITY_EXT)
    assert_cert_lints_clean(cert, tmp_path)
    # The UPN stays required: without it, the request is refused with a clear code.
    with pytest.raises(PolicyViolation) as refused:
        _issue(ca, engine, "smartcard_logon", {"cn": "Dave", "login": "dave"})
    assert refused.value.code == "profile.attribute_missing"


def _site_profile(folder: Path, **changes: Any) -> Path:
    data = yaml.safe_load((Path(__file__).resolve().parents[2] / "openxpki_py" / "crypto" / "profile_defs"
                           / "smartcard_logon.yaml").read_text())
    data.update(changes)
    folder.mkdir(exist_ok=True)
    (folder / "site_logon.yaml").write_text(yaml.safe_dump(data))
    return folder


def test_any_eku_by_oid_and_other_name_san(engine: Any, tmp_path: Path) -> None:
    folder = _site_profile(tmp_path / "profiles", extended_key_usage=["client_auth", "1.3.6.1.4.1.99999.1"],
                           san=[{"type": "upn", "value": "{upn}"},
                                {"type": "other_name", "oid": "1.3.6.1.4.1.99999.2", "value": "{cn}"},
                                {"type": "uri", "value": "tag:microsoft.com,2022-09-14:sid:{object_sid}"}])
    ca = make_ca(engine)
    ca.profiles = ProfileSet.load(folder, {})
    cert = _issue(ca, engine, "site_logon", ALICE)
    eku = [o.dotted_string for o in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value]
    assert eku == ["1.3.6.1.5.5.7.3.2", "1.3.6.1.4.1.99999.1"]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"tag:microsoft.com,2022-09-14:sid:{SID}"]
    assert x509.OtherName(x509.ObjectIdentifier("1.3.6.1.4.1.99999.2"), der.utf8_string("Alice Example")) in san


@pytest.mark.parametrize(("changes", "key"), [
    ({"extended_key_usage": ["client_auth", "no_such_usage"]}, "extended_key_usage"),
    ({"extended_key_usage": ["client_auth", "1.3.6.1.5.5.7.3.2"]}, "extended_key_usage"),
    ({"san": [{"type": "x400", "value": "{cn}"}]}, "san[0].type"),
    ({"san": [{"type": "other_name", "value": "{cn}"}]}, "san[0].oid"),
    ({"san": [{"type": "other_name", "oid": "not.an.oid", "value": "{cn}"}]}, "san[0].oid"),
    ({"sid_extension": {"value": "{object_sid}", "critical": True}}, "sid_extension.critical"),
])
def test_profile_mistakes_name_the_key(tmp_path: Path, changes: dict[str, Any], key: str) -> None:
    folder = _site_profile(tmp_path / "profiles", **changes)
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        ProfileSet.load(folder, {})
