"""The few DER structures cryptography has no type for, encoded by hand.

- the UPN otherName value (UTF8String),
- the Kerberos principal name of id-pkinit-san (RFC 4556 §3.2.2,
  KRB5PrincipalName; Kerberos ASN.1 uses EXPLICIT tags),
- Microsoft's SID extension for strong certificate mapping (KB5014754).

Each is a fixed, small structure; a test pins each against golden bytes.
"""

from __future__ import annotations

import re

from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier

OID_UPN = ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")
OID_PKINIT_SAN = ObjectIdentifier("1.3.6.1.5.2.2")
# szOID_NTDS_CA_SECURITY_EXT and the otherName type inside it (szOID_NTDS_OBJECTSID).
OID_NTDS_CA_SECURITY_EXT = ObjectIdentifier("1.3.6.1.4.1.311.25.2")
OID_NTDS_OBJECTSID = ObjectIdentifier("1.3.6.1.4.1.311.25.2.1")

KRB5_NT_PRINCIPAL = 1
KRB5_NT_SRV_INST = 2

SID_RE = re.compile(r"^S-1-[0-9]+(-[0-9]+){1,15}$")


def tlv(tag: int, content: bytes) -> bytes:
    """One DER element: tag, definite length, content."""
    size = len(content)
    if size < 0x80:
        length = bytes([size])
    else:
        raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def _integer(value: int) -> bytes:
    raw = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True)
    return tlv(0x02, raw)


def _oid(oid: ObjectIdentifier) -> bytes:
    arcs = [int(a) for a in oid.dotted_string.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return tlv(0x06, bytes(body))


def utf8_string(value: str) -> bytes:
    return tlv(0x0C, value.encode("utf-8"))


def upn_other_name(upn: str) -> x509.OtherName:
    """SAN otherName 1.3.6.1.4.1.311.20.2.3 (Microsoft's UPN), value a UTF8String."""
    return x509.OtherName(OID_UPN, utf8_string(upn))


def krb5_principal_name(principal: str) -> bytes:
    """DER of KRB5PrincipalName for ``name[/instance]@REALM`` (RFC 4556 §3.2.2).

    ``krbtgt/REALM@REALM`` (a KDC) gets name-type NT-SRV-INST, a user
    NT-PRINCIPAL.  KerberosString is a GeneralString holding IA5 text.
    """
    name, at, realm = principal.rpartition("@")
    if not at or not name or not realm:
        raise ValueError(f"not a Kerberos principal (name@REALM): {principal!r}")
    parts = name.split("/")
    if not all(parts) or not (name + realm).isascii():
        raise ValueError(f"not a Kerberos principal (ASCII components): {principal!r}")
    name_type = KRB5_NT_SRV_INST if len(parts) > 1 else KRB5_NT_PRINCIPAL

    def kerberos_string(text: str) -> bytes:
        return tlv(0x1B, text.encode("ascii"))

    principal_name = tlv(0x30, tlv(0xA0, _integer(name_type))
                         + tlv(0xA1, tlv(0x30, b"".join(kerberos_string(p) for p in parts))))
    return tlv(0x30, tlv(0xA0, kerberos_string(realm)) + tlv(0xA1, principal_name))


def pkinit_san(principal: str) -> x509.OtherName:
    """SAN otherName id-pkinit-san carrying the Kerberos principal."""
    return x509.OtherName(OID_PKINIT_SAN, krb5_principal_name(principal))


def sid_extension(sid: str) -> x509.UnrecognizedExtension:
    """Microsoft's SID extension (strong mapping, KB5014754), encoded as AD CS encodes it.

    The value is a GeneralNames with one otherName: type szOID_NTDS_OBJECTSID,
    value [0] EXPLICIT OCTET STRING holding the SID's *string* form in ASCII
    ("S-1-5-21-…"), not the binary SID and not a UTF8String.  This is what
    certificates issued by AD CS after the May 2022 update carry and what
    domain controllers parse (structure as documented with KB5014754 and as
    PSPKI's X509NtdsSecurityExtension builds and parses it: 30 { A0 { OID, A0 { 04 … } } }).
    """
    if not SID_RE.match(sid):
        raise ValueError(f"not a SID in string form (S-1-5-21-…): {sid!r}")
    other_name = tlv(0xA0, _oid(OID_NTDS_OBJECTSID) + tlv(0xA0, tlv(0x04, sid.encode("ascii"))))
    return x509.UnrecognizedExtension(OID_NTDS_CA_SECURITY_EXT, tlv(0x30, other_name))
