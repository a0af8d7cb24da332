"""Certificate profiles: what a certificate of each kind contains.

Profiles are YAML files (built-ins in ``crypto/profile_defs/``, a site may
override them with ``ca.profiles_dir``).  A profile renders the subject and
SAN from *directory* attributes only; the CSR contributes nothing but its
public key.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from ..configreader import Reader
from ..errors import ConfigError, PolicyViolation, UnknownProfile

BUILTIN_DIR = Path(__file__).with_name("profile_defs")

OID_UPN = ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")
OID_SMARTCARD_LOGON = ObjectIdentifier("1.3.6.1.4.1.311.20.2.2")

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
    "smartcard_logon": OID_SMARTCARD_LOGON,
}

KEY_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
)

SAN_KINDS = ("upn", "email", "dns")
CURVES = ("P-256", "P-384")


@dataclass(frozen=True)
class SubjectPart:
    type: str
    template: str
    optional: bool


@dataclass(frozen=True)
class Profile:
    """One certificate profile, validated."""

    name: str
    description: str
    validity_days: int
    subject: tuple[SubjectPart, ...]
    san: Mapping[str, str]  # kind (upn|email|dns) -> template
    key_usage_rsa: frozenset[str]
    key_usage_ec: frozenset[str]
    extended_key_usage: tuple[str, ...]
    rsa_min_size: int
    ec_curves: tuple[str, ...]
    approvals_required: int
    variables: Mapping[str, str] = field(default_factory=dict)

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
        for kind, template in self.san.items():
            value = self.render(template, attributes)
            if kind == "upn":
                names.append(x509.OtherName(OID_UPN, _der_utf8_string(value)))
            elif kind == "email":
                names.append(x509.RFC822Name(value))
            elif kind == "dns":
                names.append(x509.DNSName(value))
        return names


def _der_utf8_string(value: str) -> bytes:
    data = value.encode("utf-8")
    if len(data) < 0x80:
        length = bytes([len(data)])
    else:
        raw = len(data).to_bytes((len(data).bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return b"\x0c" + length + data


def _parse_profile(name: str, r: Reader, variables: Mapping[str, str]) -> Profile:
    subject = []
    raw_subject = r.raw("subject")
    if not isinstance(raw_subject, list) or not raw_subject:
        raise r.error("subject", "a list of {type, value, optional} entries")
    for i, item in enumerate(raw_subject):
        pr = Reader(item, f"{r.key_path('subject')}[{i}]", r.base_dir)
        subject.append(SubjectPart(pr.choice("type", NAME_OIDS), pr.str("value"), pr.bool("optional", False)))
        pr.finish()
    san = r.str_map("san", {})
    for kind in san:
        if kind not in SAN_KINDS:
            raise ConfigError(f"{r.key_path('san')}.{kind}: unknown SAN kind; expected one of {', '.join(SAN_KINDS)}")
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
        if value not in EKU_OIDS:
            raise ConfigError(
                f"{r.key_path('extended_key_usage')}: unknown usage {value}; expected {', '.join(EKU_OIDS)}"
            )
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
    )
    approval.finish()
    r.finish()
    return profile


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
