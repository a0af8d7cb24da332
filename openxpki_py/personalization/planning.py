"""Which certificate types a card gets, and with which key: the policy ∩ what the card can do.

Decided when the agent reports the card, before the user confirms it and
before any key is made: the page shows the plan, and a type the card cannot
do is left out up front, with its reason, instead of being attempted.  A
skipped type keeps a stable ``skip_reason`` so that a later way to give the
card that key (server-side generation with escrow, then import) can pick
exactly those types up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from openxpki_py_token.capabilities import CardCapabilities, SlotCapability
from openxpki_py_token.keyspec import KeySpec

from .policy import CardTypePolicy, CertificateType, PersonalizationPolicy, key_request

#: The slot's key cannot sign, so no CSR can prove possession (OpenPGP's decryption key).
#: An escrowed type needs no CSR: it goes to such a slot if the card can import it there.
SLOT_CANNOT_SIGN = "slot_cannot_sign"
#: The type's key is escrowed (made on the server) and the card cannot import a key into the slot.
SLOT_CANNOT_IMPORT = "slot_cannot_import"
#: The card has no key slot for the type.
NO_SLOT = "no_slot"
#: The slot cannot make the key the policy chose for this kind of card.
KEY_UNSUPPORTED = "key_unsupported"
SKIP_REASONS = (SLOT_CANNOT_SIGN, SLOT_CANNOT_IMPORT, NO_SLOT, KEY_UNSUPPORTED)


@dataclass(frozen=True)
class PlannedType:
    """One certificate type for this card: planned with its key and slot, or skipped with a reason."""

    cert_type: CertificateType
    key: KeySpec
    key_id: str  # the card's fixed slot, else the configured CKA_ID
    label: str
    skip_reason: str | None = None
    reason: str = ""  # a sentence for the page, when skipped
    #: The card keeps the owner's earlier escrowed keys next to this one (False: OpenPGP's single slot).
    key_history: bool = True

    @property
    def planned(self) -> bool:
        return self.skip_reason is None

    def as_context(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "type": self.cert_type.name, "profile": self.cert_type.profile, "key": key_request(self.key),
            "key_name": self.key.name, "key_id": self.key_id, "label": self.label, "usage": self.cert_type.usage,
            "status": "planned" if self.planned else "skipped", "on_card_unable": self.cert_type.on_card_unable,
        }
        if self.cert_type.key_origin == "escrowed":
            entry.update(key_origin="escrowed", key_history=self.key_history)
        if not self.planned:
            entry.update(skip_reason=self.skip_reason, reason=self.reason)
        return entry


@dataclass(frozen=True)
class CardPlan:
    card_profile: str
    policy: str  # the card_types entry that applied ("default" when none was configured)
    types: tuple[PlannedType, ...]

    @property
    def planned(self) -> list[PlannedType]:
        return [t for t in self.types if t.planned]

    @property
    def skipped(self) -> list[PlannedType]:
        return [t for t in self.types if not t.planned]

    def as_context(self) -> dict[str, Any]:
        return {"card_profile": self.card_profile, "policy": self.policy,
                "types": [t.as_context() for t in self.types]}


def plan_for_card(policy: PersonalizationPolicy, card: CardCapabilities) -> CardPlan:
    """The certificate types this card gets, in the configured order."""
    card_policy = policy.for_card(card.profile)
    wanted = [t for t in policy.certificates if card_policy.types is None or t.name in card_policy.types]
    return CardPlan(card.profile, card_policy.name, tuple(_plan_type(t, card_policy, card) for t in wanted))


def _plan_type(cert_type: CertificateType, card_policy: CardTypePolicy, card: CardCapabilities) -> PlannedType:
    key = card_policy.key_for(cert_type)
    if not card.slots:  # a generic token: any key under the configured ID
        return PlannedType(cert_type, key, cert_type.key_id, cert_type.name)
    slot = card.slot_for(cert_type.name, cert_type.usage)
    if slot is None:
        return PlannedType(cert_type, key, cert_type.key_id, cert_type.name, NO_SLOT,
                           f"this {card.profile} card has no key slot for it")
    skip = _slot_problem(slot, key, escrowed=cert_type.key_origin == "escrowed")
    return PlannedType(cert_type, key, slot.key_id, cert_type.name,
                       skip[0] if skip else None, skip[1] if skip else "", key_history=slot.key_history)


def _slot_problem(slot: SlotCapability, key: KeySpec, *, escrowed: bool) -> tuple[str, str] | None:
    where = f"its {slot.label or 'key'} (slot {slot.key_id})"
    if escrowed and not slot.can_import:
        return SLOT_CANNOT_IMPORT, f"{where} cannot take a key made on the server"
    if escrowed and not slot.imports(key):
        return KEY_UNSUPPORTED, (f"{where} cannot take an imported {key.name} key (it takes "
                                 f"{', '.join(slot.import_algorithms or slot.algorithms)})")
    if not escrowed and not slot.can_sign:
        return SLOT_CANNOT_SIGN, (f"{where} cannot sign, so no certificate request can prove the key is on "
                                  "the card")
    if not escrowed and not slot.allows(key):
        return KEY_UNSUPPORTED, f"{where} cannot make {key.name} keys (it makes {', '.join(slot.algorithms)})"
    return None

