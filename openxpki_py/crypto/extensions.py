"""X.509 extensions for CA and end-entity certificates, from a profile."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import AuthorityInformationAccessOID

from .profiles import Profile, eku_oid

_KU_FLAGS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)


def key_usage(*usages: str) -> x509.KeyUsage:
    flags = {name: name in usages for name in _KU_FLAGS}
    return x509.KeyUsage(**flags, encipher_only=False, decipher_only=False)


def ca_extensions(
    builder: x509.CertificateBuilder, public_key: CertificatePublicKeyTypes, *, self_signed: bool
) -> x509.CertificateBuilder:
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = (
        builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage("digital_signature", "key_cert_sign", "crl_sign"), critical=True)
        .add_extension(ski, critical=False)
    )
    if self_signed:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    return builder


def end_entity_extensions(
    builder: x509.CertificateBuilder,
    *,
    profile: Profile,
    public_key: CertificatePublicKeyTypes,
    alt_names: list[x509.GeneralName],
    issuer_ski: x509.SubjectKeyIdentifier,
    crl_url: str,
    issuer_url: str,
    sid: x509.UnrecognizedExtension | None = None,
    ocsp_url: str | None = None,
) -> x509.CertificateBuilder:
    if isinstance(public_key, rsa.RSAPublicKey):
        usages = profile.key_usage_rsa
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        usages = profile.key_usage_ec
    else:  # the CSR validators refuse other key types long before this
        raise ValueError(f"unsupported key type {type(public_key).__name__}")
    access = [x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(issuer_url))]
    if ocsp_url is not None and not profile.ocsp_no_check:  # the responder's own certificate names no OCSP
        access.insert(0, x509.AccessDescription(AuthorityInformationAccessOID.OCSP,
                                                x509.UniformResourceIdentifier(ocsp_url)))
    builder = (
        builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(*usages), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), critical=False)
        .add_extension(
            x509.CRLDistributionPoints(
                [x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], None, None, None)]
            ),
            critical=False,
        )
        .add_extension(x509.AuthorityInformationAccess(access), critical=False)
    )
    if profile.extended_key_usage:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([eku_oid(name) for name in profile.extended_key_usage]), critical=False
        )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    if sid is not None:
        builder = builder.add_extension(sid, critical=False)
    if profile.ocsp_no_check:
        builder = builder.add_extension(x509.OCSPNoCheck(), critical=False)
    return builder
