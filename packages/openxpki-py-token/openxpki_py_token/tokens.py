"""Finding the user's card among the module's slots (logging in to it: :mod:`.card_login`).

A card is chosen by ``--slot`` or ``--token-label``, or is the one present.
Uninitialised tokens (SoftHSM's free slot, a blank card) are never chosen,
and one card that shows as several PKCS#11 tokens (OpenSC's OpenPGP card
has a second one for the signature PIN) counts once: its first token.
"""

from __future__ import annotations

import contextlib
from typing import Any

from pkcs11 import SlotFlag, TokenFlag
from pkcs11 import exceptions as p11_exc

from .errors import TokenError, TokenNotFound
from .pkcs11.module import Pkcs11Module


def select_token(module: Pkcs11Module, *, slot_id: int | None, token_label: str | None) -> Any:
    """The python-pkcs11 token to personalize, or TokenNotFound saying what to do."""
    try:
        slots = module.lib().get_slots(token_present=False)
    except p11_exc.PKCS11Error as exc:
        raise TokenError(f"{module.path}: cannot list card readers ({type(exc).__name__})") from None
    present: list[tuple[Any, Any]] = []
    blank: list[Any] = []
    for slot in slots:
        with contextlib.suppress(p11_exc.PKCS11Error):  # a reader that just lost its card
            if slot.flags & SlotFlag.TOKEN_PRESENT:
                token = slot.get_token()
                if token.flags & TokenFlag.TOKEN_INITIALIZED:
                    present.append((slot, token))
                else:
                    blank.append(slot)
    if slot_id is not None:
        return _by_slot(module, slots, present, blank, slot_id)
    if token_label is not None:
        chosen = [token for _, token in present if token.label.strip() == token_label]
        if not chosen:
            listed = ", ".join(repr(t.label.strip()) for _, t in present) or "none"
            raise TokenNotFound(f"no card labelled {token_label!r} (cards present: {listed}); "
                                "check --token-label")
        if len(chosen) > 1:
            raise TokenNotFound(f"{len(chosen)} cards are labelled {token_label!r}: choose one with --slot")
        return chosen[0]
    if not present:
        readers = f" (readers: {_list_slots(slots)})" if slots else " and no card reader"
        raise TokenNotFound(f"no card found{readers}: insert your card and run again")
    if len({bytes(t.serial) for _, t in present}) > 1:
        listed = "; ".join(f"slot {s.slot_id}: {t.label.strip()!r} serial {serial_of(t)}" for s, t in present)
        raise TokenNotFound(f"several cards are present ({listed}): choose one with --slot or --token-label")
    return present[0][1]


def _by_slot(module: Pkcs11Module, slots: list[Any], present: list[tuple[Any, Any]], blank: list[Any],
             slot_id: int) -> Any:
    if not any(slot.slot_id == slot_id for slot in slots):
        raise TokenNotFound(f"there is no slot {slot_id} (slots: {_list_slots(slots)}); see "
                            f"pkcs11-tool --module {module.path} --list-slots")
    chosen = [token for slot, token in present if slot.slot_id == slot_id]
    if chosen:
        return chosen[0]
    if any(slot.slot_id == slot_id for slot in blank):
        raise TokenNotFound(f"the card in slot {slot_id} is not initialised: it needs a PIN before it "
                            "can be personalized")
    raise TokenNotFound(f"no card in slot {slot_id}: insert the card and run again")


def find_again(module: Pkcs11Module, *, serial: str, label: str) -> Any | None:
    """The same card after a re-initialisation (slot IDs may have changed)."""
    for slot in module.lib().get_slots(token_present=True):
        with contextlib.suppress(p11_exc.PKCS11Error):
            token = slot.get_token()
            if serial_of(token) == serial and token.label.strip() == label:
                return token
    return None


def serial_of(token: Any) -> str:
    return bytes(token.serial).decode("ascii", "replace").strip()


def _list_slots(slots: list[Any]) -> str:
    return ", ".join(f"{s.slot_id} {s.slot_description.strip()!r}" for s in slots) or "none"


def reinitialize_module(module: Pkcs11Module) -> None:
    """C_Finalize + C_Initialize (with OS locking); every handle becomes invalid."""
    module.reinitialize()
