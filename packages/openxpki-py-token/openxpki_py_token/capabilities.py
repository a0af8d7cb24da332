"""What a card can do, as the agent reports it with the card (``POST /api/v1/token``).

The agent writes it from its card profile (:mod:`.card_profiles`); the
server reads it back with :meth:`CardCapabilities.from_report` to plan which
certificate types this card gets, with which key, before any key is made.
One module for both sides, so that the report's shape and the rule that
maps a certificate type to a key slot cannot drift apart.

A report without the fields added later (an older agent) still reads: no
``key_slots`` is a generic token (any key under any ID), a slot without
``algorithms`` takes any key, one without ``can_decrypt`` decrypts as its
usage says, one without ``can_import`` takes an escrowed key only if it
can sign (the rule before cards said so), one without ``key_history``
keeps earlier keys next to it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from .keyspec import KeySpec

Usage = Literal["sign", "decrypt"]
#: The card's credential that generates keys or writes objects in a slot.
Credential = Literal["user_pin", "so_pin", "admin_pin", "management_key"]
CREDENTIALS: tuple[Credential, ...] = ("user_pin", "so_pin", "admin_pin", "management_key")
#: The profile a report without one (or with an alias) counts as.
GENERIC = "generic"
PROFILE_ALIASES = {"generic-pkcs11": GENERIC, "": GENERIC}
MAX_SLOTS = 32
_PROFILE_NAME = re.compile(r"[A-Za-z0-9_-]{0,32}")
_MAX_TEXT = 64


class MatchableSlot(Protocol):
    """What :func:`match_slot` needs of a slot (the agent's ``KeySlot`` and :class:`SlotCapability`)."""

    @property
    def usage(self) -> Usage: ...
    @property
    def cert_types(self) -> tuple[str, ...]: ...
    @property
    def default_for_usage(self) -> bool: ...


S = TypeVar("S", bound=MatchableSlot)


def match_slot(slots: Sequence[S], cert_type: str, usage: str) -> S | None:
    """The slot a certificate type goes to: named for it, else the default (else first) slot of its usage."""
    for slot in slots:
        if cert_type in slot.cert_types:
            return slot
    same_usage = [slot for slot in slots if slot.usage == usage]
    for slot in same_usage:
        if slot.default_for_usage:
            return slot
    # An older agent named neither types nor defaults: any slot of that usage.
    if same_usage and not any(slot.cert_types or slot.default_for_usage for slot in slots):
        return same_usage[0]
    return None


@dataclass(frozen=True)
class SlotCapability:
    """One fixed key slot of a card, as reported."""

    key_id: str  # hex, as the agent's route names it (PIV: "9a")
    label: str
    usage: Usage
    can_sign: bool = True  # a CSR needs a signature with the slot's key
    can_decrypt: bool = False
    #: Key specs (``rsa-2048``, ``ec-p256`` …) the slot can generate; empty: not said, any.
    algorithms: tuple[str, ...] = ()
    key_generation: Credential = "user_pin"
    object_write: Credential = "user_pin"
    cert_types: tuple[str, ...] = ()
    default_for_usage: bool = False
    #: The card takes a key made on the server (an escrowed key) into this slot.
    can_import: bool = True
    #: The card keeps earlier escrowed keys next to this slot's (PIV's retired slots); OpenPGP has one.
    key_history: bool = True
    #: Key specs the slot takes as an imported key; empty: those it can generate.
    import_algorithms: tuple[str, ...] = ()

    def allows(self, spec: KeySpec) -> bool:
        return not self.algorithms or spec.name in self.algorithms

    def imports(self, spec: KeySpec) -> bool:
        return spec.name in self.import_algorithms if self.import_algorithms else self.allows(spec)

    def as_api(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "label": self.label, "usage": self.usage, "can_sign": self.can_sign,
                "can_decrypt": self.can_decrypt, "algorithms": list(self.algorithms),
                "key_generation": self.key_generation, "object_write": self.object_write,
                "cert_types": list(self.cert_types), "default_for_usage": self.default_for_usage,
                "can_import": self.can_import, "key_history": self.key_history,
                "import_algorithms": list(self.import_algorithms)}

    @classmethod
    def from_api(cls, raw: object, where: str) -> SlotCapability:
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where} must be an object")
        key_id = _text(raw, "key_id", where)
        try:
            if not 0 < len(bytes.fromhex(key_id)) <= 32:
                raise ValueError
        except ValueError:
            raise ValueError(f"{where}.key_id must be a hex key ID") from None
        usage = raw.get("usage", "sign")
        if usage not in ("sign", "decrypt"):
            raise ValueError(f"{where}.usage must be sign or decrypt")
        algorithms = _texts(raw, "algorithms", where)
        import_algorithms = _texts(raw, "import_algorithms", where)
        for field, names in (("algorithms", algorithms), ("import_algorithms", import_algorithms)):
            for name in names:
                try:
                    KeySpec.parse(name)
                except ValueError:
                    raise ValueError(f"{where}.{field}: unknown key spec {name!r}") from None
        can_sign = _flag(raw, "can_sign", where, True)
        return cls(
            key_id=key_id.lower(), label=_text(raw, "label", where, required=False), usage=usage,
            can_sign=can_sign,
            can_decrypt=_flag(raw, "can_decrypt", where, usage == "decrypt"),
            algorithms=tuple(KeySpec.parse(n).name for n in algorithms),
            key_generation=_credential(raw, "key_generation", where),
            object_write=_credential(raw, "object_write", where),
            cert_types=_texts(raw, "cert_types", where),
            default_for_usage=_flag(raw, "default_for_usage", where, False),
            can_import=_flag(raw, "can_import", where, can_sign),
            key_history=_flag(raw, "key_history", where, True),
            import_algorithms=tuple(KeySpec.parse(n).name for n in import_algorithms),
        )


@dataclass(frozen=True)
class CardCapabilities:
    """The card's profile name and its fixed slots (none: a generic token, keys anywhere)."""

    profile: str = GENERIC
    slots: tuple[SlotCapability, ...] = ()

    def slot_for(self, cert_type: str, usage: str) -> SlotCapability | None:
        return match_slot(self.slots, cert_type, usage)

    def as_api(self) -> dict[str, Any]:
        return {"card_profile": self.profile, "key_slots": [slot.as_api() for slot in self.slots]}

    @classmethod
    def from_report(cls, report: Mapping[str, Any]) -> CardCapabilities:
        """The capabilities in a card report; ValueError says what is wrong with it."""
        profile = report.get("card_profile", GENERIC)
        if not isinstance(profile, str) or not _PROFILE_NAME.fullmatch(profile):
            raise ValueError("card_profile must be a short name such as piv, openpgp or generic")
        profile = PROFILE_ALIASES.get(profile.lower(), profile.lower())
        raw = report.get("key_slots") or []
        if not isinstance(raw, list) or len(raw) > MAX_SLOTS:
            raise ValueError(f"key_slots must be a list of at most {MAX_SLOTS} slots")
        slots = tuple(SlotCapability.from_api(item, f"key_slots[{i}]") for i, item in enumerate(raw))
        if len({slot.key_id for slot in slots}) != len(slots):
            raise ValueError("key_slots: each key_id once")
        return cls(profile, slots)


def _text(raw: Mapping[str, Any], name: str, where: str, *, required: bool = True) -> str:
    value = raw.get(name, None if required else "")
    if not isinstance(value, str) or len(value) > _MAX_TEXT or (required and not value):
        raise ValueError(f"{where}.{name} must be text (at most {_MAX_TEXT} characters)")
    return value


def _texts(raw: Mapping[str, Any], name: str, where: str) -> tuple[str, ...]:
    value = raw.get(name, [])
    if not isinstance(value, list) or len(value) > MAX_SLOTS or not all(
            isinstance(v, str) and 0 < len(v) <= _MAX_TEXT for v in value):
        raise ValueError(f"{where}.{name} must be a list of names")
    return tuple(value)


def _flag(raw: Mapping[str, Any], name: str, where: str, default: bool) -> bool:
    value = raw.get(name, default)
    if not isinstance(value, bool):
        raise ValueError(f"{where}.{name} must be true or false")
    return value


def _credential(raw: Mapping[str, Any], name: str, where: str) -> Credential:
    value = raw.get(name, "user_pin")
    for credential in CREDENTIALS:
        if value == credential:
            return credential
    raise ValueError(f"{where}.{name} must be one of {', '.join(CREDENTIALS)}")
