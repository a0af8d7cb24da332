"""An RSA key into an OpenPGP card's key slot with the card's own commands (OpenPGP card 3.4 §4.4.3.12).

OpenSC 0.23's PKCS#11 module has the import (``C_CreateObject`` → PUT DATA
4D) but cannot be used for it: it pads a CKA_PUBLIC_EXPONENT shorter than
32 bits by ``free()``-ing the caller's buffer (the agent dies with "double
free or corruption"), and it sends 32 bytes of exponent for a 32-bit one
(card-openpgp.c, ``pgp_build_extended_header_list``).  So the agent speaks
the standard commands itself over PC/SC, in the card's reader, after the
PKCS#11 admin-PIN login (which settles the factory → per-card admin PIN):

- VERIFY PW3 (83); GET DATA 6E, and PUT DATA C1/C2/C3 (algorithm
  attributes) only if the slot is not already RSA of this size;
- PUT DATA odd (DB 3FFF) with the Extended Header List 4D: the CRT
  (B6/B8/A4), the template 7F48 (91 e, 92 p, 93 q) and 5F48;
- PUT DATA CE/CF/D0 (generation date) and C7/C8/C9 (the key's v4 fingerprint,
  RFC 4880 §12.2), which GnuPG reads to recognise the key;
- VERIFY FF 83 on the way out: the admin PIN's status ends with the import.

The caller re-initialises the PKCS#11 module afterwards, so OpenSC reads the
new key.  RSA only: EC keys on OpenPGP cards are refused (the agent asks for
an RSA key for that card type instead).
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from .errors import TokenError, TokenPinError
from .key_transport import wipe
from .apdu import OPENPGP_AID, SW_OK, command, transmit

#: Per key reference (OpenSC's IDs 01 sign, 02 decrypt, 03 auth): CRT tag, attributes, fingerprint, date.
_SLOTS = {1: (0xB6, 0xC1, 0xC7, 0xCE), 2: (0xB8, 0xC2, 0xC8, 0xCF), 3: (0xA4, 0xC3, 0xC9, 0xD0)}
_EXPONENT_BITS = 32  # the attributes' e length; e goes to the card in that many bits


def pcsc_available() -> bool:
    """Whether pyscard is installed (the agent's ``[piv]`` extra), which the import speaks through."""
    try:
        import smartcard.System  # noqa: F401
    except ImportError:
        return False
    return True


def import_rsa_key(reader: str, key_ref: int, key: rsa.RSAPrivateKey, admin_pin: str, *, created: int,
                   card_name: str) -> None:
    """Put ``key`` into slot ``key_ref`` (1-3) of the OpenPGP card in ``reader``; ``created`` is a Unix time."""
    crt, attributes_tag, fingerprint_tag, date_tag = _SLOTS[key_ref]
    numbers = key.private_numbers()
    n_bits = key.key_size
    attributes = bytes((0x01,)) + n_bits.to_bytes(2, "big") + _EXPONENT_BITS.to_bytes(2, "big") + b"\x00"
    e = numbers.public_numbers.e.to_bytes(_EXPONENT_BITS // 8, "big")
    half = n_bits // 16
    p, q = bytearray(numbers.p.to_bytes(half, "big")), bytearray(numbers.q.to_bytes(half, "big"))
    template = _tlv(0x91, b"", raw_length=len(e)) + _tlv(0x92, b"", raw_length=len(p)) + \
        _tlv(0x93, b"", raw_length=len(q))
    body = bytearray(bytes((crt, 0x00)) + _tlv(0x7F48, template) + _tlv(0x5F48, bytes(e) + bytes(p) + bytes(q)))
    header_list = bytearray(_tlv(0x4D, bytes(body)))
    try:
        with _PcscCard(reader, card_name) as card:
            card.send(command(0xA4, 0x04, 0x00, OPENPGP_AID), "selecting the OpenPGP application")
            card.verify_admin_pin(admin_pin)
            if _find(card.send(command(0xCA, 0x00, 0x6E, le=True), "reading its algorithm attributes"),
                     attributes_tag) != attributes:
                card.send(command(0xDA, 0x00, attributes_tag, attributes),
                          f"setting key slot {key_ref} to RSA-{n_bits}")
            card.send(command(0xDB, 0x3F, 0xFF, bytes(header_list)), f"importing the key into slot {key_ref}")
            card.send(command(0xDA, 0x00, date_tag, created.to_bytes(4, "big")), "writing the key's date")
            card.send(command(0xDA, 0x00, fingerprint_tag, v4_fingerprint(key.public_key(), created)),
                      "writing the key's fingerprint")
    finally:
        for buffer in (p, q, body, header_list):
            wipe(buffer)


def v4_fingerprint(public: rsa.RSAPublicKey, created: int) -> bytes:
    """The OpenPGP v4 fingerprint of an RSA key (RFC 4880 §12.2): SHA-1 over the public-key packet."""
    numbers = public.public_numbers()
    packet = b"\x04" + created.to_bytes(4, "big") + b"\x01" + _mpi(numbers.n) + _mpi(numbers.e)
    return hashlib.sha1(b"\x99" + len(packet).to_bytes(2, "big") + packet).digest()


def _mpi(value: int) -> bytes:
    return value.bit_length().to_bytes(2, "big") + value.to_bytes((value.bit_length() + 7) // 8, "big")


def _tlv(tag: int, value: bytes, *, raw_length: int | None = None) -> bytes:
    """BER-TLV; with ``raw_length`` only tag and length (the 7F48 template lists lengths, not values)."""
    length = len(value) if raw_length is None else raw_length
    encoded = bytes((length,)) if length < 0x80 else \
        bytes((0x81, length)) if length < 0x100 else b"\x82" + length.to_bytes(2, "big")
    return tag.to_bytes(2 if tag > 0xFF else 1, "big") + encoded + value


def _find(data: bytes, wanted: int) -> bytes | None:
    """The value of a one-byte tag anywhere in the nested BER-TLV ``data`` (application related data)."""
    at = 0
    while at < len(data):
        tag, at = data[at], at + 1
        if tag & 0x1F == 0x1F:  # two-byte tag
            tag, at = tag << 8 | data[at], at + 1
        length, at = data[at], at + 1
        if length & 0x80:
            size = length & 0x7F
            length, at = int.from_bytes(data[at:at + size], "big"), at + size
        value = data[at:at + length]
        if tag == wanted:
            return bytes(value)
        if (tag >> 8 if tag > 0xFF else tag) & 0x20:  # constructed: look inside
            found = _find(value, wanted)
            if found is not None:
                return found
        at += length
    return None


class _PcscCard:
    """The card in one PC/SC reader, shared with OpenSC (which holds its own connection)."""

    def __init__(self, reader: str, name: str) -> None:
        self.reader, self.name = reader, name
        self._connection: Any = None

    def __enter__(self) -> _PcscCard:
        from smartcard.Exceptions import CardConnectionException, NoCardException
        from smartcard.scard import SCARD_LEAVE_CARD
        from smartcard.System import readers

        # PKCS#11 cuts a slot's description (the reader's name) at 64 characters.
        everyone = [str(r) for r in readers()]
        found = [r for r in readers() if str(r) == self.reader] or \
            [r for r in readers() if str(r).startswith(self.reader)]
        if len(found) != 1:
            raise TokenError(f"{self.name}: no single reader named {self.reader!r} (readers: "
                             f"{', '.join(everyone) or 'none'}): put the card back and run again")
        self._connection = found[0].createConnection()
        try:
            # Leave the card powered afterwards: OpenSC's connection to it stays valid.
            self._connection.connect(disposition=SCARD_LEAVE_CARD)
        except (CardConnectionException, NoCardException) as exc:
            raise TokenError(f"{self.name}: cannot reach the card in {self.reader!r} ({exc})") from None
        return self

    def __exit__(self, *exc: object) -> None:
        from smartcard.Exceptions import CardConnectionException

        try:  # the admin PIN's status ends with the import (VERIFY P1=FF; older cards ignore it)
            transmit(self._connection, command(0x20, 0xFF, 0x83))
        except CardConnectionException:
            pass
        self._connection.disconnect()
        self._connection.release()

    def verify_admin_pin(self, pin: str) -> None:
        _, sw = self._transmit(command(0x20, 0x00, 0x83, pin.encode()))
        if sw & 0xFFF0 == 0x63C0 or sw == 0x6982:
            raise TokenPinError(f"{self.name} refused the admin PIN for the key import")
        if sw == 0x6983:
            raise TokenPinError(f"the admin PIN of {self.name} is locked: the card must be reset by your "
                                "PKI administrator")
        if sw != SW_OK:
            raise TokenError(f"{self.name} answered {sw:04x} to the admin PIN", code="token.key_import")

    def send(self, apdu: bytes, doing: str) -> bytes:
        response, sw = self._transmit(apdu)
        if sw != SW_OK:
            raise TokenError(f"{self.name} refused {doing} (status {sw:04x})", code="token.key_import")
        return response

    def _transmit(self, apdu: bytes) -> tuple[bytes, int]:
        from smartcard.Exceptions import CardConnectionException

        try:
            return transmit(self._connection, apdu)
        except CardConnectionException as exc:
            raise TokenError(f"{self.name} went away during the key import ({exc}): put it back and run "
                             "again") from None
