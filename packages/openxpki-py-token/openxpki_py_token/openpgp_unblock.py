"""An OpenPGP card's blocked user PIN (PW1), reset with its admin PIN (PW3) over PC/SC.

OpenSC's PKCS#11 module offers no unblock for OpenPGP cards (``C_InitPIN``
is "not supported" unless opensc.conf says ``pin_unblock_style =
so_logged_initpin``), so this speaks the card's own commands (OpenPGP card
spec 3.4, §7.2.2 and §7.2.5) through pyscard, which the PIV extra brings:
VERIFY PW3, then RESET RETRY COUNTER with P1=02 (no resetting code: PW3 is
verified) and the new PW1.  The card's serial is the one OpenSC reports for
it (manufacturer and serial number of its AID, as hex), so that the server
knows the card as the personalization registered it.
"""

from __future__ import annotations

from typing import Any

from .card import CardInfo
from .errors import TokenError, TokenNotFound, TokenPinError
from .apdu import OPENPGP_AID, select_application
from .apdu import SW_OK as _SW_OK
from .apdu import command as _apdu
from .apdu import transmit as _transmit



class OpenPgpUnblockCard:
    """An OpenPGP card in a PC/SC reader, for the one command an unblock needs (use as a context manager)."""

    route = "openpgp"  # the card profile the server knows it by; it releases the admin PIN for it

    def __init__(self, connection: Any, reader: str) -> None:
        self._connection = connection
        self._reader = reader
        self.info: CardInfo | None = None

    @classmethod
    def find(cls, reader_filter: str | None = None) -> OpenPgpUnblockCard | None:
        """The first reader (name containing ``reader_filter``) whose card answers the OpenPGP SELECT."""
        found = select_application(OPENPGP_AID, reader_filter)
        return cls(*found) if found is not None else None

    def __enter__(self) -> OpenPgpUnblockCard:
        aid, sw = _transmit(self._connection, _apdu(0xCA, 0x00, 0x4F) + b"\x00")  # Le: up to 256 bytes
        if sw != _SW_OK or len(aid) < 14:
            raise TokenNotFound(f"the OpenPGP card in {self._reader} did not tell its serial number "
                                f"(status {sw:04x}, {len(aid)} bytes)")
        self.info = CardInfo(slot_id=0, serial=aid[8:14].hex(), manufacturer="OpenPGP",
                             model=f"OpenPGP card {aid[6]}.{aid[7]}", label=self._reader)
        return self

    def __exit__(self, *exc: object) -> None:
        self._connection.disconnect()
        self._connection.release()

    def describe(self) -> str:
        return self.info.describe() if self.info is not None else "the OpenPGP card"

    def unblock_pin(self, admin_pin: str, new_pin: str) -> None:
        """VERIFY PW3, RESET RETRY COUNTER (P1=02) with the new PW1; a refused admin PIN changes nothing else."""
        _, sw = _transmit(self._connection, _apdu(0x20, 0x00, 0x83, admin_pin.encode("utf-8")))
        if sw & 0xFFF0 == 0x63C0 or sw == 0x6982 or sw == 0x6983:
            left = sw & 0x0F if sw & 0xFFF0 == 0x63C0 else 0
            raise TokenPinError(f"{self.describe()} refused the admin PIN your PKI holds for it ({left} tries "
                                "left); its PIN was not changed. The card was personalized elsewhere or reset: "
                                "ask your PKI administrator", code="card.admin_pin_refused")
        if sw != _SW_OK:
            raise TokenError(f"{self.describe()} refused the admin PIN check (status {sw:04x})", code="token.unblock")
        _, sw = _transmit(self._connection, _apdu(0x2C, 0x02, 0x81, new_pin.encode("utf-8")))
        if sw != _SW_OK:
            raise TokenError(f"{self.describe()} did not unblock its PIN (status {sw:04x})", code="token.unblock")
