"""What unlocks a card's administration beyond the PINs: the PIV management key.

A PIV card generates keys and stores certificates only after mutual
authentication with its management key (3DES or AES).  Cards leave the
factory with a well-known key (0102…08 three times), which anyone can use to
replace keys and certificates.  Today the user passes the card's current key
(or the agent assumes the factory key and says so); later the server will
derive a per-card key and hand it over in the enrollment answer: that fills
the same :class:`CardCredentials`, nothing else changes.

``rotate_to``: set a fresh random management key at the end of the
personalization and write it to this file (mode 0600, never overwritten) for
the PKI to escrow.  Without it the agent keeps the current key and warns if
that is the factory key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, UsageError
from .secret import SecretRef

FACTORY_MANAGEMENT_KEY = bytes.fromhex("010203040506070801020304050607080102030405060708")


@dataclass
class CardCredentials:
    """The PIV management key to use, and where a new one goes (see the module doc)."""

    management_key: SecretRef | None = None
    rotate_to: Path | None = None

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
