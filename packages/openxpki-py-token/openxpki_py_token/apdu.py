"""ISO 7816 command APDUs as bytes, one exchange over PC/SC (pyscard), and finding the reader whose card
has an application: shared by the routes that speak to the card itself (:mod:`.piv_card`,
:mod:`.openpgp_import`, :mod:`.openpgp_unblock`)."""

from __future__ import annotations

from typing import Any

OPENPGP_AID = bytes.fromhex("d27600012401")
PIV_AID = bytes.fromhex("a000000308")
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


def select_application(aid: bytes, reader_filter: str | None = None) -> tuple[Any, str] | None:
    """The first reader (name containing ``reader_filter``) whose card answers SELECT ``aid``.

    Returns the open connection, with the application selected, and the reader's
    name; the caller disconnects and releases it.  None: no such card, no reader,
    or no PC/SC service.
    """
    from smartcard.Exceptions import CardConnectionException, NoCardException
    from smartcard.pcsc.PCSCExceptions import EstablishContextException, ListReadersException
    from smartcard.System import readers

    try:
        found = readers()
    except (EstablishContextException, ListReadersException):
        return None
    for reader in found:
        if reader_filter and reader_filter.lower() not in str(reader).lower():
            continue
        connection = reader.createConnection()
        try:
            connection.connect()
            if transmit(connection, command(0xA4, 0x04, 0x00, aid))[1] == SW_OK:
                return connection, str(reader)
        except (CardConnectionException, NoCardException):
            pass
        connection.disconnect()
        connection.release()
    return None
