"""What differs between kinds of cards, as data: key slots, logins, driver quirks.

A generic PKCS#11 token (SoftHSM, most PIV-less tokens) stores keys under
whatever CKA_ID and label the server suggests and does everything after a
user login.  A real card may fix its key slots, want the SO (admin) PIN to
generate keys or write certificates, and have driver quirks; the agent reads
all of that from :data:`CARD_PROFILES`.  To support another card, add a row.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from .capabilities import Credential, SlotCapability, match_slot
from .capabilities import Usage as Usage  # re-exported: the routes import it from here
from .errors import TokenError, UsageError
from .key_transport import PROOF_RSA_OAEP, PROOF_RSA_PKCS1V15
from .openpgp_import import pcsc_available

Login = Literal["user", "so"]
Route = Literal["pkcs11", "piv"]


@dataclass(frozen=True)
class KeySlot:
    """A key place a card fixes: its CKA_ID (hex), its label, what the key can do."""

    key_id: str
    label: str
    usage: Usage
    #: Certificate types that belong here (``authentication`` …).
    cert_types: tuple[str, ...] = ()
    #: Taken for an unknown certificate type with this usage.
    default_for_usage: bool = False
    #: Whether the card signs with this key: a CSR needs a signature from it.
    can_sign: bool = True
    #: Key specs the card can generate here (``rsa-2048`` …); empty: whatever the server asks.
    algorithms: tuple[str, ...] = ()
    #: Whether the agent can import a key made on the server (an escrowed key) here.
    can_import: bool = True
    #: Whether the card keeps earlier escrowed keys next to this one (PIV's retired slots, a
    #: generic token's free IDs); an OpenPGP card has a single decryption key.
    key_history: bool = True
    #: Key specs the agent can import here; empty: the same as ``algorithms``.
    import_algorithms: tuple[str, ...] = ()

    @property
    def can_decrypt(self) -> bool:
        return self.usage == "decrypt"


@dataclass(frozen=True)
class CardProfile:
    """How the agent treats one kind of card."""

    name: str
    description: str
    #: Lower-case words that pick this profile under ``--card-profile auto``
    #: when found in the token's label, model or manufacturer.
    detect: tuple[str, ...]
    #: Fixed key slots; empty means key IDs and labels come from the server.
    #: A new key in a fixed slot replaces the old one (the agent says so);
    #: on a card without fixed slots the agent never touches an existing key.
    slots: tuple[KeySlot, ...]
    keygen_login: Login
    cert_write_login: Login
    #: The driver's objects from C_GenerateKeyPair are unusable until the
    #: module is finalised and initialised again (OpenSC 0.23).
    reinit_after_keygen: bool
    #: Escrowed keys go in with the OpenPGP card's own commands over PC/SC (pyscard), not through
    #: the PKCS#11 module, whose OpenPGP import is broken in OpenSC 0.23 (:mod:`.openpgp_import`).
    openpgp_key_import: bool = False
    #: How the card decrypts the escrow receipt's RSA challenge: OAEP, or PKCS#1 v1.5 where the
    #: driver offers nothing else (OpenSC's OpenPGP driver: the card strips the padding itself).
    rsa_proof: str = PROOF_RSA_OAEP
    #: How the agent reaches the card: OpenSC's (or a vendor's) PKCS#11
    #: module, or PIV commands through PC/SC (:mod:`openxpki_py_token.piv_card`).
    route: Route = "pkcs11"
    #: What the card calls its "so" login, as the report names it.
    so_credential: Credential = "so_pin"

    @property
    def needs_so_pin(self) -> bool:
        return "so" in (self.keygen_login, self.cert_write_login)

    def credential(self, login: Login) -> Credential:
        return self.so_credential if login == "so" else "user_pin"

    def capabilities(self) -> list[SlotCapability]:
        """The slots as the card report gives them to the server, which plans the certificate types by them."""
        return [SlotCapability(
            key_id=slot.key_id, label=slot.label, usage=slot.usage, can_sign=slot.can_sign,
            can_decrypt=slot.can_decrypt, algorithms=slot.algorithms,
            key_generation=self.credential(self.keygen_login), object_write=self.credential(self.cert_write_login),
            cert_types=slot.cert_types, default_for_usage=slot.default_for_usage,
            can_import=slot.can_import and (not self.openpgp_key_import or pcsc_available()),
            key_history=slot.key_history, import_algorithms=slot.import_algorithms) for slot in self.slots]

    def slot_for(self, cert_type: str, usage: Usage) -> KeySlot | None:
        """The fixed slot for this certificate type (None: the card has no fixed slots)."""
        if not self.slots:
            return None
        slot = match_slot(self.slots, cert_type, usage)
        if slot is not None:
            return slot
        offered = ", ".join(f"{s.key_id} ({'/'.join(s.cert_types) or s.usage})" for s in self.slots)
        raise TokenError(f"the {self.description} has no key slot for a {cert_type!r} certificate "
                         f"with usage {usage!r} (its slots: {offered})", code="token.no_slot")


GENERIC = CardProfile(
    name="generic",
    description="PKCS#11 token",
    detect=(),
    slots=(),
    keygen_login="user",
    cert_write_login="user",
    reinit_after_keygen=False,
)

# OpenSC's OpenPGP card driver (OpenPGP card v2/v3: Nitrokey, YubiKey's
# OpenPGP applet, Gnuk …): three fixed keys with OpenSC's labels; the admin
# PIN (PW3) generates keys and writes certificates, the user PIN (PW1) signs.
# The decryption key answers only PSO:DECIPHER: it cannot sign a CSR, but
# it takes an escrowed key (the card's key import, PUT DATA 4D, under the
# admin PIN; the agent sends it over PC/SC); there is only one, so no key history.
# OpenPGP card 3.x: RSA 2048-4096 and NIST P-256/P-384 in every slot.
_OPENPGP_RSA = ("rsa-2048", "rsa-3072", "rsa-4096")
_OPENPGP_KEYS = (*_OPENPGP_RSA, "ec-p256", "ec-p384")  # the agent imports RSA keys only (openpgp_import)
OPENPGP = CardProfile(
    name="openpgp",
    description="OpenPGP card",
    detect=("openpgp",),
    slots=(
        KeySlot("01", "Signature key", "sign", ("signature",), algorithms=_OPENPGP_KEYS),
        KeySlot("02", "Encryption key", "decrypt", ("encryption",), default_for_usage=True,
                can_sign=False, algorithms=_OPENPGP_KEYS, key_history=False, import_algorithms=_OPENPGP_RSA),
        KeySlot("03", "Authentication key", "sign", ("authentication",), default_for_usage=True,
                algorithms=_OPENPGP_KEYS),
    ),
    keygen_login="so",
    cert_write_login="so",
    reinit_after_keygen=True,
    openpgp_key_import=True,
    rsa_proof=PROOF_RSA_PKCS1V15,
    so_credential="admin_pin",
)

# PIV (NIST SP 800-73-4; YubiKey, PIV smartcards): fixed slots, the
# management key ("so") generates keys and writes certificates, the PIN
# signs.  Chosen by its applet (SELECT), not by words: OpenSC's PIV token
# cannot be personalized through PKCS#11, so "piv" in a PKCS#11 token's
# label only leads to the advice to install the PIV extra.  The PIV route
# (piv_card) makes RSA-2048, P-256 and P-384 keys in every slot.
_PIV_KEYS = ("rsa-2048", "ec-p256", "ec-p384")
PIV = CardProfile(
    name="piv",
    description="PIV card",
    detect=("piv",),
    slots=(
        KeySlot("9a", "PIV Authentication", "sign", ("authentication",), default_for_usage=True,
                algorithms=_PIV_KEYS),
        KeySlot("9c", "Digital Signature", "sign", ("signature",), algorithms=_PIV_KEYS),
        KeySlot("9d", "Key Management", "decrypt", ("encryption",), default_for_usage=True,
                algorithms=_PIV_KEYS),
    ),
    keygen_login="so",
    cert_write_login="so",
    reinit_after_keygen=False,
    route="piv",
    so_credential="management_key",
)

CARD_PROFILES: dict[str, CardProfile] = {p.name: p for p in (GENERIC, OPENPGP, PIV)}
PROFILE_CHOICES = ("auto", *CARD_PROFILES)


def choose_profile(name: str, token_words: Iterable[str]) -> CardProfile:
    """The profile named, or under ``auto`` the first whose words the token shows."""
    if name != "auto":
        try:
            return CARD_PROFILES[name]
        except KeyError:
            raise UsageError(f"--card-profile {name!r}: choose one of {', '.join(PROFILE_CHOICES)}") from None
    text = " ".join(token_words).lower()
    for profile in CARD_PROFILES.values():
        if any(word in text for word in profile.detect):
            return profile
    return GENERIC
