"""What a PIV card holds, by SP 800-73-4: its key slots and the data objects the agent writes.

A key's ID in the agent is its PIV slot number (``9a`` authentication,
``9d`` key management, ``82``-``95`` the retired key-management slots that
keep earlier escrowed encryption keys).  The CHUID and the CCC are made new
at the end of every personalization; the Key History object tells PIV
middleware how many retired slots hold a key.  Nothing here talks to a card:
:class:`~openxpki_py_token.piv_card.PivCard` writes these objects.
"""

from __future__ import annotations

import datetime
import os
import uuid
from typing import Any

from .errors import TokenError
from .keyspec import KeySpec

SLOT_NAMES = {0x9A: "PIV Authentication", 0x9C: "Digital Signature", 0x9D: "Key Management",
              0x9E: "Card Authentication",
              # Retired key-management slots: earlier escrowed encryption keys (key history).
              **{0x82 + n: f"Retired Key Management {n + 1}" for n in range(20)}}
# CHUID: FASC-N of a non-federal issuer (agency code 9999, SP 800-73-4 Part 1 §3.1.2).
_FASC_N = bytes.fromhex("d4e739da739ced39ce739d836858210842108421c84210c3eb")
_CHUID_YEARS = 10


def piv_slot(key_id: bytes) -> int:
    """The PIV slot a key ID names (one byte), or a TokenError for an ID that is no PIV key slot."""
    if len(key_id) != 1 or key_id[0] not in SLOT_NAMES:
        raise TokenError(f"key ID {key_id.hex()} is not a PIV key slot (9a, 9c, 9d, 9e, 82-95)",
                         code="token.no_slot")
    return key_id[0]


def piv_key_type(spec: KeySpec) -> Any:
    """yubikit's KEY_TYPE for a key the server asks for; a PIV card makes no other."""
    from yubikit.piv import KEY_TYPE

    if spec.algorithm == "rsa" and spec.rsa_bits == 2048:
        return KEY_TYPE.RSA2048
    if spec.algorithm == "ec" and spec.curve in ("P-256", "P-384"):
        return KEY_TYPE.ECCP256 if spec.curve == "P-256" else KEY_TYPE.ECCP384
    raise TokenError(f"PIV cards here make RSA-2048, EC P-256 or P-384 keys, not {spec}", code="token.keygen")


def new_chuid(guid: bytes | None = None) -> bytes:
    """A CHUID (SP 800-73-4 Part 1 §3.1.2): FASC-N, a new GUID, expiry, empty signature."""
    expiry = datetime.date.today() + datetime.timedelta(days=365 * _CHUID_YEARS)
    return (_tlv(0x30, _FASC_N) + _tlv(0x34, guid or uuid.uuid4().bytes)
            + _tlv(0x35, expiry.strftime("%Y%m%d").encode("ascii")) + _tlv(0x3E) + _tlv(0xFE))


def chuid_guid(chuid: bytes) -> str | None:
    """The GUID (tag 34) of a CHUID, in hex, or None if it has none."""
    at = chuid.find(b"\x34\x10")
    return chuid[at + 2:at + 18].hex() if at >= 0 else None


def new_ccc() -> bytes:
    """A Card Capability Container (SP 800-73-4 Part 1 §3.1.1) with a fresh card identifier."""
    card_id = bytes.fromhex("a000000116ff02") + os.urandom(14)  # GSC-RID, manufacturer FF, type 02
    return (_tlv(0xF0, card_id) + _tlv(0xF1, b"\x21") + _tlv(0xF2, b"\x21") + _tlv(0xF3) + _tlv(0xF4, b"\x00")
            + _tlv(0xF5, b"\x10") + _tlv(0xF6) + _tlv(0xF7) + _tlv(0xFA) + _tlv(0xFB) + _tlv(0xFC)
            + _tlv(0xFD) + _tlv(0xFE))


def key_history(on_card: int) -> bytes:
    """The Key History object (SP 800-73-4 Part 1 §3.3.3): ``on_card`` retired keys, none off the card."""
    return _tlv(0xC1, bytes((on_card,))) + _tlv(0xC2, b"\x00") + _tlv(0xFE)


def _tlv(tag: int, value: bytes = b"") -> bytes:
    length = bytes((len(value),)) if len(value) < 0x80 else bytes((0x81, len(value)))
    return bytes((tag,)) + length + value
