"""Per-card admin credentials, derived inside the HSM from one master secret.

A card leaves the factory with well-known admin credentials (PIV management
key ``0102…08`` ×3 and PUK ``12345678``, OpenPGP admin PIN ``12345678``):
whoever knows them can replace the card's keys or unblock its PIN.  The
agent replaces them at the first personalization with values this module
derives, and uses those afterwards.

The master secret is a generic secret key (256 bits) in the CA's token,
next to the CA key, labelled ``<ca.key.key_label>-card-admin`` unless
configured otherwise: sensitive, never extractable, usable only for
CKM_SHA256_HMAC.  A credential is ``HMAC(master, label ‖ card type ‖ kind
‖ serial)`` computed by the HSM; nothing here stores it, logs it or puts it
in a workflow's context.  Who may ask for it is decided in
:mod:`openxpki_py.personalization.card_credentials`.

```yaml
card_admin:
  enabled: true                 # default false: the agent keeps its local options
  key_label: ca-signing-card-admin   # default: ca.key.key_label + "-card-admin"
  max_releases: 5               # per personalization (a rerun agent asks again)
  unblock:                      # PIN unblock with the card's PUK (openxpki_py.unblock)
    per_card: 3                 # unblocks of one card within the window
    per_user: 3                 # unblocks of one owner's cards within the window
    window: 86400               # seconds
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openxpki_py_token.pkcs11.session import PooledSession
from openxpki_py_token.secret import SecretRef
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from ..configreader import Reader
from ..errors import ConfigError, TokenError, TokenKeyNotFound
from .keys.token_pool import PooledTokenKey

#: Names the derivation; a different scheme gets a new label (and new card values).
DERIVATION_LABEL = b"openxpki-py card admin v1"
MASTER_BITS = 256
#: What each card type gets: credential kind -> ``bytes`` (octets) or ``digits`` (a PIN of that many).
CARD_KINDS: dict[str, dict[str, tuple[str, int]]] = {
    # 24 bytes: an AES-192 key (YubiKey 5.4+) or a 3DES key (before), as the agent sets it.
    "piv": {"management_key": ("bytes", 24), "puk": ("digits", 8)},
    # PW3, the OpenPGP card's admin PIN (8 digits: at least the 8 every card accepts).
    "openpgp": {"admin_pin": ("digits", 8)},
}


@dataclass(frozen=True)
class UnblockLimits:
    """``card_admin.unblock``: how many PIN unblocks per card and per owner within ``window`` seconds."""

    per_card: int = 3
    per_user: int = 3
    window: int = 86400


@dataclass(frozen=True)
class CardAdminConfig:
    """The ``card_admin`` section; the token, module and PIN are the CA key's."""

    enabled: bool
    key_label: str
    max_releases: int
    module: Path | None
    token_label: str | None
    pin: SecretRef | None
    unblock: UnblockLimits = UnblockLimits()


def parse_card_admin_config(r: Reader, ca_key: Any) -> CardAdminConfig:
    """Read ``card_admin``; it needs the CA key in a PKCS#11 token (the master lives next to it)."""
    enabled = r.bool("enabled", False)
    key_label = r.str("key_label", f"{getattr(ca_key, 'key_label', 'ca')}-card-admin")
    max_releases = r.int("max_releases", 5, minimum=1, maximum=100)
    u = r.section("unblock")
    unblock = UnblockLimits(per_card=u.int("per_card", 3, minimum=1, maximum=100),
                            per_user=u.int("per_user", 3, minimum=1, maximum=1000),
                            window=u.int("window", 86400, minimum=60, maximum=30 * 86400))
    u.finish()
    r.finish()
    if enabled and ca_key.backend != "pkcs11":
        raise ConfigError(f"{r.key_path('enabled')}: the card admin master secret lives in the CA's HSM "
                          f"token; {ca_key.origin}.backend is {ca_key.backend!r}, not 'pkcs11'")
    if enabled and key_label == getattr(ca_key, "key_label", None):
        raise ConfigError(f"{r.key_path('key_label')}: names the CA key; the master secret needs its own label")
    return CardAdminConfig(enabled=enabled, key_label=key_label, max_releases=max_releases,
                           module=getattr(ca_key, "module", None), token_label=getattr(ca_key, "token_label", None),
                           pin=getattr(ca_key, "pin", None), unblock=unblock)


@dataclass(frozen=True, repr=False)
class CardAdminCredentials:
    """One card's admin credentials; ``repr`` and ``str`` never show them."""

    card_type: str
    serial: str
    values: dict[str, bytes | str]

    def __repr__(self) -> str:
        return f"<CardAdminCredentials {self.card_type} card {self.serial}: {', '.join(self.values)}>"

    __str__ = __repr__

    def as_api(self) -> dict[str, str]:
        """JSON for the agent: octets as hex, PINs as they are typed."""
        return {kind: value.hex() if isinstance(value, bytes) else value for kind, value in self.values.items()}


def derivation_input(card_type: str, kind: str, serial: str) -> bytes:
    """What the HMAC covers: fixed label, then each part NUL-terminated (no part can run into the next)."""
    parts = (DERIVATION_LABEL, card_type.encode("ascii"), kind.encode("ascii"), serial.encode("utf-8"))
    if any(b"\x00" in part for part in parts):
        raise ValueError("card type, kind and serial must not contain NUL")
    return b"\x00".join(parts) + b"\x00"


def _shape(mac: bytes, form: str, size: int) -> bytes | str:
    if form == "bytes":
        return mac[:size]
    # 64 bits mod 10^8: the bias (< 10^-11) is far below anything a guesser could use.
    return str(int.from_bytes(mac[:8], "big") % 10 ** size).zfill(size)


class CardAdminSecret(PooledTokenKey):
    """The master secret in the CA's token, and the credentials derived from it."""

    def __init__(self, *, module: Path | str, token_label: str, pin: SecretRef, key_label: str,
                 max_sessions: int = 4) -> None:
        super().__init__(module=module, token_label=token_label, pin=pin, max_sessions=max_sessions,
                         origin="ca.key")
        self.key_label = key_label

    @classmethod
    def from_config(cls, cfg: CardAdminConfig) -> CardAdminSecret:
        assert cfg.module is not None and cfg.token_label is not None and cfg.pin is not None
        return cls(module=cfg.module, token_label=cfg.token_label, pin=cfg.pin, key_label=cfg.key_label)

    def describe(self) -> str:
        return f"card admin master secret {self.key_label!r} on token {self.token_label!r}"

    def _find(self, session: Any) -> list[Any]:
        return list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: self.key_label}))

    def _the_key(self, session: Any) -> Any:
        found = self._find(session)
        if len(found) != 1:
            raise TokenKeyNotFound(
                f"{self.describe()}: {'not found' if not found else f'{len(found)} keys carry this label'}; "
                "create it once with 'openxpki-py ca card-admin-init'", code="card.admin_secret_missing")
        return found[0]

    # --- the master secret ------------------------------------------------------------

    def exists(self) -> bool:
        return bool(self._run(lambda pooled: self._find(pooled.session)))

    def create(self) -> None:
        """Generate the master secret inside the token; an existing one is never replaced."""

        def operation(pooled: PooledSession) -> None:
            if self._find(pooled.session):
                raise TokenError(f"{self.describe()} already exists; it is never replaced (every card's "
                                 "admin credentials depend on it)", code="token.key_exists")
            # Only HMAC: no encrypt/decrypt/wrap/derive, and never readable.
            pooled.session.generate_key(
                KeyType.GENERIC_SECRET, MASTER_BITS, label=self.key_label, store=True,
                mechanism=Mechanism.GENERIC_SECRET_KEY_GEN,
                template={Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                          Attribute.EXTRACTABLE: False, Attribute.SIGN: True, Attribute.VERIFY: False,
                          Attribute.ENCRYPT: False, Attribute.DECRYPT: False, Attribute.WRAP: False,
                          Attribute.UNWRAP: False, Attribute.DERIVE: False, Attribute.MODIFIABLE: False})

        self._run(operation, rw=True)

    def protection(self) -> dict[str, bool]:
        """The master secret's protection flags (what an auditor checks)."""
        names = {"sensitive": Attribute.SENSITIVE, "always_sensitive": Attribute.ALWAYS_SENSITIVE,
                 "extractable": Attribute.EXTRACTABLE, "never_extractable": Attribute.NEVER_EXTRACTABLE,
                 "local": Attribute.LOCAL, "sign": Attribute.SIGN, "encrypt": Attribute.ENCRYPT,
                 "derive": Attribute.DERIVE}

        def operation(pooled: PooledSession) -> dict[str, bool]:
            key = self._the_key(pooled.session)
            return {name: bool(key[attr]) for name, attr in names.items()}

        return self._run(operation)  # type: ignore[no-any-return]

    # --- deriving ---------------------------------------------------------------------

    def derive(self, card_type: str, kind: str, serial: str) -> bytes:
        """The 32-byte HMAC-SHA256 for one credential of one card, computed by the HSM."""
        data = derivation_input(card_type, kind, serial)

        def operation(pooled: PooledSession) -> bytes:
            key = pooled.cached(("card-admin", self.key_label), self._the_key)
            return bytes(key.sign(data, mechanism=Mechanism.SHA256_HMAC))

        return self._run(operation)  # type: ignore[no-any-return]

    def card_admin_credentials(self, card_type: str, serial: str) -> CardAdminCredentials:
        """Every admin credential of the card type, for this card serial."""
        kinds = CARD_KINDS.get(card_type)
        if kinds is None:
            raise TokenError(f"{card_type!r} cards have no admin credentials this PKI derives "
                             f"(only {', '.join(CARD_KINDS)})", code="card.admin_credentials_unsupported")
        if not serial:
            raise ValueError("a card serial is needed")
        values = {kind: _shape(self.derive(card_type, kind, serial), form, size)
                  for kind, (form, size) in kinds.items()}
        return CardAdminCredentials(card_type, serial, values)
