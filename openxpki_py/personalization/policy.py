"""The ``personalization:`` section: which certificates a card gets, and the
limits of the enrollment-code hand-off to the token agent."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from openxpki_py_token.keyspec import KeySpec

from ..configreader import Reader
from ..crypto.attestation import AttestationTrust
from ..errors import ConfigError
from .attestation import parse_attestation_config

USAGES = ("sign", "decrypt")


ON_CARD_UNABLE: tuple[Literal["skip", "fail"], ...] = ("skip", "fail")
# Where the key pair is made: on the card (never leaves it), or on the server,
# escrowed under the HSM's key-recovery key and imported onto the card (openxpki_py.escrow).
KEY_ORIGINS: tuple[Literal["card", "escrowed"], ...] = ("card", "escrowed")


@dataclass(frozen=True)
class CertificateType:
    """One certificate (and key pair) a card receives."""

    name: str  # e.g. authentication
    profile: str
    key: KeySpec
    key_id: str  # hex CKA_ID suggested to the agent (a card with fixed slots picks its own)
    usage: str  # sign | decrypt: what the private key is for
    keep_valid_days: int | None  # keep a certificate on this card valid for that long; None: always reissue
    # What to do when the card cannot make this type's key or sign its CSR
    # (an OpenPGP decryption slot): leave the type out, visibly, or fail.
    on_card_unable: Literal["skip", "fail"] = "skip"
    # Refuse a key the card does not attest was generated on it (docs/cards.md, Attestation).
    require_attestation: bool = False
    key_origin: Literal["card", "escrowed"] = "card"

    def key_request(self) -> dict[str, Any]:
        return key_request(self.key)


def key_request(key: KeySpec) -> dict[str, Any]:
    """A key as the agent's ``generate_key`` task and the CSR check name it."""
    if key.algorithm == "rsa":
        return {"algorithm": "rsa", "size": key.rsa_bits}
    return {"algorithm": "ec", "curve": key.curve}


@dataclass(frozen=True)
class EnrollmentLimits:
    code_lifetime: int  # seconds an enrollment code is valid
    agent_token_lifetime: int  # seconds the agent's bearer credential is valid
    max_failures: int  # wrong codes per client address per window (a right code is never refused)
    failure_window: int  # seconds
    # Seconds after which a card's owner, if no certificate was ever issued
    # for the card, no longer blocks another user confirming that serial.
    unproven_claim_lifetime: int = 86400
    max_code_failures: int = 5  # wrong guesses aimed at one code (its first characters) before it ends


@dataclass(frozen=True)
class CardTypePolicy:
    """What one kind of card (the agent's card profile: ``piv``, ``openpgp``, ``generic``) gets.

    ``types`` narrows the configured certificate types (None: all of them);
    ``keys`` chooses another key per type for this kind of card (an OpenPGP
    card's RSA keys for PKINIT, P-256 where TLS 1.3 matters).
    """

    name: str
    types: tuple[str, ...] | None = None
    keys: Mapping[str, KeySpec] = field(default_factory=dict)

    def key_for(self, cert_type: CertificateType) -> KeySpec:
        return self.keys.get(cert_type.name, cert_type.key)


#: The ``card_types`` entry for a card profile the config does not name.
DEFAULT_CARD_TYPE = "default"
_CARD_TYPE_NAME = re.compile(r"[a-z0-9_-]{1,32}")


@dataclass(frozen=True)
class PersonalizationPolicy:
    certificates: tuple[CertificateType, ...]
    enrollment: EnrollmentLimits
    card_types: Mapping[str, CardTypePolicy] = field(default_factory=dict)

    def for_card(self, card_profile: str) -> CardTypePolicy:
        """The card type's policy, else ``default``'s, else every type with its configured key."""
        return (self.card_types.get(card_profile) or self.card_types.get(DEFAULT_CARD_TYPE)
                or CardTypePolicy(DEFAULT_CARD_TYPE))
    attestation: AttestationTrust = AttestationTrust()


DEFAULT_CERTIFICATES: list[dict[str, Any]] = [
    {"type": "authentication", "profile": "smartcard_logon", "key": "rsa-2048", "key_id": "01", "usage": "sign"},
    {"type": "encryption", "profile": "encryption", "key": "rsa-2048", "key_id": "02", "usage": "decrypt"},
]


def _certificate_type(r: Reader) -> CertificateType:
    try:
        key = KeySpec.parse(r.str("key", "rsa-2048"))
    except ValueError:
        raise r.error("key", "one of rsa-2048, rsa-3072, rsa-4096, ec-p256, ec-p384") from None
    key_id = r.str("key_id")
    try:
        if len(bytes.fromhex(key_id)) == 0:
            raise ValueError
    except ValueError:
        raise r.error("key_id", 'a hex CKA_ID such as "01"') from None
    keep = r.int("keep_valid_days", None, minimum=0)
    cert_type = CertificateType(
        name=r.str("type"),
        profile=r.str("profile"),
        key=key,
        key_id=key_id.lower(),
        usage=r.choice("usage", USAGES, "sign"),
        keep_valid_days=keep,
        on_card_unable=r.choice("on_card_unable", ON_CARD_UNABLE, CertificateType.on_card_unable),
        require_attestation=r.bool("require_attestation", False),
        key_origin=r.choice("key_origin", KEY_ORIGINS, CertificateType.key_origin),
    )
    if cert_type.key_origin == "escrowed" and cert_type.usage != "decrypt":
        # A signing key that someone else holds a copy of proves nothing.
        raise r.error("key_origin", "card, unless usage is decrypt (escrowed keys are decryption keys: "
                      "RSA key transport or EC key agreement)")
    if cert_type.key_origin == "escrowed" and cert_type.require_attestation:
        raise r.error("require_attestation", "false for an escrowed key: the server made it, no card can attest it")
    r.finish()
    return cert_type


def parse_personalization_config(r: Reader) -> PersonalizationPolicy:
    raw = r.raw("certificates", DEFAULT_CERTIFICATES)
    if not isinstance(raw, list) or not raw:
        raise r.error("certificates", "a non-empty list of certificate types")
    types = tuple(_certificate_type(Reader(item, f"{r.key_path('certificates')}[{i}]", r.base_dir))
                  for i, item in enumerate(raw))
    names = [t.name for t in types]
    ids = [t.key_id for t in types]
    if len(set(names)) != len(names):
        raise ConfigError(f"{r.key_path('certificates')}: certificate types must have distinct names")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{r.key_path('certificates')}: certificate types must have distinct key_id values")
    e = r.section("enrollment")
    limits = EnrollmentLimits(
        code_lifetime=e.int("code_lifetime", 300, minimum=30, maximum=3600),
        agent_token_lifetime=e.int("agent_token_lifetime", 1800, minimum=60, maximum=86400),
        max_failures=e.int("max_failures", 10, minimum=1),
        failure_window=e.int("failure_window", 900, minimum=60),
        unproven_claim_lifetime=e.int("unproven_claim_lifetime", EnrollmentLimits.unproven_claim_lifetime,
                                      minimum=1),
        max_code_failures=e.int("max_code_failures", 5, minimum=1, maximum=100),
    )
    e.finish()
    card_types = _card_types(r, names)
    trust = parse_attestation_config(r.section("attestation"))
    if not trust.roots and any(t.require_attestation for t in types):
        raise ConfigError(f"{r.key_path('attestation')}.roots: a certificate type requires attestation, so "
                          "name the card vendors' attestation root CAs (PEM files), e.g. Yubico's PIV roots")
    r.finish()
    return PersonalizationPolicy(types, limits, card_types, trust)


def _card_types(r: Reader, type_names: list[str]) -> dict[str, CardTypePolicy]:
    """``card_types: {piv: {types: [...], key: {authentication: rsa-2048}}, default: {...}}``."""
    policies: dict[str, CardTypePolicy] = {}
    for name, c in r.sections("card_types").items():
        where = c.path
        if not _CARD_TYPE_NAME.fullmatch(name):
            raise ConfigError(f"{where}: a card type is a short lower-case name (piv, openpgp, generic, default)")
        types = c.raw("types", None)
        if types is not None and (not isinstance(types, list) or not all(t in type_names for t in types)):
            raise c.error("types", f"a list of the configured certificate types ({', '.join(type_names)})")
        keys_raw = c.raw("key", {})
        if not isinstance(keys_raw, dict) or not all(t in type_names for t in keys_raw):
            raise c.error("key", f"a mapping of certificate type ({', '.join(type_names)}) to a key such as rsa-2048")
        keys: dict[str, KeySpec] = {}
        for cert_type, spec in keys_raw.items():
            try:
                keys[cert_type] = KeySpec.parse(spec)
            except ValueError:
                raise ConfigError(f"{where}.key.{cert_type}: one of rsa-2048, rsa-3072, rsa-4096, ec-p256, "
                                  "ec-p384") from None
        c.finish()
        policies[name] = CardTypePolicy(name, tuple(dict.fromkeys(types)) if types is not None else None, keys)
    return policies


def check_profiles(policy: PersonalizationPolicy, profile_names: list[str]) -> None:
    """Called once the CA's profiles are known: a type naming no profile is a config error."""
    for i, cert_type in enumerate(policy.certificates):
        if cert_type.profile not in profile_names:
            raise ConfigError(
                f"personalization.certificates[{i}].profile: unknown profile '{cert_type.profile}'; "
                f"known: {', '.join(profile_names)}"
            )
