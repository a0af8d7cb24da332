"""The ``personalization:`` section: which certificates a card gets, and the
limits of the enrollment-code hand-off to the token agent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from openxpki_py_token.keyspec import KeySpec

from ..configreader import Reader
from ..errors import ConfigError

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
    key_origin: Literal["card", "escrowed"] = "card"

    def key_request(self) -> dict[str, Any]:
        if self.key.algorithm == "rsa":
            return {"algorithm": "rsa", "size": self.key.rsa_bits}
        return {"algorithm": "ec", "curve": self.key.curve}


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
class PersonalizationPolicy:
    certificates: tuple[CertificateType, ...]
    enrollment: EnrollmentLimits


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
        key_origin=r.choice("key_origin", KEY_ORIGINS, CertificateType.key_origin),
    )
    if cert_type.key_origin == "escrowed" and (cert_type.usage != "decrypt" or key.algorithm != "rsa"):
        # A signing key that someone else holds a copy of proves nothing; the
        # card's proof of holding the key is an RSA decryption (EC: not yet).
        raise r.error("key_origin", "card, unless usage is decrypt and the key RSA (escrowed keys are "
                      "decryption keys, RSA for now)")
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
    r.finish()
    return PersonalizationPolicy(types, limits)


def check_profiles(policy: PersonalizationPolicy, profile_names: list[str]) -> None:
    """Called once the CA's profiles are known: a type naming no profile is a config error."""
    for i, cert_type in enumerate(policy.certificates):
        if cert_type.profile not in profile_names:
            raise ConfigError(
                f"personalization.certificates[{i}].profile: unknown profile '{cert_type.profile}'; "
                f"known: {', '.join(profile_names)}"
            )
