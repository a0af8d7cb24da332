"""Certificate profiles: what a certificate of each kind contains.

Profiles are YAML files (built-ins in ``crypto/profile_defs/``, a site may
override them with ``ca.profiles_dir``).  A profile renders the subject,
the SAN entries and Microsoft's SID extension from *directory* attributes
(and ``ca.profile_variables``) only; the CSR contributes nothing but its
public key.  Extended key usages are named (see :data:`EKU_OIDS`) or given
as dotted OIDs; SAN entries are ``upn``, ``email``, ``dns``, ``uri``,
``kerberos_principal`` (id-pkinit-san) or ``other_name`` (any OID, UTF8
value), each required unless marked ``optional``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from ..configreader import Reader
from ..errors import ConfigError, PolicyViolation, UnknownProfile
from . import der

BUILTIN_DIR = Path(__file__).with_name("profile_defs")

OID_SMARTCARD_LOGON = ObjectIdentifier("1.3.6.1.4.1.311.20.2.2")
OID_RE = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")

NAME_OIDS: dict[str, ObjectIdentifier] = {
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME,
    "serialNumber": NameOID.SERIAL_NUMBER,
    "givenName": NameOID.GIVEN_NAME,
    "surname": NameOID.SURNAME,
    "UID": NameOID.USER_ID,
    "DC": NameOID.DOMAIN_COMPONENT,
}

EKU_OIDS: dict[str, ObjectIdentifier] = {
    "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "server_auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "code_signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "ocsp_signing": ExtendedKeyUsageOID.OCSP_SIGNING,
    "smartcard_logon": OID_SMARTCARD_LOGON,  # Microsoft: Windows smart card logon
    "pkinit_client": ObjectIdentifier("1.3.6.1.5.2.3.4"),  # id-pkinit-KPClientAuth (RFC 4556)
    "pkinit_kdc": ObjectIdentifier("1.3.6.1.5.2.3.5"),  # id-pkinit-KPKdc (RFC 4556)
}

KEY_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
)

SAN_KINDS = ("upn", "email", "dns", "uri", "kerberos_principal", "other_name")
CURVES = ("P-256", "P-384")


@dataclass(frozen=True)
class SubjectPart:
    type: str
    template: str
    optional: bool


@dataclass(frozen=True)
class SanEntry:
    """One subjectAltName entry: its kind, a template over directory attributes, and whether it may be absent."""

    type: str
    template: str
    optional: bool = False
    oid: ObjectIdentifier | None = None  # other_name only

    def general_name(self, value: str) -> x509.GeneralName:
        if self.type == "upn":
            return der.upn_other_name(value)
        if self.type == "email":
            return x509.RFC822Name(value)
        if self.type == "dns":
            return x509.DNSName(value)
        if self.type == "uri":
            return x509.UniformResourceIdentifier(value)
        if self.type == "kerberos_principal":
            return der.pkinit_san(value)
        assert self.oid is not None  # other_name, checked at load
        return x509.OtherName(self.oid, der.utf8_string(value))


def eku_oid(name: str) -> ObjectIdentifier:
    """An extended key usage by name (:data:`EKU_OIDS`) or dotted OID (checked at config load)."""
    return EKU_OIDS[name] if name in EKU_OIDS else ObjectIdentifier(name)


@dataclass(frozen=True)
class Profile:
    """One certificate profile, validated."""

    name: str
    description: str
    validity_days: int
    subject: tuple[SubjectPart, ...]
    san: tuple[SanEntry, ...]
    key_usage_rsa: frozenset[str]
    key_usage_ec: frozenset[str]
    extended_key_usage: tuple[str, ...]
    rsa_min_size: int
    ec_curves: tuple[str, ...]
    approvals_required: int
    variables: Mapping[str, str] = field(default_factory=dict)
    # Microsoft's SID extension (strong mapping): a template such as
    # "{object_sid}", and whether a user without a SID still gets the certificate.
    sid_template: str | None = None
    sid_optional: bool = True
    # id-pkix-ocsp-nocheck: for the OCSP responder's own certificate (RFC 6960 §4.2.2.2.1).
    ocsp_no_check: bool = False

    def render(self, template: str, attributes: Mapping[str, str]) -> str:
        """Fill ``{name}`` placeholders from directory attributes and config variables."""
        values = {**self.variables, **attributes}
        out = []
        for literal, name, _spec, _conv in string.Formatter().parse(template):
            out.append(literal)
            if name is None:
                continue
            value = values.get(name, "")
            if not value:
                raise PolicyViolation(
                    f"profile {self.name}: directory attribute '{name}' is required but the user has none",
                    code="profile.attribute_missing",
                )
            out.append(value)
        return "".join(out)

    def subject_name(self, attributes: Mapping[str, str]) -> x509.Name:
        rdns = []
        for part in self.subject:
            try:
                value = self.render(part.template, attributes)
            except PolicyViolation:
                if part.optional:
                    continue
                raise
            rdns.append(x509.NameAttribute(NAME_OIDS[part.type], value))
        if not rdns:
            raise PolicyViolation(f"profile {self.name}: the subject would be empty", code="profile.subject_empty")
        return x509.Name(rdns)

    def subject_alt_names(self, attributes: Mapping[str, str]) -> list[x509.GeneralName]:
        names: list[x509.GeneralName] = []
        for entry in self.san:
            try:
                value = self.render(entry.template, attributes)
            except PolicyViolation:
                if entry.optional:
                    continue
                raise
            try:
                names.append(entry.general_name(value))
            except ValueError as exc:  # e.g. a principal that is not name@REALM, non-ASCII DNS
                raise PolicyViolation(f"profile {self.name}: SAN {entry.type} from the directory is not usable: "
                                      f"{exc}", code="profile.san_invalid") from exc
        return names

    def sid_extension(self, attributes: Mapping[str, str]) -> x509.UnrecognizedExtension | None:
        """The SID extension for Windows strong mapping, if the profile asks for it and the user has a SID."""
        if self.sid_template is None:
            return None
        try:
            sid = self.render(self.sid_template, attributes)
        except PolicyViolation:
            if self.sid_optional:
                return None
            raise
        try:
            return der.sid_extension(sid)
        except ValueError as exc:
            raise PolicyViolation(f"profile {self.name}: {exc}", code="profile.sid_invalid") from exc


def _parse_profile(name: str, r: Reader, variables: Mapping[str, str]) -> Profile:
    subject = []
    raw_subject = r.raw("subject")
    if not isinstance(raw_subject, list) or not raw_subject:
        raise r.error("subject", "a list of {type, value, optional} entries")
    for i, item in enumerate(raw_subject):
        pr = Reader(item, f"{r.key_path('subject')}[{i}]", r.base_dir)
        subject.append(SubjectPart(pr.choice("type", NAME_OIDS), pr.str("value"), pr.bool("optional", False)))
        pr.finish()
    san = _parse_san(r)
    ku = r.section("key_usage", required=True)
    usages = {alg: frozenset(ku.str_list(alg)) for alg in ("rsa", "ec")}
    for alg, values in usages.items():
        if not values:
            raise ConfigError(f"{ku.key_path(alg)}: at least one key usage is needed")
        bad = sorted(values - set(KEY_USAGES))
        if bad:
            raise ConfigError(f"{ku.key_path(alg)}: unknown key usage {bad[0]}; expected {', '.join(KEY_USAGES)}")
    ku.finish()
    eku = r.str_list("extended_key_usage", [])
    for value in eku:
        if value not in EKU_OIDS and not OID_RE.match(value):
            raise ConfigError(
                f"{r.key_path('extended_key_usage')}: unknown usage {value}; expected a dotted OID or one of "
                f"{', '.join(EKU_OIDS)}"
            )
    if len({eku_oid(value) for value in eku}) != len(eku):
        raise ConfigError(f"{r.key_path('extended_key_usage')}: a usage is listed twice")
    ocsp_no_check = r.bool("ocsp_no_check", False)
    sid = r.section("sid_extension")
    sid_template = sid.str("value", None)
    sid_optional = sid.bool("optional", True)
    sid.finish()
    keys = r.section("keys", required=True)
    rsa_min = keys.int("rsa_min_size", 2048, minimum=2048)
    curves = keys.str_list("ec_curves", list(CURVES))
    for curve in curves:
        if curve not in CURVES:
            raise ConfigError(f"{keys.key_path('ec_curves')}: unsupported curve {curve}; expected {', '.join(CURVES)}")
    keys.finish()
    approval = r.section("approval")
    profile = Profile(
        name=name,
        description=r.str("description"),
        validity_days=r.int("validity_days", minimum=1, maximum=3650),
        subject=tuple(subject),
        san=san,
        key_usage_rsa=usages["rsa"],
        key_usage_ec=usages["ec"],
        extended_key_usage=tuple(eku),
        rsa_min_size=rsa_min,
        ec_curves=tuple(curves),
        approvals_required=approval.int("required", 0, minimum=0, maximum=2),
        variables=dict(variables),
        sid_template=sid_template,
        sid_optional=sid_optional,
        ocsp_no_check=ocsp_no_check,
    )
    approval.finish()
    r.finish()
    return profile


def _parse_san(r: Reader) -> tuple[SanEntry, ...]:
    """``san`` as a list of entries, or (older files) a mapping of kind to template, all required."""
    raw = r.raw("san", [])
    if isinstance(raw, Mapping):
        items: list[object] = [{"type": kind, "value": template} for kind, template in raw.items()]
    elif isinstance(raw, list):
        items = list(raw)
    else:
        raise r.error("san", "a list of {type, value, optional} entries")
    entries = []
    for i, item in enumerate(items):
        er = Reader(item, f"{r.key_path('san')}[{i}]", r.base_dir)
        kind = er.choice("type", SAN_KINDS)
        oid = None
        if kind == "other_name":
            text = er.str("oid")
            if not OID_RE.match(text):
                raise er.error("oid", "a dotted OID such as 1.3.6.1.4.1.311.20.2.3")
            oid = ObjectIdentifier(text)
        entries.append(SanEntry(kind, er.str("value"), er.bool("optional", False), oid))
        er.finish()
    return tuple(entries)


class ProfileSet:
    """All profiles of an instance: built-ins, overridden by the site's folder."""

    def __init__(self, profiles: Mapping[str, Profile]) -> None:
        self._profiles = dict(profiles)

    @classmethod
    def load(cls, site_dir: Path | None = None, variables: Mapping[str, str] | None = None) -> ProfileSet:
        files: dict[str, Path] = {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.yaml"))}
        if site_dir is not None:
            files.update({p.stem: p for p in sorted(site_dir.glob("*.yaml"))})
        profiles = {}
        for name, path in files.items():
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError) as exc:
                raise ConfigError(f"profile file {path}: {exc}") from exc
            profiles[name] = _parse_profile(name, Reader(data, f"{path}: {name}", path.parent), variables or {})
        return cls(profiles)

    def get(self, name: str) -> Profile:
        try:
            return self._profiles[name]
        except KeyError:
            raise UnknownProfile(
                f"unknown certificate profile '{name}'; known: {', '.join(sorted(self._profiles))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._profiles)
