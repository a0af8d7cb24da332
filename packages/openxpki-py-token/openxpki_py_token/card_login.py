"""Logging in to the user's card as the user or the SO, and what the card's answer means.

C_Login goes through ctypes (:meth:`.pkcs11.module.Pkcs11Module.login`) and
gives back a CKR code.  A refusal becomes an error that names the PIN and
the card, says how few tries are left where the card tells, and what to do;
never the PIN itself.  :meth:`.card.Card.login` decides when to log in as whom.
"""

from __future__ import annotations

from typing import Any

from pkcs11 import TokenFlag
from pkcs11 import exceptions as p11_exc

from .card_profiles import Login
from .errors import TokenError, TokenPinError
from .pins import PIN_NAMES
from .pkcs11.module import Pkcs11Module

_CKR_OK = 0x000
_CKR_PIN_INCORRECT, _CKR_PIN_INVALID, _CKR_PIN_LEN_RANGE = 0x0A0, 0x0A1, 0x0A2
_CKR_PIN_EXPIRED, _CKR_PIN_LOCKED = 0x0A3, 0x0A4
_CKR_USER_ALREADY_LOGGED_IN, _CKR_USER_PIN_NOT_INITIALIZED = 0x100, 0x102
# OpenSC maps a card's "security status not satisfied" (6982) answer to a
# VERIFY with a wrong PIN to this; from C_Login it can only mean "refused".
_CKR_USER_NOT_LOGGED_IN = 0x101
_CKR_USER_ANOTHER_ALREADY_LOGGED_IN = 0x104
#: C_Login worked, or this role was logged in already.
LOGGED_IN = (_CKR_OK, _CKR_USER_ALREADY_LOGGED_IN)
#: The card refused the PIN itself (each of these spends one of its tries).
PIN_REFUSED = (_CKR_PIN_INCORRECT, _CKR_PIN_INVALID, _CKR_PIN_LEN_RANGE, _CKR_USER_NOT_LOGGED_IN)


def login_as(module: Pkcs11Module, session: Any, role: Login, pin: str) -> int:
    """C_Login as ``role`` (again after C_Logout if someone left the other role logged in); returns the CKR code."""
    rv = module.login(session, pin, security_officer=role == "so")
    if rv == _CKR_USER_ANOTHER_ALREADY_LOGGED_IN:
        module.logout(session)
        rv = module.login(session, pin, security_officer=role == "so")
    return rv


def login_refused(token: Any, role: Login, rv: int, where: str) -> TokenError:
    """The error for C_Login's answer ``rv`` on the card ``where`` (python-pkcs11 ``token``)."""
    name = PIN_NAMES[role]
    if rv in PIN_REFUSED:
        return TokenPinError(f"{where} refused the {name}{_tries_left(token, role)}; run again "
                             f"with the right {name} (each wrong try counts towards locking the card)")
    if rv == _CKR_PIN_LOCKED:
        fix = ("ask your PKI administrator to unblock it" if role == "user"
               else "the card must be reset by your PKI administrator")
        return TokenPinError(f"the {name} of {where} is locked: {fix}")
    if rv == _CKR_PIN_EXPIRED:
        return TokenPinError(f"the {name} of {where} has expired: set a new one, then run again")
    if rv == _CKR_USER_PIN_NOT_INITIALIZED:
        return TokenPinError(f"{where} has no {name} yet: initialise the card first")
    return TokenError(f"logging in to {where} failed (CKR 0x{rv:x}); is the card still in the reader?")


def _tries_left(token: Any, role: Login) -> str:
    try:
        flags = token.slot.get_token().flags
    except p11_exc.PKCS11Error:
        return ""
    final, low = ((TokenFlag.USER_PIN_FINAL_TRY, TokenFlag.USER_PIN_COUNT_LOW) if role == "user"
                  else (TokenFlag.SO_PIN_FINAL_TRY, TokenFlag.SO_PIN_COUNT_LOW))
    if flags & final:
        return " (one try left before the card locks it)"
    if flags & low:
        return " (few tries left before the card locks it)"
    return ""
