"""What unlocks a card's administration beyond the user PIN: admin credentials.

A PIV card generates keys and stores certificates only after mutual
authentication with its management key (3DES or AES), and unblocks its PIN
with the PUK; an OpenPGP card wants its admin PIN (PW3).  Cards leave the
factory with well-known values (management key 0102…08 three times, PUK and
admin PIN 12345678), which let anyone replace keys and certificates.

Two ways to know a card's values, chosen by :class:`CardCredentials`:

- **from the server** (the default, when no local option is given): the
  server derives them per card inside its HSM and releases them to this
  run only, once the user confirmed the card (``POST /api/v1/card-credentials``).
  At the first personalization the agent replaces the factory values with
  these; later it uses them.  A card that answers to neither was
  personalized elsewhere and is refused (``card.admin_credential_unknown``).
- **local** (sites without the server feature): ``--management-key-file/-env``
  give the card's current key, else the factory key is used with a warning;
  ``rotate_to`` sets a fresh random management key at the end and writes it
  to that file (mode 0600, never overwritten) for the PKI to escrow.

Nothing here is logged, printed or saved in the agent's state file.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, ProtocolError, ServerRefused, UsageError
from .secret import SecretRef

if TYPE_CHECKING:
    from .api_client import ApiClient

log = logging.getLogger("openxpki_py_token")

FACTORY_MANAGEMENT_KEY = bytes.fromhex("010203040506070801020304050607080102030405060708")
FACTORY_PUK = "12345678"
FACTORY_OPENPGP_ADMIN_PIN = "12345678"
_DIGITS = re.compile(r"^[0-9]{6,8}$")


@dataclass(frozen=True, repr=False)
class DerivedCredentials:
    """One card's admin credentials as the server derived them; ``repr`` never shows them."""

    card_type: str
    serial: str
    management_key: bytes | None = None
    puk: str | None = None
    admin_pin: str | None = None

    def __repr__(self) -> str:
        return f"<DerivedCredentials {self.card_type} card {self.serial}>"

    __str__ = __repr__

    @classmethod
    def from_api(cls, body: Mapping[str, Any], *, serial: str) -> DerivedCredentials:
        """From the server's answer; anything not in the documented shape is a ProtocolError."""
        values = body.get("credentials")
        card_type = body.get("card_type")
        if not isinstance(values, dict) or not isinstance(card_type, str) or body.get("serial") != serial:
            raise ProtocolError("the server's card-credentials answer is not for this card, or not in the "
                                "documented shape")
        key = values.get("management_key")
        management_key = None
        if key is not None:
            try:
                management_key = bytes.fromhex(key) if isinstance(key, str) else None
            except ValueError:
                management_key = None
            if management_key is None or len(management_key) != 24:
                raise ProtocolError("the server's management_key is not 24 bytes of hex")
        pins = {name: values.get(name) for name in ("puk", "admin_pin")}
        for name, pin in pins.items():
            if pin is not None and not (isinstance(pin, str) and _DIGITS.match(pin)):
                raise ProtocolError(f"the server's {name} is not 6 to 8 digits")
        return cls(card_type, serial, management_key, pins["puk"], pins["admin_pin"])


@dataclass
class CardCredentials:
    """Where the card's admin credentials come from (see the module doc).

    ``server`` is set by the agent once it holds a session for a confirmed
    card: called at most once, it returns the derived credentials, or None
    when the server does not offer them.
    """

    management_key: SecretRef | None = None
    rotate_to: Path | None = None
    so_pin_given: bool = False
    server: Callable[[], DerivedCredentials | None] | None = None
    _derived: list[DerivedCredentials | None] = field(default_factory=list, repr=False)

    def from_server(self, route: str) -> bool:
        """Whether the server is asked: no local option names this route's admin credential.

        PIV (``piv``): the management key options; PKCS#11 cards (OpenPGP): the SO PIN options.
        """
        if route == "piv":
            return self.management_key is None and self.rotate_to is None
        return not self.so_pin_given

    def derived(self, route: str) -> DerivedCredentials | None:
        """The server's values for this card (asked once per run); None in local mode or when not offered."""
        if not self.from_server(route) or self.server is None:
            return None
        if not self._derived:
            self._derived.append(self.server())
        return self._derived[0]

    def current_management_key(self) -> bytes:
        """The key as bytes (hex in its source); the factory key when none was given."""
        if self.management_key is None:
            return FACTORY_MANAGEMENT_KEY
        try:
            text = self.management_key.reveal()
        except ConfigError as exc:
            raise UsageError(exc.message) from None
        try:
            key = bytes.fromhex(text.strip())
        except ValueError:
            raise UsageError("the management key must be hex (48 digits for 3DES or AES-192)") from None
        if len(key) not in (16, 24, 32):
            raise UsageError(f"the management key has {len(key)} bytes; 3DES and AES-192 keys have 24")
        return key

    def check_rotation_target(self) -> None:
        """Refuse before the card is touched: an existing file would be an escrowed key."""
        if self.rotate_to is not None and self.rotate_to.exists():
            raise UsageError(f"{self.rotate_to} exists; the new management key is never written over "
                             "an old one (it may be the only copy): choose a new file")

    def escrow(self, key: bytes) -> Path:
        """Write the new key (hex) for escrow; only the owner may read it."""
        assert self.rotate_to is not None
        fd = os.open(self.rotate_to, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(key.hex() + "\n")
        return self.rotate_to


def ask_server(api: ApiClient, serial: str) -> DerivedCredentials | None:
    """The card's admin credentials from the server (``POST /card-credentials``); None if not offered.

    A server without the feature answers 404 (``card.admin_credentials_off``,
    or ``api.not_found`` from an older server): then the local options apply.
    """
    try:
        body = api.post("card-credentials", {"token_serial": serial}).body
    except ServerRefused as exc:
        if exc.status == 404:
            log.info("the server does not derive card admin credentials (%s)", exc.code)
            return None
        raise
    log.info("received the card's admin credentials from the server")  # never the values
    return DerivedCredentials.from_api(body, serial=serial)
