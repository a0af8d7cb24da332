"""The OpenPGP card's commands as bytes, and one exchange with it over PC/SC (pyscard): shared by the routes
that speak to the card itself (:mod:`.openpgp_import`, :mod:`.openpgp_unblock`)."""

from __future__ import annotations

from typing import Any

OPENPGP_AID = bytes.fromhex("d27600012401")
SW_OK = 0x9000


def command(ins: int, p1: int, p2: int, data: bytes = b"", *, le: bool = False) -> bytes:
    """A command APDU (CLA 00): short, or extended length for data over 255 bytes (a key import)."""
    header = bytes((0x00, ins, p1, p2))
    if not data:
        return header + (b"\x00" if le else b"")
    if len(data) < 0x100:
        return header + bytes((len(data),)) + data
    return header + b"\x00" + len(data).to_bytes(2, "big") + data


def transmit(connection: Any, apdu: bytes) -> tuple[bytes, int]:
    """One command; ``61xx`` (more data waiting, T=0) is collected with GET RESPONSE."""
    data, sw1, sw2 = connection.transmit(list(apdu))
    answer = bytes(data)
    while sw1 == 0x61:
        data, sw1, sw2 = connection.transmit([0x00, 0xC0, 0x00, 0x00, sw2])
        answer += bytes(data)
    return answer, sw1 << 8 | sw2
