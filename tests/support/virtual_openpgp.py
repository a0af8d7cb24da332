"""A software OpenPGP card (v3.4) in vpcd's reader, for tests only.

The card itself is PyPI ``smartcard-app-openpgp`` 0.4.0 (GPL-3+), which runs
only from its own test virtualenv (see ``support/card_venv.py``); this file
is the glue: an in-memory card, four corrections the emulator needs to
serve OpenSC 0.23, and the vpcd bridge.  Run as a script::

    <card venv>/bin/python tests/support/virtual_openpgp.py [--port 35963]

Defaults of a new card: user PIN (PW1) 123456, admin PIN (PW3) 12345678.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

import smartcard.app.openpgp as pgp
from smartcard import MASTER_FILE_IDENTIFIER, Card
from smartcard.app.openpgp.tag import CardholderCertificate
from smartcard.asn1 import AllSchema, CodecBER
from smartcard.utils import transaction_manager

from vpcd import VPCD_HOST, VPCD_PORT, connect, serve

_APP_FILE_ID = b"\x12\x34"
_OK = b"\x90\x00"
_INS_SELECT_DATA = 0xA5
# A key is made in the emulator's background thread; GENERATE waits for it.
_KEYGEN_WAIT = 60.0


# --- corrections to smartcard-app-openpgp 0.4.0 --------------------------------------------


def _algorithm_information(self: Any) -> tuple[bytes]:
    # DO FA lists C1/C2/C3 entries; upstream encodes the already encoded
    # attribute bytes a second time (TypeError, answered 6F00).  OpenSC reads
    # this DO to learn which key types it may generate.
    entries = []
    for role in (pgp.KEY_ROLE_SIGN, pgp.KEY_ROLE_DECRYPT, pgp.KEY_ROLE_AUTHENTICATE):
        tag = pgp.KEY_ROLE_TO_ATTRIBUTE_TAG_DICT[role]
        for attributes in pgp.ROLE_TO_SUPPORTED_ALGORITHM_INFORMATION_LIST_DICT[role]:
            entries.append(CodecBER.encodeTagLength(tag=tag, length=len(attributes)) + attributes)
    return (b"".join(entries),)


_upstream_internal_authenticate = pgp.OpenPGP.internalAuthenticate
_upstream_generate = pgp.OpenPGP.generateAsymmetricKeyPair


def _internal_authenticate(self: Any, *args: Any, **kwargs: Any) -> bytes:
    # Upstream returns the signature of the authentication key without 9000,
    # and OpenSC then takes the last two signature bytes for a status word.
    return bytes(_upstream_internal_authenticate(self, *args, **kwargs)) + _OK


def _generate(self: Any, channel: Any, p1: int, p2: int, command_data: bytes) -> bytes:
    # Upstream answers 6F00 while its key-making thread is still busy (right
    # after start-up); a real card just takes a moment longer.
    if p1 == 0x80:
        deadline = time.monotonic() + _KEYGEN_WAIT
        while any(key is None for key in self._v_s_keygen_key_list) and time.monotonic() < deadline:
            time.sleep(0.02)
    return bytes(_upstream_generate(self, channel, p1, p2, command_data))


pgp.OpenPGP._getAlgorithmInformation = _algorithm_information
pgp.OpenPGP.internalAuthenticate = _internal_authenticate
pgp.OpenPGP.generateAsymmetricKeyPair = _generate


class OpenPGPCard:
    """The emulated card as :class:`vpcd.VirtualCard`."""

    def __init__(self) -> None:
        with transaction_manager:
            self._card = Card(name=b"test-openpgp")  # a DF name: 16 bytes at most
            app = pgp.OpenPGP(identifier=_APP_FILE_ID)
            app.activateSelf()
            # One empty DO 7F21 per key: OpenPGP v3 keeps a certificate per key,
            # reached through SELECT DATA (OpenSC's IDs 03, 02, 01).
            for occurrence in range(3):
                app.putData(tag=CardholderCertificate, value=b"", index=occurrence)
            self._card.createFile(self._card.traverse((MASTER_FILE_IDENTIFIER,)), app)
        with transaction_manager:
            self._card.traverse(path=(MASTER_FILE_IDENTIFIER, _APP_FILE_ID))

    def atr(self) -> bytes:
        return bytes(self._card.getATR())

    def power_cycle(self) -> None:
        with transaction_manager:
            self._card.clearVolatile()

    def transmit(self, apdu: bytes) -> bytes:
        if len(apdu) >= 4 and apdu[1] == _INS_SELECT_DATA and apdu[0] & 0xF0 == 0:
            return self._select_data(apdu)
        return bytes(self._card.runAPDU(bytearray(apdu)))

    def _select_data(self, apdu: bytes) -> bytes:
        """SELECT DATA (OpenPGP 3.x), which the emulator lacks.

        P1 is the occurrence, the data ``[60 len] 5C len <tag>``; the choice
        holds for later GET/PUT DATA of that tag on this logical channel.
        """
        data = apdu[5:5 + apdu[4]] if len(apdu) > 5 else b""
        at = data.find(0x5C)
        if at < 0 or at + 2 > len(data):
            return b"\x6a\x80"
        tag_bytes = data[at + 2:at + 2 + data[at + 1]]
        tag, _ = CodecBER.decodeTag(tag_bytes)
        channel = self._card._v_s_channel_list[apdu[0] & 0x03]
        with transaction_manager:
            channel.setDataObjectIndex(tag=AllSchema[tag], index=apdu[2])
        return _OK


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=VPCD_HOST)
    parser.add_argument("--port", type=int, default=VPCD_PORT)
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    card = OpenPGPCard()
    sock = connect(args.host, args.port)
    print(f"OpenPGP card in vpcd {args.host}:{args.port}, ATR {card.atr().hex()}", flush=True)
    serve(card, sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
